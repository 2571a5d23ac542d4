"""HYDRA Studio: a thin Gradio UI over `hydra_core` (Generate | Reconstruct | Chat | Compare).

    python app.py [--checkpoint DIR_OR_HUB_ID] [--device auto|cpu|cuda]
                  [--precision fp32|bf16|fp16|int8|nf4] [--host 127.0.0.1] [--port 7860] [--share]

Every flag also reads an environment variable, so a Space sets them in its settings:
HYDRA_CHECKPOINT, HYDRA_DEVICE, HYDRA_PRECISION, HYDRA_HOST (else GRADIO_SERVER_NAME),
HYDRA_PORT (else GRADIO_SERVER_PORT), HYDRA_SHARE.

Layout of this file:
    device_functions(pipeline)  the only code that runs the model; `@spaces.GPU` (a no-op off
                                ZeroGPU); plain CPU values in and out
    Handlers                    event handlers: check inputs, call the device functions, turn the
                                results into UI values (pictures from `hydra_core.viz`)
    latent_panel / LatentPanel  the one latent panel every tab shows
    build_demo(pipeline)        the Blocks: a status line and one builder per tab
    main()                      command line -> HydraPipeline.from_pretrained -> launch

Importing this file loads no model (tests build the demo around a tiny random pipeline).

Errors: image inputs reach the handlers as undecoded files and numbers as sent, so every check
happens in one place (`hydra_core.pipeline.to_pil`, `check_number`, `check_text`, and `checked` here)
with a message that names the parameter or the file, the same in the page and the API. Every handler
is `@guarded`: a user mistake (ValueError) becomes a `gr.Error` that stays until dismissed and one log
line; running out of GPU memory releases the cache and says so; any other fault is logged with its
traceback and the user gets a plain message. After a failed event `settle` keeps every output's
previous value (no bare "Error" badges) and the chat box is unlocked. Public endpoints: /generate,
/reconstruct, /chat, /noise_probe, /interpolate; all model events share one queue slot
(concurrency_id="model", limit 1, at most QUEUE_SIZE waiting; beyond that a caller is told the queue is full).
"""

from __future__ import annotations

import spaces  # noqa: I001  (first: on ZeroGPU it must be imported before torch touches CUDA)

import argparse
import contextlib
import functools
import gc
import inspect
import logging
import os
import random
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import gradio as gr
import numpy as np
import psutil
import torch
from PIL import Image

from hydra_core import viz
from hydra_core.eval.report import about_model

MAX_SEED = 2**31 - 1 - 4  # image k of a batch uses seed + k
MAX_IMAGES = 4
EXAMPLES_DIR = Path(__file__).resolve().parent / "assets" / "examples"
# Chosen from what the bundled model does well: it follows colours, and dense captions' sizes and places
# (it does not yet draw clean shapes; see its model card).
PROMPT_EXAMPLES = (
    "a photo of a red circle",
    "a large red circle in the centre, on a plain white background",
    "a small yellow square at the top left and a large blue star at the bottom right, on a plain cream background",
    "a photo of a cyan square",
)
CHAT_EXAMPLES = (
    ("shapes_2.png", "what shapes are in the image?"),
    ("shapes_1.png", "what color is the star?"),
    ("shapes_3.png", "how many squares are there?"),
)
PREVIEW_DECODER_STEPS = 2  # decoder steps for trajectory previews (cheap on CPU)
INTERPOLATION_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
TRAJECTORY_STRIP_FRAMES = 10
EMPTY_REPLY = "*(the model ended its reply without any text)*"
NO_CHAT_IMAGE = "No image in the conversation yet."
NO_IMAGE_REPLY = ("There is no image in this conversation yet, so I cannot answer that. Attach one (the paper clip "
                  "in the message box, or `image` through the API) and ask again.")
# Questions about what an image shows; asked with no image in the conversation they get NO_IMAGE_REPLY.
IMAGE_QUESTION = re.compile(r"\b(image|picture|photo|see|shown?|colou?rs?|shapes?|circles?|squares?|triangles?|"
                            r"stars?|objects?|how many|is there|are there|left|right|above|below|this)\b", re.I)
COMPARE_SOURCES = ("last generated", "last reconstructed", "upload")
MODEL_QUEUE = {"concurrency_id": "model", "concurrency_limit": 1}
QUEUE_SIZE = 16  # requests waiting for the model; more are answered "queue is full" at once
FILE_MAX_AGE_S = 3600
MAX_UPLOAD_MB = 20  # = hydra_core.pipeline.MAX_IMAGE_BYTES; Gradio refuses bigger uploads before they land
IMAGE_LABEL = f"PNG, JPEG, WebP, GIF, BMP or TIFF; up to {MAX_UPLOAD_MB} MB"
# Every number a user sends: (low, high, whole number?). The page's sliders are built from the same
# ranges and the handlers check what arrives against them (the API can send anything).
LIMITS = {
    "num_images": (1, MAX_IMAGES, True), "steps": (1, 100, True), "guidance": (0.0, 15.0, False),
    "decoder_steps": (1, 50, True), "seed": (0, MAX_SEED, True), "sigma": (0.0, 3.0, False),
    "max_new_tokens": (1, 256, True), "temperature": (0.0, 2.0, False), "top_p": (0.05, 1.0, False),
}
OOM_MESSAGE = ("The GPU ran out of memory for this request. Its memory was released; try again, with fewer images "
               "or steps if it happens again.")
log = logging.getLogger("hydra_studio")

CSS = """
.pixelated img, .pixelated canvas { image-rendering: pixelated; }
.fill img { width: 100%; height: 100%; object-fit: contain; }  /* show 64 px outputs large */
#status { font-size: 0.85rem; opacity: 0.85; }
#status p { margin: 0; }
"""


# A slider clamps a number typed into its box to its range when the box loses focus, silently. For the
# sliders built by `number_slider` the typed number stays, is sent as typed, and the handler's check
# answers it with the same message the API gets.
KEEP_TYPED_NUMBERS = """
() => {
  document.addEventListener("blur", (event) => {
    const box = event.target;
    if (!(box instanceof HTMLInputElement) || box.type !== "number" || !box.closest(".checked-number")) return;
    const value = Number(box.value);
    if (box.value !== "" && (value < Number(box.min) || value > Number(box.max))) event.stopPropagation();
  }, true);
}
"""


def launch_kwargs() -> dict[str, Any]:
    """App-level settings passed to `demo.launch`: the look (Gradio 6 moved theme/css/js there), the
    script that keeps typed numbers, and the upload size limit."""
    return {"theme": gr.themes.Soft(primary_hue="indigo", secondary_hue="emerald"), "css": CSS,
            "js": KEEP_TYPED_NUMBERS, "max_file_size": f"{MAX_UPLOAD_MB}mb"}


# ------------------------------------------------------------------ output files
def _save_pil_to_cache(img: Image.Image, cache_dir: str, name: str = "image", format: str = "webp") -> str:
    """gradio.processing_utils.save_pil_to_cache, minus a race. Identical outputs share one file named by
    their content's hash, and Gradio rewrites it in place for every request, so with two identical
    requests at once one user's download could be cut short by the other's rewrite (seen with
    concurrent identical /reconstruct calls). Here an existing file is left alone and a new one appears
    whole (written aside, then renamed)."""
    from gradio import processing_utils

    data = processing_utils.encode_pil_to_bytes(img, format)
    folder = Path(cache_dir) / processing_utils.hash_bytes(data)
    folder.mkdir(exist_ok=True, parents=True)
    target = (folder / f"{name}.{format}").resolve()
    if not target.exists():
        partial = folder / f".{uuid.uuid4().hex}.partial"
        partial.write_bytes(data)
        os.replace(partial, target)
    return str(target)


def _patch_gradio_file_cache() -> None:
    from gradio import processing_utils

    processing_utils.save_pil_to_cache = _save_pil_to_cache  # every image / gallery output goes through it


_patch_gradio_file_cache()


# ------------------------------------------------------------------ errors
def user_error(message: str) -> gr.Error:
    """A message for the user: it stays until dismissed; the log gets one line, not a traceback."""
    return gr.Error(message, duration=None, print_exception=False)


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _one_line(text: str) -> str:
    return " ".join(str(text).split())[:300]


def as_user_error(action: str, error: Exception) -> gr.Error:
    """Any exception from a handler -> the gr.Error its user sees, logged once. Call inside `except`."""
    if getattr(error, "hydra_logged", False):  # from a nested guarded handler: already logged
        return error
    if isinstance(error, gr.Error):
        log.info("%s: refused: %s", action, _one_line(error.message))
        return _logged(user_error(error.message))
    if isinstance(error, ValueError):  # the pipeline's and `checked`'s messages for the user
        log.info("%s: refused: %s", action, _one_line(error))
        return _logged(user_error(str(error)))
    if isinstance(error, torch.OutOfMemoryError):
        release_memory()
        log.warning("%s: out of memory, cache released: %s", action, _one_line(error))
        return _logged(user_error(OOM_MESSAGE))
    log.exception("%s failed", action)  # a real fault: the traceback goes to the log
    return _logged(user_error(f"Something went wrong on the server during {action} ({type(error).__name__}). It has been "
                      "logged; please try again."))


def _logged(error: gr.Error) -> gr.Error:
    error.hydra_logged = True
    return error


def guarded(action: str):
    """Decorate an event handler (function or generator) so every failure reaches its user as a message."""
    def decorate(fn):
        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def stream(*args, **kwargs):
                try:
                    yield from fn(*args, **kwargs)
                except Exception as error:
                    raise as_user_error(action, error) from error
            return stream

        @functools.wraps(fn)
        def call(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as error:
                raise as_user_error(action, error) from error
        return call
    return decorate


def checked(**values) -> list:
    """Check numbers as sent (by the page or any API client) against LIMITS: -> the values as int / float,
    in order, or ValueError naming the parameter and its range."""
    from hydra_core.pipeline import check_number  # here: importing app.py loads no model code

    return [check_number(name, value, *LIMITS[name]) for name, value in values.items()]


def checked_flag(name: str, value) -> bool:
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    raise ValueError(f"{name} must be true or false, got {value!r:.40}")


# ------------------------------------------------------------------ input components
@contextlib.contextmanager
def _no_stub_files() -> Iterator[None]:
    """Gradio writes a .pyi stub beside the module of every Component subclass; not for these."""
    from gradio import component_meta

    write = component_meta.create_or_modify_pyi
    component_meta.create_or_modify_pyi = lambda *args, **kwargs: None
    try:
        yield
    finally:
        component_meta.create_or_modify_pyi = write


with _no_stub_files():
    class ImageInput(gr.Image):
        """gr.Image that hands its handler the uploaded file's path, undecoded (Gradio's own decoding turns a
        damaged file into a generic error): `hydra_core.pipeline.to_pil` decodes it, with a message that
        names the problem."""

        is_template = True  # the page shows it as a gr.Image; build it with image_input()

        def preprocess(self, payload):
            if payload is None:
                return None
            if not payload.path:
                raise user_error("The image arrived without its file; upload it again.")
            return payload.path

    class SliderInput(gr.Slider):
        """gr.Slider whose value reaches the handler as sent, to be checked there with a named message
        (Gradio's own check says only "Value 500 is greater than maximum value 100")."""

        is_template = True

        def preprocess(self, payload):
            return payload

    class NumberInput(gr.Number):
        """gr.Number passing its value as sent, like SliderInput."""

        is_template = True

        def preprocess(self, payload):
            return payload


def image_input(label: str, **kwargs) -> ImageInput:
    return ImageInput(label=label, type="filepath", image_mode=None, **kwargs)


def number_slider(name: str, value: float, step: float, label: str, **kwargs) -> SliderInput:
    low, high, _ = LIMITS[name]
    return SliderInput(low, high, value=value, step=step, label=label, elem_classes="checked-number", **kwargs)


def seed_box(label: str, **kwargs) -> NumberInput:
    return NumberInput(0, label=label, precision=0, minimum=0, maximum=MAX_SEED, **kwargs)


def needs_image(text: str) -> bool:
    return bool(IMAGE_QUESTION.search(text or ""))


# ------------------------------------------------------------------ UI glue


def _is_image_file(file: dict) -> bool:
    mime = file.get("mime_type") or ""
    return mime.startswith("image/") or Path(file.get("path", "")).suffix.lower() in {
        ".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}


def history_to_messages(history: list[dict]) -> list[dict]:
    """Gradio Chatbot value (normalised message dicts) -> HydraPipeline.chat messages."""
    messages = []
    for message in history or []:
        content = message.get("content")
        content = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
        parts = []
        for part in content:
            if part.get("type") == "text" and part.get("text") and part["text"] != EMPTY_REPLY:
                parts.append({"type": "text", "text": part["text"]})
            elif part.get("type") == "file" and _is_image_file(part.get("file") or {}):
                parts.append({"type": "image", "image": part["file"]["path"]})
        if parts:
            messages.append({"role": message["role"], "content": parts})
    return messages


def latest_image(history: list[dict]) -> str | None:
    """Path of the most recent image in the conversation, if any."""
    for message in reversed(history_to_messages(history)):
        for part in reversed(message["content"]):
            if part["type"] == "image":
                return part["image"]
    return None


def example_images() -> list[str]:
    return sorted(str(path) for path in EXAMPLES_DIR.glob("*.png"))


class FileStore:
    """Per-request files (latent downloads) in one temp folder; folders older than an hour go."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="hydra-studio-"))

    def path(self, name: str) -> Path:
        now = time.time()
        for old in self.root.iterdir():
            if now - old.stat().st_mtime > FILE_MAX_AGE_S:
                shutil.rmtree(old, ignore_errors=True)
        folder = self.root / uuid.uuid4().hex
        folder.mkdir()
        return folder / name


# ------------------------------------------------------------------ the latent panel
@dataclass
class LatentPanel:
    """The bottleneck panel shown beside every output: one builder, one renderer, every tab."""

    caption: gr.Markdown
    pca: gr.Image
    norms: gr.Image
    channels: gr.Image
    histogram: gr.Image
    download: gr.DownloadButton

    @property
    def outputs(self) -> list[gr.components.Component]:
        return [self.caption, self.pca, self.norms, self.channels, self.histogram, self.download]

    @staticmethod
    def empty(message: str) -> list:
        return [message, None, None, None, None, gr.DownloadButton(value=None, interactive=False)]

    @staticmethod
    def values(latent: torch.Tensor, basis: viz.PCABasis, caption: str, file: Path) -> list:
        """latent [N, C] -> values for `outputs` (PCA in the fixed basis, channels, norms, histogram)."""
        pictures = viz.latent_panel(latent, basis)
        grid = viz.to_grid(latent)  # [h, w, C]
        h, w, c = grid.shape
        text = (f"{caption} · {h * w} tokens ({h}×{w}) × {c} channels · "
                f"mean {grid.mean():+.3f} · std {grid.std():.3f}")
        return [text, pictures["pca"], pictures["norms"], pictures["channels"], pictures["histogram"],
                gr.DownloadButton(value=str(file), interactive=True)]


def latent_panel(title: str, elem_id: str, open: bool = True) -> LatentPanel:
    """Build the latent panel's components in the current Blocks context (ids: `{elem_id}-pca`, ...)."""
    picture = {"type": "numpy", "interactive": False, "height": 190, "format": "png", "min_width": 150,
               "buttons": ["download", "fullscreen"]}
    with gr.Accordion(title, open=open, elem_id=elem_id):
        caption = gr.Markdown("Nothing to show yet.", elem_id=f"{elem_id}-caption")
        with gr.Row(equal_height=True):
            pca = gr.Image(label="PCA → RGB", elem_id=f"{elem_id}-pca", elem_classes="pixelated", **picture)
            norms = gr.Image(label="Token norms", elem_id=f"{elem_id}-norms", elem_classes="pixelated", **picture)
            channels = gr.Image(label="Channels", elem_id=f"{elem_id}-channels", elem_classes="pixelated",
                                **picture)
            histogram = gr.Image(label="Histogram", elem_id=f"{elem_id}-histogram", **picture)
        download = gr.DownloadButton("Download latents (.safetensors)", interactive=False, size="sm",
                                     elem_id=f"{elem_id}-download")
    return LatentPanel(caption, pca, norms, channels, histogram, download)


# ------------------------------------------------------------------ model calls
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


# ------------------------------------------------------------------ event handlers
class Handlers:
    """Every event's function. Parameter names are what API clients see."""

    def __init__(self, pipeline):
        self.pipe = pipeline
        self.device = device_functions(pipeline)
        self.files = FileStore()
        self.parameters = pipeline.num_parameters
        self.basis, self.basis_source = pipeline.basis, "checkpoint"
        self.activity: dict[str, Any] = {}

    # ---------------------------------------------------------- bookkeeping
    def basis_for(self, latents: torch.Tensor) -> viz.PCABasis:
        if self.basis is None:  # the checkpoint has none: fit one on the first latents seen, keep it
            self.basis = viz.PCABasis.fit(latents.reshape(-1, latents.shape[-1]))
            self.basis_source = "fitted on this app's first latents"
        return self.basis

    def record(self, name: str, seconds: float) -> None:
        self.activity = {"name": name, "seconds": seconds, "at": time.strftime("%H:%M:%S")}

    def panel(self, latent: torch.Tensor, caption: str, name: str, **metadata) -> list:
        """Latent panel values for latent [N, C], with its .safetensors download written."""
        path = self.files.path(f"{name}.safetensors")
        viz.save_latents(path, {"latent": latent}, {"checkpoint": self.pipe.name, "shape": "N,C", **metadata})
        basis = self.basis_for(latent)
        return LatentPanel.values(latent, basis, f"{caption} · basis: {self.basis_source}", path)

    def status(self) -> str:
        pipe = self.pipe
        memory = f"RSS {psutil.Process().memory_info().rss / 2**30:.2f} GiB"
        if pipe.device.type == "cuda":
            with contextlib.suppress(Exception):
                memory += f" · CUDA {torch.cuda.memory_allocated(pipe.device) / 2**30:.2f} GiB allocated"
        count = self.parameters
        count = f"{count / 1e9:.2f} B" if count >= 1e9 else f"{count / 1e6:.1f} M"
        last = self.activity
        last = f"{last['name']} took {last['seconds']:.2f} s at {last['at']}" if last else "none yet"
        return (f"**Checkpoint** `{pipe.name}` ({pipe.config.preset}) · **device** `{pipe.device}` · "
                f"**precision** `{pipe.precision}` · **parameters** {count} · **memory** {memory} · "
                f"**last request** {last}")

    # ---------------------------------------------------------- Generate
    @guarded("generate")
    def generate(self, prompt: str, num_images: int, steps: int, guidance: float, seed: int,
                 randomize_seed: bool, decoder_steps: int, progress=gr.Progress()):
        """-> gallery of (image, "seed k"), the base seed used, run details, generation state."""
        num_images, steps, guidance, decoder_steps = checked(num_images=num_images, steps=steps, guidance=guidance,
                                                             decoder_steps=decoder_steps)
        seed = random.randint(0, MAX_SEED) if checked_flag("randomize_seed", randomize_seed) else checked(seed=seed)[0]
        start = time.perf_counter()
        out = self.device.generate(prompt, num_images, steps, guidance, seed, decoder_steps, progress)
        self.record("generate", time.perf_counter() - start)
        gallery = [(image, f"seed {s}") for image, s in zip(out.images, out.seeds)]
        details = {"prompt": prompt, "seeds": out.seeds, "steps": steps, "guidance": guidance,
                   "decoder_steps": decoder_steps, "seconds": round(out.seconds, 3)}
        state = {"images": out.images, "latents": out.latents, "seeds": out.seeds, "details": details,
                 "trajectory": torch.stack([step["latent"] for step in out.trajectory]),  # [S, B, N, C]
                 "x0": torch.stack([step["x0"] for step in out.trajectory]),  # clean estimates [S, B, N, C]
                 "t": [float(step["t"]) for step in out.trajectory]}
        return gallery, seed, details, state

    def generate_example(self, prompt, num_images, steps, guidance, seed, randomize_seed, decoder_steps):
        gallery, seed, details, _ = self.generate(prompt, num_images, steps, guidance, seed, randomize_seed,
                                                  decoder_steps, progress=None)
        return gallery, seed, details

    @guarded("showing the generated latent")
    def show_generated(self, state: dict | None, index: int = 0) -> list:
        """-> selected index, latent panel, trajectory view (at the last step) for image `index`."""
        if not state:
            return [0, *LatentPanel.empty("Generate an image to see its latent."), *self.trajectory_empty()]
        seed, details = state["seeds"][index], state["details"]
        panel = self.panel(state["latents"][index], f"Generated image {index + 1} (seed {seed})",
                           f"hydra_generate_seed{seed}", source="generate", prompt=details["prompt"], seed=seed,
                           steps=details["steps"], guidance=details["guidance"])
        last = state["trajectory"].shape[0]
        return [index, *panel, *self.trajectory_view(state, index, last, state["images"][index])]

    @guarded("selecting an image")
    def select_image(self, state: dict | None, gallery: list | None, evt: gr.SelectData) -> list:
        index = int(evt.index)
        if state and index < len(state["seeds"]):
            return self.show_generated(state, index)
        if not gallery or index >= len(gallery):
            return self.show_generated(None)
        # A cached example keeps no generated latent: show the encoder's latent of the image instead.
        latent = self.device.encode(gallery[index][0])[0]
        panel = self.panel(latent, f"Encoder latent of example image {index + 1} (press Generate for the "
                           "generated latent and its trajectory)", "hydra_example_latent", source="encode")
        return [index, *panel, *self.trajectory_empty()]

    @staticmethod
    def trajectory_empty() -> list:
        return [gr.Slider(minimum=1, maximum=2, value=1, interactive=False), None, None, None,
                "Generate an image to scrub through its flow steps."]

    @staticmethod
    def trajectory_slider(step: int, total: int) -> gr.Slider:
        if total == 1:  # a slider needs minimum < maximum: show 0 (the noise) .. 1, fixed at the one step
            return gr.Slider(minimum=0, maximum=1, value=1, interactive=False)
        return gr.Slider(minimum=1, maximum=total, value=step, interactive=True)

    def trajectory_view(self, state: dict, index: int, step: int, preview: Image.Image) -> list:
        """-> slider, strip of PCA pictures along the flow, PCA at `step`, decoded preview, caption."""
        trajectory = state["trajectory"][:, index]  # [S, N, C]
        total = trajectory.shape[0]
        frames = sorted({round(k) for k in np.linspace(0, total - 1, min(total, TRAJECTORY_STRIP_FRAMES))})
        basis = self.basis_for(trajectory)
        strip = viz.trajectory_strip([trajectory[k] for k in frames], basis, display=64)
        preview_text = ("the final image" if step == total else
                        f"the model's clean estimate at this step, decoded with {PREVIEW_DECODER_STEPS} decoder steps")
        caption = (f"Image {index + 1} (seed {state['seeds'][index]}) · step {step}/{total} · "
                   f"t = {state['t'][step - 1]:.3f} (1 = noise) · strip: steps "
                   f"{', '.join(str(k + 1) for k in frames)} · preview: {preview_text}")
        return [self.trajectory_slider(step, total), strip, viz.pca_rgb(trajectory[step - 1], basis), preview, caption]

    @guarded("the trajectory preview")
    def trajectory_step(self, state: dict | None, index: int, step: int) -> list:
        if not state:
            return self.trajectory_empty()[1:]
        from hydra_core.pipeline import check_number

        total = state["trajectory"].shape[0]
        step = check_number("the flow step", step, 1, total, integer=True)
        if step == total:  # the last step's latent is the generated one
            return self.trajectory_view(state, index, step, state["images"][index])[1:]
        start = time.perf_counter()
        latent = state["x0"][step - 1, index]  # [N, C]: x_t - t * v, what the step aims at
        preview = self.device.decode(latent, PREVIEW_DECODER_STEPS, [state["seeds"][index]])[0]
        self.record("trajectory preview", time.perf_counter() - start)
        return self.trajectory_view(state, index, step, preview)[1:]

    # ---------------------------------------------------------- Reconstruct
    @guarded("reconstruct")
    def reconstruct(self, image: str | None, decoder_steps: int, seed: int):
        """-> model-sized original, reconstruction, error map, PSNR, SSIM, reconstruction state."""
        decoder_steps, seed = checked(decoder_steps=decoder_steps, seed=seed)
        if image is None:
            raise user_error("Upload, paste or pick an image first.")
        out = self.device.reconstruct(image, decoder_steps, seed)
        self.record("reconstruct", out.seconds)
        error = viz.error_map(np.asarray(out.original), np.asarray(out.reconstruction))
        state = {"latent": out.latent, "original": out.original, "psnr": out.psnr, "ssim": out.ssim}
        return out.original, out.reconstruction, error, out.psnr, out.ssim, state

    @guarded("showing the reconstruction's latent")
    def show_reconstruction(self, state: dict | None) -> list:
        if not state:
            return LatentPanel.empty("Reconstruct an image to see its latent.")
        return self.panel(state["latent"], f"Latent of the input (PSNR {state['psnr']:.2f} dB, SSIM "
                          f"{state['ssim']:.3f})", "hydra_reconstruct_latent", source="reconstruct")

    @guarded("the noise probe")
    def noise_probe(self, image: str | None, sigma: float, decoder_steps: int, seed: int):
        """Add N(0, σ²) noise to the image's latent and decode it: -> decoded, noisy latent PCA, info."""
        sigma, decoder_steps, seed = checked(sigma=sigma, decoder_steps=decoder_steps, seed=seed)
        if image is None:
            raise user_error("Upload, paste or pick an image first.")
        start = time.perf_counter()
        latent, noisy, decoded = self.device.noise_probe(image, sigma, decoder_steps, seed)
        self.record("noise probe", time.perf_counter() - start)
        ratio = float((noisy - latent).norm() / latent.norm().clamp_min(1e-12))
        info = (f"σ = {sigma:.2f}: ‖noise‖ / ‖latent‖ = {ratio:.2f} (latent std {latent.std():.3f}). "
                "Left: the decoded noisy latent; right: its PCA picture in the same basis.")
        return decoded, viz.pca_rgb(noisy, self.basis_for(latent)), info

    @guarded("interpolate")
    def interpolate(self, image_a: str | None, image_b: str | None, decoder_steps: int, seed: int):
        """Decode (1 − α)·a + α·b in GSB space: -> gallery over α, PCA strip of the mixed latents."""
        decoder_steps, seed = checked(decoder_steps=decoder_steps, seed=seed)
        if image_a is None or image_b is None:
            raise user_error("Interpolation needs two images: the main input and a second image.")
        start = time.perf_counter()
        mix, decoded = self.device.interpolate(image_a, image_b, INTERPOLATION_ALPHAS, decoder_steps, seed)
        self.record("interpolate", time.perf_counter() - start)
        gallery = [(image, f"α = {alpha:.2f}") for image, alpha in zip(decoded, INTERPOLATION_ALPHAS)]
        return gallery, viz.trajectory_strip(list(mix), self.basis_for(mix), display=96)

    # ---------------------------------------------------------- Chat
    @guarded("chat")
    def add_user_message(self, message: dict | None, history: list | None):
        """The user's turn -> (message box, conversation). Its text is checked first (a problem leaves the
        box as it was, for editing); then its images are decoded: the turn goes into the conversation
        without any image that cannot be read, and the message says why (the model is not asked)."""
        from hydra_core.pipeline import MAX_MESSAGE_CHARS, check_text, to_pil

        message = message if isinstance(message, dict) else {}
        text = message.get("text") or ""
        files = [f if isinstance(f, str) else (f or {}).get("path") for f in message.get("files") or []]
        if not text.strip() and not files:
            raise user_error("Type a message or attach an image.")
        if text.strip():
            text = check_text("the message", text.strip(), MAX_MESSAGE_CHARS)
        good, problems = [], []
        for path in files:
            try:
                to_pil(path)
                good.append(path)
            except ValueError as error:
                problems.append(str(error))
        content = [{"path": path} for path in good] + ([text] if text.strip() else [])
        history = list(history or [])
        if problems:
            if content:
                history.append({"role": "user", "content": content})
            yield gr.MultimodalTextbox(value=None, interactive=True), history
            raise ValueError("; ".join(problems) + (". Your message is kept in the conversation without it; "
                             "attach a readable image and ask again." if content else "."))
        yield gr.MultimodalTextbox(value=None, interactive=False), history + [{"role": "user", "content": content}]

    def stream_reply(self, messages: list[dict], max_new_tokens, temperature, top_p, seed) -> Iterator[str]:
        """The growing reply text. A question about an image, with none in the conversation, is answered
        NO_IMAGE_REPLY without asking the model (a small model would otherwise guess)."""
        max_new_tokens, temperature, top_p, seed = checked(max_new_tokens=max_new_tokens, temperature=temperature,
                                                           top_p=top_p, seed=seed)
        has_image = any(part["type"] == "image" for m in messages for part in m["content"])
        question = " ".join(part.get("text", "") for part in (messages[-1]["content"] if messages else [])
                            if part["type"] == "text")
        if not has_image and needs_image(question):
            yield NO_IMAGE_REPLY
            return
        reply = ""
        start = time.perf_counter()
        for piece in self.device.chat(messages, max_new_tokens, temperature, top_p, seed):
            reply += piece
            yield reply
        self.record("chat", time.perf_counter() - start)

    @guarded("chat")
    def chat_stream(self, history: list, max_new_tokens: int, temperature: float, top_p: float, seed: int):
        """UI chat: the conversation with the assistant's reply growing at its end. On a failure the
        conversation keeps the user's turn (and any partial reply) and the error is raised after it."""
        messages = history_to_messages(history)
        history = history + [{"role": "assistant", "content": EMPTY_REPLY}]  # shown if no text ever comes
        try:
            for reply in self.stream_reply(messages, max_new_tokens, temperature, top_p, seed):
                history[-1]["content"] = reply
                yield history
        except Exception:
            yield history[:-1] if history[-1]["content"] == EMPTY_REPLY else history
            raise
        yield history

    @guarded("showing the chat image's latent")
    def chat_panel(self, history: list | None) -> list:
        path = latest_image(history or [])
        if path is None:
            return LatentPanel.empty(NO_CHAT_IMAGE)
        latent = self.device.encode(path)[0]
        return self.panel(latent, f"Latent of the most recent image ({Path(path).name})",
                          "hydra_chat_image_latent", source="chat", image=Path(path).name)

    @guarded("chat")
    def chat(self, message: str = "", image: str | None = None, max_new_tokens: int = 64,
             temperature: float = 0.0, top_p: float = 1.0, seed: int = 0):
        """One user turn (text and/or an image) -> the assistant's reply, streamed."""
        if message is not None and not isinstance(message, str):
            raise ValueError(f"message must be text, got {type(message).__name__}")
        content = ([{"type": "image", "image": image}] if image else []) + (
            [{"type": "text", "text": message}] if (message or "").strip() else [])
        if not content:
            raise user_error("Send a message, an image, or both.")
        reply = ""
        for reply in self.stream_reply([{"role": "user", "content": content}], max_new_tokens, temperature,
                                       top_p, seed):
            yield reply
        yield reply

    @staticmethod
    def clear_chat() -> list:
        return [[], gr.MultimodalTextbox(value=None, interactive=True), *LatentPanel.empty(NO_CHAT_IMAGE)]

    # ---------------------------------------------------------- Compare
    def compare_source(self, source: str, upload: str | None, gen: dict | None, index: int,
                       rec: dict | None, side: str) -> tuple[Image.Image, torch.Tensor, str]:
        """-> (image, latent [N, C], description) for one side of the comparison."""
        if source == "last generated":
            if not gen:
                raise user_error(f"{side}: nothing generated yet in this session (Generate tab).")
            return gen["images"][index], gen["latents"][index], f"generated (seed {gen['seeds'][index]})"
        if source == "last reconstructed":
            if not rec:
                raise user_error(f"{side}: nothing reconstructed yet in this session (Reconstruct tab).")
            return rec["original"], rec["latent"], "last reconstructed input"
        if upload is None:
            raise user_error(f"{side}: upload an image.")
        from hydra_core.pipeline import to_pil

        image = to_pil(upload)
        return image, self.device.encode(image)[0], "uploaded image"

    @guarded("compare")
    def compare(self, source_a, upload_a, source_b, upload_b, gen, index, rec):
        """-> image a, image b, PCA(a) | PCA(b) | distance picture, stats table."""
        image_a, latent_a, name_a = self.compare_source(source_a, upload_a, gen, index, rec, "a")
        image_b, latent_b, name_b = self.compare_source(source_b, upload_b, gen, index, rec, "b")
        picture, stats = viz.compare_panel(latent_a, latent_b, self.basis_for(latent_a))
        table = ("| a | b | cosine (mean over tokens) | L2 distance (mean) | MSE |\n|---|---|---|---|---|\n"
                 f"| {name_a} | {name_b} | {stats['cosine_mean']:.3f} | {stats['l2_mean']:.3f} | "
                 f"{stats['mse']:.4f} |")
        return image_a, image_b, picture, table


# ------------------------------------------------------------------ layout
PIXELS = {"type": "pil", "interactive": False, "height": 260, "format": "png", "elem_classes": ["pixelated", "fill"]}
Refresh = Callable[[Any], Any]


def settle(event, outputs: list):
    """After `event` fails, keep each output's previous value and clear its "Error" badge; the message
    itself stays in its pop-up until dismissed."""
    event.failure(lambda: gr.skip(), None, outputs, queue=False, show_progress="hidden", api_visibility="private")
    return event


def _generate_tab(h: Handlers, states: SimpleNamespace, refresh: Refresh) -> None:
    config = h.pipe.config
    with gr.Row():
        with gr.Column(scale=2, min_width=300):
            # No max_length: the page would cut a long prompt silently; the pipeline says it is too long.
            prompt = gr.Textbox(label="Prompt", lines=2, max_lines=4, placeholder=PROMPT_EXAMPLES[0], elem_id="prompt")
            num_images = number_slider("num_images", 2, 1, "Number of images")
            button = gr.Button("Generate", variant="primary", elem_id="generate-button")
            with gr.Accordion("Advanced settings", open=False):
                steps = number_slider("steps", config.default_steps, 1, "Flow steps", elem_id="steps")
                guidance = number_slider("guidance", config.default_guidance, 0.1, "Guidance (classifier-free; 1 = off)")
                decoder_steps = number_slider("decoder_steps", config.tokenizer.decoder_steps, 1, "Pixel decoder steps",
                                       elem_id="decoder-steps")
                with gr.Row():
                    seed = seed_box("Seed", elem_id="seed")
                    randomize = gr.Checkbox(True, label="Randomize seed")
        with gr.Column(scale=3):
            gallery = gr.Gallery(label="Images", columns=2, height=420, format="png", object_fit="contain",
                                 interactive=False, elem_classes="pixelated", elem_id="gallery")
            with gr.Accordion("Run details", open=False):
                details = gr.JSON(label="Run details", open=True)
    inputs = [prompt, num_images, steps, guidance, seed, randomize, decoder_steps]
    defaults = [2, config.default_steps, config.default_guidance, 0, False, config.tokenizer.decoder_steps]
    examples = gr.Examples([[p, *defaults] for p in PROMPT_EXAMPLES], inputs=inputs, outputs=[gallery, seed, details],
                           fn=h.generate_example, cache_examples=True, cache_mode="lazy", visible_columns=[0],
                           label="Example prompts (seed 0, default settings)")
    panel = latent_panel("Latent of the selected image (click an image in the gallery)", "generate-latent")
    with gr.Accordion("Flow trajectory of the selected image", open=True):
        slider = gr.Slider(1, 2, value=1, step=1, label="Flow step", interactive=False, elem_id="trajectory-slider")
        caption = gr.Markdown("Generate an image to scrub through its flow steps.", elem_id="trajectory-caption")
        with gr.Row(equal_height=True):
            strip = gr.Image(label="PCA of the latent along the flow", type="numpy", interactive=False, height=120,
                             format="png", scale=2, elem_classes="pixelated")
            pca = gr.Image(label="PCA at this step", type="numpy", interactive=False, height=190, format="png",
                           elem_classes="pixelated")
            preview = gr.Image(label="Decoded at this step", **{**PIXELS, "height": 190})
    trajectory = [slider, strip, pca, preview, caption]
    selection = [states.index, *panel.outputs, *trajectory]

    event = gr.on([button.click, prompt.submit], h.generate, inputs=inputs,
                  outputs=[gallery, seed, details, states.gen], api_name="generate", **MODEL_QUEUE,
                  api_description="Text to 1-4 images; image k uses seed + k. randomize_seed defaults to True: "
                  "pass randomize_seed=False to use `seed`. Returns the gallery (captions 'seed k'), the base "
                  "seed used and the run details (seeds, steps, guidance, seconds).")
    settle(event, [gallery, seed, details, states.gen])
    refresh(settle(event.success(h.show_generated, [states.gen], selection, api_visibility="private"), selection))
    # A cached example fills the gallery without a generation state: clear the stale panel.
    examples.dataset.click(lambda: [None, *h.show_generated(None)], None, [states.gen, *selection], queue=False,
                           api_visibility="private")
    settle(gallery.select(h.select_image, [states.gen, gallery], selection, api_visibility="private", **MODEL_QUEUE),
           selection)
    refresh(settle(slider.release(h.trajectory_step, [states.gen, states.index, slider], trajectory[1:],
                                  api_visibility="private", **MODEL_QUEUE), trajectory[1:]))


def _reconstruct_tab(h: Handlers, states: SimpleNamespace, refresh: Refresh) -> None:
    config = h.pipe.config
    with gr.Row():
        with gr.Column(scale=1, min_width=280):
            image = image_input(label=f"Image ({IMAGE_LABEL})", sources=["upload", "clipboard"], height=260,
                               elem_id="reconstruct-input")
            gr.Examples([[p] for p in example_images()], inputs=[image], label="Example images")
            steps = number_slider("decoder_steps", config.tokenizer.decoder_steps, 1, "Pixel decoder steps",
                           elem_id="reconstruct-steps")
            seed = seed_box("Decoder seed", elem_id="reconstruct-seed")
            button = gr.Button("Reconstruct", variant="primary", elem_id="reconstruct-button")
        with gr.Column(scale=2):
            with gr.Row(equal_height=True):
                original = gr.Image(label="Original (model size)", **PIXELS)
                reconstruction = gr.Image(label="Reconstruction", elem_id="reconstruction", **PIXELS)
                error = gr.Image(label="Error map", **{**PIXELS, "type": "numpy"})
            with gr.Row():
                psnr = gr.Number(label="PSNR (dB)", interactive=False, precision=2, elem_id="psnr")
                ssim = gr.Number(label="SSIM", interactive=False, precision=4, elem_id="ssim")
    panel = latent_panel("Latent of the input", "reconstruct-latent")
    with gr.Row():
        with gr.Column():
            with gr.Accordion("Noise probe: how robust is the latent?", open=True):
                sigma = number_slider("sigma", 0.5, 0.05, "σ of Gaussian noise added to the latent")
                probe_button = gr.Button("Decode the noisy latent")
                with gr.Row(equal_height=True):
                    probe_image = gr.Image(label="Decoded noisy latent", **PIXELS)
                    probe_pca = gr.Image(label="Noisy latent (PCA)", **{**PIXELS, "type": "numpy"})
                probe_info = gr.Markdown(label="info")
        with gr.Column():
            with gr.Accordion("Interpolate in GSB space", open=True):
                second = image_input(label=f"Second image ({IMAGE_LABEL})", sources=["upload", "clipboard"], height=160,
                                    elem_id="interpolate-second")
                gr.Examples([[p] for p in example_images()], inputs=[second], label="Second image examples")
                interp_button = gr.Button("Interpolate (α = 0 … 1)")
                interp_gallery = gr.Gallery(label="Interpolation", columns=5, height=180, format="png",
                                            object_fit="contain", interactive=False, elem_classes="pixelated")
                interp_strip = gr.Image(label="Interpolated latents (PCA)", type="numpy", interactive=False,
                                        height=110, format="png", elem_classes="pixelated")

    outputs = [original, reconstruction, error, psnr, ssim, states.rec]
    event = button.click(h.reconstruct, [image, steps, seed], outputs,
                         api_name="reconstruct", **MODEL_QUEUE,
                         api_description="Image -> GSB latent -> pixel decoder. Returns the model-sized original, "
                         "the reconstruction, an error map, PSNR (dB) and SSIM.")
    settle(event, outputs)
    refresh(settle(event.success(h.show_reconstruction, [states.rec], panel.outputs, api_visibility="private"),
                   panel.outputs))
    probe = [probe_image, probe_pca, probe_info]
    refresh(settle(gr.on([probe_button.click, sigma.release], h.noise_probe, inputs=[image, sigma, steps, seed],
                         outputs=probe, api_name="noise_probe", **MODEL_QUEUE,
                         api_description="Encode the image, add N(0, sigma^2) noise to its latent, decode it."), probe))
    refresh(settle(interp_button.click(h.interpolate, [image, second, steps, seed], [interp_gallery, interp_strip],
                                       api_name="interpolate", **MODEL_QUEUE,
                                       api_description="Decode (1 - a) * latent(image_a) + a * latent(image_b) for "
                                       "a in 0, 0.25, 0.5, 0.75, 1 (same decoder noise for all)."),
                   [interp_gallery, interp_strip]))


def _chat_tab(h: Handlers, refresh: Refresh) -> None:
    with gr.Row():
        with gr.Column(scale=3):
            chatbot = gr.Chatbot(label="Conversation", height=440, elem_id="chatbot",
                                 placeholder="Attach an image and ask about it.")
            textbox = gr.MultimodalTextbox(file_types=["image"], sources=["upload"], show_label=False,
                                           placeholder=f"Type a message; attach or paste an image ({IMAGE_LABEL})…",
                                           elem_id="chat-input")
            with gr.Row():
                stop = gr.Button("Stop", variant="stop", size="sm", elem_id="chat-stop")
                clear = gr.Button("Clear", size="sm", elem_id="chat-clear")
            gr.Examples([[{"text": text, "files": [str(EXAMPLES_DIR / name)]}] for name, text in CHAT_EXAMPLES
                         if (EXAMPLES_DIR / name).is_file()], inputs=[textbox], label="Examples")
            with gr.Accordion("Sampling", open=False):
                max_new_tokens = number_slider("max_new_tokens", 64, 1, "Max new tokens")
                temperature = number_slider("temperature", 0.0, 0.05, "Temperature (0 = greedy)")
                top_p = number_slider("top_p", 1.0, 0.05, "Top-p")
                seed = seed_box("Sampling seed")
        with gr.Column(scale=2):
            panel = latent_panel("Latent of the image under discussion", "chat-latent")
    # Inputs and output of the public /chat endpoint: a plain message + optional image, no history.
    api_message = gr.Textbox(label="message", visible=False)
    api_image = image_input(label="image", visible=False)
    api_reply = gr.Textbox(label="reply", visible=False)
    api_trigger = gr.Button(visible=False)

    sampling = [max_new_tokens, temperature, top_p, seed]
    # A generator (so it is queued, outside the model's slot): on an unreadable image it shows the turn, then fails.
    submitted = settle(textbox.submit(h.add_user_message, [textbox, chatbot], [textbox, chatbot],
                                      api_visibility="private", concurrency_limit=None), [textbox, chatbot])
    streaming = submitted.success(h.chat_stream, [chatbot, *sampling], chatbot, api_visibility="private",
                                  **MODEL_QUEUE)
    enable = {"fn": lambda: gr.MultimodalTextbox(interactive=True), "inputs": None, "outputs": textbox,
              "queue": False, "api_visibility": "private"}
    # A failed reply: the conversation keeps what was last shown (the user's turn), the box unlocks.
    streaming.failure(lambda: [gr.skip(), gr.MultimodalTextbox(interactive=True)], None, [chatbot, textbox],
                      queue=False, show_progress="hidden", api_visibility="private")
    refresh(settle(streaming.then(**enable).then(h.chat_panel, [chatbot], panel.outputs, api_visibility="private",
                                                 **MODEL_QUEUE), panel.outputs))
    stop.click(cancels=[streaming], **enable)
    for clearing in (clear.click, chatbot.clear):  # the button and the chatbot's own trash icon
        clearing(h.clear_chat, None, [chatbot, textbox, *panel.outputs], queue=False, api_visibility="private",
                 cancels=[streaming])
    refresh(api_trigger.click(h.chat, [api_message, api_image, *sampling], api_reply, api_name="chat",
                              **MODEL_QUEUE, api_description="One user turn (a message and/or an image, no "
                              "history) -> the assistant's reply; streams with Client.submit, predict returns "
                              "the full text. temperature 0 decodes greedily."))


def _compare_tab(h: Handlers, states: SimpleNamespace, refresh: Refresh) -> None:
    gr.Markdown("Two latents side by side in the same PCA basis, with their per-token distance.")
    with gr.Row():
        with gr.Column():
            source_a = gr.Radio(COMPARE_SOURCES, value="upload", label="Latent a from")
            upload_a = image_input(label="Image a (for 'upload')", height=200, elem_id="compare-a")
        with gr.Column():
            source_b = gr.Radio(COMPARE_SOURCES, value="last generated", label="Latent b from")
            upload_b = image_input(label="Image b (for 'upload')", height=200, elem_id="compare-b")
    gr.Examples([[p] for p in example_images()], inputs=[upload_a], label="Examples for image a")
    button = gr.Button("Compare", variant="primary", elem_id="compare-button")
    with gr.Row(equal_height=True):
        shown_a = gr.Image(label="a", scale=1, **{**PIXELS, "height": 200})
        shown_b = gr.Image(label="b", scale=1, **{**PIXELS, "height": 200})
        picture = gr.Image(label="PCA(a) | PCA(b) | per-token distance", type="numpy", interactive=False,
                           height=200, format="png", scale=3, elem_id="compare-picture")
    stats = gr.Markdown(elem_id="compare-stats")
    outputs = [shown_a, shown_b, picture, stats]
    refresh(settle(button.click(h.compare, [source_a, upload_a, source_b, upload_b, states.gen, states.index,
                                            states.rec], outputs, api_visibility="private", **MODEL_QUEUE), outputs))


def build_demo(pipeline) -> gr.Blocks:
    """The whole UI around one loaded `hydra_core.pipeline.HydraPipeline`."""
    h = Handlers(pipeline)
    with gr.Blocks(title="HYDRA Studio", delete_cache=(FILE_MAX_AGE_S, FILE_MAX_AGE_S)) as demo:
        gr.Markdown("# HYDRA Studio\nText-to-image, reconstruction and chat with one unified model, with its "
                    "generation-semantic bottleneck (GSB) latents beside every output.")
        status = gr.Markdown(h.status(), elem_id="status")
        with gr.Accordion("About this model", open=False, elem_id="about"):
            gr.Markdown(about_model(getattr(pipeline, "path", None)))

        def refresh(event):
            """After an event, success or not, update the status line."""
            return event.then(h.status, None, status, queue=False, show_progress="hidden", api_visibility="private")

        states = SimpleNamespace(gen=gr.State(None), index=gr.State(0), rec=gr.State(None))
        with gr.Tab("Generate", id="generate"):
            _generate_tab(h, states, refresh)
        with gr.Tab("Reconstruct", id="reconstruct"):
            _reconstruct_tab(h, states, refresh)
        with gr.Tab("Chat", id="chat"):
            _chat_tab(h, refresh)
        with gr.Tab("Compare", id="compare"):
            _compare_tab(h, states, refresh)
        demo.load(h.status, None, status, queue=False, show_progress="hidden", api_visibility="private")
    demo.hydra = h  # for tests (e.g. a simulated out-of-memory error)
    demo.queue(max_size=QUEUE_SIZE)
    return demo


def serve_locally(pipeline) -> tuple[gr.Blocks, str]:
    """Build the app and serve it on a free 127.0.0.1 port without blocking: (demo, url).
    For tests and benchmarks; close with demo.close()."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo = build_demo(pipeline)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True,
                            **launch_kwargs())
    return demo, url


# ------------------------------------------------------------------ command line
def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description="HYDRA Studio: the Gradio app for a HYDRA checkpoint.")
    parser.add_argument("--checkpoint", default=env("HYDRA_CHECKPOINT") or None,
                        help="checkpoint folder or Hub id (env HYDRA_CHECKPOINT; default: the bundled hydra-tiny)")
    parser.add_argument("--device", default=env("HYDRA_DEVICE") or "auto",
                        help="auto | cpu | cuda | cuda:N (env HYDRA_DEVICE; default auto)")
    parser.add_argument("--precision", default=env("HYDRA_PRECISION") or None,
                        choices=["fp32", "bf16", "fp16", "int8", "nf4"],
                        help="weights precision (env HYDRA_PRECISION; default: bf16/fp16 on CUDA, fp32 on CPU)")
    parser.add_argument("--offload", action="store_true", default=_env_flag("HYDRA_OFFLOAD"),
                        help="keep the LLM layers in CPU memory, streamed to the GPU per layer (env HYDRA_OFFLOAD=1)")
    parser.add_argument("--host", default=env("HYDRA_HOST") or env("GRADIO_SERVER_NAME") or "127.0.0.1",
                        help="address to listen on (env HYDRA_HOST or GRADIO_SERVER_NAME; default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=int(env("HYDRA_PORT") or env("GRADIO_SERVER_PORT") or 7860),
                        help="port (env HYDRA_PORT or GRADIO_SERVER_PORT; default 7860)")
    parser.add_argument("--share", action="store_true", default=_env_flag("HYDRA_SHARE"),
                        help="create a public gradio.live link (env HYDRA_SHARE=1; default off)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    handler = logging.StreamHandler()  # this app's own log lines (one per user mistake, tracebacks for faults)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    from hydra_core.pipeline import HydraPipeline  # the heavy imports, only when the app really starts

    device = None if args.device == "auto" else args.device
    # Cached example outputs belong to one checkpoint: start each run with an empty cache (lazy refill).
    os.environ.setdefault("GRADIO_RESET_EXAMPLES_CACHE", "True")
    # ZeroGPU: CUDA exists only inside @spaces.GPU calls, where bitsandbytes must quantize, so the
    # weights stay on the CPU here and each GPU call places them (see HydraPipeline.ensure_placed).
    defer = spaces.config.Config.zero_gpu and args.precision in ("int8", "nf4")
    try:
        pipeline = HydraPipeline.from_pretrained(args.checkpoint, device=device, precision=args.precision,
                                                 defer_placement=defer, offload=args.offload)
    except (ValueError, OSError) as error:  # a bad flag, a missing checkpoint: say why, without a traceback
        raise SystemExit(f"hydra studio: {error}") from error
    build_demo(pipeline).launch(server_name=args.host, server_port=args.port, share=args.share, **launch_kwargs())


if __name__ == "__main__":
    main()
