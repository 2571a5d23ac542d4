"""HYDRA: one Qwen2 LLM over HYDRA-TOK, with a language head and a flow head.

Shapes: B batch, L sequence, N image tokens, C latent channels, D ViT width, H LLM width.

Images enter the LLM the same way for understanding and generation:
    latent [B, N, C] -> GSB un-projection -> Sem-ViT -> projector -> [B, N, H] at the <|image_pad|>
positions of the sequence. For understanding the latent is the clean GSB mean; for generation it is
z_t = (1 - t) * mu + t * eps in the normalised latent space ((mu - latent_mean) / latent_std), and the
flow head reads the hidden states at those positions and predicts v = eps - mu (or, with
flow_prediction "x", the clean latent mu, turned into v; the loss is on v either way).

Attention: causal text, bidirectional inside each image (see masks.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, Qwen2ForCausalLM

from ..config import IMG_PAD, HydraConfig
from ..sampling import flow_matching_loss, sample_logit_normal, to_velocity
from ..tokenizer import HydraTok
from .flow_head import FlowHead
from .latent_norm import LATENT_NORMS, LatentWhitening
from .masks import build_attention_mask, position_ids_from, to_additive_mask


@dataclass
class Prefix:
    """A prefilled text (+ images) prefix: its KV cache and what later tokens need to attend to it."""

    cache: DynamicCache
    segments: torch.Tensor  # [B, P]: -1 padding, 0 text, k image k
    next_position: torch.Tensor  # [B]: position id of the next token
    last_logits: torch.Tensor  # [B, V]

    @property
    def length(self) -> int:
        return self.segments.shape[1]


class HydraModel(nn.Module):
    def __init__(self, config: HydraConfig):
        super().__init__()
        self.config = config
        tok = config.tokenizer
        self.vision = HydraTok(tok)
        self.llm = Qwen2ForCausalLM(config.llm_config())
        width = self.llm.config.hidden_size
        # InternVL-style: LayerNorm then the paper's linear projector.
        self.projector = nn.Sequential(nn.LayerNorm(tok.hidden_size), nn.Linear(tok.hidden_size, width))
        self.flow_head = FlowHead(width, config.flow_head_width, config.flow_head_layers, tok.latent_channels,
                                  latent_input=config.flow_head_latent_input)
        self.image_position = nn.Parameter(torch.zeros(tok.num_tokens, width)) if config.image_position_embedding else None
        if config.latent_norm not in LATENT_NORMS:
            raise ValueError(f"latent_norm must be one of {LATENT_NORMS}, got {config.latent_norm!r}")
        if config.latent_norm == "pca":
            self.latent_whitening = LatentWhitening(tok.latent_channels)

    # ------------------------------------------------------------------ helpers
    @property
    def device(self) -> torch.device:
        return self.projector[1].weight.device

    def token_id(self, token: str) -> int:
        return self.config.token_ids[token]

    def normalize(self, mean: torch.Tensor) -> torch.Tensor:
        """Raw GSB means [..., C] -> the flow's latent space (config.latent_norm)."""
        if self.config.latent_norm == "pca":
            return self.latent_whitening.normalize(mean)
        return (mean - self.config.latent_mean) / self.config.latent_std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        if self.config.latent_norm == "pca":
            return self.latent_whitening.denormalize(z)
        return z * self.config.latent_std + self.config.latent_mean

    @torch.no_grad()
    def whiten_latents(self, latents: torch.Tensor) -> None:
        """Switch the flow's space to "pca", fitted on raw GSB means [..., C], keeping what the flow head
        has learnt: its output layer is re-expressed so it predicts the same velocity in the new space
        (v_new = v_old @ M for the linear map M between the two spaces)."""
        if self.config.flow_prediction != "v":
            raise ValueError("whiten_latents re-expresses a velocity head; this model predicts the clean latent")
        channels = self.config.tokenizer.latent_channels
        eye = torch.eye(channels, device=self.device)
        before = self.denormalize(eye), self.denormalize(torch.zeros_like(eye))  # old space's unit vectors, raw
        self.latent_whitening = LatentWhitening(channels).to(self.device)
        self.latent_whitening.fit(latents, self.config.latent_whiten_floor)
        self.config.latent_norm = "pca"
        linear_map = self.normalize(before[0]) - self.normalize(before[1])  # [C_old, C_new]
        final = self.flow_head.final.linear
        final.weight.copy_((final.weight.T.float() @ linear_map).T.to(final.weight.dtype))
        final.bias.copy_((final.bias.float() @ linear_map).to(final.bias.dtype))

    @torch.no_grad()
    def add_flow_latent_input(self) -> None:
        """Give a flow head without it the noisy-latent skip (unified/flow_head.py), started at zero."""
        self.flow_head.add_latent_input(self.config.tokenizer.latent_channels)
        self.config.flow_head_latent_input = True

    @torch.no_grad()
    def grow_llm(self, num_layers: int) -> list[int]:
        """Deepen the LLM to `num_layers` by block expansion (LLaMA Pro, Wu et al. 2024): each new layer is a
        copy of the layer before it with its attention and MLP output projections zeroed, so it starts as
        the identity on the residual stream and the grown model computes exactly what it did. The new
        layers are spread evenly (4 -> 6: after layers 1 and 3). Returns the new layers' indices."""
        old_layers = len(self.llm.model.layers)
        extra = num_layers - old_layers
        if not 0 < extra <= old_layers:
            raise ValueError(f"can grow a {old_layers}-layer LLM to {old_layers + 1}-{2 * old_layers} layers, "
                             f"not {num_layers}")
        insert_after = {round((k + 1) * old_layers / extra) - 1 for k in range(extra)}
        sources = [(i, copy) for i in range(old_layers) for copy in ((False, True) if i in insert_after else (False,))]
        old_state = self.llm.state_dict()
        state = {k: v for k, v in old_state.items() if not k.startswith("model.layers.")}
        for new_index, (old_index, is_copy) in enumerate(sources):
            prefix = f"model.layers.{old_index}."
            for key, value in old_state.items():
                if key.startswith(prefix):
                    name = key[len(prefix):]
                    zero = is_copy and name in ("self_attn.o_proj.weight", "mlp.down_proj.weight")
                    state[f"model.layers.{new_index}.{name}"] = torch.zeros_like(value) if zero else value.clone()
        reference = self.llm.model.embed_tokens.weight
        self.config.llm = {**self.config.llm, "num_hidden_layers": num_layers}
        llm = Qwen2ForCausalLM(self.config.llm_config()).to(device=reference.device, dtype=reference.dtype)
        llm.load_state_dict(state)
        llm.tie_weights()
        self.llm = llm.train(self.training)
        return [new_index for new_index, (_, is_copy) in enumerate(sources) if is_copy]

    def image_embeds(self, latent: torch.Tensor) -> torch.Tensor:
        """GSB-space latent [M, N, C] (raw scale) -> LLM input embeddings [M, N, H]."""
        embeds = self.projector(self.vision.semantic_features(latent))
        return embeds if self.image_position is None else embeds + self.image_position.to(embeds.dtype)

    @torch.no_grad()
    def add_image_positions(self, scale: float = 0.1) -> None:
        """Give a model without them image position embeddings, started at DiT's 2D sin-cos table times
        `scale` (norm 0.1 x sqrt(H / 2) a token: a small nudge beside image embeddings of norm ~15)."""
        from diffusers.models.embeddings import get_2d_sincos_pos_embed

        tok, width = self.config.tokenizer, self.llm.config.hidden_size
        table = get_2d_sincos_pos_embed(width, tok.image_size // tok.patch_size, output_type="pt")  # [N, H]
        self.image_position = nn.Parameter((scale * table).float().to(self.device))
        self.config.image_position_embedding = True

    def segments(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """[B, L] -> segment labels: -1 padding, 0 text, k > 0 for the k-th run of image pads."""
        is_image = input_ids == self.token_id(IMG_PAD)
        starts = is_image & ~F.pad(is_image, (1, 0))[:, :-1]
        segments = starts.long().cumsum(-1) * is_image.long()
        if attention_mask is not None:
            segments = segments.masked_fill(attention_mask == 0, -1)
        return segments

    def embed(self, input_ids: torch.Tensor, latents: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with the image-pad positions replaced, in order, by the images' embeddings.

        latents: [M, N, C], one per image run in reading order over the batch (row-major)."""
        embeds = self.llm.get_input_embeddings()(input_ids)
        is_image = input_ids == self.token_id(IMG_PAD)
        n_pads = int(is_image.sum())
        if n_pads == 0:
            return embeds
        if latents is None or latents.shape[0] * latents.shape[1] != n_pads:
            got = 0 if latents is None else latents.shape[0] * latents.shape[1]
            raise ValueError(f"the sequence has {n_pads} image positions but {got} image tokens were given")
        image = self.image_embeds(latents).reshape(-1, embeds.shape[-1]).to(embeds.dtype)
        return embeds.masked_scatter(is_image.unsqueeze(-1), image)

    def _run_llm(self, embeds, segments, cache=None, key_segments=None, position_ids=None):
        """Run the decoder. Without a cache the mask is built over `segments`; with one, `key_segments`
        covers the cached keys followed by the new tokens."""
        dtype = embeds.dtype
        if cache is None:
            allowed = build_attention_mask(segments)
            position_ids = position_ids_from(segments)
        else:
            allowed = build_attention_mask(key_segments)[:, :, -segments.shape[1]:]
        out = self.llm.model(inputs_embeds=embeds, attention_mask=to_additive_mask(allowed, dtype),
                             position_ids=position_ids, cache=cache, use_cache=cache is not None)
        return out.last_hidden_state

    # ------------------------------------------------------------------ training
    def next_token_logits(self, input_ids, attention_mask, latents) -> torch.Tensor:
        """Logits [B, L - 1, V] of each next token (teacher forcing)."""
        segments = self.segments(input_ids, attention_mask)
        hidden = self._run_llm(self.embed(input_ids, latents), segments)
        return self.llm.lm_head(hidden[:, :-1]).float()

    def ntp_loss(self, input_ids, attention_mask, labels, latents) -> torch.Tensor:
        """Next-token prediction on text; labels -100 where no loss is taken."""
        logits = self.next_token_logits(input_ids, attention_mask, latents)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)

    def flow_loss(self, input_ids, attention_mask, target_mean, generator=None) -> torch.Tensor:
        """Flow matching on the image tokens at the end of each row (prefix left-padded).

        target_mean: GSB means [B, N, C] of the target images (raw scale)."""
        x0 = self.normalize(target_mean)
        b = x0.shape[0]
        t = sample_logit_normal(b, generator=generator, loc=self.config.flow_time_loc).to(x0.device)
        eps = torch.randn(x0.shape, generator=generator).to(x0.device)
        return self.flow_loss_at(input_ids, attention_mask, x0, eps, t)

    def flow_loss_at(self, input_ids, attention_mask, x0, eps, t) -> torch.Tensor:
        """The flow loss for given normalised clean latents x0 [B, N, C], noise and times t [B]."""
        z_t = (1 - t[:, None, None]) * x0 + t[:, None, None] * eps
        segments = self.segments(input_ids, attention_mask)
        hidden = self._run_llm(self.embed(input_ids, self.denormalize(z_t)), segments)
        out = self.flow_head(hidden[:, -x0.shape[1]:], t, z_t)
        return flow_matching_loss(self.config.flow_prediction, out, z_t, x0, eps, t)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                latents: torch.Tensor | None = None) -> Prefix:
        """Run a (left-padded) prompt once and keep its KV cache."""
        segments = self.segments(input_ids, attention_mask)
        cache = DynamicCache(config=self.llm.config)
        embeds = self.embed(input_ids, latents)
        allowed = build_attention_mask(segments)
        out = self.llm.model(inputs_embeds=embeds, attention_mask=to_additive_mask(allowed, embeds.dtype),
                             position_ids=position_ids_from(segments), cache=cache, use_cache=True)
        logits = self.llm.lm_head(out.last_hidden_state[:, -1]).float()
        next_position = position_ids_from(segments)[:, -1] + 1
        return Prefix(cache=cache, segments=segments, next_position=next_position, last_logits=logits)

    @torch.no_grad()
    def image_velocity(self, z_t: torch.Tensor, t: torch.Tensor, prefix: Prefix) -> torch.Tensor:
        """Velocity for normalised latents z_t [B, N, C] at times t [B], attending to a prefilled prefix.

        The prefix's cache is used and then cut back, so it serves every flow step unchanged."""
        b, n, _ = z_t.shape
        embeds = self.image_embeds(self.denormalize(z_t)).to(self.llm.dtype)
        new_segments = torch.full((b, n), int(prefix.segments.max()) + 1, device=z_t.device)
        key_segments = torch.cat([prefix.segments, new_segments], dim=1)
        positions = prefix.next_position[:, None] + torch.arange(n, device=z_t.device)[None]
        hidden = self._run_llm(embeds, new_segments, cache=prefix.cache, key_segments=key_segments,
                               position_ids=positions)
        prefix.cache.crop(-n)
        out = self.flow_head(hidden, t.to(hidden.dtype), z_t).float()
        return to_velocity(self.config.flow_prediction, out, z_t.float(), t.float())

    @torch.no_grad()
    def decode_step(self, token_ids: torch.Tensor, prefix: Prefix) -> torch.Tensor:
        """Append one token per row [B] to the prefix (in place) and return the next logits [B, V]."""
        b = token_ids.shape[0]
        new_segments = torch.zeros((b, 1), dtype=prefix.segments.dtype, device=token_ids.device)
        key_segments = torch.cat([prefix.segments, new_segments], dim=1)
        embeds = self.llm.get_input_embeddings()(token_ids[:, None])
        hidden = self._run_llm(embeds, new_segments, cache=prefix.cache, key_segments=key_segments,
                               position_ids=prefix.next_position[:, None])
        prefix.segments = key_segments
        prefix.next_position = prefix.next_position + 1
        prefix.last_logits = self.llm.lm_head(hidden[:, -1]).float()
        return prefix.last_logits
