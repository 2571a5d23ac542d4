"""HydraPipeline: the one entry point for generation, reconstruction and chat.

The app, the command line and the evaluation all call this. Images go in and out as PIL images
(or uint8 arrays); latents come out as float tensors [N, C] in the GSB's own scale, i.e. exactly
the tensor the latent panel shows.

Seeds: image k of a batch uses seed + k for both its latent noise and its pixel-decoder noise, so
it equals a single-image run with that seed.
"""

from __future__ import annotations

import math
import time
import unicodedata
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from skimage import img_as_ubyte
from transformers import PreTrainedTokenizerFast, TextStreamer
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from .config import EOS_TOKEN, NULL_TOKEN
from .data.images import to_ubyte
from .eval.metrics import psnr, ssim
from .prompts import expand_prompt
from .sampling import sample_flow
from .text import expand_images, generation_text, render_chat
from .unified import HydraModel
from .viz import PCABasis
from .config import SPECIAL_TOKENS  # noqa: I001  (reserved in user text)

BUNDLED_CHECKPOINT = Path(__file__).resolve().parent.parent / "assets" / "hydra-tiny"
MAX_PROMPT_CHARS = 500
MAX_IMAGES = 4
MAX_STEPS = 200  # flow steps and decoder steps
MAX_GUIDANCE = 30.0
MAX_SEED = 2**62  # seed + k must stay a valid torch seed
MAX_NEW_TOKENS = 1024

ImageLike = Image.Image | np.ndarray | str | Path
ProgressFn = Callable[[int, int], None]
StepFn = Callable[[int, int, torch.Tensor], None]  # (step, steps, clean estimate [B, N, C])


@dataclass
class GenerationOutput:
    images: list[Image.Image]
    latents: torch.Tensor  # [B, N, C]
    seeds: list[int]
    prompts: list[str] = field(default_factory=list)  # the text each image was generated from (expanded or as typed)
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


# ------------------------------------------------------------------ input checks
# Every check raises ValueError with a message for the person who sent the input: it names the
# parameter or the file (never a server path) and the accepted range.
IMAGE_FORMATS = "PNG, JPEG, WebP, GIF, BMP or TIFF"
MAX_IMAGE_BYTES = 20 * 2**20  # checked before any decoding
MAX_IMAGE_PIXELS = 40_000_000  # checked from the header, before the pixels are decoded
MIN_IMAGE_SIDE = 8
MAX_ASPECT_RATIO = 10  # the model sees a centre square crop; beyond this it would see a sliver
MAX_MESSAGE_CHARS = 2000
ALLOWED_CONTROL = frozenset("\t\n\r")


def check_number(name: str, value, low: float, high: float, integer: bool = False) -> int | float:
    """A finite number in [low, high] (a whole number if `integer`) -> int or float; else ValueError."""
    kind = "a whole number" if integer else "a number"

    def show(x: float) -> str:
        if isinstance(x, int):
            digits = str(x)
            return digits if len(digits) <= 20 else f"{digits[:4]}... ({len(digits)} digits)"
        return str(int(x)) if x.is_integer() and abs(x) < 1e16 else f"{x:g}"

    span = f"from {show(low)} to {show(high)}"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise ValueError(f"{name} must be {kind} {span}, got the text "
                                 f"{value[:40]!r}") from None
        else:
            raise ValueError(f"{name} must be {kind} {span}, got {'nothing' if value is None else type(value).__name__}")
    value = float(value) if isinstance(value, (float, np.floating)) else int(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} must be {kind} {span}, got {value}")
    if integer and value != int(value):
        raise ValueError(f"{name} must be a whole number {span}, got {show(value)}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be {kind} {span}, got {show(value)}")
    return int(value) if integer else float(value)


def check_text(name: str, text, max_chars: int) -> str:
    """Non-empty text of at most `max_chars` characters without control characters (tab and newlines
    allowed), lone surrogates or the model's reserved tokens -> the text; else ValueError."""
    if not isinstance(text, str):
        raise ValueError(f"{name} must be text, got {type(text).__name__}")
    if not text.strip():
        raise ValueError(f"{name} is empty" if not text else f"{name} is empty (only whitespace)")
    if len(text) > max_chars:
        raise ValueError(f"{name} has {len(text):,} characters; at most {max_chars:,} are accepted "
                         "(nothing was cut: shorten it and send again)")
    for char in text:
        category = unicodedata.category(char)
        if category == "Cc" and char not in ALLOWED_CONTROL:
            raise ValueError(f"{name} contains the control character U+{ord(char):04X}; remove it")
        if category == "Cs":
            raise ValueError(f"{name} contains invalid Unicode (a lone surrogate U+{ord(char):04X})")
    for token in SPECIAL_TOKENS:
        if token in text:
            raise ValueError(f"{name} contains {token}, which is reserved for the model's own use; remove it")
    return text


def _file_name(path: Path) -> str:
    """The name to show for a file: its own name, never the folder it sits in on the server."""
    name = path.name
    return repr(name if len(name) <= 60 else name[:57] + "...")


def _open_image_file(path: Path) -> Image.Image:
    """Open and decode an image file with every check that can be made before decoding first."""
    name = _file_name(path)
    if not path.is_file():
        raise ValueError(f"the image file {name} does not exist")
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{name} is empty (0 bytes); upload an image file ({IMAGE_FORMATS})")
    if size > MAX_IMAGE_BYTES:
        raise ValueError(f"{name} is {size / 2**20:.1f} MB; images up to {MAX_IMAGE_BYTES // 2**20} MB are accepted")
    with path.open("rb") as file:
        head = file.read(1024).lstrip().lower()
    if path.suffix.lower() in (".svg", ".svgz") or head.startswith(b"<svg") or (
            head.startswith(b"<?xml") and b"<svg" in head):
        raise ValueError(f"{name} is an SVG (vector) image, which this app cannot read; export it as {IMAGE_FORMATS}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ValueError(f"{name} declares more than {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels (a decompression "
                         "bomb?); it was not decoded") from None
    except UnidentifiedImageError:
        raise ValueError(f"{name} is not an image file this app can read ({IMAGE_FORMATS})") from None
    except Exception:  # PIL raises many types for damaged headers
        raise ValueError(f"{name} is damaged: its image header cannot be read") from None
    with image:
        width, height = image.size
        if width * height > MAX_IMAGE_PIXELS:
            raise ValueError(f"{name} is {width}x{height} pixels ({width * height / 1e6:.0f} megapixels); at most "
                             f"{MAX_IMAGE_PIXELS / 1e6:.0f} megapixels are accepted (it was not decoded)")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. a palette image with transparency in bytes
                image.seek(0)  # an animation: its first frame
                image.load()
                return _upright(image)
        except OSError as error:
            if "truncated" in str(error):
                raise ValueError(f"{name} is truncated: the file ends before its image data does") from None
            raise ValueError(f"{name} is damaged: its image data cannot be decoded") from None
        except Exception:
            raise ValueError(f"{name} is damaged: its image data cannot be decoded") from None


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation (a photo taken sideways shows upright); a broken EXIF block is ignored."""
    try:
        return ImageOps.exif_transpose(image)  # a copy, rotated where the EXIF says so
    except Exception:
        return image.copy()


def _array_to_pil(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)) or array.size == 0:
        raise ValueError(f"an image array must be [H, W], [H, W, 3] or [H, W, 4], got shape {array.shape}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ValueError("the image array contains NaN or infinite values")
    return Image.fromarray(np.ascontiguousarray(to_ubyte(array)))


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: transparency over white, 16-bit and float scaled to 8 bits."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        if not np.isfinite(array).all():
            raise ValueError("the image contains NaN or infinite values")
        if image.mode.startswith("I;16"):
            top = 65535.0
        elif image.mode == "F" and array.max() <= 1.0:
            top = 1.0
        else:
            top = 255.0 if array.max() <= 255 else 65535.0
        image = Image.fromarray(np.clip(array / top * 255.0, 0, 255).round().astype(np.uint8))
    if image.mode == "P" and "transparency" in image.info or image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except (ValueError, OSError):
        raise ValueError(f"the image's colour mode {image.mode} is not supported; save it as RGB") from None


def to_pil(image: ImageLike) -> Image.Image:
    """A path, array or PIL image -> an RGB PIL image, or ValueError naming the problem.

    Files: at most MAX_IMAGE_BYTES and MAX_IMAGE_PIXELS (both checked before decoding); SVG refused;
    animations give their first frame; the EXIF orientation is applied. Any mode (palette, grayscale,
    CMYK, 16-bit, alpha over white) becomes RGB. At least 8x8 pixels and an aspect ratio of at most 10:1."""
    label = "the image"
    if isinstance(image, (str, Path)):
        label = _file_name(Path(image))
        image = _open_image_file(Path(image))
    elif isinstance(image, np.ndarray):
        image = _array_to_pil(image)
    elif not isinstance(image, Image.Image):
        raise ValueError(f"expected an image (PIL, array or path), got {type(image).__name__}")
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise ValueError(f"{label} is {width}x{height} pixels; at most {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels")
    if width < MIN_IMAGE_SIDE or height < MIN_IMAGE_SIDE:
        raise ValueError(f"{label} is {width}x{height} pixels; at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} is needed")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ValueError(f"{label} is {width}x{height} pixels, an aspect ratio over {MAX_ASPECT_RATIO}:1; the model "
                         "sees a centre square crop, so crop it closer to square first")
    return _to_rgb(image)


def center_crop_resize(image: Image.Image, size: int) -> Image.Image:
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)


def tensor_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """[B, 3, H, W] in [-1, 1] -> PIL images."""
    arrays = img_as_ubyte(((images.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy())
    return [Image.fromarray(a) for a in arrays]


class TextPieces(TextStreamer):
    """transformers' TextStreamer (incremental decoding that holds back a word or character still
    incomplete), keeping the text it would print for the chat generator to yield."""

    def __init__(self, tokenizer: PreTrainedTokenizerFast):
        super().__init__(tokenizer, skip_special_tokens=True)
        self.pieces: list[str] = []

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.pieces.append(text)

    def take(self) -> list[str]:
        pieces, self.pieces = self.pieces, []
        return pieces


class HydraPipeline:
    def __init__(self, model: HydraModel, tokenizer: PreTrainedTokenizerFast, basis: PCABasis | None = None,
                 name: str = "custom", precision: str = "fp32"):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.basis = basis
        self.name = name
        self.path: Path | None = None  # the checkpoint folder, when loaded from one (its model card, eval.json)
        self.precision = precision
        self._pending_placement: torch.device | None = None  # where a deferred move goes
        # Counted before any quantization (bitsandbytes packs two 4-bit weights per byte).
        self.num_parameters = sum(p.numel() for p in model.parameters())

    @classmethod
    def from_pretrained(cls, path_or_id: str | Path | None = None, device: str | None = None,
                        precision: str | None = None, defer_placement: bool = False,
                        offload: bool = False) -> "HydraPipeline":
        """Load a checkpoint folder or Hub id (default: the bundled HYDRA-Tiny) straight into its device and
        precision (loading.load_pretrained: tensor by tensor, no float32 copy of the model).

        offload: stream the LLM's layers from CPU memory (see precision.place).
        defer_placement: prepare the weights for `device` now (cast, and quantised by bitsandbytes on the
        CPU) but keep them on the CPU until the first model call, which only moves them (ZeroGPU: CUDA
        exists only inside `@spaces.GPU` functions). Nothing is quantised again at that call; on ZeroGPU,
        where each call runs in a fresh worker, each call moves the packed weights."""
        from .loading import load_pretrained

        ckpt = load_pretrained(path_or_id or BUNDLED_CHECKPOINT, device=device, precision=precision,
                               offload=offload, stage_on_cpu=defer_placement)
        pipe = cls(ckpt.model, ckpt.tokenizer, ckpt.basis, name=str(path_or_id or "hydra-tiny (bundled)"),
                   precision=ckpt.precision)
        pipe.path = ckpt.path
        pipe.num_parameters = ckpt.num_parameters
        if defer_placement:
            from .precision import resolve_device

            pipe._pending_placement = resolve_device(device)
        return pipe

    def ensure_placed(self) -> None:
        """Apply a deferred move to the device (a no-op once placed). It only moves tensors: the weights
        were cast and quantised when loaded (precision.move never quantises packed weights again)."""
        if self._pending_placement is not None:
            from .precision import move

            self.model = move(self.model, self._pending_placement)
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
    def check_generate_inputs(self, prompt: str, num_images: int, steps: int, guidance: float,
                              decoder_steps: int | None = None, seed: int = 0) -> None:
        check_text("the prompt", prompt, MAX_PROMPT_CHARS)
        check_number("num_images", num_images, 1, MAX_IMAGES, integer=True)
        check_number("steps", steps, 1, MAX_STEPS, integer=True)
        check_number("guidance", guidance, 0.0, MAX_GUIDANCE)
        if decoder_steps is not None:
            check_number("decoder_steps", decoder_steps, 1, MAX_STEPS, integer=True)
        check_number("seed", seed, 0, MAX_SEED, integer=True)

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, prompt: str, num_images: int = 1, steps: int | None = None, guidance: float | None = None,
                 seed: int = 0, decoder_steps: int | None = None, return_trajectory: bool = False,
                 progress: ProgressFn | None = None, on_step: StepFn | None = None,
                 init_latents: torch.Tensor | None = None, strength: float = 1.0,
                 expand: bool | None = None) -> GenerationOutput:
        """Text -> images through the flow head, with classifier-free guidance against the null prompt.

        0. With `expand` (default: the checkpoint's `prompt_expansion` is not "none"), rewrite the prompt per
           image (hydra_core.prompts.expand_prompt, seeded by the image's seed); `prompts` in the output.
        1. Tokenise the prompts and the null prompt; prefill both once (their KV cache serves every step).
        2. Draw each image's noise from its own seed.
        3. Integrate the flow in the normalised latent space; v = v_null + g * (v_cond - v_null).
        4. Denormalise and decode with the pixel flow decoder.

        init_latents [num_images, N, C] (raw GSB latents, e.g. `encode` of images) with strength < 1: start
        from those latents noised to t = strength instead of from pure noise (diffusers' img2img), for
        edits and to measure what the generator keeps of a real image at each noise level.

        on_step(step, steps, clean) is called after each flow step with the clean estimate [B, N, C]
        (raw latent scale) that step aims at: for live previews; an exception it raises ends the run.
        """
        start = time.perf_counter()
        self.ensure_placed()
        steps = self.config.default_steps if steps is None else steps
        guidance = self.config.default_guidance if guidance is None else guidance
        self.check_generate_inputs(prompt, num_images, steps, guidance, decoder_steps, seed)
        check_number("strength", strength, 0.0, 1.0)
        if strength == 0:
            raise ValueError("strength must be above 0 (0 would return init_latents unchanged)")
        if strength < 1 and init_latents is None:
            raise ValueError("strength below 1 needs init_latents to start from")
        model, tok_cfg = self.model, self.config.tokenizer
        seeds = [int(seed) + k for k in range(num_images)]
        generators = [torch.Generator().manual_seed(s) for s in seeds]

        if expand is None:
            expand = self.config.prompt_expansion != "none"
        elif not isinstance(expand, bool):
            raise ValueError(f"expand must be true or false, got {type(expand).__name__}")
        prompts = [(expand_prompt(prompt, s) if expand else None) or prompt for s in seeds]
        use_cfg = guidance != 1.0
        texts = [generation_text(self.tokenizer, p) for p in prompts]
        if use_cfg:
            texts += [generation_text(self.tokenizer, NULL_TOKEN)] * num_images
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        prefix = model.prefill(enc.input_ids, enc.attention_mask)

        shape = (tok_cfg.num_tokens, tok_cfg.latent_channels)
        noise = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(self.device)
        if init_latents is not None:
            if tuple(init_latents.shape) != (num_images, *shape):
                raise ValueError(f"init_latents must have shape {(num_images, *shape)}, got {tuple(init_latents.shape)}")
            clean = model.normalize(init_latents.to(self.device).float())
            noise = (1 - strength) * clean + strength * noise
        decoder_noise = torch.stack([self._decoder_noise(g) for g in generators])

        def velocity(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            if not use_cfg:
                return model.image_velocity(z, t, prefix)
            v_cond, v_null = model.image_velocity(torch.cat([z, z]), torch.cat([t, t]), prefix).chunk(2)
            return v_null + guidance * (v_cond - v_null)

        trajectory: list[dict] = []

        def after_step(i: int, t_next: float, z: torch.Tensor, clean: torch.Tensor) -> None:
            clean = model.denormalize(clean).float() if return_trajectory or on_step is not None else None
            if return_trajectory:
                trajectory.append({"t": t_next, "latent": model.denormalize(z).float().cpu(), "x0": clean.cpu()})
            if progress is not None:
                progress(i + 1, steps)
            if on_step is not None:
                on_step(i + 1, steps, clean)

        z0 = sample_flow(velocity, noise, steps, shift=self.config.time_shift, callback=after_step, start=strength)
        latents = model.denormalize(z0).float()
        images = self.decode(latents, steps=decoder_steps, noise=decoder_noise)
        return GenerationOutput(images=images, latents=latents.cpu(), seeds=seeds, prompts=prompts,
                                trajectory=trajectory, seconds=time.perf_counter() - start)

    # ------------------------------------------------------------------ reconstruction
    @torch.no_grad()
    def reconstruct(self, image: ImageLike, steps: int | None = None, seed: int = 0) -> ReconstructionOutput:
        start = time.perf_counter()
        if steps is not None:
            check_number("steps", steps, 1, MAX_STEPS, integer=True)
        check_number("seed", seed, 0, MAX_SEED, integer=True)
        original = center_crop_resize(to_pil(image), self.image_size)
        latent = self.encode(original)
        reconstruction = self.decode(latent, steps=steps, seeds=[int(seed)])[0]
        a, b = np.asarray(original), np.asarray(reconstruction)
        return ReconstructionOutput(original=original, reconstruction=reconstruction, latent=latent[0],
                                    psnr=psnr(a, b), ssim=ssim(a, b), seconds=time.perf_counter() - start)

    # ------------------------------------------------------------------ chat
    def _chat_inputs(self, messages: list[dict]) -> tuple[torch.Tensor, torch.Tensor, list]:
        """Render messages with the chat template; expand each image placeholder to its token block."""
        if not isinstance(messages, list) or not messages:
            raise ValueError("the conversation is empty")
        images: list[ImageLike] = []
        rendered = []
        for message in messages:
            if not isinstance(message, dict) or message.get("role") not in ("user", "assistant", "system"):
                raise ValueError("each message needs a role of user, assistant or system")
            role = message["role"]

            def checked(text, role=role) -> str:
                if role == "assistant":  # the model's own earlier replies: any text
                    if not isinstance(text, str):
                        raise ValueError(f"an assistant message must be text, got {type(text).__name__}")
                    return text
                return check_text(f"the {role} message", text, MAX_MESSAGE_CHARS)

            content = message.get("content")
            if isinstance(content, str):
                rendered.append({"role": role, "content": checked(content)})
                continue
            if not isinstance(content, list) or not content:
                raise ValueError("a message's content must be text or a non-empty list of text and image parts")
            parts = []
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "image":
                    if part.get("image") is None:
                        raise ValueError("an image part has no image")
                    images.append(part["image"])
                    parts.append({"type": "image"})
                elif kind == "text":
                    parts.append({"type": "text", "text": checked(part.get("text"))})
                else:
                    raise ValueError("each part of a message must be {'type': 'text', ...} or {'type': 'image', ...}")
            rendered.append({"role": role, "content": parts})
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
        max_new_tokens = check_number("max_new_tokens", max_new_tokens, 1, MAX_NEW_TOKENS, integer=True)
        temperature = check_number("temperature", temperature, 0.0, 100.0)
        top_p = check_number("top_p", top_p, 0.0, 1.0)
        if top_p == 0:
            raise ValueError("top_p must be a number above 0 and at most 1, got 0")
        check_number("seed", seed, 0, MAX_SEED, integer=True)
        self.ensure_placed()
        input_ids, attention_mask, images = self._chat_inputs(messages)
        context = self.config.llm.get("max_position_embeddings")
        if context and input_ids.shape[1] + max_new_tokens > context:
            raise ValueError(f"the conversation is {input_ids.shape[1]} tokens; with max_new_tokens {max_new_tokens} "
                             f"it would pass the model's context of {context} tokens: clear the chat or ask for "
                             "fewer new tokens")
        latents = self.encode(images).to(self.device) if images else None
        prefix = self.model.prefill(input_ids, attention_mask, latents)
        warpers = [TemperatureLogitsWarper(temperature), TopPLogitsWarper(top_p)] if temperature > 0 else []
        generator = torch.Generator().manual_seed(int(seed))
        eos = self.tokenizer.convert_tokens_to_ids(EOS_TOKEN)
        streamer = TextPieces(self.tokenizer)
        logits = prefix.last_logits
        # The loop is ours, not model.generate's: each step extends the prefix's KV cache under HYDRA's
        # own attention mask (bidirectional inside images, masks.py), which generate() cannot take.
        # Closing this generator (the app's Stop) ends it at the next piece: no further step runs.
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
            streamer.put(torch.tensor([token]))
            yield from streamer.take()
            logits = self.model.decode_step(torch.tensor([token], device=self.device), prefix)
        streamer.end()
        yield from streamer.take()

    def chat_text(self, messages: list[dict], **kwargs) -> str:
        return "".join(self.chat(messages, **kwargs))
