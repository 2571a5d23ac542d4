"""A corpus of damaged and unusual image files, generated (never downloaded) for the input tests.

`make_corpus(folder)` writes every file and returns the cases: the file, what it is, and what the app
must do with it: `accept` (decode it to an RGB picture) or refuse with a message matching `refuse`.
The same corpus runs through `hydra_core.pipeline.to_pil`, the API (/reconstruct, /chat) and the page.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 48  # ordinary test pictures: small, so decoding and the model stay fast


@dataclass(frozen=True)
class Case:
    name: str  # the file name, as a user would upload it
    what: str  # what it is, for reports
    refuse: str | None  # None: accepted; else a regex the refusal message must match
    path: Path | None = None

    @property
    def accept(self) -> bool:
        return self.refuse is None


def _picture(mode: str = "RGB", size: tuple[int, int] = (SIZE, SIZE)) -> Image.Image:
    """A deterministic picture with structure (gradients and a square), in `mode`."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) * 255 // max(w + h - 2, 1)], -1)
    rgb[h // 4: h // 2, w // 4: w // 2] = (220, 30, 30)
    image = Image.fromarray(rgb.astype(np.uint8))
    return image if mode == "RGB" else image.convert(mode)


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height 1-bit pixels but carries almost no data: what a decompression
    bomb looks like before decoding (the declared size is what the checks must look at)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def exif_rotated_jpeg() -> bytes:
    """A 48x24 landscape JPEG whose EXIF says 'rotate 90° clockwise to display' (orientation 6)."""
    image = _picture(size=(48, 24))
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(image, "JPEG", exif=exif.tobytes(), quality=95)


def animated_gif() -> bytes:
    first = Image.new("RGB", (SIZE, SIZE), (200, 40, 40))
    second = Image.new("RGB", (SIZE, SIZE), (40, 40, 200))
    buffer = io.BytesIO()
    first.save(buffer, format="GIF", save_all=True, append_images=[second], duration=100, loop=0)
    return buffer.getvalue()


def gray16_png() -> bytes:
    ramp = (np.arange(SIZE * SIZE, dtype=np.uint32).reshape(SIZE, SIZE) * 65535 // (SIZE * SIZE - 1))
    return _encode(Image.fromarray(ramp.astype(np.uint16)), "PNG")


def transparent_png() -> bytes:
    image = _picture("RGBA")
    alpha = np.full((SIZE, SIZE), 255, np.uint8)
    alpha[:, : SIZE // 2] = 0  # the left half fully transparent
    image.putalpha(Image.fromarray(alpha))
    return _encode(image, "PNG")


def gray_alpha_png() -> bytes:
    image = _picture("LA")
    alpha = np.full((SIZE, SIZE), 255, np.uint8)
    alpha[: SIZE // 2, : SIZE // 2] = 0
    image.putalpha(Image.fromarray(alpha))
    return _encode(image, "PNG")


def corrupt_png() -> bytes:
    """A whole PNG with its compressed pixel data overwritten (the chunk CRC no longer matches)."""
    data = bytearray(_encode(_picture(), "PNG", compress_level=0))
    start = data.index(b"IDAT") + 40
    data[start: start + 200] = bytes(range(200))
    return bytes(data)


def _svg() -> bytes:
    return (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="48" height="48">'
            b'<circle cx="24" cy="24" r="20" fill="red"/></svg>')


def _cases() -> list[tuple[str, str, str | None, bytes]]:
    png = _encode(_picture(), "PNG")
    jpeg = _encode(_picture(), "JPEG", quality=90)
    return [
        # -- refused, each with a message naming the problem
        ("empty.png", "zero bytes", r"empty \(0 bytes\)", b""),
        ("truncated.png", "a PNG cut in half", r"truncated|damaged", png[: len(png) // 2]),
        ("truncated.jpg", "a JPEG cut in half", r"truncated|damaged", jpeg[: len(jpeg) // 2]),
        ("corrupt.png", "a PNG with overwritten pixel data", r"damaged|truncated", corrupt_png()),
        ("notes.png", "a text file with an image name", r"not an image file", b"shopping list: eggs, milk\n" * 4),
        ("page.jpg", "an HTML page with an image name", r"not an image file", b"<html><body>hello</body></html>"),
        ("noise.webp", "random bytes", r"not an image file", np.random.default_rng(0).bytes(4096)),
        ("drawing.svg", "an SVG", r"SVG", _svg()),
        ("vector.png", "an SVG with a PNG name", r"SVG", _svg()),
        ("bomb.png", "a decompression bomb (50000x50000 declared)", r"megapixels", png_header_only(50_000, 50_000)),
        ("huge.png", "10000x5000 pixels declared (50 MP)", r"megapixels", png_header_only(10_000, 5_000)),
        ("dot.png", "1x1 pixel", r"1x1 pixels; at least 8x8", _encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG")),
        ("banner.png", "1000x20 (50:1)", r"aspect ratio", _encode(_picture(size=(1000, 20)), "PNG")),
        ("pole.png", "12x200 (17:1)", r"aspect ratio", _encode(_picture(size=(12, 200)), "PNG")),
        # -- accepted
        ("photo.jpg", "an ordinary JPEG", None, jpeg),
        ("cmyk.jpg", "a CMYK JPEG", None, _encode(_picture("CMYK"), "JPEG")),
        ("gray16.png", "a 16-bit grayscale PNG", None, gray16_png()),
        ("palette.png", "a palette PNG", None, _encode(_picture("P"), "PNG")),
        ("palette.gif", "a palette GIF with transparency", None,
         _encode(_picture("P"), "GIF", transparency=0)),
        ("alpha.png", "an RGBA PNG, half transparent", None, transparent_png()),
        ("gray_alpha.png", "a grayscale + alpha PNG, a quarter transparent", None, gray_alpha_png()),
        ("gray.png", "an 8-bit grayscale PNG", None, _encode(_picture("L"), "PNG")),
        ("bilevel.png", "a 1-bit PNG", None, _encode(_picture("1"), "PNG")),
        ("float.tiff", "a 32-bit float TIFF", None, _encode(_picture("F"), "TIFF")),
        ("animated.gif", "an animated GIF (first frame used)", None, animated_gif()),
        ("rotated.jpg", "a JPEG with EXIF orientation 6", None, exif_rotated_jpeg()),
        ("image.webp", "a WebP", None, _encode(_picture(), "WEBP")),
        ("image.bmp", "a BMP", None, _encode(_picture(), "BMP")),
        ("jpeg_named.png", "a JPEG with a PNG name", None, _encode(_picture(), "JPEG", quality=70)),
        ("small.png", "8x8 pixels, the smallest accepted", None, _encode(_picture(size=(8, 8)), "PNG")),
        ("wide.png", "200x25 (8:1)", None, _encode(_picture(size=(200, 25)), "PNG")),
    ]


def make_corpus(folder: Path) -> list[Case]:
    """Write every case into `folder` (a subfolder each, so a name is never reused) -> the cases."""
    cases = []
    for index, (name, what, refuse, data) in enumerate(_cases()):
        path = Path(folder) / f"{index:02d}" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        cases.append(Case(name, what, refuse, path))
    return cases
