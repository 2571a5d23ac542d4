"""What every tab shares: limits, error handling, input components, output files, layout helpers.

Errors: image inputs reach the handlers as undecoded files and numbers as sent, so every check
happens in one place (`hydra_core.pipeline.to_pil`, `check_number`, `check_text`, and `checked` here)
with a message that names the parameter or the file, the same in the page and the API. Every handler
is `@guarded`: a user mistake (ValueError) becomes a `gr.Error` that stays until dismissed and one log
line; running out of GPU memory releases the cache and says so; any other fault is logged with its
traceback and the user gets a plain message. After a failed event `settle` keeps every output's
previous value (no bare "Error" badges).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import inspect
import logging
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import gradio as gr
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES_DIR = ROOT / "assets" / "examples"
MAX_SEED = 2**31 - 1 - 4  # image k of a batch uses seed + k
MAX_IMAGES = 4
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
/* Labels and icon buttons sit above a picture, not on it: Gradio floats them over its corners. */
.gradio-container label[data-testid="block-label"].float { position: static; margin: 0 0 4px 0; max-width: 100%; }
.gradio-container .image-container .icon-button-wrapper.top-panel,
.gradio-container .gallery-container .icon-button-wrapper.top-panel { position: static; justify-content: flex-end; }
#gallery, #gallery .gallery-container { min-height: 0 !important; height: auto !important; }
#gallery .grid-wrap { height: auto !important; min-height: 0 !important; max-height: none !important; overflow: visible; }
#gallery .grid-container { padding-top: 0; }
/* Each caption (seed, preview step, self-check verdict) under its picture, whole, not over it. */
#gallery .thumbnail-item { height: auto; aspect-ratio: auto; overflow: visible; display: flex; flex-direction: column; }
#gallery .thumbnail-item img { aspect-ratio: 1 / 1; width: 100%; height: auto; }
#gallery .caption-label { position: static; transform: none; max-width: 100%; white-space: normal; overflow: visible;
                          font-size: 0.8rem; text-align: center; background: none; border: none; padding: 2px 0; }
@media (max-width: 640px) {  /* a phone: two rows of two */
  #gallery .grid-container { grid-template-columns: repeat(2, minmax(0, 1fr)) !important; }
}
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



# ------------------------------------------------------------------ layout
PIXELS = {"type": "pil", "interactive": False, "height": 260, "format": "png", "elem_classes": ["pixelated", "fill"]}
Refresh = Callable[[Any], Any]


def settle(event, outputs: list):
    """After `event` fails, keep each output's previous value and clear its "Error" badge; the message
    itself stays in its pop-up until dismissed."""
    event.failure(lambda: gr.skip(), None, outputs, queue=False, show_progress="hidden", api_visibility="private")
    return event

