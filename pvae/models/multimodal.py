"""The multimodal VAE with a product-of-experts posterior (Wu and Goodman 2018).

Modalities :math:`x^{(1)}, \\dots, x^{(M)}` (an image and its label; the
transcriptome and proteome of a cell; two halves of a picture) are
conditionally independent given one shared latent:

.. math::

    p_\\theta(z, x^{(1:M)}) = \\mathcal N(z; 0, I) \\prod_{m=1}^M p_\\theta(x^{(m)} \\mid z).

The true posterior then factorises as
:math:`p(z \\mid x^{(S)}) \\propto p(z) \\prod_{m \\in S} p(z \\mid x^{(m)}) / p(z)`
for any subset :math:`S` of observed modalities. The guide mimics this with
one Gaussian expert :math:`\\tilde q_m(z \\mid x^{(m)}) = \\mathcal N(\\mu_m, \\mathrm{diag}\\,\\sigma_m^2)`
per modality, multiplied with the prior expert:

.. math::

    q(z \\mid x^{(S)}) \\propto p(z) \\prod_{m \\in S} \\tilde q_m(z \\mid x^{(m)})
        = \\mathcal N\\Big(\\frac{\\sum_{m \\in S} \\mu_m / \\sigma_m^2}{T},\\ \\frac1T\\Big),
    \\qquad T = 1 + \\sum_{m \\in S} \\sigma_m^{-2},

coordinate-wise. A missing modality drops out of the product: there is one
encoder per modality, not one per subset, and the posterior of every subset
(every pattern of missing data) comes for free. Cross-modal generation
decodes modality :math:`m'` from :math:`q(z \\mid x^{(m)})`.

Training: the ELBO over the modalities present in each datum,

.. math::

    \\mathrm{ELBO}(x^{(S)}) = \\sum_{m \\in S} \\mathbb E_{q(z \\mid x^{(S)})}\\big[\\log p_\\theta(x^{(m)} \\mid z)\\big]
        - \\mathrm{KL}\\big(q(z \\mid x^{(S)}) \\,\\|\\, p(z)\\big) \\le \\log p_\\theta(x^{(S)}).

Wu and Goodman's sub-sampled objective adds the unimodal ELBOs
:math:`\\sum_m \\mathrm{ELBO}(x^{(m)})` so that each expert also learns to
stand alone (needed for good cross-modal generation when all training data
are complete). Here that is data, not code: :meth:`MultimodalVAE.unimodal_subsets`
repeats the batch with each single modality present, and ``pvae.fit`` on the
result maximises exactly that sum (the random extra subsets of the paper are
left out).

References

1. M. Wu, N. Goodman. Multimodal Generative Models for Scalable
   Weakly-Supervised Learning. NeurIPS 2018.
2. G. E. Hinton. Training Products of Experts by Minimizing Contrastive
   Divergence. Neural Computation 14(8), 2002.
3. Y. Shi, N. Siddharth, B. Paige, P. Torr. Variational Mixture-of-Experts
   Autoencoders for Multi-Modal Deep Generative Models. NeurIPS 2019.
4. Seed 004: multi-omics integration; product of experts and missing modalities.
"""

from __future__ import annotations

from typing import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import is_validation_enabled
from pyro.nn import pyro_method
from torch import nn

from ..inputs import DataError
from .base import DATA_PLATE, LATENT_SITE, OBS_SITE
from .likelihoods import Likelihood, LikelihoodName, make_likelihood
from .nets import Activation, NormalHead, diagonal_normal, mlp
from .registry import Example, register_model
from .vae import _check_dim, _StandardNormalLatent

__all__ = ["MultimodalVAE"]

Modality = int | str


def _example() -> Example:
    image = torch.randint(0, 2, (8, 6)).float()
    signal = torch.randn(8, 3)
    present = torch.ones(8, 2, dtype=torch.bool)
    present[1, 0] = present[2, 1] = False
    kwargs = {"input_dims": (6, 3), "likelihoods": ("bernoulli", "normal"), "latent_dim": 2,
              "hidden_dims": (8,)}
    return Example(kwargs, (image, signal, present), observed=(0, 1))


@register_model("multimodal_vae", example=_example)
class MultimodalVAE(_StandardNormalLatent):
    """A VAE over several modalities with a product-of-experts posterior.

    ``model(*xs, present=None)`` and ``guide(*xs, present=None)`` take one
    tensor ``(batch, input_dims[m])`` per modality, in order; a modality
    missing for the whole batch is passed as ``None``, and a bool ``present``
    of shape ``(batch, M)`` marks which modalities each datum has (entries of
    absent ones may hold anything, NaN included). ``present`` may also be the
    last positional argument, so that ``pvae.fit(mvae, (x1, x2, present))``
    trains with missing data. The latent is site ``"z"``; modality ``m`` is
    observed at site ``"x_<name>"`` (names default to ``"0"``, ``"1"``, ...).

    Each modality has its own encoder (an MLP with a diagonal-Normal head, an
    expert), decoder (an MLP) and likelihood; experts combine with the prior
    by :meth:`posterior` (see the module docstring).

    Training tip: the product weights each expert by its precision, so an
    expert that turns wide early (while the decoders ignore ``z``) passes
    almost no gradient to its mean and the posterior can stay at the prior.
    A KL warm-up (``pvae.fit(..., kl_warmup=epochs)``; Wu and Goodman anneal
    beta likewise) avoids this collapse.

    :param input_dims: features of each modality, e.g. ``(64, 10)``.
    :param likelihoods: one likelihood name (or
        :class:`~pvae.models.likelihoods.Likelihood`) per modality, or one for
        all. Default ``"bernoulli"``.
    :param int latent_dim: dimension of the shared ``z``. Default 10.
    :param hidden_dims: hidden widths of each encoder; decoders mirror them
        unless ``decoder_hidden_dims`` is given. Default ``(256, 128)``.
    :param float beta: weight of the KL term, a finite number > 0. Default 1.
    :param str activation: hidden activation. Default ``"relu"``.
    :param decoder_hidden_dims: hidden widths of each decoder.
    :param likelihood_kwargs: one dict of likelihood options per modality (or None).
    :param modality_names: a name per modality (used in site names and in
        :meth:`generate`). Default ``("0", "1", ...)``.
    """

    def __init__(
        self,
        input_dims: Sequence[int],
        likelihoods: LikelihoodName | Likelihood | Sequence[LikelihoodName | Likelihood] = "bernoulli",
        latent_dim: int = 10,
        hidden_dims: Sequence[int] = (256, 128),
        beta: float = 1.0,
        activation: Activation = "relu",
        decoder_hidden_dims: Sequence[int] | None = None,
        likelihood_kwargs: Sequence[dict | None] | None = None,
        modality_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__(latent_dim, beta)
        if isinstance(input_dims, int) or not len(input_dims):
            raise ValueError(
                f"input_dims must list the features of each modality, e.g. (64, 10), got {input_dims!r}."
            )
        dims = [_check_dim(f"input_dims[{m}]", d) for m, d in enumerate(input_dims)]
        num = len(dims)
        liks = [likelihoods] * num if isinstance(likelihoods, (str, Likelihood)) else list(likelihoods)
        lkw = [None] * num if likelihood_kwargs is None else list(likelihood_kwargs)
        names = [str(m) for m in range(num)] if modality_names is None else [str(n) for n in modality_names]
        for what, seq in (("likelihoods", liks), ("likelihood_kwargs", lkw), ("modality_names", names)):
            if len(seq) != num:
                raise ValueError(f"{what} must have one entry per modality ({num}), got {len(seq)}.")
        if len(set(names)) != num:
            raise ValueError(f"modality_names must be distinct, got {names}.")
        self.input_dims, self.modality_names = tuple(dims), tuple(names)
        self.num_modalities = num
        self.data_kinds = ("features",) * num  # read by pvae.inputs; names for its errors:
        self.data_names = tuple(f"x_{n}" for n in names)
        self.sites = tuple(f"{OBS_SITE}_{n}" for n in names)
        hidden_dims = tuple(hidden_dims)
        dec_hidden = tuple(reversed(hidden_dims)) if decoder_hidden_dims is None else tuple(decoder_hidden_dims)
        self.likelihoods = nn.ModuleList(make_likelihood(l, d, **(k or {})) for l, d, k in zip(liks, dims, lkw))
        self.encoders = nn.ModuleList(
            nn.Sequential(mlp(d, hidden_dims, activation=activation),
                          NormalHead(hidden_dims[-1] if hidden_dims else d, self.latent_dim))
            for d in dims
        )
        self.decoders = nn.ModuleList(
            mlp(self.latent_dim, dec_hidden, lik.output_dim, activation=activation) for lik in self.likelihoods
        )

    # -- arguments ---------------------------------------------------------------
    def _index(self, modality: Modality) -> int:
        if isinstance(modality, str) and modality in self.modality_names:
            return self.modality_names.index(modality)
        if isinstance(modality, int) and not isinstance(modality, bool) and 0 <= modality < self.num_modalities:
            return modality
        raise ValueError(
            f"unknown modality {modality!r}: use an index in 0..{self.num_modalities - 1} or a name "
            f"in {list(self.modality_names)}."
        )

    def _parse(
        self, xs: tuple, present: torch.Tensor | None
    ) -> tuple[list[torch.Tensor | None], torch.Tensor | None, int]:
        """``(modalities, present, batch)``; ``present`` None means all given modalities."""
        xs = list(xs)
        if len(xs) == self.num_modalities + 1:
            if present is not None:
                raise ValueError("present was given twice: as the last positional argument and as a keyword.")
            present = xs.pop()
        if len(xs) != self.num_modalities:
            raise ValueError(
                f"expected {self.num_modalities} modalities ({list(self.modality_names)}), one tensor or None "
                f"each, optionally followed by present; got {len(xs)} arguments."
            )
        given = [x for x in xs if x is not None]
        if not given:
            raise ValueError("every modality is None: nothing to condition on. Try sample() for prior draws.")
        batch = given[0].shape[0]
        if present is not None:
            if not isinstance(present, torch.Tensor) or present.dtype != torch.bool:
                raise TypeError(
                    f"present must be a bool tensor of shape (batch, {self.num_modalities}), got "
                    f"{getattr(present, 'dtype', type(present).__name__)}. Try present=~x.isnan().any(-1) per modality."
                )
            if tuple(present.shape) != (batch, self.num_modalities):
                raise ValueError(
                    f"present must have shape ({batch}, {self.num_modalities}) (batch, modalities), "
                    f"got {tuple(present.shape)}."
                )
        return xs, present, batch

    def _present(self, present: torch.Tensor | None, m: int) -> torch.Tensor | None:
        return None if present is None else present[:, m]

    def _filled(self, x: torch.Tensor, keep: torch.Tensor | None, m: int) -> torch.Tensor:
        if keep is None:
            return x
        fill = torch.full_like(x, self._modules["likelihoods"][m].fill_value)
        return torch.where(keep.unsqueeze(-1), x, fill)

    def validate(self, *xs: torch.Tensor | None, present: torch.Tensor | None = None) -> None:
        """Check the modalities (and ``present``); called once by :func:`pvae.fit`.

        :raises ValueError: on a wrong number of modalities or shapes, NaN at
            a present modality, or values outside a likelihood's support.
        """
        xs, present, batch = self._parse(xs, present)
        for m, x in enumerate(xs):
            if x is None:
                continue
            if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape != (batch, self.input_dims[m]):
                got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise DataError(
                    f"modality {self.modality_names[m]!r} must be a tensor of shape ({batch}, "
                    f"{self.input_dims[m]}), got {got}."
                )
            keep = self._present(present, m)
            try:
                self.likelihoods[m].check(x, None if keep is None else keep.unsqueeze(-1).expand_as(x))
            except ValueError as err:
                raise type(err)(f"modality {self.modality_names[m]!r}: {err}") from None

    # -- the posterior -----------------------------------------------------------
    def experts(
        self, *xs: torch.Tensor | None, present: torch.Tensor | None = None
    ) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """Each modality's expert :math:`(\\mu_m, \\sigma_m)`, ``(batch, latent_dim)`` each,
        or None for a modality passed as None. Absent entries (``present``
        False) are encoded from the fill value; :meth:`posterior` ignores them."""
        xs, present, _ = self._parse(xs, present)
        return [
            None if x is None else self.encoders[m](self._filled(x, self._present(present, m), m))
            for m, x in enumerate(xs)
        ]

    def encode(
        self, *xs: torch.Tensor | None, present: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The product-of-experts posterior q(z | present modalities): ``(loc, scale)``,
        each ``(batch, latent_dim)``.

        .. math::

            T = 1 + \\sum_m \\pi_m \\sigma_m^{-2}, \\qquad
            \\mathrm{loc} = T^{-1} \\sum_m \\pi_m \\mu_m \\sigma_m^{-2}, \\qquad
            \\mathrm{scale} = T^{-1/2},

        with :math:`\\pi_m \\in \\{0, 1\\}` the presence of modality m (the 1
        and the 0 of the prior expert :math:`\\mathcal N(0, I)`).
        """
        xs, present, batch = self._parse(xs, present)
        encoders = self._modules["encoders"]  # not the attribute: see VAE's hot-path note
        precision = self.prior_scale.pow(-2).expand(batch, self.latent_dim)
        weighted = self.prior_loc * precision
        for m, x in enumerate(xs):
            if x is None:
                continue
            keep = self._present(present, m)
            loc, scale = encoders[m](self._filled(x, keep, m))
            prec = scale.pow(-2)
            if keep is not None:
                prec = prec * keep.unsqueeze(-1).to(prec.dtype)
            precision = precision + prec
            weighted = weighted + prec * loc
        return weighted / precision, precision.rsqrt()

    def posterior(self, *xs: torch.Tensor | None, present: torch.Tensor | None = None) -> dist.TorchDistribution:
        """q(z | present modalities) as a distribution, batch ``(batch,)``, event ``(latent_dim,)``."""
        loc, scale = self.encode(*xs, present=present)
        return diagonal_normal(loc, scale)

    # -- the program -------------------------------------------------------------
    @pyro_method
    def model(self, *xs: torch.Tensor | None, present: torch.Tensor | None = None) -> torch.Tensor:
        """p(z, present modalities): the generative program. Returns the latent sample."""
        if is_validation_enabled():
            self.validate(*xs, present=present)
        xs, present, batch = self._parse(xs, present)
        likelihoods, decoders = self._modules["likelihoods"], self._modules["decoders"]
        with pyro.plate(DATA_PLATE, batch, dim=-1):
            with self._beta_scaled():
                z = pyro.sample(LATENT_SITE, self._prior())
            for m, x in enumerate(xs):
                if x is None:
                    continue
                keep = self._present(present, m)
                px = likelihoods[m](decoders[m](z)).to_event(1)
                if keep is not None:
                    px = px.mask(keep)
                pyro.sample(self.sites[m], px, obs=self._filled(x, keep, m))
        return z

    @pyro_method
    def guide(self, *xs: torch.Tensor | None, present: torch.Tensor | None = None) -> torch.Tensor:
        """q(z | present modalities), the product of experts. Returns the latent sample."""
        loc, scale = self.encode(*xs, present=present)
        with pyro.plate(DATA_PLATE, loc.shape[0], dim=-1):
            with self._beta_scaled():
                return pyro.sample(LATENT_SITE, diagonal_normal(loc, scale))

    # -- conveniences ------------------------------------------------------------
    def decode(self, z: torch.Tensor, modality: Modality) -> dist.TorchDistribution:
        """p(x^(m) | z), batch shape ``z.shape[:-1]``, event ``(input_dims[m],)``."""
        m = self._index(modality)
        return self.likelihoods[m](self.decoders[m](z)).to_event(1)

    def _point_or_draw(self, z: torch.Tensor, m: int, mean: bool) -> torch.Tensor:
        px = self.decode(z, m)
        return self.likelihoods[m].point(px.base_dist) if mean else px.sample()

    @torch.no_grad()
    def sample(self, num_samples: int, mean: bool = False) -> list[torch.Tensor]:
        """Joint draws from p(x^(1:M)): one ``(num_samples, input_dims[m])`` tensor per modality,
        all from the same ``z`` (decoder means if ``mean``)."""
        z = self._prior().sample((num_samples,))
        return [self._point_or_draw(z, m, mean) for m in range(self.num_modalities)]

    @torch.no_grad()
    def reconstruct(self, *xs: torch.Tensor | None, present: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Every modality decoded at the posterior mean of the present ones.

        One point prediction ``(batch, input_dims[m])`` per modality, absent
        modalities included: for them this is cross-modal imputation.
        """
        loc, _ = self.encode(*xs, present=present)
        return [self._point_or_draw(loc, m, True) for m in range(self.num_modalities)]

    @torch.no_grad()
    def generate(
        self,
        from_modality: Modality,
        x: torch.Tensor,
        to_modality: Modality | None = None,
        mean: bool = True,
    ) -> torch.Tensor | list[torch.Tensor]:
        """Cross-modal generation: decode from :math:`q(z \\mid x^{(m)})`, the product
        of modality ``from_modality``'s expert and the prior.

        :param from_modality: index or name of the observed modality.
        :param torch.Tensor x: its data, ``(batch, input_dims[from_modality])``.
        :param to_modality: index or name of the modality to generate; None for all.
        :param bool mean: decode the posterior mean and return the decoder's
            point prediction (default), or draw ``z`` and then ``x``.
        :returns: a ``(batch, input_dims[to_modality])`` tensor, or a list with
            one per modality.
        """
        src = self._index(from_modality)
        xs: list[torch.Tensor | None] = [None] * self.num_modalities
        xs[src] = x
        post = self.posterior(*xs)
        z = post.mean if mean else post.sample()
        targets = range(self.num_modalities) if to_modality is None else [self._index(to_modality)]
        out = [self._point_or_draw(z, m, mean) for m in targets]
        return out if to_modality is None else out[0]

    def unimodal_subsets(
        self, *xs: torch.Tensor, present: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        """The batch repeated M + 1 times: all modalities, then each one alone.

        Returns ``(x1, ..., xM, present)`` with ``(M + 1) * batch`` rows; the
        i-th repeat (i >= 1) has only modality i present (and only where it was
        present before). ``pvae.fit(mvae, mvae.unimodal_subsets(x1, x2))``
        maximises Wu and Goodman's sub-sampled objective
        :math:`\\mathrm{ELBO}(x^{(1:M)}) + \\sum_m \\mathrm{ELBO}(x^{(m)})`.
        """
        xs, present, batch = self._parse(xs, present)
        if any(x is None for x in xs):
            raise ValueError("unimodal_subsets needs every modality as a tensor; mark absent data with present.")
        device = xs[0].device
        base = torch.ones(batch, self.num_modalities, dtype=torch.bool, device=device) if present is None else present
        eye = torch.eye(self.num_modalities, dtype=torch.bool, device=device)
        masks = [base] + [base & eye[m] for m in range(self.num_modalities)]
        reps = self.num_modalities + 1
        return (*(x.repeat(reps, *([1] * (x.dim() - 1))) for x in xs), torch.cat(masks, 0))
