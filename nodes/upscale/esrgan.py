"""ESRGAN's network, RRDBNet, and how a safetensors file's tensor names and shapes say which one
it is. graphflow's own, because spandrel (the library ComfyUI and chaiNNer load upscalers with)
imports every architecture it knows as it is imported, two of which import torchvision at module
level, and torchvision beside torch 2.13 breaks transformers: spandrel cannot be imported here.

One network, three ways its weights are named, all mapped to BasicSR's:

- BasicSR / Real-ESRGAN (``conv_first``, ``body.N.rdbR.convK``, ``conv_body``, ``conv_upK``,
  ``conv_hr``, ``conv_last``); Real-ESRGAN's ×2 and ×1 models fold the picture into channels first
  (pixel unshuffle: 12 or 48 input channels for RGB), then enlarge ×4 as the others do;
- the original ESRGAN's sequential layout (``model.0``, ``model.1.sub.N.RDBR.convK.0``, up
  convolutions at ``model.3``, ``model.6``, …);
- BSRGAN / RealSR (``RRDB_trunk``, ``trunk_conv``, ``upconvK``, ``HRconv``).

Everything about a file is read from its shapes (features, blocks, growth channels, how many ×2
enlargements), so any size of RRDBNet loads; the names decide nothing but the layout."""

from __future__ import annotations

import re
from dataclasses import dataclass

#: ESRGAN+ adds 1×1 convolutions inside its dense blocks: another network, refused by name
PLUS_KEY = ".conv1x1."


class UpscalerError(ValueError):
    pass


@dataclass(frozen=True)
class Shape:
    """What a file's tensor shapes say about its RRDBNet."""

    in_channels: int
    out_channels: int
    features: int
    blocks: int
    growth: int
    ups: int  # ×2 nearest-neighbour enlargements, each followed by a convolution
    unshuffle: int  # 1, or Real-ESRGAN's pixel-unshuffle factor (2 for its ×2 models, 4 for ×1)

    @property
    def scale(self) -> int:
        return 2 ** self.ups // self.unshuffle

    def describe(self) -> str:
        return f"ESRGAN ×{self.scale} (RRDBNet, {self.blocks} block{'s' if self.blocks > 1 else ''} of {self.features} features)"


def _old_to_new(name: str, ups: int, blocks: int) -> str | None:
    if m := re.fullmatch(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)", name):
        return f"body.{m[1]}.rdb{m[2]}.conv{m[3]}.{m[4]}"
    if m := re.fullmatch(rf"model\.1\.sub\.{blocks}\.(weight|bias)", name):
        return f"conv_body.{m[1]}"
    if m := re.fullmatch(r"model\.(\d+)\.(weight|bias)", name):
        index, kind = int(m[1]), m[2]
        if index == 0:
            return f"conv_first.{kind}"
        if index % 3 == 0 and index // 3 <= ups:
            return f"conv_up{index // 3}.{kind}"
        if index == 3 * ups + 2:
            return f"conv_hr.{kind}"
        if index == 3 * ups + 4:
            return f"conv_last.{kind}"
    return None


def basicsr_names(names) -> dict[str, str]:
    """File name → BasicSR name for every tensor, or an UpscalerError saying what the file is."""
    names = list(names)
    if any(PLUS_KEY in n for n in names):
        raise UpscalerError("an ESRGAN+ model (1×1 convolutions in its dense blocks): not an RRDBNet graphflow runs")
    if "conv_first.weight" in names and any(n.startswith("body.") for n in names):
        return {n: n for n in names}
    if "conv_first.weight" in names and any(n.startswith("RRDB_trunk.") for n in names):  # BSRGAN / RealSR
        def rename(n: str) -> str:
            n = re.sub(r"^RRDB_trunk\.(\d+)\.RDB(\d)\.", r"body.\1.rdb\2.", n)
            n = re.sub(r"^upconv(\d)\.", r"conv_up\1.", n)
            return n.replace("trunk_conv.", "conv_body.").replace("HRconv.", "conv_hr.")
        return {n: rename(n) for n in names}
    if "model.0.weight" in names and "model.1.sub.0.RDB1.conv1.0.weight" in names:
        blocks = 1 + max(int(m[1]) for n in names if (m := re.match(r"model\.1\.sub\.(\d+)\.RDB", n)))
        last = max(int(m[1]) for n in names if (m := re.fullmatch(r"model\.(\d+)\.weight", n)))
        ups = (last - 4) // 3  # conv_first, the trunk, [upsample, conv, act] per ×2, conv_hr, act, conv_last
        mapped = {n: _old_to_new(n, ups, blocks) for n in names}
        if None in mapped.values() or last != 3 * ups + 4:
            stray = next((n for n, v in mapped.items() if v is None), f"model.{last}.weight")
            raise UpscalerError(f"an ESRGAN-style file with a tensor outside RRDBNet's layout ({stray})")
        return mapped
    shown = ", ".join(names[:3]) + (", …" if len(names) > 3 else "")
    raise UpscalerError(f"not an ESRGAN (RRDBNet) model: its tensors ({shown}) are not named as BasicSR, ESRGAN or BSRGAN name them")


def shape_of(shapes: dict[str, tuple]) -> Shape:
    """The network a file holds, from its tensors' BasicSR names and shapes."""
    try:
        first, last = shapes["conv_first.weight"], shapes["conv_last.weight"]
        blocks = 1 + max(int(m[1]) for n in shapes if (m := re.match(r"body\.(\d+)\.", n)))
        growth = shapes["body.0.rdb1.conv1.weight"][0]
        ups = sum(1 for n in shapes if re.fullmatch(r"conv_up\d\.weight", n))
    except (KeyError, ValueError) as e:
        raise UpscalerError(f"an RRDBNet file without its {e} tensor") from None
    in_ch, out_ch = first[1], last[0]
    unshuffle = next((f for f in (2, 4) if in_ch == out_ch * f * f), 1)
    if unshuffle == 1 and in_ch != out_ch:
        raise UpscalerError(f"an RRDBNet with {in_ch} input and {out_ch} output channels: not a picture-to-picture upscaler")
    return Shape(in_ch // unshuffle ** 2, out_ch, first[0], blocks, growth, ups, unshuffle)


def build(shape: Shape):
    """The RRDBNet module for a shape (random weights until a state dict is loaded)."""
    import torch
    import torch.nn.functional as F  # noqa: N812
    from torch import nn

    def conv(i: int, o: int):
        return nn.Conv2d(i, o, 3, 1, 1)

    class DenseBlock(nn.Module):
        """Five convolutions, each seeing every earlier output; the result scaled by 0.2 and added."""

        def __init__(self, nf: int, gc: int) -> None:
            super().__init__()
            for k in range(1, 5):
                setattr(self, f"conv{k}", conv(nf + (k - 1) * gc, gc))
            self.conv5 = conv(nf + 4 * gc, nf)

        def forward(self, x):
            feats = [x]
            for k in range(1, 5):
                feats.append(F.leaky_relu(getattr(self, f"conv{k}")(torch.cat(feats, 1)), 0.2))
            return self.conv5(torch.cat(feats, 1)) * 0.2 + x

    class RRDB(nn.Module):
        def __init__(self, nf: int, gc: int) -> None:
            super().__init__()
            self.rdb1, self.rdb2, self.rdb3 = DenseBlock(nf, gc), DenseBlock(nf, gc), DenseBlock(nf, gc)

        def forward(self, x):
            return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x

    class RRDBNet(nn.Module):
        def __init__(self, s: Shape) -> None:
            super().__init__()
            self.shape = s
            nf = s.features
            self.conv_first = conv(s.in_channels * s.unshuffle ** 2, nf)
            self.body = nn.Sequential(*(RRDB(nf, s.growth) for _ in range(s.blocks)))
            self.conv_body = conv(nf, nf)
            for k in range(1, s.ups + 1):
                setattr(self, f"conv_up{k}", conv(nf, nf))
            self.conv_hr = conv(nf, nf)
            self.conv_last = conv(nf, s.out_channels)

        def forward(self, x):
            if self.shape.unshuffle > 1:
                x = F.pixel_unshuffle(x, self.shape.unshuffle)
            feat = self.conv_first(x)
            feat = feat + self.conv_body(self.body(feat))
            for k in range(1, self.shape.ups + 1):
                feat = F.leaky_relu(getattr(self, f"conv_up{k}")(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
            return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))

    return RRDBNet(shape)


def load(tensors: dict):
    """An RRDBNet with a file's weights, in eval mode; every tensor of the file must find its place."""
    names = basicsr_names(tensors)
    state = {names[n]: t for n, t in tensors.items()}
    model = build(shape_of({n: tuple(t.shape) for n, t in state.items()}))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UpscalerError(f"the file's tensors do not fit the RRDBNet its shapes describe: {str(e).splitlines()[0]}") from None
    return model.eval().requires_grad_(False)
