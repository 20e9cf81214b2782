import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from pvae.analysis import draw_image_grid  # noqa: E402


def test_draw_image_grid_places_each_image_in_its_cell():
    rows, cols, h, w = 2, 3, 4, 5
    images = torch.arange(rows * cols, dtype=torch.float32)[:, None].expand(-1, h * w) / 10
    fig, ax = plt.subplots()
    draw_image_grid(ax, images, rows, cols, image_shape=(h, w))
    grid = np.asarray(ax.images[0].get_array())
    plt.close(fig)
    assert grid.shape == (rows * (h + 1), cols * (w + 1))
    for i in range(rows):
        for j in range(cols):
            cell = grid[i * (h + 1):i * (h + 1) + h, j * (w + 1):j * (w + 1) + w]
            assert np.allclose(cell, (i * cols + j) / 10)  # row-major order
    assert np.all(grid[h, :] == 0) and np.all(grid[:, w] == 0)  # one blank pixel between cells


def test_draw_image_grid_rejects_a_grid_the_images_do_not_fill():
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match="grid of 8 x 8 images needs 384"):
        draw_image_grid(ax, torch.zeros(5, 64), 2, 3)
    plt.close(fig)


# -- what the plot_* figures draw (each writes a PNG; the Figure is caught as it is saved) ----
from pathlib import Path  # noqa: E402

import pvae.analysis.figures as figures  # noqa: E402
from pvae.analysis import plot_image, plot_latent_map, plot_reconstructions, plot_samples  # noqa: E402


@pytest.fixture
def drawn(monkeypatch):
    """``{file name: Figure}`` of every figure saved while the test runs."""
    saved = {}
    real = figures._save

    def spy(fig, path):
        saved[Path(path).name] = fig
        return real(fig, path)

    monkeypatch.setattr(figures, "_save", spy)
    return saved


def _cells(fig):
    """The image of every cell of a grid figure, row-major (blank cells left out)."""
    return [np.asarray(ax.images[0].get_array()) for ax in fig.axes if ax.images]


@pytest.mark.parametrize("image_shape", [None, (2, 3)])
def test_plot_reconstructions_draws_the_inputs_above_their_reconstructions(tmp_path, drawn, image_shape):
    x = torch.rand(6, 6)
    x_hat = torch.rand(6, 6)
    assert plot_reconstructions(x, x_hat, image_shape, tmp_path / "rec.png", n=4).is_file()
    cells = _cells(drawn["rec.png"])
    assert len(cells) == 8
    shape = (1, 6) if image_shape is None else image_shape
    for j in range(4):
        assert np.allclose(cells[j], x[j].reshape(shape).numpy())  # top row: the inputs
        assert np.allclose(cells[4 + j], x_hat[j].reshape(shape).numpy())  # bottom row: their reconstructions


def test_plot_samples_and_plot_image_draw_their_values(tmp_path, drawn):
    s = torch.rand(5, 4)
    plot_samples(s, (2, 2), tmp_path / "samples.png")
    cells = _cells(drawn["samples.png"])
    assert len(cells) == 5 and all(np.allclose(c, s[k].reshape(2, 2).numpy()) for k, c in enumerate(cells))
    img = torch.rand(64)
    plot_image(img, (8, 8), tmp_path / "proto.png", title="z = 0")
    (cell,) = _cells(drawn["proto.png"])
    assert np.allclose(cell, img.reshape(8, 8).numpy())


def test_plot_latent_map_places_each_point_at_its_mean_coloured_by_its_label(tmp_path, drawn):
    z2 = torch.randn(30, 2)
    labels = torch.arange(30) % 3
    plot_latent_map(z2, labels, tmp_path / "z2.png")
    points = drawn["z2.png"].axes[0].collections[0]
    assert np.allclose(points.get_offsets(), z2.numpy())
    assert np.array_equal(np.asarray(points.get_array()), labels.numpy())
    plot_latent_map(z2, None, tmp_path / "plain.png")
    assert np.allclose(drawn["plain.png"].axes[0].collections[0].get_offsets(), z2.numpy())
    z1 = torch.randn(30, 1)
    plot_latent_map(z1, labels, tmp_path / "z1.png")  # 1-D: the label is the second axis
    assert np.allclose(drawn["z1.png"].axes[0].collections[0].get_offsets(), np.column_stack([z1[:, 0], labels]))
    z5 = torch.randn(40, 5, dtype=torch.float64) * torch.tensor([5.0, 3.0, 1.0, 0.1, 0.1], dtype=torch.float64)
    plot_latent_map(z5, torch.arange(40) % 4, tmp_path / "z5.png")  # > 2-D: the first two principal components
    from sklearn.decomposition import PCA

    expected = PCA(n_components=2).fit_transform(z5.numpy())
    assert np.allclose(drawn["z5.png"].axes[0].collections[0].get_offsets(), expected, atol=1e-6)
