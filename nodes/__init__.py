"""graphflow's Stable Diffusion node library, installed as ``graphflow_nodes`` and found by the
engine through the ``graphflow.nodes`` entry point, like any third-party node pack.

Modules here never import torch, diffusers or transformers at module level: ``graphflow
validate`` imports every node type and must stay fast."""

from graphflow_nodes.denoise import CFG, ColorGuidance, PredictNoise
from graphflow_nodes.images import ImageGrid, LatentChannels, LoadImage, SaveAnimation, SaveImage, SplitChannels
from graphflow_nodes.latents import Decode, LoadLatents, NoiseLike, RandomLatents, VAEEncode
from graphflow_nodes.lora import LoadLoRA
from graphflow_nodes.models import LoadModel
from graphflow_nodes.pixel import ClassLabel, PixelsToImage, PredictNoisePixel, RandomPixels
from graphflow_nodes.sdxl import AestheticConditions, CFGConditions, ConcatEmbeddings, EncodeHidden, PredictNoiseXL, SizeConditions, UncondXL
from graphflow_nodes.scheduling import AddNoise, MakeScheduler, ScaleModelInput, SchedulerStep
from graphflow_nodes.text import (
    AddEmbeddings,
    CFGEmbeddings,
    EncodePrompt,
    MixEmbeddings,
    PosEmbed,
    TextEncode,
    TokenEmbed,
    Tokenize,
)
from graphflow_nodes.tokens import LoadTextualInversion, MixVectors, ReplaceToken, TokenVector

__all__ = [
    "CFG", "AddEmbeddings", "AddNoise", "CFGEmbeddings", "ColorGuidance", "Decode", "EncodePrompt", "ImageGrid",
    "LatentChannels", "LoadImage", "LoadLatents", "LoadLoRA", "LoadModel", "LoadTextualInversion", "MakeScheduler", "MixEmbeddings",
    "MixVectors", "NoiseLike", "PosEmbed", "PredictNoise", "RandomLatents", "ReplaceToken", "SaveAnimation", "SaveImage",
    "ScaleModelInput", "SchedulerStep", "SplitChannels", "TextEncode", "TokenEmbed", "TokenVector", "Tokenize", "VAEEncode",
    "AestheticConditions", "CFGConditions", "ConcatEmbeddings", "EncodeHidden", "PredictNoiseXL", "SizeConditions", "UncondXL",
    "ClassLabel", "PixelsToImage", "PredictNoisePixel", "RandomPixels",
]
