"""ComfyUI's HTTP and WebSocket API on a real server (uvicorn on a loopback port, a real worker
process, a tiny random SD model): driven the way ComfyUI's own script_examples drive it (urllib
posting JSON as a form, websocket-client, waiting for ``executing`` with ``node: null``), and by a
published ComfyUI client library (comfy-api-simplified: requests, websockets, HTTP Basic), both
getting their pictures back; bad prompts answered in ComfyUI's shape with nothing queued; the
auth relaxations and what stays refused."""

from __future__ import annotations

import base64
import http.client
import io
import json
import struct
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest
import websocket  # websocket-client, as ComfyUI's websockets_api_example.py uses

from tests.server_helpers import ProcessServer, ThreadServer, servers, wait_for  # noqa: F401 (servers: a fixture)

pytestmark = pytest.mark.slow


def default_prompt(model, steps: int = 2, seed: int = 5) -> dict:
    """ComfyUI's default graph in its API format ("Save (API)"), with the titles ComfyUI writes
    in ``_meta``; the checkpoint, size and steps made tiny."""
    titles = {"3": "KSampler", "4": "Load Checkpoint", "5": "Empty Latent Image", "6": "CLIP Text Encode (Prompt)",
              "7": "CLIP Text Encode (Prompt)", "8": "VAE Decode", "9": "Save Image"}
    p = {
        "3": {"class_type": "KSampler", "inputs": {"cfg": 8, "denoise": 1, "latent_image": ["5", 0], "model": ["4", 0], "negative": ["7", 0],
                                                   "positive": ["6", 0], "sampler_name": "euler", "scheduler": "normal", "seed": seed,
                                                   "steps": steps}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": str(model)}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"batch_size": 1, "height": 64, "width": 64}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "masterpiece best quality man"}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "bad hands"}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
    }
    for k, node in p.items():
        node["_meta"] = {"title": titles[k]}
    return p


@pytest.fixture(scope="module")
def srv(tmp_path_factory, tiny_model):
    s = ThreadServer(tmp_path_factory.mktemp("comfy"), allow_read=[tiny_model.parent])
    yield s
    s.stop()


def post(srv, path: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    """A POST sent as given: no Content-Type unless ``headers`` has one."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        conn.request("POST", path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, json.loads(r.read() or b"null")
    finally:
        conn.close()


def get(srv, path: str, headers: dict | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def runs(srv) -> int:
    return len(srv.store.history(10_000))


def png_size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    return Image.open(io.BytesIO(data)).size


def test_the_websocket_example_protocol_gets_its_picture_back(srv, tiny_model):
    """What script_examples/websockets_api_example.py does, step by step: a client id on /ws, the
    prompt posted by urllib (a form's Content-Type, no token) with a prompt_id it chose, messages
    until ``executing`` says ``node: null`` for it, then /history/{id} and /view."""
    address = f"127.0.0.1:{srv.port}"
    client_id, prompt_id = str(uuid.uuid4()), str(uuid.uuid4())
    ws = websocket.WebSocket()
    ws.connect(f"ws://{address}/ws?clientId={client_id}", timeout=120)
    first = json.loads(ws.recv())
    assert first == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": client_id}}

    data = json.dumps({"prompt": default_prompt(tiny_model), "client_id": client_id, "prompt_id": prompt_id}).encode()
    req = urllib.request.Request(f"http://{address}/prompt", data=data)
    assert req.get_header("Content-type") is None  # urllib adds application/x-www-form-urlencoded when sending
    answer = json.loads(urllib.request.urlopen(req).read())
    assert answer == {"prompt_id": prompt_id, "number": answer["number"], "node_errors": {}} and isinstance(answer["number"], int)

    messages = []
    while True:
        out = ws.recv()
        assert isinstance(out, str)  # previews off (ThreadServer's executor): no binary frames, which clients take for pictures
        m = json.loads(out)
        messages.append(m)
        if m["type"] == "executing" and m["data"]["node"] is None and m["data"]["prompt_id"] == prompt_id:
            break
    ws.close()
    mine = [m for m in messages if m["type"] != "status"]
    assert all(m["data"]["prompt_id"] == prompt_id for m in mine)
    kinds = [m["type"] for m in mine]
    assert kinds[:2] == ["execution_start", "execution_cached"] and kinds[-3:] == ["executed", "execution_success", "executing"]
    executing = [m["data"]["node"] for m in mine if m["type"] == "executing"]
    assert executing[0] == "4" and executing[-1] is None and set(executing[:-1]) == {"3", "4", "5", "6", "7", "8", "9"}
    assert len(executing) == len(set(executing))  # each ComfyUI node once, as ComfyUI says it
    assert [(m["data"]["value"], m["data"]["max"], m["data"]["node"]) for m in mine if m["type"] == "progress"] == [(1, 2, "3"), (2, 2, "3")]
    executed = next(m["data"] for m in mine if m["type"] == "executed")
    assert executed["node"] == "9" and len(executed["output"]["images"]) == 1
    # the running prompt counted in queue_remaining while it ran
    assert {"status": {"exec_info": {"queue_remaining": 1}}} in [m["data"] for m in messages if m["type"] == "status"]

    with urllib.request.urlopen(f"http://{address}/history/{prompt_id}") as r:
        history = json.loads(r.read())[prompt_id]
    assert history["status"]["status_str"] == "success" and history["status"]["completed"] is True
    assert history["prompt"][1] == prompt_id and history["prompt"][2]["3"]["inputs"]["seed"] == 5 and history["prompt"][4] == ["9"]
    (image,) = history["outputs"]["9"]["images"]
    assert image == executed["output"]["images"][0]
    assert image["filename"] == "ComfyUI_00001.png" and image["type"] == "output"
    with urllib.request.urlopen(f"http://{address}/view?" + urllib.parse.urlencode(image)) as r:
        picture = r.read()
    assert picture[:8] == b"\x89PNG\r\n\x1a\n" and png_size(picture) == (64, 64)
    assert picture == (srv.tmp / "out" / "runs" / image["subfolder"] / image["filename"]).read_bytes()
    # the whole history has it; and a prompt_id is the client's to choose once
    assert prompt_id in json.loads(get(srv, "/history")[1])
    status, body = post(srv, "/prompt", json.dumps({"prompt": default_prompt(tiny_model), "prompt_id": prompt_id}).encode())
    assert status == 400 and body["error"]["type"] == "prompt_id_taken"


def test_previews_reach_comfyui_clients_as_its_binary_frames_when_switched_on(servers, tmp_path, tiny_model):
    """`graphflow serve --preview-every 1`: each step's preview reaches the prompt's ComfyUI client
    as ComfyUI's server.send_image frames it (4-byte big-endian event type 1 = PREVIEW_IMAGE, 4-byte
    image type 2 = PNG, then the PNG), after the KSampler's ``executing`` and before the nodes after
    it, and is the very picture /api/ws carries. With previews off not one binary frame is sent:
    test_the_websocket_example_protocol_gets_its_picture_back (a server without previews) checks that
    every frame of its whole run is text."""
    s = ProcessServer(tmp_path, "--preview-every", "1", "--allow-read", str(tiny_model.parent))
    servers.append(s)
    address = s.url.removeprefix("http://").rstrip("/")
    client_id, prompt_id = str(uuid.uuid4()), str(uuid.uuid4())
    ws = websocket.create_connection(f"ws://{address}/ws?clientId={client_id}", timeout=120)
    api = websocket.create_connection(f"ws://{address}/api/ws", timeout=120)
    assert json.loads(ws.recv())["type"] == "status" and json.loads(api.recv())["type"] == "status"
    previews: list[bytes] = []  # /api/ws read all along (an unread socket misses the server's pings and is closed)

    def read_api():
        while (m := json.loads(api.recv()))["type"] != "run_finished":
            if m["type"] == "preview":
                previews.append(base64.b64decode(m["data"]["image"].partition(",")[2]))

    reader = threading.Thread(target=read_api, daemon=True)
    reader.start()
    body = json.dumps({"prompt": default_prompt(tiny_model, steps=3), "client_id": client_id, "prompt_id": prompt_id}).encode()
    urllib.request.urlopen(urllib.request.Request(f"http://{address}/prompt", data=body)).read()

    seen: list = []  # ("text", message) or ("frame", bytes), in arrival order
    while True:
        out = ws.recv()
        if isinstance(out, bytes):
            seen.append(("frame", out))
            continue
        m = json.loads(out)
        seen.append(("text", m))
        if m["type"] == "executing" and m["data"]["node"] is None and m["data"]["prompt_id"] == prompt_id:
            break
    reader.join(60)
    assert not reader.is_alive()
    ws.close()
    api.close()

    frames = [f for kind, f in seen if kind == "frame"]
    assert len(frames) == 3 and [struct.unpack(">II", f[:8]) for f in frames] == [(1, 2)] * 3
    assert [f[8:] for f in frames] == previews  # the same PNGs the run made
    for f in frames:
        assert f[8:16] == b"\x89PNG\r\n\x1a\n"
        # the latents' resolution (64 px / 8) as nodes/stages/preview.py projects them, or the picture's with a decoder
        assert png_size(f[8:]) in {(8, 8), (64, 64)}
    order = [("frame" if kind == "frame" else f"{m['type']}:{m['data'].get('node')}") for kind, m in seen if kind == "frame" or m["type"] in
             ("executing", "executed")]
    first, last = order.index("frame"), len(order) - 1 - order[::-1].index("frame")
    assert "executing:3" in order[:first] and order[last + 1:][0] in ("executing:8", "executing:9", "executed:9")


def test_a_served_preview_decoder_reaches_the_worker_process(servers, tmp_path, tiny_model):
    """`graphflow serve --preview-decoder FOLDER`: the runs execute in the server's worker process,
    which must receive the decoder too. Its previews are then the picture's size (64 px: an
    AutoencoderTiny decodes to pixels), not the latents' (8 px: the linear projection)."""
    from tests.nodes.test_preview import tiny_autoencoder

    taesd = tiny_autoencoder(tmp_path / "taesd", 4)
    s = ProcessServer(tmp_path, "--preview-every", "1", "--preview-decoder", str(taesd), "--allow-read", str(tiny_model.parent))
    servers.append(s)
    address = s.url.removeprefix("http://").rstrip("/")
    client_id, prompt_id = str(uuid.uuid4()), str(uuid.uuid4())
    ws = websocket.create_connection(f"ws://{address}/ws?clientId={client_id}", timeout=120)
    assert json.loads(ws.recv())["type"] == "status"
    body = json.dumps({"prompt": default_prompt(tiny_model, steps=2), "client_id": client_id, "prompt_id": prompt_id}).encode()
    urllib.request.urlopen(urllib.request.Request(f"http://{address}/prompt", data=body)).read()
    frames = []
    while True:
        out = ws.recv()
        if isinstance(out, bytes):
            frames.append(out)
            continue
        m = json.loads(out)
        assert m["type"] != "execution_error", m
        if m["type"] == "executing" and m["data"]["node"] is None and m["data"]["prompt_id"] == prompt_id:
            break
    ws.close()
    assert len(frames) == 2 and [png_size(f[8:]) for f in frames] == [(64, 64)] * 2


BAD = {
    "a link to a missing node": (lambda p: p["8"]["inputs"].update(samples=["30", 0]), {"8": [("bad_linked_input", "samples")]}),
    "a wrong output index": (lambda p: p["8"]["inputs"].update(vae=["4", 7]), {"8": [("bad_linked_input", "vae")]}),
    "an unknown input": (lambda p: p["5"]["inputs"].update(depth=3), {"5": [("unknown_input", "depth")]}),
    "a wrong type": (lambda p: p["3"]["inputs"].update(steps="many"), {"3": [("invalid_input_type", "steps")]}),
    "two class types without a translation": (
        lambda p: p.update({"10": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "x.safetensors"}},
                            "11": {"class_type": "ImageInvert", "inputs": {"image": ["8", 0]}}}),
        {"10": [("missing_node_type", None)], "11": [("missing_node_type", None)]}),
    "a cycle": (lambda p: (p["3"]["inputs"].update(latent_image=["12", 0]),
                           p.update({"12": {"class_type": "LatentUpscaleBy", "inputs": {"samples": ["3", 0], "upscale_method": "bilinear",
                                                                                        "scale_by": 1.5}}})),
                {"3": [("dependency_cycle", None)]}),
    # translated, then refused by graphflow's own checks, named by the ComfyUI node the graphflow node came from
    "steps over the server's limit": (lambda p: p["3"]["inputs"].update(steps=5000), {"3": [("over_limit", "steps")]}),
    "a checkpoint that is not there": (lambda p: p["4"]["inputs"].update(ckpt_name="no-such.safetensors"), {"4": [("missing_file", "path")]}),
    "a split loader without its config folder": (  # no default for config: named before anything is queued
        lambda p: (p.update({"20": {"class_type": "VAELoader", "inputs": {"vae_name": "no-such-vae.safetensors"}}}), p["8"]["inputs"].update(vae=["20", 0])),
        {"20": [("missing_param", "config"), ("missing_file", "path")]}),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_prompt_is_400_in_comfyui_shape_naming_the_node_and_nothing_is_queued(srv, tiny_model, case):
    change, expected = BAD[case]
    prompt = default_prompt(tiny_model)
    change(prompt)
    before = runs(srv)
    status, body = post(srv, "/prompt", json.dumps({"prompt": prompt, "client_id": "c"}).encode())  # no Content-Type at all
    assert status == 400, body
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    got = {nid: [(e["type"], e["extra_info"].get("input_name")) for e in err["errors"]] for nid, err in body["node_errors"].items()}
    assert got == expected
    assert all(err["class_type"] == prompt[nid]["class_type"] for nid, err in body["node_errors"].items())
    assert runs(srv) == before


def test_a_body_without_a_prompt_or_with_an_unknown_field_is_400_and_nothing_is_queued(srv):
    before = runs(srv)
    status, body = post(srv, "/prompt", b'{"client_id": "c"}', {"Content-Type": "text/plain"})
    assert status == 400 and body["error"]["type"] == "no_prompt" and body["node_errors"] == {}
    status, body = post(srv, "/prompt", b'{"prompt": {}, "promt_id": "x"}')
    assert status == 400 and "'promt_id'" in body["error"]["message"]
    status, body = post(srv, "/prompt", b'{"prompt": ')
    assert status == 400 and body["error"]["type"] == "invalid_prompt" and "line 1" in body["error"]["details"]
    assert runs(srv) == before


def test_pages_of_other_sites_are_refused_and_queue_nothing(srv, tiny_model):
    before = runs(srv)
    evil = {"Origin": "http://evil.example", "Content-Type": "text/plain"}
    status, body = post(srv, "/prompt", json.dumps({"prompt": default_prompt(tiny_model)}).encode(), evil)
    assert status == 403 and "evil.example" in body["detail"]
    assert post(srv, "/interrupt", b"", evil)[0] == 403
    assert post(srv, "/queue", b'{"clear": true}', evil)[0] == 403
    with pytest.raises(websocket.WebSocketException):
        ws = websocket.create_connection(f"ws://127.0.0.1:{srv.port}/ws?clientId=x", origin="http://evil.example", timeout=10)
        ws.recv()  # closed at once
    # the server's own page may
    own = {"Origin": f"http://127.0.0.1:{srv.port}"}
    assert post(srv, "/prompt", b'{"client_id": "c"}', own)[0] == 400
    assert runs(srv) == before


@pytest.mark.parametrize("query", [
    "filename=graphflow.db&subfolder=..&type=output",
    "filename=../../graphflow.db&subfolder=0123456789abcdef0123456789abcdef&type=output",
    "filename=graphflow.db&subfolder=&type=output",
    "filename=../graphflow.db&subfolder=&type=input",
    "filename=owner.json&subfolder=..&type=input",
])
def test_view_serves_only_files_inside_a_run_or_the_uploads(srv, query):
    assert get(srv, "/view?" + query)[0] == 404


def test_a_running_prompt_counts_in_queue_remaining_and_the_queue_and_interrupt_work(srv, tiny_model):
    long_id, short_id = "long-" + uuid.uuid4().hex, "short-" + uuid.uuid4().hex
    status, _ = post(srv, "/prompt", json.dumps({"prompt": default_prompt(tiny_model, steps=500), "prompt_id": long_id}).encode())
    assert status == 200
    queue = wait_for(lambda: (q := json.loads(get(srv, "/queue")[1]))["queue_running"] and q, timeout=60)
    assert [item[1] for item in queue["queue_running"]] == [long_id] and queue["queue_pending"] == []
    assert json.loads(get(srv, "/prompt")[1]) == {"exec_info": {"queue_remaining": 1}}
    assert post(srv, "/prompt", json.dumps({"prompt": default_prompt(tiny_model), "prompt_id": short_id}).encode())[0] == 200
    assert json.loads(get(srv, "/prompt")[1]) == {"exec_info": {"queue_remaining": 2}}
    assert [item[1] for item in json.loads(get(srv, "/queue")[1])["queue_pending"]] == [short_id]
    assert post(srv, "/queue", json.dumps({"delete": [short_id]}).encode()) == (200, {})
    assert json.loads(get(srv, "/queue")[1])["queue_pending"] == []
    assert post(srv, "/interrupt", b"") == (200, {})  # ComfyUI's clients post it with no body
    ended = wait_for(lambda: json.loads(get(srv, f"/history/{long_id}")[1]), timeout=60)[long_id]
    assert ended["status"]["status_str"] == "error" and ended["status"]["messages"][-1][0] == "execution_interrupted"
    assert json.loads(get(srv, f"/history/{short_id}")[1])[short_id]["status"]["messages"][-1][0] == "execution_interrupted"
    assert json.loads(get(srv, "/prompt")[1]) == {"exec_info": {"queue_remaining": 0}}


@pytest.fixture(scope="module")
def token_srv(tmp_path_factory, tiny_model):
    s = ThreadServer(tmp_path_factory.mktemp("comfy-token"), allow_read=[tiny_model.parent], token="s3cret")
    yield s
    s.stop()


def test_a_published_client_library_gets_its_pictures_with_the_token_as_a_basic_password(token_srv, tiny_model, tmp_path):
    """comfy-api-simplified (PyPI): HTTP Basic on every call and in the WebSocket's URL; it
    returns at the first ``status`` with queue_remaining 0, so the running prompt must count."""
    from comfy_api_simplified import ComfyApiWrapper

    api = ComfyApiWrapper(token_srv.url, user="anyone", password="s3cret")
    images = api.queue_and_wait_images(default_prompt(tiny_model, seed=7), "Save Image")
    assert list(images) == ["ComfyUI_00001.png"] and png_size(images["ComfyUI_00001.png"]) == (64, 64)
    info = api.get_object_info()
    assert info["KSampler"]["input"]["required"]["sampler_name"][0][:1] == ["euler"] or "euler" in info["KSampler"]["input"]["required"]["sampler_name"][0]
    assert info["SaveImage"]["output_node"] is True and info["CheckpointLoaderSimple"]["output"] == ["MODEL", "CLIP", "VAE"]
    assert api.get_system_stats()["system"]["comfyui_version"].startswith("graphflow ")
    assert api.get_queue() == {"queue_running": [], "queue_pending": []}
    picture = tmp_path / "up.png"
    picture.write_bytes(images["ComfyUI_00001.png"])
    assert api.upload_image(picture) == {"name": "up.png", "subfolder": "default_upload_folder", "type": "input"}
    assert api.upload_image(picture)["name"] == "up_00001.png"  # never replacing a file
    assert (token_srv.tmp / "out" / "uploads" / "default_upload_folder" / "up.png").read_bytes() == picture.read_bytes()
    assert api.get_image("up.png", "default_upload_folder", "input") == picture.read_bytes()


@pytest.mark.parametrize("how", ["none", "wrong-basic", "bearer", "basic", "query"])
def test_the_token_as_bearer_basic_password_or_query_and_nothing_without_it(token_srv, how):
    basic = lambda pw: {"Authorization": "Basic " + base64.b64encode(f"u:{pw}".encode()).decode()}  # noqa: E731
    headers, path = {"none": ({}, "/queue"), "wrong-basic": (basic("nope"), "/queue"), "bearer": ({"Authorization": "Bearer s3cret"}, "/queue"),
                     "basic": (basic("s3cret"), "/queue"), "query": ({}, "/queue?token=s3cret")}[how]
    status, _ = get(token_srv, path, headers)
    assert status == (401 if how in ("none", "wrong-basic") else 200)
    url = f"ws://127.0.0.1:{token_srv.port}/ws?clientId=x" + ("&token=s3cret" if how == "query" else "")
    if how in ("none", "wrong-basic"):
        with pytest.raises(websocket.WebSocketException):
            websocket.create_connection(url, header=headers, timeout=10).recv()
    else:
        ws = websocket.create_connection(url, header=headers, timeout=10)
        assert json.loads(ws.recv())["type"] == "status"
        ws.close()


def _deep(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


@pytest.mark.parametrize("method,path,headers,body", [
    ("POST", "/prompt", {}, b'{"prompt": {"1": "x"}}'),
    ("POST", "/prompt", {}, b'{"prompt": {"1": {"class_type": 3, "inputs": []}}}'),
    ("POST", "/prompt", {}, b'{"prompt": {"1": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}}'),
    ("POST", "/prompt", {}, b'{"prompt": {"9": {"class_type": "SaveImage", "inputs": {"images": [["8"], 0]}}}}'),
    ("POST", "/prompt", {}, b'{"prompt": {}, "extra_data": ' + _deep(2000) + b"}"),
    ("POST", "/prompt", {}, b'{"prompt": {}, "prompt_id": "' + b"x" * 5000 + b'"}'),
    ("POST", "/prompt", {}, b'{"prompt": {}, "client_id": 7}'),
    ("POST", "/prompt", {}, b'{"prompt": {"1": 1}, "prompt": {}}'),
    ("POST", "/prompt", {}, b"\xff\xfe"),
    ("POST", "/queue", {}, b'{"delete": [{"a": 1}, null, 3]}'),
    ("POST", "/queue", {}, b"[]"),
    ("POST", "/interrupt", {}, b'{"prompt_id": ' + _deep(10) + b"}"),
    ("POST", "/history", {}, b'{"delete": "all"}'),
    ("POST", "/upload/image", {"Content-Type": "multipart/form-data; boundary=x"}, b"--x--"),
    ("POST", "/upload/image", {"Content-Type": "multipart/form-data; boundary=x"},
     b'--x\r\nContent-Disposition: form-data; name="image"; filename="../../evil.png"\r\n\r\nPNG\r\n--x--\r\n'),
    ("POST", "/upload/image", {"Content-Type": "multipart/form-data; boundary=x"},
     b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\nPNG\r\n'
     b'--x\r\nContent-Disposition: form-data; name="subfolder"\r\n\r\n../..\r\n--x--\r\n'),
    ("POST", "/upload/image", {"Content-Type": "text/plain"}, b"hello"),
    ("GET", "/history?max_items=0", {}, b""),
    ("GET", "/history?max_items=99999999999999999999999", {}, b""),
    ("GET", "/history/" + "%00" * 10, {}, b""),
    ("GET", "/view?filename=%00&subfolder=&type=output", {}, b""),
    ("GET", "/view?filename=x&subfolder=" + "y/" * 3000 + "&type=output", {}, b""),
    ("GET", "/view?filename=x&type=nope", {}, b""),
    ("GET", "/object_info/" + "x" * 5000, {}, b""),
])
def test_hostile_requests_to_the_comfyui_routes_never_get_a_500_and_queue_nothing(srv, method, path, headers, body):
    before = runs(srv)
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        conn.request(method, path, body=body or None, headers=headers)
        r = conn.getresponse()
        r.read()
        assert r.status < 500, (method, path, r.status)
    finally:
        conn.close()
    assert runs(srv) == before
    assert not list((srv.tmp / "out").glob("**/evil.png"))


def test_a_picture_uploaded_the_comfyui_way_is_what_loadimage_names(srv, tiny_model, tmp_path):
    """POST /upload/image (multipart, as ComfyUI's clients send it), then a prompt whose
    LoadImage names it as ComfyUI's input folder would have it: img2img through VAEEncode."""
    from PIL import Image

    picture = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(picture, format="PNG")
    import requests

    up = requests.post(f"{srv.url}/upload/image", files={"image": ("red.png", picture.getvalue(), "image/png")},
                       data={"subfolder": "mine", "overwrite": "true"}, timeout=30)
    assert up.status_code == 200 and up.json() == {"name": "red.png", "subfolder": "mine", "type": "input"}
    prompt = default_prompt(tiny_model)
    prompt["10"] = {"class_type": "LoadImage", "inputs": {"image": "mine/red.png"}}
    prompt["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
    prompt["3"]["inputs"].update(latent_image=["11", 0], denoise=0.5)
    del prompt["5"]
    status, body = post(srv, "/prompt", json.dumps({"prompt": prompt, "prompt_id": "img2img-" + uuid.uuid4().hex}).encode())
    assert status == 200, body
    ended = wait_for(lambda: json.loads(get(srv, f"/history/{body['prompt_id']}")[1]), timeout=60)[body["prompt_id"]]
    assert ended["status"]["status_str"] == "success", ended["status"]
    (image,) = ended["outputs"]["9"]["images"]
    status, data = get(srv, "/view?" + urllib.parse.urlencode(image))
    assert status == 200 and png_size(data) == (64, 64)
    # a name that leads out of the uploads is a path as given, and refused by the confined reading
    prompt["10"]["inputs"]["image"] = "../graphflow.db"
    status, body = post(srv, "/prompt", json.dumps({"prompt": prompt}).encode())
    assert status == 400 and list(body["node_errors"]) == ["10"]
