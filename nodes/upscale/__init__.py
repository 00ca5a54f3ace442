"""Making pictures larger: latents resized for a hires-fix second pass (``resize``: the
interpolation nodes for latents and pixels), and learned pixel upscalers, ESRGAN's RRDBNet read
from safetensors files (``esrgan``: the network and how a file's keys say its shape;
``upscalers``: the LoadUpscaler and Upscale nodes, tiled for large pictures)."""
