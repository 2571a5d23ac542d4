"""The app's only model calls (`device_functions`): on ZeroGPU each runs where the GPU is."""

from __future__ import annotations

from types import SimpleNamespace

import spaces
import torch

def device_functions(pipe) -> SimpleNamespace:
    """The app's only model calls, as closures over the pipeline.

    On ZeroGPU each `@spaces.GPU` function runs in a forked worker that holds the GPU: its arguments
    and results are pickled, so they are plain CPU values (PIL images, CPU tensors, the pipeline's
    output dataclasses), and nothing here touches app state (basis, status) that must outlive the call.
    """

    @spaces.GPU
    def generate(prompt, num_images, steps, guidance, seed, decoder_steps, progress=None):
        def report(step: int, total: int) -> None:
            if progress is not None:
                progress((step, total), desc="decoding pixels" if step == total else "flow steps")

        return pipe.generate(prompt, num_images=num_images, steps=steps, guidance=guidance, seed=seed,
                             decoder_steps=decoder_steps, return_trajectory=True, progress=report)

    @spaces.GPU
    def reconstruct(image, steps, seed):
        return pipe.reconstruct(image, steps=steps, seed=seed)

    @spaces.GPU
    def encode(images):
        return pipe.encode(images)  # [B, N, C], CPU

    @spaces.GPU
    def decode(latents, steps, seeds):
        return pipe.decode(latents, steps=steps, seeds=seeds)

    @spaces.GPU
    def noise_probe(image, sigma, steps, seed):
        latent = pipe.encode(image)[0]  # [N, C]
        noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
        noisy = latent + sigma * noise
        return latent, noisy, pipe.decode(noisy, steps=steps, seeds=[seed])[0]

    @spaces.GPU
    def interpolate(image_a, image_b, alphas, steps, seed):
        a, b = pipe.encode([image_a, image_b])  # [N, C] each
        mix = torch.stack([(1 - alpha) * a + alpha * b for alpha in alphas])  # [len(alphas), N, C]
        return mix, pipe.decode(mix, steps=steps, seeds=[seed] * len(alphas))  # same decoder noise

    @spaces.GPU
    def chat(messages, max_new_tokens, temperature, top_p, seed):
        yield from pipe.chat(messages, max_new_tokens=max_new_tokens, temperature=temperature,
                             top_p=top_p, seed=seed)

    return SimpleNamespace(generate=generate, reconstruct=reconstruct, encode=encode, decode=decode,
                           noise_probe=noise_probe, interpolate=interpolate, chat=chat)

