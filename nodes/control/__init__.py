"""Control: models that steer the denoising with a picture (ControlNet), and the preprocessors that
make their control images (Canny edges, the user's own map)."""
