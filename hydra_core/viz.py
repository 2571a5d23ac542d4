"""Pictures of GSB latents (pure numpy + PIL; no Gradio, no matplotlib).

Shape legend
------------
N        number of latent tokens per image, N = h * w (tiny: 8x8 = 64, paper: 32x32 = 1024)
h, w     token grid (row-major: token i sits at row i // w, column i % w)
C        latent channels per token (tiny: ~16-32, paper: 64)
M        number of token vectors pooled to fit a PCA basis (any batch of [.., C] rows)
latent   float array [N, C] (h = w = sqrt(N)) or [h, w, C]; numpy or torch tensor
picture  uint8 RGB numpy array [H, W, 3]

Token grids are upscaled with nearest-neighbour by the largest integer factor that
keeps the long side <= ``display`` (exactly ``display`` when it divides evenly), so
every token is a crisp square.  PCA colours use a FIXED basis (``PCABasis``) fitted
once, so pictures are comparable across images and flow steps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from skimage import img_as_ubyte

# ---------------------------------------------------------------- colour maps
# magma anchors (dark -> bright), perceptually ordered; luminance increases monotonically
_MAGMA = np.array([(0, 0, 4), (28, 16, 68), (79, 18, 123), (129, 37, 129), (181, 54, 122),
                   (229, 80, 100), (251, 135, 97), (254, 194, 135), (252, 253, 191)], np.float64)
# diverging blue - white - red (coolwarm-like)
_COOLWARM = np.array([(59, 76, 192), (141, 176, 254), (221, 221, 221),
                      (244, 154, 123), (180, 4, 38)], np.float64)
_SEPARATOR = (32, 32, 32)
_WHITE = (255, 255, 255)


def _apply_cmap(values: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] (clipped) to uint8 RGB by linear interpolation of anchors."""
    v = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0)
    xs = np.linspace(0.0, 1.0, len(anchors))
    rgb = np.stack([np.interp(v, xs, anchors[:, k]) for k in range(3)], axis=-1)
    return np.round(rgb).astype(np.uint8)


def sequential_cmap(values: np.ndarray) -> np.ndarray:
    """Magma-like sequential colour map: [...] in [0, 1] -> uint8 [..., 3]."""
    return _apply_cmap(values, _MAGMA)


def diverging_cmap(values: np.ndarray) -> np.ndarray:
    """Blue-white-red colour map: [...] in [-1, 1] -> uint8 [..., 3] (0 is white-ish)."""
    return _apply_cmap((np.asarray(values) + 1.0) / 2.0, _COOLWARM)


# ---------------------------------------------------------------- input handling
def _to_numpy(x, name: str = "latent") -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().float().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf values")
    return arr


def to_grid(latent) -> np.ndarray:
    """[N, C] -> [h, w, C] with h = w = sqrt(N); [h, w, C] is returned unchanged."""
    arr = _to_numpy(latent)
    if arr.ndim == 3:
        return arr
    if arr.ndim != 2:
        raise ValueError(f"latent must have shape [N, C] or [h, w, C], got ndim={arr.ndim} "
                         f"shape={tuple(arr.shape)}")
    n, c = arr.shape
    side = math.isqrt(n)
    if side * side != n or n == 0:
        raise ValueError(f"latent has N={n} tokens, which is not a perfect square; "
                         f"pass it as [h, w, C] instead")
    return arr.reshape(side, side, c)


def _upscale(img: np.ndarray, display: int | None) -> np.ndarray:
    """Nearest-neighbour upscale by the largest integer factor with long side <= display."""
    if display is None:
        return img
    if display <= 0:
        raise ValueError(f"display must be a positive number of pixels, got {display}")
    k = max(1, int(display) // max(img.shape[0], img.shape[1]))
    return np.repeat(np.repeat(img, k, axis=0), k, axis=1)


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


# ---------------------------------------------------------------- PCA basis
@dataclass
class PCABasis:
    """Fixed 3-component PCA basis for colouring latents: RGB = (x - mean) @ components.T."""

    mean: np.ndarray        # [C]
    components: np.ndarray  # [3, C], unit rows
    low: np.ndarray         # [3] projection value mapped to 0
    high: np.ndarray        # [3] projection value mapped to 255

    def __post_init__(self):
        self.mean = _to_numpy(self.mean, "mean").astype(np.float32)
        self.components = _to_numpy(self.components, "components").astype(np.float32)
        self.low = _to_numpy(self.low, "low").astype(np.float32)
        self.high = _to_numpy(self.high, "high").astype(np.float32)
        c = self.mean.shape[0] if self.mean.ndim == 1 else -1
        if (self.mean.ndim != 1 or self.components.shape != (3, c)
                or self.low.shape != (3,) or self.high.shape != (3,)):
            raise ValueError(
                f"PCABasis shapes must be mean [C], components [3, C], low [3], high [3]; got "
                f"{self.mean.shape}, {self.components.shape}, {self.low.shape}, {self.high.shape}")

    @property
    def channels(self) -> int:
        return int(self.mean.shape[0])

    @classmethod
    def fit(cls, latents) -> "PCABasis":
        """Fit on token vectors [M, C] (any [..., C] is flattened to rows)."""
        x = _to_numpy(latents, "latents")
        if x.ndim < 2:
            raise ValueError(f"latents must be [M, C], got ndim={x.ndim}")
        x = x.reshape(-1, x.shape[-1])
        if min(x.shape) < 3:
            raise ValueError(f"PCA fit needs at least 3 rows and 3 channels, got [M, C]={x.shape}")
        mean = x.mean(axis=0)
        xc = x - mean
        _, _, vt = np.linalg.svd(xc, full_matrices=False)
        comps = vt[:3].copy()
        idx = np.argmax(np.abs(comps), axis=1)
        comps *= np.sign(comps[np.arange(3), idx])[:, None]  # deterministic sign
        proj = xc @ comps.T
        low, high = np.percentile(proj, 1, axis=0), np.percentile(proj, 99, axis=0)
        high = np.maximum(high, low + 1e-6)
        return cls(mean, comps, low, high)

    def to_tensors(self) -> dict:
        """{"mean", "components", "low", "high"} -> float32 torch tensors (caller adds a prefix)."""
        import torch

        return {k: torch.from_numpy(np.ascontiguousarray(getattr(self, k)))
                for k in ("mean", "components", "low", "high")}

    @classmethod
    def from_tensors(cls, d: dict) -> "PCABasis":
        missing = [k for k in ("mean", "components", "low", "high") if k not in d]
        if missing:
            raise ValueError(f"PCABasis.from_tensors: missing keys {missing}")
        return cls(d["mean"], d["components"], d["low"], d["high"])

    def project(self, latent) -> np.ndarray:
        """latent -> [h, w, 3] raw projections."""
        g = to_grid(latent)
        if g.shape[-1] != self.channels:
            raise ValueError(f"latent has C={g.shape[-1]} channels but the PCA basis has "
                             f"C={self.channels}")
        return (g - self.mean) @ self.components.T.astype(np.float64)


# ---------------------------------------------------------------- pictures
def pca_rgb(latent, basis: PCABasis, display: int = 256) -> np.ndarray:
    """Project tokens onto the basis; map [low, high] -> [0, 255] per component (clipped)."""
    p = basis.project(latent)
    v = (p - basis.low) / (basis.high - basis.low)
    return _upscale(img_as_ubyte(np.clip(v, 0, 1)), display)


def _grid_shape(n_tiles: int) -> tuple[int, int]:
    cols = math.ceil(math.sqrt(n_tiles))
    return math.ceil(n_tiles / cols), cols


def channel_grid(latent, max_channels: int = 64, display: int = 256) -> np.ndarray:
    """First ``max_channels`` channels as tiles (ceil(sqrt) columns, 1-px separators).

    Each tile is normalised by its own mean/std: mean +- 3 std -> blue..white..red.
    """
    g = to_grid(latent)
    h, w, c = g.shape
    n = min(c, max_channels)
    if n <= 0:
        raise ValueError(f"nothing to show: C={c}, max_channels={max_channels}")
    rows, cols = _grid_shape(n)
    k = max(1, (display - (cols - 1)) // cols // max(h, w))
    th, tw = h * k, w * k
    out = np.empty((rows * th + rows - 1, cols * tw + cols - 1, 3), np.uint8)
    out[:] = _SEPARATOR
    for i in range(n):
        ch = g[..., i]
        std = ch.std()
        z = (ch - ch.mean()) / (3 * std) if std > 1e-12 else np.zeros_like(ch)
        r, col = divmod(i, cols)
        y, x = r * (th + 1), col * (tw + 1)
        out[y:y + th, x:x + tw] = _upscale(diverging_cmap(z), k * max(h, w))
    return out


def norm_heatmap(latent, display: int = 256, vmax: float | None = None) -> np.ndarray:
    """Per-token L2 norm, 0..vmax (default: the max norm) -> sequential colour map."""
    norms = np.linalg.norm(to_grid(latent), axis=-1)
    top = float(norms.max()) if vmax is None else float(vmax)
    return _upscale(sequential_cmap(norms / max(top, 1e-12)), display)


def histogram(latent, bins: int = 60, size: tuple[int, int] = (320, 200)) -> np.ndarray:
    """Density histogram of all values (clipped to [-4, 4]) with the N(0,1) curve on top.

    ``size`` is (width, height); returns uint8 [height, width, 3].
    """
    vals = to_grid(latent).ravel()
    width, height = size
    left, right, top, bottom = 12, 12, 26, 22
    pw, ph = width - left - right, height - top - bottom
    if pw < 20 or ph < 20:
        raise ValueError(f"histogram size {size} is too small")
    dens, edges = np.histogram(np.clip(vals, -4, 4), bins=bins, range=(-4, 4), density=True)
    xs = np.linspace(-4, 4, 200)
    gauss = np.exp(-0.5 * xs ** 2) / math.sqrt(2 * math.pi)
    ymax = max(float(dens.max()), float(gauss.max())) * 1.1

    def px(x):
        return left + (np.asarray(x) + 4) / 8 * pw

    def py(y):
        return top + ph - np.asarray(y) / ymax * ph

    img = Image.new("RGB", (width, height), _WHITE)
    d = ImageDraw.Draw(img)
    font = _font()
    for d_i, x0, x1 in zip(dens, edges[:-1], edges[1:]):
        if d_i > 0:
            d.rectangle([float(px(x0)), float(py(d_i)), float(px(x1)), top + ph],
                        fill=(120, 150, 200))
    d.line(list(zip(px(xs).tolist(), py(gauss).tolist())), fill=(220, 80, 20), width=2)
    d.line([left, top + ph, left + pw, top + ph], fill=(0, 0, 0))  # x axis
    for t in range(-4, 5):
        x = float(px(t))
        d.line([x, top + ph, x, top + ph + 3], fill=(0, 0, 0))
        d.text((x, top + ph + 4), str(t), fill=(0, 0, 0), font=font, anchor="ma")
    d.text((4, 4), f"mean {vals.mean():+.3f}  std {vals.std():.3f}", fill=(0, 0, 0), font=font)
    lx = width - 70
    d.rectangle([lx, 4, lx + 10, 12], fill=(120, 150, 200))
    d.text((lx + 14, 3), "latent", fill=(0, 0, 0), font=font)
    d.line([lx, 21, lx + 10, 21], fill=(220, 80, 20), width=2)
    d.text((lx + 14, 15), "N(0,1)", fill=(0, 0, 0), font=font)
    return np.asarray(img, dtype=np.uint8).copy()


def error_map(original, reconstruction, gain: float = 4.0, display: int = 256) -> np.ndarray:
    """|orig - recon| averaged over RGB (0..255 scale), times gain, as a sequential heatmap."""
    a = _to_numpy(original, "original")
    b = _to_numpy(reconstruction, "reconstruction")
    if a.ndim != 3 or a.shape[-1] != 3 or a.shape != b.shape:
        raise ValueError(f"error_map needs two RGB images [H, W, 3] of the same size, got "
                         f"{a.shape} and {b.shape}")
    err = np.abs(a - b).mean(axis=-1) / 255.0 * gain
    return _upscale(sequential_cmap(err), display)


def latent_panel(latent, basis: PCABasis, display: int = 256) -> dict[str, np.ndarray]:
    """All pictures for one latent: {"pca", "channels", "norms", "histogram"}."""
    g = to_grid(latent)
    return {"pca": pca_rgb(g, basis, display), "channels": channel_grid(g, display=display),
            "norms": norm_heatmap(g, display), "histogram": histogram(g)}


def _caption(img: np.ndarray, text: str, height: int = 14) -> np.ndarray:
    bar = Image.new("RGB", (img.shape[1], height), _WHITE)
    ImageDraw.Draw(bar).text((2, 1), text, fill=(0, 0, 0), font=_font())
    return np.concatenate([np.asarray(bar, np.uint8), img], axis=0)


def _hstack(pictures: list[np.ndarray], gap: int) -> np.ndarray:
    h = max(p.shape[0] for p in pictures)
    parts = []
    for i, p in enumerate(pictures):
        if i:
            parts.append(np.full((h, gap, 3), 255, np.uint8))
        pad = np.full((h - p.shape[0], p.shape[1], 3), 255, np.uint8)
        parts.append(np.concatenate([p, pad], axis=0))
    return np.concatenate(parts, axis=1)


def compare_panel(latent_a, latent_b, basis: PCABasis, display: int = 256):
    """PCA(a) | PCA(b) | per-token L2 distance, plus {"cosine_mean", "l2_mean", "mse"}.

    The distance map shares its scale with the token norms: 0..max(|a_i|, |b_i|).
    """
    a, b = to_grid(latent_a), to_grid(latent_b)
    if a.shape != b.shape:
        raise ValueError(f"latents to compare differ in shape: {a.shape} vs {b.shape}")
    dist = np.linalg.norm(a - b, axis=-1)
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    vmax = max(float(na.max()), float(nb.max()), 1e-12)
    cos = (a * b).sum(-1) / np.maximum(na * nb, 1e-12)
    stats = {"cosine_mean": float(cos.mean()), "l2_mean": float(dist.mean()),
             "mse": float(((a - b) ** 2).mean())}
    pics = [_caption(pca_rgb(a, basis, display), "a (PCA)"),
            _caption(pca_rgb(b, basis, display), "b (PCA)"),
            _caption(_upscale(sequential_cmap(dist / vmax), display),
                     f"|a-b| L2 (0..{vmax:.2f})")]
    return _hstack(pics, gap=4), stats


def trajectory_strip(latents: list, basis: PCABasis, display: int = 96) -> np.ndarray:
    """PCA pictures of a sequence of latents (e.g. flow steps), left to right, 2-px gaps."""
    if len(latents) == 0:
        raise ValueError("trajectory_strip needs at least one latent")
    return _hstack([pca_rgb(x, basis, display) for x in latents], gap=2)


# ---------------------------------------------------------------- files
def save_latents(path, latents: dict, metadata: dict | None = None) -> None:
    """Write named latents (numpy or torch) to a .safetensors file; metadata values -> str."""
    from safetensors.numpy import save_file

    arrays = {}
    for name, x in latents.items():
        if hasattr(x, "detach"):
            x = x.detach().cpu()
            x = (x.float() if str(x.dtype) == "torch.bfloat16" else x).numpy()
        arrays[str(name)] = np.ascontiguousarray(x)
    meta = None if metadata is None else {str(k): str(v) for k, v in metadata.items()}
    save_file(arrays, str(path), metadata=meta)


def load_latents(path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a file written by ``save_latents``: (arrays, metadata)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata() or {}
        arrays = {k: f.get_tensor(k) for k in f.keys()}
    return arrays, dict(meta)
