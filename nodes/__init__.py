"""graphflow's Stable Diffusion node library, installed as ``graphflow_nodes`` and found by the
engine through the ``graphflow.nodes`` entry point, like any third-party node pack.

Laid out as diffusers' modular pipelines are, so a new model family gets a room of its own
instead of growing shared files: ``stages/`` holds the Stable Diffusion pipeline's stages
(encoders → before_denoise → denoise → decoders, with the scheduler and VAE beside them), which
every family reuses; ``sdxl/`` and ``pixel/`` hold only what their family changes, under the same
stage names; ``loading/`` finds, describes and loads models. ``library.register``, which the
``graphflow.nodes`` entry point names, registers every node type; this package itself imports
nothing, so a command that only needs the library's flags (``--models-dir``) or ``graphflow models``
does not pay for importing every node type.

Modules here never import torch, diffusers or transformers at module level: ``graphflow
validate`` imports every node type and must stay fast."""
