"""A model budget smaller than all of a flow model's components: the run completes, and the text
encoders are evicted once the prompts are encoded, before the transformer loads (nothing of the
run still reads them), instead of all of them staying pinned until the run ends."""

from __future__ import annotations

from pathlib import Path

import graphflow
from graphflow import Executor
from graphflow.engine.model_manager import ModelManager, size_of

REPO = Path(__file__).resolve().parents[2]


class Recording(ModelManager):
    """The real manager, noting which components are resident as each one loads."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.resident_at_load: list[tuple[str, set[str]]] = []
        self.peak = 0

    def get(self, ref, run_id=None):
        fresh = ref not in self
        obj = super().get(ref, run_id)
        if fresh:  # what was resident beside it once it loaded
            self.resident_at_load.append((ref.component, {r.component for r in self._models if r != ref}))
            self.peak = max(self.peak, self.used)
        return obj


def test_encoders_are_evicted_after_encoding_under_a_small_budget(tiny_flux):
    wf = graphflow.load(REPO / "workflows" / "txt2img_flux.json").with_params(
        model=str(tiny_flux), steps=2, width=32, height=32, seed=3)
    roomy = Recording()
    big = Executor(models=roomy).run(wf)
    assert big.ok, big.errors
    sizes = {r.component: size_of(m) for r, m in roomy._models.items()}
    assert {"text_encoder", "text_encoder_2", "transformer", "vae"} <= set(sizes)
    # room for the largest component (the CLIP encoder, its 49408-token table) and little more
    budget = max(sizes.values()) + 1
    assert budget < sum(sizes.values()) and budget < sizes["text_encoder"] + sizes["transformer"], sizes
    small = Recording(budget=budget)
    r = Executor(models=small).run(wf)
    assert r.ok, r.errors
    assert (r.outputs["image"] == big.outputs["image"]).all()  # the same picture, bit for bit
    loaded = dict(small.resident_at_load)
    # the CLIP encoder left once its prompt was encoded, before the transformer loaded (pinned to
    # the run's end, it was still there), and the budget held all along
    assert "text_encoder" not in loaded["transformer"] and "text_encoder" not in loaded["vae"], small.resident_at_load
    assert small.peak <= budget and small.used <= budget
    assert "text_encoder" in dict(roomy.resident_at_load)["transformer"]
