"""Running a bound graph: fingerprints, the plan, the runner, the executor's queue of runs, events, results and the model manager. Knows nothing of diffusion or of how results are shown."""
