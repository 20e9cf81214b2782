"""Refutation checks for any causal estimate (DoWhy's refuters, Sharma and Kiciman 2020).

An estimate that a model is right cannot be checked from the data alone, but
some ways of being wrong can be caught: refit the *same* estimator on data
changed in a way whose effect is known, and see whether the estimate moves as
it should. :func:`refute` takes the estimator as a callable
``estimate(x, t, y) -> float`` (fit a program and return its ATE: CEVAE's
``fit`` + ``ate``, or :func:`pvae.fit` + :func:`pvae.causal.ate` on a
hand-written program) and runs ``num_simulations`` refits under one of

* ``"placebo"``: the treatment replaced by a random permutation of itself. It
  no longer causes anything, so the new effect should be **0**;
* ``"random_common_cause"``: an independent standard-normal covariate appended
  to ``x`` (the estimator gets ``x`` with one more column). Adjusting for a
  variable unrelated to everything should **not move** the estimate;
* ``"data_subset"``: a random ``subset_fraction`` of the units. The estimate
  should be **stable** across subsets.

For the simulated estimates :math:`\\hat\\tau_1, \\dots, \\hat\\tau_S` with mean
:math:`\\bar\\tau` and standard deviation :math:`s`, and the value :math:`\\tau_0`
they should reach (0 for the placebo, the original estimate otherwise), the
result carries the interval :math:`\\bar\\tau \\pm t_{S-1, 1-\\alpha/2}\\, s\\, c` and
the two-sided p-value of :math:`|\\bar\\tau - \\tau_0| / (s\\, c)` under
:math:`t_{S-1}`; ``passed`` is :math:`p \\ge \\alpha`. For the placebo
:math:`\\tau_0 = 0` is exact and :math:`c = \\sqrt{1 / S}` (a one-sample t-test of
:math:`H_0: \\mathbb E\\,\\hat\\tau = 0`). Otherwise :math:`\\tau_0` is itself one fit of the
same noisy estimator: under :math:`H_0` (the change does not alter the
estimator's distribution) the original and the refits are exchangeable, so
:math:`\\tau_0 - \\bar\\tau` has variance :math:`\\sigma^2 (1 + 1/S)` and
:math:`c = \\sqrt{1 + 1 / S}`: the interval is a prediction interval for the
original. Treating the original as fixed, as DoWhy does, rejects a sound
estimator whenever its refits happen to agree more closely with each other than
with the original (on IHDP with two refits it rejected 1 of 10).

A passed refutation is not a proof: it rules out only what it changes (a
placebo catches an estimator that finds effects wherever it looks; a random
common cause catches one that is unstable in its inputs).

References

1. A. Sharma, E. Kiciman. DoWhy: An End-to-End Library for Causal Inference.
   arXiv:2011.04216, 2020.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Literal

import numpy as np
import pyro
import torch

from ..inputs import DataError, as_data
from .queries import EffectEstimate

__all__ = ["REFUTERS", "RefutationResult", "refute"]

REFUTERS = ("placebo", "random_common_cause", "data_subset")
Refuter = Literal["placebo", "random_common_cause", "data_subset"]


@dataclass(frozen=True)
class RefutationResult:
    """The outcome of one refuter.

    :ivar str refuter: its name.
    :ivar float original: the estimate on the data as given.
    :ivar float expected: what the new estimates should average (0 for the placebo).
    :ivar float new_effect: the mean of the new estimates.
    :ivar float lower: lower end of the interval around the mean new estimate that
        ``expected`` should lie in (for the placebo the interval of the mean; otherwise
        a prediction interval for the original, see the module).
    :ivar float upper: its upper end.
    :ivar float p_value: two-sided p-value of "the new estimates and ``expected`` agree".
    :ivar bool passed: ``p_value >= alpha``.
    :ivar tuple estimates: the new estimates, one per simulation.
    :ivar float alpha: the test's level (the interval's coverage is ``1 - alpha``).
    """

    refuter: str
    original: float
    expected: float
    new_effect: float
    lower: float
    upper: float
    p_value: float
    passed: bool
    estimates: tuple[float, ...]
    alpha: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _scalar(value: Any, what: str) -> float:
    if isinstance(value, EffectEstimate):
        value = value.mean
    if isinstance(value, torch.Tensor):
        value = value.detach().float().mean() if value.numel() > 1 else value.detach()
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"the estimator must return a number (an ATE), got {type(value).__name__} {what}.") from None
    if not math.isfinite(out):
        raise ValueError(f"the estimator returned {out} {what}.")
    return out


def refute(
    estimate: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Any],
    x: Any,
    t: Any,
    y: Any,
    refuter: Refuter = "placebo",
    *,
    num_simulations: int = 10,
    subset_fraction: float = 0.5,
    alpha: float = 0.05,
    original: float | None = None,
    seed: int = 0,
) -> RefutationResult:
    """Refit ``estimate`` on changed data and test whether its effect moves as it should.

    :param estimate: ``estimate(x, t, y) -> float`` (or an :class:`EffectEstimate`, or a
        tensor of unit effects, averaged): fits the estimator and returns its ATE. For
        ``"random_common_cause"`` it must accept ``x`` with one more column.
    :param x: covariates ``(n, d)``.
    :param t: treatment ``(n,)`` (any values: permuted as they are for the placebo).
    :param y: outcome ``(n,)``.
    :param str refuter: ``"placebo"``, ``"random_common_cause"`` or ``"data_subset"``.
    :param int num_simulations: refits, >= 2. Default 10 (each one is a full fit).
    :param float subset_fraction: share of units kept by ``"data_subset"``, in (0, 1). Default 0.5.
    :param float alpha: level of the test and ``1 -`` the interval's coverage. Default 0.05.
    :param float original: the estimate on the data as given, if already computed
        (else ``estimate(x, t, y)`` is called once more).
    :param int seed: seeds the changes to the data (a private generator) and, before
        each refit, Pyro's and torch's generators with ``seed + k``. Default 0.
        ``estimate`` should draw its randomness (initial weights, noise) from
        those generators: one that fixes its own seed (e.g. ``fit(seed=0)``)
        starts every refit alike, and the refits' spread, hence the interval,
        misses the estimator's own variability.
    :returns: a :class:`RefutationResult`.
    :raises ValueError: on an unknown refuter, bad options, or data of mismatched lengths.
    """
    from scipy import stats

    if refuter not in REFUTERS:
        raise ValueError(f"refuter must be one of {list(REFUTERS)}, got {refuter!r}.")
    if isinstance(num_simulations, bool) or int(num_simulations) != num_simulations or num_simulations < 2:
        raise ValueError(f"num_simulations must be an integer >= 2 (the test needs a spread), got {num_simulations!r}.")
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}. Try alpha=0.05.")
    if not (isinstance(subset_fraction, (int, float)) and 0 < subset_fraction < 1):
        raise ValueError(f"subset_fraction must be in (0, 1), got {subset_fraction!r}. Try 0.5.")
    if not callable(estimate):
        raise TypeError(f"estimate must be a callable (x, t, y) -> ATE, got {type(estimate).__name__}.")
    x, t, y = as_data(x, "x"), as_data(t, "t"), as_data(y, "y")
    n = x.shape[0]
    if x.dim() != 2 or t.shape[:1] != (n,) or y.shape[:1] != (n,):
        raise DataError(f"x must be (n, d) and t, y (n,): got {tuple(x.shape)}, {tuple(t.shape)}, {tuple(y.shape)}.")
    if original is None:
        pyro.set_rng_seed(int(seed))
        original = _scalar(estimate(x, t, y), "on the original data")
    expected = 0.0 if refuter == "placebo" else float(original)
    g = torch.Generator().manual_seed(int(seed))
    keep = max(2, int(round(subset_fraction * n)))
    estimates = []
    for k in range(int(num_simulations)):
        if refuter == "placebo":
            data = (x, t[torch.randperm(n, generator=g)], y)
        elif refuter == "random_common_cause":
            data = (torch.cat([x, torch.randn(n, 1, generator=g, dtype=x.dtype)], 1), t, y)
        else:
            rows = torch.randperm(n, generator=g)[:keep]
            data = (x[rows], t[rows], y[rows])
        pyro.set_rng_seed(int(seed) + 1 + k)
        estimates.append(_scalar(estimate(*data), f"in simulation {k} of the {refuter} refuter"))
    values = np.asarray(estimates)
    mean, sd, s = float(values.mean()), float(values.std(ddof=1)), len(values)
    # the placebo's 0 is exact; the original is one more draw of the estimator (see the module)
    se = sd * math.sqrt(1 / s + (0.0 if refuter == "placebo" else 1.0))
    half = float(stats.t.ppf(1 - alpha / 2, s - 1)) * se
    if sd > 0:
        p = float(2 * stats.t.sf(abs(mean - expected) / se, s - 1))
    else:
        p = 1.0 if mean == expected else 0.0
    return RefutationResult(refuter, float(original), expected, mean, mean - half, mean + half, p, p >= alpha,
                            tuple(float(v) for v in values), float(alpha))
