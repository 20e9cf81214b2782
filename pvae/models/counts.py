"""A batch-conditional count VAE for single-cell RNA-seq (scVI's program).

Counts :math:`x_{ng}` of gene :math:`g` in cell :math:`n`, from batch
:math:`s_n`, with the observed library size :math:`l_n = \\sum_g x_{ng}`:

.. math::

    z_n \\sim \\mathcal N(0, I), \\qquad
    \\rho_n = \\mathrm{softmax}\\big(f_\\theta(z_n, s_n)\\big), \\qquad
    \\mu_{ng} = l_n \\rho_{ng},

    x_{ng} \\mid z_n \\sim \\mathrm{NB}(\\mu_{ng}, r_g) \\ \\text{or}\\
    \\mathrm{ZINB}(\\mu_{ng}, r_g, \\pi_{ng}), \\qquad
    q_\\phi(z_n \\mid x_n, s_n) = \\mathcal N\\big(\\mu_\\phi(\\log(1 + x_n), s_n),
    \\mathrm{diag}\\,\\sigma_\\phi^2\\big),

with :math:`\\mathrm{Var}[x] = \\mu + \\mu^2 / r`, the dispersion :math:`r` per gene
or per gene and batch (:math:`r_{g s_n}`), and the dropout logits of
:math:`\\pi` from the decoder. The batch enters encoder and decoder as a
one-hot vector (the encoder reads :math:`\\log(1 + x)` standardised per gene,
:meth:`CountVAE.standardize_inputs`): the decoder explains what the batch does
to expression, and the KL term makes carrying batch in :math:`z` cost nats (see
:class:`~pvae.models.ConditionalVAE`), so :math:`z` keeps the biology.

The library size is the *observed* one, a covariate rather than a latent
(scvi-tools' default, ``use_observed_lib_size=True``): it is known exactly for
every cell, it adds no site and no variance to the bound, and the ELBO bounds
:math:`\\log p(x \\mid s, l)`, the quantity scvi-tools reports. (scVI's
original latent library, log-normal with a per-batch prior, matters for
imputing a cell's depth, not for the integration this program is for.)

References

1. R. Lopez, J. Regier, M. B. Cole, M. I. Jordan, N. Yosef. Deep generative
   modeling for single-cell transcriptomics. Nature Methods 15, 2018.
2. C. Gayoso et al. A Python library for probabilistic analysis of
   single-cell omics data. Nature Biotechnology 40, 2022 (scvi-tools).
3. Seed 004: batch effects in multi-batch single-cell data, count likelihoods.
"""

from __future__ import annotations

from typing import Literal, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import is_validation_enabled
from pyro.nn import pyro_method

from ..inputs import DataError, DataTypeError
from .base import DATA_PLATE, LATENT_SITE, OBS_SITE
from .likelihoods import check_mask
from .nets import Activation, diagonal_normal, one_hot
from .registry import Example, register_model
from .vae import _check_dim, _EncoderDecoder

__all__ = ["CountVAE"]

CountLikelihood = Literal["negative_binomial", "zero_inflated_negative_binomial"]
_SHORT = {"nb": "negative_binomial", "zinb": "zero_inflated_negative_binomial"}


def _example() -> Example:
    x = torch.poisson(torch.full((8, 6), 3.0))
    batch = torch.arange(8) % 2
    kwargs = {"input_dim": 6, "num_batches": 2, "latent_dim": 2, "hidden_dims": (8,),
              "likelihood": "zinb", "dispersion": "gene-batch"}
    return Example(kwargs, (x, batch), sample_args=(torch.tensor([0, 1, 1, 0]), 20.0))


@register_model("count_vae", example=_example)
class CountVAE(_EncoderDecoder):
    """scVI's program: counts with a NB or ZINB likelihood, conditioned on batch.

    ``model(x, batch=None, mask=None)`` and ``guide(x, batch=None, mask=None)``:
    ``x`` are counts ``(cells, genes)``, ``batch`` integer batch codes
    ``(cells,)`` in ``0..num_batches-1`` (None when ``num_batches=1``: the plain
    NB VAE without batch). Latent at site ``"z"``, counts at site ``"x"``, cells
    in ``pyro.plate("data", dim=-1)``; ``pvae.fit(model, (x, batch))`` trains it
    and every bound of :mod:`pvae.infer` evaluates it.

    Cells with no counts at all get library 1 (their mean is then a proportion,
    and the zero row its likelihood).

    **Missing genes** (``mask``, True where observed; :math:`O_n` the observed
    genes of cell :math:`n`). Only the observed library
    :math:`l_n = \\sum_{g \\in O_n} x_{ng}` is known. Under the model a cell of
    total depth :math:`L_n` has :math:`\\mathbb E[x_{ng}] = L_n \\rho_{ng}`, so
    :math:`\\mathbb E\\big[\\sum_{g \\in O_n} x_{ng}\\big] = L_n \\sum_{g \\in O_n} \\rho_{ng}`;
    spreading :math:`l_n` over all genes (:math:`\\mu = l_n \\rho`) would
    under-predict every observed count by the cell's missing fraction of
    :math:`\\rho`. Setting that expectation to the observed :math:`l_n` gives the
    depth :math:`\\hat L_n = l_n / \\sum_{g' \\in O_n} \\rho_{ng'}` and

    .. math::

        \\mu_{ng} = \\frac{l_n\\, \\rho_{ng}}{\\sum_{g' \\in O_n} \\rho_{ng'}}, \\qquad
        \\sum_{g \\in O_n} \\mu_{ng} = l_n,

    i.e. :math:`\\rho` renormalised over the observed genes (the NB means of the
    observed genes spend exactly the observed library, as the unmasked model's
    spend :math:`l_n`); a missing gene gets the imputed mean
    :math:`\\hat L_n \\rho_{ng}`. The decoder does not see the mask, the
    renormalisation makes the likelihood of the observed genes independent of
    what is missing. A fully observed row is computed exactly as without a mask
    (the same bits); a row with nothing observed keeps :math:`\\mu = \\rho`
    (library 1; its likelihood is masked out).

    :param int input_dim: genes.
    :param int num_batches: batches (1: no batch). Default 1.
    :param int latent_dim: dimension of ``z``. Default 10 (scVI's).
    :param hidden_dims: hidden widths of the encoder; the decoder mirrors them
        unless ``decoder_hidden_dims`` is given. Default ``(128,)`` (scVI's).
    :param str likelihood: ``"zinb"`` / ``"zero_inflated_negative_binomial"``
        (scVI's default) or ``"nb"`` / ``"negative_binomial"``.
    :param str dispersion: ``"gene"`` (one :math:`r_g`, scVI's default) or
        ``"gene-batch"`` (:math:`r_{gs}`).
    :param float beta: weight of the KL term, a finite number > 0. Default 1.
    :param str activation: hidden activation. Default ``"relu"``.
    :param decoder_hidden_dims: hidden widths of the decoder.
    """

    #: how each positional argument is read (:mod:`pvae.inputs`), and its name in errors
    data_kinds = ("features", "labels", "mask")
    data_names = ("x", "batch", "mask")

    def __init__(
        self,
        input_dim: int,
        num_batches: int = 1,
        latent_dim: int = 10,
        hidden_dims: Sequence[int] = (128,),
        likelihood: CountLikelihood | Literal["nb", "zinb"] = "zinb",
        dispersion: Literal["gene", "gene-batch"] = "gene",
        beta: float = 1.0,
        activation: Activation = "relu",
        decoder_hidden_dims: Sequence[int] | None = None,
    ) -> None:
        num_batches = _check_dim("num_batches", num_batches)
        likelihood = _SHORT.get(likelihood, likelihood)
        if likelihood not in _SHORT.values():
            raise ValueError(f"likelihood must be 'nb' or 'zinb' (or their long names), got {likelihood!r}.")
        if dispersion not in ("gene", "gene-batch"):
            raise ValueError(f"dispersion must be 'gene' or 'gene-batch', got {dispersion!r}.")
        groups = num_batches if dispersion == "gene-batch" else 1
        cond = num_batches if num_batches > 1 else 0
        super().__init__(input_dim, latent_dim, hidden_dims, likelihood, beta, activation, decoder_hidden_dims,
                         {"parameterization": "log_mean", "dispersion_groups": groups}, condition_dim=cond)
        self.num_batches, self.dispersion = num_batches, dispersion
        # the encoder reads (log1p(x) - input_loc) / input_scale; identity until standardize_inputs
        self.register_buffer("input_loc", torch.zeros(self.input_dim))
        self.register_buffer("input_scale", torch.ones(self.input_dim))
        self.register_buffer("inputs_standardized", torch.tensor(False))

    @torch.no_grad()
    def standardize_inputs(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Standardise each gene of the encoder's input, :math:`\\log(1 + x_g)`, to mean 0 and
        standard deviation 1 over the cells of ``x`` (the deviation floored at 0.1, so that a
        gene all but silent in ``x`` is not magnified more than tenfold).

        :func:`pvae.fit` calls it once (:meth:`on_fit_start`) on the training data; call it
        yourself before a hand-written training loop. The statistics are buffers, saved in
        the ``state_dict``. Why: the encoder's first layer otherwise sees genes on scales that
        differ by orders of magnitude, and learns the rarer cell-type markers slowly. scVI's
        batch normalisation after that layer does the same job with batch statistics; fixed
        statistics keep the program a pure function of its inputs (no train/eval modes).
        Measured on simulated counts (6000 cells, 1000 genes, 8 types, 4 batches, 30 epochs):
        kNN cell-type accuracy of the latent means 0.64 without, 0.99 with; batch mixing 0.81
        and 0.94; held-out ELBO -1584 and -1581 nats per cell.
        """
        log_x = self._observed(x, mask).log1p()
        if mask is None:
            loc, scale = log_x.mean(0), log_x.std(0)
        else:
            w = mask.to(log_x.dtype)
            n = w.sum(0).clamp(min=1.0)
            loc = (log_x * w).sum(0) / n
            scale = (((log_x - loc) ** 2 * w).sum(0) / n).sqrt()
        self.input_loc.copy_(loc)
        self.input_scale.copy_(torch.nan_to_num(scale, nan=1.0).clamp(min=0.1))
        self.inputs_standardized.fill_(True)

    def on_fit_start(self, x: torch.Tensor, batch: torch.Tensor | None = None,
                     mask: torch.Tensor | None = None) -> None:
        """Called by :func:`pvae.fit` before training: :meth:`standardize_inputs` on the
        training data, unless already done (a second fit continues with the same encoder)."""
        if not bool(self.inputs_standardized):
            self.standardize_inputs(x, mask)

    # -- inputs ------------------------------------------------------------------
    def _codes(self, batch: torch.Tensor | None, n: int) -> torch.Tensor | None:
        """Batch codes ``(n,)`` (None when there is one batch and none were given)."""
        if batch is None:
            if self.num_batches > 1:
                raise DataError(f"this model has {self.num_batches} batches: pass batch, integer codes of shape ({n},).")
            return None
        if not isinstance(batch, torch.Tensor) or batch.is_floating_point() or batch.dtype == torch.bool:
            raise DataTypeError(
                f"batch must be an integer tensor of batch codes, got "
                f"{getattr(batch, 'dtype', type(batch).__name__)}."
            )
        if batch.shape != (n,):
            raise DataError(f"batch must have shape ({n},) (one code per cell), got {tuple(batch.shape)}.")
        if is_validation_enabled() and n and (batch.min() < 0 or batch.max() >= self.num_batches):
            raise DataError(
                f"batch codes must lie in 0..{self.num_batches - 1} (the model was built for "
                f"num_batches={self.num_batches}), got values in {int(batch.min())}..{int(batch.max())}: "
                "a batch not seen in training has no decoder input. Try encoding it as one of the "
                "training batches, or train with it."
            )
        return batch

    def validate(self, x: torch.Tensor, batch: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> None:
        """Check counts, batch codes and mask; called once by :func:`pvae.fit`.

        :raises DataError: on wrong shapes, non-count values of ``x``
            (:class:`~pvae.models.SupportError`), or batch codes out of range.
        """
        self._check_x(x, mask)
        with pyro.validation_enabled(True):
            self._codes(batch, x.shape[0])

    def _condition(self, batch: torch.Tensor | None) -> torch.Tensor | None:
        if batch is None or self.num_batches == 1:
            return None
        return one_hot(batch, self.num_batches, self.prior_loc.dtype)

    def log_library(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """:math:`\\log l_n`, the log of each cell's total count (at least 1): ``(cells, 1)``."""
        return self._observed(x, mask).sum(-1, keepdim=True).clamp(min=1.0).log()

    # -- the program -------------------------------------------------------------
    @staticmethod
    def _log_observed_mass(log_rho: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """:math:`\\log \\sum_{g \\in O_n} \\rho_{ng}`, ``(..., cells, 1)``: exactly 0 for a fully
        observed row (so it keeps the unmasked bits), and 0 for a row with nothing observed."""
        full = mask.all(-1, keepdim=True)
        counted = mask | ~mask.any(-1, keepdim=True)  # nothing observed: all genes (finite gradients)
        mass = log_rho.masked_fill(~counted, float("-inf")).logsumexp(-1, keepdim=True)
        return torch.where(full, torch.zeros_like(mass), mass)

    def _likelihood(self, z: torch.Tensor, batch: torch.Tensor | None, log_library: torch.Tensor,
                    mask: torch.Tensor | None = None):
        """p(x | z, batch, l): NB means :math:`l \\rho` (without ``mask``), or
        :math:`l \\rho / \\sum_{\\text{observed}} \\rho` (with it; see the class docstring)."""
        nets = self._modules
        raw = nets["decoder"](self._join(z, self._condition(batch)))
        genes = self.input_dim
        log_rho = raw[..., :genes].log_softmax(-1)
        if mask is not None:
            log_rho = log_rho - self._log_observed_mass(log_rho, mask)
        log_mean = log_rho + log_library
        raw = torch.cat([log_mean, raw[..., genes:]], dim=-1) if raw.shape[-1] > genes else log_mean
        group = batch if self.dispersion == "gene-batch" else None
        return nets["likelihood"](raw, group=group)

    @pyro_method
    def model(self, x: torch.Tensor, batch: torch.Tensor | None = None,
              mask: torch.Tensor | None = None) -> torch.Tensor:
        """p(x, z | batch, library): the generative program. Returns the latent sample."""
        if is_validation_enabled():
            self.validate(x, batch, mask)
        with pyro.plate(DATA_PLATE, x.shape[0], dim=-1):
            with self._beta_scaled():
                z = pyro.sample(LATENT_SITE, self._prior())
            px = self._likelihood(z, batch, self.log_library(x, mask), mask)
            if mask is not None:
                px = px.mask(mask)
            pyro.sample(OBS_SITE, px.to_event(1), obs=self._observed(x, mask))
        return z

    @pyro_method
    def guide(self, x: torch.Tensor, batch: torch.Tensor | None = None,
              mask: torch.Tensor | None = None) -> torch.Tensor:
        """q(z | x, batch): the amortised encoder on standardised :math:`\\log(1 + x)`. Returns the latent sample."""
        loc, scale = self.encode(x, batch, mask)
        with pyro.plate(DATA_PLATE, x.shape[0], dim=-1):
            with self._beta_scaled():
                return pyro.sample(LATENT_SITE, diagonal_normal(loc, scale))

    # -- conveniences ------------------------------------------------------------
    def encode(self, x: torch.Tensor, batch: torch.Tensor | None = None,
               mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Parameters of q(z | x, batch): ``(loc, scale)``, each ``(cells, latent_dim)``."""
        batch = self._codes(batch, x.shape[0])
        nets = self._modules
        inputs = (self._observed(x, mask).log1p() - self.input_loc) / self.input_scale
        h = nets["encoder_body"](self._join(inputs, self._condition(batch)))
        return nets["encoder_head"](h)

    def decode(self, z: torch.Tensor, batch: torch.Tensor | None = None,
               library: torch.Tensor | float = 1.0, mask: torch.Tensor | None = None) -> dist.TorchDistribution:
        """p(x | z, batch, library), batch shape ``z.shape[:-1]``, event ``(genes,)``.

        :param torch.Tensor z: latents ``(..., cells, latent_dim)``.
        :param batch: batch codes ``(cells,)``.
        :param library: library sizes, a number or ``(cells,)``. Default 1 (the
            mean is then the expression proportion :math:`\\rho`).
        :param mask: bool ``(cells, genes)``, True where observed: ``library`` is
            then each cell's *observed* library, and the NB means of its observed
            genes sum to it (:math:`l \\rho / \\sum_{\\text{observed}} \\rho`; the
            class docstring). Default None: the means sum to ``library`` over all genes.
        """
        batch = self._codes(batch, z.shape[-2])
        log_library = torch.as_tensor(library, dtype=z.dtype, device=z.device).log()
        if log_library.dim():
            log_library = log_library.unsqueeze(-1)
        return self._likelihood(z, batch, log_library, mask).to_event(1)

    @torch.no_grad()
    def normalized_expression(
        self,
        x: torch.Tensor,
        batch: torch.Tensor | None = None,
        reference_batch: int | None = None,
        library_size: float | None = None,
        num_samples: int = 1,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Batch-corrected expression :math:`\\mathbb E[x \\mid z, s = b, l]`, ``(cells, genes)``.

        Each cell's :math:`z` is encoded under its own batch, then decoded under
        ``reference_batch`` (every cell seen as if sequenced in batch :math:`b`)
        with library ``library_size``: :math:`l\\,\\rho(z, b)` times
        :math:`1 - \\pi` for the ZINB, averaged over ``num_samples`` draws
        :math:`z \\sim q(z \\mid x, s)` (1: at the encoder mean).

        :param int reference_batch: the batch to express every cell in; default
            each cell's own batch (denoised, not corrected).
        :param float library_size: a common library (e.g. 1e4, "per 10k");
            default each cell's observed library.
        :param int num_samples: draws of z per cell; 1 uses the mean.
        :param mask: bool ``(cells, genes)``, True where observed (e.g.
            ``~torch.isnan(x)``): the encoder reads the observed entries, and
            without ``library_size`` each cell's observed library is spread as in
            :meth:`decode` (the means of its observed genes sum to it; the missing
            genes get imputed means). Default None: every entry observed.
        :raises DataError: if ``x`` has NaN entries and no ``mask`` marks them.
        """
        if mask is None:
            if x.is_floating_point() and bool(torch.isnan(x).any()):
                raise DataError(
                    f"x has {int(torch.isnan(x).sum())} NaN entries: pass mask=~torch.isnan(x) to mark "
                    "them missing (normalized_expression(x, ..., mask=mask))."
                )
        else:
            check_mask(x, mask)
        loc, scale = self.encode(x, batch, mask)  # checks the batch codes
        if num_samples == 1:
            z = loc
        else:
            z = loc + scale * torch.randn((num_samples, *loc.shape), dtype=loc.dtype, device=loc.device)
        if reference_batch is not None:
            if not 0 <= int(reference_batch) < self.num_batches:
                raise ValueError(f"reference_batch must lie in 0..{self.num_batches - 1}, got {reference_batch!r}.")
            batch = torch.full((x.shape[0],), int(reference_batch), dtype=torch.long, device=x.device)
        if library_size is None:
            library, decode_mask = self.log_library(x, mask).exp().squeeze(-1), mask
        else:  # a common total library over all genes: the mask has nothing to renormalise
            library, decode_mask = float(library_size), None
        mean = self.decode(z, batch, library, decode_mask).mean
        return mean if num_samples == 1 else mean.mean(0)

    @torch.no_grad()
    def sample(self, batch: torch.Tensor | None = None, library: torch.Tensor | float = 1e4,
               num_samples: int | None = None) -> torch.Tensor:
        """Draw counts ``x ~ p(x | batch, library)``, one cell per batch code.

        :param batch: batch codes ``(cells,)``; with one batch, give
            ``num_samples`` instead.
        :param library: library sizes, a number or ``(cells,)``. Default 1e4.
        """
        n = batch.shape[0] if batch is not None else num_samples
        if n is None:
            raise ValueError("give batch codes, or num_samples for a model with one batch.")
        z = self._prior().sample((n,))
        return self.decode(z, batch, library).sample()

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, batch: torch.Tensor | None = None,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
        """The decoder's mean at the encoder mean, with each cell's batch and library
        (with ``mask``: the observed library, spread as in :meth:`decode`)."""
        loc, _ = self.encode(x, batch, mask)
        return self.decode(loc, batch, self.log_library(x, mask).exp().squeeze(-1), mask).mean
