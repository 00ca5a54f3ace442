"""Procedural "coloured shape on a plain background" dataset for the tiny SD model,
plus the measurement functions used to score generated images.

Everything is deterministic from a seed and generated on the fly with Pillow.

    >>> from train import shapes
    >>> img, caption, (fg, bg, shape) = shapes.sample(seed=0)
    >>> shapes.measure(img)   # {'background': 'blue', 'colour': 'red', 'shape': 'circle', ...}
"""
import random

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64

# Named colours: far apart in RGB (min pairwise RGB distance 177 of 255).
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 190, 40),
    "blue": (30, 40, 220),
    "yellow": (240, 220, 30),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
COLOUR_NAMES = list(COLOURS)
# Colours the base model never saw, taught by add-ons (train/train_lora.py teaches "purple").
# render() draws them; measure() names them only when asked (palette=ALL_COLOUR_NAMES), so the
# base model's own numbers are measured exactly as before.
EXTRA_COLOURS = {"purple": (150, 30, 190)}
ALL_COLOUR_NAMES = COLOUR_NAMES + list(EXTRA_COLOURS)
SHAPES = ["circle", "square", "triangle"]
# A shape the base model never saw, taught by an add-on (train/train_lora.py teaches "cross", a
# plus sign). measure() considers it only when asked (shapes=ALL_SHAPES).
EXTRA_SHAPES = ["cross"]
ALL_SHAPES = SHAPES + EXTRA_SHAPES

TEMPLATES = [
    "a {fg} {shape} on a {bg} background",
    "a {bg} background with a {fg} {shape}",
    "{fg} {shape}, {bg} background",
    "a {fg} {shape} on {bg}",
]

# (shape colour, background colour, shape) triples never used in training.
# One shape is held out for 18 of the 30 (colour, background) pairs, so every pair,
# colour and shape is still seen in training, but these exact combinations are not.
HELD_OUT = [
    ("red", "green", "circle"),
    ("red", "white", "square"),
    ("red", "black", "triangle"),
    ("green", "blue", "square"),
    ("green", "yellow", "triangle"),
    ("green", "black", "circle"),
    ("blue", "red", "triangle"),
    ("blue", "yellow", "circle"),
    ("blue", "white", "square"),
    ("yellow", "red", "square"),
    ("yellow", "green", "circle"),
    ("yellow", "black", "triangle"),
    ("white", "green", "triangle"),
    ("white", "blue", "circle"),
    ("white", "yellow", "square"),
    ("black", "red", "circle"),
    ("black", "blue", "triangle"),
    ("black", "white", "square"),
]
_HELD_OUT_SET = set(HELD_OUT)

ALL_TRIPLES = [(fg, bg, s) for fg in COLOUR_NAMES for bg in COLOUR_NAMES if fg != bg for s in SHAPES]
TRAIN_TRIPLES = [t for t in ALL_TRIPLES if t not in _HELD_OUT_SET]


def caption_for(fg, bg, shape, variant=0):
    return TEMPLATES[variant % len(TEMPLATES)].format(fg=fg, bg=bg, shape=shape)


def render(fg, bg, shape, cx, cy, size):
    """Draw one shape whose bounding box is size x size, centred at (cx, cy). Returns uint8 HxWx3."""
    im = Image.new("RGB", (SIZE, SIZE), COLOURS[bg] if bg in COLOURS else EXTRA_COLOURS[bg])
    d = ImageDraw.Draw(im)
    x0, y0 = int(round(cx - size / 2)), int(round(cy - size / 2))
    x1, y1 = x0 + size - 1, y0 + size - 1
    c = COLOURS[fg] if fg in COLOURS else EXTRA_COLOURS[fg]
    if shape == "square":
        d.rectangle([x0, y0, x1, y1], fill=c)
    elif shape == "circle":
        d.ellipse([x0, y0, x1, y1], fill=c)
    elif shape == "triangle":
        d.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=c)
    elif shape == "cross":  # a plus sign, arms a third of the box wide
        a0, a1 = x0 + size / 3, x0 + 2 * size / 3 - 1
        b0, b1 = y0 + size / 3, y0 + 2 * size / 3 - 1
        d.rectangle([a0, y0, a1, y1], fill=c)
        d.rectangle([x0, b0, x1, b1], fill=c)
    else:
        raise ValueError(shape)
    return np.asarray(im, dtype=np.uint8)


def sample(seed=None, rng=None, triple=None, train_only=True):
    """One random (image uint8 HxWx3, caption, (fg, bg, shape))."""
    rng = rng or random.Random(seed)
    if triple is None:
        triple = rng.choice(TRAIN_TRIPLES if train_only else ALL_TRIPLES)
    fg, bg, shape = triple
    size = rng.randint(22, 42)
    m = 4  # keep a background border so the border pixels give the background colour
    cx = rng.uniform(m + size / 2, SIZE - m - size / 2)
    cy = rng.uniform(m + size / 2, SIZE - m - size / 2)
    img = render(fg, bg, shape, cx, cy, size)
    cap = caption_for(fg, bg, shape, rng.randrange(len(TEMPLATES)))
    return img, cap, triple


def make_batch(n, seed, train_only=True):
    """n samples deterministic from seed: (uint8 array n x 64 x 64 x 3, captions, triples)."""
    rng = random.Random(seed)
    imgs, caps, trips = [], [], []
    for _ in range(n):
        img, cap, t = sample(rng=rng, train_only=train_only)
        imgs.append(img); caps.append(cap); trips.append(t)
    return np.stack(imgs), caps, trips


# ----------------------------------------------------------------------------------------------
# measurement
# ----------------------------------------------------------------------------------------------
_PALETTE = np.array([COLOURS[n] for n in COLOUR_NAMES], dtype=np.float64) / 255.0


def _to_float(image):
    a = np.asarray(image)
    if a.dtype == np.uint8:
        return a.astype(np.float64) / 255.0
    a = a.astype(np.float64)
    if a.max() > 1.5:  # 0..255 floats
        a = a / 255.0
    return np.clip(a, 0.0, 1.0)


def classify_colour(rgb, palette=None):
    """Nearest named colour to an RGB triple (in [0,1] floats or 0..255), among the six base
    colours or the given names (e.g. ALL_COLOUR_NAMES)."""
    c = np.asarray(rgb, dtype=np.float64).reshape(3)
    if c.max() > 1.5:
        c = c / 255.0
    if palette is None:
        return COLOUR_NAMES[int(np.argmin(((_PALETTE - c) ** 2).sum(1)))]
    table = np.array([{**COLOURS, **EXTRA_COLOURS}[n] for n in palette], dtype=np.float64) / 255.0
    return list(palette)[int(np.argmin(((table - c) ** 2).sum(1)))]


def _templates(h, w, extra=False):
    """Ideal square / circle / upright-triangle masks filling an h x w box (and with ``extra``,
    the plus-sign cross)."""
    yy, xx = np.mgrid[0:h, 0:w]
    u = (xx + 0.5) / w  # 0..1
    v = (yy + 0.5) / h
    sq = np.ones((h, w), bool)
    circ = (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    tri = np.abs(u - 0.5) <= 0.5 * v
    out = {"square": sq, "circle": circ, "triangle": tri}
    if extra:
        out["cross"] = (np.abs(u - 0.5) <= 1 / 6) | (np.abs(v - 0.5) <= 1 / 6)
    return out


def measure(image, palette=None, shapes=None):
    """Measure a generated/dataset image (HxWx3, uint8 or floats in [0,1]).

    Returns dict(background, colour, shape, fill, ious, found).
      background: named colour of the median border pixel;
      colour: named colour of the median pixel of the largest connected blob of pixels
              clearly different from the background (stray specks ignored);
      shape: best match (IoU) of that blob, holes filled, to the ideal square, circle or
             upright triangle filling the blob's bounding box; fill = blob area / bbox area
             (square ~1.0, circle ~0.785, triangle ~0.5) is reported too.
    """
    from scipy import ndimage

    a = _to_float(image)
    h, w, _ = a.shape
    border = np.concatenate([a[:2].reshape(-1, 3), a[-2:].reshape(-1, 3),
                             a[:, :2].reshape(-1, 3), a[:, -2:].reshape(-1, 3)])
    bg_rgb = np.median(border, axis=0)
    background = classify_colour(bg_rgb, palette)
    dist = np.sqrt(((a - bg_rgb) ** 2).sum(-1))
    mask = dist > 0.3
    # light opening removes one-pixel specks and thin lines
    opened = ndimage.binary_opening(mask, structure=np.ones((2, 2), bool))
    if opened.sum() >= 12:
        mask = opened
    lab, n = ndimage.label(mask)
    if n == 0:
        return {"background": background, "colour": None, "shape": None, "fill": 0.0,
                "ious": {}, "found": False}
    sizes = ndimage.sum(mask, lab, index=np.arange(1, n + 1))
    blob = lab == (1 + int(np.argmax(sizes)))
    blob = ndimage.binary_fill_holes(blob)
    ys, xs = np.nonzero(blob)
    # colour from the blob's interior where possible (edges blend with the background)
    inner = ndimage.binary_erosion(blob, iterations=1)
    px = a[inner] if inner.sum() >= 6 else a[blob]
    colour = classify_colour(np.median(px, axis=0), palette)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    box = blob[y0:y1, x0:x1]
    fill = float(box.mean())
    ious = {}
    for name, t in _templates(*box.shape, extra=bool(shapes and set(shapes) - set(SHAPES))).items():
        ious[name] = float((box & t).sum() / max(1, (box | t).sum()))
    shape = max(ious, key=ious.get)
    return {"background": background, "colour": colour, "shape": shape, "fill": fill,
            "ious": ious, "found": True, "area": int(blob.sum())}


def score(image, fg, bg, shape):
    """(colour ok, background ok, shape ok) for one image against its prompt triple."""
    m = measure(image)
    return m["colour"] == fg, m["background"] == bg, m["shape"] == shape


def check_dataset(n=2000, seed=1234):
    """Measurement accuracy on ground-truth dataset images (should be ~1.0 each)."""
    imgs, caps, trips = make_batch(n, seed, train_only=False)
    ok = np.array([score(im, *t) for im, t in zip(imgs, trips)], dtype=float)
    return dict(colour=ok[:, 0].mean(), background=ok[:, 1].mean(), shape=ok[:, 2].mean())


if __name__ == "__main__":
    import time
    t = time.time()
    print("ground-truth measurement accuracy:", check_dataset(), f"{time.time()-t:.1f}s")
    img, cap, tr = sample(seed=0)
    print(cap, measure(img))
