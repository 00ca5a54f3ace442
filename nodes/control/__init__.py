"""Control models: T2I-Adapters (feature maps added inside the UNet's down blocks) and
IP-Adapters (an image prompt through a CLIP vision encoder into extra attention layers)."""
