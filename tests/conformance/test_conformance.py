"""The conformance matrix: every model family × scheduler × entry point × step count, the graph
against the matching diffusers pipeline on tiny random models, CPU float32, same seed.

A cell is named ``family/config/scheduler/entry/N-steps`` (``sd1/sd15/pndm/txt2img/7-steps``), so
a failure says which. The scheduler configs are those real checkpoints ship (the project's own
``nodes/configs``, which single-file checkpoints load, plus ``tests/conformance/scheduler_configs`` for
switches no shipped config has): their ``skip_prk_steps``, ``steps_offset``, ``timestep_spacing``
and ``set_alpha_to_one`` are where schedules go wrong, so each model folder is copied with its
scheduler replaced by the real one, for the pipeline and the graph alike.

Cells that cannot exist are left out by rule, in ``cells()``, never skipped: img2img where the
pipeline keeps no timestep (``int(steps * strength) == 0``), a handoff where either model would
get none, pixel models with schedulers no pixel pipeline runs correctly. ``tests/conformance/conformance_table.py``
renders the list (and the figures a run measured) as the README's table."""

from __future__ import annotations

import functools
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import graphflow
from graphflow import Executor, Workflow
from graphflow_nodes.stages.scheduling import SCHEDULERS, scheduler_spec

REPO = Path(__file__).resolve().parents[2]
IMAGE = REPO / "nodes" / "samples" / "red-circle-on-blue.png"
MASK = REPO / "nodes" / "samples" / "circle-mask.png"
PROMPT = "a red circle on a blue background"
SEED, GUIDANCE, SWITCH = 3, 5.0, 0.6
BOUND = 1e-5  # max abs difference of a cell, pictures in [0, 1] and latents alike

STEPS = (1, 2, 3, 4, 7)  # odd and even; Heun's halves; DPM-Solver's lower-order final steps
FLOW_STEPS = (1, 3, 4)  # one FlowMatch Euler step is one straight line; odd and even; img2img's t_start rounding
STRENGTHS = (0.75, 0.5)
ALL_SCHEDULERS = ("model", *SCHEDULERS)
#: the noise-prediction schedulers (the flow families' own are refused by name on these models, and the other way round)
SD_SCHEDULERS = ("model", *(n for n in SCHEDULERS if not n.startswith("flow_")))
#: StableDiffusion3Pipeline runs any flow scheduler: FlowMatch Euler with its sigma spacings,
#: FlowMatch Heun, and the multistep solvers on flow sigmas. FluxPipeline passes its own sigmas
#: and mu to ``set_timesteps``: FlowMatch Heun takes no sigmas, and DPM-Solver (multistep and
#: singlestep) and DEIS take mu only with dynamic shifting, which schnell's config lacks, so
#: diffusers fails on those (graphflow refuses them by name: test_a_flow_scheduler_diffusers_cannot_run_is_refused).
#: The stochastic ones (FlowMatch LCM, FlowMatch Euler's stochastic_sampling, SA-Solver) draw
#: from torch's global generator in both pipelines, so they are refused on every flow model
FLOW_SOLVERS = ("flow_euler_karras", "flow_euler_exponential", "flow_euler_beta", "flow_dpm", "flow_dpm_single", "flow_unipc", "flow_deis")
SD3_SCHEDULERS = ("model", "flow_heun", *FLOW_SOLVERS)
FLUX_SCHEDULERS = ("model", *FLOW_SOLVERS)
SCHNELL_SCHEDULERS = ("model", "flow_euler_karras", "flow_euler_exponential", "flow_euler_beta", "flow_unipc")
#: the solvers added beside the model's own run one step count: 3 is odd, past the multistep
#: solvers' first-order start and into their lower-order final step, and both img2img strengths
#: leave steps to run at it (they start at step 0 and 1)
SCHEDULER_LIMITS = {name: (3,) for name in FLOW_SOLVERS}
FLOW_FAMILIES = ("sd3", "sd3-no-t5", "flux-dev", "flux-schnell")
FLOW_GUIDANCE = 3.5  # Flux dev's distilled guidance (an input of the model)
NEGATIVE, TRUE_CFG = "blurry", 2.0
#: DDPMPipeline runs a scheduler as it stands (no input scaling, a ``generator`` passed to
#: ``step``), DDIMPipeline only DDIM: LMS and PNDM take no generator, and the sigma schedulers
#: (Euler, Euler ancestral, Heun) need scaled inputs that these pipelines never make.
PIXEL_SCHEDULERS = ("model", "ddpm", "ddim", "dpm")
#: the hires fix (workflows/hires_fix.json): the txt2img pipeline's latents enlarged ×2 (nearest-exact),
#: then the img2img pipeline given those latents at HIRES_STRENGTH; ``hires-tiled`` decodes the
#: larger picture with the VAE's tiling on. A few schedulers (the config's own, an ancestral
#: one drawing from the second pass's generator, a multistep one) and step counts suffice: the
#: passes themselves are the txt2img and img2img cells
HIRES_SCHEDULERS, HIRES_STEPS, HIRES_STRENGTH, HIRES_SCALE = ("model", "euler_a", "dpm"), (2, 3), 0.5, 2

#: inpainting runs a few schedulers: the model's own, DDIM (noises the kept region by
#: ``alphas_cumprod``), Euler ancestral (by sigma, and draws in the loop: the generator's order)
#: and Heun (its repeated timesteps: the blend must read the step index, not look the timestep up);
#: SD3's own FlowMatch Euler and FlowMatch Heun
INPAINT_SCHEDULERS = ("model", "ddim", "euler_a", "heun", "flow_heun")
INPAINT_STEPS = (1, 3)
#: strength 1 starts from pure noise (a 9-channel UNet never encodes the picture then), 0.75 from the noised picture
INPAINT_STRENGTHS = (1.0, 0.75)

#: ControlNet cells: one ControlNet at a conditioning scale; two stacked, each acting on its own
#: fraction of the schedule (overlapping at 3 steps: summed there); guess mode. A stochastic
#: scheduler beside the model's own shows the generator passing through; 1 and 3 steps
CONTROL_ENTRIES = ("controlnet", "controlnet-multi", "controlnet-guess")
CONTROL_SCHEDULERS, CONTROL_STEPS = ("model", "euler_a"), (1, 3)
#: (scale, start, end) of each ControlNet of an entry, and the sample whose Canny edges it reads
CONTROLS = {
    "controlnet": [(0.8, 0.0, 1.0, "red-circle-on-blue.png")],
    "controlnet-multi": [(1.0, 0.0, 0.7, "red-circle-on-blue.png"), (0.5, 0.3, 1.0, "yellow-square-on-green.png")],
    "controlnet-guess": [(1.0, 0.0, 1.0, "red-circle-on-blue.png")],
}


@dataclass(frozen=True)
class Family:
    fixture: str  # the conftest fixture that builds its tiny folder
    configs: tuple[str, ...]  # the scheduler configs real checkpoints of the family ship
    entries: tuple[str, ...]
    schedulers: tuple[str, ...] = SD_SCHEDULERS
    steps: tuple[int, ...] = STEPS


FAMILIES = {
    "sd1": Family("tiny_model", ("sd15",), ("txt2img", "img2img", "x0", "hires", "t2i_adapter", "ip_adapter", "inpaint")),
    "sd1-inpaint": Family("tiny_inpaint", ("sd15",), ("inpaint",)),
    "sd2-v": Family("tiny_sd2_v", ("sd2-v",), ("txt2img", "img2img", "x0", "hires")),
    "sdxl": Family("tiny_sdxl", ("sdxl", "sdxl-trailing"), ("txt2img", "img2img", "x0", "handoff", "t2i_adapter", "ip_adapter", "inpaint")),
    "sdxl-inpaint": Family("tiny_sdxl_inpaint", ("sdxl",), ("inpaint",)),
    "sdxl-refiner": Family("tiny_sdxl_refiner", ("sdxl-refiner",), ("img2img",)),
    "pixel": Family("tiny_ddpm", ("ddpm",), ("txt2img", "x0"), PIXEL_SCHEDULERS),
    "pixel-class": Family("tiny_class_ddpm", ("ddpm",), ("txt2img", "x0"), PIXEL_SCHEDULERS),
    "sd3": Family("tiny_sd3", ("sd3",), ("txt2img", "img2img", "x0", "inpaint", "single_file", "lora"), SD3_SCHEDULERS, FLOW_STEPS),
    "sd3-no-t5": Family("tiny_sd3_no_t5", ("sd3",), ("txt2img",), ("model",), FLOW_STEPS),
    "flux-dev": Family("tiny_flux", ("flux-dev",), ("txt2img", "img2img", "x0", "true_cfg", "inpaint", "single_file", "lora"),
                       FLUX_SCHEDULERS, FLOW_STEPS),
    "flux-schnell": Family("tiny_flux_schnell", ("flux-schnell",), ("txt2img", "img2img", "x0", "inpaint"), SCHNELL_SCHEDULERS, FLOW_STEPS),
    "sd1-controlnet": Family("tiny_model", ("sd15",), CONTROL_ENTRIES, CONTROL_SCHEDULERS, CONTROL_STEPS),
    "sdxl-controlnet": Family("tiny_sdxl", ("sdxl",), CONTROL_ENTRIES, CONTROL_SCHEDULERS, CONTROL_STEPS),
    "sd3-controlnet": Family("tiny_sd3", ("sd3",), CONTROL_ENTRIES[:2], ("model",), CONTROL_STEPS),
    "flux-controlnet": Family("tiny_flux", ("flux-dev",), CONTROL_ENTRIES[:2], ("model",), CONTROL_STEPS),
}
#: entry points run on fewer schedulers and step counts than the family's: the control models change
#: the UNet call, not the schedule, which the txt2img cells already cover (entry -> (schedulers, steps))
ENTRY_LIMITS = {"t2i_adapter": (("model", "euler_a"), (1, 3)), "ip_adapter": (("model", "euler_a"), (1, 3)),
                "single_file": (("model",), (2,)), "lora": (("model",), (2,)), "true_cfg": (("model",), FLOW_STEPS)}
#: SD3 and Flux single files (SD3.5's all-in-one with its encoders; a FLUX.1 transformer file with
#: the folder's VAE and encoders) and stacked LoRAs (a diffusers and a kohya-style file on both; SD3's
#: kohya file given to diffusers as its diffusers-format twin, since diffusers converts no SD3 kohya
#: file) at these strengths: the txt2img pipeline's picture, from the folder, given
#: ``load_lora_weights`` + ``set_adapters``
FLOW_LORA_STRENGTHS = (0.7, 0.4)
ADAPTER_SCALE, IP_SCALE = 0.8, 0.6
REFERENCE_IMAGE = REPO / "nodes" / "samples" / "yellow-square-on-green.png"


#: entries that edit txt2img (CLIP skip, FreeU, weighted prompts): a couple of schedulers and one
#: step count each, since they change what goes into the loop, not the loop
EDITS = {"sd1": ("clip_skip", "freeu", "weighting"), "sdxl": ("clip_skip", "freeu")}
EDIT_SCHEDULERS, EDIT_STEPS = ("model", "euler"), (2,)
CLIP_SKIP = 1
FREEU = {"sd1": dict(s1=0.9, s2=0.2, b1=1.5, b2=1.6), "sdxl": dict(s1=0.6, s2=0.4, b1=1.1, b2=1.2)}
#: a weighted prompt in graphflow's syntax and in compel's: the reference is StableDiffusionPipeline
#: given compel's embeddings (``prompt_embeds``), graphflow's side EncodeWeighted in compel mode
WEIGHTED, WEIGHTED_COMPEL = "a (red:1.3) circle on a (blue:0.7) background", "a (red)1.3 circle on a (blue)0.7 background"


def scheduler_config(name: str) -> dict:
    for folder in (REPO / "nodes" / "configs" / name / "scheduler", REPO / "tests" / "conformance" / "scheduler_configs" / name):
        if (folder / "scheduler_config.json").exists():
            return json.loads((folder / "scheduler_config.json").read_text())
    raise KeyError(name)


def scheduler_for(config: dict, name: str):
    import diffusers

    cls, options = scheduler_spec(name, config)
    return getattr(diffusers, cls).from_config(config, **options)


@functools.cache
def schedule_exists(config: str, name: str, steps: int) -> bool:
    """Whether diffusers itself can make the schedule (PNDM's Runge-Kutta warm-up, which SD 2.x's
    config leaves on, cannot be fitted into fewer than 4 steps; graphflow refuses it by name)."""
    s = scheduler_for(scheduler_config(config), name)
    try:
        s.set_timesteps(steps, **({"mu": 1.0} if s.config.get("use_dynamic_shifting") else {}))
    except ValueError:
        return False
    return True


def noises_a_picture(name: str) -> bool:
    """Whether SD3's and Flux's img2img pipelines can noise a picture with the scheduler: they call
    ``scale_noise``, which only the FlowMatch schedulers have (the others are refused by name:
    test_img2img_with_a_solver_diffusers_cannot_noise_with_is_refused)."""
    import diffusers

    return name == "model" or hasattr(getattr(diffusers, SCHEDULERS[name]), "scale_noise")


def first_steps(strength: float, steps: int, family: str = "sd1") -> int:
    """The start step of diffusers' img2img for a strength: ``t_start`` of ``get_timesteps``. The
    SD3 and Flux pipelines round the other way: ``int(steps - steps * strength)``, not ``steps -
    int(steps * strength)`` (3 steps at 0.75: they start at step 0, the SD pipelines at step 1)."""
    if family in FLOW_FAMILIES:
        return int(max(steps - min(steps * strength, steps), 0))
    return steps - min(int(steps * strength), steps)


def handoff_sides(config: dict, name: str, steps: int) -> tuple[int, int]:
    """How many timesteps the base and the refiner run at SWITCH, by diffusers' own rule."""
    s = scheduler_for(config, name)
    s.set_timesteps(steps)
    cutoff = int(round(s.config.num_train_timesteps * (1 - SWITCH)))
    return int((s.timesteps >= cutoff).sum()), int((s.timesteps < cutoff).sum())


@dataclass(frozen=True)
class Cell:
    family: str
    config: str
    scheduler: str
    entry: str  # txt2img, img2img-0.75, img2img-0.5, x0, handoff
    steps: int

    @property
    def id(self) -> str:
        return f"{self.family}/{self.config}/{self.scheduler}/{self.entry}/{self.steps}-steps"

    @property
    def run(self) -> Run:
        """The run both sides make for it: x0 frames are collected from the txt2img run."""
        return Run(self.family, self.config, self.scheduler, "txt2img" if self.entry == "x0" else self.entry, self.steps)


@dataclass(frozen=True)
class Run:
    family: str
    config: str
    scheduler: str
    entry: str
    steps: int


def cells() -> list[Cell]:
    out = []
    for fname, fam in FAMILIES.items():
        for config in fam.configs:
            for scheduler in fam.schedulers:
                for entry in fam.entries:
                    limit_schedulers, limit_steps = ENTRY_LIMITS.get(entry, (fam.schedulers, SCHEDULER_LIMITS.get(scheduler, fam.steps)))
                    if scheduler not in limit_schedulers:
                        continue
                    for steps in filter(functools.partial(schedule_exists, config, scheduler), limit_steps):
                        if entry == "inpaint":
                            if scheduler in INPAINT_SCHEDULERS and steps in INPAINT_STEPS:
                                out += [Cell(fname, config, scheduler, f"inpaint-{s}", steps) for s in INPAINT_STRENGTHS
                                        if first_steps(s, steps, fname) < steps]
                        elif entry == "img2img":
                            if fname in FLOW_FAMILIES and not noises_a_picture(scheduler):
                                continue
                            out += [Cell(fname, config, scheduler, f"img2img-{s}", steps) for s in STRENGTHS
                                    if first_steps(s, steps, fname) < steps]
                        elif entry == "hires":
                            if scheduler in HIRES_SCHEDULERS and steps in HIRES_STEPS:
                                out.append(Cell(fname, config, scheduler, entry, steps))
                                if scheduler == "model":
                                    out.append(Cell(fname, config, scheduler, "hires-tiled", steps))
                        elif entry == "handoff":
                            refiner = scheduler_config(FAMILIES["sdxl-refiner"].configs[0])
                            base_n, _ = handoff_sides(scheduler_config(config), scheduler, steps)
                            _, refiner_n = handoff_sides(refiner, scheduler, steps)
                            if base_n and refiner_n:
                                out.append(Cell(fname, config, scheduler, entry, steps))
                        else:
                            out.append(Cell(fname, config, scheduler, entry, steps))
    for fname, entries in EDITS.items():
        config = FAMILIES[fname].configs[0]
        out += [Cell(fname, config, scheduler, entry, steps) for scheduler in EDIT_SCHEDULERS for entry in entries
                for steps in EDIT_STEPS]
    return out


CELLS = cells()
MEASURED: dict[str, float] = {}


@pytest.fixture(scope="session", autouse=True)
def _write_measured():
    """With GRAPHFLOW_CONFORMANCE_OUT set, the figures of the cells that ran are written there as
    JSON (``python -m tests.conformance.conformance_table`` renders them into the README)."""
    yield
    target = os.environ.get("GRAPHFLOW_CONFORMANCE_OUT")
    if target and MEASURED:
        Path(target).write_text(json.dumps(dict(sorted(MEASURED.items())), indent=0))


# --- model folders with the real scheduler configs ---------------------------------------------

@pytest.fixture(scope="session")
def tiny_sd2_v(tmp_path_factory) -> Path:
    from tests.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-random-sd2-v", seed=1, prediction_type="v_prediction", sd2=True)


FOLDERS: dict[tuple[str, str], Path] = {}  # (family, config) -> its folder, made on first use


@pytest.fixture
def folders(request, tmp_path_factory):
    """Makes the cell's folders: the family's tiny folder with the cell's scheduler config in place
    of its own (and the refiner's, for a handoff)."""
    def make(family: str, config: str) -> None:
        if (family, config) in FOLDERS:
            return
        path = tmp_path_factory.mktemp("conformance") / f"{family}-{config}"
        shutil.copytree(request.getfixturevalue(FAMILIES[family].fixture), path)
        cfg = scheduler_config(config)
        (path / "scheduler" / "scheduler_config.json").write_text(json.dumps(cfg))
        index = json.loads((path / "model_index.json").read_text())
        index["scheduler"] = ["diffusers", cfg["_class_name"]]
        (path / "model_index.json").write_text(json.dumps(index))
        FOLDERS[family, config] = path
    return make


def refiner_folder() -> Path:
    return FOLDERS["sdxl-refiner", FAMILIES["sdxl-refiner"].configs[0]]


# --- the diffusers side --------------------------------------------------------------------------

@functools.cache
def pipeline(kind: str, path: Path):
    import diffusers

    cls = getattr(diffusers, kind)
    if kind in ("DDPMPipeline", "DDIMPipeline"):
        unet = diffusers.UNet2DModel.from_pretrained(path, subfolder="unet")
        labels = unet.config.num_class_embeds
        if labels:  # diffusers has no class-conditioned pixel pipeline; its loop is the same
            unet.forward = functools.partial(unet.forward, class_labels=torch.tensor([labels - 1]))
        p = cls(unet=unet, scheduler=diffusers.DDPMScheduler.from_pretrained(path, subfolder="scheduler"))
    else:
        extra = dict(safety_checker=None, requires_safety_checker=False) if kind.startswith("StableDiffusion") and "XL" not in kind else {}
        if kind.startswith("StableDiffusion3"):  # a folder saved without T5 loads as diffusers' users load one
            index = json.loads((path / "model_index.json").read_text())
            extra = {} if index.get("text_encoder_3", [None, None])[1] else {"text_encoder_3": None, "tokenizer_3": None}
        p = cls.from_pretrained(path, local_files_only=True, **extra)
    p.set_progress_bar_config(disable=True)
    return p


class Recorder:
    """Wraps a pipeline scheduler's ``step`` to keep each step's x0: the scheduler's own
    ``pred_original_sample``, DPM-Solver++'s converted model output (its x0), or, where a
    scheduler reports none (PNDM), the x0 its model output implies at ``alphas_cumprod[t]``.
    The wrapper keeps ``step``'s signature: pipelines pass their generator only to a ``step``
    that declares one."""

    def __init__(self, scheduler) -> None:
        self.frames: list[torch.Tensor] = []
        step = scheduler.step

        @functools.wraps(step)
        def recording_step(model_output, timestep, sample, *args, return_dict: bool = True, **kwargs):
            sigma = self.flow_sigma(scheduler, timestep)
            out = step(model_output, timestep, sample, *args, return_dict=True, **kwargs)
            if sigma is not None:  # flow matching: x_t = (1 - σ) x0 + σ noise, the model predicts noise - x0
                self.frames.append((sample - sigma * model_output).clone())
                return out if return_dict else out.to_tuple()
            self.frames.append(self.x0(scheduler, out, model_output, timestep, sample).clone())
            return out if return_dict else out.to_tuple()
        scheduler.step = recording_step

    @staticmethod
    def flow_sigma(scheduler, timestep):
        """A flow scheduler's σ at the step it is about to take (None for other schedulers): a
        FlowMatch one, or a solver on flow sigmas (whose ``model_outputs`` need not be x0: DEIS
        keeps noise there)."""
        if not (type(scheduler).__name__.startswith("FlowMatch") or scheduler.config.get("use_flow_sigmas")):
            return None
        idx = scheduler.step_index
        if idx is None:
            idx = scheduler.begin_index if scheduler.begin_index is not None else scheduler.index_for_timestep(timestep)
        return scheduler.sigmas[idx]

    @staticmethod
    def x0(scheduler, out, model_output, timestep, sample) -> torch.Tensor:
        if getattr(out, "pred_original_sample", None) is not None:
            return out.pred_original_sample
        if hasattr(scheduler, "model_outputs"):
            return scheduler.model_outputs[-1]
        a = scheduler.alphas_cumprod[int(timestep)]
        kind = scheduler.config.prediction_type
        if kind == "epsilon":
            return (sample - (1 - a).sqrt() * model_output) / a.sqrt()
        return a.sqrt() * sample - (1 - a).sqrt() * model_output if kind == "v_prediction" else model_output


@functools.cache
def reference(run: Run):
    """(picture, x0 frames) of the diffusers pipeline (frames on txt2img runs)."""
    from PIL import Image

    family, config, scheduler, entry, steps = run.family, run.config, run.scheduler, run.entry, run.steps
    path, cfg = FOLDERS[family, config], scheduler_config(config)
    g = torch.Generator().manual_seed(SEED)
    if family in FLOW_FAMILIES:
        return flow_reference(run, path, cfg, g)
    if family.endswith("-controlnet"):
        return controlnet_reference(run, path, cfg, g)
    if family.startswith("pixel"):
        p = pipeline("DDIMPipeline" if scheduler == "ddim" else "DDPMPipeline", path)
        p.scheduler = scheduler_for(cfg, scheduler)
        rec = Recorder(p.scheduler)
        image = p(batch_size=1, num_inference_steps=steps, generator=g, output_type="np").images
        return torch.from_numpy(image).permute(0, 3, 1, 2), rec.frames
    xl = family.startswith("sdxl")
    if entry in ENTRY_LIMITS:
        return control_reference(run, path, cfg, g)
    if entry == "handoff":
        base, refiner = pipeline("StableDiffusionXLPipeline", path), pipeline("StableDiffusionXLImg2ImgPipeline", refiner_folder())
        base.scheduler = scheduler_for(cfg, scheduler)
        refiner.scheduler = scheduler_for(scheduler_config("sdxl-refiner"), scheduler)
        latents = base(PROMPT, num_inference_steps=steps, denoising_end=SWITCH, guidance_scale=GUIDANCE, generator=g,
                       output_type="latent").images
        image = refiner(PROMPT, image=latents, num_inference_steps=steps, denoising_start=SWITCH, guidance_scale=GUIDANCE,
                        generator=g, output_type="pt").images
        return image, []
    if entry.startswith("hires"):
        return hires_reference(run, path, cfg, g), []
    if entry.startswith("inpaint"):
        p = pipeline("StableDiffusionXLInpaintPipeline" if xl else "StableDiffusionInpaintPipeline", path)
        p.scheduler = scheduler_for(cfg, scheduler)
        image = p(PROMPT, image=Image.open(IMAGE), mask_image=Image.open(MASK), strength=float(entry.split("-")[1]),
                  num_inference_steps=steps, guidance_scale=GUIDANCE, generator=g, output_type="pt").images
        return image, []
    if entry.startswith("img2img"):
        p = pipeline("StableDiffusionXLImg2ImgPipeline" if xl else "StableDiffusionImg2ImgPipeline", path)
        p.scheduler = scheduler_for(cfg, scheduler)
        image = p(PROMPT, image=Image.open(IMAGE), strength=float(entry.split("-")[1]), num_inference_steps=steps,
                  guidance_scale=GUIDANCE, generator=g, output_type="pt").images
        return image, []
    p = pipeline("StableDiffusionXLPipeline" if xl else "StableDiffusionPipeline", path)
    p.scheduler = scheduler_for(cfg, scheduler)
    if entry in ("clip_skip", "freeu", "weighting"):
        return edited_reference(p, run, g), []
    rec = Recorder(p.scheduler)
    image = p(PROMPT, num_inference_steps=steps, guidance_scale=GUIDANCE, generator=g, output_type="pt").images
    return image, rec.frames


def hires_reference(run: Run, path: Path, cfg: dict, g: torch.Generator) -> torch.Tensor:
    """StableDiffusionPipeline's latents, enlarged, given to StableDiffusionImg2ImgPipeline as its
    ``image`` (a 4-channel image is taken as latents: no VAE encode) with a fresh generator from
    the seed, as the workflow's second NoiseLike draws."""
    import torch.nn.functional as F  # noqa: N812

    base, refine = pipeline("StableDiffusionPipeline", path), pipeline("StableDiffusionImg2ImgPipeline", path)
    base.scheduler, refine.scheduler = scheduler_for(cfg, run.scheduler), scheduler_for(cfg, run.scheduler)
    latents = base(PROMPT, num_inference_steps=run.steps, guidance_scale=GUIDANCE, generator=g, output_type="latent").images
    up = F.interpolate(latents, scale_factor=HIRES_SCALE, mode="nearest-exact")
    if run.entry == "hires-tiled":
        refine.vae.enable_tiling()
    try:
        return refine(PROMPT, image=up, strength=HIRES_STRENGTH, num_inference_steps=run.steps, guidance_scale=GUIDANCE,
                      generator=torch.Generator().manual_seed(SEED), output_type="pt").images
    finally:
        refine.vae.disable_tiling()


def edited_reference(p, run: Run, g: torch.Generator):
    """txt2img with diffusers' own ``clip_skip``, ``enable_freeu``, or compel's embeddings."""
    kwargs: dict = dict(num_inference_steps=run.steps, guidance_scale=GUIDANCE, generator=g, output_type="pt")
    if run.entry == "clip_skip":
        if not hasattr(p.text_encoder, "text_model"):
            # diffusers 0.42.1's StableDiffusionPipeline reaches the final norm through
            # ``text_encoder.text_model``, which transformers 5 flattened away: the same module,
            # named as the pipeline expects (a plain attribute, not a registered submodule)
            object.__setattr__(p.text_encoder, "text_model", p.text_encoder)
        return p(PROMPT, clip_skip=CLIP_SKIP, **kwargs).images
    if run.entry == "weighting":
        from compel import Compel

        compel = Compel(tokenizer=p.tokenizer, text_encoder=p.text_encoder, truncate_long_prompts=False)
        return p(prompt_embeds=compel(WEIGHTED_COMPEL), negative_prompt_embeds=compel(""), **kwargs).images
    p.unet.enable_freeu(**FREEU[run.family])
    try:
        return p(PROMPT, **kwargs).images
    finally:
        p.unet.disable_freeu()  # the pipeline is cached for the other cells


@functools.cache
def control_files(family: str, config: str) -> dict[str, Path]:
    """Tiny random control models for the cell's folder: a T2I-Adapter folder and an IP-Adapter
    file (its image encoder beside it)."""
    from tests.tiny_adapters import build_tiny_ip_adapter, build_tiny_t2i_adapter

    path = FOLDERS[family, config]
    adapter = build_tiny_t2i_adapter(path.parent / f"{path.name}-t2i-adapter", path, seed=5)
    ip = build_tiny_ip_adapter(path.parent / f"{path.name}-ip-adapter" / "ip-adapter.safetensors", path, seed=6)
    return {"adapter": adapter, "ip_adapter": ip}


def control_reference(run: Run, path: Path, cfg: dict, g: torch.Generator):
    """The T2I-Adapter pipelines (the control image resized to 64×64 by the pipeline, scaled by
    ADAPTER_SCALE), or the text-to-image pipeline with ``load_ip_adapter`` + ``set_ip_adapter_scale``
    (a pipeline of its own: loading the adapter changes its UNet)."""
    import diffusers
    from PIL import Image

    xl = run.family.startswith("sdxl")
    files = control_files(run.family, run.config)
    extra = {} if xl else dict(safety_checker=None, requires_safety_checker=False)
    kwargs: dict = dict(num_inference_steps=run.steps, guidance_scale=GUIDANCE, generator=g, output_type="pt")
    if run.entry == "t2i_adapter":
        adapter = diffusers.T2IAdapter.from_pretrained(files["adapter"], use_safetensors=True, local_files_only=True)
        cls = diffusers.StableDiffusionXLAdapterPipeline if xl else diffusers.StableDiffusionAdapterPipeline
        p = cls.from_pretrained(path, adapter=adapter, local_files_only=True, **extra)
        kwargs |= dict(image=Image.open(IMAGE), height=64, width=64, adapter_conditioning_scale=ADAPTER_SCALE)
    else:
        cls = diffusers.StableDiffusionXLPipeline if xl else diffusers.StableDiffusionPipeline
        p = cls.from_pretrained(path, local_files_only=True, **extra)
        p.load_ip_adapter(str(files["ip_adapter"].parent), subfolder="", weight_name=files["ip_adapter"].name, local_files_only=True)
        p.set_ip_adapter_scale(IP_SCALE)
        kwargs |= dict(ip_adapter_image=Image.open(REFERENCE_IMAGE))
    p.set_progress_bar_config(disable=True)
    p.scheduler = scheduler_for(cfg, run.scheduler)
    image = p(PROMPT, **kwargs).images
    if not torch.is_tensor(image):  # StableDiffusionAdapterPipeline decodes to numpy (batch, H, W, 3) whatever output_type says
        image = torch.from_numpy(image).permute(0, 3, 1, 2)
    return image, []


def flow_reference(run: Run, path: Path, cfg: dict, g: torch.Generator):
    """SD3's and Flux's pipelines: a 64×64 picture (Flux's default is 1024), SD3's two-half CFG at
    GUIDANCE, Flux's guidance embedding at FLOW_GUIDANCE (ignored by schnell), true CFG with a
    negative prompt for the ``true_cfg`` entry."""
    from PIL import Image

    sd3 = run.family.startswith("sd3")
    kwargs: dict = dict(num_inference_steps=run.steps, generator=g, output_type="pt", height=64, width=64,
                        guidance_scale=GUIDANCE if sd3 else FLOW_GUIDANCE)
    if run.entry.startswith("img2img"):
        p = pipeline("StableDiffusion3Img2ImgPipeline" if sd3 else "FluxImg2ImgPipeline", path)
        kwargs |= dict(image=Image.open(IMAGE), strength=float(run.entry.split("-")[1]))
    elif run.entry.startswith("inpaint"):
        p = pipeline("StableDiffusion3InpaintPipeline" if sd3 else "FluxInpaintPipeline", path)
        kwargs |= dict(image=Image.open(IMAGE), mask_image=Image.open(MASK), strength=float(run.entry.split("-")[1]))
    else:
        p = pipeline("StableDiffusion3Pipeline" if sd3 else "FluxPipeline", path)
    if run.entry == "true_cfg":
        kwargs |= dict(negative_prompt=NEGATIVE, true_cfg_scale=TRUE_CFG)
    if run.entry == "lora":  # a pipeline of its own: the cached one must stay without adapters
        import diffusers

        p = getattr(diffusers, "StableDiffusion3Pipeline" if sd3 else "FluxPipeline").from_pretrained(path, local_files_only=True)
        p.set_progress_bar_config(disable=True)
        for n, file in enumerate(flow_lora_files(path, for_diffusers=True)):
            p.load_lora_weights(str(file), adapter_name=f"l{n}")
        p.set_adapters(["l0", "l1"], list(FLOW_LORA_STRENGTHS))
    p.scheduler = scheduler_for(cfg, run.scheduler)
    rec = Recorder(p.scheduler)
    if sd3 and run.entry.startswith("inpaint"):
        # StableDiffusion3InpaintPipeline decodes without the VAE's shift_factor (diffusers issue
        # #13611, "SD3 inpaint decode drops the VAE shift"): its latents, decoded as every other
        # SD3 pipeline decodes them, are the reference
        latents = p(PROMPT, **(kwargs | {"output_type": "latent"})).images
        with torch.no_grad():
            decoded = p.vae.decode(latents / p.vae.config.scaling_factor + p.vae.config.shift_factor, return_dict=False)[0]
        return p.image_processor.postprocess(decoded, output_type="pt"), []
    image = p(PROMPT, **kwargs).images
    return image, rec.frames if run.entry == "txt2img" else []


@functools.cache
def flow_lora_files(path: Path, for_diffusers: bool = False) -> tuple[Path, Path]:
    """Two random LoRAs for an SD3 or Flux folder, the second in the kohya layout. diffusers reads
    Flux's kohya files but no SD3 one: ``for_diffusers`` gives SD3's second as its diffusers-format
    twin (the same products layer for layer: tests/flow_lora_files.write_sd3_kohya)."""
    from tests.flow_lora_files import flow_lora_tensors, write_flow_lora, write_flux_kohya

    sd3 = "StableDiffusion3" in (path / "model_index.json").read_text()
    a = write_flow_lora(path.parent / f"{path.name}-lora-a.safetensors", path, flow_lora_tensors(path, 1))
    if not sd3:
        return a, write_flux_kohya(path.parent / f"{path.name}-lora-kohya.safetensors", path, 2)
    kohya, twin = sd3_kohya_files(path)
    return a, twin if for_diffusers else kohya


@functools.cache
def sd3_kohya_files(path: Path) -> tuple[Path, Path]:
    from tests.flow_lora_files import write_sd3_kohya

    return write_sd3_kohya(path.parent / f"{path.name}-lora-kohya.safetensors", path.parent / f"{path.name}-lora-twin.safetensors", path, 2)


@functools.cache
def flow_single_file(path: Path) -> Path:
    """The folder as one file: SD3.5's all-in-one layout, or a FLUX.1 transformer file."""
    from tests.flow_original_layout import write_flux_transformer_file, write_sd3_all_in_one

    if "StableDiffusion3" in (path / "model_index.json").read_text():
        return write_sd3_all_in_one(path, path.parent / f"{path.name}.safetensors")
    return write_flux_transformer_file(path, path.parent / f"{path.name}.safetensors")


@functools.cache
def controlnets(path: Path) -> tuple[Path, Path]:
    """Two tiny random ControlNets made from the folder's UNet (``ControlNetModel.from_unet``) or
    SD3 transformer (``SD3ControlNetModel.from_transformer``)."""
    from tests.tiny_controlnet import build_tiny_controlnet, build_tiny_flux_controlnet, build_tiny_sd3_controlnet

    index = json.loads((path / "model_index.json").read_text())["_class_name"]
    build = {"StableDiffusion3Pipeline": build_tiny_sd3_controlnet, "FluxPipeline": build_tiny_flux_controlnet}.get(index, build_tiny_controlnet)
    return tuple(build(path, path.parent / f"{path.name}-controlnet-{k}", seed=k) for k in (1, 2))


def canny(name: str):
    """The sample's Canny edges as the pipelines' users make them (diffusers' docs: cv2.Canny, 3 channels)."""
    import cv2
    import numpy as np
    from PIL import Image

    edges = cv2.Canny(np.asarray(Image.open(IMAGE.parent / name).convert("RGB")), 100, 200)
    return Image.fromarray(np.stack([edges] * 3, axis=-1))


def controlnet_reference(run: Run, path: Path, cfg: dict, g: torch.Generator):
    """StableDiffusion(XL|3)ControlNetPipeline on the base pipeline's components: one ControlNet, two
    (a MultiControlNetModel, each with its own scale, start and end), or guess mode. SD3's pipeline
    draws the control image's VAE samples from torch's global generator: seeded with SEED, as
    the graph's SD3ControlLatents is."""
    import diffusers
    from diffusers import ControlNetModel, FluxControlNetModel, SD3ControlNetModel

    xl, sd3, flux = run.family.startswith("sdxl"), run.family.startswith("sd3"), run.family.startswith("flux")
    base = pipeline("StableDiffusionXLPipeline" if xl else "StableDiffusion3Pipeline" if sd3 else "FluxPipeline" if flux
                    else "StableDiffusionPipeline", path)
    controls = CONTROLS[run.entry]
    net_cls = SD3ControlNetModel if sd3 else FluxControlNetModel if flux else ControlNetModel
    nets = [net_cls.from_pretrained(p) for p in controlnets(path)[: len(controls)]]
    extra = {"force_zeros_for_empty_prompt": base.config.force_zeros_for_empty_prompt, "add_watermarker": False} if xl else {} if sd3 or flux else \
        {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    parts = {k: v for k, v in base.components.items() if k not in ("safety_checker", "feature_extractor", "image_encoder")}
    cls = diffusers.StableDiffusionXLControlNetPipeline if xl else diffusers.StableDiffusion3ControlNetPipeline if sd3 \
        else diffusers.FluxControlNetPipeline if flux else diffusers.StableDiffusionControlNetPipeline
    p = cls(**parts, **extra, controlnet=nets if len(nets) > 1 else nets[0])
    p.set_progress_bar_config(disable=True)
    p.scheduler = scheduler_for(cfg, run.scheduler)
    one = len(controls) == 1
    scale, start, end, images = ([c[k] for c in controls] for k in range(4))
    kwargs = dict(num_inference_steps=run.steps, guidance_scale=FLOW_GUIDANCE if flux else GUIDANCE, generator=g, output_type="pt",
                  controlnet_conditioning_scale=scale[0] if one else scale, control_guidance_start=start[0] if one else start,
                  control_guidance_end=end[0] if one else end)
    control = canny(images[0]) if one else [canny(n) for n in images]
    if sd3 or flux:
        if flux:  # FluxControlNetPipeline's default size is 1024, whatever the control image's
            kwargs |= dict(height=64, width=64)
        torch.manual_seed(SEED)  # SD3's pipeline draws the control latents from the global generator
        return p(PROMPT, control_image=control, **kwargs).images, []
    return p(PROMPT, image=control, guess_mode=run.entry == "controlnet-guess", **kwargs).images, []


def controlnet_graph(doc: dict, run: Run, path: Path) -> dict:
    """controlnet.json's (or controlnet_sdxl.json's) parameters for the cell; a second ControlNet
    is chained after the first, its residuals added to the first's before the UNet."""
    controls, nets = CONTROLS[run.entry], controlnets(path)
    scale, start, end, image = controls[0]
    sd3, flux = run.family.startswith("sd3"), run.family.startswith("flux")
    params = {"controlnet": str(nets[0]), "control_image": f"samples/{image}", "scale": scale, "start": start, "end": end}
    if flux:
        params["guidance"] = FLOW_GUIDANCE
    if not (sd3 or flux):
        params["guess_mode"] = run.entry == "controlnet-guess"
    for k, (scale, start, end, image) in enumerate(controls[1:], start=2):
        nodes, body = doc["nodes"], doc["nodes"]["denoise"]["body"]
        nodes[f"controlnet_{k}"] = {"type": "LoadControlNet", "inputs": {"path": str(nets[k - 1])}}
        nodes[f"control_source_{k}"] = {"type": "LoadImage", "inputs": {"path": f"samples/{image}"}}
        nodes[f"edges_{k}"] = {"type": "CannyEdges", "inputs": {"image": {"from": f"control_source_{k}.image"}}}
        nodes[f"control_{k}"] = {"type": "ControlImage", "inputs": {"image": {"from": f"edges_{k}.image"},
                                 "width": {"from": "control.width"}, "height": {"from": "control.height"}}}
        apply = json.loads(json.dumps(body["apply_control"]))
        apply["inputs"] |= {"controlnet": {"from": f"controlnet_{k}.controlnet"}, "scale": scale, "start": start, "end": end,
                            "residuals": {"from": "apply_control.residuals"}}
        if sd3 or flux:  # the pipelines encode the second image after the first, from the same generator
            nodes[f"control_latents_{k}"] = {"type": nodes["control_latents"]["type"], "inputs": {
                "vae": {"from": "model.vae"}, "controlnet": {"from": f"controlnet_{k}.controlnet"},
                "control_image": {"from": f"control_{k}.control_image"}, "rng": {"from": "control_latents.rng"}}}
            apply["inputs"]["control_latents"] = {"from": f"control_latents_{k}.latents"}
            if flux:  # then the noise
                nodes["noise"]["inputs"]["rng"] = {"from": f"control_latents_{k}.rng"}
        else:
            apply["inputs"]["control_image"] = {"from": f"control_{k}.control_image"}
        body[f"apply_control_{k}"] = apply
        body["transformer" if sd3 or flux else "unet"]["inputs"]["control"] = {"from": f"apply_control_{k}.residuals"}
    return params


# --- the graph side ------------------------------------------------------------------------------

WORKFLOWS = {  # (family kind, entry) -> the shipped workflow that runs it
    ("sd", "txt2img"): "txt2img", ("sd", "img2img"): "img2img", ("sd", "hires"): "hires_fix",
    ("sd", "inpaint"): "inpaint", ("sdxl", "inpaint"): "inpaint_sdxl", ("sd3", "inpaint"): "inpaint_sd3", ("flux", "inpaint"): "inpaint_flux",
    ("sd", "clip_skip"): "txt2img", ("sdxl", "clip_skip"): "txt2img_sdxl", ("sd", "freeu"): "freeu", ("sdxl", "freeu"): "freeu_sdxl",
    ("sd", "weighting"): "prompt_weighting",
    ("sdxl", "txt2img"): "txt2img_sdxl", ("sdxl", "img2img"): "img2img_sdxl", ("sdxl", "handoff"): "txt2img_sdxl_refiner",
    ("sdxl-refiner", "img2img"): "img2img_sdxl_refiner",
    ("pixel", "txt2img"): "ddpm", ("pixel-class", "txt2img"): "class_conditioned",
    ("sd3", "txt2img"): "txt2img_sd3", ("sd3", "img2img"): "img2img_sd3",
    ("sd", "t2i_adapter"): "t2i_adapter", ("sdxl", "t2i_adapter"): "t2i_adapter_sdxl",
    ("sd", "ip_adapter"): "ip_adapter", ("sdxl", "ip_adapter"): "ip_adapter_sdxl",
    ("flux", "txt2img"): "txt2img_flux", ("flux", "img2img"): "img2img_flux", ("flux", "true_cfg"): "txt2img_flux_true_cfg",
    ("sd", "controlnet"): "controlnet", ("sdxl", "controlnet"): "controlnet_sdxl", ("sd3", "controlnet"): "controlnet_sd3",
    ("flux", "controlnet"): "controlnet_flux",
    ("sd3", "single_file"): "txt2img_sd3", ("flux", "single_file"): "txt2img_flux", ("sd3", "lora"): "txt2img_sd3", ("flux", "lora"): "txt2img_flux",
}
_EXECUTORS: dict[str, Executor] = {}


@functools.cache
def graph(run: Run):
    """(picture, x0 frames) of the shipped workflow: a txt2img loop also collects its
    ``pred_x0``. One executor per family, so models load once."""
    family, scheduler, entry, steps = run.family, run.scheduler, run.entry, run.steps
    path = FOLDERS[family, run.config]
    kind = "sd" if family in ("sd1", "sd2-v", "sd1-inpaint", "sd1-controlnet") \
        else family.split("-")[0] if family in (*FLOW_FAMILIES, "sdxl-inpaint") \
        else family.removesuffix("-controlnet") if family in ("sdxl-controlnet", "sd3-controlnet", "flux-controlnet") else family
    base_entry = entry.split("-")[0]
    doc = graphflow.load(REPO / "workflows" / f"{WORKFLOWS[kind, base_entry]}.json").doc.raw
    doc["outputs"] = {"image": doc["outputs"]["image"]}
    params: dict = {"model": str(path), "seed": SEED, "steps": steps, "scheduler": scheduler}
    if base_entry in ("txt2img", "true_cfg"):
        doc["nodes"]["denoise"].setdefault("collect", {})["x0"] = {"from": "step.pred_x0"}
        doc["outputs"]["x0"] = "denoise.x0"
    if entry.startswith(("img2img", "inpaint")):
        params |= {"image": str(IMAGE), "start_step": first_steps(float(entry.split("-")[1]), steps, family)}
    if base_entry == "hires":
        params |= {"hires_steps": steps, "hires_start_step": first_steps(HIRES_STRENGTH, steps), "scale": float(HIRES_SCALE),
                   "tiled_vae": entry == "hires-tiled"}
    if entry.startswith("inpaint"):
        params["mask"] = str(MASK)
    if entry == "handoff":
        params |= {"refiner": str(refiner_folder()), "switch": SWITCH}
    if entry == "t2i_adapter":
        params |= {"adapter": str(control_files(family, run.config)["adapter"]), "control_image": str(IMAGE),
                   "adapter_scale": ADAPTER_SCALE, "width": 64, "height": 64}
    if entry == "ip_adapter":
        params |= {"ip_adapter": str(control_files(family, run.config)["ip_adapter"]), "reference_image": str(REFERENCE_IMAGE),
                   "ip_adapter_scale": IP_SCALE}
    if family in FLOW_FAMILIES:
        params |= {"prompt": PROMPT, "guidance": GUIDANCE if kind == "sd3" else FLOW_GUIDANCE}
        if base_entry not in ("img2img", "inpaint"):
            params |= {"width": 64, "height": 64}
        if entry == "true_cfg":
            params |= {"negative_prompt": NEGATIVE, "true_cfg": TRUE_CFG}
    elif family.startswith("pixel"):
        params["batch_size"] = 1
        if family == "pixel-class":
            params["label"] = "4"
    else:
        params |= {"prompt": PROMPT, "guidance": GUIDANCE}
    if entry == "clip_skip":
        params["clip_skip"] = CLIP_SKIP
    if entry == "freeu":
        params |= FREEU[family]
    if entry == "weighting":
        params |= {"prompt": WEIGHTED, "mode": "compel"}
    if base_entry == "controlnet":
        params |= controlnet_graph(doc, run, path)
    if entry == "single_file":  # the file as the model, its folder as the configs (and Flux's VAE and encoders)
        params["model"] = str(flow_single_file(path))
        doc["nodes"]["model"]["inputs"]["config"] = str(path)
    if entry == "lora":
        from tests.flow_lora_files import with_loras

        doc = with_loras("", list(zip(flow_lora_files(path), FLOW_LORA_STRENGTHS)), kind == "sd3", doc)
    ex = _EXECUTORS.setdefault(family, Executor())
    r = ex.run(Workflow.from_dict(doc).with_params(**params))
    assert r.ok, r.errors
    return r["image"], r.outputs.get("x0", [])


@pytest.mark.parametrize("cell", CELLS, ids=[c.id for c in CELLS])
def test_cell_equals_diffusers(cell: Cell, folders):
    folders(cell.family, cell.config)
    if cell.entry == "handoff":
        folders("sdxl-refiner", FAMILIES["sdxl-refiner"].configs[0])
    (image, x0s), (ref, ref_x0s) = graph(cell.run), reference(cell.run)
    if cell.entry == "x0":
        assert len(x0s) == len(ref_x0s) > 0
        diff = max((a - b).abs().max().item() for a, b in zip(x0s, ref_x0s))
        assert max(b.std().item() for b in ref_x0s) > 0.01
    else:
        assert image.shape == ref.shape
        diff = (image - ref).abs().max().item()
        assert ref.std().item() > 0.01  # pictures, not flat fields
    MEASURED[cell.id] = diff
    assert diff <= BOUND, f"{cell.id}: max abs {diff:.3g}"


def test_a_schedule_diffusers_cannot_make_is_refused_by_name(folders):
    """The cells the matrix leaves out because diffusers cannot make their schedule (PNDM with
    its Runge-Kutta warm-up in fewer than 4 steps) are refused by the Scheduler node with the
    reason and the fix, not numpy's broadcast error."""
    folders("sd2-v", "sd2-v")
    wf = graphflow.load(REPO / "workflows" / "txt2img.json")
    r = Executor().run(wf.with_params(model=str(FOLDERS["sd2-v", "sd2-v"]), scheduler="pndm", steps=3))
    assert not r.ok
    (err,) = r.errors
    assert err.node == "schedule"
    assert "skip_prk_steps false" in err.message and "at least 4 steps, not 3" in err.message and '"skip_prk_steps": true' in err.message


def test_the_readme_table_is_generated_from_these_cells():
    """The README's table, the measured figures and this module's cells agree: a cell added here
    must be measured and shown (``python -m tests.conformance.conformance_table``)."""
    from tests.conformance.conformance_table import MEASURED as measured_file
    from tests.conformance.conformance_table import README, readme_block, render

    measured = json.loads(measured_file.read_text())
    assert list(measured) == [c.id for c in CELLS]
    assert all(0.0 <= v <= BOUND for v in measured.values())
    assert readme_block(README.read_text()) == render(CELLS, measured)


@pytest.mark.parametrize("scheduler", ["euler_a", "pndm"])
def test_the_x0_frames_workflow_draws_the_matrix_picture(scheduler, folders, tmp_path):
    """workflows/x0_frames.json is the txt2img loop with frames decoded on the side: its picture is
    the matrix's txt2img picture (so the pipeline's), its stochastic steps drawing from the carried
    generator as the pipeline's do, and it decodes one x_t and one x0 frame per timestep (PNDM:
    steps + 1)."""
    folders("sd1", "sd15")
    run = Run("sd1", "sd15", scheduler, "txt2img", 3)
    wf = graphflow.load(REPO / "workflows" / "x0_frames.json")
    r = Executor(out_dir=tmp_path).run(wf.with_params(model=str(FOLDERS["sd1", "sd15"]), prompt=PROMPT, seed=SEED, steps=3,
                                                      guidance=GUIDANCE, scheduler=scheduler))
    assert r.ok, r.errors
    assert (r["image"] - reference(run)[0]).abs().max().item() == 0.0
    assert len(r["x0"]) == len(r["xt"]) == len(reference(run)[1]) == (4 if scheduler == "pndm" else 3)


#: (family, scheduler, what diffusers' pipeline does with it, a fragment of graphflow's refusal)
FLOW_REFUSALS = [
    ("sd3", "flow_lcm", "global", "torch's global generator"),
    ("sd3", "flow_euler_stochastic", "global", "torch's global generator"),
    ("sd3", "flow_sa_solver", "global", "torch's global generator"),
    ("flux-dev", "flow_heun", ValueError, "its own sigmas (1 to 1/steps), which this scheduler does not take"),
    ("flux-schnell", "flow_dpm", AssertionError, "takes only with use_dynamic_shifting"),
    ("flux-schnell", "flow_dpm_single", AssertionError, "takes only with use_dynamic_shifting"),
    ("flux-schnell", "flow_deis", AssertionError, "takes only with use_dynamic_shifting"),
]


@pytest.mark.parametrize("family, scheduler, diffusers_does, fragment", FLOW_REFUSALS, ids=[f"{f}-{s}" for f, s, *_ in FLOW_REFUSALS])
def test_a_flow_scheduler_diffusers_cannot_run_is_refused_by_name(family, scheduler, diffusers_does, fragment, folders):
    """The flow scheduler names the matrix leaves out: FluxPipeline fails with them (FlowMatch Heun
    takes no sigmas; DPM-Solver and DEIS refuse mu on schnell's config without dynamic shifting),
    or SD3's pipeline draws their per-step noise from torch's global generator, so its picture
    changes with the global seed under the same ``generator``. The Scheduler node refuses each by
    name with that reason, before any model runs."""
    config = FAMILIES[family].configs[0]
    folders(family, config)
    path, cfg = FOLDERS[family, config], scheduler_config(config)
    sd3 = family.startswith("sd3")
    p = pipeline("StableDiffusion3Pipeline" if sd3 else "FluxPipeline", path)
    p.scheduler = scheduler_for(cfg, scheduler)
    kwargs = dict(num_inference_steps=3, output_type="pt", height=64, width=64)
    if diffusers_does == "global":
        pictures = []
        for global_seed in (1, 2):  # 7 steps: SA-Solver's noise term vanishes on a 3-step flow schedule
            torch.manual_seed(global_seed)
            pictures.append(p(PROMPT, generator=torch.Generator().manual_seed(SEED), **(kwargs | {"num_inference_steps": 7})).images)
        assert (pictures[0] - pictures[1]).abs().max().item() > 1e-3
    else:
        with pytest.raises(diffusers_does):
            p(PROMPT, generator=torch.Generator().manual_seed(SEED), **kwargs)
    wf = graphflow.load(REPO / "workflows" / f"txt2img_{'sd3' if sd3 else 'flux'}.json")
    r = Executor().run(wf.with_params(model=str(path), prompt=PROMPT, seed=SEED, steps=3, scheduler=scheduler, width=64, height=64))
    assert not r.ok
    (err,) = r.errors
    assert err.node == "schedule"
    assert f"scheduler {scheduler} ({SCHEDULERS[scheduler]}) is refused here" in err.message and fragment in err.message


@pytest.mark.parametrize("family", ["sd3", "flux-dev"])
def test_img2img_with_a_solver_diffusers_cannot_noise_with_is_refused(family, folders):
    """Solvers on flow sigmas (DPM-Solver, UniPC, DEIS) run txt2img, but SD3's and Flux's img2img
    pipelines noise the picture with ``scale_noise``, which these schedulers lack: diffusers raises
    AttributeError, and graphflow's AddNoise refuses the scheduler by name, listing those that fit."""
    from PIL import Image

    config = FAMILIES[family].configs[0]
    folders(family, config)
    path, sd3 = FOLDERS[family, config], family == "sd3"
    p = pipeline("StableDiffusion3Img2ImgPipeline" if sd3 else "FluxImg2ImgPipeline", path)
    p.scheduler = scheduler_for(scheduler_config(config), "flow_unipc")
    with pytest.raises(AttributeError, match="scale_noise"):
        p(PROMPT, image=Image.open(IMAGE), strength=0.5, num_inference_steps=3, generator=torch.Generator().manual_seed(SEED),
          output_type="pt")
    wf = graphflow.load(REPO / "workflows" / f"img2img_{'sd3' if sd3 else 'flux'}.json")
    r = Executor().run(wf.with_params(model=str(path), prompt=PROMPT, seed=SEED, steps=3, scheduler="flow_unipc",
                                      image=str(IMAGE), start_step=1))
    assert not r.ok
    (err,) = r.errors
    assert err.node == "noised"
    assert "UniPCMultistepScheduler cannot start from a picture on a flow model" in err.message
    assert err.message.endswith("use model or one of: flow_euler, flow_euler_karras, flow_euler_exponential, flow_euler_beta, flow_heun")


def test_a_flow_solver_takes_the_model_shift():
    """flow_dpm is DPM-Solver++ on flow sigmas, its flow_shift the model's shift (SD3's 3.0): the
    schedule SD3 is trained for, not DPM's default shift of 1."""
    cls, options = scheduler_spec("flow_dpm", scheduler_config("sd3"))
    assert (cls, options) == ("DPMSolverMultistepScheduler", {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": 3.0})
    s = scheduler_for(scheduler_config("sd3"), "flow_dpm")
    s.set_timesteps(3)
    assert s.timesteps.tolist() == [999, 856, 599]
