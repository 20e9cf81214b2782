"""The variational autoencoder as a Pyro program (Kingma and Welling 2014).

.. math::

    p_\\theta(x, z) = \\mathcal N(z; 0, I)\\, p_\\theta(x \\mid z), \\qquad
    q_\\phi(z \\mid x) = \\mathcal N(z; \\mu_\\phi(x), \\mathrm{diag}\\,\\sigma_\\phi(x)^2),

    \\mathrm{ELBO}_\\beta(x) = \\mathbb E_q[\\log p_\\theta(x \\mid z)]
        - \\beta\\, \\mathrm{KL}(q_\\phi(z \\mid x) \\,\\|\\, p(z)).

References

1. D. P. Kingma, M. Welling. Auto-Encoding Variational Bayes. ICLR 2014.
2. I. Higgins et al. beta-VAE: Learning Basic Visual Concepts with a
   Constrained Variational Framework. ICLR 2017.
3. A. Nazabal et al. Handling Incomplete Heterogeneous Data using VAEs. 2020
   (likelihood over observed entries only).
"""

from __future__ import annotations

import contextlib
import math

from typing import Callable, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import is_validation_enabled
from pyro.nn import PyroModule, pyro_method
from torch import nn

from ..inputs import DataError
from .base import DATA_PLATE, LATENT_SITE, OBS_SITE
from .likelihoods import Likelihood, LikelihoodName, make_likelihood
from .nets import Activation, NormalHead, StandardNormal, diagonal_normal, mlp

__all__ = ["VAE"]


def _check_dim(name: str, value: int) -> int:
    """``value`` as an int, or a ValueError naming ``name``."""
    if int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def _check_beta(beta: float) -> float:
    """``beta`` as a float, or a ValueError: the KL weight must be positive and finite.

    beta enters the program as ``poutine.scale(scale=beta)`` on the latent sites of
    model and guide, and Pyro refuses a scale of 0 ("Expected scale > 0"). beta = 0
    is not supported on purpose: the objective would then be the reconstruction
    term alone, whose encoder scale is driven to 0 (a deterministic autoencoder
    with a degenerate q), and the bounds of :mod:`pvae.infer` would lose their
    meaning. For a nearly plain autoencoder use a small beta (e.g. 1e-3).
    """
    try:
        value = float(beta)
    except (TypeError, ValueError):
        raise ValueError(f"beta (the weight of the KL term) must be a number > 0, got {beta!r}.") from None
    if isinstance(beta, bool) or not (math.isfinite(value) and value > 0):
        raise ValueError(
            f"beta (the weight of the KL term) must be a finite number > 0, got {beta!r}: it is a "
            "poutine.scale on the latent sites, and Pyro cannot scale a site by 0 or a negative or "
            "infinite number. For a nearly plain autoencoder use a small beta such as 1e-3."
        )
    return value


class _StandardNormalLatent(PyroModule):
    """Shared by pvae's programs with a latent :math:`z \\sim \\mathcal N(0, I)`
    at site ``"z"``: its prior, and beta (a ``poutine.scale`` on the latent site in
    model and guide)."""

    def __init__(self, latent_dim: int, beta: float = 1.0) -> None:
        super().__init__()
        latent_dim = _check_dim("latent_dim", latent_dim)
        self.latent_dim, self.beta = latent_dim, beta  # checked by the setter
        self.register_buffer("prior_loc", torch.zeros(self.latent_dim), persistent=False)
        self.register_buffer("prior_scale", torch.ones(self.latent_dim), persistent=False)

    @property
    def beta(self) -> float:
        """The weight of the KL term, a finite number > 0 (checked on every assignment)."""
        return self._beta

    @beta.setter
    def beta(self, value: float) -> None:
        self._beta = _check_beta(value)

    def _prior(self) -> dist.TorchDistribution:
        return StandardNormal(self.prior_loc, self.prior_scale).to_event(1)

    def _beta_scaled(self):
        return poutine.scale(scale=self.beta) if self.beta != 1.0 else contextlib.nullcontext()


class _EncoderDecoder(_StandardNormalLatent):
    """Shared construction of a one-likelihood encoder/decoder program.

    Builds ``likelihood``, ``encoder_body`` (an :func:`~pvae.models.nets.mlp` on
    ``input_dim + condition_dim`` features), ``encoder_head`` (an
    ``_encoder_head_cls(in_dim, latent_dim)`` returning ``(loc, scale)``) and
    ``decoder`` (an mlp from ``latent_dim + condition_dim`` to the likelihood's
    raw outputs). ``condition_dim`` features (a conditional VAE's c) are
    appended to the inputs of both networks.
    """

    _encoder_head_cls: Callable[[int, int], nn.Module] = NormalHead

    def __init__(
        self,
        input_dim: int,
        latent_dim: int = 10,
        hidden_dims: Sequence[int] = (256, 128),
        likelihood: LikelihoodName | Likelihood = "bernoulli",
        beta: float = 1.0,
        activation: Activation = "relu",
        decoder_hidden_dims: Sequence[int] | None = None,
        likelihood_kwargs: dict | None = None,
        condition_dim: int = 0,
    ) -> None:
        input_dim = _check_dim("input_dim", input_dim)
        super().__init__(latent_dim, beta)
        self.input_dim = input_dim
        self.likelihood = make_likelihood(likelihood, self.input_dim, **(likelihood_kwargs or {}))
        hidden_dims = tuple(hidden_dims)
        dec_hidden = tuple(reversed(hidden_dims)) if decoder_hidden_dims is None else tuple(decoder_hidden_dims)
        enc_in = self.input_dim + condition_dim
        self.encoder_body = mlp(enc_in, hidden_dims, activation=activation)
        self.encoder_head = self._encoder_head_cls(hidden_dims[-1] if hidden_dims else enc_in, self.latent_dim)
        self.decoder = mlp(self.latent_dim + condition_dim, dec_hidden, self.likelihood.output_dim,
                           activation=activation)

    @staticmethod
    def _join(a: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        """``[a, c]`` along the features; ``c`` is ``(batch, C)`` (or None: ``a`` alone) and
        ``a`` may carry particle dims in front, ``(..., batch, D)``."""
        if c is None:
            return a
        return torch.cat([a, c.expand(*a.shape[:-1], c.shape[-1])], dim=-1)

    def _observed(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if mask is None:
            return x
        return torch.where(mask, x, torch.full_like(x, self.likelihood.fill_value))

    def _check_x(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 2:
            raise DataError(
                f"x must be a 2-D tensor of shape (batch, {self.input_dim}), got "
                f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}."
            )
        self.likelihood.check(x, mask)


class _UnconditionalProgram(_EncoderDecoder):
    """The generative program ``model(x, mask=None)`` shared by programs whose
    decoder reads the latent alone (:class:`VAE`, the relaxed categorical VAE):
    latent from :meth:`_prior`, decoder input from :meth:`_decoder_input`,
    likelihood over the observed entries of ``x``."""

    #: how each positional argument is read (:mod:`pvae.inputs`), and its name in errors
    data_kinds = ("features", "mask")
    data_names = ("x", "mask")

    def _decoder_input(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def validate(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Check ``x`` (and ``mask``) for this model; called once by :func:`pvae.fit`.

        :raises ValueError: on a wrong shape, NaN at observed entries, or values
            outside the likelihood's support.
        """
        self._check_x(x, mask)

    # Networks are looked up in ``self._modules`` rather than as attributes in
    # the hot path: PyroModule's attribute hook would announce every parameter
    # as a Pyro param site on every call (~0.3 ms a step, 12% of a digits
    # epoch). pvae's parameters are module-local and trainers take them from
    # ``.parameters()``, so nothing listens to those announcements.
    @pyro_method
    def model(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """p(x, z): prior, decoder and likelihood over the observed entries. Returns the latent sample."""
        if is_validation_enabled():
            self.validate(x, mask)
        nets = self._modules
        with pyro.plate(DATA_PLATE, x.shape[0], dim=-1):
            with self._beta_scaled():
                z = pyro.sample(LATENT_SITE, self._prior())
            px = nets["likelihood"](nets["decoder"](self._decoder_input(z)))
            if mask is not None:
                px = px.mask(mask)
            pyro.sample(OBS_SITE, px.to_event(1), obs=self._observed(x, mask))
        return z


class VAE(_UnconditionalProgram):
    """A VAE with a diagonal-Gaussian encoder and any pvae likelihood.

    ``model(x, mask=None)`` and ``guide(x, mask=None)`` are ordinary Pyro
    programs with the data in ``pyro.plate("data", dim=-1)``, the latent at site
    ``"z"`` and the observations at site ``"x"``. All parameters are ordinary
    ``torch.nn`` parameters of this module (none in Pyro's global param store),
    so two models in one process never share parameters.

    Missing data: with a bool ``mask`` (True = observed, shape of ``x``) only
    observed entries enter the likelihood; missing entries (NaN allowed) are
    neither reconstructed nor imputed as zeros in the loss. The encoder sees
    missing entries as the likelihood's fill value (0 for most families).

    :param int input_dim: features of ``x``.
    :param int latent_dim: dimension of ``z``. Default 10.
    :param hidden_dims: hidden widths of the encoder; the decoder mirrors them
        unless ``decoder_hidden_dims`` is given. Default ``(256, 128)``.
    :param likelihood: a name from :data:`pvae.models.LIKELIHOODS` or a
        :class:`~pvae.models.likelihoods.Likelihood`. Default ``"bernoulli"``.
    :param float beta: weight of the KL term (beta-VAE), applied to the latent
        site with ``poutine.scale`` in model and guide; a finite number > 0
        (0 is refused: Pyro cannot scale a site by 0; use e.g. 1e-3). Default 1.
    :param str activation: hidden activation. Default ``"relu"``.
    :param decoder_hidden_dims: hidden widths of the decoder.
    :param dict likelihood_kwargs: options of the likelihood (``scale``, ``df``,
        ``cardinalities``).
    """

    def __init__(
        self,
        input_dim: int,
        latent_dim: int = 10,
        hidden_dims: Sequence[int] = (256, 128),
        likelihood: LikelihoodName | Likelihood = "bernoulli",
        beta: float = 1.0,
        activation: Activation = "relu",
        decoder_hidden_dims: Sequence[int] | None = None,
        likelihood_kwargs: dict | None = None,
    ) -> None:
        super().__init__(input_dim, latent_dim, hidden_dims, likelihood, beta, activation,
                         decoder_hidden_dims, likelihood_kwargs)

    # -- the program ---------------------------------------------------------
    @pyro_method
    def guide(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """q(z | x): the amortised encoder. Returns the latent sample."""
        loc, scale = self.encode(x, mask)
        with pyro.plate(DATA_PLATE, x.shape[0], dim=-1):
            with self._beta_scaled():
                return pyro.sample(LATENT_SITE, diagonal_normal(loc, scale))

    # -- conveniences --------------------------------------------------------
    def encode(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Parameters of q(z | x): ``(loc, scale)``, each ``(batch, latent_dim)``."""
        nets = self._modules
        return nets["encoder_head"](nets["encoder_body"](self._observed(x, mask)))

    def decode(self, z: torch.Tensor) -> dist.TorchDistribution:
        """p(x | z) with batch shape ``z.shape[:-1]`` and event shape ``(input_dim,)``."""
        nets = self._modules
        return nets["likelihood"](nets["decoder"](z)).to_event(1)

    @torch.no_grad()
    def sample(self, num_samples: int, mean: bool = False) -> torch.Tensor:
        """Draw ``x ~ p(x)`` (or the decoder mean if ``mean``): ``(num_samples, input_dim)``."""
        z = self._prior().sample((num_samples,))
        px = self.decode(z)
        return self.likelihood.point(px.base_dist) if mean else px.sample()

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The decoder's point reconstruction at the encoder mean, shape of ``x``."""
        loc, _ = self.encode(x, mask)
        return self.likelihood.point(self.decode(loc).base_dist)
