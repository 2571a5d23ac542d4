"""What each training stage trains, with the paper's per-group learning-rate pattern.

Paper (App. D, Tab. 6): UMM stage I trains the vision components with the LLM frozen (vision head
1e-4, Sem-ViT 5e-5); stages II and III unlock everything (vision head 5e-5, LLM and Sem-ViT 2e-5).
The tiny model keeps those ratios at 10-25x the rates (a 3M-parameter LLM from scratch, a few thousand
steps). The tokenizer's encoder (Gen-ViT, GSB projection) and pixel decoder stay frozen in the
unified stages: their latent space is the generation target.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

# Module-name prefixes of HydraModel for each parameter group.
GROUPS = {
    "llm": ("llm.",),
    "sem_vit": ("vision.sem_vit.", "vision.gsb.unproj_und.", "projector.", "image_position"),
    "vision_head": ("flow_head.",),
    "tokenizer": ("vision.",),
    "decoder": ("vision.decoder.",),
}


@dataclass(frozen=True)
class Stage:
    name: str
    groups: dict[str, float]  # group -> learning rate
    data_ratio: tuple[int, int, int] = (0, 0, 0)  # text : understanding : generation (paper's ratios)
    description: str = ""


UMM_STAGES = {
    "umm1": Stage("umm1", {"vision_head": 1e-3, "sem_vit": 5e-4}, (0, 1, 3),
                  "Unified representation alignment: LLM frozen"),
    "umm2": Stage("umm2", {"vision_head": 1e-3, "llm": 5e-4, "sem_vit": 5e-4}, (0, 2, 2),
                  "Comprehensive multimodal pre-training: all unified parameters"),
    "umm3": Stage("umm3", {"vision_head": 1e-3, "llm": 5e-4, "sem_vit": 5e-4}, (1, 2, 2),
                  "Instruction fine-tuning: QA and multi-turn chat"),
}
TOKENIZER_STAGES = {
    "text": Stage("text", {"llm": 2e-3}, description="Text pre-training of the tiny LLM (stands in for Qwen2.5's)"),
    "tok1": Stage("tok1", {"tokenizer": 1e-3}, description="Tokenizer foundation training, end to end"),
    "tok2": Stage("tok2", {"decoder": 2e-4}, description="Decoder refinement with the GAN loss, encoder frozen"),
}
STAGES = TOKENIZER_STAGES | UMM_STAGES


def _group_of(name: str, groups: dict[str, float]) -> str | None:
    # The most specific prefix wins (decoder inside tokenizer, unproj_und inside vision).
    best, best_len = None, -1
    for group in groups:
        for prefix in GROUPS[group]:
            if name.startswith(prefix) and len(prefix) > best_len:
                best, best_len = group, len(prefix)
    return best


def trains(stage: Stage, name: str) -> bool:
    """Whether the stage trains the parameter called `name`."""
    return _group_of(name, stage.groups) is not None


def configure_stage(model: nn.Module, stage: Stage) -> list[dict]:
    """Set requires_grad for the stage and return optimizer parameter groups."""
    params: dict[str, list] = {g: [] for g in stage.groups}
    for name, param in model.named_parameters():
        group = _group_of(name, stage.groups)
        param.requires_grad_(group is not None)
        if group is not None:
            params[group].append(param)
    return [{"params": p, "lr": stage.groups[g], "name": g} for g, p in params.items() if p]
