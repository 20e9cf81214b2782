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
    "one_hot",
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
    dropout: float = 0.0,
) -> nn.Sequential:
    """A multilayer perceptron ``in_dim -> hidden_dims... -> out_dim``.

    Hidden layers are followed by ``activation`` (and, with ``dropout > 0``, by
    ``nn.Dropout(dropout)``, active in ``train()`` mode only); the output layer
    (if ``out_dim`` is given) is linear.

    :param int in_dim: input features.
    :param hidden_dims: widths of the hidden layers (may be empty).
    :param out_dim: width of a final linear layer, or None for none.
    :param str activation: one of relu, tanh, elu, softplus, gelu, silu.
    :param float dropout: probability of zeroing a hidden unit, in ``[0, 1)``. Default 0 (none).
    """
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}.")
    layers: list[nn.Module] = []
    width = in_dim
    for h in hidden_dims:
        layers += [nn.Linear(width, int(h)), _activation(activation)]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = int(h)
    if out_dim is not None:
        layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


def one_hot(codes: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``codes`` one-hot over a trailing dim of ``num_classes``, by comparison with
    ``arange``: unlike ``F.one_hot`` it reads no value into Python (``F.one_hot``
    checks the range with ``.item()``), so a captured training step can hold it.
    The caller validates the range; a code outside ``0..num_classes-1`` gives a row of zeros.
    """
    return (codes.unsqueeze(-1) == torch.arange(num_classes, device=codes.device)).to(dtype)


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


class _DiagonalNormalEvents(Independent):
    """A :class:`DiagonalNormal` with event dims: sums the quadratic form and the
    log-scales over the event before combining them (one pass over the
    ``(K, batch, D)`` draws instead of four)."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.base_dist._log_prob(value, self.reinterpreted_batch_ndims)


class DiagonalNormal(EventWrapped, dist.Normal):
    """``dist.Normal`` with a cheaper :meth:`log_prob`, the same values and gradients.

    .. math::

        \\log \\mathcal N(z; \\mu, \\sigma) = -\\tfrac12 \\epsilon^2 - \\log \\sigma
            - \\tfrac12 \\log 2\\pi, \\qquad \\epsilon = \\frac{z - \\mu}{\\sigma}.

    - Inside plates (a particle plate of K draws above the data plate) Pyro
      expands every distribution to the plates' batch shape, and torch's
      ``Normal.log_prob`` then takes ``log`` and the square of the expanded
      scale: K times the work of one ``(batch, D)`` pass. This class remembers
      the parameters it was built with across :meth:`expand` and lets the
      ``(value - loc)`` broadcast do the expansion.
    - At its own reparameterised draw :math:`z = \\mu + \\sigma \\epsilon`
      (the tensor :meth:`rsample` returned) it reads :math:`\\epsilon` from the
      draw: :math:`(z - \\mu)/\\sigma` is :math:`\\epsilon` whatever
      :math:`\\mu, \\sigma`, so its total derivative in them is zero and the
      gradient is unchanged. A copy with detached parameters (STL, DReG) is a
      new object and differentiates through :math:`z` as it must.
    - With event dims (:meth:`to_event`) the squares and the log-scales are
      summed over the event before they are combined.
    """

    event_class = _DiagonalNormalEvents

    def expand(self, batch_shape, _instance=None) -> "DiagonalNormal":
        new = super().expand(batch_shape, _instance)
        if new is not self:
            new._unexpanded = self.__dict__.get("_unexpanded", (self.loc, self.scale))
        return new

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        eps = _standard_normal(shape, dtype=self.loc.dtype, device=self.loc.device)
        value = torch.addcmul(self.loc, eps, self.scale)
        self._drawn = (value, eps)
        return value

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self._log_prob(value, 0)

    def _squared_and_log_scale(self, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:math:`\\epsilon^2` (the value's shape broadcast with the parameters') and
        :math:`\\log \\sigma` (as built, unexpanded)."""
        loc, scale = self.__dict__.get("_unexpanded", (self.loc, self.scale))
        drawn = self.__dict__.get("_drawn")
        if drawn is not None and value is drawn[0]:
            return drawn[1].pow(2), scale.log()
        return (value - loc).div(scale).pow(2), scale.log()

    def _log_prob(self, value: torch.Tensor, event_ndims: int) -> torch.Tensor:
        """Log-density summed over the rightmost ``event_ndims`` batch dims."""
        if self._validate_args:
            self._validate_sample(value)
        squared, log_scale = self._squared_and_log_scale(value)
        batch_shape, count = self.batch_shape, 1
        if event_ndims:
            event = batch_shape[len(batch_shape) - event_ndims:]
            batch_shape, count = batch_shape[: len(batch_shape) - event_ndims], event.numel()
            squared = _sum_event(squared, event)
            log_scale = None if log_scale is None else _sum_event(log_scale, event)
        lp = squared.mul(-0.5)
        if log_scale is not None:
            lp = lp - log_scale
        return _as_batch(lp.sub(count * _HALF_LOG_2PI), batch_shape)


class StandardNormal(DiagonalNormal):
    """:math:`\\mathcal N(0, 1)` elementwise: a latent prior.

    ``loc`` and ``scale`` must be zeros and ones; they give the shape, dtype
    and device (and serve sampling, ``mean``, KL divergences), while
    :meth:`log_prob` is :math:`-\\tfrac12 z^2 - \\tfrac12 \\log 2\\pi` without
    arithmetic on them (checked when validation is on).
    """

    def _squared_and_log_scale(self, value: torch.Tensor) -> tuple[torch.Tensor, None]:
        if self._validate_args and not (bool((self.loc == 0).all()) and bool((self.scale == 1).all())):
            raise ValueError("StandardNormal needs loc = 0 and scale = 1; use DiagonalNormal.")
        return value.pow(2), None


def _sum_event(t: torch.Tensor, event: torch.Size) -> torch.Tensor:
    """``t`` broadcast over the ``event`` dims (on the right) and summed over them."""
    n = len(event)
    if t.dim() < n or t.shape[t.dim() - n:] != event:
        t = t.expand(torch.broadcast_shapes(t.shape, event))
    return t.sum(tuple(range(-n, 0)))


def _as_batch(lp: torch.Tensor, batch_shape: torch.Size) -> torch.Tensor:
    """``lp`` broadcast to ``batch_shape`` (log-densities of unexpanded parameters)."""
    if lp.shape == batch_shape:
        return lp
    return lp.expand(torch.broadcast_shapes(lp.shape, batch_shape))


def diagonal_normal(loc: torch.Tensor, scale: torch.Tensor) -> dist.TorchDistribution:
    """:math:`\\mathcal N(\\mathrm{loc}, \\mathrm{diag}\\,\\mathrm{scale}^2)` over the last dim
    (a :class:`DiagonalNormal` with one event dim): the latent of pvae's encoders and priors."""
    return DiagonalNormal(loc, scale).to_event(1)
