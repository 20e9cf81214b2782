"""The conditional VAE (Sohn et al. 2015) as a Pyro program.

A known condition :math:`c` (a stimulus, a batch label, a digit class) enters
both the encoder and the decoder:

.. math::

    p_\\theta(x, z \\mid c) = \\mathcal N(z; 0, I)\\, p_\\theta(x \\mid z, c), \\qquad
    q_\\phi(z \\mid x, c) = \\mathcal N\\big(z; \\mu_\\phi(x, c), \\mathrm{diag}\\,\\sigma_\\phi(x, c)^2\\big),

    \\mathrm{ELBO}(x \\mid c) = \\mathbb E_{q_\\phi(z \\mid x, c)}[\\log p_\\theta(x \\mid z, c)]
        - \\mathrm{KL}\\big(q_\\phi(z \\mid x, c) \\,\\|\\, p(z)\\big) \\le \\log p_\\theta(x \\mid c).

Why the latent keeps what :math:`c` does not explain (seed 004): the decoder
reads :math:`c` directly, so variation of :math:`x` that :math:`c` explains
needs no room in :math:`z`; and the KL term charges every nat by which
:math:`q(z \\mid x, c)` departs from the :math:`c`-independent prior, so
carrying information about :math:`c` in :math:`z` only costs. At the optimum
:math:`z` holds the residual variation (a digit's style rather than its class;
spontaneous rather than task-driven neural variability; biology rather than
batch, as in scVI's batch correction).

References

1. K. Sohn, H. Lee, X. Yan. Learning Structured Output Representation using
   Deep Conditional Generative Models. NeurIPS 2015.
2. D. P. Kingma, D. J. Rezende, S. Mohamed, M. Welling. Semi-Supervised
   Learning with Deep Generative Models. NeurIPS 2014 (the label-conditioned
   decoder of M2).
3. R. Lopez, J. Regier, M. B. Cole, M. I. Jordan, N. Yosef. Deep generative
   modeling for single-cell transcriptomics. Nature Methods 15, 2018 (batch
   as the condition).
4. Seed 004: conditional VAEs separate task variables from residual variability.
"""

from __future__ import annotations

from typing import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import is_validation_enabled
from pyro.nn import pyro_method

from ..inputs import DataError, DataTypeError
from .base import DATA_PLATE, LATENT_SITE, OBS_SITE
from .likelihoods import Likelihood, LikelihoodName
from .nets import Activation, diagonal_normal, one_hot
from .registry import Example, register_model
from .vae import _check_dim, _EncoderDecoder

__all__ = ["ConditionalVAE"]


def _example() -> Example:
    x = torch.randint(0, 2, (8, 6)).float()
    c = torch.arange(8) % 3
    kwargs = {"input_dim": 6, "num_classes": 3, "latent_dim": 2, "hidden_dims": (8,)}
    return Example(kwargs, (x, c), sample_args=(torch.tensor([0, 1, 2, 2]),))


@register_model("cvae", example=_example)
class ConditionalVAE(_EncoderDecoder):
    """A VAE whose encoder and decoder both read a condition ``c``.

    ``model(x, c, mask=None)`` and ``guide(x, c, mask=None)`` keep the data in
    ``pyro.plate("data", dim=-1)``, the latent at site ``"z"`` and the
    observations at site ``"x"``, like :class:`~pvae.models.VAE`; ``c`` is
    observed, not modelled (no site). Train with ``pvae.fit(cvae, (x, c))``.

    The condition is continuous, ``(batch, condition_dim)``, or categorical:
    with ``num_classes`` set, ``c`` may be integer labels of shape ``(batch,)``
    (one-hot encoded inside) or rows of ``num_classes`` class weights.

    Networks: the encoder is an MLP on ``[x, c]`` (``input_dim +
    condition_dim`` features) with a diagonal-Normal head; the decoder an MLP
    on ``[z, c]``; both shared with :class:`~pvae.models.VAE`'s builders.

    :param int input_dim: features of ``x``.
    :param int condition_dim: features of a continuous ``c``. Give this or
        ``num_classes``.
    :param int num_classes: number of classes of a categorical ``c``.
    :param int latent_dim: dimension of ``z``. Default 10.
    :param hidden_dims: hidden widths of the encoder; the decoder mirrors them
        unless ``decoder_hidden_dims`` is given. Default ``(256, 128)``.
    :param likelihood: a name from :data:`pvae.models.LIKELIHOODS` or a
        :class:`~pvae.models.likelihoods.Likelihood`. Default ``"bernoulli"``.
    :param float beta: weight of the KL term, a finite number > 0. Default 1.
    :param str activation: hidden activation. Default ``"relu"``.
    :param decoder_hidden_dims: hidden widths of the decoder.
    :param dict likelihood_kwargs: options of the likelihood.
    """

    #: how each positional argument is read (:mod:`pvae.inputs`), and its name in errors
    data_kinds = ("features", "any", "mask")
    data_names = ("x", "c", "mask")

    def __init__(
        self,
        input_dim: int,
        condition_dim: int | None = None,
        num_classes: int | None = None,
        latent_dim: int = 10,
        hidden_dims: Sequence[int] = (256, 128),
        likelihood: LikelihoodName | Likelihood = "bernoulli",
        beta: float = 1.0,
        activation: Activation = "relu",
        decoder_hidden_dims: Sequence[int] | None = None,
        likelihood_kwargs: dict | None = None,
    ) -> None:
        if (condition_dim is None) == (num_classes is None):
            raise ValueError(
                "give exactly one of condition_dim (continuous c of shape (batch, condition_dim)) "
                f"and num_classes (labels), got condition_dim={condition_dim!r}, num_classes={num_classes!r}."
            )
        if num_classes is not None:
            num_classes = _check_dim("num_classes", num_classes)
            if num_classes < 2:
                raise ValueError(f"num_classes must be >= 2, got {num_classes}. Try condition_dim=1.")
        dim = _check_dim("condition_dim", num_classes if condition_dim is None else condition_dim)
        super().__init__(input_dim, latent_dim, hidden_dims, likelihood, beta, activation,
                         decoder_hidden_dims, likelihood_kwargs, condition_dim=dim)
        self.condition_dim, self.num_classes = dim, num_classes

    # -- the condition -----------------------------------------------------------
    def condition(self, c: torch.Tensor) -> torch.Tensor:
        """``c`` as the ``(batch, condition_dim)`` float tensor the networks read.

        Integer labels (with ``num_classes``) become one-hot rows; a 1-D float
        ``c`` with ``condition_dim=1`` becomes a column.

        :raises ValueError: on a wrong shape or out-of-range labels.
        """
        if not isinstance(c, torch.Tensor):
            raise DataTypeError(f"c must be a tensor, got {type(c).__name__}.")
        if self.num_classes is not None and not c.is_floating_point():
            if c.dim() != 1:
                raise DataError(f"integer labels c must have shape (batch,), got {tuple(c.shape)}.")
            if is_validation_enabled() and c.numel() and (c.min() < 0 or c.max() >= self.num_classes):
                raise DataError(
                    f"labels c must lie in 0..{self.num_classes - 1} (num_classes={self.num_classes}), "
                    f"got values in {int(c.min())}..{int(c.max())}."
                )
            return one_hot(c, self.num_classes, self.prior_loc.dtype)
        if c.dim() == 1 and self.condition_dim == 1:
            c = c.unsqueeze(-1)
        if c.dim() != 2 or c.shape[-1] != self.condition_dim:
            hint = " (or integer labels of shape (batch,))" if self.num_classes is not None else ""
            raise DataError(
                f"c must have shape (batch, {self.condition_dim}){hint}, got {tuple(c.shape)} "
                f"of dtype {c.dtype}."
            )
        return c.to(self.prior_loc.dtype)

    def validate(self, x: torch.Tensor, c: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Check ``x``, ``c`` and ``mask``; called once by :func:`pvae.fit`.

        :raises ValueError: on wrong shapes, NaN at observed entries of ``x`` or
            anywhere in ``c``, or values outside the likelihood's support.
        """
        self._check_x(x, mask)
        with pyro.validation_enabled(True):
            cc = self.condition(c)
        if cc.shape[0] != x.shape[0]:
            raise DataError(f"x and c must have the same batch size, got {x.shape[0]} and {cc.shape[0]}.")
        if not torch.isfinite(cc).all():
            raise DataError("c has NaN or infinite entries. Try imputing the condition, or dropping those rows.")

    # -- the program -------------------------------------------------------------
    @pyro_method
    def model(self, x: torch.Tensor, c: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """p(x, z | c): the generative program. Returns the latent sample."""
        if is_validation_enabled():
            self.validate(x, c, mask)
        nets = self._modules
        c = self.condition(c)
        with pyro.plate(DATA_PLATE, x.shape[0], dim=-1):
            with self._beta_scaled():
                z = pyro.sample(LATENT_SITE, self._prior())
            px = nets["likelihood"](nets["decoder"](self._join(z, c)))
            if mask is not None:
                px = px.mask(mask)
            pyro.sample(OBS_SITE, px.to_event(1), obs=self._observed(x, mask))
        return z

    @pyro_method
    def guide(self, x: torch.Tensor, c: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """q(z | x, c): the amortised encoder. Returns the latent sample."""
        loc, scale = self.encode(x, c, mask)
        with pyro.plate(DATA_PLATE, x.shape[0], dim=-1):
            with self._beta_scaled():
                return pyro.sample(LATENT_SITE, diagonal_normal(loc, scale))

    # -- conveniences ------------------------------------------------------------
    def encode(
        self, x: torch.Tensor, c: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Parameters of q(z | x, c): ``(loc, scale)``, each ``(batch, latent_dim)``."""
        nets = self._modules
        h = nets["encoder_body"](self._join(self._observed(x, mask), self.condition(c)))
        return nets["encoder_head"](h)

    def decode(self, z: torch.Tensor, c: torch.Tensor) -> dist.TorchDistribution:
        """p(x | z, c), batch shape ``z.shape[:-1]``, event shape ``(input_dim,)``.

        ``c`` has one row per datum (``z.shape[-2]`` rows, or one row for all).
        """
        nets = self._modules
        return nets["likelihood"](nets["decoder"](self._join(z, self.condition(c)))).to_event(1)

    @torch.no_grad()
    def sample(self, c: torch.Tensor, mean: bool = False) -> torch.Tensor:
        """One draw ``x ~ p(x | c)`` per row (or label) of ``c``: ``(len(c), input_dim)``.

        :param torch.Tensor c: conditions; repeat a row to draw several for it.
        :param bool mean: return the decoder's mean instead of a draw.
        """
        c = self.condition(c)
        z = self._prior().sample((c.shape[0],))
        px = self.decode(z, c)
        return self.likelihood.point(px.base_dist) if mean else px.sample()

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, c: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The decoder's point reconstruction at the encoder mean, shape of ``x``."""
        loc, _ = self.encode(x, c, mask)
        return self.likelihood.point(self.decode(loc, c).base_dist)

    @torch.no_grad()
    def transfer(self, x: torch.Tensor, c: torch.Tensor, c_new: torch.Tensor,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
        """Counterfactual decoding: encode ``x`` under ``c``, decode under ``c_new``.

        Keeps what :math:`z` holds (the residual, e.g. a digit's style) and
        swaps the condition (its class; a batch label, for batch correction):
        the decoder's point prediction at :math:`\\mu_\\phi(x, c)` with ``c_new``.
        Shape of ``x``.
        """
        loc, _ = self.encode(x, c, mask)
        return self.likelihood.point(self.decode(loc, c_new).base_dist)
