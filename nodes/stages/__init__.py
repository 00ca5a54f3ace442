"""The Stable Diffusion pipeline's stages, which every family reuses: SD 1.x/2.x runs on these
alone, SDXL and pixel models replace only the nodes their conditioning or UNet call changes
(``graphflow_nodes.sdxl``, ``graphflow_nodes.pixel``). Named as diffusers' modular pipelines
name theirs: ``encoders`` (prompt and picture in), ``before_denoise`` (the starting latents),
``denoise`` (the UNet call and guidance), ``decoders`` (pictures out); beside them the scheduler
(``scheduling``, with ``prediction`` and ``scheduler_state``), the VAE's helpers (``vae``) and
token surgery on the prompt (``tokens``)."""
