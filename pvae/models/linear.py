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
import warnings
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


#: The smallest scale the inverse link sets: ``positive`` maps every raw value to
#: ``(MIN_SCALE, inf)``, so a scale at or below the floor has no raw parameter; it is
#: raised to this value (the excess ``MIN_SCALE * 1e-3`` keeps the raw value finite).
_SMALLEST_SCALE = MIN_SCALE * (1 + 1e-3)


def _inverse_positive(value: torch.Tensor, what: str = "scale") -> torch.Tensor:
    """The raw parameter that :func:`~pvae.models.nets.positive` maps to ``value``.

    ``positive(r) = softplus(r) + MIN_SCALE``, so with :math:`y = v - \\mathrm{MIN\\_SCALE}`
    the inverse is :math:`r = \\log(e^y - 1) = y + \\log(1 - e^{-y}) = y + \\log(-\\mathrm{expm1}(-y))`,
    computed in float64: exact for large :math:`y` (where :math:`e^y` overflows; the
    correction tends to 0; above 20, where ``F.softplus`` returns its input, it is
    dropped so that the round trip is exact) and for small :math:`y`
    (:math:`\\approx \\log y`). Values below :data:`_SMALLEST_SCALE` (``MIN_SCALE = 1e-4``, the
    floor of every learned scale in pvae, and a little above it) cannot be represented: they
    are raised to it with a ``UserWarning`` naming ``what`` and the value.

    :raises ValueError: on a value that is not finite.
    """
    v = torch.as_tensor(value).detach().to(torch.float64)
    if not bool(torch.isfinite(v).all()):
        raise ValueError(f"the {what} must be finite, got {value!r}.")
    low = v < _SMALLEST_SCALE * (1 - 1e-6)  # not _SMALLEST_SCALE itself rounded to float32
    if bool(low.any()):
        warnings.warn(
            f"the {what} {float(v[low].min()):.3g} is below the smallest scale the model can "
            f"represent, MIN_SCALE = {MIN_SCALE:g} (every learned scale is softplus(raw) + MIN_SCALE); "
            f"set to {_SMALLEST_SCALE:.6g}. The model's log-likelihood and ELBO are then lower than the "
            "closed form's: rescale the data (e.g. standardise it) to keep the scales above the floor.",
            UserWarning, stacklevel=4,
        )
    y = torch.where(low, torch.full_like(v, _SMALLEST_SCALE), v) - MIN_SCALE
    # F.softplus returns its input above threshold 20: mirror it, so the round trip is exact
    raw = torch.where(y > 20, y, y + torch.log(-torch.expm1(-y)))
    return raw.to(torch.as_tensor(value).dtype)


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
    :param float beta: weight of the KL term, a finite number > 0. Default 1.
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
        """Exact :math:`\\log p(x)` per datum under the current decoder: ``(batch,)``.

        Computed in float64 (returned in ``x``'s dtype): with nearly noise-free data the
        covariance :math:`W W^\\top + \\Psi` is too ill-conditioned for a float32 Cholesky.
        """
        self.validate(x)
        w, mu, psi = (t.detach().to(torch.float64) for t in (self.weight, self.bias, self.noise_variance))
        marginal = dist.MultivariateNormal(mu, covariance_matrix=w @ w.T + torch.diag(psi))
        return marginal.log_prob(x.to(torch.float64)).to(x.dtype)

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

        Scales are set exactly through the inverse of ``softplus(raw) + MIN_SCALE``
        (the inverse link, stable for any finite scale). A noise standard
        deviation :math:`\\hat\\sigma`, or a posterior standard deviation :math:`s_j`, at
        or below ``MIN_SCALE = 1e-4`` (nearly noise-free data) cannot be represented: it
        is raised to just above the floor with a ``UserWarning``, and the encoder is the
        best diagonal guide of the decoder with that raised noise.

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
        raw_sigma = _inverse_positive(sigma, "PPCA noise standard deviation")
        self.likelihood.raw_scale.copy_(raw_sigma.expand(self.likelihood.raw_scale.shape))
        psi = self.noise_variance
        precision = torch.eye(k, dtype=dtype) + (w.T / psi) @ w
        a = torch.linalg.solve(precision, w.T / psi)
        head = self.encoder_head
        head.linear.weight.copy_(a)
        head.linear.bias.copy_(-a @ mu)
        head.raw_scale.copy_(_inverse_positive(precision.diagonal().rsqrt(), "posterior standard deviation"))
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

    **Degenerate data.** The likelihood has a finite maximum only when the centred
    data span more than ``k`` dimensions: if the sample covariance has numerical
    rank :math:`r \\le k` (data exactly on a k-dimensional affine subspace, or
    :math:`n \\le k + 1` rows), then :math:`\\lambda_{k+1} = \\dots = 0`,
    :math:`\\hat\\sigma^2 = 0` and :math:`\\log p(X)` is unbounded above (a float
    computation gives :math:`\\hat\\sigma^2 \\approx 10^{-16}` and a meaningless large
    log-likelihood). This raises a ``ValueError`` naming the rank instead. An
    eigenvalue counts as zero when it is at most
    :math:`\\lambda_1 \\max\\big(10 (d + \\sqrt n)\\, \\epsilon_{64},\\ d\\, \\epsilon_x^2\\big)`:
    the rounding error of forming and diagonalising the covariance in float64, or
    the variance that rounding ``x`` to its own dtype (machine epsilon
    :math:`\\epsilon_x`) adds. (About :math:`10^{-13} \\lambda_1`: noise with a
    standard deviation below ~3e-7 of the leading component's counts as none.)

    :param torch.Tensor x: data, ``(n, d)``.
    :param int latent_dim: k, with ``1 <= k < d``.
    :rtype: PPCASolution
    :raises ValueError: on a bad shape or ``latent_dim``, or when the data have
        numerical rank at most ``latent_dim`` (unbounded likelihood, see above).
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
    eps_x = torch.finfo(x.dtype).eps if x.is_floating_point() else 0.0
    tol = float(evals[0]) * max(10 * (d + math.sqrt(n)) * torch.finfo(torch.float64).eps, d * eps_x**2)
    rank = int((evals > tol).sum())
    if rank <= k:
        raise ValueError(
            f"the centred data have numerical rank {rank} (n = {n} rows, d = {d} features), at most "
            f"latent_dim = {k}: they lie on a {rank}-dimensional affine subspace, the PPCA noise "
            "variance is 0 and the likelihood is unbounded. "
            + (f"Use latent_dim < {rank}" if rank > 1 else "The data are (nearly) constant or collinear: nothing to fit")
            + (" (or more rows)" if n <= k + 1 else "") + ", or data with noise."
        )
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
