"""Behaviour tests for hydra_core.data (ShapesWorld and bundled photos)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from hydra_core.data import (
    COLORS,
    HELDOUT_PHOTOS,
    IMAGE_SIZE,
    NUMBER_WORDS,
    QTYPES,
    RELATIONS,
    SHAPES,
    SIZES,
    TAGS,
    Scene,
    captions,
    detect_objects,
    evaluate_prompt,
    heldout_photo_crops,
    load_photos,
    object_relations,
    qa_pairs,
    random_photo_crops,
    render,
    sample_prompt,
    sample_scene,
    scene_for_prompt,
    scene_satisfies,
    text_corpus,
)
from hydra_core.data.shapesworld import object_extent


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------- scenes
def test_sampling_and_rendering_are_deterministic():
    a, b = sample_scene(rng(7)), sample_scene(rng(7))
    assert a.to_dict() == b.to_dict()
    assert np.array_equal(render(a), render(b))
    assert captions(a, rng(1)) == captions(b, rng(1))
    assert qa_pairs(a, rng(1)) == qa_pairs(b, rng(1))
    assert sample_prompt(rng(3)) == sample_prompt(rng(3))
    assert text_corpus(rng(4), 5) == text_corpus(rng(4), 5)
    assert Scene.from_dict(a.to_dict()) == a


def test_objects_inside_and_not_overlapping():
    r = rng(1)
    counts = set()
    for _ in range(300):
        scene = sample_scene(r)
        counts.add(len(scene.objects))
        for i, a in enumerate(scene.objects):
            assert a.shape in SHAPES and a.color in COLORS and a.size in SIZES
            ea = object_extent(a.shape, a.size)
            assert ea <= a.x <= IMAGE_SIZE - ea and ea <= a.y <= IMAGE_SIZE - ea
            for b in scene.objects[:i]:
                eb = object_extent(b.shape, b.size)
                assert math.hypot(a.x - b.x, a.y - b.y) >= ea + eb + 2.0
    assert counts == {1, 2, 3, 4}
    assert [len(sample_scene(r, n).objects) for n in (1, 4)] == [1, 4]


def test_render_shapes_dtypes_and_mask():
    r = rng(2)
    for _ in range(40):
        scene = sample_scene(r)
        image, mask = render(scene, return_mask=True)
        assert image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and image.dtype == np.uint8
        assert mask.shape == (IMAGE_SIZE, IMAGE_SIZE) and mask.dtype == np.int16
        assert np.array_equal(render(scene), image)
        assert set(np.unique(mask)) == set(range(-1, len(scene.objects)))
        pixels = image.astype(float)
        background = pixels[~ndimage.binary_dilation(mask >= 0, iterations=2)]
        # light, low-saturation background
        sat = (background.max(-1) - background.min(-1)) / background.max(-1)
        assert background.mean() > 200 and np.percentile(sat, 99) < 0.2
        for k, obj in enumerate(scene.objects):
            inside = mask == k
            ys, xs = np.nonzero(inside)
            assert abs(xs.mean() + 0.5 - obj.x) < 1.0 and abs(ys.mean() + 0.5 - obj.y) < 1.0
            core = ndimage.binary_erosion(inside)
            mean_color = pixels[core].mean(axis=0)
            assert np.abs(mean_color - np.array(COLORS[obj.color])).max() < 20
    big = render(sample_scene(r), size=128)
    assert big.shape == (128, 128, 3)


# --------------------------------------------------------------------------- language
def test_captions_are_simple_lowercase_text():
    r = rng(3)
    vocab = set()
    for _ in range(100):
        scene = sample_scene(r)
        caps = captions(scene, r)
        assert len(caps) >= 4
        for cap in caps:
            assert cap == cap.lower() and cap.strip() == cap
            vocab.update(cap.replace(",", " ").replace(":", " ").split())
        for obj in scene.objects:
            assert f"{obj.color} {obj.shape}" in caps[0]
    assert len(vocab) < 60, sorted(vocab)


def test_qa_answers_match_scene():
    r = rng(4)
    qtypes = set()
    answers = {"yes": 0, "no": 0}
    for _ in range(300):
        scene = sample_scene(r)
        objs = scene.objects
        for qa in qa_pairs(scene, r):
            qtypes.add(qa.qtype)
            assert qa.qtype in QTYPES and len(qa.answer.split()) == 1
            q = qa.question
            assert q.endswith("?") and q == q.lower()
            if q == "how many objects are there?":
                assert qa.answer == NUMBER_WORDS[len(objs)]
            elif q.startswith("how many") and q.endswith("objects are there?"):
                color = q.split()[2]
                assert qa.answer == NUMBER_WORDS[sum(o.color == color for o in objs)]
            elif q.startswith("how many"):
                shape = q.split()[2][:-1]
                assert qa.answer == NUMBER_WORDS[sum(o.shape == shape for o in objs)]
            elif q.startswith("what color is the"):
                shape = q.split()[4][:-1]
                matches = [o for o in objs if o.shape == shape]
                assert len(matches) == 1 and qa.answer == matches[0].color
            elif q.startswith("what shape is the"):
                color = q.split()[4]
                matches = [o for o in objs if o.color == color]
                assert len(matches) == 1 and qa.answer == matches[0].shape
            elif q.startswith("is there a"):
                color, shape = q[:-1].split()[3:5]
                present = any(o.color == color and o.shape == shape for o in objs)
                assert qa.answer == ("yes" if present else "no")
                answers[qa.answer] += 1
            else:
                assert qa.qtype == "relation"
                rel = next(r_ for r_ in RELATIONS if f" {r_} the " in q)
                left, right = q[len("is the "):-1].split(f" {rel} the ")
                a = next(o for o in objs if f"{o.color} {o.shape}" == left)
                b = next(o for o in objs if f"{o.color} {o.shape}" == right)
                assert qa.answer == ("yes" if rel in object_relations(a, b) else "no")
                answers[qa.answer] += 1
    assert qtypes == set(QTYPES)
    assert min(answers.values()) > 0.35 * sum(answers.values())


def test_text_corpus_contains_all_kinds_of_text():
    corpus = text_corpus(rng(5), 20)
    assert all(isinstance(t, str) and t for t in corpus)
    assert any(t.startswith("a photo of") for t in corpus)
    assert any(t.endswith("?") for t in corpus) and "yes" in corpus


# --------------------------------------------------------------------------- GenEval prompts
@pytest.mark.parametrize("tag", TAGS)
def test_prompts_have_valid_geneval_metadata(tag):
    r = rng(6)
    for _ in range(30):
        meta = sample_prompt(r, tag)
        assert meta["tag"] == tag and meta["prompt"].startswith("a photo of ")
        include = meta["include"]
        for req in include:
            assert req["class"] in SHAPES and int(req["count"]) >= 1
            assert set(req) <= {"class", "count", "color", "position"}
            if "color" in req:
                assert req["color"] in COLORS and req["color"] in meta["prompt"]
        classes = [req["class"] for req in include]
        if tag in ("single_object", "colors"):
            assert len(include) == 1 and include[0]["count"] == 1
            assert ("color" in include[0]) == (tag == "colors")
        elif tag in ("two_object", "color_attr", "position"):
            assert len(include) == 2 and len(set(classes)) == 2
        if tag == "color_attr":
            assert all("color" in req for req in include)
        if tag == "counting":
            (req,) = include
            assert 2 <= req["count"] <= 4
            assert meta["exclude"] == [{"class": req["class"], "count": req["count"] + 1}]
            assert NUMBER_WORDS[req["count"]] in meta["prompt"]
        else:
            assert "exclude" not in meta
        if tag == "position":
            rel, idx = include[1]["position"]
            assert rel in RELATIONS and idx == 0 and "position" not in include[0]
            assert meta["prompt"] == f"a photo of a {classes[1]} {rel} a {classes[0]}"


def test_scene_for_prompt_satisfies_prompt():
    r = rng(7)
    for i in range(200):
        meta = sample_prompt(r, TAGS[i % len(TAGS)])
        scene = scene_for_prompt(meta, r)
        assert scene_satisfies(scene, meta), meta["prompt"]
        assert len(scene.objects) == sum(req["count"] for req in meta["include"])


def test_scene_satisfies_rejects_wrong_scenes():
    meta = {"tag": "counting", "prompt": "a photo of two stars",
            "include": [{"class": "star", "count": 2}], "exclude": [{"class": "star", "count": 3}]}
    three = scene_for_prompt({"include": [{"class": "star", "count": 3}]}, rng(1))
    assert not scene_satisfies(three, meta)
    pos = {"include": [{"class": "square", "count": 1},
                       {"class": "circle", "count": 1, "position": ["left of", 0]}]}
    scene = scene_for_prompt(pos, rng(2))
    flipped = {"include": [{"class": "square", "count": 1},
                           {"class": "circle", "count": 1, "position": ["right of", 0]}]}
    assert scene_satisfies(scene, pos) and not scene_satisfies(scene, flipped)


# --------------------------------------------------------------------------- oracle
def test_detect_objects_recovers_single_objects():
    r = rng(8)
    hits = 0
    n = 300
    for _ in range(n):
        scene = sample_scene(r, 1)
        obj = scene.objects[0]
        dets = detect_objects(render(scene))
        if len(dets) == 1 and (dets[0].shape, dets[0].color) == (obj.shape, obj.color):
            hits += 1
            assert abs(dets[0].cx - obj.x) < 1.0 and abs(dets[0].cy - obj.y) < 1.0
    assert hits / n >= 0.99


def test_oracle_agrees_with_ground_truth():
    r = rng(9)
    agree, outcomes, n = 0, [], 600
    for i in range(n):
        tag = TAGS[i % len(TAGS)]
        meta = sample_prompt(r, tag)
        mode = i % 4
        if mode < 2:
            scene = scene_for_prompt(meta, r)
        elif mode == 2:
            scene = sample_scene(r)
        else:
            scene = scene_for_prompt(sample_prompt(r, tag), r)
        truth = scene_satisfies(scene, meta)
        predicted, reason = evaluate_prompt(render(scene), meta)
        assert isinstance(reason, str)
        agree += predicted == truth
        outcomes.append(truth)
    assert agree / n >= 0.99
    positive = sum(outcomes) / n
    assert 0.2 <= positive <= 0.8


def test_oracle_never_crashes_on_odd_images():
    r = rng(10)
    meta = sample_prompt(r, "counting")
    images = [
        np.zeros((64, 64, 3), np.uint8),
        np.full((64, 64, 3), 255, np.uint8),
        r.integers(0, 256, (64, 64, 3), dtype=np.uint8),
        r.integers(0, 256, (1, 1, 3), dtype=np.uint8),
        r.integers(0, 256, (37, 91), dtype=np.uint8),
        r.integers(0, 256, (128, 96, 4), dtype=np.uint8),
        np.zeros((0, 0, 3), np.uint8),
        r.random((64, 64, 3)),
        np.zeros((64, 64, 3), bool),
    ]
    for image in images:
        assert isinstance(detect_objects(image), list)
        ok, reason = evaluate_prompt(image, meta)
        assert isinstance(ok, bool) and isinstance(reason, str)


def test_oracle_handles_resized_and_blurred_images():
    r = rng(11)
    hits, n = 0, 60
    for i in range(n):
        meta = sample_prompt(r, TAGS[i % len(TAGS)])
        scene = scene_for_prompt(meta, r)
        image = render(scene, size=128) if i % 2 else render(scene)
        blurred = ndimage.gaussian_filter(image.astype(float), (1.0, 1.0, 0)).clip(0, 255)
        hits += evaluate_prompt(blurred.astype(np.uint8), meta)[0]
    assert hits / n >= 0.9


# --------------------------------------------------------------------------- photos
def test_photo_splits_are_disjoint_and_rgb():
    train, heldout, everything = load_photos("train"), load_photos("heldout"), load_photos("all")
    assert train and heldout and not set(train) & set(heldout)
    assert set(heldout) <= set(HELDOUT_PHOTOS)
    assert set(train) | set(heldout) == set(everything)
    for image in everything.values():
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    with pytest.raises(ValueError):
        load_photos("test")


def test_photo_crops():
    crops = random_photo_crops(rng(12), 8, size=64)
    assert crops.shape == (8, 64, 64, 3) and crops.dtype == np.uint8
    assert all(c.std() > 1.0 for c in crops)
    assert np.array_equal(random_photo_crops(rng(12), 8), crops)
    held = heldout_photo_crops(6, size=32, seed=0)
    assert held.shape == (6, 32, 32, 3) and held.dtype == np.uint8
    assert np.array_equal(held, heldout_photo_crops(6, size=32, seed=0))
    assert not np.array_equal(held, heldout_photo_crops(6, size=32, seed=1))
