"""Reading ShapesWorld prompts: which objects a prompt names, and prompt expansion.

One parser serves the app's self-check (the questions a prompt implies, `selfcheck.py`) and prompt
expansion (`expand_prompt`), so both read a prompt the same way.

Prompt expansion is a prompt rewriter (as BAGEL and DALL-E 3 put an LLM before their generators),
here a rule-based one for ShapesWorld's grammar: a short prompt ("a photo of a circle") leaves most
of a scene open (colour, size, place, background), and a small generator asked for everything at
once tends to average the open choices into an empty or muddy image. The expander makes those
choices itself, with a seeded random scene that satisfies the prompt (objects large where the prompt
names no size and they fit, which the tiny model draws best), and writes it as the dense caption the
model was also trained on ("a large cyan circle at the top right, on a plain mist background"). It
never drops a word: a prompt with anything outside the grammar it reads (a place, a background, an
unknown word) is left as typed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from .data import shapesworld as sw

_COUNTS = {"a": 1, "an": 1, **{word: n for n, word in enumerate(sw.NUMBER_WORDS)}}
_MENTION = re.compile(
    rf"\b(?:(?P<count>{'|'.join(_COUNTS)})\s+)?(?:(?P<size>{'|'.join(sw.SIZES)})\s+)?"
    rf"(?:(?P<color>{'|'.join(sw.COLORS)})\s+)?(?P<shape>{'|'.join(sw.SHAPES)})(?P<plural>s)?\b")
LAYOUT_ATTEMPTS = 8  # scenes drawn before giving up on a prompt whose named sizes do not fit
# Words a prompt may hold besides its objects and one relation and still be expanded.
_FILLER = frozenset("a an the photo picture image drawing of and with there is are draw show me please".split())


@dataclass(frozen=True)
class Mention:
    count: int
    color: str | None
    shape: str
    start: int
    end: int
    size: str | None = None


def mentions(prompt: str) -> list[Mention]:
    """The objects a prompt names, in order: count (from "a", "two", or a plural), size, colour, shape."""
    found = []
    for m in _MENTION.finditer(prompt.lower()):
        count = _COUNTS.get(m["count"] or "", 2 if m["plural"] else 1)
        found.append(Mention(count, m["color"], m["shape"], m.start(), m.end(), m["size"]))
    return found


def relation_between(prompt: str, a: Mention, b: Mention) -> str | None:
    """The relation word ("left of", "above", ...) between two consecutive mentions, if any."""
    between = prompt.lower()[a.end:b.start]
    return next((r for r in sw.RELATIONS if re.search(rf"\b{r}\b", between)), None)


def prompt_metadata(prompt: str) -> dict[str, Any] | None:
    """GenEval-style metadata ({"prompt", "include": [{"class", "count", "color"?, "size"?, "position"?}]})
    of a prompt made only of ShapesWorld objects, at most one relation between two single objects and
    filler words ("a photo of"); None for anything else (a place, a background, an unknown word)."""
    text = prompt.lower()
    named = mentions(text)
    if not named or sum(m.count for m in named) > sw.MAX_OBJECTS or any(m.count < 1 for m in named):
        return None
    relations = [r for a, b in zip(named, named[1:]) if (r := relation_between(text, a, b))]
    if len(relations) > 1 or (relations and (len(named) != 2 or named[0].count != 1 or named[1].count != 1)):
        return None
    rest = text
    for m in reversed(named):
        rest = rest[:m.start] + " " + rest[m.end:]
    for r in sw.RELATIONS:
        rest = re.sub(rf"\b{r}\b", " ", rest)
    if any(word not in _FILLER for word in re.findall(r"[a-z0-9']+", rest)) or re.search(r"[^a-z0-9'\s,.!]", rest):
        return None

    def entry(m: Mention) -> dict[str, Any]:
        return {"class": m.shape, "count": m.count, **({"color": m.color} if m.color else {}),
                **({"size": m.size} if m.size else {})}

    if relations:  # scene_for_prompt places the related object after the one it relates to
        a, b = named
        include = [entry(b), entry(a) | {"position": [relations[0], 0]}]
    else:
        include = [entry(m) for m in named]
    return {"prompt": prompt, "include": include}


def expansion_scene(prompt: str, seed: int) -> sw.Scene | None:
    """A random scene (drawn from `seed`) holding what `prompt` names, with the sizes it names (large where it
    names none and the objects fit); None when `prompt_metadata` does not read the prompt or no layout keeps
    the sizes it names."""
    meta = prompt_metadata(prompt)
    if meta is None:
        return None
    # Sizes the prompt leaves open are drawn large (shrunk where no layout fits): the tiny model draws a large
    # object right far more often (GenEval-style 0.45 against 0.35 with random sizes, 120 prompts, the card).
    preferred = {**meta, "include": [{"size": "large", **req} for req in meta["include"]]}
    for attempt in range(LAYOUT_ATTEMPTS):
        try:
            scene = sw.scene_for_prompt(preferred, np.random.default_rng([int(seed), 7, attempt]))
        except RuntimeError:  # no layout found for these objects
            continue
        if all(_kept(scene, req) for req in meta["include"]):
            return scene
    return None


def _kept(scene: sw.Scene, req: dict[str, Any]) -> bool:
    """Whether the scene still holds the entry's objects at the size it names (a layout that found no room
    shrinks large objects, and the caption would contradict the prompt)."""
    kept = [o for o in scene.objects if o.shape == req["class"] and o.size == req.get("size", o.size)
            and o.color == req.get("color", o.color)]
    return len(kept) >= req["count"]


def expand_prompt(prompt: str, seed: int) -> str | None:
    """The dense caption of `expansion_scene(prompt, seed)`, or None (the prompt is then used as typed)."""
    scene = expansion_scene(prompt, seed)
    return None if scene is None else sw.dense_caption(scene)
