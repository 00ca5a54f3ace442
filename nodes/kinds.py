"""The port kinds of the Stable Diffusion node library. Distinct kinds for tensors that share a
shape (token embeddings vs. final text embeddings, latents vs. images) are what let the validator
catch a wrong wire before anything loads."""

from __future__ import annotations

from typing import Annotated, Any

from graphflow.node_api import OBJECT, kind, list_of

#: seeds go to torch.Generator.manual_seed, which takes at most 64 bits
SEED_MAX = 2**63 - 1

#: Models flow through the graph as references (graphflow_nodes.loading.model_refs.ModelRef): small, frozen,
#: hashable values; a node gets the live object with ctx.models.get(ref).
TOKENIZER_K = kind("tokenizer", parent=OBJECT, description="a reference to a tokenizer (CLIP, or T5 for SD3 and Flux)")
TEXT_ENCODER_K = kind("text_encoder", parent=OBJECT, description="a reference to a text encoder (a CLIPTextModel, with or without projection, or a T5EncoderModel)")
UNET_K = kind("unet", parent=OBJECT, description="a reference to a UNet2DConditionModel")
TRANSFORMER_K = kind("transformer", parent=OBJECT, description="a reference to a denoising transformer (SD3Transformer2DModel, FluxTransformer2DModel)")
VAE_K = kind("vae", parent=OBJECT, description="a reference to an AutoencoderKL")
UPSCALER_K = kind("upscaler", parent=OBJECT, description="a reference to a pixel upscaler (ESRGAN's RRDBNet) read from a .safetensors file")
SCHEDULER_K = kind("scheduler", parent=OBJECT, description="a diffusers scheduler with its timesteps set")
SCHEDULER_CONFIG_K = kind("scheduler_config", parent=OBJECT, description="a diffusers scheduler config")

TOKEN_IDS_K = kind("token_ids", description="token ids, (batch, 77) int64")
ATTENTION_MASK_K = kind("attention_mask", description="1 for real tokens, 0 for padding, (batch, 77)")
EMBEDDINGS_K = kind("embeddings", description="any (batch, tokens, hidden) embedding sequence")
TOKEN_EMBEDDINGS_K = kind("token_embeddings", parent=EMBEDDINGS_K, description="rows of the token-embedding table, (batch, 77, hidden)")
POSITION_EMBEDDINGS_K = kind("position_embeddings", parent=EMBEDDINGS_K, description="position embeddings, (1, 77, hidden)")
INPUT_EMBEDDINGS_K = kind("input_embeddings", parent=EMBEDDINGS_K, description="token + position embeddings, the transformer's input")
TEXT_EMBEDDINGS_K = kind("text_embeddings", parent=EMBEDDINGS_K, description="the text encoder's final hidden states, (batch, 77, hidden)")
CFG_EMBEDDINGS_K = kind("cfg_embeddings", parent=EMBEDDINGS_K, description="unconditional and conditional text embeddings stacked, (2*batch, 77, hidden)")
VECTOR_K = kind("vector", description="one embedding vector, (hidden,)")
LATENTS_K = kind("latents", description="latents, (batch, 4, height/8, width/8)")
NOISE_PRED_K = kind("noise_pred", description="the UNet's noise prediction")
IMAGE_K = kind("image", description="images, (batch, 3, height, width) in [0, 1]")
TIMESTEP_K = kind("timestep", description="one scheduler timestep (0-d tensor)")
TIMESTEPS_K = kind("timesteps", item=TIMESTEP_K, description="the scheduler's timesteps to run, in order")
RNG_K = kind("rng", description="a seeded CPU random generator's state after its draws so far (uint8 tensor): "
             "handed from draw to draw, it makes one seed's draws come in a diffusers pipeline's order")

Tokenizer = Annotated[Any, TOKENIZER_K]
TextEncoder = Annotated[Any, TEXT_ENCODER_K]
UNet = Annotated[Any, UNET_K]
Transformer = Annotated[Any, TRANSFORMER_K]
VAE = Annotated[Any, VAE_K]
Upscaler = Annotated[Any, UPSCALER_K]
Scheduler = Annotated[Any, SCHEDULER_K]
SchedulerConfig = Annotated[Any, SCHEDULER_CONFIG_K]
TokenIds = Annotated[Any, TOKEN_IDS_K]
AttentionMask = Annotated[Any, ATTENTION_MASK_K]
Embeddings = Annotated[Any, EMBEDDINGS_K]
TokenEmbeddings = Annotated[Any, TOKEN_EMBEDDINGS_K]
PositionEmbeddings = Annotated[Any, POSITION_EMBEDDINGS_K]
InputEmbeddings = Annotated[Any, INPUT_EMBEDDINGS_K]
TextEmbeddings = Annotated[Any, TEXT_EMBEDDINGS_K]
GuidanceBatch = Annotated[Any, CFG_EMBEDDINGS_K]
Vector = Annotated[Any, VECTOR_K]
Latents = Annotated[Any, LATENTS_K]
NoisePred = Annotated[Any, NOISE_PRED_K]
Image = Annotated[Any, IMAGE_K]
Timestep = Annotated[Any, TIMESTEP_K]
Timesteps = Annotated[Any, TIMESTEPS_K]
Rng = Annotated[Any, RNG_K]
POOLED_K = kind("pooled", description="a text encoder's pooled (or projected) embedding, (batch, dim): SDXL's added text condition")
TIME_IDS_K = kind("time_ids", description="SDXL's size conditions, (batch, 6): original (h, w), crop (top, left), target (h, w)")
CLASS_LABELS_K = kind("class_labels", description="class ids for a class-conditioned UNet, (batch,) int64")
Pooled = Annotated[Any, POOLED_K]
TimeIds = Annotated[Any, TIME_IDS_K]
ClassLabels = Annotated[Any, CLASS_LABELS_K]
ImageList = Annotated[list[Any], list_of(IMAGE_K)]
LatentsList = Annotated[list[Any], list_of(LATENTS_K)]
MODEL_INPUT_K = kind("model_input", description="latents scaled for the UNet (and doubled for guidance)")
ModelInput = Annotated[Any, MODEL_INPUT_K]
TEXT_IDS_K = kind("text_ids", description="Flux: the text tokens' position ids, (tokens, 3), zeros")
IMAGE_IDS_K = kind("image_ids", description="Flux: the packed latent patches' position ids, (patches, 3): (0, row, column)")
TextIds = Annotated[Any, TEXT_IDS_K]
ImageIds = Annotated[Any, IMAGE_IDS_K]
T2I_ADAPTER_K = kind("t2i_adapter", parent=OBJECT, description="a reference to a T2I-Adapter (diffusers' T2IAdapter)")
IMAGE_ENCODER_K = kind("image_encoder", parent=OBJECT, description="a reference to a CLIP vision encoder with projection (an IP-Adapter's)")
ADAPTER_RESIDUALS_K = kind("adapter_residuals", description="a T2I-Adapter's scaled feature maps, one per UNet down block, "
                           "(2*batch, channels, h, w) each for a guidance batch: added inside the UNet's down blocks")
IMAGE_PROMPTS_K = kind("image_prompts", description="IP-Adapter image embeddings, one (2*batch, 1, dim) tensor per IP-Adapter "
                       "of the UNet, in its order (unconditional half first, for guidance)")
T2IAdapterModel = Annotated[Any, T2I_ADAPTER_K]
ImageEncoder = Annotated[Any, IMAGE_ENCODER_K]
AdapterResiduals = Annotated[Any, ADAPTER_RESIDUALS_K]
ImagePrompts = Annotated[Any, IMAGE_PROMPTS_K]
MASK_K = kind("mask", description="(batch, 1, H, W) in [0, 1] at the picture's size: 1 repaints a pixel, 0 keeps it")
LATENT_MASK_K = kind("latent_mask", description="a mask at the latents' size, (batch, 1, H/8, W/8): what inpainting blends or feeds the UNet")
Mask = Annotated[Any, MASK_K]
LatentMask = Annotated[Any, LATENT_MASK_K]
CONTROLNET_K = kind("controlnet", parent=OBJECT, description="a reference to a ControlNetModel (LoadControlNet)")
CONTROL_IMAGE_K = kind("control_image", parent=IMAGE_K, description="a ControlNet's condition, (batch, 3, H, W) in [0, 1], sized as the picture")
CONTROL_RESIDUALS_K = kind("control_residuals", description="ControlNet residuals for the UNet's down blocks and middle block, summed over stacked ControlNets")
ControlNet = Annotated[Any, CONTROLNET_K]
ControlImage = Annotated[Any, CONTROL_IMAGE_K]
ControlResiduals = Annotated[Any, CONTROL_RESIDUALS_K]
