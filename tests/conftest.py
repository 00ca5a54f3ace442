import os
from pathlib import Path

import pytest

# One torch (OpenMP) thread per test process, and in the processes tests start: with the default
# (one per core) two processes sharing these 2-core machines collapse, their spinning thread teams
# taking turns (the suite beside one other pytest ran 10x slower). Set OMP_NUM_THREADS to override.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A random-weight SD folder of real diffusers/transformers classes, built once per session."""
    from tests.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-random-sd")


@pytest.fixture(scope="session")
def pipe(tiny_model):
    from diffusers import StableDiffusionPipeline

    p = StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None, requires_safety_checker=False, local_files_only=True)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(autouse=True)
def _reset_toy_counters():
    """Every test starts with the toy nodes' run counters and records empty."""
    from tests import toy_nodes

    toy_nodes.reset()
    yield
    toy_nodes.reset()


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory) -> Path:
    """A random-weight SDXL folder (two text encoders, added conditions), built once per session."""
    from tests.tiny_model import build_tiny_sdxl

    return build_tiny_sdxl(tmp_path_factory.mktemp("models") / "tiny-random-sdxl")


@pytest.fixture(scope="session")
def tiny_ddpm(tmp_path_factory) -> Path:
    """A random-weight unconditional pixel-space DDPM folder (UNet2DModel, 16x16)."""
    from tests.tiny_model import build_tiny_pixel

    return build_tiny_pixel(tmp_path_factory.mktemp("models") / "tiny-random-ddpm")


@pytest.fixture(scope="session")
def tiny_class_ddpm(tmp_path_factory) -> Path:
    """A random-weight class-conditioned pixel-space DDPM folder (5 classes)."""
    from tests.tiny_model import build_tiny_pixel

    return build_tiny_pixel(tmp_path_factory.mktemp("models") / "tiny-random-class-ddpm", seed=1, num_class_embeds=5)


@pytest.fixture(scope="session")
def tiny_sdxl_refiner(tiny_sdxl, tmp_path_factory) -> Path:
    """A random-weight SDXL refiner folder (no first text encoder, aesthetic-score conditions),
    sharing tiny_sdxl's second text encoder and VAE as the real refiner shares the base's."""
    from tests.tiny_model import build_tiny_sdxl_refiner

    return build_tiny_sdxl_refiner(tmp_path_factory.mktemp("models") / "tiny-random-sdxl-refiner", base=tiny_sdxl)


@pytest.fixture(scope="session")
def tiny_sd3(tmp_path_factory) -> Path:
    """A random-weight SD3 folder (two CLIP encoders with projections, T5, MMDiT, 16-channel VAE)."""
    from tests.tiny_flow_models import build_tiny_sd3

    return build_tiny_sd3(tmp_path_factory.mktemp("models") / "tiny-random-sd3")


@pytest.fixture(scope="session")
def tiny_sd3_no_t5(tmp_path_factory) -> Path:
    """The SD3 folder saved without its T5 encoder (text_encoder_3 and tokenizer_3 null)."""
    from tests.tiny_flow_models import build_tiny_sd3

    return build_tiny_sd3(tmp_path_factory.mktemp("models") / "tiny-random-sd3-no-t5", t5=False)


@pytest.fixture(scope="session")
def tiny_flux(tmp_path_factory) -> Path:
    """A random-weight FLUX.1-dev-shaped folder (guidance embedding, dynamically shifted schedule)."""
    from tests.tiny_flow_models import build_tiny_flux

    return build_tiny_flux(tmp_path_factory.mktemp("models") / "tiny-random-flux-dev")


@pytest.fixture(scope="session")
def tiny_flux_schnell(tmp_path_factory) -> Path:
    """A random-weight FLUX.1-schnell-shaped folder (no guidance embedding, shift 1)."""
    from tests.tiny_flow_models import build_tiny_flux

    return build_tiny_flux(tmp_path_factory.mktemp("models") / "tiny-random-flux-schnell", seed=1, guidance_embeds=False)


@pytest.fixture(scope="session")
def tiny_inpaint(tiny_model, tmp_path_factory) -> Path:
    """tiny_model's components with a 9-channel inpainting UNet (StableDiffusionInpaintPipeline)."""
    from tests.tiny_model import build_tiny_inpaint

    return build_tiny_inpaint(tiny_model, tmp_path_factory.mktemp("models") / "tiny-random-sd-inpaint")


@pytest.fixture(scope="session")
def tiny_sdxl_inpaint(tiny_sdxl, tmp_path_factory) -> Path:
    """tiny_sdxl's components with a 9-channel inpainting UNet (StableDiffusionXLInpaintPipeline)."""
    from tests.tiny_model import build_tiny_inpaint

    return build_tiny_inpaint(tiny_sdxl, tmp_path_factory.mktemp("models") / "tiny-random-sdxl-inpaint", seed=3)
