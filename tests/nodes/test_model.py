"""The embedded model, measured: the pictures follow the prompt, and each of the notebook's
experiments moves them the way it should. Every number here is measured on generated images
(train/shapes.py's measure: colour names from the nearest palette entry, shape from the best
template match of the largest blob)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from graphflow_nodes.loading.files import MODELS_DIR

import graphflow
from graphflow import Executor
from train.shapes import COLOURS, HELD_OUT, measure

pytestmark = pytest.mark.slow  # the embedded model measured: each test draws dozens of pictures

REPO = Path(__file__).resolve().parents[2]
MODEL = MODELS_DIR / "tiny-sd"
GUIDANCE = json.loads((MODEL / "graphflow.json").read_text())["recommended_guidance"]


def wf(name: str, **params) -> graphflow.Workflow:
    w = graphflow.load(REPO / "workflows" / f"{name}.json")
    w.doc.outputs.pop("files", None)  # measure tensors; nothing is written to disk
    w.doc.outputs.pop("animation", None)
    return w.with_params(**params)


@pytest.fixture(scope="module")
def ex():
    return Executor()


def picture(result, key="image") -> np.ndarray:
    return result[key][0].permute(1, 2, 0).numpy()


def shape_rgb(img: np.ndarray) -> np.ndarray:
    """Median colour of the pixels that clearly differ from the background."""
    border = np.concatenate([img[:2].reshape(-1, 3), img[-2:].reshape(-1, 3), img[:, :2].reshape(-1, 3), img[:, -2:].reshape(-1, 3)])
    bg = np.median(border, axis=0)
    mask = np.sqrt(((img - bg) ** 2).sum(-1)) > 0.3
    assert mask.sum() >= 12, "no shape found"
    return np.median(img[mask], axis=0)


def test_model_is_small_and_in_diffusers_format():
    size = sum(p.stat().st_size for p in MODEL.rglob("*") if p.is_file())
    assert size <= 32 * 2**20
    assert not list(MODEL.rglob("*.bin")) and not list(MODEL.rglob("*.pkl"))
    index = json.loads((MODEL / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"] and index["vae"] == ["diffusers", "AutoencoderKL"]
    sched = json.loads((MODEL / "scheduler" / "scheduler_config.json").read_text())
    assert (sched["beta_schedule"], sched["beta_start"], sched["beta_end"], sched["num_train_timesteps"]) == ("scaled_linear", 0.00085, 0.012, 1000)


def test_pipeline_loads_the_folder_offline_and_the_graph_equals_it(ex):
    from diffusers import LMSDiscreteScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(MODEL, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = LMSDiscreteScheduler.from_config(pipe.scheduler.config)
    prompt = "a green square on a white background"
    ref = pipe(prompt, num_inference_steps=30, guidance_scale=GUIDANCE, generator=torch.Generator().manual_seed(1), output_type="pt").images
    r = ex.run(wf("txt2img", prompt=prompt, seed=1, guidance=GUIDANCE))
    assert (r["image"] - ref).abs().max().item() <= 1e-4
    m = measure(picture(r))
    assert (m["colour"], m["background"], m["shape"]) == ("green", "white", "square")


# held-out combinations (never seen in training) and seen ones, two seeds each
SAMPLE = [*HELD_OUT[::3], ("red", "blue", "circle"), ("yellow", "black", "square"), ("blue", "white", "triangle")]


def test_prompt_adherence_on_a_sample(ex):
    hits = np.zeros(3)
    n = 0
    for fg, bg, shape in SAMPLE:
        for seed in (0, 1):
            m = measure(picture(ex.run(wf("txt2img", prompt=f"a {fg} {shape} on a {bg} background", seed=seed))))
            hits += [m["colour"] == fg, m["background"] == bg, m["shape"] == shape]
            n += 1
    rates = hits / n
    assert rates[0] >= 0.85 and rates[1] >= 0.85, rates
    assert rates[2] >= 0.7, rates


def test_replacing_the_red_token_by_blue_draws_a_blue_shape(ex):
    colours = [measure(picture(ex.run(wf("token_replace", prompt="a red square on a white background", token="red",
                                          replacement="blue", seed=s))))["colour"] for s in (0, 1, 2)]
    assert colours.count("blue") >= 2, colours


def test_half_red_half_blue_token_gives_a_colour_between(ex):
    def rgb(weight: float, seed: int) -> np.ndarray:
        return shape_rgb(picture(ex.run(wf("token_mix", prompt="a red circle on a white background", token="red",
                                             mix_a="red", mix_b="blue", weight=weight, seed=seed))))

    for seed in (0, 1):
        red, mid, blue = rgb(0.0, seed), rgb(0.5, seed), rgb(1.0, seed)
        # red minus blue channel: high for the red token, low for the blue one, the mix in between
        d = [c[0] - c[2] for c in (red, mid, blue)]
        assert d[0] > d[1] > d[2], (seed, red, mid, blue)


def test_prompt_embedding_mix_moves_the_colour_with_the_weight(ex):
    def redness(weight: float) -> float:
        c = shape_rgb(picture(ex.run(wf("embedding_mix", prompt_a="a red circle on a white background",
                                        prompt_b="a blue circle on a white background", weight=weight, seed=3))))
        return float(c[0] - c[2])

    values = [redness(w) for w in (0.0, 0.35, 0.65, 1.0)]
    assert values[0] > values[-1] + 0.5
    assert all(a >= b - 0.05 for a, b in zip(values, values[1:])), values


def test_img2img_keeps_the_position_and_follows_the_new_colour(ex):
    from PIL import Image

    src = np.asarray(Image.open(REPO / "nodes" / "samples" / "red-circle-on-blue.png"), dtype=np.float64) / 255

    def run(start: int) -> np.ndarray:
        return picture(ex.run(wf("img2img", prompt="a yellow circle on a blue background", start_step=start, seed=0)))

    def centroid(img: np.ndarray) -> np.ndarray:
        bg = np.array(COLOURS["blue"]) / 255
        ys, xs = np.nonzero(np.sqrt(((img - bg) ** 2).sum(-1)) > 0.3)
        return np.array([ys.mean(), xs.mean()])

    early, late = run(10), run(20)
    assert measure(early)["colour"] == "yellow" and measure(early)["background"] == "blue"
    assert np.abs(centroid(early) - centroid(src)).max() <= 4  # pixels
    # a later start keeps more of the original picture
    assert np.abs(late - src).mean() < np.abs(early - src).mean()


def test_colour_guidance_raises_the_blue_channel(ex):
    means = []
    for scale in (0.0, 20.0):
        r = ex.run(wf("color_guidance", prompt="a red circle on a black background", channel="blue", target=0.9, loss_scale=scale, seed=0))
        means.append(r["image"][0, 2].mean().item() - r["image"][0, :2].mean().item())
        assert len(r["losses"]) == 5  # iterations 5, 10, 15, 20, 25 of 0..29: the node ran only on those
    assert means[1] - means[0] >= 0.1, means


def test_a_negative_prompt_naming_a_colour_reduces_it(ex):
    """Measured as the picture's red excess (how far red stands above green and blue, averaged
    over all pixels): the model still draws a red circle, but less of it, and less red."""

    def red_excess(negative: str) -> float:
        vals = []
        for seed in (0, 1, 2):
            img = picture(ex.run(wf("negative_prompt", prompt="a circle on a white background", negative_prompt=negative, seed=seed)))
            vals.append(float(np.clip(img[..., 0] - img[..., 1:].mean(-1), 0, None).mean()))
        return float(np.mean(vals))

    assert red_excess("red") < 0.8 * red_excess("")


def test_the_shipped_textual_inversion_token_draws_its_shape(ex):
    info = json.loads((MODEL / "graphflow.json").read_text())["textual_inversion"]
    shapes = [measure(picture(ex.run(wf("textual_inversion", prompt=f"a red {info['token']} on a blue background", seed=s))))["shape"]
              for s in (0, 1, 2)]
    assert shapes.count(info["shape"]) >= 2, shapes
