"""HydraPipeline: the one entry point for generation, reconstruction and chat.

The app, the command line and the evaluation all call this. Images go in and out as PIL images
(or uint8 arrays); latents come out as float tensors [N, C] in the GSB's own scale, i.e. exactly
the tensor the latent panel shows.

Seeds: image k of a batch uses seed + k for both its latent noise and its pixel-decoder noise, so
it equals a single-image run with that seed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image
from transformers import PreTrainedTokenizerFast
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from .config import EOS_TOKEN, IMG_START, NULL_TOKEN
from .eval.metrics import psnr, ssim
from .sampling import sample_flow
from .text import expand_images, render_chat
from .unified import HydraModel
from .viz import PCABasis

BUNDLED_CHECKPOINT = Path(__file__).resolve().parent.parent / "assets" / "hydra-tiny"
MAX_PROMPT_CHARS = 500
MAX_IMAGES = 4

ImageLike = Image.Image | np.ndarray | str | Path
ProgressFn = Callable[[int, int], None]


@dataclass
class GenerationOutput:
    images: list[Image.Image]
    latents: torch.Tensor  # [B, N, C]
    seeds: list[int]
    # With return_trajectory: per step, {"t": time reached, "latent": the latent after the step,
    # "x0": the model's clean estimate at that step}, latents [B, N, C] in the GSB's scale.
    trajectory: list[dict[str, torch.Tensor | float]] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class ReconstructionOutput:
    original: Image.Image  # the model-sized input
    reconstruction: Image.Image
    latent: torch.Tensor  # [N, C]
    psnr: float
    ssim: float
    seconds: float = 0.0


def to_pil(image: ImageLike) -> Image.Image:
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise ValueError(f"image file {path} does not exist")
        try:
            image = Image.open(path)
            image.load()
        except Exception as error:  # PIL raises several types for unreadable files
            raise ValueError(f"{path.name} is not an image PIL can read ({error})") from error
    elif isinstance(image, np.ndarray):
        if image.ndim not in (2, 3) or image.size == 0:
            raise ValueError(f"an image array must be [H, W] or [H, W, 3], got shape {image.shape}")
        if image.dtype != np.uint8:
            image = np.clip(image * (255.0 if image.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        image = Image.fromarray(image)
    elif not isinstance(image, Image.Image):
        raise ValueError(f"expected an image (PIL, array or path), got {type(image).__name__}")
    if image.width < 8 or image.height < 8:
        raise ValueError(f"image is {image.width}x{image.height}; at least 8x8 is needed")
    return image.convert("RGB")


def center_crop_resize(image: Image.Image, size: int) -> Image.Image:
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)


def tensor_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """[B, 3, H, W] in [-1, 1] -> PIL images."""
    arrays = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arrays]


class HydraPipeline:
    def __init__(self, model: HydraModel, tokenizer: PreTrainedTokenizerFast, basis: PCABasis | None = None,
                 name: str = "custom", precision: str = "fp32"):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.basis = basis
        self.name = name
        self.precision = precision
        self._pending_placement: tuple[str | None, str | None, bool] | None = None
        # Counted before any quantization (bitsandbytes packs two 4-bit weights per byte).
        self.num_parameters = sum(p.numel() for p in model.parameters())

    @classmethod
    def from_pretrained(cls, path_or_id: str | Path | None = None, device: str | None = None,
                        precision: str | None = None, defer_placement: bool = False,
                        offload: bool = False) -> "HydraPipeline":
        """Load a checkpoint folder or Hub id (default: the bundled HYDRA-Tiny) onto a device.

        offload: stream the LLM's layers from CPU memory (see precision.place).
        defer_placement: keep the float32 weights on the CPU and move / quantize them at the first
        model call. On ZeroGPU, CUDA exists only inside `@spaces.GPU` functions, so bitsandbytes
        loads must happen there (each call runs in a fresh worker, so each call places the model)."""
        from .loading import load_pretrained
        from .precision import place

        ckpt = load_pretrained(path_or_id or BUNDLED_CHECKPOINT)
        name = str(path_or_id or "hydra-tiny (bundled)")
        if defer_placement:
            pipe = cls(ckpt.model, ckpt.tokenizer, ckpt.basis, name=name, precision=precision or "auto")
            pipe._pending_placement = (device, precision, offload)
            return pipe
        count = sum(p.numel() for p in ckpt.model.parameters())
        model, precision = place(ckpt.model, device=device, precision=precision, offload=offload)
        pipe = cls(model, ckpt.tokenizer, ckpt.basis, name=name, precision=precision)
        pipe.num_parameters = count
        return pipe

    def ensure_placed(self) -> None:
        """Apply a deferred device / precision placement (a no-op once placed)."""
        if self._pending_placement is not None:
            from .precision import place

            device, precision, offload = self._pending_placement
            self.model, self.precision = place(self.model, device=device, precision=precision, offload=offload)
            self._pending_placement = None

    # ------------------------------------------------------------------ properties
    @property
    def config(self):
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def image_size(self) -> int:
        return self.config.tokenizer.image_size

    # ------------------------------------------------------------------ images <-> latents
    def preprocess(self, images: ImageLike | list[ImageLike]) -> torch.Tensor:
        """Centre-crop, resize and scale to [-1, 1]: -> [B, 3, S, S]."""
        self.ensure_placed()
        images = images if isinstance(images, list) else [images]
        arrays = [np.asarray(center_crop_resize(to_pil(im), self.image_size)) for im in images]
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1
        return batch.to(self.device)

    @torch.no_grad()
    def encode(self, images: ImageLike | list[ImageLike]) -> torch.Tensor:
        """Images -> GSB means [B, N, C] (float32, CPU)."""
        return self.model.vision.encode_latent(self.preprocess(images)).float().cpu()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, steps: int | None = None, seeds: list[int] | int = 0,
               noise: torch.Tensor | None = None) -> list[Image.Image]:
        """GSB latents [B, N, C] (or [N, C]) -> images, with per-image seeded decoder noise."""
        self.ensure_placed()
        latents = latents[None] if latents.dim() == 2 else latents
        seeds = [seeds + k for k in range(latents.shape[0])] if isinstance(seeds, int) else seeds
        if noise is None:
            noise = torch.stack([self._decoder_noise(torch.Generator().manual_seed(s)) for s in seeds])
        images = self.model.vision.decode(latents.to(self.device), steps=steps, noise=noise)
        return tensor_to_pil(images)

    def _decoder_noise(self, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(3, self.image_size, self.image_size, generator=generator)

    # ------------------------------------------------------------------ checks
    def check_generate_inputs(self, prompt: str, num_images: int, steps: int, guidance: float) -> None:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("the prompt is empty")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise ValueError(f"the prompt has {len(prompt)} characters; at most {MAX_PROMPT_CHARS}")
        if not 1 <= num_images <= MAX_IMAGES:
            raise ValueError(f"num_images must be 1..{MAX_IMAGES}, got {num_images}")
        if not 1 <= steps <= 200:
            raise ValueError(f"steps must be 1..200, got {steps}")
        if not 0.0 <= guidance <= 30.0:
            raise ValueError(f"guidance must be 0..30, got {guidance}")

    # ------------------------------------------------------------------ generation
    def _generation_prompt(self, prompt: str) -> str:
        chat = render_chat(self.tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True)
        return chat + IMG_START

    @torch.no_grad()
    def generate(self, prompt: str, num_images: int = 1, steps: int | None = None, guidance: float | None = None,
                 seed: int = 0, decoder_steps: int | None = None, return_trajectory: bool = False,
                 progress: ProgressFn | None = None) -> GenerationOutput:
        """Text -> images through the flow head, with classifier-free guidance against the null prompt.

        1. Tokenise the prompt and the null prompt; prefill both once (their KV cache serves every step).
        2. Draw each image's noise from its own seed.
        3. Integrate the flow in the normalised latent space; v = v_null + g * (v_cond - v_null).
        4. Denormalise and decode with the pixel flow decoder.
        """
        start = time.perf_counter()
        self.ensure_placed()
        steps = self.config.default_steps if steps is None else steps
        guidance = self.config.default_guidance if guidance is None else guidance
        self.check_generate_inputs(prompt, num_images, steps, guidance)
        model, tok_cfg = self.model, self.config.tokenizer
        seeds = [int(seed) + k for k in range(num_images)]
        generators = [torch.Generator().manual_seed(s) for s in seeds]

        use_cfg = guidance != 1.0
        texts = [self._generation_prompt(prompt)] * num_images
        if use_cfg:
            texts += [self._generation_prompt(NULL_TOKEN)] * num_images
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        prefix = model.prefill(enc.input_ids, enc.attention_mask)

        shape = (tok_cfg.num_tokens, tok_cfg.latent_channels)
        noise = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(self.device)
        decoder_noise = torch.stack([self._decoder_noise(g) for g in generators])

        def velocity(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            if not use_cfg:
                return model.image_velocity(z, t, prefix)
            v_cond, v_null = model.image_velocity(torch.cat([z, z]), torch.cat([t, t]), prefix).chunk(2)
            return v_null + guidance * (v_cond - v_null)

        trajectory: list[dict] = []

        def on_step(i: int, t_next: float, z: torch.Tensor, clean: torch.Tensor) -> None:
            if return_trajectory:
                trajectory.append({"t": t_next, "latent": model.denormalize(z).float().cpu(),
                                   "x0": model.denormalize(clean).float().cpu()})
            if progress is not None:
                progress(i + 1, steps)

        z0 = sample_flow(velocity, noise, steps, shift=self.config.time_shift, callback=on_step)
        latents = model.denormalize(z0).float()
        images = self.decode(latents, steps=decoder_steps, noise=decoder_noise)
        return GenerationOutput(images=images, latents=latents.cpu(), seeds=seeds, trajectory=trajectory,
                                seconds=time.perf_counter() - start)

    # ------------------------------------------------------------------ reconstruction
    @torch.no_grad()
    def reconstruct(self, image: ImageLike, steps: int | None = None, seed: int = 0) -> ReconstructionOutput:
        start = time.perf_counter()
        original = center_crop_resize(to_pil(image), self.image_size)
        latent = self.encode(original)
        reconstruction = self.decode(latent, steps=steps, seeds=[int(seed)])[0]
        a, b = np.asarray(original), np.asarray(reconstruction)
        return ReconstructionOutput(original=original, reconstruction=reconstruction, latent=latent[0],
                                    psnr=psnr(a, b), ssim=ssim(a, b), seconds=time.perf_counter() - start)

    # ------------------------------------------------------------------ chat
    def _chat_inputs(self, messages: list[dict]) -> tuple[torch.Tensor, torch.Tensor, list]:
        """Render messages with the chat template; expand each image placeholder to its token block."""
        if not messages:
            raise ValueError("the conversation is empty")
        images: list[ImageLike] = []
        rendered = []
        for message in messages:
            if not isinstance(message, dict) or message.get("role") not in ("user", "assistant", "system"):
                raise ValueError("each message needs a role of user, assistant or system")
            content = message.get("content")
            if isinstance(content, str):
                rendered.append({"role": message["role"], "content": content})
                continue
            parts = []
            for part in content or []:
                if part.get("type") == "image":
                    images.append(part["image"])
                    parts.append({"type": "image"})
                elif part.get("type") == "text":
                    parts.append({"type": "text", "text": str(part.get("text", ""))})
            rendered.append({"role": message["role"], "content": parts})
        text = render_chat(self.tokenizer, rendered, add_generation_prompt=True)
        text = expand_images(text, self.config.tokenizer.num_tokens)
        enc = self.tokenizer([text], return_tensors="pt", add_special_tokens=False).to(self.device)
        return enc.input_ids, enc.attention_mask, images

    @torch.no_grad()
    def chat(self, messages: list[dict], max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0,
             seed: int = 0) -> Iterator[str]:
        """Stream the assistant's reply as text pieces.

        messages: [{"role": "user"|"assistant", "content": str | [{"type": "text", "text": ...},
        {"type": "image", "image": PIL | array | path}]}]. temperature 0 decodes greedily."""
        if not 1 <= max_new_tokens <= 1024:
            raise ValueError(f"max_new_tokens must be 1..1024, got {max_new_tokens}")
        if temperature < 0 or not 0 < top_p <= 1:
            raise ValueError("temperature must be >= 0 and top_p in (0, 1]")
        self.ensure_placed()
        input_ids, attention_mask, images = self._chat_inputs(messages)
        latents = self.encode(images).to(self.device) if images else None
        prefix = self.model.prefill(input_ids, attention_mask, latents)
        warpers = [TemperatureLogitsWarper(temperature), TopPLogitsWarper(top_p)] if temperature > 0 else []
        generator = torch.Generator().manual_seed(int(seed))
        eos = self.tokenizer.convert_tokens_to_ids(EOS_TOKEN)
        generated: list[int] = []
        shown = ""
        logits = prefix.last_logits
        for _ in range(max_new_tokens):
            if warpers:
                scores = logits.cpu()
                for warp in warpers:
                    scores = warp(None, scores)
                token = int(torch.multinomial(scores.softmax(-1), 1, generator=generator)[0, 0])
            else:
                token = int(logits[0].argmax())
            if token == eos:
                break
            generated.append(token)
            text = self.tokenizer.decode(generated, skip_special_tokens=True)
            if len(text) > len(shown) and not text.endswith("\ufffd"):
                yield text[len(shown):]
                shown = text
            logits = self.model.decode_step(torch.tensor([token], device=self.device), prefix)

    def chat_text(self, messages: list[dict], **kwargs) -> str:
        return "".join(self.chat(messages, **kwargs))
