"""Small random RRDBNet upscalers, saved the way real ones are, and the network they are checked
against: BasicSR's ``RRDBNet`` (``basicsr/archs/rrdbnet_arch.py``, the code Real-ESRGAN trains
and ships), transcribed here because neither BasicSR nor spandrel imports without torchvision.
Its files name their tensors as BasicSR does; the original ESRGAN's sequential names and
BSRGAN's are made from them by renaming, as those projects' own converters map them."""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn


def pixel_unshuffle(x, scale: int):
    """BasicSR's ``arch_util.pixel_unshuffle``."""
    b, c, hh, hw = x.size()
    h, w = hh // scale, hw // scale
    return x.view(b, c, h, scale, w, scale).permute(0, 1, 3, 5, 2, 4).reshape(b, c * scale**2, h, w)


class ResidualDenseBlock(nn.Module):
    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x):
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class RRDB(nn.Module):
    def __init__(self, num_feat: int, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x):
        out = self.rdb1(x)
        out = self.rdb2(out)
        out = self.rdb3(out)
        return out * 0.2 + x


class RRDBNet(nn.Module):
    """BasicSR's: ×4 by two nearest ×2 enlargements; ×2 and ×1 fold the picture first."""

    def __init__(self, num_in_ch: int, num_out_ch: int, scale: int = 4, num_feat: int = 64, num_block: int = 23,
                 num_grow_ch: int = 32) -> None:
        super().__init__()
        self.scale = scale
        if scale == 2:
            num_in_ch = num_in_ch * 4
        elif scale == 1:
            num_in_ch = num_in_ch * 16
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(num_feat, num_grow_ch) for _ in range(num_block)))
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x):
        if self.scale == 2:
            feat = pixel_unshuffle(x, scale=2)
        elif self.scale == 1:
            feat = pixel_unshuffle(x, scale=4)
        else:
            feat = x
        feat = self.conv_first(feat)
        body_feat = self.conv_body(self.body(feat))
        feat = feat + body_feat
        feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
        feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(feat)))


def random_rrdbnet(scale: int = 4, seed: int = 0, num_feat: int = 8, num_block: int = 1, num_grow_ch: int = 4) -> RRDBNet:
    """A small RRDBNet with random weights, plus a path carrying the picture through (as a
    trained one has), so its result is the picture, enlarged, with every layer's random texture
    on it: values spread over [0, 1] instead of a near-black field the final clamp would flatten."""
    g = torch.Generator().manual_seed(seed)
    net = RRDBNet(3, 3, scale=scale, num_feat=num_feat, num_block=num_block, num_grow_ch=num_grow_ch).eval()
    fold = {2: 2, 1: 4}.get(scale, 1)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 / p[0].numel() ** 0.5 if p.dim() > 1 else 0.02))
        for c in range(3):
            net.conv_first.weight[c, c * fold * fold, 1, 1] += 1.0
            for conv in (net.conv_up1, net.conv_up2, net.conv_hr, net.conv_last):
                conv.weight[c, c, 1, 1] += 1.0
    return net


def esrgan_names(state: dict, ups: int = 2) -> dict:
    """BasicSR names → the original ESRGAN's sequential ones (``model.0``, ``model.1.sub.N.RDBR.convK.0``, …)."""
    blocks = 1 + max(int(m[1]) for k in state if (m := re.match(r"body\.(\d+)\.", k)))
    out = {}
    for k, v in state.items():
        if m := re.fullmatch(r"body\.(\d+)\.rdb(\d)\.conv(\d)\.(weight|bias)", k):
            out[f"model.1.sub.{m[1]}.RDB{m[2]}.conv{m[3]}.0.{m[4]}"] = v
            continue
        head, kind = k.rsplit(".", 1)
        index = {"conv_first": "0", "conv_body": f"1.sub.{blocks}", "conv_hr": str(3 * ups + 2), "conv_last": str(3 * ups + 4)}
        if head.startswith("conv_up"):
            index[head] = str(3 * int(head[-1]))
        out[f"model.{index[head]}.{kind}"] = v
    return out


def bsrgan_names(state: dict) -> dict:
    """BasicSR names → BSRGAN's / RealSR's (``RRDB_trunk``, ``trunk_conv``, ``upconvK``, ``HRconv``)."""
    out = {}
    for k, v in state.items():
        k = re.sub(r"^body\.(\d+)\.rdb(\d)\.", r"RRDB_trunk.\1.RDB\2.", k)
        k = re.sub(r"^conv_up(\d)\.", r"upconv\1.", k)
        out[k.replace("conv_body.", "trunk_conv.").replace("conv_hr.", "HRconv.")] = v
    return out


def save(state: dict, path: Path) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def nearest_rrdbnet(num_feat: int = 8, num_block: int = 1, num_grow_ch: int = 4, seed: int = 0) -> RRDBNet:
    """An RRDBNet whose weights make it enlarge ×4 by nearest neighbour: the picture carried in
    the first three features through identity convolutions, the trunk (random) silenced by a zero
    ``conv_body``. graphflow ships it (``nodes/models/upscalers/nearest-x4-rrdbnet.safetensors``) so
    ``workflows/upscale.json`` runs out of the box with a result anyone can check."""
    net = random_rrdbnet(4, seed, num_feat, num_block, num_grow_ch)

    def identity(conv: nn.Conv2d, channels: int) -> None:
        conv.weight.zero_()
        conv.bias.zero_()
        for c in range(channels):
            conv.weight[c, c, 1, 1] = 1.0

    with torch.no_grad():
        for conv in (net.conv_first, net.conv_up1, net.conv_up2, net.conv_hr, net.conv_last):
            identity(conv, 3)
        net.conv_body.weight.zero_()
        net.conv_body.bias.zero_()
    return net
