"""The input checks of hydra_core.pipeline (to_pil, check_number, check_text, chat arguments): the
bad-image corpus, what each unusual image becomes, and property-based tests (hypothesis) that any
input either passes or gets a ValueError with a readable message, never another exception."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from bad_images import exif_rotated_jpeg, make_corpus
from hydra_core.config import SPECIAL_TOKENS
from hydra_core.pipeline import MAX_IMAGE_BYTES, check_number, check_text, to_pil

# database=None: nothing written into the repository (.hypothesis/)
FAST = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("bad-images"))


def test_corpus_is_accepted_or_refused_with_the_problem_named(corpus):
    assert len(corpus) >= 20
    for case in corpus:
        if case.accept:
            image = to_pil(case.path)
            assert image.mode == "RGB" and min(image.size) >= 8, case.name
        else:
            with pytest.raises(ValueError) as refused:
                to_pil(case.path)
            message = str(refused.value)
            assert re.search(case.refuse, message), (case.name, message)
            assert str(case.path.parent) not in message, "a server path leaked into the message"


def test_unusual_images_are_read_sensibly(corpus):
    files = {case.name: case.path for case in corpus}
    # EXIF orientation 6: stored 48x24 landscape, shown 24x48 portrait.
    assert to_pil(files["rotated.jpg"]).size == (24, 48)
    # An animation: its first frame (red), not its second (blue).
    red, _, blue = np.asarray(to_pil(files["animated.gif"]), dtype=int)[24, 24]
    assert red > 150 and blue < 100
    # Transparent pixels become white, opaque ones keep their colour.
    alpha = np.asarray(to_pil(files["alpha.png"]))
    assert (alpha[:, :20] == 255).all() and not (alpha[:, 30:] == 255).all()
    # 16-bit: the full 0..65535 range maps onto 0..255 (not clipped to white).
    gray16 = np.asarray(to_pil(files["gray16.png"]))
    assert gray16.min() <= 2 and gray16.max() >= 253 and 100 < gray16.mean() < 155
    # CMYK, palette, grayscale: RGB with the picture's red square still red.
    for name in ("cmyk.jpg", "palette.png", "photo.jpg"):
        r, g, b = np.asarray(to_pil(files[name]), dtype=int)[18, 18]
        assert r > 150 and g < 90 and b < 90, name


def test_size_limit_is_checked_before_decoding(tmp_path):
    big = tmp_path / "big.png"
    with big.open("wb") as file:  # a sparse file: over the limit without writing 20 MB
        file.truncate(MAX_IMAGE_BYTES + 1)
    with pytest.raises(ValueError, match=r"'big.png' is 20.0 MB; images up to 20 MB"):
        to_pil(big)
    with pytest.raises(ValueError, match="does not exist"):
        to_pil(tmp_path / "missing.png")


def test_image_arrays_of_any_dtype():
    assert to_pil(np.zeros((16, 16), bool)).size == (16, 16)
    assert np.asarray(to_pil(np.full((16, 16, 4), 1.0, np.float32))).min() == 255  # opaque white
    assert np.asarray(to_pil(np.full((16, 16, 1), 65535, np.uint16))).min() == 255
    with pytest.raises(ValueError, match="NaN"):
        to_pil(np.full((16, 16, 3), np.nan))
    with pytest.raises(ValueError, match="shape"):
        to_pil(np.zeros((16, 16, 2)))
    with pytest.raises(ValueError, match="expected an image"):
        to_pil(b"\x89PNG")


def test_exif_rotation_is_honoured_through_the_pipeline(tiny_pipeline, tmp_path):
    path = tmp_path / "rotated.jpg"
    path.write_bytes(exif_rotated_jpeg())
    upright = Image.open(path).transpose(Image.Transpose.ROTATE_270)
    assert tiny_pipeline.reconstruct(path, steps=1).original.size == (tiny_pipeline.image_size,) * 2
    np.testing.assert_allclose(tiny_pipeline.encode(path), tiny_pipeline.encode(upright), atol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt="a circle", steps=2.5), "steps must be a whole number from 1 to 200, got 2.5"),
    (dict(prompt="a circle", steps="many"), "got the text 'many'"),
    (dict(prompt="a circle", guidance=math.nan), "guidance must be a number from 0 to 30, got nan"),
    (dict(prompt="a circle", num_images=True), "num_images must be a whole number from 1 to 4, got bool"),
    (dict(prompt="a circle", seed=-1), "seed must be a whole number"),
    (dict(prompt="a circle", decoder_steps=0), "decoder_steps must be"),
    (dict(prompt="a\x00circle"), r"control character U\+0000"),
    (dict(prompt="a <|image|> circle"), r"reserved"),
    (dict(prompt=" \n\t "), r"empty \(only whitespace\)"),
    (dict(prompt="x" * 5000), "5,000 characters; at most 500"),
])
def test_generation_arguments_get_named_errors(tiny_pipeline, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_pipeline.generate(**{"steps": 1, "decoder_steps": 1, **kwargs})


def test_chat_arguments_and_context(tiny_pipeline):
    def chat(messages, **kwargs):
        return tiny_pipeline.chat_text(messages, **{"max_new_tokens": 2, **kwargs})

    hello = [{"role": "user", "content": "hello"}]
    with pytest.raises(ValueError, match="temperature must be a number from 0 to 100, got -1"):
        chat(hello, temperature=-1)
    with pytest.raises(ValueError, match="top_p must be a number above 0"):
        chat(hello, top_p=0)
    with pytest.raises(ValueError, match="max_new_tokens must be a whole number"):
        chat(hello, max_new_tokens=float("inf"))
    with pytest.raises(ValueError, match="control character"):
        chat([{"role": "user", "content": "hi\x07"}])
    with pytest.raises(ValueError, match="part of a message"):
        chat([{"role": "user", "content": [{"type": "video"}]}])
    image = [{"type": "image", "image": np.zeros((16, 16, 3), np.uint8)}]
    long = [{"role": "user", "content": image * 8 + [{"type": "text", "text": "which?"}]}]  # 8 x 66 > 512 tokens
    with pytest.raises(ValueError, match="model's context of 512 tokens"):
        chat(long)
    # Any Unicode a user can type is fine, and the model's earlier replies may hold anything.
    assert isinstance(chat([{"role": "user", "content": "é 中文 👩‍👩‍👧 مرحبا \u200f"},
                            {"role": "assistant", "content": "\x01odd"}, {"role": "user", "content": "and?"}]), str)


# ------------------------------------------------------------------ properties (hypothesis)
anything = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                     st.text(max_size=30), st.lists(st.integers(), max_size=3), st.binary(max_size=8))


@FAST
@given(value=anything, low=st.integers(-10, 10), span=st.integers(0, 100), integer=st.booleans())
def test_check_number_accepts_exactly_the_range_and_names_the_parameter(value, low, span, integer):
    high = low + span
    try:
        result = check_number("steps", value, low, high, integer=integer)
    except ValueError as error:
        message = str(error)
        assert message.startswith(f"steps must be a {'whole ' if integer else ''}number")
        assert f"from {low} to {high}" in message and len(message) < 200
        return
    assert low <= result <= high and math.isfinite(result)
    assert isinstance(result, int) if integer else isinstance(result, float)
    assert not isinstance(value, (bool, type(None), list, bytes))


@FAST
@given(text=st.one_of(st.text(max_size=80), st.none(), st.integers(), st.sampled_from(SPECIAL_TOKENS)))
def test_check_text_passes_clean_text_unchanged_and_names_every_problem(text):
    try:
        result = check_text("the prompt", text, 60)
    except ValueError as error:
        assert str(error).startswith("the prompt ")
        return
    assert result == text and text.strip() and len(text) <= 60
    assert not any(token in text for token in SPECIAL_TOKENS)
    text.encode("utf-8")  # no lone surrogates


@FAST
@given(data=st.binary(max_size=600), suffix=st.sampled_from([".png", ".jpg", ".gif", ".webp", ".bmp", ".tiff"]))
def test_any_bytes_decode_or_get_a_message_without_the_server_path(tmp_path_factory, data, suffix):
    folder = tmp_path_factory.mktemp("bytes")
    path = folder / f"upload{suffix}"
    path.write_bytes(data)
    try:
        image = to_pil(path)
    except ValueError as error:
        assert str(folder) not in str(error) and "upload" in str(error)
        return
    assert image.mode == "RGB"


@FAST
@given(data=st.binary(min_size=0, max_size=400), cut=st.floats(0, 1))
def test_damaged_real_images_decode_or_get_a_message(tmp_path_factory, data, cut):
    """A real PNG / JPEG with its tail cut and random bytes spliced in."""
    from bad_images import _encode, _picture

    for fmt, suffix in (("PNG", ".png"), ("JPEG", ".jpg")):
        whole = _encode(_picture(), fmt)
        at = int(cut * len(whole))
        path = tmp_path_factory.mktemp("damaged") / f"photo{suffix}"
        path.write_bytes(whole[:at] + data + whole[at + len(data):])
        try:
            assert to_pil(path).mode == "RGB"
        except ValueError as error:
            assert "'photo" in str(error)


@FAST
@given(shape=st.lists(st.integers(0, 40), min_size=0, max_size=4),
       dtype=st.sampled_from(["uint8", "uint16", "int32", "float32", "float64", "bool", "complex64"]),
       fill=st.one_of(st.floats(-1e6, 1e6), st.sampled_from([math.nan, math.inf, -math.inf])))
def test_arrays_of_any_shape_and_dtype_decode_or_get_a_message(shape, dtype, fill):
    try:
        with np.errstate(invalid="ignore", over="ignore"):
            array = np.full(shape, fill).astype(dtype)
    except (ValueError, OverflowError):
        return
    try:
        image = to_pil(array)
    except ValueError as error:
        assert str(error)
        return
    assert image.mode == "RGB" and min(image.size) >= 8
