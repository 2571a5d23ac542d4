"""Training: a few steps of every stage lower its loss, through the real training loop."""

import copy
import json

import pytest
import torch
from accelerate import Accelerator

from hydra_core.train import build
from hydra_core.train.loop import LoopConfig, train

STEPS = 6


@pytest.fixture(scope="module")
def builder(tmp_path_factory):
    work = tmp_path_factory.mktemp("build")
    builder = build.Builder(work, work / "out", scale=1.0, seed=0, pool_size=48)
    builder.measure_latents()  # the unified stages read the pool's latents
    return builder


@pytest.mark.parametrize("stage", ["teacher", "teacher-mean", "text", "tok1", "tok1-semantic-noise", "tok2",
                                   "umm1", "umm2", "umm3"])
def test_a_few_steps_of_each_stage_lower_its_loss(builder, stage, monkeypatch, tmp_path):
    monkeypatch.setattr(build, "BATCH", {"teacher": 16, "text": 16, "tok": 8, "umm": 12})
    if stage == "teacher-mean":
        monkeypatch.setattr(builder, "teacher_loss", "mean")
    if stage == "tok1-semantic-noise":
        monkeypatch.setattr(builder.config.tokenizer, "semantic_noise", 0.7)
    stage = stage.split("-")[0]
    plan = builder.plan(stage)
    torch.manual_seed(0)
    # The same batch and noise at every step, so the loss can only move because the stage learns.
    # Warm-up as at the start of a real run (the learning rate ramps over the first steps).
    cfg = LoopConfig(steps=STEPS, out=tmp_path / stage, warmup=10, log_every=1, save_every=1000)
    train(Accelerator(cpu=True), plan.modules, plan.groups, lambda step: plan.step_fn(0), cfg, plan.extra_optimizers,
          aux_modules=plan.aux_modules)
    records = [json.loads(line) for line in (tmp_path / stage / "log.jsonl").read_text().splitlines()]
    key = "flow" if stage == "tok2" else "loss"  # tok2's total holds a GAN term that moves with the discriminator
    assert len(records) == STEPS
    assert records[-1][key] < records[0][key], [r[key] for r in records]


def test_a_build_from_nothing_can_whiten_the_flow_space(builder):
    whitening = copy.copy(builder)  # the shared builder's model and config stay as they are
    whitening.model = copy.deepcopy(builder.model)
    whitening.config = whitening.model.config
    whitening.whiten = True
    whitening.measure_latents()
    assert whitening.config.latent_norm == "pca" and builder.config.latent_norm == "global"
    z = whitening.model.normalize(whitening.pool_latents).reshape(-1, whitening.config.tokenizer.latent_channels)
    assert 0.8 < torch.linalg.eigvalsh(torch.cov(z.T.double())).max() < 1.3


def test_token_accuracy_scores_colour_and_shape_apart():
    from hydra_core.train import data

    n_colours = len(data.COLOR_NAMES)
    labels = torch.tensor([[0, 1, 2, 1 + n_colours]])  # background, shape 0 colour 0, shape 0 colour 1, shape 1 colour 0
    assert build._token_accuracy(labels, labels, "x") == {"x_colour": 1.0, "x_shape": 1.0}
    other_shape = torch.tensor([[0, 1 + n_colours, 2 + n_colours, 1]])
    assert build._token_accuracy(other_shape, labels, "x") == {"x_colour": 1.0, "x_shape": 0.0}
    background = torch.zeros_like(labels)  # an object token called background is wrong on both counts
    assert build._token_accuracy(background, labels, "x") == {"x_colour": 0.0, "x_shape": 0.0}


def test_the_tokenizer_monitors_read_the_teacher_and_noised_latents(builder):
    teacher = builder.teacher_monitor()()
    semantic = builder.semantic_monitor()()
    assert set(teacher) == {"teacher_colour", "teacher_shape"}
    assert set(semantic) == {f"sem_t{t}_{part}" for t in ("0", "0.3", "0.6") for part in ("colour", "shape")}
    assert all(0 <= v <= 1 for v in (teacher | semantic).values())


def test_stage_state_is_saved_and_resumed(builder, monkeypatch, tmp_path):
    monkeypatch.setattr(build, "BATCH", {"teacher": 8, "text": 8, "tok": 4, "umm": 6})
    plan = builder.plan("text")
    cfg = LoopConfig(steps=4, out=tmp_path / "text", warmup=1, log_every=1, save_every=2)
    train(Accelerator(cpu=True), plan.modules, plan.groups, plan.step_fn, cfg)
    assert json.loads((tmp_path / "text" / "state" / "step.json").read_text()) == {"step": 4}
    # A second run with more steps resumes at step 4 instead of starting over.
    cfg.steps = 6
    train(Accelerator(cpu=True), plan.modules, plan.groups, plan.step_fn, cfg)
    steps = [json.loads(line)["step"] for line in (tmp_path / "text" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_a_large_pool_is_the_same_whatever_the_number_of_rendering_processes(monkeypatch):
    from hydra_core.train import data

    monkeypatch.setattr(data, "POOL_CHUNK", 8)  # pools over 8 scenes render in chunks of 2
    serial, parallel = data.make_pool(11, seed=5), data.make_pool(11, seed=5, workers=3)
    assert len(parallel.scenes) == 11
    assert (serial.images == parallel.images).all() and serial.prompts == parallel.prompts
    assert not (serial.images[0:2] == serial.images[2:4]).all()  # each chunk draws its own scenes


def test_batch_sizes_are_recorded_per_segment_in_the_samples_count():
    from hydra_core.train.card import _samples_seen

    old = {"stages": {"umm2": {"steps": 100}}}  # a segment from before batch sizes were recorded: 32
    new = {"stages": {"umm2": {"steps": 100}}, "batch": {"teacher": 32, "text": 64, "tok": 32, "umm": 64}}
    assert "9,600 unified samples" in _samples_seen([old, new])


@pytest.mark.parametrize("option", [["--semantic-noise", "0.5"], ["--teacher-loss", "balanced"]])
def test_tokenizer_options_are_refused_when_continuing_a_checkpoint(option, capsys):
    with pytest.raises(SystemExit):
        build.main([*option, "--init-from", "unused", "--work", "unused", "--out", "unused"])
    assert "build from nothing" in capsys.readouterr().err


def test_flow_time_loc_is_refused_without_a_checkpoint_to_continue(capsys):
    with pytest.raises(SystemExit):
        build.main(["--flow-time-loc", "0", "--work", "unused", "--out", "unused"])
    assert "--init-from" in capsys.readouterr().err


def test_the_types_mix_draws_question_types_evenly_and_the_default_mix_does_not():
    import collections

    import numpy as np

    from hydra_core.data import shapesworld as sw
    from hydra_core.train import data

    scenes = [sw.sample_scene(np.random.default_rng(i)) for i in range(600)]
    shares = {}
    for mix in data.QA_MIXES:
        rng, counts = np.random.default_rng(0), collections.Counter()
        for scene in scenes:
            picked = data.pick_questions(sw.qa_pairs(scene, rng), rng, mix)
            assert 1 <= len(picked) <= 3
            if mix == "types":
                assert len({qa.qtype for qa in picked}) == len(picked)  # one question per type per image
            counts.update(qa.qtype for qa in picked)
        shares[mix] = {t: counts[t] / sum(counts.values()) for t in sw.QTYPES}
    # Drawn per question, counting (3 of a scene's 8 questions) outweighs colour and relation (1 each)
    # by about 3 to 1; drawn per type, every type that a scene can be asked about weighs about the same.
    assert shares["questions"]["count"] > 3 * shares["questions"]["relation"]
    assert shares["questions"]["color"] < 0.14
    assert all(0.17 < shares["types"][t] < 0.25 for t in ("count", "color", "shape", "exist"))
    assert shares["types"]["relation"] > 0.13  # scenes of one object have no relation to ask about


def test_place_questions_ask_where_a_one_of_a_kind_object_is_and_only_the_places_mix_asks_them():
    import numpy as np

    from hydra_core.data import shapesworld as sw
    from hydra_core.train import data

    rng = np.random.default_rng(0)
    asked = 0
    for i in range(300):
        scene = sw.sample_scene(np.random.default_rng(i))
        for qa in data.place_questions(scene, rng):
            colour, shape = qa.question.removeprefix("where is the ").removesuffix("?").split()
            (obj,) = [o for o in scene.objects if (o.color, o.shape) == (colour, shape)]  # one of a kind
            assert qa.answer == sw.grid_place(obj, scene.canvas) and qa.qtype == data.PLACE_QTYPE
            asked += 1
    assert asked > 250  # only scenes where every object has a twin go without
    pool = data.make_pool(24, 0)
    for mix, expected in (("types", False), ("types_places", True)):
        rng = np.random.default_rng(1)
        turns = [m["content"] for _ in range(20) for i in range(24)
                 for m in data.understanding_conversation(pool, i, rng, "qa", mix) if m["role"] == "user"]
        questions = [t if isinstance(t, str) else t[1]["text"] for t in turns]
        assert any(q.startswith("where is the") for q in questions) is expected


def test_places_first_opens_every_conversation_with_a_place_question_and_the_dense_mix_captions_places():
    import numpy as np

    from hydra_core.data import shapesworld as sw
    from hydra_core.train import data

    pool = data.make_pool(24, 0)
    rng = np.random.default_rng(2)
    opened = 0
    for i in range(24):
        messages = data.understanding_conversation(pool, i, rng, "qa", "places_first")
        first = messages[0]["content"][1]["text"]
        has_unique = bool(data.place_questions(pool.scenes[i], np.random.default_rng(0)))
        assert first.startswith("where is the") is has_unique
        opened += has_unique
        assert len(messages) <= 6  # at most 3 turns, as the other mixes
    assert opened > 18
    places = [p for row in sw._GRID_PLACES for p in row]
    for mix, names_places in (("types_places", False), ("types_places_dense", True)):
        rng = np.random.default_rng(3)
        for i in range(24):
            caption = data.understanding_conversation(pool, i, rng, "caption", mix)[1]["content"]
            assert (caption == sw.dense_caption(pool.scenes[i])) is names_places
            assert any(p in caption for p in places) is names_places


def test_chain_mixes_answer_relations_by_way_of_both_places_which_decide_the_answer():
    import re

    import numpy as np

    from hydra_core.data import shapesworld as sw
    from hydra_core.selfcheck import normalize_answer
    from hydra_core.text import train_bpe
    from hydra_core.train import data

    rows = {p: r for r, row in enumerate(sw._GRID_PLACES) for p in row}
    cols = {p: c for row in sw._GRID_PLACES for c, p in enumerate(row)}
    rng = np.random.default_rng(0)
    decided = asked = 0
    for i in range(400):
        scene = sw.sample_scene(np.random.default_rng(i))
        for qa in sw.qa_pairs(scene, rng):
            if qa.qtype != "relation":
                assert qa.reasoning == "" and qa.reasoned_answer() == qa.answer
                continue
            a_name, relation, b_name = re.fullmatch(r"is the (\w+ \w+) (left of|right of|above|below) the (\w+ \w+)\?",
                                                    qa.question).groups()
            reply = qa.reasoned_answer()
            place_a, place_b, answer = re.fullmatch(f"{a_name} (.+), {b_name} (.+), so (yes|no)", reply).groups()
            assert answer == qa.answer == normalize_answer(reply)
            (a,) = [o for o in scene.objects if f"{o.color} {o.shape}" == a_name]  # both are one of a kind
            (b,) = [o for o in scene.objects if f"{o.color} {o.shape}" == b_name]
            # compared: the relation that holds on the asked axis, the same words whichever way it is asked
            compared = qa.reasoned_answer(compared=True)
            assert compared == qa.flipped().reasoned_answer(compared=True).replace(", so " + qa.flipped().answer,
                                                                                     ", so " + qa.answer)
            stated, final = re.fullmatch(re.escape(reply.rsplit(", so ", 1)[0]) + r", it is (.+), so (yes|no)",
                                         compared).groups()
            assert stated in sw.object_relations(a, b, scene.canvas) and stated in (relation, sw.OPPOSITE[relation])
            assert final == answer == ("yes" if stated == relation else "no") == normalize_answer(compared)
            assert (place_a, place_b) == (sw.grid_place(a, scene.canvas), sw.grid_place(b, scene.canvas))
            axis = cols if relation in ("left of", "right of") else rows
            if axis[place_a] != axis[place_b]:  # the places alone decide the answer
                holds = (axis[place_a] < axis[place_b]) == (relation in ("left of", "above"))
                assert answer == ("yes" if holds else "no"), reply
                decided += 1
            asked += 1
    assert asked > 250 and decided > 0.95 * asked
    pool = data.make_pool(40, 0)
    has_relation = [bool(sw._crisp_pairs(scene)) for scene in pool.scenes]
    for mix in ("places_first", "places_chain", "places_chain_relations", "places_chain_compared"):
        rng = np.random.default_rng(4)
        reasoned = [any(", so " in m["content"] for m in data.understanding_conversation(pool, i, rng, "qa", mix)
                        if m["role"] == "assistant") for i in range(40)]
        if mix == "places_first":
            assert not any(reasoned)
        elif mix == "places_chain":
            assert 0 < sum(reasoned) < sum(has_relation)
        else:
            assert reasoned == has_relation
    # the relation question opens some conversations, as the suites and the app ask it, and follows the place
    # question in others
    rng = np.random.default_rng(5)
    openers = [data.understanding_conversation(pool, i, rng, "qa", "places_chain_relations")[0]["content"][1]["text"]
               for i in range(40) if has_relation[i]]
    first = sum(q.startswith("is the ") for q in openers)
    assert 0.25 * len(openers) < first < 0.75 * len(openers)
    # text-only conversations under a chain mix: the dense caption names the places the reply compares
    tokenizer = train_bpe(sw.text_corpus(np.random.default_rng(0), 200), vocab_size=256)
    for mix in ("places_first", "places_chain_relations", "places_chain_compared"):
        batch = data.text_batch(tokenizer, pool, np.random.default_rng(6), 24, mix)
        texts = [tokenizer.decode(row) for row in batch["input_ids"]]
        chained = [t for t in texts if ", so " in t]
        if mix == "places_first":
            assert not chained
            continue
        assert len(chained) > 8
        asked = []
        for text in chained:
            prompt, reply = re.search(r"user\n(.*)<\|im_end\|>\n<\|im_start\|>assistant\n(.*?)<\|im_end\|>", text).groups()
            place_a, place_b, stated, answer = re.fullmatch(r"\w+ \w+ (.+?), \w+ \w+ (.+?)(, it is .+)?, so (yes|no)",
                                                            reply).groups()
            assert (stated is not None) is (mix == "places_chain_compared")
            assert place_a in prompt and place_b in prompt and " on a " in prompt  # the dense caption's background
            caption, question = prompt.rsplit(". ", 1)
            relation = re.search(r" (left of|right of|above|below) the ", question).group(1)
            asked.append((caption, question.replace(relation, "R"), sw.RELATIONS.index(relation) // 2, stated, answer))
        # each relation question beside itself asked the other way round, answered the other way
        pairs = {}
        for caption, question, axis, stated, answer in asked:
            pairs.setdefault((caption, question, axis, stated), set()).add(answer)
        assert len(pairs) <= len(asked) // 2 + 1 and all(len(a) == 2 for a in list(pairs.values())[:-1])


def test_shape_weights_draw_generation_targets_showing_the_weighted_shape_more_often():
    import numpy as np

    from hydra_core.data import shapesworld as sw
    from hydra_core.text import train_bpe
    from hydra_core.train import data

    pool = data.make_pool(400, 0)
    shows_circle = np.array([any(o.shape == "circle" for o in scene.objects) for scene in pool.scenes])
    tokenizer = train_bpe(sw.text_corpus(np.random.default_rng(0), 200), vocab_size=256)
    tokenizer.padding_side = "left"
    shares = {}
    for weights in ({}, {"circle": 3.0}):
        probs = data.shape_weights(pool, weights) if weights else None
        drawn = np.concatenate([data.generation_batch(tokenizer, pool, data.step_rng(0, step), 32, 4, 0.0,
                                                      scene_probs=probs)["index"] for step in range(40)])
        shares[bool(weights)] = shows_circle[drawn].mean()
    # A share p of scenes showing a circle, weighted 3, is drawn 3p / (3p + 1 - p) of the time.
    p = shows_circle.mean()
    assert abs(shares[False] - p) < 0.05
    assert abs(shares[True] - 3 * p / (2 * p + 1)) < 0.05 and shares[True] > shares[False] + 0.15
