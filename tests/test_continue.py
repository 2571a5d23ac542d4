"""Continuing a built checkpoint (`--init-from`): one more segment, trained and recorded beside the others."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from hydra_core.train import build
from hydra_core.train.stages import STAGES, trains


@pytest.fixture
def small_build(monkeypatch):
    """Small batches and monitors; main() writes --steps and --lr into STEPS and STAGES: copies, restored after."""
    monkeypatch.setattr(build, "STEPS", dict(build.STEPS))
    monkeypatch.setattr(build, "STAGES", dict(build.STAGES))
    monkeypatch.setattr(build, "BATCH", {"teacher": 8, "text": 8, "tok": 4, "umm": 6})
    monkeypatch.setattr(build, "MONITOR_SCENES", 6)


def test_a_continuation_trains_only_its_stage_and_the_card_records_every_segment(tiny_checkpoint, tmp_path, small_build):
    init = tmp_path / "init"
    shutil.copytree(tiny_checkpoint, init)
    first = {"command": "python -m hydra_core.train --work runs/first", "date": "2026-11-01",
             "stages": {"tok1": {"steps": 7, "minutes": 1.5, "final": {"loss": 0.5}, "heldout": {}}}}
    (init / build.SEGMENTS_NAME).write_text(json.dumps({"segments": [first]}))
    out = tmp_path / "out"

    build.main(["--init-from", str(init), "--stages", "umm3", "--steps", "umm3=10", "--seed", "1",
                "--work", str(tmp_path / "work"), "--out", str(out), "--pool-size", "24", "--eval-limit", "2"])

    segments = json.loads((out / build.SEGMENTS_NAME).read_text())["segments"]
    assert [s["command"] for s in segments][0] == first["command"]
    assert segments[1]["init_from"] == str(init) and segments[1]["seed"] == 1
    assert list(segments[1]["stages"]) == ["umm3"] and segments[1]["stages"]["umm3"]["steps"] == 10
    assert {"heldout_right", "heldout_shuffled", "heldout_qa_right", "heldout_qa_other"} <= set(
        segments[1]["stages"]["umm3"]["heldout"])
    card = (out / "README.md").read_text()
    assert "### Segment 1 (2026-11-01, from nothing" in card and "### Segment 2" in card
    assert first["command"] in card and "--init-from" in card

    before, after = load_file(init / "model.safetensors"), load_file(out / "model.safetensors")
    changed = {k for k in after if not k.startswith("viz.")
               and not torch.equal(before[k].half(), after[k])}  # the output is stored in float16
    trained = {k for k in after if trains(STAGES["umm3"], k)}
    assert changed and changed <= trained, sorted(changed - trained)[:5]
    assert any(k.startswith("llm.") for k in changed) and any(k.startswith("flow_head.") for k in changed)


def test_a_continuation_can_whiten_the_flow_space_add_image_positions_the_flow_latent_skip_and_llm_layers(
        tiny_checkpoint, tmp_path, small_build):
    from hydra_core.loading import load_pretrained

    out = tmp_path / "out"
    build.main(["--init-from", str(tiny_checkpoint), "--stages", "umm2", "--steps", "umm2=3", "--latent-norm", "pca",
                "--whiten-floor", "0.002", "--image-positions", "1", "--flow-latent-input", "--llm-layers", "6", "--work", str(tmp_path / "work"), "--out", str(out), "--pool-size", "24",
                "--eval-limit", "0"])
    model = load_pretrained(out).model
    assert model.config.latent_norm == "pca" and model.config.image_position_embedding
    width = model.config.llm["hidden_size"]
    assert model.image_position.norm(dim=-1).mean() > 0.9 * (width / 2) ** 0.5  # the full sin-cos table (scale 1)
    assert model.config.latent_whiten_floor == 0.002
    assert model.config.flow_head_latent_input and model.flow_head.latent_proj.weight.abs().max() > 0  # trained from 0
    layers = model.llm.model.layers
    assert len(layers) == model.config.llm["num_hidden_layers"] == 6
    assert all(layer.mlp.down_proj.weight.any() for layer in layers)  # the new layers' zeroed outputs trained
    assert "--latent-norm pca" in json.loads((out / build.SEGMENTS_NAME).read_text())["segments"][-1]["command"]
    # The pool's latents, whitened: the largest directions at unit variance.
    pool = build.data.make_pool(24, 0)
    pixels = torch.tensor(pool.images).permute(0, 3, 1, 2).float() / 127.5 - 1
    z = model.normalize(model.vision.encode_latent(pixels)).reshape(-1, model.config.tokenizer.latent_channels)
    top = torch.linalg.eigvalsh(torch.cov(z.T.double())).flip(0)[:3]
    assert torch.all((top > 0.7) & (top < 1.3)), top


def test_a_continuation_can_refine_the_decoder_alone_at_a_given_learning_rate(tiny_checkpoint, tmp_path, small_build):
    out = tmp_path / "out"
    # A stage II run beside it, sharing the work folder: its log is not this checkpoint's history.
    (tmp_path / "work" / "umm2").mkdir(parents=True)
    (tmp_path / "work" / "umm2" / "log.jsonl").write_text('{"step": 50, "loss": 0.3, "sec_per_step": 1.7}\n')
    build.main(["--init-from", str(tiny_checkpoint), "--stages", "tok2", "--steps", "tok2=3", "--lr", "decoder=5e-4",
                "--work", str(tmp_path / "work"), "--out", str(out), "--pool-size", "24", "--eval-limit", "0"])

    assert build.STAGES["tok2"].groups == {"decoder": 5e-4}
    segment = json.loads((out / build.SEGMENTS_NAME).read_text())["segments"][-1]
    assert list(segment["stages"]) == ["tok2"] and "--lr decoder=5e-4" in segment["command"]
    before, after = load_file(tiny_checkpoint / "model.safetensors"), load_file(out / "model.safetensors")
    changed = {k for k in after if not k.startswith("viz.") and not torch.equal(before[k].half(), after[k])}
    assert changed and all(k.startswith("vision.decoder.") for k in changed), sorted(changed)[:5]


def test_a_continuation_can_train_the_llm_on_text_alone(tiny_checkpoint, tmp_path, small_build):
    """--stages text: the LLM on text-only conversations (under a chain mix, relation questions asked both ways);
    nothing outside the LLM moves."""
    out = tmp_path / "out"
    build.main(["--init-from", str(tiny_checkpoint), "--stages", "text", "--steps", "text=10", "--lr", "llm=6e-4",
                "--qa-mix", "places_chain_relations", "--work", str(tmp_path / "work"), "--out", str(out),
                "--pool-size", "24", "--eval-limit", "0"])

    segment = json.loads((out / build.SEGMENTS_NAME).read_text())["segments"][-1]
    assert list(segment["stages"]) == ["text"] and segment["stages"]["text"]["steps"] == 10
    before, after = load_file(tiny_checkpoint / "model.safetensors"), load_file(out / "model.safetensors")
    changed = {k for k in after if not k.startswith("viz.") and not torch.equal(before[k].half(), after[k])}
    assert changed and all(k.startswith("llm.") for k in changed), sorted(changed)[:5]


@pytest.mark.parametrize("flag, item, usage", [
    ("--lr", "decoder", "GROUP=RATE"), ("--lr", "decoder=fast", "GROUP=RATE"), ("--lr", "decoder=0", "GROUP=RATE"),
    ("--lr", "encoder=1e-3", "GROUP=RATE"), ("--gen-shape-weight", "hexagon=2", "SHAPE=W"),
    ("--gen-shape-weight", "circle=-1", "SHAPE=W")])
def test_a_malformed_rate_or_weight_is_refused(flag, item, usage, capsys):
    with pytest.raises(SystemExit):
        build.main([flag, item, "--work", "unused", "--out", "unused"])
    assert f"{flag} takes {usage}" in capsys.readouterr().err


def test_grown_layers_train_at_their_own_rate(tiny_model):
    """--new-layer-lr: the layers grow_llm added leave the "llm" group for one at their own rate; nothing
    else moves group, and no parameter is lost or doubled."""
    import copy
    from types import SimpleNamespace

    from hydra_core.train.stages import configure_stage

    model = copy.deepcopy(tiny_model)
    new = model.grow_llm(6)
    groups = configure_stage(model, STAGES["umm2"])
    split = build.Builder._with_new_layer_rate(SimpleNamespace(new_layers=new, new_layer_lr=3e-3, model=model), groups)
    names = {id(p): n for n, p in model.named_parameters()}
    by_group = {g["name"]: (g["lr"], {names[id(p)] for p in g["params"]}) for g in split}
    lr, moved = by_group["llm_new_layers"]
    assert lr == 3e-3 and moved == {n for n in names.values() if n.startswith(("llm.model.layers.2.", "llm.model.layers.5."))}
    assert by_group["llm"][0] == STAGES["umm2"].groups["llm"] and not moved & by_group["llm"][1]
    assert sorted(n for _, ns in by_group.values() for n in ns) == sorted(names[id(p)] for g in groups for p in g["params"])
