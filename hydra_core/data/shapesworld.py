"""ShapesWorld: a procedural world of coloured shapes on light backgrounds.

A scene holds 1-4 non-overlapping objects (circle, square, triangle, star) in
six saturated colours and two sizes, drawn on a light, low-saturation
background (plain, grainy or striped, in a few tints).  The module provides

* scene sampling and anti-aliased rendering (with an optional object mask),
* captions and one-word question/answer pairs about a scene,
* GenEval-format prompts (``sample_prompt``), scenes that satisfy them
  (``scene_for_prompt``) and the ground-truth check (``scene_satisfies``),
* a pixel-only oracle (``detect_objects``, ``evaluate_prompt``) that plays
  the role of GenEval's object detector for generated images.

Coordinates are pixels of the scene canvas (``Scene.canvas``, 64 by default),
x to the right and y downwards.  Spatial relations are always judged in
64-pixel units with the same rule (``relations``) by the ground truth, the
oracle and the relation questions.  Sampled layouts avoid configurations that
lie within ``CRISP_SLACK`` pixels of a relation threshold, so every relation
statement about a sampled scene is unambiguous.

All randomness comes from ``np.random.Generator`` arguments; the background
texture and colour jitter of a scene are seeded by ``Scene.seed``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from skimage.color import rgb2hsv

from .images import to_rgb_ubyte

IMAGE_SIZE = 64
SHAPES = ("circle", "square", "triangle", "star")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "yellow": (240, 200, 30),
    "green": (40, 170, 60),
    "cyan": (30, 180, 200),
    "blue": (40, 70, 210),
    "purple": (150, 50, 200),
}
SIZES: dict[str, float] = {"small": 7.0, "large": 11.0}  # base radius at 64 px
RELATIONS = ("left of", "right of", "above", "below")
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
QTYPES = ("count", "color", "shape", "exist", "relation")
BACKGROUNDS = ("plain", "grain", "stripes")
TINTS: dict[str, tuple[int, int, int]] = {
    "white": (244, 244, 242),
    "cream": (246, 239, 224),
    "mist": (228, 235, 243),
    "sage": (232, 240, 228),
    "rose": (245, 233, 235),
}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six")
MAX_OBJECTS = 4

RELATION_MARGIN = 3.0  # |offset| must exceed this (64-px units)
RELATION_RATIO = 0.5  # main-axis offset must exceed ratio * cross-axis offset
CRISP_SLACK = 1.0  # sampled layouts stay this far (px) from any threshold
MIN_GAP = 3.0  # minimum free space between object outlines (64-px units)
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}

_SUPERSAMPLE = 4
_RESTARTS, _TRIES_PER_OBJECT = 12, 60  # layout search budget before shrinking an object
_CIRCUMRADIUS = {"circle": 1.0, "square": 0.9 * math.sqrt(2.0), "triangle": 1.4, "star": 1.35}
_BACKGROUND_WORDS = {"plain": "plain", "grain": "grainy", "stripes": "striped"}


# --------------------------------------------------------------------------- scenes
@dataclass
class SceneObject:
    shape: str
    color: str
    size: str
    x: float  # centre, pixels of the scene canvas
    y: float


@dataclass
class Scene:
    objects: list[SceneObject]
    background: str = "plain"
    tint: str = "white"
    seed: int = 0  # seeds background texture and colour jitter
    canvas: int = IMAGE_SIZE  # side of the pixel frame the coordinates live in

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Scene":
        objects = [SceneObject(**o) for o in data["objects"]]
        return cls(objects=objects, **{k: v for k, v in data.items() if k != "objects"})


def object_radius(obj_size: str, canvas: int = IMAGE_SIZE) -> float:
    """Base radius (pixels) of an object of the given size class."""
    return SIZES[obj_size] * canvas / IMAGE_SIZE


def object_extent(shape: str, obj_size: str, canvas: int = IMAGE_SIZE) -> float:
    """Radius of the circle that encloses the drawn shape."""
    return _CIRCUMRADIUS[shape] * object_radius(obj_size, canvas)


def relations(dx: float, dy: float, slack: float = 0.0) -> set[str]:
    """Relations of A to B given the centre offset A - B in 64-px units.

    "left of" holds when dx < -RELATION_MARGIN and |dx| > RELATION_RATIO * |dy|
    (likewise for the other directions), so diagonal layouts can hold two
    relations.  ``slack`` > 0 tightens every threshold, < 0 loosens it."""
    ax, ay = abs(dx), abs(dy)
    out = set()
    horizontal = ax > RELATION_MARGIN + slack and ax - RELATION_RATIO * ay > slack
    vertical = ay > RELATION_MARGIN + slack and ay - RELATION_RATIO * ax > slack
    if horizontal:
        out.add("left of" if dx < 0 else "right of")
    if vertical:
        out.add("above" if dy < 0 else "below")
    return out


def _offset64(a: SceneObject, b: SceneObject, canvas: int) -> tuple[float, float]:
    k = IMAGE_SIZE / canvas
    return (a.x - b.x) * k, (a.y - b.y) * k


def object_relations(a: SceneObject, b: SceneObject, canvas: int = IMAGE_SIZE) -> set[str]:
    """Relations of object ``a`` to object ``b`` (e.g. {"left of", "above"})."""
    return relations(*_offset64(a, b, canvas))


def is_crisp(a: SceneObject, b: SceneObject, canvas: int = IMAGE_SIZE) -> bool:
    """True when no relation between a and b is within CRISP_SLACK of a threshold."""
    dx, dy = _offset64(a, b, canvas)
    return relations(dx, dy, CRISP_SLACK) == relations(dx, dy, -CRISP_SLACK)


def _fits(obj: SceneObject, others: list[SceneObject], canvas: int) -> bool:
    """No overlap (with a gap) and crisp relations between obj and others."""
    gap = MIN_GAP * canvas / IMAGE_SIZE
    e = object_extent(obj.shape, obj.size, canvas)
    for other in others:
        min_dist = e + object_extent(other.shape, other.size, canvas) + gap
        if math.hypot(obj.x - other.x, obj.y - other.y) < min_dist:
            return False
        if not is_crisp(obj, other, canvas):
            return False
    return True


def _place(rng: np.random.Generator, specs: list[tuple[str, str, str]], canvas: int,
           relation: tuple[int, str, int] | None = None) -> list[SceneObject]:
    """Place objects given as (shape, color, size) one by one by rejection sampling.

    ``relation`` = (i, rel, j) with j < i demands that object i stands ``rel``
    object j.  Large objects are shrunk to small when no layout is found."""
    specs = list(specs)
    for _ in range(len(specs) + 1):
        for _ in range(_RESTARTS):
            objects: list[SceneObject] = []
            for k, (shape, color, obj_size) in enumerate(specs):
                e = object_extent(shape, obj_size, canvas) + 1.0
                for _ in range(_TRIES_PER_OBJECT):
                    x, y = rng.uniform(e, canvas - e, size=2)
                    obj = SceneObject(shape, color, obj_size, float(x), float(y))
                    if relation is not None and relation[0] == k:
                        if relation[1] not in object_relations(obj, objects[relation[2]], canvas):
                            continue
                    if _fits(obj, objects, canvas):
                        objects.append(obj)
                        break
                else:
                    break
            if len(objects) == len(specs):
                return objects
        large = [k for k, s in enumerate(specs) if s[2] == "large"]
        if not large:
            break
        k = int(rng.choice(large))
        specs[k] = (specs[k][0], specs[k][1], "small")
    raise RuntimeError(f"could not place objects {specs}")


def _make_scene(rng: np.random.Generator, specs: list[tuple[str, str, str]], canvas: int,
                relation: tuple[int, str, int] | None = None) -> Scene:
    objects = _place(rng, specs, canvas, relation)
    return Scene(objects=objects,
                 background=str(rng.choice(BACKGROUNDS)),
                 tint=str(rng.choice(list(TINTS))),
                 seed=int(rng.integers(0, 2**31 - 1)),
                 canvas=canvas)


def _random_spec(rng: np.random.Generator, shape: str | None = None, color: str | None = None,
                 obj_size: str | None = None) -> tuple[str, str, str]:
    return (shape or str(rng.choice(SHAPES)), color or str(rng.choice(list(COLORS))),
            obj_size or str(rng.choice(list(SIZES))))


def sample_scene(rng: np.random.Generator, n_objects: int | None = None,
                 size: int = IMAGE_SIZE) -> Scene:
    """A random scene with 1-4 non-overlapping objects fully inside the canvas."""
    n = int(rng.integers(1, MAX_OBJECTS + 1)) if n_objects is None else int(n_objects)
    if not 1 <= n <= MAX_OBJECTS:
        raise ValueError(f"n_objects must be in 1..{MAX_OBJECTS}, got {n}")
    return _make_scene(rng, [_random_spec(rng) for _ in range(n)], size)


# --------------------------------------------------------------------------- rendering
def _outline(shape: str, x: float, y: float, r: float) -> list[tuple[float, float]]:
    """Polygon vertices of a (non-circle) shape of base radius r centred at (x, y)."""
    if shape == "square":
        h = 0.9 * r
        return [(x - h, y - h), (x + h, y - h), (x + h, y + h), (x - h, y + h)]
    if shape == "triangle":
        R = _CIRCUMRADIUS["triangle"] * r
        angles = [math.radians(a) for a in (-90.0, 30.0, 150.0)]
        return [(x + R * math.cos(a), y + R * math.sin(a)) for a in angles]
    if shape == "star":
        R = _CIRCUMRADIUS["star"] * r
        pts = []
        for k in range(10):
            rad = R if k % 2 == 0 else 0.5 * R
            a = math.radians(-90.0 + 36.0 * k)
            pts.append((x + rad * math.cos(a), y + rad * math.sin(a)))
        return pts
    raise ValueError(f"unknown shape {shape!r}")


def _coverage(obj: SceneObject, size: int, scale: float) -> np.ndarray:
    """Fraction of each output pixel covered by the object, float32 [size, size]."""
    ss = _SUPERSAMPLE
    big = Image.new("L", (size * ss, size * ss), 0)
    draw = ImageDraw.Draw(big)
    # pixel centres sit at integer + 0.5; shift so that object centres are exact
    x, y = obj.x * scale * ss - 0.5, obj.y * scale * ss - 0.5
    r = object_radius(obj.size) * size / IMAGE_SIZE * ss
    if obj.shape == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
    else:
        draw.polygon(_outline(obj.shape, x, y, r), fill=255)
    small = big.resize((size, size), Image.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _background(scene: Scene, size: int, rng: np.random.Generator) -> np.ndarray:
    """Light, low-saturation background, float32 [size, size, 3]."""
    base = np.array(TINTS[scene.tint], dtype=np.float32)
    img = np.broadcast_to(base, (size, size, 3)).copy()
    if scene.background == "grain":
        img += rng.normal(0.0, 5.0, size=(size, size, 1)).astype(np.float32)
    elif scene.background == "stripes":
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) * (IMAGE_SIZE / size)
        period = rng.uniform(6.0, 12.0)
        direction = rng.choice([(1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (1.0, -1.0)])
        phase = (xx * direction[0] + yy * direction[1]) / period + rng.uniform(0, 1)
        stripe = np.clip(3.0 * np.sin(2 * np.pi * phase), -1.0, 1.0) * 0.5 + 0.5
        img -= rng.uniform(10.0, 18.0) * stripe[..., None]
    elif scene.background != "plain":
        raise ValueError(f"unknown background {scene.background!r}")
    return img


def render(scene: Scene, size: int = IMAGE_SIZE,
           return_mask: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Render a scene to uint8 [size, size, 3].

    With ``return_mask`` also returns an int16 [size, size] mask holding the
    index of the object covering each pixel (coverage >= 0.5) or -1."""
    rng = np.random.default_rng(scene.seed)
    img = _background(scene, size, rng)
    mask = np.full((size, size), -1, dtype=np.int16)
    scale = size / scene.canvas
    for k, obj in enumerate(scene.objects):
        cov = _coverage(obj, size, scale)
        jitter = rng.uniform(-8.0, 8.0, size=3)
        color = np.clip(np.array(COLORS[obj.color], dtype=np.float32) + jitter, 0, 255)
        img = img * (1.0 - cov[..., None]) + color * cov[..., None]
        mask[cov >= 0.5] = k
    out = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return (out, mask) if return_mask else out


# --------------------------------------------------------------------------- language
def _number(n: int) -> str:
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def _plural(shape: str) -> str:
    return shape + "s"


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _phrase(obj: SceneObject, with_size: bool = False, article: str = "a") -> str:
    words = [article] + ([obj.size] if with_size else []) + [obj.color, obj.shape]
    return " ".join(words)


def _unique(scene: Scene, obj: SceneObject) -> bool:
    return sum(o.shape == obj.shape and o.color == obj.color for o in scene.objects) == 1


def _crisp_pairs(scene: Scene) -> list[tuple[SceneObject, SceneObject, set[str]]]:
    """Ordered pairs of uniquely describable objects with a non-empty, crisp relation."""
    pairs = []
    for a in scene.objects:
        for b in scene.objects:
            if a is b or not (_unique(scene, a) and _unique(scene, b)):
                continue
            rels = object_relations(a, b, scene.canvas)
            if rels and is_crisp(a, b, scene.canvas):
                pairs.append((a, b, rels))
    return pairs


def _count_phrase(scene: Scene) -> str:
    counts = [(s, sum(o.shape == s for o in scene.objects)) for s in SHAPES]
    parts = [f"{_number(c)} {_plural(s) if c > 1 else s}" for s, c in counts if c > 0]
    return _join(parts)


def captions(scene: Scene, rng: np.random.Generator) -> list[str]:
    """Several lowercase phrasings of the scene."""
    def listing(with_size: bool) -> str:
        order = rng.permutation(len(scene.objects))
        return _join([_phrase(scene.objects[i], with_size) for i in order])

    n = len(scene.objects)
    noun = "object" if n == 1 else "objects"
    out = [
        listing(False),
        f"{_number(n)} {noun}: {listing(bool(rng.integers(2)))}",
        f"a photo of {listing(False)}",
        _count_phrase(scene),
        f"{listing(bool(rng.integers(2)))} on a {_BACKGROUND_WORDS[scene.background]} background",
    ]
    pairs = _crisp_pairs(scene)
    if pairs:
        a, b, rels = pairs[int(rng.integers(len(pairs)))]
        rel = sorted(rels)[int(rng.integers(len(rels)))]
        out.append(f"{_phrase(a, True)} {rel} {_phrase(b, True)}")
    return out


_GRID_PLACES = (("at the top left", "at the top", "at the top right"),
                ("at the left", "in the centre", "at the right"),
                ("at the bottom left", "at the bottom", "at the bottom right"))


def grid_place(obj: SceneObject, canvas: int = IMAGE_SIZE) -> str:
    """Where the object's centre lies on a 3x3 grid of the canvas ("at the top left", ...)."""
    col, row = (min(2, int(3 * v / canvas)) for v in (obj.x, obj.y))
    return _GRID_PLACES[row][col]


def dense_caption(scene: Scene) -> str:
    """Every object's size, colour, shape and 3x3 place in reading order, then the background:
    "a large red circle at the top left and a small blue star in the centre, on a grainy cream background".
    It names nearly everything that varies in a scene, so a generator trained on it has to listen."""
    order = sorted(scene.objects, key=lambda o: (min(2, int(3 * o.y / scene.canvas)), o.x))
    parts = [f"{_phrase(o, with_size=True)} {grid_place(o, scene.canvas)}" for o in order]
    return f"{_join(parts)}, on a {_BACKGROUND_WORDS[scene.background]} {scene.tint} background"


@dataclass
class QA:
    question: str
    answer: str
    qtype: str
    reasoning: str = ""  # relation questions: both objects' 3x3 places (`grid_place`), which decide the answer
    holds: str = ""  # relation questions: the relation on the asked axis that holds ("above" when asked "below?")

    def reasoned_answer(self, compared: bool = False) -> str:
        """The answer after its reasoning, if any: "red circle at the top left, blue star at the bottom, so yes".
        Places decide all but about 2% of relation answers (both in one row or column). The reasoning opens with
        a colour, a one-token word, not with "the", whose first token ("t") the place answers ("a", "t", " the",
        ...) had taught to be followed by " the": replies opening with "the" derailed into "t the top right".
        With ``compared``, the relation that holds on the asked axis comes between places and answer ("..., blue
        star at the bottom, it is above, so yes"): it depends on the two places and the axis alone (either way of
        asking gives the same words), and the yes or no then only on whether it is the asked relation."""
        if not self.reasoning:
            return self.answer
        stated = f", it is {self.holds}" if compared and self.holds else ""
        return f"{self.reasoning}{stated}, so {self.answer}"

    def flipped(self) -> "QA":
        """A relation question asked the other way round ("left of" <-> "right of", ...), with the other answer."""
        (asked,) = [r for r in RELATIONS if f" {r} the " in self.question]
        return QA(self.question.replace(f" {asked} the ", f" {OPPOSITE[asked]} the "),
                  "no" if self.answer == "yes" else "yes", self.qtype, self.reasoning, self.holds)


def qa_pairs(scene: Scene, rng: np.random.Generator) -> list[QA]:
    """Question/answer pairs with one-word answers; only unambiguous questions."""
    objs = scene.objects
    out = [QA("how many objects are there?", _number(len(objs)), "count")]
    # ask about a present shape/colour 60% of the time, any shape/colour otherwise
    shape = str(rng.choice([o.shape for o in objs] if rng.random() < 0.6 else SHAPES))
    n_shape = sum(o.shape == shape for o in objs)
    out.append(QA(f"how many {_plural(shape)} are there?", _number(n_shape), "count"))
    color = str(rng.choice([o.color for o in objs] if rng.random() < 0.6 else list(COLORS)))
    n_color = sum(o.color == color for o in objs)
    out.append(QA(f"how many {color} objects are there?", _number(n_color), "count"))

    lone_shapes = [s for s in SHAPES if sum(o.shape == s for o in objs) == 1]
    if lone_shapes:
        s = str(rng.choice(lone_shapes))
        obj = next(o for o in objs if o.shape == s)
        out.append(QA(f"what color is the {s}?", obj.color, "color"))
    lone_colors = [c for c in COLORS if sum(o.color == c for o in objs) == 1]
    if lone_colors:
        c = str(rng.choice(lone_colors))
        obj = next(o for o in objs if o.color == c)
        out.append(QA(f"what shape is the {c} object?", obj.shape, "shape"))

    present = {(o.color, o.shape) for o in objs}
    c, s = sorted(present)[int(rng.integers(len(present)))]
    out.append(QA(f"is there a {c} {s}?", "yes", "exist"))
    absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]
    c, s = absent[int(rng.integers(len(absent)))]
    out.append(QA(f"is there a {c} {s}?", "no", "exist"))

    pairs = _crisp_pairs(scene)
    if pairs:
        a, b, rels = pairs[int(rng.integers(len(pairs)))]
        rel = sorted(rels)[int(rng.integers(len(rels)))]
        answer = "yes" if rng.random() < 0.5 else "no"
        asked = rel if answer == "yes" else OPPOSITE[rel]
        q = f"is the {a.color} {a.shape} {asked} the {b.color} {b.shape}?"
        places = f"{a.color} {a.shape} {grid_place(a, scene.canvas)}, {b.color} {b.shape} {grid_place(b, scene.canvas)}"
        out.append(QA(q, answer, "relation", places, rel))
    return out


# --------------------------------------------------------------------------- GenEval prompts
def sample_prompt(rng: np.random.Generator, tag: str | None = None) -> dict[str, Any]:
    """GenEval-style metadata: {"tag", "prompt", "include", ["exclude"]}."""
    tag = str(rng.choice(TAGS)) if tag is None else tag
    colors = list(COLORS)
    if tag == "single_object":
        s = str(rng.choice(SHAPES))
        return {"tag": tag, "prompt": f"a photo of a {s}", "include": [{"class": s, "count": 1}]}
    if tag == "two_object":
        s1, s2 = (str(v) for v in rng.choice(SHAPES, size=2, replace=False))
        return {"tag": tag, "prompt": f"a photo of a {s1} and a {s2}",
                "include": [{"class": s1, "count": 1}, {"class": s2, "count": 1}]}
    if tag == "counting":
        s, n = str(rng.choice(SHAPES)), int(rng.integers(2, 5))
        return {"tag": tag, "prompt": f"a photo of {_number(n)} {_plural(s)}",
                "include": [{"class": s, "count": n}], "exclude": [{"class": s, "count": n + 1}]}
    if tag == "colors":
        s, c = str(rng.choice(SHAPES)), str(rng.choice(colors))
        return {"tag": tag, "prompt": f"a photo of a {c} {s}",
                "include": [{"class": s, "count": 1, "color": c}]}
    if tag == "position":
        s1, s2 = (str(v) for v in rng.choice(SHAPES, size=2, replace=False))
        rel = str(rng.choice(RELATIONS))
        return {"tag": tag, "prompt": f"a photo of a {s1} {rel} a {s2}",
                "include": [{"class": s2, "count": 1},
                            {"class": s1, "count": 1, "position": [rel, 0]}]}
    if tag == "color_attr":
        s1, s2 = (str(v) for v in rng.choice(SHAPES, size=2, replace=False))
        c1, c2 = (str(v) for v in rng.choice(colors, size=2, replace=False))
        return {"tag": tag, "prompt": f"a photo of a {c1} {s1} and a {c2} {s2}",
                "include": [{"class": s1, "count": 1, "color": c1},
                            {"class": s2, "count": 1, "color": c2}]}
    raise ValueError(f"unknown tag {tag!r}")


def scene_for_prompt(meta: dict[str, Any], rng: np.random.Generator,
                     size: int = IMAGE_SIZE) -> Scene:
    """A random scene holding exactly the objects the prompt names, of an entry's "size" where it gives one
    (unless no layout fits: `_place` then shrinks large objects)."""
    specs: list[tuple[str, str, str]] = []
    first: list[int] = []  # index of the first object of each include entry
    relation = None
    for req in meta["include"]:
        first.append(len(specs))
        if "position" in req:  # position entries name a single object
            rel, target = req["position"]
            relation = (len(specs), rel, first[int(target)])
        for _ in range(int(req["count"])):
            specs.append(_random_spec(rng, req["class"], req.get("color"), req.get("size")))
    scene = _make_scene(rng, specs, size, relation)
    if not scene_satisfies(scene, meta):  # safety net; should not happen
        raise RuntimeError(f"generated scene does not satisfy {meta.get('prompt', meta)!r}")
    return scene


def _check(objs: list[tuple[str, str, float, float]], meta: dict[str, Any]) -> tuple[bool, str]:
    """GenEval rules on objects given as (shape, color, x, y) in 64-px units."""
    correct, reasons = True, []
    groups: list[list[tuple[str, str, float, float]] | None] = []
    for req in meta.get("include", []):
        cls, count = req["class"], int(req["count"])
        found = [o for o in objs if o[0] == cls]
        matched = True
        if len(found) < count:
            matched = False
            reasons.append(f"expected {cls}>={count}, found {len(found)}")
        elif "color" in req:
            found = [o for o in found if o[1] == req["color"]]
            if len(found) < count:
                matched = False
                reasons.append(f"expected {req['color']} {cls}>={count}, found {len(found)}")
        if matched and "position" in req:
            rel, target = req["position"]
            group = groups[int(target)] if int(target) < len(groups) else None
            if group is None:
                matched = False
                reasons.append(f"no target for {cls} to be {rel}")
            elif not all(rel in relations(a[2] - b[2], a[3] - b[3]) for a in found for b in group):
                matched = False
                reasons.append(f"expected {cls} {rel} target {target}")
        correct &= matched
        groups.append(found if matched else None)
    for req in meta.get("exclude", []):
        n = sum(o[0] == req["class"] for o in objs)
        if n >= int(req["count"]):
            correct = False
            reasons.append(f"expected {req['class']}<{req['count']}, found {n}")
    return correct, ("ok" if correct else "; ".join(reasons))


def scene_satisfies(scene: Scene, meta: dict[str, Any]) -> bool:
    """Ground truth: does the scene record satisfy the prompt metadata?"""
    k = IMAGE_SIZE / scene.canvas
    objs = [(o.shape, o.color, o.x * k, o.y * k) for o in scene.objects]
    return _check(objs, meta)[0]


# --------------------------------------------------------------------------- oracle
@dataclass
class Detection:
    shape: str
    color: str
    cx: float  # centroid, 64-px units
    cy: float
    area: int  # pixels at 64x64
    bbox: tuple[int, int, int, int]  # (x0, y0, x1, y1), x1/y1 exclusive
    harmonics: tuple[float, ...] = field(default=(), repr=False)  # orders 3, 4, 5


MIN_SATURATION = 0.35  # objects ~0.75-0.9, backgrounds < 0.2
MIN_VALUE = 0.25
MIN_AREA = 20  # pixels at 64x64; smallest object ~110


def _to_rgb64(image: np.ndarray) -> np.ndarray:
    """Any image (uint8/float/bool, grey/RGB/RGBA, any size) -> float32 [64, 64, 3] in [0, 1]."""
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] not in (3, 4):
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or arr.shape[0] == 0 or arr.shape[1] == 0:
        return np.ones((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)
    arr = to_rgb_ubyte(arr)
    if arr.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE):
        arr = np.asarray(Image.fromarray(arr).resize((IMAGE_SIZE, IMAGE_SIZE), Image.LANCZOS))
    return arr.astype(np.float32) / 255.0


# Hue in degrees [0, 360) of each palette colour (scikit-image's HSV).
_PALETTE_HUES = rgb2hsv(np.array([list(COLORS.values())], dtype=np.float64) / 255.0)[0, :, 0] * 360.0


# Angular harmonics of a shape's mass (orders 3, 4, 5) are large for triangles,
# squares and stars respectively and ~0 for circles; values of sharp renders:
_HARMONIC_SHAPES = ("triangle", "square", "star")
_HARMONIC_REFERENCE = np.array([0.54, 0.29, 0.52])
_ROUND_THRESHOLD = 0.09  # below this for all orders -> circle (blurred star: 0.14)
_RING3 = np.ones((3, 3), bool)


def _classify(harmonics: np.ndarray) -> str:
    """Shape from the angular harmonics (orders 3, 4, 5) of the object's mass."""
    if harmonics.max() < _ROUND_THRESHOLD:
        return "circle"
    return _HARMONIC_SHAPES[int(np.argmax(harmonics / _HARMONIC_REFERENCE))]


def _coverage_map(region: np.ndarray, rgb: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """Estimated fraction of each pixel covered by the object seeded by ``region``.

    Pixels near the region are projected on the line from the local background
    colour to the object colour, which undoes anti-aliasing and mild blur."""
    grown = ndimage.binary_dilation(region, _RING3)
    ring = ndimage.binary_dilation(grown, _RING3, iterations=2)
    ring &= ~ndimage.binary_dilation(grown, _RING3) & ~foreground
    if ring.any():
        background = np.median(rgb[ring], axis=0)
    elif (~foreground).any():
        background = np.median(rgb[~foreground], axis=0)
    else:
        background = np.ones(3, np.float32)
    core = ndimage.binary_erosion(region, _RING3)
    direction = np.median(rgb[core if core.any() else region], axis=0) - background
    norm = float(direction @ direction)
    if norm < 1e-4:
        return region.astype(np.float32)
    coverage = np.clip((rgb - background) @ direction / norm, 0.0, 1.0)
    coverage = np.where(grown & ~(foreground & ~region), coverage, 0.0)
    coverage[region] = np.maximum(coverage[region], 0.5)
    return coverage


def _harmonics(coverage: np.ndarray, cx: float, cy: float) -> np.ndarray:
    """|sum w r^2 e^{i k theta}| / sum w r^2 for k = 3, 4, 5 around (cx, cy)."""
    yy, xx = np.mgrid[0:coverage.shape[0], 0:coverage.shape[1]]
    dx, dy = xx + 0.5 - cx, yy + 0.5 - cy
    weights = coverage * (dx * dx + dy * dy)
    total = max(float(weights.sum()), 1e-6)
    angle = np.arctan2(dy, dx)
    return np.array([abs((weights * np.exp(1j * k * angle)).sum()) / total for k in (3, 4, 5)])


def detect_objects(image: np.ndarray) -> list[Detection]:
    """Find coloured objects in an image using pixels only (never a Scene).

    Saturated pixels are assigned to the nearest palette hue, split into
    connected components per colour, tiny specks dropped, and each component
    classified by its geometry.  Any image is accepted (resized to 64x64);
    centroids and boxes are in 64-px units."""
    rgb = _to_rgb64(image)
    hue, saturation, value = np.moveaxis(rgb2hsv(rgb), -1, 0)
    foreground = (saturation > MIN_SATURATION) & (value > MIN_VALUE)
    diff = np.abs(hue[..., None] * 360.0 - _PALETTE_HUES)
    color_index = np.argmin(np.minimum(diff, 360.0 - diff), axis=-1)
    detections = []
    # Regions are measured with scipy.ndimage, not skimage's regionprops: the centroid and box are
    # taken on each object's anti-aliasing coverage map (which reaches past its label), not the label.
    for k, name in enumerate(COLORS):
        labels, n = ndimage.label(foreground & (color_index == k))
        sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
        for label in np.flatnonzero(sizes >= MIN_AREA) + 1:
            coverage = _coverage_map(labels == label, rgb, foreground)
            cy, cx = (float(v) + 0.5 for v in ndimage.center_of_mass(coverage))
            harmonics = _harmonics(coverage, cx, cy)
            ys, xs = np.nonzero(coverage >= 0.5)
            bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            detections.append(Detection(_classify(harmonics), name, cx, cy, int(len(xs)),
                                        bbox, tuple(float(h) for h in harmonics)))
    return detections


def evaluate_prompt(image: np.ndarray, meta: dict[str, Any]) -> tuple[bool, str]:
    """GenEval-style check of an image against prompt metadata: (correct, reason)."""
    return evaluate_prompts(image, [meta])[0]


def evaluate_prompts(image: np.ndarray, metas: list[dict[str, Any]]) -> list[tuple[bool, str]]:
    """The same check against several prompts' metadata (a prompt and its controls), detecting once."""
    objs = [(d.shape, d.color, d.cx, d.cy) for d in detect_objects(image)]
    return [_check(objs, meta) for meta in metas]


# --------------------------------------------------------------------------- corpus
def text_corpus(rng: np.random.Generator, n_scenes: int) -> list[str]:
    """Captions, questions, answers and prompts of n random scenes and prompts."""
    texts: list[str] = []
    for _ in range(n_scenes):
        scene = sample_scene(rng)
        texts.extend(captions(scene, rng))
        texts.append(dense_caption(scene))
        for qa in qa_pairs(scene, rng):
            texts.extend([qa.question, qa.answer])
        texts.append(sample_prompt(rng)["prompt"])
    return texts
