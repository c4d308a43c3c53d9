"""The PNG helpers write real images of the expected size; bad input names the argument."""

from __future__ import annotations

import json

import matplotlib.image
import pytest
import torch

from sdeflow.plotting import (
    plot_density_2d,
    plot_loss_curve,
    plot_sample_grid_2d,
    plot_samples_2d,
    save_image_grid,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    return path.exists() and path.stat().st_size > 100 and path.read_bytes()[:8] == PNG_MAGIC


def test_plot_samples_2d(tmp_path):
    x = torch.randn(300, 2)
    one = plot_samples_2d(x, tmp_path / "a" / "one.png", title="t")
    two = plot_samples_2d(x, tmp_path / "two.png", data=torch.rand(300, 2), lim=(-2, 2))
    assert _is_png(one) and _is_png(two)
    # two panels side by side: wider than tall, and wider than the single panel
    h1, w1 = matplotlib.image.imread(one).shape[:2]
    h2, w2 = matplotlib.image.imread(two).shape[:2]
    assert w2 > w1 and w2 > h2
    # non-finite rows are dropped, not fatal
    assert _is_png(plot_samples_2d(torch.tensor([[0.0, 1.0], [float("nan"), 0.0]]),
                                   tmp_path / "nan.png"))
    with pytest.raises(ValueError, match="samples"):
        plot_samples_2d(torch.randn(10, 3), tmp_path / "bad.png")
    with pytest.raises(ValueError, match="lim"):
        plot_samples_2d(x, tmp_path / "bad.png", lim=(1, -1))


def test_plot_density_2d_batches_the_grid(tmp_path):
    calls = []

    def log_prob(x):
        calls.append(x.shape[0])
        return -0.5 * x.pow(2).sum(-1)

    path = plot_density_2d(log_prob, tmp_path / "d.png", lim=3, n_grid=30, batch_size=200,
                           data=torch.randn(100, 2))
    assert _is_png(path)
    assert sum(calls) == 900 and max(calls) <= 200
    with pytest.raises(ValueError, match="log_prob_fn"):
        plot_density_2d(lambda x: x, tmp_path / "bad.png", lim=3, n_grid=4)
    with pytest.raises(ValueError, match="n_grid"):
        plot_density_2d(log_prob, tmp_path / "bad.png", lim=3, n_grid=1)


@pytest.mark.parametrize("shape, nrow, grid_hw", [
    ((5, 3, 8, 8), 4, (2 * 10 + 2, 4 * 10 + 2)),
    ((3, 1, 6, 4), 8, (1 * 8 + 2, 3 * 6 + 2)),
    ((4, 6, 6), 2, (2 * 8 + 2, 2 * 8 + 2)),
])
def test_save_image_grid_shape(tmp_path, shape, nrow, grid_hw):
    path = save_image_grid(torch.rand(shape) * 2 - 1, tmp_path / "g.png", nrow=nrow)
    assert _is_png(path)
    img = matplotlib.image.imread(path)
    assert img.shape[:2] == grid_hw


def test_save_image_grid_values(tmp_path):
    # -1 maps to black, +1 to white; the padding is white
    images = torch.stack([-torch.ones(1, 4, 4), torch.ones(1, 4, 4)])
    img = matplotlib.image.imread(save_image_grid(images, tmp_path / "g.png", nrow=2, padding=1))
    assert img[1:5, 1:5, :3].max() == 0.0
    assert img[1:5, 6:10, :3].min() == 1.0
    assert img[0, :, :3].min() == 1.0


@pytest.mark.parametrize("bad, match", [
    (torch.rand(2, 2, 4, 4), "images"),
    (torch.rand(4, 4), "images"),
    (torch.rand(0, 3, 4, 4), "images"),
])
def test_save_image_grid_bad_input(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        save_image_grid(bad, tmp_path / "g.png")


def test_plot_sample_grid_2d(tmp_path):
    rows = {
        "data": {"moons": torch.randn(200, 2), "checkerboard": torch.rand(200, 2)},
        "diffflow": {"moons": torch.randn(200, 2)},  # a missing cell stays blank
        "nsf": {"moons": torch.randn(200, 2), "checkerboard": torch.rand(200, 2)},
    }
    path = plot_sample_grid_2d(rows, tmp_path / "grid.png")
    assert _is_png(path)
    h, w = matplotlib.image.imread(path).shape[:2]
    assert h > w  # 3 rows x 2 columns
    with pytest.raises(ValueError, match="rows"):
        plot_sample_grid_2d({}, tmp_path / "bad.png")


def test_plot_loss_curve(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": i, "loss": 1.0 / (i + 1), "lr": 0.01}) for i in range(20)]
    metrics.write_text("\n".join(lines) + "\n{\"step\": 20, \"lo")  # a torn last line
    assert _is_png(plot_loss_curve(metrics, tmp_path / "loss.png"))
    assert _is_png(plot_loss_curve(metrics, tmp_path / "lr.png", keys=["lr"]))
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"step": 1}) + "\n")
    with pytest.raises(ValueError, match="metric"):
        plot_loss_curve(empty, tmp_path / "none.png")
