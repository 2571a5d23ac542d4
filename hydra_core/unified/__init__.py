"""HYDRA: the unified model (LLM + language head + flow head) over HYDRA-TOK."""

from .flow_head import FlowHead
from .masks import build_attention_mask, to_additive_mask
from .model import HydraModel

__all__ = ["FlowHead", "HydraModel", "build_attention_mask", "to_additive_mask"]
