"""One flow step of the bundled model with the prompt's KV cache reused (A: what `HydraPipeline.generate`
does, `HydraModel.image_velocity` on a prefilled prefix) against the prompt recomputed at every step
(B: the whole sequence, prompt + image tokens, through the LLM, as training's forward does).

Each step is what generation runs: one image with classifier-free guidance, so a batch of two rows
(the prompt and the null prompt, left-padded). A prompt of P tokens is P tokens of caption text inside
the chat template (15 more tokens around it for the bundled tokenizer).
"""

from __future__ import annotations

import torch

from .harness import compare, timed

SECTION = "flow step: prompt KV cache"
CAPTION = ("a small yellow square at the top left and a large blue star at the bottom right, on a plain cream "
           "background; ")


def prompt_ids(tokenizer, length: int) -> list[int]:
    """The generation prefix of a prompt of exactly `length` caption tokens."""
    from hydra_core.config import NULL_TOKEN
    from hydra_core.text import generation_text

    template = tokenizer(generation_text(tokenizer, NULL_TOKEN), add_special_tokens=False).input_ids
    null_id = tokenizer.convert_tokens_to_ids(NULL_TOKEN)
    cut = template.index(null_id)
    body = tokenizer(CAPTION, add_special_tokens=False).input_ids
    body = (body * (length // len(body) + 1))[:length]
    return template[:cut] + body + template[cut + 1:]


def batch(tokenizer, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and attention mask."""
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id or 0
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def step_functions(pipe, length: int):
    """(reused, recomputed, max difference of their velocities) for a prompt of `length` tokens."""
    from hydra_core.config import IMG_PAD, NULL_TOKEN
    from hydra_core.text import generation_text

    model, tokenizer = pipe.model, pipe.tokenizer
    n, c = pipe.config.tokenizer.num_tokens, pipe.config.tokenizer.latent_channels
    null = tokenizer(generation_text(tokenizer, NULL_TOKEN), add_special_tokens=False).input_ids
    ids, mask = batch(tokenizer, [prompt_ids(tokenizer, length), null])
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(1, n, c, generator=generator).expand(2, n, c).contiguous()
    t = torch.full((2,), 0.7)
    with torch.no_grad():
        prefix = model.prefill(ids, mask)
    pad = model.token_id(IMG_PAD)
    full_ids = torch.cat([ids, torch.full((2, n), pad)], dim=1)
    full_mask = torch.cat([mask, torch.ones(2, n, dtype=mask.dtype)], dim=1)

    @torch.no_grad()
    def reused():
        return model.image_velocity(z, t, prefix)

    @torch.no_grad()
    def recomputed():
        from hydra_core.sampling import to_velocity

        segments = model.segments(full_ids, full_mask)
        hidden = model._run_llm(model.embed(full_ids, model.denormalize(z)), segments)
        out = model.flow_head(hidden[:, -n:], t, z).float()
        return to_velocity(model.config.flow_prediction, out, z.float(), t.float())

    difference = float((reused() - recomputed()).abs().max())
    return reused, recomputed, difference


def run(pipe, lengths: tuple[int, ...], repeats: int, log=print) -> list[dict]:
    rows = []
    for length in lengths:
        log(f"  prompt of {length} tokens")
        reused, recomputed, difference = step_functions(pipe, length)
        rows += compare(SECTION, f"one flow step (1 image + guidance), prompt of {length} tokens",
                        ("KV cache reused", timed(reused)), ("prompt recomputed", timed(recomputed)), repeats,
                        warmup=2, note=f"max velocity difference {difference:.1e}")
    return rows
