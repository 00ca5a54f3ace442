"""Pixel-space diffusion, the book's first chapters: a ``UNet2DModel`` denoises the picture itself
(no text encoder, no VAE), unconditionally or given a class label. The scheduler nodes
(Scheduler, ScaleModelInput, SchedulerStep, AddNoise) are the ones latent models use: a pixel
sample is what they step, so it travels as ``latents``.

Its modules are named for the stages they stand in (``graphflow_nodes.stages``): ``before_denoise``
(the starting noise, the class label), ``denoise`` (the UNet call), ``decoders`` (the picture). It has
no encoders: there is no prompt to encode."""
