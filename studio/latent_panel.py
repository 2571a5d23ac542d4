"""The latent panel every tab shows beside its output, and the state the tabs share (`Studio`)."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import psutil
import torch

from hydra_core import viz

from .common import FileStore
from .device import device_functions

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



class Studio:
    """What the tabs share: the pipeline, its device functions, the output files, one PCA basis (so
    latents from every tab are drawn in the same colours) and each visitor's last request."""

    def __init__(self, pipeline):
        self.pipe = pipeline
        self.device = device_functions(pipeline)
        self.files = FileStore()
        self.parameters = pipeline.num_parameters
        self.basis, self.basis_source = pipeline.basis, "checkpoint"
        self.activity: dict[str, dict[str, Any]] = {}  # session hash -> that visitor's last request

    def basis_for(self, latents: torch.Tensor) -> viz.PCABasis:
        if self.basis is None:  # the checkpoint has none: fit one on the first latents seen, keep it
            self.basis = viz.PCABasis.fit(latents.reshape(-1, latents.shape[-1]))
            self.basis_source = "fitted on this app's first latents"
        return self.basis

    def record(self, request: gr.Request | None, name: str, seconds: float) -> None:
        """Remember a visitor's last request for their status line (no one sees another's)."""
        self.activity[_session(request)] = {"name": name, "seconds": seconds, "at": time.strftime("%H:%M:%S")}

    def panel(self, latent: torch.Tensor, caption: str, name: str, **metadata) -> list:
        """Latent panel values for latent [N, C], with its .safetensors download written."""
        path = self.files.path(f"{name}.safetensors")
        viz.save_latents(path, {"latent": latent}, {"checkpoint": self.pipe.name, "shape": "N,C", **metadata})
        basis = self.basis_for(latent)
        return LatentPanel.values(latent, basis, f"{caption} · basis: {self.basis_source}", path)

    def status(self, request: gr.Request = None) -> str:
        pipe = self.pipe
        memory = f"RSS {psutil.Process().memory_info().rss / 2**30:.2f} GiB"
        if pipe.device.type == "cuda":
            with contextlib.suppress(Exception):
                memory += f" · CUDA {torch.cuda.memory_allocated(pipe.device) / 2**30:.2f} GiB allocated"
        count = self.parameters
        count = f"{count / 1e9:.2f} B" if count >= 1e9 else f"{count / 1e6:.1f} M"
        last = self.activity.get(_session(request))
        last = f"{last['name']} took {last['seconds']:.2f} s at {last['at']}" if last else "none yet"
        return (f"**Checkpoint** `{pipe.name}` ({pipe.config.preset}) · **device** `{pipe.device}` · "
                f"**precision** `{pipe.precision}` · **parameters** {count} · **memory** {memory} · "
                f"**your last request** {last}")


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "(no session)"


class Tab:
    """A tab's handlers: methods over the shared Studio. Parameter names are what API clients see."""

    def __init__(self, studio: Studio):
        self.studio = studio
        self.pipe, self.device = studio.pipe, studio.device
        self.panel, self.basis_for, self.record = studio.panel, studio.basis_for, studio.record
