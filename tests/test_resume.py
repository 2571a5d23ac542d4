"""An interrupted stage resumes with its weights and optimizer state, and a finished stage is skipped
and composes with the others (the model card reports the stages this way)."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import save_model

from hydra_core.train import build
from hydra_core.train.loop import LoopConfig, train


@pytest.fixture(scope="module")
def builder(tmp_path_factory):
    work = tmp_path_factory.mktemp("resume-build")
    return build.Builder(work, work / "out", scale=1.0, seed=0, pool_size=24)


def _llm_weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if k.startswith("llm.")}


class Interrupted(Exception):
    pass


def _run_text_stage(builder, out, steps: int = 6, stop_at: int | None = None) -> None:
    """The text stage for `steps` steps (state saved every 2), killed at step `stop_at` if given."""
    plan = builder.plan("text")

    def step_fn(step):
        if step == stop_at:
            raise Interrupted
        return plan.step_fn(step)

    cfg = LoopConfig(steps=steps, out=out, warmup=2, log_every=1, save_every=2)
    train(Accelerator(cpu=True), plan.modules, plan.groups, step_fn, cfg)


def _optimizer_moments(state_dir) -> list[torch.Tensor]:
    state = torch.load(state_dir / "optimizer.bin", weights_only=False)["state"]
    return [state[i][key] for i in sorted(state) for key in ("exp_avg", "exp_avg_sq")]


def _seed_all() -> None:
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)


def test_a_resumed_stage_ends_where_an_uninterrupted_one_does(builder, monkeypatch, tmp_path):
    """A 6-step run killed after step 4 (its last save), then run again, equals 6 steps in one go: the weights and
    AdamW's moments were restored (the live model is reset to its initial weights before resuming, so
    they can only come from the saved state). Control: how far steps 5 and 6 move the weights."""
    monkeypatch.setattr(build, "BATCH", {"teacher": 8, "text": 8, "tok": 4, "umm": 6})
    initial = copy.deepcopy(builder.model.state_dict())

    _seed_all()
    _run_text_stage(builder, tmp_path / "straight")
    straight = _llm_weights(builder.model)

    builder.model.load_state_dict(initial)
    _seed_all()
    with pytest.raises(Interrupted):
        _run_text_stage(builder, tmp_path / "resumed", stop_at=4)
    at_four = _llm_weights(builder.model)
    builder.model.load_state_dict(initial)  # forget the trained weights in memory
    _seed_all()
    _run_text_stage(builder, tmp_path / "resumed")
    resumed = _llm_weights(builder.model)
    builder.model.load_state_dict(initial)

    gap = max(float((resumed[k] - straight[k]).abs().max()) for k in straight)
    control = max(float((at_four[k] - straight[k]).abs().max()) for k in straight)
    assert control > 1e-4 and gap < 1e-3 * control, (gap, control)  # measured: gap 0, control 6.7e-4
    # The optimizer state written at step 6 is the same as the uninterrupted run's.
    for a, b in zip(_optimizer_moments(tmp_path / "resumed" / "state"),
                    _optimizer_moments(tmp_path / "straight" / "state"), strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-12)


def test_finished_stages_are_skipped_and_compose(builder, monkeypatch):
    """A stage with a done file is not trained again; restoring it loads only the parameters that stage
    trains, so a later stage's file (holding every weight) never overwrites an earlier stage's work."""
    model = builder.model
    before = copy.deepcopy(model.state_dict())

    def finished(stage: str, value: float) -> None:
        filled = copy.deepcopy(model)
        with torch.no_grad():
            for param in filled.parameters():
                param.fill_(value)
        builder._done(stage).parent.mkdir(parents=True, exist_ok=True)
        save_model(filled, str(builder._done(stage)))

    finished("text", 1.0)  # trains llm.*
    finished("tok1", 2.0)  # trains vision.*, and its file holds a stale llm.* too

    def no_training(stage, plan):
        raise AssertionError(f"stage {stage} was trained again")

    monkeypatch.setattr(builder, "_run", no_training)
    monkeypatch.setattr(builder, "plan", lambda stage: None)
    try:
        builder.run_stage("text")
        builder.run_stage("tok1")
        for name, param in model.state_dict().items():  # the names the done files use
            if name.startswith("llm."):
                assert torch.all(param == 1.0), name  # text's weights, not tok1's stale copy
            elif name.startswith("vision."):
                assert torch.all(param == 2.0), name
            else:  # trained by neither (flow head, projector): untouched
                assert torch.equal(param, before[name]), name
        # A stage without a done file is trained.
        with pytest.raises(AssertionError, match="umm1 was trained"):
            builder.run_stage("umm1")
    finally:
        model.load_state_dict(before)
        for stage in ("text", "tok1"):
            builder._done(stage).unlink()
