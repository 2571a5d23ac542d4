"""The app's only model calls (`device_functions`): on ZeroGPU each runs where the GPU is."""

from __future__ import annotations

import contextvars
import queue
import threading
from types import SimpleNamespace

import spaces
import torch

PREVIEW_DECODER_STEPS = 2  # decoder steps for previews of clean estimates (cheap on CPU)
GENERATION_THREAD = "hydra-generation"


class GenerationStopped(Exception):
    """Raised inside a generation whose consumer has gone (the page's Stop)."""

def device_functions(pipe) -> SimpleNamespace:
    """The app's only model calls, as closures over the pipeline.

    On ZeroGPU each `@spaces.GPU` function runs in a forked worker that holds the GPU: its arguments
    and results are pickled, so they are plain CPU values (PIL images, CPU tensors, the pipeline's
    output dataclasses), and nothing here touches app state (basis, status) that must outlive the call.
    """

    @spaces.GPU
    def generate_stream(prompt, num_images, steps, guidance, seed, decoder_steps, previews, progress=None,
                        expand=None):
        """pipe.generate (with its trajectory), yielding ("preview", step, steps, images) `previews` times
        along the flow (the clean estimate at that step, decoded with PREVIEW_DECODER_STEPS), then ("done",
        GenerationOutput). Closing the generator (the page's Stop) ends the run at the next flow step."""
        updates: queue.Queue = queue.Queue()
        stopped = threading.Event()
        seeds = [seed + k for k in range(num_images)]
        every = max(1, steps // (previews + 1)) if previews else 0

        def on_step(step: int, total: int, clean: torch.Tensor) -> None:
            if stopped.is_set():
                raise GenerationStopped
            if every and step % every == 0 and step < total:
                updates.put(("preview", step, total, pipe.decode(clean, steps=PREVIEW_DECODER_STEPS, seeds=seeds)))

        def run() -> None:
            def report(step: int, total: int) -> None:
                if progress is not None:
                    progress((step, total), desc="flow steps")

            try:
                updates.put(("done", pipe.generate(prompt, num_images=num_images, steps=steps, guidance=guidance,
                                                   seed=seed, decoder_steps=decoder_steps, return_trajectory=True,
                                                   progress=report, on_step=on_step, expand=expand)))
            except BaseException as error:  # handed to the caller's thread, raised there
                updates.put(("error", error))

        # The run happens in a worker so that previews reach the page while it goes on; it keeps the
        # caller's context (Gradio's progress reporting lives in context variables).
        threading.Thread(target=contextvars.copy_context().run, args=(run,), name=GENERATION_THREAD, daemon=True).start()
        try:
            while True:
                kind, *rest = updates.get()
                if kind == "error":
                    raise rest[0]
                yield (kind, *rest)
                if kind == "done":
                    return
        finally:
            stopped.set()

    @spaces.GPU
    def self_check(images, prompt):
        from hydra_core.selfcheck import prompt_checks
        from hydra_core.selfcheck import self_check as check

        checks = prompt_checks(prompt)
        return [check(pipe, image, prompt, checks) for image in images]  # [[Answer, ...] per image]

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

    return SimpleNamespace(generate_stream=generate_stream, self_check=self_check,
                           reconstruct=reconstruct, encode=encode, decode=decode,
                           noise_probe=noise_probe, interpolate=interpolate, chat=chat)

