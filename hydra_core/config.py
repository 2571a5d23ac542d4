"""Configuration dataclasses for HYDRA-TOK and HYDRA, and the named presets.

Every layer is built from these fields alone, and the whole `HydraConfig` is saved as
`config.json` beside `model.safetensors`, so a checkpoint folder describes itself.

Presets:
    tiny        what the build trains from nothing: 64 px ShapesWorld images, 8x8 tokens, a 4-layer Qwen2
                (the bundled checkpoint was deepened to 6 layers by a continuation, `--llm-layers`).
    paper-1.5b  InternViT-300M split 12+12, C=64, 448 px (32x32 tokens), Qwen2.5-1.5B dimensions.
    paper-7b    the same tokenizer with Qwen2.5-7B dimensions.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import InternVLVisionConfig, Qwen2Config

# Special tokens of the text tokenizer. The chat template renders an image as IMAGE_TOKEN, which the
# model expands to IMG_START + num_image_tokens x IMG_PAD + IMG_END before embedding.
IMAGE_TOKEN = "<|image|>"
IMG_START = "<|vision_start|>"
IMG_END = "<|vision_end|>"
IMG_PAD = "<|image_pad|>"
NULL_TOKEN = "<|null|>"  # the learned null condition for classifier-free guidance
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = (PAD_TOKEN, "<|im_start|>", EOS_TOKEN, IMAGE_TOKEN, IMG_START, IMG_END, IMG_PAD, NULL_TOKEN)
# Qwen2.5 has no placeholder or null token of these names; we reuse two of its unused vision ids.
QWEN_TOKEN_IDS = {PAD_TOKEN: 151643, "<|im_start|>": 151644, EOS_TOKEN: 151645, IMG_START: 151652,
                  IMG_END: 151653, NULL_TOKEN: 151654, IMG_PAD: 151655, IMAGE_TOKEN: 151656}


PREDICTIONS = ("v", "x")  # what a flow network outputs: the velocity or the clean sample (see sampling.py)


PROMPT_EXPANSIONS = ("none", "shapesworld")


def _check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"a flow prediction must be one of {PREDICTIONS}, got {prediction!r}")


@dataclass
class HydraTokConfig:
    """HYDRA-TOK: Gen-ViT (first `gen_layers` blocks) -> GSB (D -> 2C -> D) -> Sem-ViT, plus a pixel flow decoder.

    The ViT blocks are transformers' InternVL vision layers, so InternViT weights load by name.
    Pixels are in [-1, 1]. Flow convention (diffusers): x_t = (1 - t) * x + t * eps, t = 1 is noise,
    velocity target eps - x.
    """

    image_size: int = 64
    patch_size: int = 8
    hidden_size: int = 192
    num_hidden_layers: int = 8
    gen_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 768
    layer_scale_init_value: float = 0.1
    # Biases on the attention's q/k/v projections: InternViT-300M has them (its fused `qkv` is
    # Linear(1024, 3072, bias=True)); the tiny model, trained from scratch, does not.
    qkv_bias: bool = False
    latent_channels: int = 32
    # Pixel flow decoder: a DiT-style transformer over patches of x_t, conditioned per token on the
    # GSB latent (through its own un-projection, W_unproj^gen) and globally on t through AdaLN-Zero.
    decoder_hidden_size: int = 256
    decoder_layers: int = 4
    decoder_heads: int = 4
    decoder_steps: int = 8
    decoder_time_shift: float = 1.0
    # What the decoder's last layer outputs: the velocity ("v", the paper's flow loss as written) or the
    # clean image ("x"); the loss is on the velocity either way (sampling.flow_matching_loss). Training
    # times t ~ sigmoid(N(decoder_time_loc, 1)); a positive loc favours noise.
    decoder_prediction: str = "v"
    decoder_time_loc: float = 0.0
    # Semantic self-distillation: 1-based block indices (over all num_hidden_layers blocks, so both
    # halves) whose outputs are pulled towards the frozen teacher's same-index blocks.
    distill_layers: tuple[int, ...] = (2, 4, 6, 8)
    # Noise on Sem-ViT's input while the tokenizer trains (not the paper's): Sem-ViT reads the GSB mean
    # noised as the unified flow noises it, z_t = (1 - t) z + t eps in the batch-standardised latent
    # space, t ~ U(0, semantic_noise); 0 keeps it clean. What the teacher's features need (colour and
    # shape) must then survive noise, so the encoder puts it in the latent's large directions, the ones
    # a flow forms first, at the noise levels where the prompt decides the image.
    semantic_noise: float = 0.0
    # Loss weights (paper defaults). The GAN weight is used in the decoder-refinement stage only.
    kl_weight: float = 1e-4
    cos_weight: float = 1.0
    distill_weight: float = 1.0
    flow_weight: float = 1.0
    perceptual_weight: float = 0.1
    gan_weight: float = 0.075
    perceptual: str = "proxy"  # "lpips" (needs the lpips package and its weights) | "proxy" | "none"

    def __post_init__(self) -> None:
        self.distill_layers = tuple(self.distill_layers)
        _check_prediction(self.decoder_prediction)
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if not 0 < self.gen_layers <= self.num_hidden_layers:
            raise ValueError(f"gen_layers must be in 1..{self.num_hidden_layers}, got {self.gen_layers}")
        bad = [i for i in self.distill_layers if not 1 <= i <= self.num_hidden_layers]
        if bad:
            raise ValueError(f"distill_layers {bad} lie outside 1..{self.num_hidden_layers}")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid_size**2

    def vit_config(self, num_layers: int | None = None) -> InternVLVisionConfig:
        """The InternVL vision config of the full backbone (or of `num_layers` blocks)."""
        return InternVLVisionConfig(
            hidden_size=self.hidden_size,
            num_hidden_layers=num_layers or self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            image_size=self.image_size,
            patch_size=self.patch_size,
            layer_scale_init_value=self.layer_scale_init_value,
            attention_bias=self.qkv_bias,
            use_mean_pooling=True,
            attn_implementation="sdpa",
        )


@dataclass
class HydraConfig:
    """HYDRA: HYDRA-TOK + a Qwen2 LLM with a language head and an AdaLN-Zero flow head.

    `llm` holds Qwen2Config keyword arguments. `latent_mean` / `latent_std` normalise the GSB mean
    into the space the flow head generates in (like a VAE's scaling factor); they are measured on
    training data once the tokenizer is trained.
    """

    tokenizer: HydraTokConfig = field(default_factory=HydraTokConfig)
    llm: dict[str, Any] = field(default_factory=dict)
    flow_head_width: int = 256
    flow_head_layers: int = 3
    # The flow head also reads the noisy latent z_t (a zero-initialised skip; not in the paper, unified/flow_head.py).
    flow_head_latent_input: bool = False
    cfg_dropout: float = 0.1
    ntp_weight: float = 1.0
    flow_weight: float = 1.0
    latent_mean: float = 0.0
    latent_std: float = 1.0
    # "global": (x - latent_mean) / latent_std; "pca": whitened along the latents' principal axes, each
    # scaled to unit variance with a floor of latent_whiten_floor x the largest variance (unified/latent_norm.py).
    latent_norm: str = "global"
    latent_whiten_floor: float = 1e-3
    # A learned 2D position embedding added to every image's LLM input embeddings. Sem-ViT has no positions
    # of its own (InternViT adds them at the Gen-ViT input), so a noisy latent's tokens reach the LLM
    # told apart only by the 1D RoPE of their raster order.
    image_position_embedding: bool = False
    time_shift: float = 1.0
    # The flow head's output ("v" velocity or "x" clean latent) and its training times (as the decoder's).
    flow_prediction: str = "v"
    flow_time_loc: float | list[float] = 0.0  # several: an equal mixture (sampling.sample_logit_normal)
    default_steps: int = 20
    default_guidance: float = 3.0
    # How `generate` rewrites a prompt by default (hydra_core.prompts): "none", or "shapesworld" (a short
    # ShapesWorld prompt becomes the dense caption of a seeded random scene that satisfies it).
    prompt_expansion: str = "none"
    text_tokenizer: str = "bpe"  # "bpe" (trained on ShapesWorld) | "qwen" (Qwen2.5's BPE)
    # Ids of the special tokens in the text tokenizer (defaults: Qwen2.5's vocabulary; the tiny
    # BPE puts SPECIAL_TOKENS first, see tiny()).
    token_ids: dict[str, int] = field(default_factory=lambda: dict(QWEN_TOKEN_IDS))
    preset: str = "custom"
    model_type: str = "hydra"

    def __post_init__(self) -> None:
        if isinstance(self.tokenizer, dict):
            self.tokenizer = HydraTokConfig(**self.tokenizer)
        _check_prediction(self.flow_prediction)
        if self.prompt_expansion not in PROMPT_EXPANSIONS:
            raise ValueError(f"prompt_expansion must be one of {PROMPT_EXPANSIONS}, got {self.prompt_expansion!r}")

    def llm_config(self) -> Qwen2Config:
        kwargs = {"attn_implementation": "sdpa", **self.llm}
        return Qwen2Config(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json_file(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "HydraConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"config.json has fields this version does not know: {unknown}")
        data = dict(data)
        tok = data.get("tokenizer", {})
        tok_known = {f.name for f in dataclasses.fields(HydraTokConfig)}
        tok_unknown = sorted(set(tok) - tok_known)
        if tok_unknown:
            raise ValueError(f"config.json tokenizer has fields this version does not know: {tok_unknown}")
        data["tokenizer"] = HydraTokConfig(**tok)
        return cls(**data)

    @classmethod
    def from_json_file(cls, path: str | Path) -> "HydraConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


def _qwen25(hidden: int, layers: int, heads: int, kv_heads: int, ffn: int, vocab: int, tie: bool) -> dict:
    return dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=32768,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tie,
    )


def _paper_tokenizer() -> HydraTokConfig:
    # InternViT-300M-448px-V2.5 split 12 + 12 (with its q/k/v biases: 304,012,288 parameters); the
    # decoder sized near the paper's smallest (144M).
    return HydraTokConfig(
        image_size=448,
        patch_size=14,
        hidden_size=1024,
        num_hidden_layers=24,
        gen_layers=12,
        num_attention_heads=16,
        intermediate_size=4096,
        layer_scale_init_value=0.1,
        qkv_bias=True,
        latent_channels=64,
        decoder_hidden_size=1024,
        decoder_layers=12,
        decoder_heads=16,
        decoder_steps=10,
        distill_layers=(6, 12, 18, 24),
    )


def tiny(vocab_size: int = 1024) -> HydraConfig:
    """The bundled CPU model. Sized so every stage trains on 2 CPU cores in under two hours."""
    return HydraConfig(
        # The decoder predicts the clean image; the flow head the velocity, trained mostly at high noise,
        # where only the prompt can tell the image apart (tests/test_conditioning.py, the model card).
        # Two decoder steps: the best held-out PSNR of 1, 2, 4 and 8 (see the model card).
        tokenizer=HydraTokConfig(decoder_prediction="x", decoder_time_loc=0.8, decoder_steps=2),
        flow_prediction="v",
        flow_time_loc=1.5,
        default_guidance=5.0,
        # Trained on dense captions too, it draws a short prompt far better once expanded (the model card).
        prompt_expansion="shapesworld",
        llm=_qwen25(hidden=256, layers=4, heads=4, kv_heads=2, ffn=768, vocab=vocab_size, tie=True)
        | {"max_position_embeddings": 512},
        flow_head_width=256,
        flow_head_layers=3,
        token_ids={token: i for i, token in enumerate(SPECIAL_TOKENS)},
        preset="tiny",
    )


def paper_1_5b() -> HydraConfig:
    return HydraConfig(
        tokenizer=_paper_tokenizer(),
        llm=_qwen25(hidden=1536, layers=28, heads=12, kv_heads=2, ffn=8960, vocab=151936, tie=True),
        flow_head_width=1536,
        flow_head_layers=4,
        text_tokenizer="qwen",
        default_steps=25,
        default_guidance=5.0,
        preset="paper-1.5b",
    )


def paper_7b() -> HydraConfig:
    return HydraConfig(
        tokenizer=_paper_tokenizer(),
        llm=_qwen25(hidden=3584, layers=28, heads=28, kv_heads=4, ffn=18944, vocab=152064, tie=False),
        flow_head_width=2048,
        flow_head_layers=4,
        text_tokenizer="qwen",
        default_steps=25,
        default_guidance=5.0,
        preset="paper-7b",
    )


PRESETS = {"tiny": tiny, "paper-1.5b": paper_1_5b, "paper-7b": paper_7b}


def preset(name: str) -> HydraConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()
