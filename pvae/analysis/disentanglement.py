"""Disentanglement of a latent code against known generative factors: MIG and DCI.

For codes :math:`z \\in \\mathbb R^{N \\times J}` (the encoder means of a
program, :func:`disentanglement`, or any array) and true factors
:math:`v \\in \\mathbb R^{N \\times K}`:

* **MIG**, the mutual information gap (Chen et al. 2018): for each factor the
  gap between the two code dimensions that know most about it, in units of
  its entropy,

  .. math::

      \\mathrm{MIG} = \\frac1K \\sum_k \\frac{I(z_{j^{(k)}}; v_k) - \\max_{j \\ne j^{(k)}} I(z_j; v_k)}{H(v_k)},
      \\qquad j^{(k)} = \\arg\\max_j I(z_j; v_k),

  with the mutual informations of the histogram-discretised codes
  (``num_bins`` equal-width bins per dimension, as disentanglement_lib does);
  continuous factors are discretised the same way. 1: every factor in one
  dimension alone; 0: no dimension stands out.

* **DCI** (Eastwood and Williams 2018): an importance matrix
  :math:`R_{jk} \\ge 0` of code dimension :math:`j` for predicting factor
  :math:`k` (feature importances of gradient-boosted trees, or absolute
  coefficients of the lasso on standardised codes), then

  .. math::

      D = \\sum_j \\rho_j \\big(1 - H_K(P_{j\\cdot})\\big), \\quad
      P_{jk} = \\frac{R_{jk}}{\\sum_{k'} R_{jk'}}, \\quad
      \\rho_j = \\frac{\\sum_k R_{jk}}{\\sum_{j' k} R_{j'k}};

      C = \\frac1K \\sum_k \\big(1 - H_J(\\tilde P_{\\cdot k})\\big), \\quad
      \\tilde P_{jk} = \\frac{R_{jk}}{\\sum_{j'} R_{j'k}};

  entropies in base :math:`K` and :math:`J` (so each term lies in [0, 1]).
  *Disentanglement* :math:`D`: each dimension serves one factor;
  *completeness* :math:`C`: each factor lives in one dimension;
  *informativeness* :math:`I`: the mean held-out accuracy (discrete factors)
  or :math:`R^2` (continuous) of the predictors.

References

1. R. T. Q. Chen, X. Li, R. Grosse, D. Duvenaud. Isolating Sources of
   Disentanglement in Variational Autoencoders. NeurIPS 2018 (MIG).
2. C. Eastwood, C. K. I. Williams. A Framework for the Quantitative Evaluation
   of Disentangled Representations. ICLR 2018 (DCI).
3. F. Locatello et al. Challenging Common Assumptions in the Unsupervised
   Learning of Disentangled Representations. ICML 2019 (disentanglement_lib:
   the discretised estimators; the seed matters as much as beta).
4. I. Higgins et al. beta-VAE. ICLR 2017.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor
from sklearn.linear_model import Lasso
from sklearn.metrics import mutual_info_score

from .latent import encode_mean

__all__ = ["DCIScores", "DisentanglementResult", "dci", "disentanglement", "mutual_information_gap"]

Importance = Literal["lasso", "gbt"]


def _array(a: Any, name: str) -> np.ndarray:
    a = np.asarray(a.detach().cpu() if hasattr(a, "detach") else a)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or not np.issubdtype(a.dtype, np.number) or not np.isfinite(a).all():
        raise ValueError(f"{name} must be a finite numeric (n, dims) array, got shape {a.shape} and dtype {a.dtype}.")
    return a


def _pair(codes: Any, factors: Any) -> tuple[np.ndarray, np.ndarray]:
    z, v = _array(codes, "codes"), _array(factors, "factors")
    if z.shape[0] != v.shape[0]:
        raise ValueError(f"codes and factors must have one row per datum, got {z.shape[0]} and {v.shape[0]} rows.")
    return z.astype(np.float64), v


def _is_discrete(column: np.ndarray, max_values: int) -> bool:
    return bool(np.all(column == np.round(column))) and len(np.unique(column)) <= max_values


def _discretise(column: np.ndarray, num_bins: int) -> np.ndarray:
    edges = np.histogram_bin_edges(column, bins=num_bins)
    return np.digitize(column, edges[1:-1])


def _factor_codes(v: np.ndarray, num_bins: int) -> list[np.ndarray]:
    return [np.unique(c, return_inverse=True)[1] if _is_discrete(c, max(num_bins, 64)) else _discretise(c, num_bins)
            for c in v.T]


def mutual_information_gap(codes: Any, factors: Any, num_bins: int = 20) -> tuple[float, np.ndarray, np.ndarray]:
    """MIG of ``codes`` ``(n, J)`` against ``factors`` ``(n, K)``.

    Factors with at most ``max(num_bins, 64)`` whole-number values are discrete
    as given; others are discretised into ``num_bins`` bins, like the codes.

    :returns: ``(mig, gaps, mi)``: the MIG, its per-factor normalised gaps
        ``(K,)``, and the normalised mutual informations
        :math:`I(z_j; v_k) / H(v_k)` ``(J, K)``.
    :raises ValueError: on shapes that do not match, or a constant factor.
    """
    z, v = _pair(codes, factors)
    if z.shape[1] < 2:
        raise ValueError("MIG needs at least two code dimensions (it is a gap between the best two).")
    zd = [_discretise(c, num_bins) for c in z.T]
    mi = np.zeros((z.shape[1], v.shape[1]))
    for k, vk in enumerate(_factor_codes(v, num_bins)):
        h = mutual_info_score(vk, vk)
        if h <= 0:
            raise ValueError(f"factor {k} is constant: it has no entropy to explain.")
        mi[:, k] = [mutual_info_score(zj, vk) / h for zj in zd]
    top = np.sort(mi, axis=0)[::-1]
    gaps = top[0] - top[1]
    return float(gaps.mean()), gaps, mi


@dataclass(frozen=True)
class DCIScores:
    """DCI of a code.

    :ivar float disentanglement: :math:`D` in [0, 1].
    :ivar float completeness: :math:`C` in [0, 1].
    :ivar float informativeness: mean held-out accuracy or :math:`R^2` of the predictors.
    :ivar numpy.ndarray importance: :math:`R`, ``(J, K)``.
    """

    disentanglement: float
    completeness: float
    informativeness: float
    importance: np.ndarray


def _entropy_terms(p: np.ndarray, base: int) -> np.ndarray:
    """1 - H(p) in base ``base`` along axis 1 (rows of probabilities)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(1) / np.log(base)
    return 1 - h


def dci(codes: Any, factors: Any, importance: Importance = "lasso", train_fraction: float = 0.8,
        alpha: float = 0.01, seed: int = 0) -> DCIScores:
    """DCI disentanglement, completeness and informativeness of ``codes`` against ``factors``.

    One predictor per factor, trained on a random ``train_fraction`` of the
    rows and scored on the rest. Discrete factors (whole numbers, at most 64
    values): the lasso on the one-hot classes, predicting the largest output
    (importance: mean absolute coefficient over classes), or gradient-boosted
    trees (feature importances), scored by accuracy. Continuous factors: the lasso or
    gradient-boosted regression trees, scored by :math:`R^2`. Codes are
    standardised first, so linear importances compare.

    :param str importance: ``"lasso"`` (fast; linear) or ``"gbt"`` (trees, as
        Eastwood and Williams and disentanglement_lib; slower).
    :param float alpha: the L1 strength of the linear predictors (times the
        factor's standard deviation for a continuous factor).
    """
    if importance not in ("lasso", "gbt"):
        raise ValueError(f"importance must be 'lasso' or 'gbt', got {importance!r}.")
    z, v = _pair(codes, factors)
    z = (z - z.mean(0)) / np.where(z.std(0) > 0, z.std(0), 1.0)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(z))
    cut = int(train_fraction * len(z))
    if not 0 < cut < len(z):
        raise ValueError(f"train_fraction={train_fraction} leaves no training or no test rows of {len(z)}.")
    train, test = order[:cut], order[cut:]
    r = np.zeros((z.shape[1], v.shape[1]))
    scores = []
    for k, column in enumerate(v.T):
        discrete = _is_discrete(column, 64)
        y = np.unique(column, return_inverse=True)[1] if discrete else column.astype(np.float64)
        if importance == "gbt":
            cls = GradientBoostingClassifier if discrete else GradientBoostingRegressor
            model = cls(n_estimators=50, max_depth=3, random_state=seed).fit(z[train], y[train])
            r[:, k] = model.feature_importances_
        elif discrete:  # the lasso on the one-hot classes; predict the largest output
            onehot = np.eye(int(y.max()) + 1)[y]
            model = Lasso(alpha=alpha, random_state=seed).fit(z[train], onehot[train])
            r[:, k] = np.abs(model.coef_).mean(0)
            scores.append(float((model.predict(z[test]).argmax(1) == y[test]).mean()))
            continue
        else:
            model = Lasso(alpha=alpha * column.std(), random_state=seed).fit(z[train], y[train])
            r[:, k] = np.abs(model.coef_)
        scores.append(model.score(z[test], y[test]))
    total = r.sum()
    if total <= 0:
        return DCIScores(0.0, 0.0, float(np.mean(scores)), r)
    rows = r.sum(1)
    keep = rows > 0
    d = float((_entropy_terms(r[keep] / rows[keep, None], max(v.shape[1], 2)) * rows[keep] / total).sum())
    cols = r.sum(0)
    c_terms = np.where(cols > 0, _entropy_terms((r / np.where(cols > 0, cols, 1.0)).T, max(z.shape[1], 2)), 0.0)
    return DCIScores(d, float(c_terms.mean()), float(np.mean(scores)), r)


@dataclass(frozen=True)
class DisentanglementResult:
    """MIG and DCI of a program's encoder means.

    :ivar float mig: :func:`mutual_information_gap`.
    :ivar numpy.ndarray mig_per_factor: ``(K,)`` normalised gaps.
    :ivar numpy.ndarray mutual_information: ``(J, K)``, :math:`I(z_j; v_k) / H(v_k)`.
    :ivar numpy.ndarray best_dimension: ``(K,)``, the code dimension MIG assigns to each factor
        (the one to traverse to "wiggle" it).
    :ivar DCIScores dci: disentanglement, completeness, informativeness, importance.
    :ivar numpy.ndarray codes: ``(n, J)`` the encoder means scored.
    """

    mig: float
    mig_per_factor: np.ndarray
    mutual_information: np.ndarray
    best_dimension: np.ndarray
    dci: DCIScores
    codes: np.ndarray

    def summary(self) -> dict[str, float]:
        """``mig``, ``dci_disentanglement``, ``dci_completeness``, ``dci_informativeness``."""
        return {"mig": self.mig, "dci_disentanglement": self.dci.disentanglement,
                "dci_completeness": self.dci.completeness, "dci_informativeness": self.dci.informativeness}


def disentanglement(program: Any, x: Any, factors: Any, *args: Any, num_bins: int = 20,
                    importance: Importance = "lasso", batch_size: int = 4096, seed: int = 0) -> DisentanglementResult:
    """MIG and DCI of ``program``'s encoder means on ``x`` against the true ``factors``.

    :param program: anything with ``encode(x, *args) -> (loc, scale)`` (every
        pvae VAE; :func:`~pvae.analysis.encode_mean`).
    :param x: data ``(n, ...)``.
    :param factors: ``(n, K)`` true factors (integer indices or values).
    :param args: further arguments of ``encode``.
    :param int num_bins: histogram bins of the MIG estimator. Default 20.
    :param str importance: DCI's predictors, ``"lasso"`` or ``"gbt"``.
    :param int batch_size: rows encoded at a time.
    """
    chunks = []
    n = len(x)
    for start in range(0, n, batch_size):
        part = [a[start:start + batch_size] if hasattr(a, "__len__") and len(a) == n else a for a in args]
        with torch.no_grad():
            chunks.append(np.asarray(encode_mean(program, x[start:start + batch_size], *part).cpu()))
    codes = np.concatenate(chunks)
    mig, gaps, mi = mutual_information_gap(codes, factors, num_bins)
    return DisentanglementResult(mig=mig, mig_per_factor=gaps, mutual_information=mi,
                                 best_dimension=mi.argmax(0), dci=dci(codes, factors, importance, seed=seed),
                                 codes=codes)
