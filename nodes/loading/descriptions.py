"""What ``graphflow validate`` says about the model files a workflow names (LoadModel's
``FileInput(describe=...)``): the family of a folder, the configs a single-file checkpoint is
built with. Above both families and checkpoints, which it reads."""

from __future__ import annotations

from graphflow_nodes.loading.checkpoint import VARIANTS, NoShippedConfig, alternatives, choose_variant
from graphflow_nodes.loading.families import ModelError, absent_components, family_of, pipeline_family, read_index
from graphflow_nodes.loading.files import locate, resolve_model_path


def describe_model_folder(value: str) -> str:
    """One line for ``graphflow validate``: which family a model folder is (raises ModelError,
    with LoadModel's own message, for a folder LoadModel would refuse)."""
    if not value.strip():
        raise ModelError("no model folder given: set the workflow's model parameter (--set model=PATH)")
    path = resolve_model_path(value)
    if path.is_file():  # a single-file checkpoint: what its keys and shapes say (loading/checkpoint.py)
        if path.suffix.lower() == ".safetensors":
            from graphflow_nodes.loading.checkpoint import header_shapes
            from graphflow_nodes.loading.flow_checkpoint import detect_flux

            from graphflow_nodes.loading.sd3_checkpoint import PREFIXES, detect_sd3

            shapes = header_shapes(path)
            if detect_sd3(shapes):
                parts = ["VAE"] + [p.split(".")[1] for c, p in PREFIXES.items() if c.startswith("text_encoder")
                                   and any(k.startswith(p) for k in shapes)]
                return (f"sd3 model (a single-file SD3/SD3.5 checkpoint with its {', '.join(parts)}; built with LoadModel's config "
                        f"or the shipped sd3.5-large / sd3.5-medium configs by its shapes) at {path}")
            if detect_flux(shapes):
                return (f"flux model (a single FLUX.1 transformer file in the original layout; LoadModel's config names the Flux "
                        f"folder its VAE, text encoders and tokenizers come from) at {path}")
        try:
            v = choose_variant(path)
        except NoShippedConfig as e:  # the node's config input may name the folder it needs: not an error yet
            return str(e)
        other = alternatives(v)
        extra = f"; LoadModel's config may name {' or '.join(other)} instead" if other else ""
        return f"{pipeline_family(v.config).name} model (a single-file {v.family} checkpoint, built with the {v.name} configs: {v.note}{extra}) at {path}"
    family = family_of(path)
    extra = ""
    if family.name == "pixel":
        labels = read_index(path).get("id2label") or {}
        extra = f", {len(labels)} classes" if labels else ""
    absent = absent_components(path, family)
    if absent:
        extra += f", saved without {' and '.join(absent)}"
    return f"{family.name} model ({read_index(path)['_class_name']}: {family.note}{extra}) at {path}"


def describe_config(value: str) -> str | None:
    """One line for ``graphflow validate`` about LoadModel's ``config`` (nothing when it is empty:
    the model's own line says which configs a checkpoint is built with)."""
    if not value.strip():
        return None
    shipped = {v.name: v for v in VARIANTS}
    if value in shipped:
        return f"the shipped {value} configs: {shipped[value].note}"
    from graphflow_nodes.loading.files import CONFIGS_DIR

    if "/" not in value and (CONFIGS_DIR / value / "model_index.json").is_file():  # sd3.5-large, sd3.5-medium
        return f"the shipped {value} configs ({pipeline_family(CONFIGS_DIR / value).name})"
    folder = locate(value, "checkpoints")
    return f"the configs of a {pipeline_family(folder).name} model folder at {folder}"
