"""How graphflow's objects look in a notebook: a run's outputs as pictures, animations and a small
table; its errors with the failing node named; per-node timings and cache hits; a sweep's contact
sheet; a workflow as a picture of its graph. Plain functions from objects to HTML and PNG bytes,
registered with Jupyter's formatters by ``views/jupyter.py`` (the engine knows nothing of them),
and tests read the markup without a browser.

Pictures are embedded as data URIs at their own pixel size (a test decodes exactly what a user
sees) and enlarged by the browser with ``image-rendering: pixelated``: a 64×64 sample stays sharp.
Values are recognised by shape, not by what made them: an image is a (batch, 3, H, W) tensor in
[0, 1] (the convention of the node library's ``Image`` kind); a list of images is a sequence of
frames (an animation); a saved file's path stays text (its picture is shown as a value). Everything a workflow or a node
put into text (ids, messages, parameter values) is escaped: a message cannot inject markup.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from graphflow.pixels import to_uint8
from graphflow.views.text import PROFILE_COLUMNS, profile_rows, value_text

PICTURE_FILES = {".png": "image/png", ".gif": "image/gif", ".webp": "image/webp", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
MAX_FILE_BYTES = 16 << 20  # a picture file larger than this (a contact sheet) is named, not embedded
MAX_BATCH = 64  # pictures of one batch shown; the rest are counted
MAX_FRAMES = 1000  # frames of one animation
ROW_LIST = 8  # a list of up to this many pictures is a row; a longer one, frames of an animation
FRAME_MS = 120
LAST_FRAME_MS = 1000  # the final frame holds, so the result can be seen before the loop restarts
PIXELATED = "image-rendering:pixelated;image-rendering:crisp-edges"


class Shown:
    """Markup that Jupyter displays (``_repr_html_``) and a plain-text form for anything else,
    without importing IPython: what ``graphflow.notebook.show`` and ``profile`` return."""

    def __init__(self, markup: str, text: str = "") -> None:
        self.html, self.text = markup, text

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        return self.text or "<graphflow display>"


# --- values ------------------------------------------------------------------------------------

def is_image(v: Any) -> bool:
    """A (batch, 3, H, W) tensor: the node library's image convention."""
    shape = getattr(v, "shape", None)
    return shape is not None and hasattr(v, "detach") and len(shape) == 4 and shape[1] == 3 and shape[0] >= 1


def is_frames(v: Any) -> bool:
    """A long list of images of one size (more than ``ROW_LIST``): per-step frames, shown as an
    animation. A short list (a Map's pictures, one per seed) is shown as a row instead: a value
    does not say which scope collected it, and a few pictures read best side by side."""
    return (isinstance(v, (list, tuple)) and len(v) > ROW_LIST and all(is_image(x) for x in v)
            and len({tuple(x.shape[2:]) for x in v}) == 1)


def png_bytes(array) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def gif_bytes(frames: list, frame_ms: int = FRAME_MS, last_ms: int = LAST_FRAME_MS) -> bytes:
    """An animated GIF that loops: each frame an (H, W, 3) uint8 array."""
    from PIL import Image

    ims = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    durations = [frame_ms] * (len(ims) - 1) + [last_ms]
    ims[0].save(buf, format="GIF", save_all=True, append_images=ims[1:], duration=durations, loop=0, optimize=False, disposal=1)
    return buf.getvalue()


def _scale(h: int, w: int, target: int = 192) -> int:
    """How many screen pixels per image pixel: small pictures enlarged (up to 4×) towards ``target``
    pixels, big ones as they are."""
    return max(1, min(4, target // max(h, w, 1)))


def img_tag(data: bytes, mime: str, width: int, height: int, title: str = "", target: int = 192) -> str:
    s = _scale(height, width, target)
    uri = f"data:{mime};base64,{base64.b64encode(data).decode()}"
    t = f' title="{html.escape(title)}"' if title else ""
    return f'<img src="{uri}" width="{width * s}" height="{height * s}" style="{PIXELATED}"{t}/>'


def _figure(inner: str, caption: str) -> str:
    return (f'<figure style="margin:0 10px 6px 0;display:inline-block;vertical-align:top">{inner}'
            f'<figcaption style="font-size:11px;color:#555">{caption}</figcaption></figure>')


def image_html(image, name: str) -> str:
    """A batch as a row of pictures (smaller on screen than a single one)."""
    arr = to_uint8(image[:MAX_BATCH])
    return _row(list(arr), name, image.shape[0], "batch")


def list_html(images: list, name: str) -> str:
    """A short list of pictures (each the first of its batch) as one row."""
    return _row([to_uint8(x[:1])[0] for x in images], name, len(images), "list")


def _row(arrs: list, name: str, n: int, what: str) -> str:
    h, w = arrs[0].shape[:2]
    target = 192 if n == 1 else 128
    tags = "".join(img_tag(png_bytes(a), "image/png", a.shape[1], a.shape[0], f"{name}[{k}]", target) for k, a in enumerate(arrs))
    more = f" (first {len(arrs)} shown)" if n > len(arrs) else ""
    cap = f"{html.escape(name)} · {w}×{h}" + (f" · {what} of {n}{more}" if n > 1 else "")
    return _figure(f'<div style="display:flex;gap:3px;flex-wrap:wrap">{tags}</div>', cap)


def frames_html(frames, name: str) -> str:
    """A list of images as one looping animation (the first picture of each batch)."""
    import numpy as np

    arrs = [to_uint8(f[:1])[0] for f in frames[:MAX_FRAMES]]
    h, w = arrs[0].shape[:2]
    gif = gif_bytes([np.ascontiguousarray(a) for a in arrs])
    more = f", first {MAX_FRAMES} shown" if len(frames) > MAX_FRAMES else ""
    return _figure(img_tag(gif, "image/gif", w, h, name), f"{html.escape(name)} · {len(frames)} frames{more}")


def file_html(path: Path, name: str, target: int = 192) -> str:
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        return _figure(f"<code>{html.escape(str(path))}</code>", f"{html.escape(name)} · {size / 2**20:.1f} MiB, not embedded")
    from PIL import Image

    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except (OSError, ValueError):  # not a picture after all (PIL's UnidentifiedImageError is an OSError): name it
        return _figure(f"<code>{html.escape(str(path))}</code>", html.escape(name))
    return _figure(img_tag(data, PICTURE_FILES[path.suffix.lower()], w, h, str(path), target),
                   f"{html.escape(name)} · {html.escape(path.name)}")


def _pictures(name: str, v: Any) -> str | None:
    """The markup of a value that is a picture (or a list of them), None for any other value."""
    if is_image(v):
        return image_html(v, name)
    if is_frames(v):
        return frames_html(v, name)
    if isinstance(v, (list, tuple)) and 1 <= len(v) <= ROW_LIST and all(is_image(x) for x in v):
        return list_html(v, name)
    return None  # a path to a saved file stays a path: the picture it holds is already shown as a value


def _table(rows: list[tuple[str, ...]], header: tuple[str, ...], right: set[int] = frozenset()) -> str:
    th = "".join(f'<th style="text-align:{"right" if k in right else "left"};padding:1px 8px">{html.escape(h)}</th>'
                 for k, h in enumerate(header))
    body = "".join("<tr>" + "".join(f'<td style="text-align:{"right" if k in right else "left"};padding:1px 8px">{html.escape(c)}</td>'
                                    for k, c in enumerate(r)) + "</tr>" for r in rows)
    return f'<table style="border-collapse:collapse;font-size:12px"><tr>{th}</tr>{body}</table>'


# --- a run -------------------------------------------------------------------------------------

def summary(result) -> str:
    ran = sum(1 for s in result.stats.values() if s.runs)
    cached = sum(1 for s in result.stats.values() if s.status in ("memory", "disk"))
    state = "ok" if result.status == "done" else result.status
    return f"run {state} in {result.seconds:.2f} s · {ran} node{'s' * (ran != 1)} ran, {cached} from the cache"


def errors_html(result) -> str:
    parts = []
    for e in result.errors:
        at = f" at iteration {e.iteration}" if e.iteration is not None else ""
        parts.append(f'<div style="color:#a00;margin:2px 0">✗ node <b>{html.escape(e.node)}</b> '
                     f"({html.escape(e.type)}){at} failed: {html.escape(e.message)}</div>")
    for name, why in result.missing.items():
        parts.append(f'<div style="color:#a60;margin:2px 0">output <b>{html.escape(name)}</b> not produced: {html.escape(why)}</div>')
    for msg in getattr(result, "cache_errors", []):
        parts.append(f'<div style="color:#a60">cache: {html.escape(msg)}</div>')
    return "".join(parts)


def profile_html(result) -> str:
    """Per node: how often its code ran, cache hits, seconds, and where its outputs came from."""
    return (_table(profile_rows(result), PROFILE_COLUMNS, {2, 3, 4})
            + f'<div style="font-size:11px;color:#555">run wall time {result.seconds:.3f} s</div>')


def result_html(result, profile: bool = False) -> str:
    """Pictures first (a batch as a row, frame lists as animations, picture files), then the other
    outputs as a two-column table, errors naming their node, and the profile if asked."""
    pics, rows = [], []
    for name, v in result.outputs.items():
        markup = _pictures(name, v)
        if markup is not None:
            pics.append(markup)
        else:
            rows.append((name, value_text(v)))
    color = "#070" if result.ok else ("#a60" if result.cancelled else "#a00")
    head = f'<div class="graphflow-result"><div style="font-size:12px;color:{color};margin-bottom:4px">{html.escape(summary(result))}</div>'
    out = [head]
    if pics:
        out.append(f"<div>{''.join(pics)}</div>")
    if rows:
        out.append(_table(rows, ("output", "value")))
    out.append(errors_html(result))
    if profile:
        out.append('<details open><summary style="font-size:12px">per node</summary>' + profile_html(result) + "</details>")
    out.append("</div>")
    return "".join(out)


def labelled_row(pictures: list[tuple[str, Any]], scale: int | None = None) -> bytes | None:
    """One PNG: (H, W, 3) uint8 pictures side by side, each with its label beneath, enlarged by
    ``scale`` (nearest neighbour). For frontends that show PNG, not HTML, and for documentation."""
    if not pictures:
        return None
    import numpy as np
    from PIL import Image, ImageDraw

    h = max(a.shape[0] for _, a in pictures)
    s = scale or _scale(h, max(a.shape[1] for _, a in pictures))
    label_h, gap = 16, 6
    widths = [max(a.shape[1] * s, 7 * len(label)) for label, a in pictures]
    sheet = Image.new("RGB", (sum(widths) + gap * (len(pictures) - 1), h * s + label_h), "white")
    draw = ImageDraw.Draw(sheet)
    x = 0
    for (label, a), w in zip(pictures, widths):
        im = Image.fromarray(np.ascontiguousarray(a)).resize((a.shape[1] * s, a.shape[0] * s), Image.Resampling.NEAREST)
        sheet.paste(im, (x, 0))
        draw.text((x + 1, h * s + 2), label, fill="black")
        x += w + gap
    return png_bytes(np.asarray(sheet))


def result_png(result) -> bytes | None:
    """The run's pictures (each image of a batch or of a short list, the last frame of a frame
    list) in one labelled row; None when it produced none."""
    pics = []
    for name, v in result.outputs.items():
        if is_image(v):
            arr = to_uint8(v[:MAX_BATCH])
            pics += [(name if len(arr) == 1 else f"{name}[{k}]", a) for k, a in enumerate(arr)]
        elif is_frames(v):
            pics.append((f"{name}[-1]", to_uint8(v[-1][:1])[0]))
        elif isinstance(v, (list, tuple)) and 1 <= len(v) <= ROW_LIST and all(is_image(x) for x in v):
            pics += [(f"{name}[{k}]", to_uint8(x[:1])[0]) for k, x in enumerate(v)]
    return labelled_row(pics)


# --- a workflow --------------------------------------------------------------------------------

def workflow_svg(wf) -> str | None:
    """The graph drawn by Graphviz, or by graphflow where `dot` is not installed (see
    diagram.picture); None only when `dot` fails, so Jupyter falls back to the next representation."""
    from graphflow.views.diagram import RenderError, picture

    try:
        return picture(wf.doc, "svg").decode()
    except RenderError:
        return None


# --- a sweep -----------------------------------------------------------------------------------

def sweep_html(sw) -> str:
    """The sweep's contact sheet (drawn and labelled by sweep.py) and a table of its items: the
    varying parameters, status, seconds and, for a failed item, the node that failed."""
    from graphflow.sweep.contact_sheet import SHEET

    items, varying = sw.items, sw.varying
    done = {i: r for i, r in sw.results.items()}
    counts: dict[str, int] = {}
    for r in done.values():
        counts[r.status] = counts.get(r.status, 0) + 1
    state = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "not run yet"
    head = (f'<div style="font-size:12px;margin-bottom:4px">sweep of {len(items)} item{"s" * (len(items) != 1)} '
            f"({html.escape(state)}) over {html.escape(', '.join(varying) or 'one parameter set')} · "
            f"<code>{html.escape(str(sw.out_dir))}</code></div>")
    sheet = Path(sw.out_dir) / SHEET
    pic = ""
    if done and sheet.is_file():
        pic = file_html(sheet, "contact sheet", target=384)  # a sheet of 64-pixel tiles: enlarged, but not past ~400 px
    rows = []
    for i, params in enumerate(items):
        r = done.get(i)
        err = ""
        if r is not None and r.error:
            e = r.error
            err = f"node '{e.get('node')}' ({e.get('type')}): {e.get('message')}" if e.get("node") else str(e.get("message"))
        rows.append((str(i), *(value_text(params[k], 60) for k in varying), r.status if r else "pending",
                     f"{r.seconds:.2f}" if r else "", err))
    table = _table(rows, ("item", *varying, "status", "seconds", "error"), {0, len(varying) + 2})
    return f'<div class="graphflow-sweep">{head}{pic}{table}</div>'

