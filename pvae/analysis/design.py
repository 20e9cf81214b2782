"""Oracle-guided design in a latent space: a property predictor on encoder means, gradient ascent in z, decode, filter, score.

The closed loop of Gomez-Bombarelli et al. (2018) for any fitted program with
an encoder and a decoder [1, 2]: a differentiable predictor :math:`f(z)` of a
property is fitted on the encoder means of labelled data, many starting codes
climb

.. math::

    J(z) = f(z) + \\lambda \\log \\mathcal N(z; 0, I) = f(z) - \\tfrac{\\lambda}{2}\\lVert z\\rVert^2 + \\text{const},

optionally projected onto the ball :math:`\\lVert z\\rVert \\le r` (a trust
region around the prior's mass), and the codes visited are decoded. The
decoded candidates are filtered (``accept``: e.g. valid, novel, passing the
chemists' filters) and scored by the real property (``oracle``), not by the
predictor, which is only a guide.

References

1. R. Gomez-Bombarelli et al. Automatic chemical design using a data-driven
   continuous representation of molecules. ACS Central Science 4(2), 2018.
2. W. Jin, R. Barzilay, T. Jaakkola. Junction tree variational autoencoder for
   molecular graph generation. ICML 2018 (the design benchmark's table).
3. Seeds 000, 001 and 004: the generate-predict-optimise loop of drug design.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..inputs import DataError
from .latent import _dtype, _latent_dim, _require, encode_mean

_BETAS = (0.9, 0.999)  # Adam's moment decays, for the latent ascent


class LatentPredictor(nn.Module):
    """An MLP :math:`f(z)` predicting a scalar property from a latent code, on the
    property's own scale (it standardises internally).

    :ivar float r2: coefficient of determination on the held-out codes
        (nan when none were held out).
    """

    def __init__(self, latent_dim: int, hidden_dims: Sequence[int] = (128, 128)) -> None:
        super().__init__()
        widths = [latent_dim, *hidden_dims]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.SiLU()]
        self.net = nn.Sequential(*layers, nn.Linear(widths[-1], 1))
        self.register_buffer("target_loc", torch.zeros(()))
        self.register_buffer("target_scale", torch.ones(()))
        self.r2 = math.nan

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Predicted property of each code, ``(..., latent_dim) -> (...)``."""
        return self.net(z).squeeze(-1) * self.target_scale + self.target_loc


def _r2(prediction: torch.Tensor, target: torch.Tensor) -> float:
    residual = (target - prediction).pow(2).sum()
    total = (target - target.mean()).pow(2).sum()
    return float(1 - residual / total) if total > 0 else math.nan


def fit_latent_predictor(
    program: Any,
    x: torch.Tensor,
    targets: torch.Tensor | np.ndarray | Sequence[float],
    hidden_dims: Sequence[int] = (128, 128),
    num_epochs: int = 100,
    batch_size: int = 256,
    learning_rate: float = 1e-3,
    weight_decay: float = 1e-4,
    validation_fraction: float = 0.1,
    encode_batch_size: int = 4096,
    seed: int = 0,
) -> LatentPredictor:
    """Fit a :class:`LatentPredictor` of ``targets`` on the encoder means
    :math:`\\mathbb E_q[z \\mid x]` of ``x`` (mean squared error, Adam).

    :param program: a fitted program with ``encode(x) -> (loc, scale)``.
    :param torch.Tensor x: the data, ``(n, ...)``.
    :param targets: ``(n,)`` property values; nan entries (e.g. invalid
        molecules) are dropped.
    :param float validation_fraction: share of the rows held out to report
        the predictor's ``r2``. Default 0.1.
    :param int seed: of the initial weights, the held-out rows and the minibatch
        order, drawn from private generators: the caller's global torch RNG
        stream is left as it was. Default 0.
    :returns: the predictor, in eval mode, with ``r2`` set.
    :raises DataError: if ``targets`` does not have one finite value per row,
        or fewer than two finite values remain.
    """
    y = torch.as_tensor(np.asarray(targets, dtype=np.float64)).reshape(-1)
    if y.shape[0] != len(x):
        raise DataError(f"targets has {y.shape[0]} values for {len(x)} rows of x; give one per row.")
    keep = torch.isfinite(y)
    if int(keep.sum()) < 2:
        raise DataError("fit_latent_predictor needs at least two finite target values.")
    with torch.no_grad():
        z = torch.cat([encode_mean(program, chunk) for chunk in x[keep.numpy()].split(encode_batch_size)])
    y = y[keep].to(z.dtype)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(z), generator=generator)
    held = int(len(z) * validation_fraction)
    test, train = order[:held], order[held:]
    # the initial weights come from ``seed`` on the CPU generator, inside a fork so that the
    # caller's global RNG stream is left as it was (torch.manual_seed would reset it)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        predictor = LatentPredictor(z.shape[-1], hidden_dims).to(z.dtype)
    predictor.target_loc.fill_(float(y[train].mean()))
    predictor.target_scale.fill_(float(y[train].std().clamp_min(1e-8)) if len(train) > 1 else 1.0)
    optimizer = torch.optim.Adam(predictor.parameters(), lr=learning_rate, weight_decay=weight_decay)
    scale = predictor.target_scale
    for _ in range(num_epochs):
        for rows in train[torch.randperm(len(train), generator=generator)].split(batch_size):
            loss = ((predictor(z[rows]) - y[rows]) / scale).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    predictor.eval()
    if held:
        with torch.no_grad():
            predictor.r2 = _r2(predictor(z[test]), y[test])
    return predictor


def _key(item: Any) -> Any:
    if isinstance(item, torch.Tensor):
        return tuple(item.reshape(-1).tolist())
    return item


@dataclasses.dataclass(frozen=True)
class LatentDesignResult:
    """The candidates a latent search decoded, with their scores.

    :ivar list candidates: the decoded items (every start, every recorded step).
    :ivar torch.Tensor z: ``(len(candidates), latent_dim)``, their codes.
    :ivar torch.Tensor predicted: the predictor's value at each code.
    :ivar numpy.ndarray accepted: which candidates ``accept`` kept.
    :ivar numpy.ndarray scores: the oracle's score of each accepted candidate
        (nan for rejected ones, or everywhere without an oracle).
    :ivar torch.Tensor final_z: ``(num_starts, latent_dim)``, where each start ended.
    """

    candidates: list
    z: torch.Tensor
    predicted: torch.Tensor
    accepted: np.ndarray
    scores: np.ndarray
    final_z: torch.Tensor

    def top(self, k: int = 3) -> list[tuple[Any, float]]:
        """The ``k`` best distinct accepted candidates by oracle score (by the
        predictor's value without an oracle), best first, as ``(item, score)``."""
        values = self.scores if not np.isnan(self.scores[self.accepted]).all() else self.predicted.numpy()
        order = np.argsort(-np.where(self.accepted, np.nan_to_num(values, nan=-np.inf), -np.inf), kind="stable")
        best: dict[Any, tuple[Any, float]] = {}
        for i in order:
            if not self.accepted[i] or len(best) == k:
                break
            best.setdefault(_key(self.candidates[i]), (self.candidates[i], float(values[i])))
        return list(best.values())

    def summary(self, top_mean: int = 50) -> dict[str, float]:
        """``top1``, ``top2``, ``top3`` and ``mean_top{top_mean}`` scores of the
        distinct accepted candidates (nan where there are fewer), and counts."""
        scores = [score for _, score in self.top(max(3, top_mean))]
        padded = scores + [math.nan] * 3
        return {
            "top1": padded[0],
            "top2": padded[1],
            "top3": padded[2],
            f"mean_top{top_mean}": float(np.mean(scores[:top_mean])) if len(scores) >= top_mean else math.nan,
            "num_candidates": len(self.candidates),
            "num_accepted": int(self.accepted.sum()),
            "num_distinct_accepted": len({_key(self.candidates[i]) for i in np.flatnonzero(self.accepted)}),
        }


def _default_decode(program: Any) -> Callable[[torch.Tensor], list]:
    decode = _require(program, "decode", "it maps a latent z to p(x | z)")

    def items(z: torch.Tensor) -> list:
        distribution = decode(z)
        point = distribution.mode if hasattr(distribution, "mode") else distribution.mean
        return list(point.unbind(0))

    return items


def latent_optimize(
    program: Any,
    predictor: Callable[[torch.Tensor], torch.Tensor],
    num_starts: int = 100,
    steps: int = 100,
    learning_rate: float = 0.05,
    prior_weight: float = 1.0,
    radius: float | None = None,
    starts: torch.Tensor | None = None,
    record_every: int | None = None,
    decode: Callable[[torch.Tensor], Sequence[Any]] | None = None,
    oracle: Callable[[Any], float] | None = None,
    accept: Callable[[Any], bool] | None = None,
    latent_dim: int | None = None,
    seed: int = 0,
) -> LatentDesignResult:
    """Gradient ascent on :math:`J(z) = f(z) - \\tfrac{\\lambda}{2}\\lVert z\\rVert^2`
    from many starts at once, then decode, filter and score.

    The steps are Adam's with one second moment per start rather than per
    coordinate: isotropic, so they are invariant to the predictor's scale and
    the Euclidean projection onto the trust region is the right one (Adam's
    per-coordinate scaling would stall on the sphere away from the constrained
    maximiser).

    :param program: a fitted program with ``decode(z) -> distribution`` (or
        give ``decode``).
    :param predictor: a differentiable ``(n, latent_dim) -> (n,)`` map, e.g. from
        :func:`fit_latent_predictor`.
    :param int num_starts: starting codes, drawn from the prior N(0, I)
        unless ``starts`` is given.
    :param int steps: Adam steps. Default 100.
    :param float learning_rate: the step size, in units of z. Default 0.05.
    :param float prior_weight: :math:`\\lambda`, the weight of the prior's
        log-density (0: none). Default 1.
    :param float radius: project each code onto :math:`\\lVert z\\rVert \\le r`
        after every step (a trust region); None: no projection.
    :param torch.Tensor starts: ``(num_starts, latent_dim)`` starting codes
        (e.g. encoder means of the best training data).
    :param int record_every: also decode the codes every this many steps (the
        path, not only its end). None: only the end.
    :param decode: ``z -> list of items`` (e.g. SMILES strings). Default the
        mode of ``program.decode(z)``, one tensor per code.
    :param oracle: ``item -> float``, the real property; None: candidates are
        ranked by the predictor.
    :param accept: ``item -> bool``, e.g. valid, novel and passing the filters;
        None accepts all.
    :param int latent_dim: default ``program.latent_dim``.
    :param int seed: seed of the starting codes.
    :returns: a :class:`LatentDesignResult`.
    :raises ValueError: for a non-positive ``num_starts``, ``steps`` or
        ``radius``, a negative ``prior_weight``, or ``starts`` of the wrong shape.
    """
    if starts is None:
        if int(num_starts) != num_starts or num_starts < 1:
            raise ValueError(f"num_starts must be a positive integer, got {num_starts!r}.")
        dim = _latent_dim(program, latent_dim, "pass latent_dim= or starts=")
        starts = torch.randn(num_starts, dim, generator=torch.Generator().manual_seed(seed), dtype=_dtype(program))
    elif starts.dim() != 2:
        raise ValueError(f"starts must be (num_starts, latent_dim), got shape {tuple(starts.shape)}.")
    if int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}.")
    if radius is not None and not radius > 0:
        raise ValueError(f"radius must be > 0, got {radius!r}.")
    if not prior_weight >= 0:
        raise ValueError(f"prior_weight must be >= 0, got {prior_weight!r}.")
    decode = decode or _default_decode(program)

    def project(z: torch.Tensor) -> torch.Tensor:
        if radius is None:
            return z
        norm = z.norm(dim=-1, keepdim=True)
        return z * (radius / norm.clamp_min(radius))

    z = project(starts.detach().clone())
    momentum = torch.zeros_like(z)
    second = torch.zeros_like(z[:, :1])
    recorded = []
    for step in range(1, steps + 1):
        z.requires_grad_(True)
        objective = predictor(z) - 0.5 * prior_weight * z.pow(2).sum(-1)
        (gradient,) = torch.autograd.grad(objective.sum(), z)
        with torch.no_grad():
            momentum.lerp_(gradient, 1 - _BETAS[0])
            second.lerp_(gradient.pow(2).mean(-1, keepdim=True), 1 - _BETAS[1])
            corrected = (second / (1 - _BETAS[1] ** step)).sqrt() + 1e-8
            z = project(z.detach() + learning_rate * momentum / (1 - _BETAS[0] ** step) / corrected)
        if record_every and step % record_every == 0 and step < steps:
            recorded.append(z.clone())
    final = z.detach().clone()
    codes = torch.cat([*recorded, final])
    with torch.no_grad():
        predicted = predictor(codes).detach()
        candidates = list(decode(codes))
    if len(candidates) != len(codes):
        raise ValueError(f"decode returned {len(candidates)} items for {len(codes)} codes.")
    accepted = np.array([accept(c) if accept is not None else True for c in candidates], dtype=bool)
    scores = np.array([oracle(c) if oracle is not None and ok else math.nan
                       for c, ok in zip(candidates, accepted)], dtype=float)
    return LatentDesignResult(candidates, codes, predicted, accepted, scores, final)
