"""The linear VAE: probabilistic PCA learned by its ELBO (seeds 001, 004).

.. math::

    z \\sim \\mathcal N(0, I_k), \\qquad
    x \\mid z \\sim \\mathcal N(W z + \\mu, \\Psi), \\qquad
    q(z \\mid x) = \\mathcal N\\big(A x + c,\\ \\mathrm{diag}\\, s^2\\big),

with :math:`\\Psi = \\sigma^2 I_d` (``noise="isotropic"``, probabilistic PCA)
or :math:`\\Psi = \\mathrm{diag}(\\sigma_1^2, \\dots, \\sigma_d^2)`
(``noise="per_feature"``, factor analysis). The marginal is
:math:`p(x) = \\mathcal N(\\mu, W W^\\top + \\Psi)`.

Closed forms (isotropic noise). With the sample covariance
:math:`S = U \\Lambda U^\\top`, eigenvalues :math:`\\lambda_1 \\ge \\dots \\ge \\lambda_d`,
the maximum-likelihood PPCA solution (Tipping and Bishop 1999) is

.. math::

    \\hat\\mu = \\bar x, \\qquad
    \\hat\\sigma^2 = \\frac{1}{d - k} \\sum_{j > k} \\lambda_j, \\qquad
    \\hat W = U_k (\\Lambda_k - \\hat\\sigma^2 I)^{1/2} R,

    \\frac1n \\log p(X) = -\\frac12 \\Big[d \\log 2\\pi + \\sum_{j \\le k} \\log \\lambda_j
        + (d - k) \\log \\hat\\sigma^2 + d\\Big],

so the decoder spans the principal subspace. The posterior covariance
:math:`\\sigma^2 (W^\\top W + \\sigma^2 I)^{-1}` is diagonal exactly when the
columns of :math:`W` are orthogonal (:math:`R = I`): a diagonal Gaussian guide
can then be exact, and the ELBO's global maximum equals the PPCA
log-likelihood (Lucas et al. 2019; Dai et al. 2018). Posterior collapse of
directions with :math:`\\lambda_j \\le \\sigma^2` is the same mechanism.

References

1. M. E. Tipping, C. M. Bishop. Probabilistic Principal Component Analysis.
   Journal of the Royal Statistical Society B 61(3), 1999.
2. J. Lucas, G. Tucker, R. Grosse, M. Norouzi. Don't Blame the ELBO! A Linear
   VAE Perspective on Posterior Collapse. NeurIPS 2019.
3. B. Dai, Y. Wang, J. Aston, G. Hua, D. Wipf. Connections with Robust PCA and
   the Role of Emergent Sparsity in Variational Autoencoder Models. JMLR 19, 2018.
4. G. H. Golub, C. F. Van Loan. Matrix Computations, 4th ed., 2013, section
   6.4.3 (principal angles between subspaces).
5. Seeds 001 and 004: the linear VAE and PCA; the VAE as a coarse-graining
   (renormalisation group) map that keeps long-wavelength modes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import pyro.distributions as dist
import torch
from torch import nn

from .likelihoods import Likelihood
from .nets import MIN_SCALE, positive
from .registry import Example, register_model
from .vae import VAE, _check_dim

__all__ = ["PPCASolution", "LinearVAE", "ppca", "principal_angles"]

Noise = Literal["isotropic", "per_feature"]
NOISES: tuple[str, ...] = ("isotropic", "per_feature")


def _inverse_positive(value: torch.Tensor) -> torch.Tensor:
    """The raw parameter that :func:`~pvae.models.nets.positive` maps to ``value``."""
    return (value - MIN_SCALE).expm1().log()


class _SharedScaleNormalHead(nn.Module):
    """A linear head for the loc and one learned scale per latent dimension,
    the same for every datum: :math:`q(z \\mid x) = \\mathcal N(A h + c, \\mathrm{diag}\\, s^2)`."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        self.raw_scale = nn.Parameter(torch.zeros(out_dim))

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc = self.linear(h)
        return loc, positive(self.raw_scale).expand(loc.shape)


class _IsotropicNormal(Likelihood):
    """Normal observations with one learned scale shared by every feature."""

    name = "normal"
    support_text = "the real line (finite values)"

    def __init__(self, input_dim: int) -> None:
        super().__init__(input_dim)
        self.raw_scale = nn.Parameter(torch.zeros(()))

    def scale(self) -> torch.Tensor:
        return positive(self.raw_scale)

    def forward(self, raw: torch.Tensor) -> dist.TorchDistribution:
        return dist.Normal(raw, self.scale().expand(raw.shape))


def _example() -> Example:
    x = torch.randn(8, 6)
    return Example({"input_dim": 6, "latent_dim": 2}, (x,))


@register_model("linear_vae", example=_example)
class LinearVAE(VAE):
    """A VAE with a linear Gaussian encoder (diagonal scale) and a linear decoder.

    The program is :class:`~pvae.models.VAE`'s (``model(x, mask=None)``,
    ``guide(x, mask=None)``, sites ``"z"``, ``"x"``) with linear networks: the
    encoder :math:`q(z \\mid x) = \\mathcal N(A x + c, \\mathrm{diag}\\, s^2)` has
    a learned scale :math:`s` shared by all data (the optimal diagonal guide of
    a linear-Gaussian model has a data-independent covariance), and the
    decoder :math:`W z + \\mu` feeds a Normal likelihood of learned noise.

    :param int input_dim: d, features of ``x``.
    :param int latent_dim: k, dimension of ``z``. Default 2.
    :param str noise: ``"isotropic"`` (one :math:`\\sigma`, probabilistic PCA)
        or ``"per_feature"`` (one per feature, factor analysis). Default
        ``"isotropic"``.
    :param float beta: weight of the KL term. Default 1.
    """

    _encoder_head_cls = _SharedScaleNormalHead

    def __init__(self, input_dim: int, latent_dim: int = 2, noise: Noise = "isotropic", beta: float = 1.0) -> None:
        if noise not in NOISES:
            raise ValueError(f"noise must be one of {list(NOISES)}, got {noise!r}.")
        input_dim = _check_dim("input_dim", input_dim)
        likelihood = _IsotropicNormal(input_dim) if noise == "isotropic" else "normal"
        super().__init__(input_dim, latent_dim, hidden_dims=(), likelihood=likelihood, beta=beta)
        self.noise = noise

    # -- the parameters in the notation of PPCA ----------------------------------
    @property
    def weight(self) -> torch.Tensor:
        """W, the decoder's ``(input_dim, latent_dim)`` loading matrix."""
        return self.decoder[0].weight

    @property
    def bias(self) -> torch.Tensor:
        """:math:`\\mu`, the decoder's ``(input_dim,)`` offset."""
        return self.decoder[0].bias

    @property
    def noise_variance(self) -> torch.Tensor:
        """The diagonal of :math:`\\Psi`, ``(input_dim,)``."""
        return (self.likelihood.scale() ** 2).expand(self.input_dim)

    def marginal(self) -> dist.MultivariateNormal:
        """:math:`p(x) = \\mathcal N(\\mu, W W^\\top + \\Psi)` of the current decoder."""
        cov = self.weight @ self.weight.T + torch.diag(self.noise_variance)
        return dist.MultivariateNormal(self.bias, covariance_matrix=cov)

    @torch.no_grad()
    def log_evidence(self, x: torch.Tensor) -> torch.Tensor:
        """Exact :math:`\\log p(x)` per datum under the current decoder: ``(batch,)``."""
        self.validate(x)
        return self.marginal().log_prob(x)

    @torch.no_grad()
    def elbo_closed_form(self, x: torch.Tensor) -> torch.Tensor:
        """Exact ELBO of the current encoder and decoder per datum: ``(batch,)``.

        With :math:`m = A x + c`, :math:`r = x - W m - \\mu`,

        .. math::

            \\mathrm{ELBO}(x) = -\\frac12 \\sum_{i=1}^d \\Big[\\log 2\\pi\\Psi_{ii}
                + \\frac{r_i^2 + \\sum_j W_{ij}^2 s_j^2}{\\Psi_{ii}}\\Big]
                - \\frac12 \\sum_{j=1}^k \\big(s_j^2 + m_j^2 - 1 - \\log s_j^2\\big).
        """
        self.validate(x)
        m, s = self.encode(x)
        psi = self.noise_variance
        r = x - m @ self.weight.T - self.bias
        spread = (s.pow(2) @ self.weight.pow(2).T)  # (batch, d): sum_j W_ij^2 s_j^2
        rec = -0.5 * ((2 * math.pi * psi).log() + (r.pow(2) + spread) / psi).sum(-1)
        kl = 0.5 * (s.pow(2) + m.pow(2) - 1 - s.pow(2).log()).sum(-1)
        return rec - kl

    @torch.no_grad()
    def init_from_ppca(self, solution: PPCASolution) -> LinearVAE:
        """Set the decoder to a PPCA solution and the encoder to its best diagonal guide.

        Encoder: the exact posterior mean :math:`\\Lambda^{-1} W^\\top \\Psi^{-1} (x - \\mu)`
        and :math:`s_j^2 = 1 / \\Lambda_{jj}`, :math:`\\Lambda = I + W^\\top \\Psi^{-1} W`
        the posterior precision. Returns ``self``.

        :raises ValueError: if the solution's shapes do not fit this model.
        """
        d, k = solution.weight.shape
        if (d, k) != (self.input_dim, self.latent_dim):
            raise ValueError(
                f"the PPCA solution has weight shape {(d, k)}, this LinearVAE needs "
                f"{(self.input_dim, self.latent_dim)}. Try ppca(x, latent_dim={self.latent_dim})."
            )
        dtype = self.weight.dtype
        w, mu = solution.weight.to(dtype), solution.loc.to(dtype)
        self.decoder[0].weight.copy_(w)
        self.decoder[0].bias.copy_(mu)
        sigma = torch.as_tensor(solution.noise_variance, dtype=dtype).sqrt()
        self.likelihood.raw_scale.copy_(_inverse_positive(sigma).expand(self.likelihood.raw_scale.shape))
        psi = self.noise_variance
        precision = torch.eye(k, dtype=dtype) + (w.T / psi) @ w
        a = torch.linalg.solve(precision, w.T / psi)
        head = self.encoder_head
        head.linear.weight.copy_(a)
        head.linear.bias.copy_(-a @ mu)
        head.raw_scale.copy_(_inverse_positive(precision.diagonal().rsqrt()))
        return self


@dataclass(frozen=True)
class PPCASolution:
    """The maximum-likelihood probabilistic PCA of a data matrix.

    :ivar torch.Tensor weight: :math:`\\hat W = U_k (\\Lambda_k - \\hat\\sigma^2 I)^{1/2}`, ``(d, k)``.
    :ivar torch.Tensor loc: :math:`\\hat\\mu`, the sample mean, ``(d,)``.
    :ivar torch.Tensor noise_variance: :math:`\\hat\\sigma^2`, a scalar.
    :ivar torch.Tensor components: :math:`U_k`, the leading eigenvectors of the
        sample covariance, ``(d, k)`` orthonormal columns.
    :ivar torch.Tensor eigenvalues: all eigenvalues of the sample covariance,
        ``(d,)``, descending.
    :ivar torch.Tensor log_likelihood: :math:`\\frac1n \\log p(X)` at the MLE,
        the mean per datum, a scalar.
    """

    weight: torch.Tensor
    loc: torch.Tensor
    noise_variance: torch.Tensor
    components: torch.Tensor
    eigenvalues: torch.Tensor
    log_likelihood: torch.Tensor


def ppca(x: torch.Tensor, latent_dim: int) -> PPCASolution:
    """Maximum-likelihood probabilistic PCA of ``x`` (Tipping and Bishop 1999), in closed form.

    Computed in float64 from the eigendecomposition of the (biased, 1/n)
    sample covariance; returned in ``x``'s dtype.

    :param torch.Tensor x: data, ``(n, d)``.
    :param int latent_dim: k, with ``1 <= k < d``.
    :rtype: PPCASolution
    :raises ValueError: on a bad shape or ``latent_dim``.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[0] < 2:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a 2-D tensor (n, d) with n >= 2, got {got}.")
    n, d = x.shape
    if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or not 1 <= latent_dim < d:
        raise ValueError(f"latent_dim must be an integer in 1..{d - 1} (d = {d}), got {latent_dim!r}.")
    k = latent_dim
    xd = x.detach().to(torch.float64)
    mu = xd.mean(0)
    xc = xd - mu
    cov = xc.T @ xc / n
    evals, evecs = torch.linalg.eigh(cov)
    evals, evecs = evals.flip(0).clamp(min=0), evecs.flip(1)
    sigma2 = evals[k:].mean()
    u = evecs[:, :k]
    w = u * (evals[:k] - sigma2).clamp(min=0).sqrt()
    ll = -0.5 * (d * math.log(2 * math.pi) + evals[:k].log().sum() + (d - k) * sigma2.log() + d)
    dtype = x.dtype
    return PPCASolution(w.to(dtype), mu.to(dtype), sigma2.to(dtype), u.to(dtype), evals.to(dtype), ll.to(dtype))


def principal_angles(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Principal angles (radians, ascending) between the column spaces of ``a`` and ``b``.

    With orthonormal bases :math:`Q_a, Q_b` (QR), the cosines of the angles are
    the singular values of :math:`Q_a^\\top Q_b` (Golub and Van Loan 2013,
    6.4.3). All angles are 0 when the spaces coincide; the largest is the
    subspace distance.

    :param torch.Tensor a: ``(d, p)``.
    :param torch.Tensor b: ``(d, q)``.
    :returns: ``(min(p, q),)`` angles in :math:`[0, \\pi/2]`.
    """
    if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(
            f"a and b must be matrices with the same number of rows, got {tuple(a.shape)} and {tuple(b.shape)}."
        )
    qa, _ = torch.linalg.qr(a.detach().to(torch.float64))
    qb, _ = torch.linalg.qr(b.detach().to(torch.float64))
    cos = torch.linalg.svdvals(qa.T @ qb).clamp(max=1.0)
    return cos.acos().to(a.dtype)
