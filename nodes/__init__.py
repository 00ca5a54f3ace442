"""graphflow's Stable Diffusion node library, installed as ``graphflow_nodes`` and found by the
engine through the ``graphflow.nodes`` entry point, like any third-party node pack.

Laid out as diffusers' modular pipelines are, so a new model family gets a room of its own
instead of growing shared files: ``stages/`` holds the Stable Diffusion pipeline's stages
(encoders → before_denoise → denoise → decoders, with the scheduler and VAE beside them), which
every family reuses; ``sdxl/`` and ``pixel/`` hold only what their family changes, under the same
stage names; ``loading/`` finds, describes and loads models. Every node type is imported here:
the registry reads this module's top level.

Modules here never import torch, diffusers or transformers at module level: ``graphflow
validate`` imports every node type and must stay fast."""

from graphflow_nodes.images import ImageGrid, LatentChannels, LoadImage, SaveAnimation, SaveImage, SplitChannels
from graphflow_nodes.loading.lora import LoadLoRA
from graphflow_nodes.loading.models import LoadModel
from graphflow_nodes.pixel.before_denoise import ClassLabel, RandomPixels
from graphflow_nodes.pixel.decoders import PixelsToImage
from graphflow_nodes.pixel.denoise import PredictNoisePixel
from graphflow_nodes.sdxl.before_denoise import AestheticConditions, CFGConditions, SizeConditions
from graphflow_nodes.sdxl.denoise import PredictNoiseXL
from graphflow_nodes.sdxl.encoders import ConcatEmbeddings, EncodeHidden, UncondXL
from graphflow_nodes.stages.before_denoise import LoadLatents, NoiseLike, RandomLatents
from graphflow_nodes.stages.decoders import Decode
from graphflow_nodes.stages.denoise import CFG, ColorGuidance, PredictNoise
from graphflow_nodes.stages.encoders import (
    AddEmbeddings,
    CFGEmbeddings,
    EncodePrompt,
    MixEmbeddings,
    PosEmbed,
    TextEncode,
    TokenEmbed,
    Tokenize,
    VAEEncode,
)
from graphflow_nodes.stages.scheduling import AddNoise, MakeScheduler, ScaleModelInput, SchedulerStep
from graphflow_nodes.stages.tokens import LoadTextualInversion, MixVectors, ReplaceToken, TokenVector

__all__ = [
    "CFG", "AddEmbeddings", "AddNoise", "CFGEmbeddings", "ColorGuidance", "Decode", "EncodePrompt", "ImageGrid",
    "LatentChannels", "LoadImage", "LoadLatents", "LoadLoRA", "LoadModel", "LoadTextualInversion", "MakeScheduler", "MixEmbeddings",
    "MixVectors", "NoiseLike", "PosEmbed", "PredictNoise", "RandomLatents", "ReplaceToken", "SaveAnimation", "SaveImage",
    "ScaleModelInput", "SchedulerStep", "SplitChannels", "TextEncode", "TokenEmbed", "TokenVector", "Tokenize", "VAEEncode",
    "AestheticConditions", "CFGConditions", "ConcatEmbeddings", "EncodeHidden", "PredictNoiseXL", "SizeConditions", "UncondXL",
    "ClassLabel", "PixelsToImage", "PredictNoisePixel", "RandomPixels",
]
