"""Self-check: the model reads its own image back and answers the questions its prompt implies.

A prompt in ShapesWorld's vocabulary ("a photo of two red circles", "a small yellow square at the top
left and a large blue star ...", "a photo of a red circle left of a blue star") implies answers to
the one-word questions the model was taught (how many, what colour, is there, which side). Each
generated image is asked them through the understanding path (Sem-ViT -> LLM -> language head),
exactly as the Chat tab would; the image agrees with its prompt when every answer is the implied one.
Words outside the vocabulary imply nothing, so a prompt the model cannot check gets no questions.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

from .data import shapesworld as sw
from .prompts import mentions, relation_between

if TYPE_CHECKING:
    from PIL import Image

    from .pipeline import HydraPipeline

ANSWER_TOKENS = 32  # one-word answers, or a relation's reasoning (at most 20 tokens) before its one word


@dataclass(frozen=True)
class Check:
    question: str
    expected: str


@dataclass(frozen=True)
class Answer:
    question: str
    expected: str
    answer: str

    @property
    def agrees(self) -> bool:
        return self.answer == self.expected


def prompt_checks(prompt: str) -> list[Check]:
    """The questions (in the templates the model was trained on, `shapesworld.qa_pairs`) whose answers
    the prompt fixes."""
    named = mentions(prompt)
    per_shape = Counter(m.shape for m in named)
    checks: list[Check] = []
    for m in named:
        alone = per_shape[m.shape] == 1  # the only mention of its shape: its count is the shape's count
        if alone:
            checks.append(Check(f"how many {m.shape}s are there?", sw.NUMBER_WORDS[min(m.count, 6)]))
        if m.color and m.count == 1:
            checks.append(Check(f"is there a {m.color} {m.shape}?", "yes"))
            if alone:
                checks.append(Check(f"what color is the {m.shape}?", m.color))
    for a, b in zip(named, named[1:]):  # "a red circle left of a blue star"
        relation = relation_between(prompt, a, b)
        if relation and a.color and b.color and a.count == b.count == 1:
            checks.append(Check(f"is the {a.color} {a.shape} {relation} the {b.color} {b.shape}?", "yes"))
    return list(dict.fromkeys(checks))  # drop repeats, keep order


def normalize_answer(reply: str) -> str:
    """Lowercase, strip punctuation and whitespace, keep the first word (the first after the last ", so ", where a
    reply reasons before it answers: `sw.QA.reasoned_answer`); digits become number words."""
    words = re.findall(r"[a-z0-9]+", reply.lower().rsplit(", so ", 1)[-1])
    word = words[0] if words else ""
    return sw.NUMBER_WORDS[int(word)] if word.isdigit() and int(word) < len(sw.NUMBER_WORDS) else word


def ask(pipe: "HydraPipeline", image: "Image.Image | None", question: str) -> str:
    """One question about one image (or none), answered greedily: the model's raw reply."""
    content = [{"type": "text", "text": question}]
    if image is not None:
        content.insert(0, {"type": "image", "image": image})
    return pipe.chat_text([{"role": "user", "content": content}], max_new_tokens=ANSWER_TOKENS, temperature=0.0)


def self_check(pipe: "HydraPipeline", image: "Image.Image", prompt: str,
               checks: Iterable[Check] | None = None) -> list[Answer]:
    """Ask `image` every question `prompt` implies; [] when the prompt implies none."""
    checks = prompt_checks(prompt) if checks is None else checks
    return [Answer(c.question, c.expected, normalize_answer(ask(pipe, image, c.question))) for c in checks]


def agreement(answers: list[Answer]) -> bool | None:
    """Whether the image agrees with its prompt (every answer as implied); None when nothing was asked."""
    return all(a.agrees for a in answers) if answers else None
