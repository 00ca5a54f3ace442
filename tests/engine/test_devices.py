"""``Executor(device=..., dtype=...)`` against the installed torch: what it cannot compute in is a
ValueError at construction, saying what it does run on; what works is accepted (the CPU in
float16 and bfloat16 included), and cpu/float32 does not even import torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from graphflow import Executor
from graphflow.engine.devices import device_problem
from tests.toy_nodes import RUNS, link, make, reset

ROOT = Path(__file__).resolve().parents[2]
CPU_ONLY = torch.version.cuda is None and getattr(torch.version, "hip", None) is None
WORKS = "cpu (float32, float16, bfloat16)"


@pytest.mark.skipif(not CPU_ONLY, reason="needs the CPU build of torch")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_on_a_cpu_only_torch_raises_with_the_fix(device):
    with pytest.raises(ValueError) as e:
        Executor(device=device)
    assert str(e.value) == (f"device '{device}': this torch ({torch.__version__}) is a CPU-only build: it runs on {WORKS}. For an "
                            'NVIDIA GPU, install a CUDA build of torch: make setup TORCH="torch --index-url '
                            'https://download.pytorch.org/whl/cu126" (see the Makefile)')


@pytest.mark.skipif(sys.platform == "darwin", reason="MPS may exist here")
def test_mps_off_a_mac_raises_saying_where_it_exists():
    with pytest.raises(ValueError) as e:
        Executor(device="mps", dtype="float16")
    assert str(e.value) == (f"device 'mps' (an Apple-silicon Mac's GPU): MPS exists only on Macs with Apple silicon: this torch "
                            f"({torch.__version__}) runs on {WORKS}")


@pytest.mark.parametrize(("device", "dtype", "message"), [
    ("cpu", "float64", "dtype 'float64' is not one of float32, float16, bfloat16"),
    ("gpu", "float32", "device 'gpu' is not a device torch knows: use cpu, cuda, cuda:N or mps"),
    ("meta", "float32", f"device 'meta': graphflow runs models on cpu, cuda or mps; this torch ({torch.__version__}) runs on {WORKS}"),
])
def test_what_is_no_device_or_dtype_is_named(device, dtype, message):
    with pytest.raises(ValueError) as e:
        Executor(device=device, dtype=dtype)
    assert str(e.value) == message


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_the_cpu_computes_in_every_dtype_and_is_accepted(dtype):
    assert device_problem("cpu", dtype) is None
    reset()
    wf = make({"v": {"type": "MakeVec", "inputs": {"value": 2}}, "s": {"type": "SumVec", "inputs": {"vec": link("v.vec")}}},
              {"total": "s.total"})
    assert Executor(dtype=dtype).run(wf)["total"] == 8.0 and RUNS == {"v": 1, "s": 1}


def test_cpu_float32_is_answered_without_importing_torch(tmp_path):
    code = "import sys, graphflow\ngraphflow.Executor()\nprint('torch' in sys.modules)\n"
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                       capture_output=True, text=True, timeout=120)
    assert p.stdout.strip() == "False", p.stderr
