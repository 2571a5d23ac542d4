"""Training batches for every stage, drawn from ShapesWorld and the bundled photos.

Scenes are rendered once into a pool (rendering costs ~6 ms a scene); texts are drawn fresh from
each scene record at every step. Every batch is a pure function of (seed, step), so a resumed run
sees the same data as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerFast

from ..config import NULL_TOKEN
from ..data import photos, shapesworld as sw
from ..text import expand_images, generation_text, render_chat

DESCRIBE = ("describe the image.", "what is in the picture?", "caption this image.")


@dataclass
class ScenePool:
    images: np.ndarray  # uint8 [M, S, S, 3]
    masks: np.ndarray  # int16 [M, S, S]
    scenes: list
    prompts: list  # GenEval metadata when the scene was drawn for a prompt, else None


# A pool of up to POOL_CHUNK scenes is drawn by one generator seeded `seed` (the pools every segment so
# far trained on); a larger one in chunks of POOL_CHUNK // 4, chunk k drawn by a generator seeded
# [seed, k], so that it renders in parallel and is the same pool whatever the number of workers.
POOL_CHUNK = 6000


def _render_chunk(args: tuple[int, int | None, int, float]) -> ScenePool:
    seed, chunk, n, prompt_fraction = args
    rng = np.random.default_rng(seed if chunk is None else [seed, chunk])
    images, masks, scenes, prompts = [], [], [], []
    for _ in range(n):
        meta = sw.sample_prompt(rng) if rng.random() < prompt_fraction else None
        scene = sw.scene_for_prompt(meta, rng) if meta else sw.sample_scene(rng)
        image, mask = sw.render(scene, return_mask=True)
        images.append(image)
        masks.append(mask)
        scenes.append(scene)
        prompts.append(meta)
    return ScenePool(np.stack(images), np.stack(masks), scenes, prompts)


def make_pool(n: int, seed: int, prompt_fraction: float = 0.5, workers: int = 1) -> ScenePool:
    """n scenes: a share drawn for GenEval-style prompts (the generation targets), the rest at random.
    workers > 1 renders the chunks in that many processes (the same pool as one process renders)."""
    if n <= POOL_CHUNK:
        jobs = [(seed, None, n, prompt_fraction)]
    else:
        size = POOL_CHUNK // 4
        jobs = [(seed, k, min(size, n - start), prompt_fraction) for k, start in enumerate(range(0, n, size))]
    if workers > 1 and len(jobs) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(workers, len(jobs))) as executor:
            chunks = list(executor.map(_render_chunk, jobs))
    else:
        chunks = [_render_chunk(job) for job in jobs]
    return ScenePool(np.concatenate([c.images for c in chunks]), np.concatenate([c.masks for c in chunks]),
                     [s for c in chunks for s in c.scenes], [p for c in chunks for p in c.prompts])


def step_rng(seed: int, step: int) -> np.random.Generator:
    return np.random.default_rng([seed, step])


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 [B, S, S, 3] -> float [B, 3, S, S] in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def tokenizer_images(pool: ScenePool, rng: np.random.Generator, batch: int, photo_fraction: float) -> np.ndarray:
    n_photos = int(rng.binomial(batch, photo_fraction))
    idx = rng.integers(0, len(pool.scenes), batch - n_photos)
    parts = [pool.images[idx]]
    if n_photos:
        parts.append(photos.random_photo_crops(rng, n_photos, size=pool.images.shape[1], split="train"))
    return np.concatenate(parts)


# ---------------------------------------------------------------------- semantic teacher labels
NUM_TOKEN_CLASSES = 1 + len(sw.SHAPES) * len(sw.COLORS)
COLOR_NAMES = tuple(sw.COLORS)


def token_labels(pool: ScenePool, idx: np.ndarray, patch: int) -> torch.Tensor:
    """Per patch: 0 background, else 1 + shape * n_colours + colour of the object at the patch centre."""
    centre = patch // 2
    labels = np.zeros((len(idx), (pool.masks.shape[1] // patch) ** 2), dtype=np.int64)
    for row, i in enumerate(idx):
        grid = pool.masks[i][centre::patch, centre::patch].reshape(-1)
        for k, obj in enumerate(pool.scenes[i].objects):
            cls = 1 + sw.SHAPES.index(obj.shape) * len(COLOR_NAMES) + COLOR_NAMES.index(obj.color)
            labels[row][grid == k] = cls
    return torch.from_numpy(labels)


# ---------------------------------------------------------------------- conversations
def encode_conversation(tokenizer: PreTrainedTokenizerFast, messages: list[dict],
                        num_image_tokens: int) -> tuple[list[int], list[int]]:
    """Token ids and labels (-100 except on the assistant replies and their end token)."""
    ids: list[int] = []
    labels: list[int] = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render_chat(tokenizer, messages[:i], add_generation_prompt=True)
        full = render_chat(tokenizer, messages[: i + 1], add_generation_prompt=False)
        for text, learn in ((prompt[len(done):], False), (full[len(prompt):], True)):
            piece = tokenizer(expand_images(text, num_image_tokens), add_special_tokens=False).input_ids
            ids += piece
            labels += piece if learn else [-100] * len(piece)
        done = full
    return ids, labels


QA_MIXES = ("questions", "types", "types_places", "places_first", "types_places_dense", "places_chain",
            "places_chain_relations", "places_chain_compared")
DEFAULT_QA_MIX = "questions"  # the recipe every segment before segment 11 trained with
# "types_places": "types" with a sixth, training-only question type, "where is the red circle?" answered with its
# 3x3 place (`place_questions`); the VQA suite does not ask it, so its scores stay comparable across segments.
# "places_first": every question conversation opens with such a place question, then 0-2 turns as "types".
# "types_places_dense": "types_places" whose caption turns are answered with the dense caption (every object's
# size, colour, shape and 3x3 place), so a caption names where each object is.
# "places_chain": "places_first" whose relation questions are answered by way of both objects' places
# (`sw.QA.reasoned_answer`: "red circle at the top left, blue star at the bottom, so yes"), so the
# yes or no can read places the model has just written instead of gathering them before its first word.
# "places_chain_relations": "places_chain" with the scene's relation question (if any) in every conversation, first
# or second (until 2026-12-07 always second, after the place question: the model learnt the reasoned reply there
# but not as a conversation's first question, where the suites ask it).
# "places_chain_compared": "places_chain_relations" whose reasoned replies also state the relation that holds on the
# asked axis before the yes or no (`sw.QA.reasoned_answer(compared=True)`: "..., it is above, so yes").
CHAIN_MIXES = ("places_chain", "places_chain_relations", "places_chain_compared")
RELATION_MIXES = ("places_chain_relations", "places_chain_compared")
PLACE_QTYPE = "place"
TRAINING_QTYPES = (*sw.QTYPES, PLACE_QTYPE)


def pick_questions(qas: list[sw.QA], rng: np.random.Generator, mix: str) -> list[sw.QA]:
    """1-3 of a scene's questions. "questions": uniformly among them, so each type weighs by how many
    questions it has (count 3 of 8, exist 2, colour, shape and relation 1 each); "types": each turn a
    different type drawn uniformly among the scene's, then one of its questions, the shares the VQA
    suite scores."""
    if mix == "questions":
        picks = rng.permutation(len(qas))[: int(rng.integers(1, 4))]
        return [qas[k] for k in picks]
    types = sorted({qa.qtype for qa in qas}, key=TRAINING_QTYPES.index)
    chosen = [types[k] for k in rng.permutation(len(types))[: int(rng.integers(1, 4))]]
    out = []
    for qtype in chosen:
        of_type = [qa for qa in qas if qa.qtype == qtype]
        out.append(of_type[int(rng.integers(len(of_type)))])
    return out


def place_questions(scene: sw.Scene, rng: np.random.Generator) -> list[sw.QA]:
    """One localisation question about an object no other shares colour and shape with (none if every object
    has a twin): "where is the red circle?" -> "at the top left" (`sw.grid_place`)."""
    unique = [o for o in scene.objects if sum((p.color, p.shape) == (o.color, o.shape) for p in scene.objects) == 1]
    if not unique:
        return []
    obj = unique[int(rng.integers(len(unique)))]
    return [sw.QA(f"where is the {obj.color} {obj.shape}?", sw.grid_place(obj, scene.canvas), PLACE_QTYPE)]


def answer_text(qa: sw.QA, qa_mix: str) -> str:
    """The reply a mix trains a question with: reasoned (`sw.QA.reasoned_answer`) under the chain mixes."""
    return qa.reasoned_answer(qa_mix == "places_chain_compared") if qa_mix in CHAIN_MIXES else qa.answer


def understanding_conversation(pool: ScenePool, i: int, rng: np.random.Generator, kind: str,
                               qa_mix: str = DEFAULT_QA_MIX) -> list[dict]:
    """kind: "caption" (one turn) or "qa" (1-3 question turns, drawn by `pick_questions`)."""
    scene = pool.scenes[i]
    if kind == "caption":
        caption = sw.dense_caption(scene) if qa_mix == "types_places_dense" else sw.captions(scene, rng)[0]
        turns = [(DESCRIBE[rng.integers(len(DESCRIBE))], caption)]
    else:
        qas = sw.qa_pairs(scene, rng)
        if qa_mix in ("places_first", *CHAIN_MIXES):
            picked = place_questions(scene, rng)
            rest = pick_questions(qas, rng, "types")
            relation = [qa for qa in qas if qa.qtype == "relation"]  # at most one
            if qa_mix in RELATION_MIXES and relation:
                rest = [qa for qa in rest if qa.qtype != "relation"]
                # the question asked first as often as second: the suites and the app ask it first
                picked = relation + picked if rng.random() < 0.5 else picked + relation
            picked += rest[: 3 - len(picked)]
        else:
            if qa_mix in ("types_places", "types_places_dense"):
                qas, qa_mix = qas + place_questions(scene, rng), "types"
            picked = pick_questions(qas, rng, qa_mix)
        turns = [(qa.question, answer_text(qa, qa_mix)) for qa in picked]
    messages = []
    for j, (question, answer) in enumerate(turns):
        content = [{"type": "image"}, {"type": "text", "text": question}] if j == 0 else question
        messages += [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]
    return messages


def pad_right(rows: list[list[int]], value: int) -> torch.Tensor:
    length = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (length - len(r)) for r in rows])


def understanding_batch(tokenizer, pool: ScenePool, rng, batch: int, num_image_tokens: int, qa_share: float,
                        qa_mix: str = DEFAULT_QA_MIX):
    idx = rng.integers(0, len(pool.scenes), batch)
    rows, labels = [], []
    for i in idx:
        kind = "qa" if rng.random() < qa_share else "caption"
        messages = understanding_conversation(pool, i, rng, kind, qa_mix)
        ids, lab = encode_conversation(tokenizer, messages, num_image_tokens)
        rows.append(ids)
        labels.append(lab)
    input_ids = pad_right(rows, tokenizer.pad_token_id)
    return {"input_ids": input_ids, "attention_mask": pad_right([[1] * len(r) for r in rows], 0),
            "labels": pad_right(labels, -100), "index": idx}


def text_batch(tokenizer, pool: ScenePool, rng, batch: int, qa_mix: str = DEFAULT_QA_MIX):
    """Text-only conversations (questions answered from the caption), for the LLM's language. Under the chain
    mixes: the dense caption (which names every object's place) and the scene's relation question, answered by
    way of both places, and beside it the same question asked the other way round (any question where the
    scene has no relation), so the LLM learns to copy places and compare them where that is cheap. The yes or
    no depends on the relation word and both places jointly, none of them alone: with one relation question per
    conversation it stayed at chance for 700 steps of 64 (peak rate 3e-4); asked both ways side by side, where
    only the relation word differs, 500 more at 3e-4 were not enough, and at 6e-4 it turned near step 275
    (held-out text pairs 0.51 -> 0.99)."""
    rows, labels = [], []
    for i in rng.integers(0, len(pool.scenes), batch):
        if len(rows) >= batch:
            break
        scene = pool.scenes[i]
        caption = sw.dense_caption(scene) if qa_mix in CHAIN_MIXES else sw.captions(scene, rng)[0]
        qa = sw.qa_pairs(scene, rng)
        relation = [q for q in qa if q.qtype == "relation"] if qa_mix in CHAIN_MIXES else []
        asked = [relation[0], relation[0].flipped()] if relation else [qa[rng.integers(len(qa))]]
        for q in asked[: batch - len(rows)]:
            messages = [{"role": "user", "content": f"{caption}. {q.question}"},
                        {"role": "assistant", "content": answer_text(q, qa_mix)}]
            ids, lab = encode_conversation(tokenizer, messages, 0)
            rows.append(ids)
            labels.append(lab)
    return {"input_ids": pad_right(rows, tokenizer.pad_token_id),
            "attention_mask": pad_right([[1] * len(r) for r in rows], 0), "labels": pad_right(labels, -100)}


def generation_prompt_for(pool: ScenePool, i: int, rng: np.random.Generator, dense_share: float) -> str:
    """The text a scene is generated from: its GenEval prompt (when it was drawn for one) or a caption;
    a dense caption (every object's size, colour, shape and place, and the background) with
    probability dense_share."""
    if rng.random() < dense_share:
        return sw.dense_caption(pool.scenes[i])
    meta = pool.prompts[i]
    return meta["prompt"] if meta is not None and rng.random() < 0.7 else sw.captions(pool.scenes[i], rng)[0]


def shape_weights(pool: ScenePool, weights: dict[str, float]) -> np.ndarray:
    """Each scene's probability of being a generation target: the largest weight among the shapes it shows
    (1 for a shape not named), normalised over the pool."""
    w = np.array([max([weights.get(o.shape, 1.0) for o in scene.objects], default=1.0) for scene in pool.scenes])
    return w / w.sum()


def generation_batch(tokenizer, pool: ScenePool, rng, batch: int, num_image_tokens: int, cfg_dropout: float,
                     dense_share: float = 0.0, scene_probs: np.ndarray | None = None):
    """Prompt prefix (left-padded) + image positions; the prompt is the null token with prob cfg_dropout.
    scene_probs: the targets' distribution over the pool (`shape_weights`; None: uniform).
    "index": the pool scenes that are the targets."""
    n = len(pool.scenes)
    idx = rng.integers(0, n, batch) if scene_probs is None else rng.choice(n, batch, p=scene_probs)
    texts = []
    for i in idx:
        prompt = generation_prompt_for(pool, i, rng, dense_share)
        if rng.random() < cfg_dropout:
            prompt = NULL_TOKEN
        texts.append(generation_text(tokenizer, prompt, num_image_tokens))
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask, "index": idx}
