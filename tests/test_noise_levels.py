"""The noise-level probe (hydra_core.eval.noise_levels) on the bundled model and, as the broken control,
on random weights."""

import pytest

from hydra_core.eval.noise_levels import format_table, noise_levels


def probe(pipe):
    return noise_levels(pipe, limit=8, seed=0, strengths=(1.0,), steps=10)


def test_the_bundled_generator_follows_colour_and_the_tokenizer_keeps_shape(bundled_pipeline):
    results = probe(bundled_pipeline)
    right, other = results["right"]["1.0"], results["mismatched"]["1.0"]
    assert results["reconstruction"]["colour_shape"] >= 0.6, results
    assert right["colour"] - other["colour"] >= 0.4, results  # the prompt, not the noise, sets the colour
    assert "| 1.0 |" in format_table(results)


def test_random_weights_fail_the_same_probe(tiny_pipeline):
    """The control for the thresholds above: a model that has learnt nothing."""
    results = probe(tiny_pipeline)
    right, other = results["right"]["1.0"], results["mismatched"]["1.0"]
    assert results["reconstruction"]["colour_shape"] < 0.6 and right["colour"] - other["colour"] < 0.4, results


@pytest.mark.parametrize("strength", [0.0, 1.5])
def test_strengths_out_of_range_are_refused(tiny_pipeline, strength):
    with pytest.raises(ValueError, match="strength"):
        noise_levels(tiny_pipeline, limit=1, strengths=(strength,), steps=1)
