"""FreeU (Si et al., https://huggingface.co/papers/2309.11497) as a model patch: the UNet's
decoder scales its backbone features by ``b1``/``b2`` and damps the low frequencies of the skip
features by ``s1``/``s2`` (diffusers' ``enable_freeu``). A patch, like a LoRA (loading/lora.py),
so the shared UNet is never changed: the model manager applies it to a private copy, and the
same workflow without FreeU still gives the base picture bit for bit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from graphflow_nodes.kinds import UNet
from pydantic import Field

from graphflow.node_api import Context, Inputs, Node, Outputs


@dataclass(frozen=True)
class FreeUPatch:
    """The four factors, part of the patched UNet's identity (so its own cache entries)."""

    s1: float
    s2: float
    b1: float
    b2: float

    def apply(self, model: Any) -> None:
        if not callable(getattr(model, "enable_freeu", None)):
            raise ValueError(f"FreeU patches a text-conditioned UNet; this model is a {type(model).__name__}")
        model.enable_freeu(s1=self.s1, s2=self.s2, b1=self.b1, b2=self.b2)


class FreeU(Node, name="FreeU", category="model", disk_cache=False):
    """The UNet with FreeU's factors (diffusers' ``enable_freeu``), as a patched reference; the
    defaults are FreeU's values for SD 1.5 (for SDXL its authors give s1 0.6, s2 0.4, b1 1.1,
    b2 1.2). Chain after LoadLoRA or before it: patches apply in order."""

    class In(Inputs):
        unet: UNet = Field(description="from LoadModel (or LoadLoRA)")
        s1: float = Field(0.9, ge=0.0, le=10.0, description="skip features of the first upsampling stage (damps their low frequencies)")
        s2: float = Field(0.2, ge=0.0, le=10.0, description="skip features of the second stage")
        b1: float = Field(1.5, ge=0.0, le=10.0, description="backbone features of the first stage are scaled by this")
        b2: float = Field(1.6, ge=0.0, le=10.0, description="backbone features of the second stage")

    class Out(Outputs):
        unet: UNet = Field(description="the UNet with FreeU (a reference; the base stays as it was)")

    def run(self, i: In, ctx: Context) -> dict:
        if not callable(getattr(i.unet, "with_patch", None)):
            raise TypeError(f"unet: expected a UNet reference from LoadModel, got {type(i.unet).__name__} "
                            "(a flow model has a transformer, which FreeU does not patch)")
        return {"unet": i.unet.with_patch(FreeUPatch(i.s1, i.s2, i.b1, i.b2))}
