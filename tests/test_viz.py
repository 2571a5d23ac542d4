import math

import numpy as np
import pytest
import torch

from hydra_core import viz
from hydra_core.viz import PCABasis


def _rng(seed=0):
    return np.random.default_rng(seed)


@pytest.fixture
def basis():
    return PCABasis.fit(_rng(1).normal(size=(512, 16)))


def _luma(rgb):
    return rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def test_fit_recovers_dominant_direction():
    rng = _rng(2)
    c = 16
    axis = rng.normal(size=c)
    axis /= np.linalg.norm(axis)
    x = rng.normal(size=(2000, c)) * 0.1 + rng.normal(size=(2000, 1)) * 5.0 * axis + 3.0
    b = PCABasis.fit(x)
    assert b.components.shape == (3, c) and b.mean.shape == (c,)
    assert abs(float(b.components[0] @ axis)) > 0.99
    np.testing.assert_allclose(b.mean, 3.0, atol=0.5)
    np.testing.assert_allclose(np.linalg.norm(b.components, axis=1), 1.0, atol=1e-5)
    assert np.all(b.high > b.low)
    # deterministic sign: the largest-|value| entry of every component is positive
    idx = np.argmax(np.abs(b.components), axis=1)
    assert np.all(b.components[np.arange(3), idx] > 0)
    b2 = PCABasis.fit(-x + 6.0)  # same data reflected -> same sign convention
    assert np.all(b2.components[np.arange(3), np.argmax(np.abs(b2.components), 1)] > 0)


def test_pca_rgb_deterministic_and_local_differences(basis):
    lat = _rng(3).normal(size=(64, 16))
    p1 = viz.pca_rgb(lat, basis)
    assert p1.shape == (256, 256, 3) and p1.dtype == np.uint8
    np.testing.assert_array_equal(p1, viz.pca_rgb(lat.copy(), basis))
    np.testing.assert_array_equal(p1, viz.pca_rgb(torch.from_numpy(lat), basis))
    np.testing.assert_array_equal(p1, viz.pca_rgb(lat.reshape(8, 8, 16), basis))
    other = lat.copy()
    other[0] += 5.0 * basis.components[0]  # change token (0, 0) only
    p2 = viz.pca_rgb(other, basis)
    diff = np.any(p1 != p2, axis=-1)
    assert diff[:32, :32].all()          # the changed token (32x32 px square)
    assert not diff[32:, :].any() and not diff[:, 32:].any()


def test_crisp_upscale():
    b = PCABasis.fit(_rng(4).normal(size=(300, 8)))
    p = viz.pca_rgb(_rng(5).normal(size=(1024, 8)), b, display=256)
    assert p.shape == (256, 256, 3)
    np.testing.assert_array_equal(p[::8, ::8].repeat(8, 0).repeat(8, 1), p)


def test_channel_grid_tiles():
    lat = _rng(6).normal(size=(64, 10)) * np.arange(1, 11)  # very different scales
    g = viz.channel_grid(lat, display=256)
    assert g.dtype == np.uint8 and g.ndim == 3
    rows, cols = math.ceil(10 / 4), 4  # ceil(sqrt(10)) = 4 columns, 3 rows
    k = (256 - (cols - 1)) // cols // 8
    t = 8 * k
    assert g.shape == (rows * t + rows - 1, cols * t + cols - 1, 3)
    sep = np.all(g == viz._SEPARATOR, axis=-1)
    assert sep.all(axis=0).sum() == cols - 1 and sep.all(axis=1).sum() == rows - 1
    tiles = [g[r * (t + 1):r * (t + 1) + t, c * (t + 1):c * (t + 1) + t]
             for r in range(rows) for c in range(cols)]
    filled = [not np.all(tile == viz._SEPARATOR) for tile in tiles]
    assert sum(filled) == 10
    # per-tile normalisation: every tile uses a similar colour spread despite scales 1..10
    spreads = [_luma(tile).std() for tile, f in zip(tiles, filled) if f]
    assert min(spreads) > 0.5 * max(spreads)
    small = np.all(viz.channel_grid(lat, max_channels=4) == viz._SEPARATOR, axis=-1)
    assert small.all(axis=0).sum() == 1 and small.all(axis=1).sum() == 1  # 2x2 tiles


def test_norm_heatmap_brighter_where_norm_larger():
    lat = np.ones((64, 8))
    lat[10] *= 5.0
    h = viz.norm_heatmap(lat)
    assert h.shape == (256, 256, 3) and h.dtype == np.uint8
    lum = _luma(h)
    r, c = divmod(10, 8)
    assert lum[r * 32 + 5, c * 32 + 5] > lum[0, 0] + 50
    # fixed vmax: same norms look the same however large the rest is
    a = viz.norm_heatmap(np.ones((64, 8)), vmax=10.0)
    assert np.array_equal(a[:32, :32], viz.norm_heatmap(lat, vmax=10.0)[:32, :32])


def test_histogram_draws_in_plot_area():
    img = viz.histogram(_rng(7).normal(size=(64, 16)), size=(320, 200))
    assert img.shape == (200, 320, 3) and img.dtype == np.uint8
    plot = img[30:175, 10:310]
    assert (np.any(plot != 255, axis=-1)).mean() > 0.1
    blank = viz.histogram(np.zeros((64, 4)))  # all mass in one bin still renders
    assert blank.shape == (200, 320, 3)


def test_error_map():
    a = _rng(8).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    same = viz.error_map(a, a.copy(), display=64)
    assert same.shape == (64, 64, 3) and same.dtype == np.uint8
    assert np.all(same == same[0, 0]) and _luma(same).max() < 10
    b = a.copy()
    b[:16, :16, :] = np.where(a[:16, :16] > 127, 0, 255)
    e = viz.error_map(a, b, display=128)
    assert e.shape == (128, 128, 3)
    lum = _luma(e)
    assert lum[:32, :32].mean() > lum[64:, 64:].max() + 50
    assert np.all(e[64:, 64:] == same[0, 0])


def test_latent_panel_and_compare(basis):
    lat = _rng(9).normal(size=(64, 16))
    panel = viz.latent_panel(lat, basis)
    assert set(panel) == {"pca", "channels", "norms", "histogram"}
    for pic in panel.values():
        assert pic.dtype == np.uint8 and pic.ndim == 3 and pic.shape[-1] == 3
    other = lat.copy()
    other[:8] = -other[:8]
    img, stats = viz.compare_panel(lat, other, basis)
    assert img.dtype == np.uint8 and img.shape[1] >= 3 * 256 and img.shape[0] > 256
    assert set(stats) == {"cosine_mean", "l2_mean", "mse"}
    np.testing.assert_allclose(stats["cosine_mean"], 1 - 2 * 8 / 64, atol=1e-9)
    np.testing.assert_allclose(stats["mse"], ((lat - other) ** 2).mean())
    _, same = viz.compare_panel(lat, lat, basis)
    assert same["cosine_mean"] == pytest.approx(1.0) and same["l2_mean"] == 0 == same["mse"]


def test_trajectory_strip(basis):
    steps = [_rng(i).normal(size=(64, 16)) for i in range(5)]
    s = viz.trajectory_strip(steps, basis, display=96)
    assert s.dtype == np.uint8 and s.shape == (96, 5 * 96 + 4 * 2, 3)
    np.testing.assert_array_equal(s[:, :96], viz.pca_rgb(steps[0], basis, 96))


def test_save_load_round_trip(tmp_path):
    lats = {"x": _rng(10).normal(size=(64, 16)).astype(np.float32),
            "y": torch.randn(2, 64, 16)}
    path = tmp_path / "lat.safetensors"
    viz.save_latents(path, lats, metadata={"prompt": "a cat", "step": 3})
    arrays, meta = viz.load_latents(path)
    np.testing.assert_array_equal(arrays["x"], lats["x"])
    np.testing.assert_array_equal(arrays["y"], lats["y"].numpy())
    assert meta == {"prompt": "a cat", "step": "3"}
    viz.save_latents(path, {"x": lats["x"]})
    assert viz.load_latents(path)[1] == {}


def test_basis_tensor_round_trip(basis):
    t = basis.to_tensors()
    assert set(t) == {"mean", "components", "low", "high"}
    assert all(isinstance(v, torch.Tensor) for v in t.values())
    b2 = PCABasis.from_tensors(t)
    for k in t:
        np.testing.assert_array_equal(getattr(b2, k), getattr(basis, k))


def test_invalid_inputs(basis):
    with pytest.raises(ValueError, match="perfect square"):
        viz.to_grid(np.zeros((10, 4)))
    with pytest.raises(ValueError, match="ndim"):
        viz.pca_rgb(np.zeros(16), basis)
    with pytest.raises(ValueError, match="ndim"):
        viz.norm_heatmap(np.zeros((1, 2, 64, 16)))
    bad = np.zeros((64, 16))
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        viz.channel_grid(bad)
    with pytest.raises(ValueError, match="NaN"):
        PCABasis.fit(np.full((10, 4), np.nan))
    with pytest.raises(ValueError, match="C=8 channels but the PCA basis has C=16"):
        viz.pca_rgb(np.zeros((64, 8)), basis)
    with pytest.raises(ValueError, match="differ in shape"):
        viz.compare_panel(np.zeros((64, 16)), np.zeros((16, 16)), basis)
    with pytest.raises(ValueError, match="same size"):
        viz.error_map(np.zeros((8, 8, 3)), np.zeros((8, 9, 3)))
    with pytest.raises(ValueError, match="missing keys"):
        PCABasis.from_tensors({"mean": np.zeros(4)})
