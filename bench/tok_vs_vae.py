"""HYDRA-TOK at the paper's scale (random weights) against diffusers' AutoencoderKL in the FLUX.1 VAE
configuration (random weights, nothing downloaded), on the same image, batch 1, float32, CPU.

HYDRA-TOK: encode = Gen-ViT (12 InternViT-300M blocks) + GSB mean; decode = the pixel flow decoder
(12 DiT blocks of width 1024) with ONE flow step, measured; the preset's 10 steps cost ten such
steps, shown as a derived row. The paper's 448 px uses patch 14 (32 x 32 tokens); 256 px is not a
multiple of 14, so 256 px uses patch 16 (16 x 16 tokens). FLUX.1 VAE: 8x downsampling, 16 channels.
Round trip = encode + decode of the same repeat.
"""

from __future__ import annotations

import dataclasses

import torch

from .harness import interleave, row, timed

SECTION = "HYDRA-TOK vs FLUX.1 VAE"


def flux_vae(small: bool = False):
    from diffusers import AutoencoderKL

    channels, groups = ((8, 16, 16, 16), 4) if small else ((128, 256, 512, 512), 32)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=channels,
                         layers_per_block=1 if small else 2, norm_num_groups=groups,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         use_quant_conv=False, use_post_quant_conv=False, scaling_factor=0.3611,
                         shift_factor=0.1159).eval()


def hydra_tok_config(size: int, small: bool = False):
    from hydra_core.config import HydraTokConfig, _paper_tokenizer

    patch = 14 if size % 14 == 0 else 16
    if small:  # for the test of this command: the same code path, toy widths
        return HydraTokConfig(image_size=size, patch_size=patch, hidden_size=64, num_hidden_layers=2, gen_layers=1,
                              num_attention_heads=2, intermediate_size=128, latent_channels=8,
                              decoder_hidden_size=64, decoder_layers=1, decoder_heads=2, decoder_steps=10,
                              distill_layers=(1, 2))
    return dataclasses.replace(_paper_tokenizer(), image_size=size, patch_size=patch)


def count_flops(fn) -> tuple[float, object]:
    """(FLOPs of one call of fn, its result)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        result = fn()
    return float(counter.get_total_flops()), result


def run(sizes: tuple[int, ...], repeats: int, small: bool = False, log=print) -> tuple[list[dict], dict]:
    """Rows, and per size the FLOPs and encode times of HYDRA-TOK (for the FLOP/s section)."""
    from hydra_core.tokenizer import HydraTok

    torch.manual_seed(0)
    vae = flux_vae(small)
    rows, flops = [], {}
    for size in sizes:
        log(f"  {size}x{size}")
        cfg = hydra_tok_config(size, small)
        tok = HydraTok(cfg).eval()
        image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(size)) * 2 - 1
        noise = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            # The warm-up: one call of each, HYDRA-TOK's encode under the FLOP counter. Each call below is
            # seconds long at the paper's scale, so none is repeated untimed.
            encode_flops, latent = count_flops(lambda: tok.encode_latent(image))
            vae_latent = vae.encode(image).latent_dist.mode()
            tok.decode(latent, steps=1, noise=noise)
            vae.decode(vae_latent)
            enc_a, enc_b = interleave(timed(lambda: tok.encode_latent(image)),
                                      timed(lambda: vae.encode(image).latent_dist.mode()), repeats, warmup=0)
            dec_a, dec_b = interleave(timed(lambda: tok.decode(latent, steps=1, noise=noise)),
                                      timed(lambda: vae.decode(vae_latent).sample), repeats, warmup=0)
        flops[size] = {"encode_flops": encode_flops, "encode_s": [x["s"] for x in enc_a]}
        grid = size // cfg.patch_size
        shape = f"{grid}×{grid}×{cfg.latent_channels} vs {vae_latent.shape[2]}×{vae_latent.shape[3]}×16"
        label = f"{size}² (latent {shape})"
        a, b = "HYDRA-TOK", "FLUX.1 VAE"
        ea, eb = [s["s"] for s in enc_a], [s["s"] for s in enc_b]
        da, db = [s["s"] for s in dec_a], [s["s"] for s in dec_b]
        rows.append(row(SECTION, f"encode {label}", a, b, ea, eb))
        rows.append(row(SECTION, f"decode {size}² (HYDRA-TOK: 1 flow step)", a, b, da, db))
        rows.append(row(SECTION, f"round trip {size}² (HYDRA-TOK: 1 flow step)", a, b,
                        [x + y for x, y in zip(ea, da)], [x + y for x, y in zip(eb, db)]))
        steps = cfg.decoder_steps
        rows.append(row(SECTION, f"round trip {size}² (HYDRA-TOK: the preset's {steps} flow steps)", a, b,
                        [x + steps * y for x, y in zip(ea, da)], [x + y for x, y in zip(eb, db)],
                        note=f"derived: encode + {steps} × the measured one-step decode"))
        flops[size]["patch"] = cfg.patch_size
        del tok
    return rows, flops
