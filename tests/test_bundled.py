"""The bundled HYDRA-Tiny: it loads by default, and on a small held-out evaluation its scores beat their
input-blind controls measured in the same run. A model that ignores its input scores its control, so
these fail for it (the first bundled model failed the flow-loss and VQA checks: gap 0.001, VQA below
its blank-image control on this seed's questions).

Measured for the shipped model at limit 24, seed 123: ShapesWorld 32.0 dB against 21.0 for the 8x8
thumbnail; flow loss 0.193 with the right prompts, 0.227 shuffled, 0.216 null; VQA 0.917 against 0.29
with another scene's image, 0.33 with a blank one and 0.50 for the per-type majority answer (the model
bundled until 2026-12-06 scored 0.50 there: it fails the majority check); "a photo of a {shape}" 0.958
expanded against 0.333 as typed and 0.375 judged against mismatched prompts at its default guidance 3
(segment 16: 0.917, 0.375, 0.375; segment 7 at guidance 5: 0.625, 0.208, 0.292). Not checked here because the
model does not clear them by a safe margin at this sample size (see the model card): photo crops (22.9 dB,
thumbnail 20.0) and GenEval-style accuracy of prompts as typed against mismatched prompts."""

import pytest

from hydra_core.eval.suites import evaluate
from hydra_core.pipeline import BUNDLED_CHECKPOINT

LIMIT, SEED = 24, 123


@pytest.fixture(scope="module")
def results(bundled_pipeline):
    return evaluate(bundled_pipeline, suites=("recon", "vqa", "conditioning"), limit=LIMIT, seed=SEED)


def test_bundled_checkpoint_is_the_default_and_small(bundled_pipeline):
    assert bundled_pipeline.config.preset == "tiny"
    size = (BUNDLED_CHECKPOINT / "model.safetensors").stat().st_size
    assert size < 60e6, f"the bundled weights are {size / 1e6:.1f} MB; keep them under 60 MB"
    assert bundled_pipeline.basis is not None  # the latent panel's fixed PCA basis travels with it
    assert (BUNDLED_CHECKPOINT / "README.md").is_file()


def test_reconstruction_beats_the_thumbnail(results):
    block = results["recon"]["shapesworld"]
    assert block["psnr"] >= block["thumbnail_psnr"] + 3.0, block


def test_generation_listens_to_its_prompt(results):
    block = results["conditioning"]
    assert block["right"] < 0.95 * block["shuffled"] and block["right"] < 0.97 * block["null"], block


@pytest.mark.parametrize("control", ["other_image", "blank_image", "majority"])
def test_answers_depend_on_the_image(results, control):
    block = results["vqa"]
    assert block["overall"] >= block[control]["overall"] + 0.1, (control, block)


def test_shape_answers_come_from_the_image(bundled_pipeline):
    """"what shape is the red object?" on 30 held-out scenes: right more often than with another scene's
    image and than the most common answer, by a margin a model that reads no shape does not reach (the
    model bundled until 2026-12-06 answered 0.23 here, as with another scene's image; majority 0.27)."""
    from PIL import Image

    from hydra_core.data import shapesworld as sw
    from hydra_core.eval.suites import eval_rng, heldout_scene, mismatched
    from hydra_core.selfcheck import ask, normalize_answer

    rng = eval_rng(SEED, "vqa")
    items = []
    while len(items) < 30:
        scene, image = heldout_scene(rng, bundled_pipeline.image_size)
        shape_questions = [qa for qa in sw.qa_pairs(scene, rng) if qa.qtype == "shape"]
        if shape_questions:
            items.append((Image.fromarray(image), shape_questions[0]))
    others = mismatched([image for image, _ in items], 1)

    def accuracy(images):
        return sum(normalize_answer(ask(bundled_pipeline, image, qa.question)) == qa.answer
                   for image, (_, qa) in zip(images, items)) / len(items)

    answers = [qa.answer for _, qa in items]
    majority = max(answers.count(a) for a in set(answers)) / len(items)
    right, other = accuracy([image for image, _ in items]), accuracy(others)
    assert right >= max(other, majority) + 0.25, (right, other, majority)


def test_expanding_a_short_prompt_draws_what_it_names(bundled_pipeline):
    """"a photo of a {shape}" on 24 held-out prompts, judged by the pixel oracle: generated from the prompt
    expanded (the app's default) the image shows the shape far more often than from the prompt as typed,
    and than the same images judged against other prompts (a generator that ignores its text scores that)."""
    from hydra_core.data import shapesworld as sw
    from hydra_core.eval.suites import eval_rng, score_geneval

    rng = eval_rng(SEED, "geneval")
    metas = [sw.sample_prompt(rng, "single_object") for _ in range(24)]

    def score(expand: bool) -> dict:
        images = [bundled_pipeline.generate(m["prompt"], seed=SEED + i, expand=expand).images[0]
                  for i, m in enumerate(metas)]
        return score_geneval(images, metas)[0]

    typed, expanded = score(False), score(True)
    accuracy = expanded["single_object"]
    assert accuracy >= typed["single_object"] + 0.2, (typed, expanded)
    assert accuracy >= expanded["mismatched"]["single_object"] + 0.2, expanded
