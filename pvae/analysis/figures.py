"""Figures of a fitted program: training curves, reconstructions, samples, latents.

Every helper takes tensors (or a fit's history) and a path, writes one PNG and
returns the path. Figures are drawn on matplotlib's Agg canvas through the
object-oriented API: nothing here touches ``pyplot``'s global state or the
user's chosen backend, opens a window, or keeps a figure alive after saving.

Images: ``image_shape`` such as ``(8, 8)`` or ``(28, 28)`` reshapes each row of
features into a picture; with ``image_shape=None`` each data point is drawn as
a one-row heatmap of its features instead, so the same helpers serve tabular
data. Values in [0, 1] are drawn dark-on-light (``gray_r``) on a fixed [0, 1]
scale; anything else with ``viridis`` on the shared range of the grid.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = [
    "draw_image_grid",
    "plot_geodesics",
    "plot_image",
    "plot_image_rows",
    "plot_interpolation",
    "plot_latent_map",
    "plot_reconstructions",
    "plot_samples",
    "plot_training_curves",
    "plot_traversal",
]

PathLike = str | os.PathLike
_DPI = 100


# -- shared plumbing ---------------------------------------------------------------
def _numpy(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a tensor or an array of numbers, got {type(x).__name__}.") from None


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight")
    return path


def _as_rows(x: Any, name: str, image_shape: Sequence[int] | None) -> np.ndarray:
    """Data points as a ``(n, d)`` array whose ``d`` fits ``image_shape``."""
    arr = _numpy(x, name)
    if arr.ndim == 1:
        arr = arr[None, :]
    arr = arr.reshape(len(arr), -1)
    if image_shape is not None and math.prod(image_shape) != arr.shape[1]:
        raise ValueError(
            f"image_shape {tuple(image_shape)} holds {math.prod(image_shape)} pixels but {name} has "
            f"{arr.shape[1]} features per data point. Try image_shape=None for a heatmap of the features."
        )
    return arr


def _image_grid(
    rows: Sequence[np.ndarray],
    image_shape: Sequence[int] | None,
    path: PathLike,
    row_labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Draw ``rows`` (each ``(n_cols, d)``) as a grid of images or 1-row heatmaps.

    All cells share one colour scale, so inputs and reconstructions compare.
    """
    n_rows = len(rows)
    n_cols = max(len(r) for r in rows)
    finite = np.concatenate([r[np.isfinite(r)] for r in rows]) if rows else np.zeros(1)
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    unit = lo >= 0.0 and hi <= 1.0
    cmap, vmin, vmax = ("gray_r", 0.0, 1.0) if unit else ("viridis", lo, hi)
    if image_shape is not None:
        shape = tuple(int(s) for s in image_shape)
        cell_w = cell_h = 1.0 if n_rows * n_cols > 1 else 2.0
    else:
        shape = None
        cell_w, cell_h = max(1.5, rows[0].shape[1] / 16.0), 0.4
    fig = _figure(cell_w * n_cols + (1.2 if row_labels else 0.2), cell_h * n_rows + (0.5 if title else 0.1))
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(row):
                ax.set_axis_off()
                continue
            cell = row[j].reshape(shape) if shape is not None else row[j][None, :]
            ax.imshow(cell, cmap=cmap, vmin=vmin, vmax=vmax, aspect="equal" if shape else "auto",
                      interpolation="nearest")
        if row_labels:
            axes[i][0].set_ylabel(row_labels[i], rotation=0, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


# -- public figures ----------------------------------------------------------------
def draw_image_grid(ax: Any, images: Any, rows: int, cols: int, image_shape: Sequence[int] = (8, 8)) -> None:
    """Draw ``rows * cols`` flattened images on one matplotlib axis, one blank pixel apart.

    For composing figures of one's own (the ``plot_*`` functions each write a
    whole figure). Values are drawn on the fixed scale [0, 1] (``gray_r``):
    pixel intensities or Bernoulli means.

    :param ax: a matplotlib ``Axes``.
    :param images: ``(rows * cols, prod(image_shape))`` tensor or array, row-major.
    :param int rows: image rows of the grid.
    :param int cols: image columns of the grid.
    :param image_shape: ``(height, width)`` of one image. Default (8, 8), the digits.
    :raises ValueError: when the number of values does not fill the grid.
    """
    h, w = (int(s) for s in image_shape)
    arr = _numpy(images, "images")
    if arr.size != rows * cols * h * w:
        raise ValueError(
            f"images hold {arr.size} values; a {rows} x {cols} grid of {h} x {w} images needs "
            f"{rows * cols * h * w}. Try rows * cols = {arr.size // (h * w)} or another image_shape."
        )
    tiles = np.pad(arr.reshape(rows, cols, h, w), ((0, 0), (0, 0), (0, 1), (0, 1)))
    ax.imshow(tiles.transpose(0, 2, 1, 3).reshape(rows * (h + 1), cols * (w + 1)), cmap="gray_r", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_training_curves(history: Any, path: PathLike) -> Path:
    """Plot the ELBO, reconstruction and KL terms per epoch, train and validation.

    :param history: ``FitResult.history`` (:class:`pvae.FitResult`; a sequence of dicts with
        ``epoch``, ``elbo``, ``reconstruction``, ``kl`` and optionally
        ``val_elbo``, ``val_reconstruction``, ``val_kl``), or a ``FitResult``.
    :param path: where to write the PNG.
    :returns: ``path`` as a :class:`pathlib.Path`.
    :raises ValueError: if ``history`` is empty.
    """
    rows: Sequence[Mapping[str, float]] = getattr(history, "history", history)
    if not rows:
        raise ValueError("history is empty: there is no epoch to plot. Try fitting for at least one epoch.")
    epochs = [r.get("epoch", i) for i, r in enumerate(rows)]
    panels = (("elbo", "ELBO"), ("reconstruction", "reconstruction E[log p(x|z)]"), ("kl", "KL(q(z|x) || p(z))"))
    fig = _figure(12.0, 3.2)
    axes = fig.subplots(1, len(panels))
    for ax, (key, label) in zip(axes, panels):
        for prefix, name, style in (("", "train", "-"), ("val_", "validation", "--")):
            values = [r.get(prefix + key, math.nan) for r in rows]
            if not all(math.isnan(v) for v in values):
                ax.plot(epochs, values, style, marker="." if len(rows) < 30 else None, label=name)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel("nats per datum")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_reconstructions(
    x: Any, x_hat: Any, image_shape: Sequence[int] | None, path: PathLike, n: int = 10
) -> Path:
    """Draw the first ``n`` inputs (top row) above their reconstructions (bottom row).

    :param x: inputs of shape ``(batch, d)``.
    :param x_hat: reconstructions of the same shape, e.g. ``vae.reconstruct(x)``.
    :param image_shape: e.g. ``(8, 8)``; None draws 1-row heatmaps.
    :param path: where to write the PNG.
    :param int n: number of data points shown. Default 10.
    :returns: ``path`` as a :class:`pathlib.Path`.
    """
    x, x_hat = _as_rows(x, "x", image_shape), _as_rows(x_hat, "x_hat", image_shape)
    if x.shape != x_hat.shape:
        raise ValueError(f"x and x_hat must have the same shape, got {x.shape} and {x_hat.shape}.")
    return _image_grid([x[:n], x_hat[:n]], image_shape, path, row_labels=["input", "reconstruction"])


def plot_samples(samples: Any, image_shape: Sequence[int] | None, path: PathLike, title: str | None = None) -> Path:
    """Draw samples (e.g. ``vae.sample(64, mean=True)``) in a near-square grid.

    :param samples: tensor of shape ``(num_samples, d)``.
    :param image_shape: e.g. ``(8, 8)``; None draws 1-row heatmaps, one per row.
    :param path: where to write the PNG.
    :param str title: optional figure title.
    :returns: ``path`` as a :class:`pathlib.Path`.
    """
    s = _as_rows(samples, "samples", image_shape)
    cols = math.ceil(math.sqrt(len(s))) if image_shape is not None else 1
    return _image_grid([s[i : i + cols] for i in range(0, len(s), cols)], image_shape, path, title=title)


def plot_image(img: Any, image_shape: Sequence[int] | None, path: PathLike, title: str | None = None) -> Path:
    """Draw one image, such as the prototype ``vae.decode(torch.zeros(latent_dim)).mean``.

    :param img: tensor of shape ``(d,)`` or ``(1, d)``.
    :param image_shape: e.g. ``(8, 8)``; None draws a 1-row heatmap.
    :param path: where to write the PNG.
    :param str title: figure title.
    :returns: ``path`` as a :class:`pathlib.Path`.
    """
    return _image_grid([_as_rows(img, "img", image_shape)[:1]], image_shape, path, title=title)


def plot_latent_map(z_loc: Any, labels: Any, path: PathLike, title: str | None = None) -> Path:
    """Scatter the encoder means of the data in 2-D, coloured by label.

    With ``latent_dim > 2`` the means are projected on their first two
    principal components (scikit-learn's PCA), with the explained variance in
    the axis labels; with ``latent_dim == 1`` the second axis is the label.

    :param z_loc: encoder means, shape ``(batch, latent_dim)``, e.g.
        ``vae.encode(x)[0]``.
    :param labels: integer labels of shape ``(batch,)``, or None for one colour.
    :param path: where to write the PNG.
    :param str title: optional axes title.
    :returns: ``path`` as a :class:`pathlib.Path`.
    """
    z = _as_rows(z_loc, "z_loc", None)
    y = None if labels is None else _numpy(labels, "labels").reshape(-1)
    if y is not None and len(y) != len(z):
        raise ValueError(f"labels must have one entry per row of z_loc ({len(z)}), got {len(y)}.")
    if z.shape[1] > 2:
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2).fit(z)
        xy = pca.transform(z)
        axis = [f"PC{i + 1} ({100 * r:.0f}% of variance)" for i, r in enumerate(pca.explained_variance_ratio_)]
    elif z.shape[1] == 2:
        xy, axis = z, ["z[0]", "z[1]"]
    else:
        second = y if y is not None else np.zeros(len(z))
        xy, axis = np.column_stack([z[:, 0], second]), ["z[0]", "label"]
    fig = _figure(5.5, 4.5)
    ax = fig.subplots()
    if y is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.7)
    else:
        classes = np.unique(y)
        cmap = "tab10" if len(classes) <= 10 else "viridis"
        points = ax.scatter(xy[:, 0], xy[:, 1], c=y, cmap=cmap, s=6, alpha=0.8)
        if len(classes) <= 20:
            handles, names = points.legend_elements(num=list(classes))
            ax.legend(handles, names, title="label", fontsize=7, title_fontsize=8, loc="best", markerscale=0.8)
        else:
            fig.colorbar(points, ax=ax, label="label")
    ax.set_xlabel(axis[0])
    ax.set_ylabel(axis[1])
    ax.set_title(title or f"encoder means ({z.shape[1]}-D latent)", fontsize=10)
    return _save(fig, path)


# -- latent-space figures (issue 7: traversals, interpolations, geodesics) -----------
def _grid_rows(images: Any, name: str, image_shape: Sequence[int] | None) -> list[np.ndarray]:
    """``(n_cols, d)`` or ``(n_rows, n_cols, d)`` -> a list of ``(n_cols, d)`` arrays."""
    arr = _numpy(images, name)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(
            f"{name} must have shape (n_cols, d) or (n_rows, n_cols, d), got {arr.shape}. "
            "Try the output of pvae.analysis.traverse or pvae.analysis.interpolate."
        )
    return [_as_rows(row, name, image_shape) for row in arr]


def plot_image_rows(
    rows: Sequence[Any],
    image_shape: Sequence[int] | None,
    path: PathLike,
    row_labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Draw rows of images on one shared colour scale, e.g. truth / estimate / baseline.

    :param rows: a sequence of tensors, each ``(n_cols, d)`` (rows may differ in length).
    :param image_shape: e.g. ``(8, 8)``; None draws 1-row heatmaps.
    :param path: where to write the PNG.
    :param row_labels: one label per row.
    :param str title: optional figure title.
    :returns: ``path`` as a :class:`pathlib.Path`.
    """
    arrays = [_as_rows(r, f"rows[{i}]", image_shape) for i, r in enumerate(rows)]
    if not arrays:
        raise ValueError("rows is empty: there is nothing to draw.")
    if row_labels is not None and len(row_labels) != len(arrays):
        raise ValueError(f"row_labels must have one label per row ({len(arrays)}), got {len(row_labels)}.")
    return _image_grid(arrays, image_shape, path, row_labels=row_labels, title=title)


def plot_traversal(
    images: Any,
    image_shape: Sequence[int] | None,
    path: PathLike,
    values: Sequence[float] | None = None,
    row_labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Draw latent traversals: one row per base point or latent dimension.

    :param images: :func:`pvae.analysis.traverse` output, ``(num_values, d)`` or
        ``(n_rows, num_values, d)`` (e.g. a ``torch.stack`` over dimensions).
    :param image_shape: e.g. ``(8, 8)``; None draws 1-row heatmaps.
    :param path: where to write the PNG.
    :param values: the traversed values, written in the title.
    :param row_labels: one label per row, e.g. ``["z[0]", "z[1]"]``.
    :param str title: figure title. Default names the value range.
    :returns: ``path`` as a :class:`pathlib.Path`.
    """
    rows = _grid_rows(images, "images", image_shape)
    if title is None and values is not None:
        v = _numpy(values, "values").reshape(-1)
        title = f"traversal from {v[0]:.3g} to {v[-1]:.3g} ({len(v)} values)"
    return plot_image_rows(rows, image_shape, path, row_labels=row_labels, title=title)


def plot_interpolation(
    images: Any,
    image_shape: Sequence[int] | None,
    path: PathLike,
    row_labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Draw decoded interpolations, start on the left, end on the right.

    :param images: :func:`pvae.analysis.interpolate` output, ``(num_steps, d)``
        or ``(n_rows, num_steps, d)`` (e.g. linear and slerp stacked).
    :param image_shape: e.g. ``(8, 8)``; None draws 1-row heatmaps.
    :param path: where to write the PNG.
    :param row_labels: one label per row, e.g. ``["linear", "slerp"]``.
    :param str title: optional figure title.
    :returns: ``path`` as a :class:`pathlib.Path`.
    """
    rows = _grid_rows(images, "images", image_shape)
    return plot_image_rows(rows, image_shape, path, row_labels=row_labels, title=title)


def plot_geodesics(
    curves: Mapping[str, Any],
    path: PathLike,
    z_loc: Any = None,
    labels: Any = None,
    background: Any = None,
    extent: Sequence[float] | None = None,
    background_label: str = "log magnification factor",
    title: str | None = None,
) -> Path:
    """Draw 2-D latent curves (geodesics, the straight line) over the latent map.

    :param curves: name -> points ``(num_points, 2)``, e.g.
        ``{"straight": ..., "geodesic (Dijkstra)": result.points}``.
    :param path: where to write the PNG.
    :param z_loc: encoder means ``(n, 2)`` drawn as a scatter, optional.
    :param labels: integer labels of ``z_loc`` for colours, optional.
    :param background: a ``(rows, cols)`` array drawn under everything, e.g.
        ``log magnification_factor(f, grid)`` on a grid; row ``i`` is the
        i-th value of ``z[1]`` from ``extent[2]`` up, column ``j`` of ``z[0]``.
    :param extent: ``(z0_min, z0_max, z1_min, z1_max)`` of ``background``.
    :param str background_label: colour bar label.
    :param str title: optional axes title.
    :returns: ``path`` as a :class:`pathlib.Path`.
    """
    if not curves:
        raise ValueError("curves is empty: there is nothing to draw.")
    arrays = {}
    for name, c in curves.items():
        a = _numpy(c, f"curves[{name!r}]")
        if a.ndim != 2 or a.shape[1] != 2:
            raise ValueError(f"curves[{name!r}] must have shape (num_points, 2), got {a.shape}. "
                             "Geodesics can be drawn for a 2-D latent space only.")
        arrays[name] = a
    fig = _figure(6.0, 5.0)
    ax = fig.subplots()
    if background is not None:
        bg = _numpy(background, "background")
        if bg.ndim != 2 or extent is None or len(extent) != 4:
            raise ValueError("background must be a 2-D array and extent (z0_min, z0_max, z1_min, z1_max) 4 numbers.")
        im = ax.imshow(bg, origin="lower", extent=tuple(float(e) for e in extent), cmap="Greys", aspect="auto",
                       interpolation="bilinear", alpha=0.8)
        fig.colorbar(im, ax=ax, label=background_label, shrink=0.8)
    if z_loc is not None:
        z = _as_rows(z_loc, "z_loc", None)
        if z.shape[1] != 2:
            raise ValueError(f"z_loc must have shape (n, 2), got {z.shape}.")
        if labels is None:
            ax.scatter(z[:, 0], z[:, 1], s=4, alpha=0.5, color="tab:blue", zorder=2)
        else:
            y = _numpy(labels, "labels").reshape(-1)
            points = ax.scatter(z[:, 0], z[:, 1], c=y, cmap="tab10", s=4, alpha=0.6, zorder=2)
            classes = np.unique(y)
            if len(classes) <= 10:
                handles, names = points.legend_elements(num=list(classes))
                ax.legend(handles, names, title="label", fontsize=7, title_fontsize=8, loc="upper right",
                          markerscale=0.8)
    from matplotlib import patheffects

    styles = ["-", "--", "-", ":"]
    colours = ["black", "crimson", "darkorange", "royalblue"]  # apart from the label colours' use
    halo = [patheffects.Stroke(linewidth=4.5, foreground="white"), patheffects.Normal()]
    for i, (name, a) in enumerate(arrays.items()):
        ax.plot(a[:, 0], a[:, 1], styles[i % len(styles)], lw=2.2, label=name, color=colours[i % len(colours)],
                zorder=9 - min(i, 5), path_effects=halo)  # earlier curves on top: dashes show what is below
    first = next(iter(arrays.values()))
    ax.plot(*first[0], "o", color="black", mec="white", ms=8, zorder=11)
    ax.plot(*first[-1], "s", color="black", mec="white", ms=8, zorder=11)
    curve_legend = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
    if z_loc is not None and labels is not None and ax.get_legend() is not None:
        ax.add_artist(ax.get_legend())
    ax.legend(handles=curve_legend, fontsize=8, loc="lower left")
    if extent is not None:
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
    ax.set_xlabel("z[0]")
    ax.set_ylabel("z[1]")
    ax.set_title(title or "geodesics in the latent space", fontsize=10)
    return _save(fig, path)
