"""The seam every bound is built on: per-site, per-datum log-densities.

Run the guide, replay the model against it (optionally under an outer,
vectorised particle plate), and return for every sample site its log-density
per particle and per datum, a tensor of shape ``(num_particles, batch)``. The
ELBO, its reconstruction / KL split, IWAE, Renyi bounds and log-evidence
estimates are all reductions of this one object (DESIGN principle 1).

**Auxiliary guide sites.** A latent guide site absent from the model and
marked ``infer={"is_auxiliary": True}`` (the auxiliary latent of Pyro's
``AutoNormal`` / ``AutoContinuous`` guides, or a hand-written
``u ~ q(u); z ~ Delta(T(u))``) enters the log-weight through its guide
density alone, with no model term, as in Pyro's ``Trace_ELBO``:

.. math::

    \\log w = \\log p(x, z) - \\log q(u \\mid x) - \\log q(z \\mid u, x).

When :math:`z = T(u)` is an invertible map and the ``Delta`` at :math:`z`
carries ``log_density`` :math:`= -\\log |\\det \\partial T / \\partial u|` (as
Pyro's autoguides set it), :math:`\\log q(u) + \\log q(z \\mid u)` is the
marginal :math:`\\log q(z \\mid x)`, and every bound is the bound of the
marginal guide. A guide-only latent site *not* so marked is an error (usually
a misspelt site name). Observed guide sites (e.g. the auxiliary classifiers of
CEVAE) belong to no bound and are left out.

**Random subsampling.** A plate with ``subsample_size`` draws new indices on
every run. Estimators that run the pair several times for one answer (chunks of
particles, optimisation steps) pin the first run's indices
(``SiteLogProbs.subsample``, :func:`pin_subsample`), so that every run
sees the same data points.

Log-densities are **unscaled**: a subsample scale (``pyro.plate(...,
subsample_size=...)``) or ``poutine.scale`` (beta) does not enter them, so a
per-datum bound never depends on the minibatch size. The scale of each site is
kept beside it (:attr:`SiteLogProbs.scales`) for training objectives that want
it. ``poutine.mask`` and masked distributions are applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numbers

import torch
from pyro import poutine
from pyro.distributions import Delta
from pyro.distributions.torch_distribution import TorchDistributionMixin
from pyro.poutine.indep_messenger import CondIndepStackFrame
from pyro.poutine.messenger import Messenger
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import prune_subsample_sites, site_is_subsample
from torch.distributions import Distribution

from ..models.base import program_verb

__all__ = [
    "PARTICLE_PLATE",
    "SiteLogProbs",
    "find_data_plate",
    "check_count",
    "guess_max_plate_nesting",
    "pin_subsample",
    "site_log_probs",
    "trace_pair",
]

PARTICLE_PLATE = "num_particles_vectorized"


@dataclass(frozen=True)
class SiteLogProbs:
    """Per-site log-densities of one guide/model run, per particle and datum.

    Every tensor is ``(num_particles, batch)``, where batch is the size of the
    data plate in this run (the subsample, if the plate subsamples).

    :ivar dict log_p: model log-densities of latent and observed sites.
    :ivar dict log_q: guide log-densities of latent and auxiliary sites.
    :ivar tuple observed: names of observed model sites.
    :ivar tuple latent: names of latent sites (sampled by the guide).
    :ivar tuple auxiliary: names of auxiliary guide sites (latent guide sites
        marked ``infer={"is_auxiliary": True}`` that the model lacks): they
        have ``log_q`` entries and no ``log_p`` entry.
    :ivar dict subsample: ``{plate name: (subsample_size,) indices}`` of the
        plates that drew a random subsample in this run (empty when none did);
        pass it to :func:`pvae.infer.pin_subsample` to run the pair again on the same data.
    :ivar dict scales: the scale (beta, subsample factor) Pyro attached to each
        model site; not applied to the tensors above.
    :ivar dict guide_scales: likewise for guide sites.
    :ivar model_trace: the model's ``pyro.poutine.Trace``.
    :ivar guide_trace: the guide's ``pyro.poutine.Trace``.
    :ivar int particle_dim: the (negative) batch dim of the particle plate.
    :ivar int data_dim: the (negative) batch dim of the data plate.
    """

    log_p: dict[str, torch.Tensor]
    log_q: dict[str, torch.Tensor]
    observed: tuple[str, ...]
    latent: tuple[str, ...]
    scales: dict[str, Any] = field(repr=False)
    guide_scales: dict[str, Any] = field(repr=False)
    model_trace: Any = field(repr=False)
    guide_trace: Any = field(repr=False)
    particle_dim: int | None = field(default=None, repr=False)
    data_dim: int | None = field(default=None, repr=False)
    auxiliary: tuple[str, ...] = ()
    subsample: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def log_likelihood(self) -> torch.Tensor:
        """:math:`\\log p(x \\mid z)` summed over observed sites: ``(K, batch)``."""
        return _total(self.log_p[n] for n in self.observed)

    @property
    def log_prior(self) -> torch.Tensor:
        """:math:`\\log p(z)` summed over latent sites: ``(K, batch)`` (0 without a latent site)."""
        return _total((self.log_p[n] for n in self.latent), empty=self.log_likelihood)

    @property
    def log_guide(self) -> torch.Tensor:
        """:math:`\\log q(z \\mid x)` summed over latent and auxiliary sites: ``(K, batch)``
        (0 without a latent site)."""
        return _total((self.log_q[n] for n in self.latent + self.auxiliary), empty=self.log_likelihood)

    @property
    def log_weight(self) -> torch.Tensor:
        """Importance log-weights :math:`\\log p(x, z) - \\log q(z \\mid x)`: ``(K, batch)``."""
        return self.log_likelihood + self.log_prior - self.log_guide

    def per_datum(self, name: str, tensor: torch.Tensor, event_dim: int = 0, guide: bool = False) -> torch.Tensor:
        """Reduce a tensor shaped like site ``name``'s ``log_prob`` the way log-densities are.

        Applies the site's mask and sums every batch dim but the particle and
        data dims; e.g. an analytic KL of the site's guide and prior
        distributions becomes ``(K, batch)``. With ``event_dim > 0`` the last
        ``event_dim`` dims of ``tensor`` are kept, flattened, on the right:
        ``(K, batch, E)``.

        :param str name: a sample site of the run.
        :param torch.Tensor tensor: site batch shape (plus ``event_dim`` dims).
        :param int event_dim: trailing dims to keep. Default 0.
        :param bool guide: take the mask from the guide's site. Default False.
        """
        site = (self.guide_trace if guide else self.model_trace).nodes[name]
        num_particles, batch = next(iter(self.log_p.values())).shape
        return _reduce_per_datum(
            tensor, site["mask"], name, self.particle_dim, self.data_dim, num_particles, batch, event_dim
        )


def _total(terms: Iterable[torch.Tensor], empty: torch.Tensor | None = None) -> torch.Tensor:
    """The sum of ``terms``; zeros shaped like ``empty`` for none (a model without a latent
    variable, whose bounds are then its exact log-likelihood), or an error without ``empty``."""
    out = None
    for t in terms:
        out = t if out is None else out + t
    if out is None:
        if empty is None:
            raise ValueError("the program has no site of that kind.")
        return torch.zeros_like(empty)
    return out


def check_count(name: str, value: Any, allow_none: bool = False) -> int | None:
    """``value`` as an ``int`` if it is a positive integer (``int`` or a numpy
    integer; not a bool, not a float such as ``2.0``), None if allowed.

    :raises ValueError: naming the argument and showing the value got.
    """
    if allow_none and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(
            f"{name} must be a positive integer{' or None' if allow_none else ''}, got {value!r}."
        )
    return int(value)


class _PinSubsample(Messenger):
    """Replay given indices at the subsample sites of randomly subsampling plates."""

    def __init__(self, indices: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.indices = indices

    def _pyro_sample(self, msg: dict) -> None:
        if msg["value"] is not None or not site_is_subsample(msg):
            return  # a subsample given by the program itself (subsample=...) is kept
        idx = self.indices.get(msg["name"])
        if idx is None:
            return
        fn = msg["fn"]
        size, wanted = fn.size, fn.subsample_size
        if (wanted is not None and wanted != idx.shape[0]) or (idx.numel() and int(idx.max()) >= size):
            raise ValueError(
                f"plate {msg['name']!r} drew {idx.shape[0]} of {size} indices in the first run of this "
                f"estimate and now asks for subsample_size={wanted} of size={size}: the runs would "
                "evaluate different data points. Try passing the indices yourself, "
                "pyro.plate(..., subsample=idx), with the same plate sizes in every run."
            )
        msg["value"], msg["done"] = idx, True


def pin_subsample(fn: Callable, subsample: dict[str, torch.Tensor]) -> Callable:
    """``fn`` with the given subsample indices replayed at its subsampling plates.

    A plate ``pyro.plate(name, size, subsample_size=B)`` draws ``B`` random
    indices on every run; under this handler the plates named in
    ``subsample`` use the given indices instead, so that repeated runs of a
    model/guide pair (chunks of particles, optimisation steps) evaluate the
    same data points. Plates given ``subsample=`` by the program keep theirs.

    :param callable fn: a model or guide.
    :param dict subsample: ``{plate name: indices}``, e.g.
        ``SiteLogProbs.subsample`` of a first run. Empty: ``fn`` itself.
    :raises ValueError: at run time, when a plate's size or subsample size
        differs from the pinned indices'.
    """
    if not subsample:
        return fn
    return _PinSubsample(dict(subsample))(fn)


def _random_subsample(*traces: Any) -> dict[str, torch.Tensor]:
    """Indices of the plates that drew a random subsample, from raw (unpruned) traces."""
    out: dict[str, torch.Tensor] = {}
    for trace in traces:
        for name, site in trace.nodes.items():
            if name in out or not site_is_subsample(site):
                continue
            fn = site["fn"]
            if fn.subsample_size is not None and fn.subsample_size < fn.size:
                out[name] = site["value"]
    return out


def _sample_sites(trace) -> list[tuple[str, dict]]:
    return [(n, s) for n, s in trace.nodes.items() if s["type"] == "sample"]


def is_point_mass(fn: Distribution) -> bool:
    """``fn`` is a ``Delta``, possibly wrapped (``Independent``, ``MaskedDistribution``,
    ``ExpandedDistribution``)."""
    while not isinstance(fn, Delta) and isinstance(getattr(fn, "base_dist", None), Distribution):
        fn = fn.base_dist
    return isinstance(fn, Delta)


def guess_max_plate_nesting(model: Callable, guide: Callable, args: tuple, kwargs: dict) -> int:
    """Run the pair once and return the deepest plate nesting it uses."""
    with poutine.block():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    dims = [
        -frame.dim
        for trace in (model_trace, guide_trace)
        for _, site in _sample_sites(prune_subsample_sites(trace))
        for frame in site["cond_indep_stack"]
        if frame.vectorized
    ]
    return max(dims, default=0)


class _PairRecorder(Messenger):
    """``poutine.trace``, ``poutine.replay`` and the particle ``pyro.plate`` in one handler.

    Records every sample site of a run in a :class:`~pyro.poutine.Trace` (as
    ``poutine.trace`` records it: a shallow copy of the site's message when it
    leaves the effect stack), replays the latent values of ``replay`` (as
    ``poutine.replay``), and with ``num_particles > 1`` adds the particle plate's
    frame at ``dim`` and broadcasts each distribution over it (as a full-size
    ``pyro.plate``, which draws no subsample). One pass over the effect stack
    per site instead of three: Pyro's plate, trace and replay messengers cost
    about 0.08 ms a training step, 2-3% of a small model's step.
    """

    def __init__(self, num_particles: int, dim: int, replay: Any = None) -> None:
        super().__init__()
        self.num_particles, self.dim = num_particles, dim
        self.frame = CondIndepStackFrame(PARTICLE_PLATE, dim, num_particles, 0, num_particles)
        self.replay = None if replay is None else replay.nodes
        self.trace = Trace()

    def _process_message(self, msg: dict) -> None:
        if self.num_particles > 1:
            self._broadcast(msg)
        if self.replay is None or msg["type"] != "sample" or msg["is_observed"]:
            return
        site = self.replay.get(msg["name"])
        if site is None:
            return
        if site["type"] != "sample" or site["is_observed"]:
            raise RuntimeError(f"site {msg['name']} must be sampled in trace")
        msg["done"], msg["value"], msg["infer"] = True, site["value"], site["infer"]

    def _broadcast(self, msg: dict) -> None:
        stack = msg["cond_indep_stack"]
        if any(f.dim == self.dim for f in stack):
            raise ValueError(
                f"site {msg['name']!r} sits in a plate at dim {self.dim}, where the particle plate is: "
                "the program nests its plates deeper than when max_plate_nesting was found. "
                "Pass max_plate_nesting= (the deepest nesting of any run)."
            )
        msg["cond_indep_stack"] = (self.frame,) + stack
        fn = msg["fn"]
        if msg["type"] != "sample" or msg["done"] or not isinstance(fn, TorchDistributionMixin):
            return
        shape, n = list(fn.batch_shape), -self.dim
        if len(shape) < n:
            shape = [1] * (n - len(shape)) + shape
        if shape[-n] == 1:
            shape[-n] = self.num_particles
        elif shape[-n] != self.num_particles:
            raise ValueError(
                f"Shape mismatch inside plate('{PARTICLE_PLATE}') at site {msg['name']} dim {self.dim}, "
                f"{self.num_particles} vs {shape[-n]}"
            )
        if tuple(shape) != tuple(fn.batch_shape):
            msg["fn"] = fn.expand(shape)

    def _postprocess_message(self, msg: dict) -> None:
        if msg["type"] == "sample":
            self.trace.add_node(msg["name"], **msg)


def trace_pair(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    num_particles: int = 1,
    max_plate_nesting: int | None = None,
) -> tuple[Any, Any, int]:
    """Trace the guide, then the model replayed against it.

    With ``num_particles > 1`` both run inside an outer particle plate (named
    ``"num_particles_vectorized"``, a full-size ``pyro.plate``) placed left of
    every plate of the program, so the particles are drawn in one vectorised
    pass. The traces hold the sample sites (not ``pyro.param`` sites, inputs
    or return values).

    :returns: ``(model_trace, guide_trace, particle_dim)``; ``particle_dim`` is
        the (negative) batch dimension of the particle plate.
    """
    if max_plate_nesting is None:
        max_plate_nesting = guess_max_plate_nesting(model, guide, args, kwargs)
    particle_dim = -max_plate_nesting - 1
    with _PairRecorder(num_particles, particle_dim) as guide_run:
        guide(*args, **kwargs)
    with _PairRecorder(num_particles, particle_dim, replay=guide_run.trace) as model_run:
        model(*args, **kwargs)
    return model_run.trace, guide_run.trace, particle_dim


def find_data_plate(model_trace, data_plate: str | None = None) -> tuple[str, int]:
    """Name and dim of the plate holding the data.

    ``data_plate`` if given; else the plate named ``"data"``; else the one plate
    shared by every observed site.

    :raises ValueError: listing the program's plates when none or several fit.
    """
    observed = [s for _, s in _sample_sites(model_trace) if s["is_observed"]]
    plates: dict[str, int] = {}
    shared: set[str] | None = None
    for site in observed:
        names = {f.name for f in site["cond_indep_stack"] if f.vectorized and f.name != PARTICLE_PLATE}
        shared = names if shared is None else shared & names
        plates.update({f.name: f.dim for f in site["cond_indep_stack"] if f.vectorized})
    for _, site in _sample_sites(model_trace):
        plates.update({f.name: f.dim for f in site["cond_indep_stack"] if f.vectorized})
    plates.pop(PARTICLE_PLATE, None)
    if data_plate is not None:
        if data_plate not in plates:
            raise ValueError(
                f"data_plate={data_plate!r} is not a plate of the model; its plates are "
                f"{sorted(plates)}."
            )
        return data_plate, plates[data_plate]
    if "data" in plates:
        return "data", plates["data"]
    if not observed:
        raise ValueError("the model has no observed sample site: nothing to evaluate. Pass data as obs=.")
    if shared is not None and len(shared) == 1:
        name = next(iter(shared))
        return name, plates[name]
    raise ValueError(
        "cannot tell which plate holds the data: the observed sites share the plates "
        f"{sorted(shared or [])} (the model's plates: {sorted(plates)}). "
        "Try data_plate='<name>', or name the data plate 'data'."
    )


def _per_datum(site: dict, particle_dim: int, data_dim: int | None, num_particles: int, batch: int) -> torch.Tensor:
    lp = site["fn"].log_prob(site["value"])
    return _reduce_per_datum(lp, site["mask"], site["name"], particle_dim, data_dim, num_particles, batch)


def _reduce_per_datum(
    lp: torch.Tensor,
    mask: torch.Tensor | None,
    name: str,
    particle_dim: int,
    data_dim: int | None,
    num_particles: int,
    batch: int,
    event_dim: int = 0,
) -> torch.Tensor:
    if event_dim:
        lp = lp.flatten(-event_dim) if event_dim > 1 else lp
        if mask is not None:
            lp = torch.where(torch.as_tensor(mask).unsqueeze(-1), lp, lp.new_zeros(()))
        lp = lp.movedim(-1, 0)  # (E, *batch_shape)
    else:
        if mask is not None:
            lp = torch.where(torch.as_tensor(mask), lp, lp.new_zeros(()))
        lp = lp.unsqueeze(0)
    ndim = -particle_dim
    if lp.dim() - 1 > ndim:
        raise ValueError(
            f"site {name!r} has log_prob shape {tuple(lp.shape[1:])}, with dims left of "
            "every plate (enumerated or unplated batch dims). Declare them with pyro.plate "
            "or .to_event()."
        )
    lp = lp.reshape(lp.shape[:1] + (1,) * (ndim + 1 - lp.dim()) + tuple(lp.shape[1:]))
    keep = {1} | ({1 + ndim + data_dim} if data_dim is not None else set())
    drop = [d for d in range(1, ndim + 1) if d not in keep]
    if drop:
        lp = lp.sum(drop, keepdim=True)
    lp = lp.reshape(lp.shape[0], lp.shape[1], -1)
    lp = lp.expand(lp.shape[0], num_particles, batch if data_dim is not None else lp.shape[2])
    return lp.movedim(0, -1) if event_dim else lp[0]


@program_verb("pair")
def site_log_probs(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_particles: int = 1,
    data_plate: str | None = None,
    max_plate_nesting: int | None = None,
    **kwargs: Any,
) -> SiteLogProbs:
    """Per-site log-densities, shape ``(num_particles, batch)``, of one vectorised run.

    :param callable model: a Pyro model whose data sit in a ``pyro.plate``; or a
        program with ``.model`` and ``.guide``, and then no guide argument.
    :param callable guide: its guide, same signature.
    :param int num_particles: particles drawn in one vectorised pass. Default 1.
    :param str data_plate: name of the data plate; found by itself when the
        plate is called ``"data"`` or is the only one shared by observed sites.
    :param int max_plate_nesting: the program's plate depth; guessed by one
        extra run if not given.
    :raises ValueError: on a non-integer ``num_particles``, a global latent (a
        latent outside the data plate: no per-datum density exists for it), or
        a latent guide site the model lacks that is not marked
        ``infer={"is_auxiliary": True}`` (auxiliary sites enter ``log_q``; see
        the module docstring).
    """
    num_particles = check_count("num_particles", num_particles)
    model_trace, guide_trace, particle_dim = trace_pair(
        model, guide, args, kwargs, num_particles, max_plate_nesting
    )
    subsample = _random_subsample(guide_trace, model_trace)
    model_trace, guide_trace = prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace)
    _, data_dim = find_data_plate(model_trace, data_plate)
    batch = None
    for _, site in _sample_sites(model_trace):
        if site["is_observed"]:
            for f in site["cond_indep_stack"]:
                if f.dim == data_dim:
                    batch = f.size
    log_p, log_q, scales, guide_scales = {}, {}, {}, {}
    observed, latent, auxiliary, unmarked = [], [], [], []
    guide_sites = dict(_sample_sites(guide_trace))
    for name, site in _sample_sites(model_trace):
        if not _in_plate(site, data_dim):
            raise ValueError(
                f"site {name!r} lies outside the data plate: it is a global variable, and "
                "per-datum bounds need every latent and observation inside the data plate. "
                "Try fitting global variables as parameters (pyro.param) or point estimates."
            )
        log_p[name] = _per_datum(site, particle_dim, data_dim, num_particles, batch)
        scales[name] = site["scale"]
        if site["is_observed"]:
            observed.append(name)
            continue
        if name not in guide_sites:
            raise ValueError(
                f"latent site {name!r} of the model has no counterpart in the guide; "
                f"guide sites: {sorted(guide_sites)}. Try adding pyro.sample({name!r}, ...) to the guide."
            )
        latent.append(name)
        log_q[name] = _per_datum(guide_sites[name], particle_dim, data_dim, num_particles, batch)
        guide_scales[name] = guide_sites[name]["scale"]
    for name, site in guide_sites.items():
        if name in log_p or site["is_observed"]:
            continue  # observed guide sites (auxiliary classifiers) belong to no bound
        if not site["infer"].get("is_auxiliary", False):
            unmarked.append(name)
            continue
        if not _in_plate(site, data_dim):
            raise ValueError(
                f"auxiliary guide site {name!r} lies outside the data plate: it is a global variable "
                "(e.g. the joint latent of an AutoContinuous guide), and per-datum bounds need every "
                "latent inside the data plate. Try a guide whose auxiliary sites sit in the data "
                "plate (e.g. AutoNormal), or fit global variables as parameters."
            )
        auxiliary.append(name)
        log_q[name] = _per_datum(site, particle_dim, data_dim, num_particles, batch)
        guide_scales[name] = site["scale"]
    if unmarked:
        raise _guide_only_error(unmarked)
    return SiteLogProbs(
        log_p, log_q, tuple(observed), tuple(latent), scales, guide_scales, model_trace, guide_trace,
        particle_dim=particle_dim, data_dim=data_dim, auxiliary=tuple(auxiliary), subsample=subsample,
    )


def _in_plate(site: dict, dim: int) -> bool:
    return any(f.dim == dim and f.vectorized for f in site["cond_indep_stack"])


def _guide_only_error(names: list[str]) -> ValueError:
    """The error for latent guide sites that the model lacks and that are not marked auxiliary."""
    return ValueError(
        f"guide sites {sorted(names)} do not appear in the model and are not marked auxiliary. "
        "Try adding them to the model (a misspelt site name?), or, for an auxiliary variable "
        "whose log q belongs in the bound, pyro.sample(..., infer={'is_auxiliary': True})."
    )
