"""The Reconstruct tab: image -> GSB latent -> pixels, a noise probe and interpolation in GSB space."""

from __future__ import annotations

import time
from types import SimpleNamespace

import gradio as gr
import numpy as np

from hydra_core import viz

from .common import (IMAGE_LABEL, MODEL_QUEUE, PIXELS, Refresh, checked, example_images, guarded, image_input,
                     number_slider, seed_box, settle, user_error)
from .latent_panel import LatentPanel, Tab, latent_panel

INTERPOLATION_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


class ReconstructTab(Tab):
    @guarded("reconstruct")
    def reconstruct(self, image: str | None, decoder_steps: int, seed: int, request: gr.Request = None):
        """Encode an image into HYDRA's GSB latent and decode it back to pixels with the pixel flow decoder.

        Args:
            image: the image (PNG, JPEG, WebP, GIF, BMP or TIFF); it is centre-cropped to the model's size.
            decoder_steps: Euler steps of the pixel flow decoder (1-50).
            seed: seed of the decoder's noise.

        Returns:
            the model-sized original, the reconstruction, an error map, PSNR (dB) and SSIM.
        """
        decoder_steps, seed = checked(decoder_steps=decoder_steps, seed=seed)
        if image is None:
            raise user_error("Upload, paste or pick an image first.")
        out = self.device.reconstruct(image, decoder_steps, seed)
        self.record(request, "reconstruct", out.seconds)
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
    def noise_probe(self, image: str | None, sigma: float, decoder_steps: int, seed: int,
                    request: gr.Request = None):
        """Add Gaussian noise to an image's GSB latent and decode it, to see how robust the latent is.

        Args:
            image: the image to encode.
            sigma: standard deviation of the noise added to the latent (0-3).
            decoder_steps: Euler steps of the pixel flow decoder (1-50).
            seed: seed of the noise and of the decoder.

        Returns:
            the decoded noisy latent, a PCA picture of the noisy latent, and a sentence with the noise ratio.
        """
        sigma, decoder_steps, seed = checked(sigma=sigma, decoder_steps=decoder_steps, seed=seed)
        if image is None:
            raise user_error("Upload, paste or pick an image first.")
        start = time.perf_counter()
        latent, noisy, decoded = self.device.noise_probe(image, sigma, decoder_steps, seed)
        self.record(request, "noise probe", time.perf_counter() - start)
        ratio = float((noisy - latent).norm() / latent.norm().clamp_min(1e-12))
        info = (f"σ = {sigma:.2f}: ‖noise‖ / ‖latent‖ = {ratio:.2f} (latent std {latent.std():.3f}). "
                "Left: the decoded noisy latent; right: its PCA picture in the same basis.")
        return decoded, viz.pca_rgb(noisy, self.basis_for(latent)), info

    @guarded("interpolate")
    def interpolate(self, image_a: str | None, image_b: str | None, decoder_steps: int, seed: int,
                    request: gr.Request = None):
        """Interpolate between two images in GSB latent space: decode (1 - a) * latent(A) + a * latent(B).

        Args:
            image_a: the first image (a = 0).
            image_b: the second image (a = 1).
            decoder_steps: Euler steps of the pixel flow decoder (1-50).
            seed: seed of the decoder's noise (the same for every a).

        Returns:
            the decoded images for a = 0, 0.25, 0.5, 0.75, 1 and a PCA strip of the mixed latents.
        """
        decoder_steps, seed = checked(decoder_steps=decoder_steps, seed=seed)
        if image_a is None or image_b is None:
            raise user_error("Interpolation needs two images: the main input and a second image.")
        start = time.perf_counter()
        mix, decoded = self.device.interpolate(image_a, image_b, INTERPOLATION_ALPHAS, decoder_steps, seed)
        self.record(request, "interpolate", time.perf_counter() - start)
        gallery = [(image, f"α = {alpha:.2f}") for image, alpha in zip(decoded, INTERPOLATION_ALPHAS)]
        return gallery, viz.trajectory_strip(list(mix), self.basis_for(mix), display=96)


def build(h: ReconstructTab, states: SimpleNamespace, refresh: Refresh) -> None:
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

