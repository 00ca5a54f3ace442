"""Finding and loading models, before any stage runs. Its own room because every family's stages
take what it hands out, and a new family's loader (its pipeline classes in ``families``, its
checkpoint layout in ``checkpoint``) lands here rather than among the stages: the models folders
(``files``), the families a folder can be (``families``), the references models travel as
(``model_refs``), single-file checkpoints (``checkpoint``), what ``graphflow validate`` says about a
model file (``descriptions``), and the LoadModel and LoadLoRA nodes (``models``, ``lora``)."""
