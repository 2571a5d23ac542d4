"""Prompt expansion (hydra_core.prompts): a short ShapesWorld prompt becomes the dense caption of a seeded
random scene that satisfies it; anything the expander cannot read whole is left as typed."""

import pytest

from hydra_core.data import shapesworld as sw
from hydra_core.eval.suites import sample_prompts
from hydra_core.prompts import expand_prompt, expansion_scene, mentions, prompt_metadata


def test_every_geneval_prompt_expands_to_a_scene_that_satisfies_it():
    metas = sample_prompts(60, 3)  # ten of each tag
    for meta in metas:
        for seed in range(3):
            scene = expansion_scene(meta["prompt"], seed)
            assert scene is not None and sw.scene_satisfies(scene, meta), (meta["prompt"], seed)
            caption = expand_prompt(meta["prompt"], seed)
            assert caption == sw.dense_caption(scene)
            named = sorted((m.color, m.shape, m.size) for m in mentions(caption))
            assert named == sorted((o.color, o.shape, o.size) for o in scene.objects), caption


def test_the_seed_picks_what_the_prompt_leaves_open():
    captions = {expand_prompt("a photo of a circle", seed) for seed in range(8)}
    assert len(captions) >= 6
    assert expand_prompt("a photo of a circle", 5) == expand_prompt("a photo of a circle", 5)
    for seed in range(8):  # what the prompt names is kept
        scene = expansion_scene("A photo of two large red squares and a star", seed)
        squares = [o for o in scene.objects if o.shape == "square"]
        assert len(squares) == 2 and all(o.color == "red" and o.size == "large" for o in squares)
        assert [o.shape for o in scene.objects].count("star") == 1


@pytest.mark.parametrize("prompt", [
    "a large purple triangle in the centre, on a plain white background",  # a place and a background
    "a red circle at the top left",
    "a photo of a cat",  # nothing the world has
    "a photo of a red circle next to a dog",  # an unknown word beside known ones
    "a circle above a star below a square",  # two relations
    "two circles left of a star",  # a relation between groups
    "five stars",  # more objects than a scene holds
    "zero circles",
    "a photo of a red circle; rm -rf /",
])
def test_what_the_expander_cannot_read_whole_is_left_as_typed(prompt):
    assert prompt_metadata(prompt) is None and expand_prompt(prompt, 0) is None


def test_relations_put_the_named_object_on_the_named_side():
    for seed in range(10):
        scene = expansion_scene("a photo of a red circle above a blue star", seed)
        circle, star = (next(o for o in scene.objects if o.shape == s) for s in ("circle", "star"))
        assert (circle.color, star.color) == ("red", "blue")
        assert "above" in sw.object_relations(circle, star, scene.canvas)


def test_generate_expands_per_image_and_keeps_batch_equal_to_single_runs(tiny_pipeline):
    batch = tiny_pipeline.generate("a photo of a circle", num_images=2, seed=3, steps=2, decoder_steps=1)
    single = tiny_pipeline.generate("a photo of a circle", num_images=1, seed=4, steps=2, decoder_steps=1)
    assert batch.prompts == [expand_prompt("a photo of a circle", 3), expand_prompt("a photo of a circle", 4)]
    assert single.prompts == batch.prompts[1:]
    assert (batch.latents[1] - single.latents[0]).abs().max() < 1e-4
    typed = tiny_pipeline.generate("a photo of a circle", seed=3, steps=2, decoder_steps=1, expand=False)
    assert typed.prompts == ["a photo of a circle"]
    assert (typed.latents[0] - batch.latents[0]).abs().max() > 1e-3  # the model was given another text
    kept = tiny_pipeline.generate("a red circle at the top left", seed=3, steps=2, decoder_steps=1)
    assert kept.prompts == ["a red circle at the top left"]
    with pytest.raises(ValueError, match="expand must be true or false"):
        tiny_pipeline.generate("a photo of a circle", steps=1, expand="yes")


def test_the_command_line_says_what_each_image_was_drawn_from(tiny_checkpoint, tmp_path, capsys):
    from hydra_core.__main__ import main

    args = ["generate", "a photo of a star", "--checkpoint", str(tiny_checkpoint), "--steps", "1",
            "--num-images", "2", "--seed", "5", "--out", str(tmp_path)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    for seed in (5, 6):
        assert f"seed {seed} drawn from: {expand_prompt('a photo of a star', seed)}" in printed
        assert (tmp_path / f"generated-seed{seed}.png").is_file()
    assert main([*args, "--no-expand"]) == 0
    assert "drawn from" not in capsys.readouterr().out
