"""HYDRA-TOK: the representation-harmonized ViT tokenizer."""

from .gsb import GenerationSemanticBottleneck, GSBOutput
from .model import HydraTok, HydraTokEncoding, build_teacher
from .pixel_decoder import PixelFlowDecoder

__all__ = ["GenerationSemanticBottleneck", "GSBOutput", "HydraTok", "HydraTokEncoding", "PixelFlowDecoder",
           "build_teacher"]
