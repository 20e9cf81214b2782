"""Network builders and distribution heads shared by every pvae model."""

from __future__ import annotations

import math
from typing import Literal, Sequence

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch.distributions.utils import _standard_normal
from torch import nn

Activation = Literal["relu", "tanh", "elu", "softplus", "gelu", "silu"]
_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}
MIN_SCALE = 1e-4

__all__ = [
    "Activation",
    "DiagonalNormal",
    "EventWrapped",
    "Independent",
    "NormalHead",
    "SameShapeExpand",
    "StandardNormal",
    "diagonal_normal",
    "mlp",
    "positive",
]


def _activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ValueError(
            f"activation must be one of {sorted(_ACTIVATIONS)}, got {name!r}."
        )
    return _ACTIVATIONS[name]()


def mlp(
    in_dim: int,
    hidden_dims: Sequence[int],
    out_dim: int | None = None,
    activation: Activation = "relu",
) -> nn.Sequential:
    """A multilayer perceptron ``in_dim -> hidden_dims... -> out_dim``.

    Hidden layers are followed by ``activation``; the output layer (if
    ``out_dim`` is given) is linear.

    :param int in_dim: input features.
    :param hidden_dims: widths of the hidden layers (may be empty).
    :param out_dim: width of a final linear layer, or None for none.
    :param str activation: one of relu, tanh, elu, softplus, gelu, silu.
    """
    layers: list[nn.Module] = []
    width = in_dim
    for h in hidden_dims:
        layers += [nn.Linear(width, int(h)), _activation(activation)]
        width = int(h)
    if out_dim is not None:
        layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


def positive(raw: torch.Tensor, min_value: float = MIN_SCALE) -> torch.Tensor:
    """Map an unconstrained tensor to ``(min_value, inf)`` by softplus."""
    return F.softplus(raw) + min_value


class NormalHead(nn.Module):
    """Linear head giving the ``loc`` and ``scale`` of a diagonal Normal.

    :param int in_dim: input features.
    :param int out_dim: dimension of the Normal.
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, 2 * out_dim)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw_scale = self.linear(h).chunk(2, dim=-1)
        return loc, positive(raw_scale)


_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class SameShapeExpand:
    """Mixin for distributions: :meth:`expand` to the own batch shape is free.

    Pyro's plates expand a site's distribution once per enclosing plate, also
    when it already has the plates' shape (a likelihood computed from a
    decoder's ``(K, batch, D)`` output); torch builds a new object every time.
    Distributions are immutable, so the same one serves.
    """

    def expand(self, batch_shape, _instance=None):
        if _instance is None and tuple(batch_shape) == tuple(self.batch_shape):
            return self
        return super().expand(batch_shape, _instance)


class Independent(SameShapeExpand, dist.Independent):
    """``dist.Independent`` with a free same-shape :meth:`expand` (:class:`SameShapeExpand`)."""


class EventWrapped(SameShapeExpand):
    """Mixin for leaf distributions: :meth:`to_event` wraps in :attr:`event_class`
    (an :class:`Independent` that keeps the free same-shape expand, or one
    with a cheaper ``log_prob``)."""

    event_class: type = Independent

    def to_event(self, reinterpreted_batch_ndims: int | None = None) -> dist.TorchDistribution:
        if reinterpreted_batch_ndims is None:
            reinterpreted_batch_ndims = len(self.batch_shape)
        return self.event_class(self, reinterpreted_batch_ndims) if reinterpreted_batch_ndims else self


class DiagonalNormal(EventWrapped, dist.Normal):
    """``dist.Normal`` whose :meth:`log_prob` works on its parameters before broadcasting.

    .. math::

        \\log \\mathcal N(z; \\mu, \\sigma) = -\\frac{(z - \\mu)^2}{2 \\sigma^2}
            - \\log \\sigma - \\tfrac12 \\log 2\\pi .

    Inside plates (a particle plate of K draws above the data plate) Pyro
    expands every distribution to the plates' batch shape, and torch's
    ``Normal.log_prob`` then takes ``log`` and the square of the expanded
    scale: K times the work of one ``(batch, D)`` pass, for the same numbers.
    This class remembers the parameters it was built with across
    :meth:`expand` and lets the ``(value - loc)`` broadcast do the expansion;
    values and gradients are those of ``dist.Normal``.
    """

    def expand(self, batch_shape, _instance=None) -> "DiagonalNormal":
        new = super().expand(batch_shape, _instance)
        if new is not self:
            new._unexpanded = self.__dict__.get("_unexpanded", (self.loc, self.scale))
        return new

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        eps = _standard_normal(shape, dtype=self.loc.dtype, device=self.loc.device)
        value = self.loc + eps * self.scale
        self._drawn = (value, eps)
        return value

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        loc, scale = self.__dict__.get("_unexpanded", (self.loc, self.scale))
        drawn = self.__dict__.get("_drawn")
        if drawn is not None and value is drawn[0]:
            # z = loc + scale * eps from rsample: (z - loc) / scale is eps, whose total
            # derivative in loc and scale is zero, so value and gradient are unchanged
            lp = drawn[1].pow(2).mul(-0.5).sub(scale.log()).sub(_HALF_LOG_2PI)
        else:
            lp = (value - loc).pow(2).div(scale.pow(2).mul(-2.0)).sub(scale.log()).sub(_HALF_LOG_2PI)
        return _as_batch(lp, self.batch_shape)


class StandardNormal(DiagonalNormal):
    """:math:`\\mathcal N(0, 1)` elementwise: a latent prior.

    ``loc`` and ``scale`` must be zeros and ones; they give the shape, dtype
    and device (and serve sampling, ``mean``, KL divergences), while
    :meth:`log_prob` is :math:`-\\tfrac12 z^2 - \\tfrac12 \\log 2\\pi` without
    arithmetic on them (checked when validation is on).
    """

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
            if not (bool((self.loc == 0).all()) and bool((self.scale == 1).all())):
                raise ValueError("StandardNormal needs loc = 0 and scale = 1; use DiagonalNormal.")
        return _as_batch(value.pow(2).mul(-0.5).sub(_HALF_LOG_2PI), self.batch_shape)


def _as_batch(lp: torch.Tensor, batch_shape: torch.Size) -> torch.Tensor:
    """``lp`` broadcast to ``batch_shape`` (log-densities of unexpanded parameters)."""
    if lp.shape == batch_shape:
        return lp
    return lp.expand(torch.broadcast_shapes(lp.shape, batch_shape))


def diagonal_normal(loc: torch.Tensor, scale: torch.Tensor) -> dist.TorchDistribution:
    """:math:`\\mathcal N(\\mathrm{loc}, \\mathrm{diag}\\,\\mathrm{scale}^2)` over the last dim
    (a :class:`DiagonalNormal` with one event dim): the latent of pvae's encoders and priors."""
    return DiagonalNormal(loc, scale).to_event(1)
