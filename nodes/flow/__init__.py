"""The flow-matching families, SD3/SD3.5 (MMDiT) and FLUX.1, taken apart as the SD and SDXL nodes
take theirs apart. What changes from SD: a transformer in place of the UNet, predicting a velocity
``noise − x0`` that a FlowMatch scheduler steps along a straight path from noise (σ = 1) to the
picture (σ = 0); a T5 encoder beside CLIP on the text side; a 16-channel VAE with a shift;
schedules shifted towards the noisy end (SD3: a fixed shift; Flux dev: a shift from the image's
sequence length); Flux's latents packed into 2×2 patches with position ids, and dev's guidance
given to the model as an embedding instead of a second batch half.

Its modules are named for the stages they stand in (``graphflow_nodes.stages``): ``encoders``
(T5, SD3's joint embedding, Flux's text ids), ``before_denoise`` (noise, packing, the shift),
``denoise`` (the transformer calls, true CFG), ``decoders`` (unpacking). The scheduler, loop,
step, img2img noise and VAE nodes are the shared ones (stages/)."""
