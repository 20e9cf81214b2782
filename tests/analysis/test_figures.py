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
