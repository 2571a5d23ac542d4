"""The Generate tab: text to images, each image's latent, its flow trajectory."""

from __future__ import annotations

import random
import time
from types import SimpleNamespace

import gradio as gr
import numpy as np
import torch
from PIL import Image

from hydra_core import viz

from .common import (IMAGE_LABEL, MAX_SEED, MODEL_QUEUE, PIXELS, Refresh, checked, checked_flag, guarded,
                     image_input, number_slider, seed_box, settle, user_error)
from .device import PREVIEW_DECODER_STEPS
from .latent_panel import LatentPanel, Tab, latent_panel

# Chosen from what the bundled model draws well, prompts expanded (the default): the four short prompts show the asked
# colours and shapes (and "above") in 8/8 images each (seeds 0-7, pixel oracle, guidance 3), as does "a photo of a red
# circle" (5/8 before segment 17; circles often come out lopsided, which the oracle reads as squares or triangles), where
# "a photo of a red circle and a blue square" gives 1/8 (two-object prompts are the bundled model's weakest).
PROMPT_EXAMPLES = (
    "a photo of a cyan square",
    "a photo of a blue star",
    "a photo of a yellow triangle above a green star",
    "a large purple triangle in the centre, on a plain white background",
    "a large green square at the top left and a large red triangle at the bottom right, on a plain white background",
    "a photo of a yellow triangle",
)
TRAJECTORY_STRIP_FRAMES = 10
LIVE_PREVIEWS = 4  # clean estimates shown in the gallery along the flow, before the final images

SELF_CHECK_EMPTY = ("*Self-check: after generating, the model reads each image back and answers the questions "
                    "the prompt implies (which shapes, which colours, how many, where).*")


def _verdict(answers) -> str:
    if not answers:
        return "self-check: nothing to ask"
    agreed = sum(a.agrees for a in answers)
    return f"self-check {'✓' if agreed == len(answers) else '✗'} {agreed}/{len(answers)}"


def self_check_markdown(prompt: str, seeds: list[int], results: list) -> str:
    """The batch's agreement rate and every image's answers beside what the prompt implies."""
    if not any(results):
        return ("*Self-check: this prompt names no ShapesWorld shape, so it implies no question the model was "
                "taught to answer.*")
    agree = sum(all(a.agrees for a in answers) for answers in results)
    lines = [f"**Self-check: {agree} of {len(results)} images agree with the prompt ({agree / len(results):.0%}).** "
             "The model read each image back and answered the questions the prompt implies.", "",
             "| image | question | prompt implies | model answers |", "|---|---|---|---|"]
    for seed, answers in zip(seeds, results):
        for a in answers:
            mark = "✓" if a.agrees else "✗"
            lines.append(f"| seed {seed} | {a.question} | {a.expected} | {mark} {a.answer or '(nothing)'} |")
    return "\n".join(lines)


class GenerateTab(Tab):
    @guarded("generate")
    def generate(self, prompt: str, num_images: int, steps: int, guidance: float, seed: int,
                 randomize_seed: bool, decoder_steps: int, expand_prompt: bool | None = None,
                 progress=gr.Progress(), request: gr.Request = None):
        """Generate 1-4 images from a text prompt with HYDRA's flow-matching head (ShapesWorld vocabulary for
        the bundled model: circle, square, triangle, star; red, yellow, green, cyan, blue, purple).

        Streams previews (the model's clean estimate along the flow), then the final images.

        Args:
            prompt: what to draw, e.g. "a photo of a red circle".
            num_images: how many images (1-4); image k uses seed + k.
            steps: flow (Euler) steps (1-100).
            guidance: classifier-free guidance scale (0-15; 1 = off).
            seed: base seed, used when randomize_seed is false.
            randomize_seed: draw a random base seed instead of using `seed`.
            decoder_steps: Euler steps of the pixel flow decoder (1-50).
            expand_prompt: rewrite a short prompt per image into the dense caption of a random scene that
                satisfies it (hydra_core.prompts; default: the checkpoint's setting, on for HYDRA-Tiny).

        Returns:
            the images (captions "seed k"), the base seed used, and the run details ("generated_from": the
            text each image was generated from).
        """
        num_images, steps, guidance, decoder_steps = checked(num_images=num_images, steps=steps, guidance=guidance,
                                                             decoder_steps=decoder_steps)
        seed = random.randint(0, MAX_SEED) if checked_flag("randomize_seed", randomize_seed) else checked(seed=seed)[0]
        expand = None if expand_prompt is None else checked_flag("expand_prompt", expand_prompt)
        start = time.perf_counter()
        out = None
        for kind, *rest in self.device.generate_stream(prompt, num_images, steps, guidance, seed, decoder_steps,
                                                       LIVE_PREVIEWS, progress, expand):
            if kind == "preview":
                step, total, images = rest
                yield ([(image, f"seed {seed + k} · preview at step {step}/{total}") for k, image in enumerate(images)],
                       seed, gr.skip(), gr.skip())
            else:
                out = rest[0]
        self.record(request, "generate", time.perf_counter() - start)
        gallery = [(image, f"seed {s}") for image, s in zip(out.images, out.seeds)]
        details = {"prompt": prompt, "generated_from": out.prompts, "seeds": out.seeds, "steps": steps,
                   "guidance": guidance, "decoder_steps": decoder_steps, "seconds": round(out.seconds, 3)}
        state = {"images": out.images, "latents": out.latents, "seeds": out.seeds, "details": details,
                 "trajectory": torch.stack([step["latent"] for step in out.trajectory]),  # [S, B, N, C]
                 "x0": torch.stack([step["x0"] for step in out.trajectory]),  # clean estimates [S, B, N, C]
                 "t": [float(step["t"]) for step in out.trajectory]}
        yield gallery, seed, details, state

    def generate_example(self, prompt: str):
        """A cached example: 2 images at seed 0 and the model's defaults (the seed box is left alone)."""
        config = self.pipe.config
        *_, (gallery, _, details, _) = self.generate(prompt, 2, config.default_steps, config.default_guidance, 0,
                                                      False, config.tokenizer.decoder_steps, progress=None)
        return gallery, details

    # ---------------------------------------------------------- self-check
    @guarded("the self-check")
    def self_check_batch(self, state: dict | None):
        """The model reads each generated image back and answers what the prompt implies:
        -> gallery captions with each image's verdict, the answers as Markdown."""
        if not state:
            return gr.skip(), ""
        prompt = state["details"]["prompt"]
        results = self.device.self_check(state["images"], prompt)
        gallery = [(image, f"seed {s} · {_verdict(answers)}")
                   for image, s, answers in zip(state["images"], state["seeds"], results)]
        return gallery, self_check_markdown(prompt, state["seeds"], results)

    @guarded("self_check")
    def self_check(self, image: str | None, prompt: str) -> dict:
        """Check whether an image shows what a prompt asks for, by asking HYDRA itself: the questions the
        prompt implies (how many, which colour, is there, which side; ShapesWorld's vocabulary) are put
        to the model's understanding path about the image.

        Args:
            image: the image to check (e.g. one that /generate returned).
            prompt: the prompt the image should show.

        Returns:
            {"agrees": true | false | null (the prompt implies no question), "questions": [{"question",
            "prompt_implies", "model_answer", "agrees"}]}.
        """
        from hydra_core.pipeline import MAX_PROMPT_CHARS, check_text, to_pil
        from hydra_core.selfcheck import agreement

        if image is None:
            raise user_error("Send the image to check.")
        prompt = check_text("the prompt", prompt, MAX_PROMPT_CHARS)
        answers = self.device.self_check([to_pil(image)], prompt)[0]
        return {"agrees": agreement(answers),
                "questions": [{"question": a.question, "prompt_implies": a.expected, "model_answer": a.answer,
                               "agrees": a.agrees} for a in answers]}

    @guarded("showing the generated latent")
    def show_generated(self, state: dict | None, index: int = 0) -> list:
        """-> selected index, latent panel, trajectory view (at the last step) for image `index`."""
        if not state:
            return [0, *LatentPanel.empty("Generate an image to see its latent."), *self.trajectory_empty()]
        seed, details = state["seeds"][index], state["details"]
        drawn_from = details["generated_from"][index]
        title = f"Generated image {index + 1} (seed {seed})" + (
            f", drawn from the expanded prompt “{drawn_from}”" if drawn_from != details["prompt"] else "")
        panel = self.panel(state["latents"][index], title,
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
    def trajectory_step(self, state: dict | None, index: int, step: int, request: gr.Request = None) -> list:
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
        self.record(request, "trajectory preview", time.perf_counter() - start)
        return self.trajectory_view(state, index, step, preview)[1:]


def build(h: GenerateTab, states: SimpleNamespace, refresh: Refresh) -> None:
    config = h.pipe.config
    with gr.Row():
        with gr.Column(scale=2, min_width=300):
            # No max_length: the page would cut a long prompt silently; the pipeline says it is too long.
            prompt = gr.Textbox(label="Prompt", lines=2, max_lines=4, placeholder=PROMPT_EXAMPLES[0], elem_id="prompt")
            num_images = number_slider("num_images", 2, 1, "Number of images")
            with gr.Row():
                button = gr.Button("Generate", variant="primary", elem_id="generate-button", scale=3)
                stop = gr.Button("Stop", variant="stop", elem_id="generate-stop", scale=1)
            with gr.Accordion("Advanced settings", open=False):
                steps = number_slider("steps", config.default_steps, 1, "Flow steps", elem_id="steps")
                guidance = number_slider("guidance", config.default_guidance, 0.1, "Guidance (classifier-free; 1 = off)")
                decoder_steps = number_slider("decoder_steps", config.tokenizer.decoder_steps, 1, "Pixel decoder steps",
                                       elem_id="decoder-steps")
                expand = gr.Checkbox(config.prompt_expansion != "none", elem_id="expand-prompt",
                                     label="Expand the prompt (fill in what it leaves open: colours, sizes, places)",
                                     info="A short prompt becomes, per image, the dense caption of a random "
                                          "scene that satisfies it; the latent panel shows the text each image "
                                          "was drawn from.")
                with gr.Row():
                    seed = seed_box("Seed", elem_id="seed")
                    randomize = gr.Checkbox(True, label="Randomize seed", elem_id="randomize-seed")
        with gr.Column(scale=3):
            # One row of up to four images (two rows of two on a phone, see CSS): a batch is seen whole.
            gallery = gr.Gallery(label="Images", columns=4, format="png", object_fit="contain", allow_preview=False,
                                 interactive=False, elem_classes="pixelated", elem_id="gallery")
            self_check = gr.Markdown(SELF_CHECK_EMPTY, elem_id="self-check")
            with gr.Accordion("Run details", open=False):
                details = gr.JSON(label="Run details", open=True)
    inputs = [prompt, num_images, steps, guidance, seed, randomize, decoder_steps, expand]
    # An example sets only the prompt: the seed box and "Randomize seed" keep what the user chose.
    examples = gr.Examples([[p] for p in PROMPT_EXAMPLES], inputs=[prompt], outputs=[gallery, details],
                           fn=h.generate_example, cache_examples=True, cache_mode="lazy",
                           label="Example prompts (their cached images: 2 images, seed 0, default settings)")
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
    # Inputs and output of the public /self_check endpoint.
    api_image = image_input(label=f"image ({IMAGE_LABEL})", visible=False)
    api_prompt = gr.Textbox(label="prompt", visible=False)
    api_result = gr.JSON(label="self-check", visible=False)
    api_trigger = gr.Button(visible=False)
    trajectory = [slider, strip, pca, preview, caption]
    selection = [states.index, *panel.outputs, *trajectory]

    outputs = [gallery, seed, details, states.gen]
    # "minimal": the full progress overlay would hide the live previews it streams into the gallery.
    event = gr.on([button.click, prompt.submit], h.generate, inputs=inputs, outputs=outputs, api_name="generate",
                  show_progress="minimal", **MODEL_QUEUE,
                  api_description="Text to 1-4 images; image k uses seed + k. randomize_seed defaults to True: "
                  "pass randomize_seed=False to use `seed`. expand_prompt (default: the model's setting) rewrites "
                  "a short prompt per image into the dense caption of a random scene that satisfies it. Streams "
                  "previews (the clean estimate along the flow, captions 'seed k · preview at step i/n'), then "
                  "returns the gallery (captions 'seed k'), the base seed used and the run details (the text each "
                  "image was generated from, seeds, steps, guidance, seconds).")
    settle(event, outputs)
    stop.click(None, cancels=[event], queue=False, api_visibility="private")
    shown = settle(event.success(h.show_generated, [states.gen], selection, api_visibility="private"), selection)
    refresh(settle(shown.then(h.self_check_batch, [states.gen], [gallery, self_check], api_visibility="private",
                              **MODEL_QUEUE), [gallery, self_check]))
    # A cached example fills the gallery without a generation state: clear the stale panel and self-check.
    examples.dataset.click(lambda: [None, SELF_CHECK_EMPTY, *h.show_generated(None)], None,
                           [states.gen, self_check, *selection], queue=False, api_visibility="private")
    settle(gallery.select(h.select_image, [states.gen, gallery], selection, api_visibility="private", **MODEL_QUEUE),
           selection)
    refresh(settle(slider.release(h.trajectory_step, [states.gen, states.index, slider], trajectory[1:],
                                  api_visibility="private", **MODEL_QUEUE), trajectory[1:]))
    refresh(api_trigger.click(h.self_check, [api_image, api_prompt], api_result, api_name="self_check", **MODEL_QUEUE,
                              api_description="An image and the prompt it should show -> the questions the prompt "
                              "implies (ShapesWorld's shapes, colours, counts, relations), what it implies, what "
                              "the model answers about the image, and whether every answer agrees (agrees is null "
                              "when the prompt implies no question)."))
