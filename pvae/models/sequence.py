"""A VAE of aligned protein sequences (DeepSequence, EVE) as a Pyro program.

.. math::

    p_\\theta(x, z) = \\mathcal N(z; 0, I) \\prod_{l=1}^L
        \\mathrm{Categorical}\\big(x_l; \\mathrm{softmax}(f_\\theta(z)_l)\\big), \\qquad
    q_\\phi(z \\mid x) = \\mathcal N\\big(z; \\mu_\\phi(\\mathrm{onehot}(x)),
        \\mathrm{diag}\\,\\sigma_\\phi(\\mathrm{onehot}(x))^2\\big),

over sequences :math:`x \\in \\{0..A-1\\}^L` coded over
:data:`pvae.data.ALPHABET` (20 amino acids and the gap). Training maximises
the weighted ELBO of DeepSequence, :math:`\\sum_i w_i \\mathrm{ELBO}(x_i)`
with the sequence weights :math:`w_i` of :func:`pvae.data.sequence_weights`
as a per-datum ``poutine.scale`` of the data plate; per-datum bounds
(:func:`pvae.infer.iwae_bound`, :func:`pvae.analysis.mutation_effects`) stay
unweighted, as everywhere in pvae.

Kept from the papers: the categorical likelihood per position, the one-hot
encoder, the weights. Not implemented: DeepSequence's structured output layer
(low-rank dictionary, grouped sparsity, learned temperature), decoder dropout
and the variational prior on decoder weights; a dense output layer is used.

References

1. A. J. Riesselman, J. B. Ingraham, D. S. Marks. Deep generative models of
   genetic variation capture the effects of mutations. Nature Methods 15, 2018.
2. J. Frazer et al. Disease variant prediction with deep generative models of
   evolutionary data. Nature 599, 2021.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import is_validation_enabled
from pyro.nn import pyro_method

from ..inputs import DataError
from .base import DATA_PLATE, LATENT_SITE, OBS_SITE
from .likelihoods import make_likelihood
from .nets import Activation, NormalHead, diagonal_normal, mlp
from .registry import Example, register_model
from .vae import _check_dim, _StandardNormalLatent

__all__ = ["SequenceVAE"]


def _example() -> Example:
    x = torch.randint(0, 4, (8, 5))
    return Example({"length": 5, "alphabet_size": 4, "latent_dim": 2, "hidden_dims": (8,)},
                   (x, torch.rand(8)))


@register_model("sequence_vae", example=_example)
class SequenceVAE(_StandardNormalLatent):
    """A VAE of fixed-length categorical sequences (an alignment's focus columns).

    ``model(x, weights=None)`` / ``guide(x, weights=None)``: ``x`` is ``(batch,
    length)`` integer codes (``msa.codes``), ``weights`` an optional
    ``(batch,)`` per-sequence scale of the training objective (``msa.weights``).
    Latent at site ``"z"``, observations at ``"x"`` in ``pyro.plate("data", dim=-1)``.

    :param int length: focus columns L.
    :param int alphabet_size: letters A. Default 21 (:data:`pvae.data.ALPHABET`).
    :param int latent_dim: dimension of ``z``. Default 16.
    :param hidden_dims: encoder widths; the decoder mirrors them. Default ``(512, 256)``.
    :param float beta: weight of the KL term. Default 1.
    :param str activation: hidden activation. Default ``"relu"``.
    :param decoder_hidden_dims: decoder widths, if not the mirror.
    """

    data_kinds = ("labels", "features")
    data_names = ("x", "weights")

    def __init__(
        self,
        length: int,
        alphabet_size: int = 21,
        latent_dim: int = 16,
        hidden_dims: Sequence[int] = (512, 256),
        beta: float = 1.0,
        activation: Activation = "relu",
        decoder_hidden_dims: Sequence[int] | None = None,
    ) -> None:
        super().__init__(latent_dim, beta)
        self.length, self.alphabet_size = _check_dim("length", length), _check_dim("alphabet_size", alphabet_size)
        hidden_dims = tuple(hidden_dims)
        dec_hidden = tuple(reversed(hidden_dims)) if decoder_hidden_dims is None else tuple(decoder_hidden_dims)
        enc_in = self.length * self.alphabet_size
        self.likelihood = make_likelihood("categorical", self.length, cardinalities=[self.alphabet_size] * self.length)
        self.encoder_body = mlp(enc_in, hidden_dims, activation=activation)
        self.encoder_head = NormalHead(hidden_dims[-1] if hidden_dims else enc_in, self.latent_dim)
        self.decoder = mlp(self.latent_dim, dec_hidden, self.likelihood.output_dim, activation=activation)

    def validate(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        """Check codes and weights; called by the model when Pyro validation is on.

        :raises DataError: on a wrong shape (one-hot given instead of codes
            included), codes outside ``0..alphabet_size-1`` (a SupportError), or
            negative / mis-shaped weights.
        """
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != self.length:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise DataError(
                f"x must be integer codes of shape (batch, {self.length}), got {shape}. "
                "Try msa.codes (pvae.data.load_msa), not its one-hot."
            )
        self.likelihood.check(x)
        if weights is not None and (weights.shape != x.shape[:1] or bool((weights < 0).any())):
            raise DataError(
                f"weights must be non-negative with shape ({x.shape[0]},), got shape {tuple(weights.shape)}. "
                "Try msa.weights."
            )

    def _weighted(self, weights: torch.Tensor | None):
        return poutine.scale(scale=weights) if weights is not None else contextlib.nullcontext()

    @pyro_method
    def model(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """p(x, z): prior, decoder, a categorical per position. Returns the latent sample."""
        if is_validation_enabled():
            self.validate(x, weights)
        with pyro.plate(DATA_PLATE, x.shape[0], dim=-1), self._weighted(weights):
            with self._beta_scaled():
                z = pyro.sample(LATENT_SITE, self._prior())
            pyro.sample(OBS_SITE, self.decode(z), obs=x)
        return z

    @pyro_method
    def guide(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """q(z | x): the amortised encoder of the one-hot sequence. Returns the latent sample."""
        loc, scale = self.encode(x)
        with pyro.plate(DATA_PLATE, x.shape[0], dim=-1), self._weighted(weights):
            with self._beta_scaled():
                return pyro.sample(LATENT_SITE, diagonal_normal(loc, scale))

    def encode(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Parameters of q(z | x): ``(loc, scale)``, each ``(batch, latent_dim)`` (``weights`` unused)."""
        nets = self._modules
        onehot = torch.nn.functional.one_hot(x.long(), self.alphabet_size).flatten(-2)
        return nets["encoder_head"](nets["encoder_body"](onehot.to(self.prior_loc.dtype)))

    def decode(self, z: torch.Tensor) -> dist.TorchDistribution:
        """p(x | z): batch shape ``z.shape[:-1]``, event shape ``(length,)`` over codes."""
        nets = self._modules
        return nets["likelihood"](nets["decoder"](z)).to_event(1)

    @torch.no_grad()
    def sample(self, num_samples: int, mean: bool = False) -> torch.Tensor:
        """``(num_samples, length)`` int64 codes from the prior (the most likely letter per position if ``mean``)."""
        px = self.decode(self._prior().sample((num_samples,)))
        return px.base_dist.probs.argmax(-1) if mean else px.sample()

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """The most likely letter per position at the encoder mean: int64 codes, shape of ``x``."""
        loc, _ = self.encode(x)
        return self.decode(loc).base_dist.probs.argmax(-1)
