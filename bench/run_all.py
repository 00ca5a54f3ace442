"""Runs every benchmark in turn (`make bench`)."""

import runpy
from pathlib import Path

for name in ("bench_engine.py", "bench_pipeline.py", "bench_sweep.py", "bench_threads.py", "bench_server.py", "bench_checkpoint.py",
             "bench_tiled_vae.py", "bench_flux_memory.py", "bench_batching.py",
             "bench_busy_threads.py", "bench_first_picture.py"):
    print(f"\n== {name}")
    runpy.run_path(str(Path(__file__).parent / name), run_name="__main__")
