"""Stable Diffusion XL, taken apart as the SD 1.x nodes take SD 1.x apart: each text encoder's
chosen hidden state and pooled embedding, the two encoders' states joined, the unconditional side
(a negative prompt, or zeros as ``force_zeros_for_empty_prompt`` asks), the size conditions
(original size, crop, target size) or a refiner's aesthetic-score conditions, and a UNet call that
takes those added conditions. The scheduler, noise, loop, VAE and guidance nodes are the SD 1.x
ones: SDXL changes only the conditioning. A refiner is the same graph with the second encoder's
states alone and ``AestheticConditions`` in place of ``SizeConditions``.

Its modules are named for the stages they stand in (``graphflow_nodes.stages``): ``encoders`` (the
text side), ``before_denoise`` (the added conditions and their guidance batch), ``denoise`` (the
UNet call). It has no decoders: SDXL's pictures come out through the shared ``Decode``."""
