"""graphflow's Stable Diffusion node library (installed as ``graphflow_nodes``)."""
