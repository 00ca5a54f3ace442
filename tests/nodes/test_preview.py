"""Live previews (``Executor(preview_every=N)``, ``--preview-every``): SchedulerStep's x0 projected
to RGB by ComfyUI's per-family factors, counted and decoded from real runs; the CLI's file, the
server's event, the notebook's picture."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import graphflow
from graphflow import Executor, Workflow
from graphflow.cli import main
from graphflow.engine import events as ev
from graphflow_nodes.stages.preview import FACTORS, latent_rgb

REPO = Path(__file__).resolve().parents[2]


def decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def txt2img(model, **params) -> Workflow:
    doc = graphflow.load(REPO / "workflows" / "txt2img.json").doc.raw
    doc["outputs"] = {"latents": "denoise.latents"}
    return Workflow.from_dict(doc).with_params(model=str(model), **params)


@pytest.mark.parametrize("family", ["sd15", "sdxl", "sd3", "flux"])
def test_each_channel_maps_to_comfyuis_factor_row(family):
    factors, bias = FACTORS[family]
    channels = len(factors)
    for c in (0, channels - 1):
        x = torch.zeros(1, channels, 2, 3)
        x[0, c] = 1.0
        want = np.round((np.array(factors[c]) + np.array(bias or [0, 0, 0]) + 1) * 127.5).clip(0, 255)
        got = latent_rgb(x, family)
        assert got.shape == (2, 3, 3) and got.dtype == np.uint8
        assert np.array_equal(got[1, 2], want.astype(np.uint8))
    assert np.array_equal(latent_rgb(torch.zeros(1, channels, 1, 1), family)[0, 0],
                          np.round((np.array(bias or [0, 0, 0]) + 1) * 127.5).astype(np.uint8))


def test_auto_reads_the_layout_and_flux_packing_is_undone():
    x = torch.randn(1, 16, 4, 6, generator=torch.Generator().manual_seed(0))
    assert np.array_equal(latent_rgb(x), latent_rgb(x, "sd3"))
    b, c, h, w = x.shape  # FlowLatents' packing (PackLatents), 2×2 patches as tokens
    packed = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)
    assert np.array_equal(latent_rgb(packed), latent_rgb(x, "flux"))  # 6 tokens: 2 rows of 3, as packed
    four = torch.randn(1, 4, 3, 3)
    assert np.array_equal(latent_rgb(four), latent_rgb(four, "sd15"))
    with pytest.raises(ValueError, match="a sd3 preview takes 16-channel latents, not 4"):
        latent_rgb(four, "sd3")


def test_previews_every_n_steps_counted_and_decoded(tiny_model):
    """Euler's last step lands on its x0 (σ_next = 0), so the last preview is the final latents'
    projection: the event carries the x0 of its step."""
    got: list = []
    ex = Executor(preview_every=2)
    ex.subscribe(got.append, on_run_thread=True)
    r = ex.run(txt2img(tiny_model, steps=4, scheduler="euler"))
    assert r.ok, r.errors
    ex.flush()
    previews = [e for e in got if isinstance(e, ev.Preview)]
    assert [(p.node, p.step, p.steps) for p in previews] == [("step", 1, 4), ("step", 3, 4)]
    for p in previews:
        assert p.run_id == r.run_id and (p.width, p.height) == (8, 8)  # 64 px: 8×8 latents
        assert decode(p.png).shape == (8, 8, 3)
    last = decode(previews[-1].png).astype(int)
    assert np.abs(last - latent_rgb(r.outputs["latents"]).astype(int)).max() <= 1
    assert decode(previews[0].png).tolist() != decode(previews[1].png).tolist()
    # off by default: no event, nothing made
    quiet: list = []
    ex0 = Executor()
    ex0.subscribe(quiet.append, on_run_thread=True)
    assert ex0.run(txt2img(tiny_model, steps=4, seed=1)).ok
    assert not [e for e in quiet if isinstance(e, ev.Preview)]
    with pytest.raises(ValueError, match="preview_every must be a whole number of steps"):
        Executor(preview_every=-1)


def test_flux_previews_from_packed_latents(tiny_flux):
    got: list = []
    ex = Executor(preview_every=1)
    ex.subscribe(got.append, on_run_thread=True)
    wf = graphflow.load(REPO / "workflows" / "txt2img_flux.json").with_params(model=str(tiny_flux), steps=2, width=64, height=64)
    assert ex.run(wf).ok
    ex.flush()
    previews = [e for e in got if isinstance(e, ev.Preview)]
    assert [p.step for p in previews] == [0, 1]
    assert all(decode(p.png).shape == (p.height, p.width, 3) for p in previews)


def test_cli_writes_the_preview_file_atomically(tmp_path, tiny_model, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "txt2img", "--set", f"model={tiny_model}", "--set", "steps=2", "--out", "o",
                 "--no-cache", "--quiet", "--preview-every", "1"]) == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["preview.png", "txt2img_00001.png"]  # no temporaries
    assert decode((tmp_path / "o" / "preview.png").read_bytes()).shape == (8, 8, 3)


def test_server_event_and_notebook_picture(tiny_model):
    from graphflow import notebook
    from graphflow.server.run_events import event_dict

    png = latent_rgb(torch.zeros(1, 4, 2, 2))
    buf = io.BytesIO()
    Image.fromarray(png).save(buf, format="PNG")
    d = event_dict(ev.Preview("step", 3, 10, buf.getvalue(), 2, 2, "r1"))
    assert {k: d[k] for k in ("type", "node", "step", "steps", "width", "height")} == \
        {"type": "preview", "node": "step", "step": 3, "steps": 10, "width": 2, "height": 2}
    head, data = d["image"].split(",", 1)
    assert head == "data:image/png;base64" and base64.b64decode(data) == buf.getvalue()

    shown = notebook.LivePreview()
    r = Executor(preview_every=1).run(txt2img(tiny_model, steps=3, seed=2), on_event=shown)
    assert r.ok and shown.count == 3 and decode(shown.png).shape == (8, 8, 3)


def tiny_autoencoder(folder: Path, channels: int, **config) -> Path:
    """A random-weight AutoencoderTiny (diffusers' real class, TAESD's layout at a few channels),
    saved as a diffusers folder: the preview decoder."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(channels)
    ae = AutoencoderTiny(latent_channels=channels, encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                         num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1), **config)
    ae.save_pretrained(folder, safe_serialization=True)
    return folder


def decoded(folder: Path, x0: torch.Tensor) -> np.ndarray:
    """What the preview must be: AutoencoderTiny.decode of the first sample's x0 (its scaling and
    shift undone, as diffusers' pipelines undo a VAE's), [-1, 1] to 8 bits."""
    from diffusers import AutoencoderTiny

    ae = AutoencoderTiny.from_pretrained(folder)
    with torch.no_grad():
        img = ae.decode(x0[:1] / ae.config.scaling_factor + ae.config.shift_factor).sample[0]
    return ((img.permute(1, 2, 0) + 1) * 127.5).clamp(0, 255).round().to(torch.uint8).numpy()


def previews_of(ex: Executor, wf: Workflow):
    got: list = []
    ex.subscribe(got.append, on_run_thread=True)
    r = ex.run(wf)
    ex.flush()
    return r, [e for e in got if isinstance(e, ev.Preview)]


def test_a_tiny_autoencoder_decodes_the_previews(tmp_path, tiny_model):
    """Euler's last x0 is the final latents: the last preview is the tiny decoder's picture of them,
    full size (64 px, not the projection's 8)."""
    from graphflow_nodes.stages.preview import TinyDecoder

    folder = tiny_autoencoder(tmp_path / "taesd", 4)
    r, previews = previews_of(Executor(preview_every=2, preview_decoder=TinyDecoder(str(folder))),
                              txt2img(tiny_model, steps=4, scheduler="euler"))
    assert r.ok, r.errors
    assert [(p.step, p.width, p.height) for p in previews] == [(1, 64, 64), (3, 64, 64)]
    assert np.array_equal(decode(previews[-1].png), decoded(folder, r.outputs["latents"]))
    with pytest.raises(TypeError, match=r"preview_decoder takes a model reference, not a path: graphflow_nodes.stages.preview.TinyDecoder\('taesd'\)"):
        Executor(preview_decoder="taesd")


def test_flow_latents_take_a_16_channel_decoder_and_refuse_a_4_channel_one(tmp_path, tiny_sd3, tiny_flux, tiny_model):
    from graphflow_nodes.stages.preview import TinyDecoder

    sd3 = TinyDecoder(str(tiny_autoencoder(tmp_path / "taesd3", 16, scaling_factor=1.5305, shift_factor=0.0609)))
    doc = graphflow.load(REPO / "workflows" / "txt2img_sd3.json").doc.raw
    doc["outputs"] = {"latents": "denoise.latents"}
    wf = Workflow.from_dict(doc).with_params(model=str(tiny_sd3), steps=2)
    r, previews = previews_of(Executor(preview_every=1, preview_decoder=sd3), wf)
    assert r.ok, r.errors
    assert [p.step for p in previews] == [0, 1] and (previews[-1].width, previews[-1].height) == (64, 64)
    assert np.array_equal(decode(previews[-1].png), decoded(Path(sd3.path), r.outputs["latents"]))
    # Flux's packed latents, unpacked as the linear preview unpacks them
    flux = graphflow.load(REPO / "workflows" / "txt2img_flux.json").with_params(model=str(tiny_flux), steps=1, width=64, height=64)
    r, previews = previews_of(Executor(preview_every=1, preview_decoder=sd3), flux)
    assert r.ok and [(p.width, p.height) for p in previews] == [(64, 64)]
    # an SD decoder for SD3's latents: refused at the first step, whenever the first preview is due
    sd = TinyDecoder(str(tiny_autoencoder(tmp_path / "taesd", 4)))
    r, previews = previews_of(Executor(preview_every=5, preview_decoder=sd), wf.with_params(steps=6))
    assert not r.ok and not previews
    assert (r.errors[0].node, r.errors[0].message) == ("step", (
        "ValueError: the preview decoder takes 4-channel latents, but this model's are 16-channel (SD3's or Flux's): give "
        "the preview decoder (--preview-decoder) one made for this family (taesd3 or taef1), or none for the linear projection"))
    assert r.stats["transformer"].runs == 1  # the first step, no further
    r, _ = previews_of(Executor(preview_every=1, preview_decoder=sd3), txt2img(tiny_model, steps=1))
    assert "takes 16-channel latents, but this model's are 4-channel (SD 1.x/2.x's or SDXL's)" in r.errors[0].message


def test_cli_preview_decoder(tmp_path, tiny_model, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    tiny_autoencoder(tmp_path / "taesd", 4)
    base = ["run", "txt2img", "--set", f"model={tiny_model}", "--set", "steps=2", "--no-cache", "--quiet", "--preview-every", "1"]
    assert main([*base, "--out", "o", "--preview-decoder", "taesd"]) == 0
    assert decode((tmp_path / "o" / "preview.png").read_bytes()).shape == (64, 64, 3)  # the decoder's, full size
    (tmp_path / "notae").mkdir()
    (tmp_path / "notae" / "config.json").write_text('{"_class_name": "AutoencoderKL"}')
    assert main([*base, "--out", "o2", "--preview-decoder", "notae"]) == 2
    err = capsys.readouterr().err
    assert f"argument --preview-decoder: {tmp_path / 'notae'} holds a 'AutoencoderKL', not an AutoencoderTiny (TAESD) decoder" in err
    assert "Traceback" not in err and not (tmp_path / "o2").exists()
