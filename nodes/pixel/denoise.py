"""A pixel model's UNet call in the loop: a ``UNet2DModel`` takes class labels, not text
embeddings, so the latent models' PredictNoise does not fit it."""

from __future__ import annotations

from graphflow_nodes.kinds import ClassLabels, ModelInput, NoisePred, Timestep, UNet
from pydantic import Field

from graphflow.node_api import Context, Inputs, Node, Outputs


class PredictNoisePixel(Node, name="PredictNoisePixel", category="pixel", uses=("models",)):
    """A pixel-space UNet2DModel's prediction for this timestep, given class labels when the
    model is class-conditioned (``num_class_embeds`` in its config)."""

    class In(Inputs):
        unet: UNet = Field(description="a UNet2DModel from LoadModel")
        model_input: ModelInput = Field(description="from ScaleModelInput (cfg off)")
        timestep: Timestep = Field(description="the loop's timestep")
        class_labels: ClassLabels | None = Field(None, description="from ClassLabel; required by a class-conditioned model")

    class Out(Outputs):
        noise_pred: NoisePred = Field(description="the model output, same shape as model_input")

    def run(self, i: In, ctx: Context) -> dict:
        import torch
        from graphflow_nodes.runtime import placement, to_batch

        unet = ctx.models.get(i.unet)
        device, dtype = placement(unet)
        conditioned = unet.config.get("num_class_embeds") is not None or unet.config.get("class_embed_type") is not None
        if conditioned and i.class_labels is None:
            raise ValueError("this UNet is class-conditioned: give class_labels (a ClassLabel node)")
        if not conditioned and i.class_labels is not None:
            raise ValueError("this UNet is unconditional: it takes no class_labels")
        x = i.model_input.to(dtype=dtype)
        labels = None if i.class_labels is None else to_batch(i.class_labels.to(device), x.shape[0], "class_labels")
        with torch.no_grad():
            return {"noise_pred": unet(x, i.timestep, class_labels=labels, return_dict=False)[0]}
