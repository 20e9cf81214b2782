"""A VAE with categorical latents, trained through the Gumbel-softmax (Concrete) relaxation.

The generative model has ``num_categorical`` independent categorical latents
:math:`c_j`, each with ``num_categories`` classes :math:`K`, as one-hot vectors:

.. math::

    p_\\theta(x, c) = \\prod_{j=1}^{N} \\mathrm{Cat}(c_j; \\tfrac1K \\mathbf 1)\\,
        p_\\theta(x \\mid c_{1:N}), \\qquad
    q_\\phi(c \\mid x) = \\prod_j \\mathrm{Cat}\\big(c_j; \\pi_{\\phi, j}(x)\\big).

A categorical sample has no pathwise gradient. The Gumbel-softmax trick
(Jang et al. 2017), or Concrete distribution (Maddison et al. 2017), replaces
it by a point on the simplex that is a differentiable function of the logits
:math:`\\ell = \\log \\pi`:

.. math::

    \\tilde c_{jk} = \\frac{\\exp((\\ell_{jk} + g_{jk}) / \\tau)}
        {\\sum_{k'} \\exp((\\ell_{jk'} + g_{jk'}) / \\tau)}, \\qquad
    g_{jk} = -\\log(-\\log u_{jk}),\\ u_{jk} \\sim \\mathcal U(0, 1).

As :math:`\\tau \\to 0`, :math:`\\tilde c_j` becomes the one-hot
:math:`\\arg\\max_k (\\ell_{jk} + g_{jk})`, an exact categorical draw (the
Gumbel-max trick). **Temperature** trades bias against variance (seed 002):
at high :math:`\\tau` the samples are smooth, the gradients stable but biased
(the decoder is trained on blends of classes it never sees at test time); at
low :math:`\\tau` the bias vanishes but the gradient variance grows. Hence an
annealing schedule from high to low with a floor (Jang et al. 2017, section
4.1), here a function of the trainer's fractional epoch :math:`e`:

.. math::

    \\tau(e) = \\max\\big(\\tau_{\\min},\\ \\tau_0\\, e^{-r e}\\big),

applied by :meth:`RelaxedCategoricalVAE.on_train_step`, which
:func:`pvae.fit` calls before every step. **Straight-through** (Jang et al.
2017, section 2.2; Bengio et al. 2013): the forward pass uses the one-hot
:math:`\\arg\\max_k \\tilde c_{jk}` (the decoder only ever sees true
categories), the backward pass the gradient of the soft :math:`\\tilde c_j`.

**Which KL.** The KL between the relaxed posterior and a relaxed prior has no
closed form (Maddison et al. estimate it by Monte Carlo from Concrete
densities, which are sharply peaked and numerically delicate at low
temperature). Like Jang et al., this program uses the KL of the *underlying*
categoricals, in closed form:

.. math::

    \\mathrm{KL}\\big(q_\\phi(c \\mid x) \\,\\|\\, p(c)\\big)
        = \\sum_{j=1}^{N} \\sum_{k=1}^{K} \\pi_{jk} \\log (K \\pi_{jk}).

It is the exact rate of the discrete model (the relaxation only enters the
reconstruction term), has zero variance, and its gradient is exact. In the
Pyro program this is the site's log-density: in training mode, the latent
site's distribution (:class:`GumbelSoftmaxCategorical`) draws relaxed samples
and its ``log_prob`` returns the expected log-mass
:math:`\\mathbb E_{\\pi}[\\log \\pi] = -\\mathcal H(\\pi)` whatever the value (the
prior's, :math:`-\\log K`), so :math:`\\log q - \\log p` *is* the closed-form
KL for every sample (a Rao-Blackwellised estimate), and every pvae objective
trains the bound

.. math::

    \\mathcal L_\\tau(x) = \\mathbb E_{g}\\big[\\log p_\\theta(x \\mid \\tilde c(\\ell_\\phi(x), g, \\tau))\\big]
        - \\mathrm{KL}\\big(q_\\phi(c \\mid x) \\,\\|\\, p(c)\\big).

**Train and eval modes.** In training mode (``program.train()``, which
:func:`pvae.fit` sets while it trains) the latent is relaxed as above; those
log-densities are a surrogate, fine for the ELBO but not for
importance weights. In eval mode (``program.eval()``, as ``pvae.fit`` leaves
it and uses for validation) the program *is* the discrete model: one-hot
samples from ``OneHotCategorical`` with exact log-masses, so
:func:`~pvae.infer.elbo_terms`, :func:`~pvae.infer.iwae_bound` and
:func:`~pvae.infer.log_evidence` bound :math:`\\log p_\\theta(x)`. The KL
(analytic in :func:`~pvae.infer.elbo_terms`, both modes) is the same
closed form.

References

1. E. Jang, S. Gu, B. Poole. Categorical Reparameterization with
   Gumbel-Softmax. ICLR 2017.
2. C. J. Maddison, A. Mnih, Y. W. Teh. The Concrete Distribution: A Continuous
   Relaxation of Discrete Random Variables. ICLR 2017.
3. Y. Bengio, N. Leonard, A. Courville. Estimating or Propagating Gradients
   Through Stochastic Neurons for Conditional Computation. arXiv:1308.3432, 2013.
4. Seed 002: the temperature trades the bias of the gradient for its variance;
   anneal it from high to low.
"""

from __future__ import annotations

import math
from typing import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import pyro_method
from torch import nn
from torch.distributions import constraints
from torch.distributions.utils import clamp_probs

from .base import DATA_PLATE, LATENT_SITE
from .likelihoods import Likelihood, LikelihoodName
from .nets import Activation, one_hot
from .registry import Example, register_model
from .vae import _check_dim, _UnconditionalProgram

__all__ = ["GumbelSoftmaxCategorical", "RelaxedCategoricalVAE", "categorical_kl"]


class _RelaxedSimplex(constraints.Constraint):
    """The probability simplex, with a tolerance for float32 softmax round-off."""

    event_dim = 1

    def check(self, value: torch.Tensor) -> torch.Tensor:
        return torch.all(value >= 0, dim=-1) & ((value.sum(-1) - 1).abs() < 1e-4)


class GumbelSoftmaxCategorical(dist.OneHotCategorical):
    """A categorical over one-hot vectors whose samples are Gumbel-softmax relaxed.

    ``rsample`` draws :math:`\\tilde c = \\mathrm{softmax}((\\ell + g) / \\tau)`
    (or, with ``straight_through``, its one-hot argmax in the forward pass and
    the soft sample's gradient in the backward pass). ``log_prob(value)``
    returns the expected log-mass of the underlying categorical,
    :math:`\\sum_k \\pi_k \\log \\pi_k`, for every value: with a prior of this
    class, :math:`\\log q(\\tilde c) - \\log p(\\tilde c)` is the closed-form
    :math:`\\mathrm{KL}(\\mathrm{Cat}(\\pi) \\,\\|\\, \\mathrm{Cat}(\\pi_0))` when
    the prior is uniform (see :mod:`pvae.models.relaxed`). It subclasses
    ``OneHotCategorical``, so torch's analytic KL of two one-hot categoricals
    applies to it, ``mean`` is :math:`\\pi` and ``enumerate_support`` the one-hot
    vectors.

    :param float temperature: :math:`\\tau > 0`.
    :param torch.Tensor probs: event probabilities (or give ``logits``).
    :param torch.Tensor logits: event log-probabilities, unnormalised.
    :param bool straight_through: one-hot forward values. Default False.
    """

    support = _RelaxedSimplex()
    has_rsample = True

    def __init__(
        self,
        temperature: float,
        probs: torch.Tensor | None = None,
        logits: torch.Tensor | None = None,
        straight_through: bool = False,
        validate_args: bool | None = None,
    ) -> None:
        if not float(temperature) > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}.")
        self.temperature = float(temperature)
        self.straight_through = bool(straight_through)
        super().__init__(probs=probs, logits=logits, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(GumbelSoftmaxCategorical, _instance)
        new = super().expand(batch_shape, _instance=new)
        new.temperature, new.straight_through = self.temperature, self.straight_through
        return new

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        logits = self.logits.expand(shape)
        uniforms = clamp_probs(torch.rand(shape, dtype=logits.dtype, device=logits.device))
        soft = torch.softmax((logits - (-uniforms.log()).log()) / self.temperature, dim=-1)
        if not self.straight_through:
            return soft
        hard = one_hot(soft.argmax(-1), soft.shape[-1], soft.dtype)
        return hard + (soft - soft.detach())  # value: exactly one-hot; gradient: the soft sample's

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        probs = self.probs
        expected = torch.where(probs > 0, probs * self.logits, probs.new_zeros(())).sum(-1)
        return expected.expand(torch.broadcast_shapes(value.shape[:-1], self.batch_shape))


def categorical_kl(logits: torch.Tensor) -> torch.Tensor:
    """Closed-form KL of categoricals to the uniform one, summed over the latents.

    .. math::

        \\mathrm{KL} = \\sum_{j} \\sum_{k=1}^{K} \\pi_{jk} \\log (K \\pi_{jk}),
        \\qquad \\pi_j = \\mathrm{softmax}(\\ell_j).

    :param torch.Tensor logits: ``(..., num_categorical, num_categories)``.
    :returns: ``(...)`` nats.
    """
    log_probs = torch.log_softmax(logits, dim=-1)
    terms = torch.where(log_probs > -math.inf, log_probs.exp() * (log_probs + math.log(logits.shape[-1])), 0.0)
    return terms.sum((-2, -1))


def _example() -> Example:
    x = torch.randint(0, 2, (8, 6)).float()
    kwargs = {"input_dim": 6, "num_categorical": 2, "num_categories": 3, "hidden_dims": (8,)}
    return Example(kwargs, (x,))


@register_model("relaxed_vae", example=_example)
class RelaxedCategoricalVAE(_UnconditionalProgram):
    """A VAE with ``num_categorical`` categorical latents of ``num_categories`` classes each.

    ``model(x, mask=None)`` and ``guide(x, mask=None)`` keep the data in
    ``pyro.plate("data", dim=-1)`` and the codes at site ``"z"``, one-hot (or
    relaxed) vectors of shape ``(batch, num_categorical, num_categories)``;
    observations at site ``"x"``, with an optional bool ``mask`` of missing
    entries as in :class:`~pvae.models.VAE`. The encoder is
    :class:`~pvae.models.VAE`'s MLP with a linear head giving the logits; the
    decoder reads the flattened codes. See the module docstring for the
    relaxation, the KL, and the train / eval modes.

    Temperature: ``temperature`` is the current :math:`\\tau`; the schedule
    :meth:`temperature_at` (:math:`\\tau_0 e^{-r e}` floored at
    ``min_temperature``) sets it before every training step of
    :func:`pvae.fit` through :meth:`on_train_step`. ``anneal_rate=0`` keeps it
    at :math:`\\tau_0`.

    :param int input_dim: features of ``x``.
    :param int num_categorical: number of categorical latents N. Default 8.
    :param int num_categories: classes K of each. Default 10.
    :param hidden_dims: hidden widths of the encoder; the decoder mirrors them
        unless ``decoder_hidden_dims`` is given. Default ``(256, 128)``.
    :param likelihood: a name from :data:`pvae.models.LIKELIHOODS` or a
        :class:`~pvae.models.likelihoods.Likelihood`. Default ``"bernoulli"``.
    :param float temperature: initial temperature :math:`\\tau_0`. Default 1.
    :param float min_temperature: the floor :math:`\\tau_{\\min}`. Default 0.5
        (Jang et al.).
    :param float anneal_rate: :math:`r`, per epoch. Default 0.05.
    :param bool straight_through: one-hot forward samples with the soft
        gradient. Default False.
    :param float beta: weight of the KL term, a finite number > 0. Default 1.
    :param str activation: hidden activation. Default ``"relu"``.
    :param decoder_hidden_dims: hidden widths of the decoder.
    :param dict likelihood_kwargs: options of the likelihood.
    """

    _encoder_head_cls = nn.Linear  # the logits of every categorical, flattened
    #: pvae.fit's objective for it (see :class:`~pvae.models.base.Program`): its training
    #: densities are a relaxation with an analytic KL, not importance weights
    objectives = ("elbo",)

    def __init__(
        self,
        input_dim: int,
        num_categorical: int = 8,
        num_categories: int = 10,
        hidden_dims: Sequence[int] = (256, 128),
        likelihood: LikelihoodName | Likelihood = "bernoulli",
        temperature: float = 1.0,
        min_temperature: float = 0.5,
        anneal_rate: float = 0.05,
        straight_through: bool = False,
        beta: float = 1.0,
        activation: Activation = "relu",
        decoder_hidden_dims: Sequence[int] | None = None,
        likelihood_kwargs: dict | None = None,
    ) -> None:
        num_categorical = _check_dim("num_categorical", num_categorical)
        num_categories = _check_dim("num_categories", num_categories)
        if num_categories < 2:
            raise ValueError(f"num_categories must be >= 2, got {num_categories}.")
        if not (temperature > 0 and min_temperature > 0):
            raise ValueError(
                f"temperature and min_temperature must be > 0, got {temperature!r} and {min_temperature!r}."
            )
        if min_temperature > temperature:
            raise ValueError(
                f"min_temperature ({min_temperature}) must not exceed the initial temperature ({temperature}): "
                "the schedule anneals from high to low."
            )
        if not anneal_rate >= 0:
            raise ValueError(f"anneal_rate must be >= 0 (per epoch), got {anneal_rate!r}.")
        super().__init__(input_dim, num_categorical * num_categories, hidden_dims, likelihood, beta, activation,
                         decoder_hidden_dims, likelihood_kwargs)
        self.num_categorical, self.num_categories = num_categorical, num_categories
        self.initial_temperature, self.min_temperature = float(temperature), float(min_temperature)
        self.anneal_rate, self.straight_through = float(anneal_rate), bool(straight_through)
        self.temperature = self.initial_temperature
        self.register_buffer("prior_logits", torch.zeros(num_categorical, num_categories), persistent=False)

    # -- the temperature ---------------------------------------------------------
    def temperature_at(self, epoch: float) -> float:
        """The scheduled temperature :math:`\\max(\\tau_{\\min}, \\tau_0 e^{-r e})` at a fractional epoch."""
        return max(self.min_temperature, self.initial_temperature * math.exp(-self.anneal_rate * float(epoch)))

    def on_train_step(self, epoch: float) -> None:
        """Set ``temperature`` from the schedule; :func:`pvae.fit` calls this before every step."""
        self.temperature = self.temperature_at(epoch)

    # -- distributions -----------------------------------------------------------
    def codes(self, logits: torch.Tensor) -> dist.TorchDistribution:
        """The codes' distribution for ``logits`` ``(..., N, K)``: relaxed
        (:class:`GumbelSoftmaxCategorical` at the current temperature) in training
        mode, ``OneHotCategorical`` in eval mode; batch ``(...)``, event ``(N, K)``."""
        if self.training:
            return GumbelSoftmaxCategorical(self.temperature, logits=logits,
                                            straight_through=self.straight_through).to_event(1)
        return dist.OneHotCategorical(logits=logits).to_event(1)

    def _prior(self) -> dist.TorchDistribution:
        return self.codes(self.prior_logits)

    # -- the program -------------------------------------------------------------
    def _decoder_input(self, c: torch.Tensor) -> torch.Tensor:
        return c.flatten(-2)  # one-hot codes (..., num_categorical, num_categories) -> flat

    @pyro_method
    def guide(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """q(c | x): the encoder's categoricals (relaxed in training mode). Returns the codes."""
        logits = self.encode(x, mask)
        with pyro.plate(DATA_PLATE, x.shape[0], dim=-1):
            with self._beta_scaled():
                return pyro.sample(LATENT_SITE, self.codes(logits))

    # -- conveniences ------------------------------------------------------------
    def encode(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of q(c | x): ``(batch, num_categorical, num_categories)``."""
        nets = self._modules
        flat = nets["encoder_head"](nets["encoder_body"](self._observed(x, mask)))
        return flat.unflatten(-1, (self.num_categorical, self.num_categories))

    def decode(self, c: torch.Tensor) -> dist.TorchDistribution:
        """p(x | c) for codes ``(..., num_categorical, num_categories)`` (one-hot or
        relaxed): batch shape ``c.shape[:-2]``, event shape ``(input_dim,)``."""
        nets = self._modules
        return nets["likelihood"](nets["decoder"](self._decoder_input(c))).to_event(1)

    def one_hot(self, categories: torch.Tensor) -> torch.Tensor:
        """Integer categories ``(..., num_categorical)`` as one-hot codes ``(..., N, K)``."""
        return one_hot(categories, self.num_categories, self.prior_loc.dtype)

    @torch.no_grad()
    def sample(self, num_samples: int, mean: bool = False) -> torch.Tensor:
        """Draw ``x ~ p(x)`` with one-hot codes from the uniform prior (or the decoder
        mean if ``mean``): ``(num_samples, input_dim)``."""
        c = dist.OneHotCategorical(logits=self.prior_logits).sample((num_samples,))
        px = self.decode(c)
        return self.likelihood.point(px.base_dist) if mean else px.sample()

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The decoder's point reconstruction at the most probable codes, shape of ``x``."""
        c = self.one_hot(self.encode(x, mask).argmax(-1))
        return self.likelihood.point(self.decode(c).base_dist)
