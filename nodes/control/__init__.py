"""Control models: ControlNets (residuals for the UNet's or transformer's blocks, from a control
image), T2I-Adapters (feature maps added inside the UNet's down blocks) and IP-Adapters (an image
prompt through a CLIP vision encoder into extra attention layers), and the preprocessors that make
control images."""
