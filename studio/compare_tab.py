"""The Compare tab: two latents side by side in the same PCA basis, with their per-token distance."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr
import torch
from PIL import Image

from hydra_core import viz

from .common import MODEL_QUEUE, PIXELS, Refresh, example_images, guarded, image_input, settle, user_error
from .latent_panel import Tab

COMPARE_SOURCES = ("last generated", "last reconstructed", "upload")


class CompareTab(Tab):
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
        return (gr.Image(image_a, label=f"a: {name_a}"), gr.Image(image_b, label=f"b: {name_b}"), picture, table)


def build(h: CompareTab, states: SimpleNamespace, refresh: Refresh) -> None:
    gr.Markdown("Two latents side by side in the same PCA basis, with their per-token distance. Each side comes "
                "from the last generated image (the one selected in Generate), the last reconstructed input, or "
                "an upload.")
    uploads = []
    with gr.Row():
        for side, default in (("a", "upload"), ("b", "last generated")):
            with gr.Column():
                source = gr.Radio(COMPARE_SOURCES, value=default, label=f"Latent {side} from",
                                  elem_id=f"compare-{side}-source")
                # The upload shows only when it is the source, so the page never shows an image it will not use.
                with gr.Column(visible=default == "upload") as upload_box:
                    upload = image_input(label=f"Image {side}", height=200, elem_id=f"compare-{side}")
                    gr.Examples([[p] for p in example_images()], inputs=[upload], label=f"Examples for image {side}")
                source.change(lambda choice: gr.Column(visible=choice == "upload"), source, upload_box, queue=False,
                              api_visibility="private")
                uploads.append((source, upload))
    button = gr.Button("Compare", variant="primary", elem_id="compare-button")
    with gr.Row(equal_height=True):
        shown_a = gr.Image(label="a", scale=1, elem_id="compare-shown-a", **{**PIXELS, "height": 220})
        shown_b = gr.Image(label="b", scale=1, elem_id="compare-shown-b", **{**PIXELS, "height": 220})
        picture = gr.Image(label="PCA(a) | PCA(b) | per-token distance (bright = far)", type="numpy",
                           interactive=False, height=220, format="png", scale=3, elem_id="compare-picture",
                           elem_classes="pixelated")
    stats = gr.Markdown(elem_id="compare-stats")
    outputs = [shown_a, shown_b, picture, stats]
    (source_a, upload_a), (source_b, upload_b) = uploads
    refresh(settle(button.click(h.compare, [source_a, upload_a, source_b, upload_b, states.gen, states.index,
                                            states.rec], outputs, api_visibility="private", **MODEL_QUEUE), outputs))
