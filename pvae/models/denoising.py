"""The denoising VAE (Im et al. 2017): encode a corrupted input, reconstruct the clean one.

The generative model is :class:`~pvae.models.VAE`'s. The variational family
is not: the guide first corrupts :math:`x` with a known noise process
:math:`\\tilde x \\sim C(\\tilde x \\mid x)` and then encodes :math:`\\tilde x`,

.. math::

    \\tilde q_\\phi(z \\mid x) = \\int q_\\phi(z \\mid \\tilde x)\\, C(\\tilde x \\mid x)\\, d\\tilde x,

    \\mathcal L_{\\mathrm{DVAE}}(x) = \\mathbb E_{C(\\tilde x \\mid x)}\\,
        \\mathbb E_{q_\\phi(z \\mid \\tilde x)}\\Big[\\log \\frac{p_\\theta(x, z)}{q_\\phi(z \\mid \\tilde x)}\\Big]
        \\le \\log p_\\theta(x),

a lower bound for every corruption (each inner term is an ELBO of
:math:`x` with the guide :math:`q_\\phi(\\cdot \\mid \\tilde x)`; Im et al. 2017,
eq. 6). The corruption is drawn inside the guide with torch ops, so it is
part of the variational family: ``pvae.fit``, ``pvae.infer.elbo_terms`` and
``pvae.infer.iwae_bound`` all see this bound, and the importance weights
:math:`p(x, z_k) / q(z_k \\mid \\tilde x)` stay unbiased for :math:`p(x)`. One
corruption is drawn per vectorised pass (particles of one pass share it).

Corruptions (Vincent et al. 2008):

* ``"gaussian"``: :math:`\\tilde x = x + \\sigma \\epsilon`, :math:`\\epsilon \\sim \\mathcal N(0, I)`,
  ``corruption_level`` :math:`= \\sigma`;
* ``"masking"``: each feature set to 0 with probability ``corruption_level``.

Seed 004: for small Gaussian noise the optimal denoiser is
:math:`\\mathbb E[x \\mid \\tilde x] \\approx \\tilde x + \\sigma^2 \\nabla_{\\tilde x} \\log p(\\tilde x)`,
so learning to denoise learns the score of the data density: a vector field
that pushes points back onto the data manifold (Vincent 2011; Alain and
Bengio 2014).

References

1. P. Vincent, H. Larochelle, Y. Bengio, P.-A. Manzagol. Extracting and
   Composing Robust Features with Denoising Autoencoders. ICML 2008.
2. D. J. Im, S. Ahn, R. Memisevic, Y. Bengio. Denoising Criterion for
   Variational Auto-Encoding Framework. AAAI 2017.
3. P. Vincent. A Connection Between Score Matching and Denoising Autoencoders.
   Neural Computation 23(7), 2011.
4. G. Alain, Y. Bengio. What Regularized Auto-Encoders Learn from the
   Data-Generating Distribution. JMLR 15, 2014.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pyro.nn import pyro_method

from .registry import Example, register_model
from .vae import VAE

__all__ = ["CORRUPTIONS", "DenoisingVAE"]

Corruption = Literal["gaussian", "masking"]
CORRUPTIONS: tuple[str, ...] = ("gaussian", "masking")


def _example() -> Example:
    x = torch.randn(8, 6)
    kwargs = {"input_dim": 6, "latent_dim": 2, "hidden_dims": (8,), "likelihood": "normal",
              "corruption": "gaussian", "corruption_level": 0.3}
    return Example(kwargs, (x,))


@register_model("denoising_vae", example=_example)
class DenoisingVAE(VAE):
    """A VAE whose guide encodes a corrupted copy of ``x``.

    Same program signature as :class:`~pvae.models.VAE`: ``model(x,
    mask=None)``, ``guide(x, mask=None)``; the model is unchanged, the guide
    draws :math:`\\tilde x \\sim C(\\tilde x \\mid x)` and samples
    :math:`z \\sim q_\\phi(z \\mid \\tilde x)`. :meth:`~VAE.encode`, :meth:`~VAE.reconstruct`
    and :meth:`denoise` do not corrupt: they read the input they are given, so
    ``denoise(x_noisy)`` is the decoder's point estimate of the clean data.

    :param int input_dim: features of ``x``.
    :param str corruption: ``"gaussian"`` (additive noise) or ``"masking"``
        (features zeroed at random). Default ``"gaussian"``.
    :param float corruption_level: the Gaussian noise's standard deviation
        (>= 0), or the masking probability (in [0, 1)). Default 0.1.
    :param kwargs: every other argument of :class:`~pvae.models.VAE`
        (``latent_dim``, ``hidden_dims``, ``likelihood``, ``beta``, ...).
    """

    def __init__(
        self,
        input_dim: int,
        corruption: Corruption = "gaussian",
        corruption_level: float = 0.1,
        **kwargs: Any,
    ) -> None:
        if corruption not in CORRUPTIONS:
            raise ValueError(f"corruption must be one of {list(CORRUPTIONS)}, got {corruption!r}.")
        level = float(corruption_level)
        if corruption == "gaussian" and not level >= 0:
            raise ValueError(f"corruption_level (the noise's standard deviation) must be >= 0, got {corruption_level!r}.")
        if corruption == "masking" and not 0 <= level < 1:
            raise ValueError(
                f"corruption_level (the masking probability) must lie in [0, 1), got {corruption_level!r}."
            )
        super().__init__(input_dim, **kwargs)
        self.corruption, self.corruption_level = corruption, level

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        """Draw :math:`\\tilde x \\sim C(\\tilde x \\mid x)` (torch's RNG), shape of ``x``."""
        if self.corruption_level == 0:
            return x
        if self.corruption == "gaussian":
            return x + self.corruption_level * torch.randn_like(x)
        keep = torch.rand_like(x) >= self.corruption_level
        return torch.where(keep, x, torch.zeros_like(x))

    @pyro_method
    def guide(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """:math:`z \\sim q_\\phi(z \\mid \\tilde x)`, :math:`\\tilde x \\sim C(\\tilde x \\mid x)`.
        Returns the latent sample."""
        return super().guide(self.corrupt(x), mask)

    @torch.no_grad()
    def denoise(self, x_noisy: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Point estimate of the clean data behind ``x_noisy``: decode the encoder mean.

        The same computation as :meth:`~VAE.reconstruct` (which never corrupts),
        named for its use.
        """
        return self.reconstruct(x_noisy, mask)
