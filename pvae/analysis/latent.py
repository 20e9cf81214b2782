"""Latent-space tools: prototypes, traversals, interpolations, latent arithmetic.

Everything here reads a fitted program and returns tensors; nothing plots
(see :mod:`pvae.analysis.figures` for ``plot_traversal`` and
``plot_interpolation``) and nothing trains.

**The autoencoder protocol.** The tools work with any object that has

* ``encode(x) -> (loc, scale)``: the parameters of a Gaussian
  :math:`q(z \\mid x)`, each ``(batch, latent_dim)`` (only :func:`encode_mean`
  needs it), and
* ``decode(z) -> distribution``: :math:`p(x \\mid z)` for ``z`` of any batch
  shape ``(..., latent_dim)``, with batch shape ``z.shape[:-1]``,

such as :class:`pvae.VAE`. The decoded *point* of a distribution is the
family's point reconstruction when the object has a ``likelihood`` with a
``point`` method (as :class:`pvae.VAE` does: the mean, or the mode for
categorical features), else the distribution's ``mean``. ``latent_dim`` is
read from the object's ``latent_dim`` attribute where a function needs it and
is not given.

.. math::

    \\text{prototype} = \\mathbb E[x \\mid z = 0], \\qquad
    \\text{traversal}_d(v) = \\mathbb E[x \\mid z = z_0 + v\\, e_d],

    \\text{arithmetic}(z_A, z_B, z_0) = \\mathbb E[x \\mid z = z_A + z_B - z_0]
        = \\mathbb E[x \\mid z = z_0 + (z_A - z_0) + (z_B - z_0)].

The prototype decodes the prior mean, the point every encoding is pulled
towards by the KL term: the model's "typical" datum, not the average of the
data [3]. Latent arithmetic predicts the effect of two perturbations together
from each alone, assuming their displacements add in latent space [4]; with a
linear decoder it equals data-space arithmetic exactly.

References

1. D. P. Kingma, M. Welling. Auto-Encoding Variational Bayes. ICLR 2014.
2. T. White. Sampling Generative Networks. arXiv:1609.04468, 2016 (slerp).
3. Seed 000: decoding :math:`z = 0` gives the model's prototype, e.g. a
   prototypical cell from single-cell expression profiles.
4. Seed 001: combined perturbations (two drugs) as :math:`z_A + z_B - z_0`,
   exact for a linear decoder.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Sequence

import pyro
import torch

from ..inputs import DataError, as_data, as_data_args, program_dtype_device

__all__ = [
    "decoder_mean",
    "encode_mean",
    "interpolate",
    "interpolate_latent",
    "latent_arithmetic",
    "prototype",
    "traverse",
]

InterpolationMethod = Literal["linear", "slerp"]
_METHODS = ("linear", "slerp")


# -- the protocol ------------------------------------------------------------------
def _require(program: Any, method: str, what: str) -> Callable[..., Any]:
    fn = getattr(program, method, None)
    if not callable(fn):
        raise TypeError(
            f"program ({type(program).__name__}) has no callable {method}(): {what}. The latent tools "
            "need an object with encode(x) -> (loc, scale) and decode(z) -> distribution, such as "
            "pvae.VAE. Try wrapping your networks in a small class with those two methods."
        )
    return fn


def _decoded_point(program: Any, d: Any) -> torch.Tensor:
    if not isinstance(d, torch.distributions.Distribution):
        raise TypeError(
            f"program.decode(z) must return a torch/Pyro distribution, got {type(d).__name__}. "
            "Try returning e.g. dist.Bernoulli(logits=net(z)).to_event(1)."
        )
    point = getattr(getattr(program, "likelihood", None), "point", None)
    if callable(point):
        base = d.base_dist if isinstance(d, torch.distributions.Independent) else d
        return point(base)
    return d.mean


def decoder_mean(program: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """The decoder's point map :math:`f(z) = \\mathbb E[x \\mid z]` as a plain function.

    The returned function takes ``z`` of shape ``(..., latent_dim)`` and returns
    ``(..., input_dim)``, differentiably (use it with
    :func:`pvae.analysis.pullback_metric`, :func:`torch.func.jacrev`
    and :func:`torch.func.vmap`). Pyro's distribution validation is switched
    off inside it, as ``vmap`` cannot run data-dependent checks.

    :param program: an object with ``decode(z) -> distribution`` (module docstring).
    :raises TypeError: if ``program`` has no ``decode``.
    """
    decode = _require(program, "decode", "it maps a latent z to p(x | z)")

    def mean_fn(z: torch.Tensor) -> torch.Tensor:
        with pyro.validation_enabled(False):
            return _decoded_point(program, decode(z))

    mean_fn.__doc__ = f"E[x | z] of {type(program).__name__}.decode."
    return mean_fn


def _latent_dim(program: Any, latent_dim: int | None, fix: str) -> int:
    if latent_dim is None:
        latent_dim = getattr(program, "latent_dim", None)
    if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
        raise TypeError(
            f"cannot tell the latent dimension of {type(program).__name__}: it has no positive integer "
            f"attribute latent_dim (got {latent_dim!r}). Try {fix}."
        )
    return latent_dim


def _dtype(program: Any) -> torch.dtype:
    """The floating dtype of the program's parameters (or its ``dtype``), else torch's default."""
    dtype = program_dtype_device(program)[0] or getattr(program, "dtype", None)
    return dtype if isinstance(dtype, torch.dtype) else torch.get_default_dtype()


def _as_latent(z: Any, name: str, latent_dim: int | None = None) -> torch.Tensor:
    z = as_data(z, name)
    if z.dim() < 1:
        raise DataError(f"{name} must have a last dimension of size latent_dim, got a scalar. Try {name}.reshape(-1).")
    if latent_dim is not None and z.shape[-1] != latent_dim:
        raise DataError(
            f"{name} must have latent_dim={latent_dim} entries in its last dimension, got shape {tuple(z.shape)}."
        )
    return z


# -- the tools ---------------------------------------------------------------------
@torch.no_grad()
def encode_mean(program: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """The encoder mean :math:`\\mathbb E_q[z \\mid x]` of each datum.

    :param program: an object with ``encode(x, ...) -> (loc, scale)``; an
        ``encode`` returning a distribution is also accepted (its ``mean`` is used).
    :param torch.Tensor x: data of shape ``(batch, input_dim)``.
    :param args: further arguments of ``encode`` (e.g. a ``mask``).
    :returns: ``(batch, latent_dim)``, without gradient.
    :raises TypeError: if ``program`` has no ``encode`` or it returns something else.
    """
    encode = _require(program, "encode", "it maps data x to the parameters of q(z | x)")
    out = encode(*as_data_args(program, (x, *args)), **kwargs)
    if isinstance(out, torch.distributions.Distribution):
        return out.mean
    if isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out):
        return out[0]
    raise TypeError(
        f"{type(program).__name__}.encode(x) must return (loc, scale) tensors, got {type(out).__name__}. "
        "Try returning the Gaussian's loc and scale, as pvae.VAE.encode does."
    )


@torch.no_grad()
def prototype(program: Any, latent_dim: int | None = None) -> torch.Tensor:
    """The model's prototype: the decoded prior mean, :math:`\\mathbb E[x \\mid z = 0]` [3].

    :param program: an object with ``decode(z) -> distribution``.
    :param int latent_dim: the dimension of ``z``. Default ``program.latent_dim``.
    :returns: ``(input_dim,)``; ``z = 0`` takes the dtype of the program's
        parameters (or its ``dtype`` attribute).
    """
    k = _latent_dim(program, latent_dim, "prototype(program, latent_dim=...)")
    return decoder_mean(program)(torch.zeros(k, dtype=_dtype(program)))


@torch.no_grad()
def traverse(
    program: Any,
    dim: int,
    values: Sequence[float] | torch.Tensor,
    base: torch.Tensor | None = None,
) -> torch.Tensor:
    """Decode along one latent dimension: :math:`\\mathbb E[x \\mid z = z_0 + v\\, e_d]`.

    Coordinate ``dim`` of the base point is *set* to each value (not shifted),
    the other coordinates are kept.

    :param program: an object with ``decode(z) -> distribution``.
    :param int dim: the latent dimension to move along, ``0 <= dim < latent_dim``.
    :param values: the values of coordinate ``dim``, shape ``(num_values,)``, e.g.
        ``torch.linspace(-3, 3, 7)`` (the prior's +-3 standard deviations).
    :param torch.Tensor base: the base point(s) :math:`z_0`, ``(latent_dim,)`` or
        ``(batch, latent_dim)`` such as :func:`encode_mean` of some data.
        Default the prior mean :math:`z_0 = 0`.
    :returns: ``(num_values, input_dim)`` for one base point, or
        ``(batch, num_values, input_dim)``: one row of the traversal per base point.
    :raises ValueError: if ``dim`` is out of range or ``values`` is not 1-D.
    """
    if base is None:
        k = _latent_dim(program, None, "traverse(program, dim, values, base=torch.zeros(latent_dim))")
        base = torch.zeros(k, dtype=_dtype(program))
    base = _as_latent(base, "base")
    k = base.shape[-1]
    if isinstance(dim, bool) or not isinstance(dim, int) or not -k <= dim < k:
        raise ValueError(f"dim must be an integer in [0, {k}) (latent_dim={k}), got {dim!r}.")
    values = torch.as_tensor(values, dtype=base.dtype)
    if values.dim() != 1 or values.numel() == 0:
        raise ValueError(
            f"values must be a non-empty 1-D sequence of coordinates, got shape {tuple(values.shape)}. "
            "Try values=torch.linspace(-3, 3, 7)."
        )
    z = base.unsqueeze(-2).expand(*base.shape[:-1], len(values), k).clone()
    z[..., dim] = values
    return decoder_mean(program)(z)


def interpolate_latent(
    z_a: torch.Tensor, z_b: torch.Tensor, num_steps: int, method: InterpolationMethod = "linear"
) -> torch.Tensor:
    """Points from ``z_a`` to ``z_b`` (both included), linearly or by slerp [2].

    .. math::

        \\text{linear: } z(t) = (1 - t) z_a + t z_b, \\qquad
        \\text{slerp: } z(t) = \\frac{\\sin((1 - t)\\omega)}{\\sin\\omega} z_a
            + \\frac{\\sin(t\\omega)}{\\sin\\omega} z_b,\\quad
            \\cos\\omega = \\frac{z_a^\\top z_b}{\\|z_a\\|\\|z_b\\|},

    for :math:`t` evenly spaced in [0, 1]. Slerp follows the great circle, so
    between endpoints of equal norm every point keeps that norm, staying in the
    shell where a high-dimensional Gaussian prior puts its mass instead of
    cutting through the low-density centre. Where the endpoints are (nearly)
    parallel or antipodal (:math:`\\sin\\omega < 10^{-6}`) slerp falls back to
    the linear path.

    :param torch.Tensor z_a: start, ``(..., latent_dim)``.
    :param torch.Tensor z_b: end, broadcastable with ``z_a``.
    :param int num_steps: number of points, at least 2.
    :param str method: ``"linear"`` or ``"slerp"``. Default ``"linear"``.
    :returns: ``(..., num_steps, latent_dim)``.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {list(_METHODS)}, got {method!r}.")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
        raise ValueError(f"num_steps must be an integer >= 2 (both endpoints are included), got {num_steps!r}.")
    z_a, z_b = _as_latent(z_a, "z_a"), _as_latent(z_b, "z_b")
    if z_a.shape[-1] != z_b.shape[-1]:
        raise ValueError(
            f"z_a and z_b must have the same latent_dim, got shapes {tuple(z_a.shape)} and {tuple(z_b.shape)}."
        )
    z_a, z_b = torch.broadcast_tensors(z_a, z_b)
    a, b = z_a.unsqueeze(-2), z_b.unsqueeze(-2)  # (..., 1, k)
    t = torch.linspace(0.0, 1.0, num_steps, dtype=z_a.dtype).unsqueeze(-1)  # (num_steps, 1)
    linear = (1 - t) * a + t * b
    if method == "linear":
        return linear
    norms = a.norm(dim=-1, keepdim=True) * b.norm(dim=-1, keepdim=True)
    cos = ((a * b).sum(-1, keepdim=True) / norms.clamp_min(torch.finfo(z_a.dtype).tiny)).clamp(-1.0, 1.0)
    omega = torch.arccos(cos)
    sin = torch.sin(omega)
    ok = sin > 1e-6
    safe = torch.where(ok, sin, torch.ones_like(sin))
    slerp = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / safe
    return torch.where(ok, slerp, linear)


@torch.no_grad()
def interpolate(
    program: Any,
    z_a: torch.Tensor,
    z_b: torch.Tensor,
    num_steps: int = 10,
    method: InterpolationMethod = "linear",
) -> torch.Tensor:
    """Decode the path from ``z_a`` to ``z_b``: :math:`\\mathbb E[x \\mid z(t)]`.

    The latent path is :func:`interpolate_latent` (linear or slerp [2]); the
    first and last rows are the decoded endpoints.

    :param program: an object with ``decode(z) -> distribution``.
    :param torch.Tensor z_a: start, ``(latent_dim,)`` or ``(batch, latent_dim)``,
        e.g. ``encode_mean(vae, x_a)``.
    :param torch.Tensor z_b: end, broadcastable with ``z_a``.
    :param int num_steps: number of points, both endpoints included. Default 10.
    :param str method: ``"linear"`` or ``"slerp"``. Default ``"linear"``.
    :returns: ``(num_steps, input_dim)`` or ``(batch, num_steps, input_dim)``.
    """
    f = decoder_mean(program)  # the protocol check comes first
    return f(interpolate_latent(z_a, z_b, num_steps, method))


@torch.no_grad()
def latent_arithmetic(program: Any, z_a: torch.Tensor, z_b: torch.Tensor, z_0: torch.Tensor) -> torch.Tensor:
    """Predict a combined perturbation: :math:`\\mathbb E[x \\mid z = z_A + z_B - z_0]` [4].

    With :math:`z_0` a reference (control) code and :math:`z_A`, :math:`z_B`
    the codes under perturbations A and B alone, the displacements
    :math:`d_A = z_A - z_0`, :math:`d_B = z_B - z_0` are assumed to add:
    :math:`z_{AB} = z_0 + d_A + d_B`. For a linear decoder
    :math:`f(z) = W z + c` the prediction equals the data-space arithmetic
    :math:`f(z_A) + f(z_B) - f(z_0)` exactly; for a nonlinear one it differs,
    and the comparison with held-out combined data tests the additivity.

    :param program: an object with ``decode(z) -> distribution``.
    :param torch.Tensor z_a: code(s) under perturbation A, ``(..., latent_dim)``,
        e.g. the mean of :func:`encode_mean` over perturbed data.
    :param torch.Tensor z_b: code(s) under perturbation B, broadcastable.
    :param torch.Tensor z_0: reference code(s), broadcastable.
    :returns: ``(..., input_dim)``, the broadcast batch shape of the three codes.
    """
    f = decoder_mean(program)
    z_a, z_b, z_0 = _as_latent(z_a, "z_a"), _as_latent(z_b, "z_b"), _as_latent(z_0, "z_0")
    shapes = {z.shape[-1] for z in (z_a, z_b, z_0)}
    if len(shapes) != 1:
        raise ValueError(
            "z_a, z_b and z_0 must share latent_dim, got shapes "
            f"{tuple(z_a.shape)}, {tuple(z_b.shape)} and {tuple(z_0.shape)}."
        )
    return f(z_a + z_b - z_0)

