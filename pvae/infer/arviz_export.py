"""ArviZ export of a fitted program, and PSIS diagnostics of its importance weights.

ArviZ has no converter for Pyro's SVI; :func:`to_inference_data` follows the
conventions of its NumPyro converter (``arviz.from_numpyro``): one chain of
``num_samples`` draws, variables named after their sample sites, dims
``("chain", "draw", <data dim>, <site>_dim_0, ...)``, and the groups

================================  =============================================
``posterior``                     latent draws :math:`z \\sim q(z \\mid x)` from the guide
``posterior_predictive``          :math:`\\tilde x \\sim p(x \\mid z)` at each draw
``log_likelihood``                pointwise :math:`\\log p(x_i \\mid z)` per draw and datum
``sample_stats``                  per draw: ``lp`` (:math:`\\sum_i \\log p(x_i, z_i)`) and
                                  ``log_weight`` (:math:`\\log p(x_i, z_i) - \\log q(z_i \\mid x_i)`)
``observed_data``                 the observed sites' data
``training_history``              (custom group) one row per epoch of :func:`pvae.fit`
================================  =============================================

The training history is a custom group, not part of ``sample_stats``: ArviZ
reads every ``sample_stats`` variable as a per-draw statistic with
``(chain, draw)`` dims (divergences, energy, step size), and the history has
an ``epoch`` dim instead; stored there it would be misread by ``az.summary``
and the plots. Its dim is ``epoch`` with coordinates 1, 2, ...

Everything is first built as plain dicts of numpy arrays, then handed to
``az.from_dict`` (and ``InferenceData.add_groups`` for the history), so the
move to ArviZ 1.x's ``DataTree`` changes only the last step.

Guide draws are not posterior draws: ``az.loo`` and ``az.waic`` on this object
estimate the predictive accuracy *under the guide's approximation*; they are
exact only when the guide is the exact posterior. :func:`psis_diagnostics`
measures how far they are from it.

References

1. R. Kumar, C. Carroll, A. Hartikainen, O. Martin. ArviZ a unified library
   for exploratory analysis of Bayesian models in Python. JOSS 4(33), 2019.
2. A. Vehtari, A. Gelman, J. Gabry. Practical Bayesian model evaluation using
   leave-one-out cross-validation and WAIC. Statistics and Computing 27, 2017.
3. A. Vehtari, D. Simpson, A. Gelman, Y. Yao, J. Gabry. Pareto Smoothed
   Importance Sampling. JMLR 25(72), 2024 (arXiv 2015).
4. Y. Yao, A. Vehtari, D. Simpson, A. Gelman. Yes, but Did It Work?:
   Evaluating Variational Inference. ICML 2018 (k-hat as a check of a
   variational approximation).
5. Y. Burda, R. Grosse, R. Salakhutdinov. Importance Weighted Autoencoders.
   ICLR 2016.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import pyro
import torch

from ..inputs import as_data_tuple
from ..models.base import program_verb
from .traces import SiteLogProbs, check_count, guess_max_plate_nesting, pin_subsample, site_log_probs

if TYPE_CHECKING:  # arviz is imported lazily: importing it prints a FutureWarning
    import arviz

__all__ = ["PsisDiagnostics", "inference_data_dicts", "psis_diagnostics", "to_inference_data"]

#: Vehtari et al. (2017, 2024): above this k-hat an importance-sampling estimate
#: is unreliable whatever the sample size.
KHAT_THRESHOLD = 0.7
HISTORY_GROUP = "training_history"
# Log-weights spread less than this many units of rounding (relative to their
# size) count as constant: the proposal is exact to working precision.
_CONSTANT_ULPS = 256


# -- plain-dict construction ----------------------------------------------------------
def _draws_first(t: torch.Tensor, event_dim: int, slp: SiteLogProbs, particles: bool = True) -> np.ndarray:
    """A site-shaped tensor ``(*batch, *event)`` -> ``(K, B, *rest)`` numpy.

    The particle dim first (expanded to K), the data dim second, the site's
    other plate dims and event dims after it in order. With
    ``particles=False`` the particle dim is dropped: ``(B, *rest)``.
    """
    nb = -slp.particle_dim
    t = torch.as_tensor(t)
    t = t.reshape((1,) * (nb + event_dim - t.dim()) + tuple(t.shape))
    num_particles, batch = slp.log_guide.shape if slp.latent else next(iter(slp.log_p.values())).shape
    data_axis = nb + slp.data_dim
    shape = list(t.shape)
    shape[0] = num_particles if particles else 1
    shape[data_axis] = batch
    t = t.expand(shape).movedim(data_axis, 1)
    # other plate dims the site is not in (size 1) are dropped; its own stay
    keep = [0, 1] + [a for a in range(2, nb) if t.shape[a] != 1] + list(range(nb, t.dim()))
    t = t.permute(*keep, *[a for a in range(t.dim()) if a not in keep])
    t = t.reshape(tuple(t.shape[: len(keep)]))
    out = t.detach().cpu().numpy()
    return out if particles else out[0]


def _history_dict(history: Any) -> dict[str, np.ndarray]:
    """FitResult or a sequence of per-epoch dicts -> ``{key: (num_epochs,) array}``."""
    rows = getattr(history, "history", history)
    if not isinstance(rows, Sequence) or not all(isinstance(r, Mapping) for r in rows):
        raise TypeError(
            f"history must be a FitResult or a sequence of per-epoch dicts, got {type(history).__name__}. "
            "Try history=pvae.fit(...) or history=result.history."
        )
    keys: list[str] = []
    for row in rows:
        keys += [k for k, v in row.items()
                 if k not in keys and k != "epoch" and isinstance(v, (int, float, bool))]
    return {
        k: np.array([float(r[k]) if isinstance(r.get(k), (int, float, bool)) else math.nan for r in rows])
        for k in keys
    }


def inference_data_dicts(
    program: Any,
    data: Any,
    num_samples: int = 100,
    *,
    obs_dim: str = "obs_id",
    data_plate: str | None = None,
    max_plate_nesting: int | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """The groups of :func:`to_inference_data` as plain dicts of numpy arrays.

    :returns: ``{"posterior": {...}, "posterior_predictive": {...},
        "log_likelihood": {...}, "sample_stats": {...}, "observed_data": {...},
        "dims": {...}, "coords": {...}}``; arrays of the draw groups have a
        leading chain dim of size 1.
    """
    args = as_data_tuple(program, data)
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}.")
    with torch.no_grad():
        slp = site_log_probs(
            program.model, program.guide, *args, num_particles=num_samples, data_plate=data_plate,
            max_plate_nesting=max_plate_nesting, **kwargs,
        )
    model_nodes, guide_nodes = slp.model_trace.nodes, slp.guide_trace.nodes
    dims: dict[str, list[str]] = {}

    def named(name: str, array: np.ndarray, leading: int) -> np.ndarray:
        dims[name] = [obs_dim] + [f"{name}_dim_{i}" for i in range(array.ndim - leading - 1)]
        return array

    posterior = {}
    for name in slp.latent:
        fn = guide_nodes[name]["fn"]
        posterior[name] = named(name, _draws_first(guide_nodes[name]["value"], len(fn.event_shape), slp)[None], 2)
    predictive, observed, log_lik = {}, {}, {}
    with torch.no_grad():
        for name in slp.observed:
            site = model_nodes[name]
            event_dim = len(site["fn"].event_shape)
            predictive[name] = named(name, _draws_first(site["fn"].sample(), event_dim, slp)[None], 2)
            observed[name] = _draws_first(site["value"], event_dim, slp, particles=False)
            log_lik[name] = slp.log_p[name].detach().cpu().numpy()[None]
    log_weight = slp.log_weight.detach().cpu().numpy()[None]
    joint = (slp.log_likelihood + slp.log_prior).detach().cpu().numpy()
    sample_stats = {"lp": joint.sum(-1)[None], "log_weight": log_weight}
    dims["log_weight"] = [obs_dim]
    batch = log_weight.shape[-1]
    return {
        "posterior": posterior,
        "posterior_predictive": predictive,
        "log_likelihood": log_lik,
        "sample_stats": sample_stats,
        "observed_data": observed,
        "dims": dims,
        "coords": {obs_dim: np.arange(batch)},
    }


@program_verb(convert=False)
def to_inference_data(
    program: Any,
    data: Any,
    num_samples: int = 100,
    history: Any = None,
    *,
    obs_dim: str = "obs_id",
    data_plate: str | None = None,
    max_plate_nesting: int | None = None,
    **kwargs: Any,
) -> "arviz.InferenceData":
    """Export a fitted program's guide draws, predictions and log-likelihood to ArviZ.

    With :math:`z^{(s)}_i \\sim q(z \\mid x_i)`, :math:`s = 1, \\dots, S`
    (``num_samples``), drawn in one vectorised pass:

    .. math::

        \\text{posterior: } z^{(s)}_i, \\qquad
        \\text{posterior\\_predictive: } \\tilde x^{(s)}_i \\sim p(x \\mid z^{(s)}_i), \\qquad
        \\text{log\\_likelihood: } \\log p(x_i \\mid z^{(s)}_i),

    so that ``az.loo`` / ``az.waic`` estimate

    .. math::

        \\mathrm{elpd} = \\sum_i \\log \\int p(x_i \\mid z)\\, q(z \\mid x_i)\\, dz

    in the PSIS-LOO form (Vehtari et al. 2017) with the guide in place of the
    posterior. Each observation has its own latent and the decoder is fixed,
    so leaving :math:`x_i` out returns :math:`z_i` to its prior and
    :math:`\\mathrm{elpd}_{\\text{loo}, i} = \\log p(x_i)`: ``az.loo`` is then a
    Pareto-smoothed *harmonic-mean* estimate of each datum's log-evidence,

    .. math::

        \\widehat{\\log p}(x_i) = -\\log \\frac1S \\sum_s
            \\frac{1}{p(x_i \\mid z^{(s)}_i)}\\Big|_{\\text{PSIS}},

    right when the guide is the exact posterior and the posterior is not much
    narrower than the prior; otherwise its k-hat exceeds 0.7 (ArviZ warns).
    For the evidence itself prefer :func:`pvae.infer.log_evidence`, checked by
    :func:`psis_diagnostics`.

    Groups, dims and coords follow ArviZ's NumPyro converter: every group has
    the data dim ``obs_dim`` (coordinates ``0..B-1``; NumPyro would name it
    after the plate), then the site's own dims ``<site>_dim_0, ...`` (event
    dims, and inner plates). See the module docstring for the group list; the
    history, if given, goes to the custom group ``training_history`` with dim
    ``epoch``.

    :param program: a pvae program, or anything with ``model`` and ``guide``
        whose latent and observed sites sit in the data plate.
    :param data: the program's positional arguments: a tensor ``x`` of shape
        ``(B, ...)`` or a tuple such as ``(x, mask)``.
    :param int num_samples: draws per datum (the ``draw`` dim; one chain).
        Default 100.
    :param history: a :class:`pvae.FitResult` or its ``history`` (a sequence
        of per-epoch dicts); numeric entries become ``(epoch,)`` variables.
    :param str obs_dim: name of the data dim. Default ``"obs_id"``.
    :param str data_plate: name of the data plate (see :func:`pvae.infer.site_log_probs`).
    :param int max_plate_nesting: the program's plate depth; guessed if None.
    :param kwargs: the program's keyword arguments.
    :returns: ``arviz.InferenceData``.
    :raises TypeError: on data that are not tensors, or a malformed history.
    """
    import arviz as az

    groups = inference_data_dicts(program, data, num_samples, obs_dim=obs_dim, data_plate=data_plate,
                                  max_plate_nesting=max_plate_nesting, **kwargs)
    dims, coords = groups.pop("dims"), groups.pop("coords")
    attrs = {
        "inference_library": "pyro",
        "inference_library_version": pyro.__version__,
        "creation_library": "pvae",
        "num_samples": num_samples,
        "sampler": "variational guide q(z | x) (importance proposal), not MCMC",
    }
    # like the NumPyro converter: the library on every draw group, and on the whole object
    group_attrs = {f"{g}_attrs": dict(attrs) for g in
                   ("posterior", "posterior_predictive", "log_likelihood", "sample_stats")}
    idata = az.from_dict(**groups, dims=dims, coords=coords, attrs=attrs, **group_attrs)
    if history is not None:
        table = _history_dict(history)
        num_epochs = len(next(iter(table.values()))) if table else 0
        dataset = az.dict_to_dataset(
            table, default_dims=[], dims={k: ["epoch"] for k in table},
            coords={"epoch": np.arange(1, num_epochs + 1)}, attrs={"creation_library": "pvae"},
        )
        idata.add_groups({HISTORY_GROUP: dataset})
    return idata


# -- PSIS ----------------------------------------------------------------------------
@dataclass(frozen=True)
class PsisDiagnostics:
    """Pareto k-hat of the importance weights :math:`p(x, z) / q(z \\mid x)` per datum.

    :ivar torch.Tensor khat: ``(batch,)`` estimated Pareto shape of each
        datum's weights; inf when ArviZ cannot fit the tail (4 or fewer tail
        values); -inf when the log-weights agree to within rounding
        (:math:`256\\,\\epsilon\\,(1 + \\max_k |\\log w_k|)`): an exact guide,
        whose weights have no tail.
    :ivar torch.Tensor ess: ``(batch,)`` effective sample size of the
        Pareto-smoothed weights, :math:`1 / \\sum_k \\tilde w_k^2`.
    :ivar torch.Tensor log_evidence: ``(batch,)`` the plain importance
        estimate :math:`\\log \\frac1K \\sum_k w_k` (the IWAE bound).
    :ivar int num_particles: K, weights per datum.
    :ivar float threshold: :math:`\\min(1 - 1/\\log_{10} K,\\ 0.7)`, the
        sample-size-dependent reliability threshold (Vehtari et al. 2024).
    """

    khat: torch.Tensor
    ess: torch.Tensor
    log_evidence: torch.Tensor
    num_particles: int
    threshold: float

    @property
    def reliable(self) -> torch.Tensor:
        """``(batch,)`` bool: ``khat <= threshold``."""
        return self.khat <= self.threshold

    def summary(self) -> dict[str, float | int]:
        """Max and mean k-hat, fraction unreliable, K and the threshold, as numbers."""
        finite = self.khat[torch.isfinite(self.khat)]
        return {
            "khat_max": float(self.khat.max()),
            "khat_mean": float(finite.mean()) if finite.numel() else math.nan,
            "fraction_unreliable": float((~self.reliable).double().mean()),
            "num_particles": self.num_particles,
            "threshold": self.threshold,
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (lists of floats), e.g. for JSON."""
        return {
            "khat": self.khat.tolist(),
            "ess": self.ess.tolist(),
            "log_evidence": self.log_evidence.tolist(),
            "num_particles": self.num_particles,
            "threshold": self.threshold,
        }


@program_verb("pair")
def psis_diagnostics(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_particles: int = 1000,
    chunk_size: int | None = 256,
    data_plate: str | None = None,
    max_plate_nesting: int | None = None,
    **kwargs: Any,
) -> PsisDiagnostics:
    """Pareto k-hat of each datum's importance weights: is ``log_evidence`` reliable?

    :func:`pvae.infer.log_evidence` averages the weights
    :math:`w_k = p(x, z_k) / q(z_k \\mid x)`, :math:`z_k \\sim q(z \\mid x)`. Its
    error is governed by the right tail of the weight distribution. PSIS
    (Vehtari et al. 2024) fits a generalised Pareto distribution to the
    largest :math:`M = \\min(K/5,\\ 3\\sqrt K)` weights; its shape
    :math:`\\hat k` estimates how many moments the weights have
    (:math:`\\mathbb E[w^r] < \\infty` for :math:`r < 1/k`):

    * :math:`\\hat k < 0.5`: finite variance, the estimate converges at the
      usual :math:`1/\\sqrt K` rate;
    * :math:`0.5 \\le \\hat k \\le 0.7`: infinite variance, still usable with
      care (the threshold is :math:`\\min(1 - 1/\\log_{10} K,\\ 0.7)`);
    * :math:`\\hat k > 0.7`: the estimate of :math:`\\log p(x)` (and the gap)
      is unreliable at any practical K: the guide is too narrow or misses a
      mode (Yao et al. 2018).

    Computed with ``arviz.psislw`` on the ``(batch, K)`` log-weights (relative
    efficiency 1: independent draws).

    :param callable model: a Pyro model whose data sit in a ``pyro.plate``; or a
        program with ``.model`` and ``.guide``, and then no guide argument.
    :param callable guide: its guide, same signature.
    :param args: the program's positional arguments, e.g. ``x``.
    :param int num_particles: K, weights per datum. Default 1000 (k-hat
        needs a few hundred to be stable).
    :param int chunk_size: particles per vectorised pass. Default 256; None
        for one pass.
    :param str data_plate: name of the data plate.
    :param int max_plate_nesting: the program's plate depth; guessed if None.
    :param kwargs: the program's keyword arguments.
    :returns: :class:`PsisDiagnostics`. A data plate that subsamples at random
        draws its indices once, in the first chunk; every chunk reuses them.
    """
    import arviz as az

    num_particles = check_count("num_particles", num_particles)
    chunk_size = check_count("chunk_size", chunk_size, allow_none=True)
    if num_particles < 10:
        raise ValueError(
            f"num_particles must be at least 10 to fit a Pareto tail, got {num_particles}. "
            "Try num_particles=1000."
        )
    if max_plate_nesting is None:
        max_plate_nesting = guess_max_plate_nesting(model, guide, args, kwargs)
    size = num_particles if chunk_size is None else chunk_size
    chunks, drawn = [], 0
    with torch.no_grad():
        while drawn < num_particles:
            k = min(size, num_particles - drawn)
            slp = site_log_probs(model, guide, *args, num_particles=k, data_plate=data_plate,
                                 max_plate_nesting=max_plate_nesting, **kwargs)
            if not drawn and slp.subsample:  # every chunk on the first chunk's random subsample
                model, guide = pin_subsample(model, slp.subsample), pin_subsample(guide, slp.subsample)
            dtype = slp.log_weight.dtype
            chunks.append(slp.log_weight.double())
            drawn += k
    log_w = torch.cat(chunks).T.contiguous()  # (batch, K)
    # Weights equal up to rounding (an exact guide: log w = log p(x) for every draw)
    # have no tail: k-hat -inf and equal smoothed weights (ESS = K). They never reach
    # ArviZ, whose tail fit would divide by a zero order statistic (NaN weights, warnings).
    spread = log_w.max(-1).values - log_w.min(-1).values
    rounding = _CONSTANT_ULPS * torch.finfo(dtype).eps * (1 + log_w.abs().max(-1).values)
    constant = spread <= rounding
    khat = torch.full(log_w.shape[:-1], -math.inf, dtype=torch.float64)
    smoothed = torch.full(log_w.shape, -math.log(num_particles), dtype=torch.float64)  # on the CPU, as ArviZ's
    if not bool(constant.all()):
        tailed = (~constant).cpu()
        fitted, fitted_khat = az.psislw(log_w.cpu()[tailed].numpy(), reff=1.0)
        khat[tailed] = torch.as_tensor(np.asarray(fitted_khat), dtype=torch.float64).reshape(-1)
        smoothed[tailed] = torch.as_tensor(np.asarray(fitted), dtype=torch.float64).reshape(-1, num_particles)
    ess = 1.0 / smoothed.exp().pow(2).sum(-1)
    evidence = log_w.logsumexp(-1) - math.log(num_particles)
    threshold = min(1.0 - 1.0 / math.log10(num_particles), KHAT_THRESHOLD)
    return PsisDiagnostics(khat.to(dtype), ess.to(dtype), evidence.to(dtype), num_particles, threshold)
