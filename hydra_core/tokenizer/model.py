"""HYDRA-TOK: Gen-ViT -> GSB -> Sem-ViT, plus the pixel flow decoder.

Shapes: B batch, N = (image_size / patch_size)^2 patch tokens, D ViT width, C latent channels.
Pixels are [B, 3, H, W] in [-1, 1].

The ViT is transformers' InternVL vision model cut after `gen_layers` blocks. Gen-ViT runs the
embeddings (with the CLS token, as InternViT does) and the first blocks; the GSB works on the N
patch tokens only, and Sem-ViT runs the remaining blocks on the un-projected patch tokens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from safetensors.torch import load_file
from transformers import InternVLVisionModel
from transformers.models.internvl.modeling_internvl import InternVLVisionEmbeddings, InternVLVisionLayer

from ..config import HydraTokConfig
from ..sampling import clean_estimate, flow_matching_loss, sample_logit_normal
from .gsb import GenerationSemanticBottleneck, GSBOutput, cosine_loss
from .pixel_decoder import PixelFlowDecoder


@dataclass
class HydraTokEncoding:
    gsb: GSBOutput
    gen_hidden: list[torch.Tensor]  # outputs of each Gen-ViT block, patch tokens [B, N, D]
    sem_hidden: list[torch.Tensor]  # outputs of each Sem-ViT block, [B, N, D]

    @property
    def semantic(self) -> torch.Tensor:
        return self.sem_hidden[-1] if self.sem_hidden else self.gsb.h_bn


class GenViT(nn.Module):
    def __init__(self, config: HydraTokConfig):
        super().__init__()
        vit = config.vit_config()
        self.embeddings = InternVLVisionEmbeddings(vit)
        self.layers = nn.ModuleList(InternVLVisionLayer(vit) for _ in range(config.gen_layers))

    def forward(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """[B, 3, H, W] -> hidden states after each block, [B, 1 + N, D] (CLS first)."""
        h = self.embeddings(pixels.to(self.embeddings.patch_embeddings.projection.weight.dtype))
        hidden = []
        for layer in self.layers:
            h = layer(h)
            hidden.append(h)
        return hidden


class SemViT(nn.Module):
    def __init__(self, config: HydraTokConfig):
        super().__init__()
        vit = config.vit_config()
        self.layers = nn.ModuleList(
            InternVLVisionLayer(vit) for _ in range(config.num_hidden_layers - config.gen_layers))

    def forward(self, h: torch.Tensor) -> list[torch.Tensor]:
        """[B, N, D] -> hidden states after each block."""
        if len(self.layers):
            h = h.to(self.layers[0].layernorm_before.weight.dtype)
        hidden = []
        for layer in self.layers:
            h = layer(h)
            hidden.append(h)
        return hidden


class HydraTok(nn.Module):
    def __init__(self, config: HydraTokConfig):
        super().__init__()
        self.config = config
        self.gen_vit = GenViT(config)
        self.gsb = GenerationSemanticBottleneck(config.hidden_size, config.latent_channels)
        self.sem_vit = SemViT(config)
        self.decoder = PixelFlowDecoder(config)
        self._init_vit()

    def _init_vit(self) -> None:
        # InternViT's init (truncated normal 0.02) for the ViT halves and the GSB; the decoder keeps its
        # own (AdaLN-Zero) init. Skipped on the meta device, where loading assigns every weight.
        if self.gsb.proj.weight.is_meta:
            return
        for part in (self.gen_vit, self.gsb, self.sem_vit):
            for module in part.modules():
                if isinstance(module, (nn.Linear, nn.Conv2d)):
                    nn.init.trunc_normal_(module.weight, std=0.02)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.gen_vit.embeddings.position_embeddings, std=0.02)

    # ------------------------------------------------------------------ encoding
    def encode(self, pixels: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None,
               run_sem_vit: bool = True, semantic_noise: float = 0.0) -> HydraTokEncoding:
        """semantic_noise > 0: Sem-ViT reads the mean noised to t ~ U(0, semantic_noise) per image (see
        HydraTokConfig.semantic_noise and noise_latent); gsb.h_bn stays the clean un-projected mean."""
        gen_hidden = [h[:, 1:] for h in self.gen_vit(pixels)]  # drop CLS
        gsb = self.gsb(gen_hidden[-1], sample=sample, generator=generator)
        sem_input = gsb.h_bn
        if run_sem_vit and semantic_noise > 0:
            t = semantic_noise * torch.rand(pixels.shape[0], generator=generator).to(pixels.device)
            sem_input = self.gsb.unproject(noise_latent(gsb.mean, t, generator))
        sem_hidden = self.sem_vit(sem_input) if run_sem_vit else []
        return HydraTokEncoding(gsb=gsb, gen_hidden=gen_hidden, sem_hidden=sem_hidden)

    @torch.no_grad()
    def encode_latent(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels [B, 3, H, W] -> GSB mean [B, N, C] (the deterministic latent)."""
        return self.encode(pixels, run_sem_vit=False).gsb.mean

    def semantic_features(self, latent: torch.Tensor) -> torch.Tensor:
        """A clean or noisy latent [B, N, C] -> Sem-ViT output [B, N, D]."""
        h = self.gsb.unproject(latent)
        hidden = self.sem_vit(h)
        return hidden[-1] if hidden else h

    def decode(self, latent: torch.Tensor, steps: int | None = None, **kwargs) -> torch.Tensor:
        return self.decoder.decode(latent, steps=steps, **kwargs)

    # ------------------------------------------------------------------ InternViT weights
    @classmethod
    def from_internvit(cls, config: HydraTokConfig, path: str | Path) -> "HydraTok":
        """Initialise the ViT halves from an InternViT checkpoint folder (safetensors only), in either
        OpenGVLab's layout (InternViT-300M-448px-V2.5 as published) or transformers' InternVL-vision one."""
        model = cls(config)
        files = sorted(Path(path).glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{path} holds no .safetensors file")
        state: dict[str, torch.Tensor] = {}
        for file in files:
            state.update(load_file(file))
        model.load_internvit_state(state)
        return model

    def load_internvit_state(self, state: dict[str, torch.Tensor]) -> None:
        """Copy an InternViT state dict (either layout, see convert_internvit_state) into Gen-ViT
        (blocks < gen_layers) and Sem-ViT; every missing, unexpected or misshapen tensor is named."""
        mapped: dict[str, torch.Tensor] = {}
        for key, value in convert_internvit_state(state).items():
            if key.startswith("embeddings."):
                mapped["gen_vit." + key] = value
            elif key.startswith("encoder.layer."):
                index, rest = key[len("encoder.layer."):].split(".", 1)
                i = int(index)
                if i < self.config.gen_layers:
                    mapped[f"gen_vit.layers.{i}.{rest}"] = value
                elif i < self.config.num_hidden_layers:
                    mapped[f"sem_vit.layers.{i - self.config.gen_layers}.{rest}"] = value
        own = {k: v for k, v in self.state_dict().items() if k.startswith(("gen_vit.", "sem_vit."))}
        missing = sorted(set(own) - set(mapped))
        unexpected = sorted(set(mapped) - set(own))
        wrong = [f"{k}: checkpoint {tuple(mapped[k].shape)} vs config {tuple(own[k].shape)}"
                 for k in sorted(set(own) & set(mapped)) if own[k].shape != mapped[k].shape]
        problems = []
        if missing:
            hint = " (the config has q/k/v biases: qkv_bias=True)" if any(k.endswith("_proj.bias") for k in missing) else ""
            problems.append(f"the InternViT checkpoint lacks {len(missing)} tensors{hint}: {_names(missing)}")
        if unexpected:
            hint = " (the checkpoint has q/k/v biases: set qkv_bias=True)" if any(
                k.endswith("_proj.bias") for k in unexpected) else ""
            problems.append(f"{len(unexpected)} checkpoint tensors have no place in the config{hint}: "
                            f"{_names(unexpected)}")
        if wrong:
            problems.append(f"{len(wrong)} tensor shapes do not match the config: {_names(wrong)}")
        if problems:
            raise ValueError("; ".join(problems))
        self.load_state_dict(mapped, strict=False)

    # ------------------------------------------------------------------ training losses
    def reg_losses(self, enc: HydraTokEncoding) -> dict[str, torch.Tensor]:
        return {"kl": enc.gsb.kl_loss(), "cos": cosine_loss(enc.gen_hidden[-1], enc.gsb.h_bn)}

    def decoder_losses(self, pixels: torch.Tensor, latent: torch.Tensor,
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Flow-matching loss of the decoder (on the velocity) and its one-step clean estimate x_hat."""
        cfg = self.config
        t = sample_logit_normal(pixels.shape[0], generator=generator, loc=cfg.decoder_time_loc).to(pixels.device)
        eps = torch.randn(pixels.shape, generator=generator).to(pixels.device)
        t4 = t[:, None, None, None]
        x_t = (1 - t4) * pixels + t4 * eps
        out = self.decoder(x_t, t, latent)
        flow = flow_matching_loss(cfg.decoder_prediction, out, x_t, pixels, eps, t)
        return flow, clean_estimate(cfg.decoder_prediction, out, x_t, t).clamp(-1, 1)

    def distill_loss(self, enc: HydraTokEncoding, teacher_hidden: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """sum over distill_layers of 1 - cos(student block l, teacher block l), patch tokens.

        teacher_hidden: transformers' `hidden_states` of the teacher (index 0 = embeddings)."""
        student = enc.gen_hidden + enc.sem_hidden
        losses = [cosine_loss(student[l - 1], teacher_hidden[l][:, 1:]) for l in self.config.distill_layers]
        return torch.stack(losses).sum()


def noise_latent(mean: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """GSB means [B, N, C] noised to t [B] as a flow noises them: (1 - t) z + t eps in the space where the
    batch's latents have mean 0 and std 1 (statistics detached), returned at the latents' scale. A
    direction with a larger share of the latents' variance survives more noise."""
    centre, scale = mean.mean().detach(), mean.std().detach()
    eps = torch.randn(mean.shape, generator=generator).to(mean.device, mean.dtype)
    t = t.to(mean.dtype).view(-1, *[1] * (mean.dim() - 1))
    return ((1 - t) * (mean - centre) / scale + t * eps) * scale + centre


# OpenGVLab's InternViT names -> transformers' InternVL-vision names (after an optional "vision_model."
# prefix is dropped); the fused attn.qkv is split into q_proj / k_proj / v_proj. The same renames as
# transformers' own InternVL conversion script (not shipped in the wheel).
_INTERNVIT_RENAMES = (
    (r"^embeddings\.class_embedding$", "embeddings.cls_token"),
    (r"^embeddings\.position_embedding$", "embeddings.position_embeddings"),
    (r"^embeddings\.patch_embedding\.", "embeddings.patch_embeddings.projection."),
    (r"^encoder\.layers\.(\d+)\.", r"encoder.layer.\1."),
    (r"\.attn\.proj\.", ".attention.projection_layer."),
    (r"\.attn\.(q_norm|k_norm)\.", r".attention.\1."),
    (r"\.norm1\.", ".layernorm_before."),
    (r"\.norm2\.", ".layernorm_after."),
    (r"\.ls1$", ".lambda_1"),
    (r"\.ls2$", ".lambda_2"),
)


def convert_internvit_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An InternViT state dict in OpenGVLab's layout (`embeddings.class_embedding`, `encoder.layers.{i}.attn.qkv`,
    `attn.proj`, `mlp.fc1/fc2`, `norm1/norm2`, `ls1/ls2`) in transformers' InternVL-vision names
    (`embeddings.cls_token`, `encoder.layer.{i}.attention.{q,k,v}_proj`, `projection_layer`, `layernorm_before/after`,
    `lambda_1/2`). A state dict already in transformers' names is returned as it is. Works on meta tensors."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("vision_model.")
        if key.endswith((".attn.qkv.weight", ".attn.qkv.bias")):
            base = key.rsplit(".attn.qkv.", 1)[0]
            kind = key.rsplit(".", 1)[1]
            if value.shape[0] % 3:
                raise ValueError(f"{key} has {value.shape[0]} rows, not a q/k/v stack (a multiple of 3)")
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                out[_rename(f"{base}.attention.{name}.{kind}")] = part
            continue
        out[_rename(key)] = value
    return out


def _rename(key: str) -> str:
    for pattern, replacement in _INTERNVIT_RENAMES:
        key = re.sub(pattern, replacement, key)
    return key


def _names(items: list[str], limit: int = 6) -> str:
    return ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def build_teacher(config: HydraTokConfig) -> InternVLVisionModel:
    """A ViT of the tokenizer's shape, used (frozen) as the self-distillation teacher."""
    return InternVLVisionModel(config.vit_config())
