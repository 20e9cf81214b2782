"""The site-independent model of a protein family: a profile of column frequencies.

.. math::

    p(x) = \\prod_{l=1}^L p_l(x_l), \\qquad
    p_l(a) = \\frac{\\sum_i w_i [x_{il} = a] + \\alpha}{\\sum_i w_i + A\\alpha},

with sequence weights :math:`w_i` (:func:`pvae.data.sequence_weights`), an
alphabet of :math:`A` letters (20 amino acids and the gap) and a pseudocount
:math:`\\alpha` per letter. It is the baseline every mutation-effect paper
reports beside its model (Hopf et al. 2017; Riesselman et al. 2018): it
scores a variant by the log-odds of its residues at their columns, blind to
dependencies between columns. As a Pyro program it has no latent variable
(the guide samples nothing), so every pvae bound of it is its exact
log-likelihood.

References

1. T. A. Hopf et al. Mutation effects predicted from sequence co-variation.
   Nature Biotechnology 35, 2017.
2. A. J. Riesselman, J. B. Ingraham, D. S. Marks. Deep generative models of
   genetic variation capture the effects of mutations. Nature Methods 15, 2018.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from ..inputs import DataError, as_data
from .base import DATA_PLATE, OBS_SITE

__all__ = ["SiteIndependentModel"]


class SiteIndependentModel(PyroModule):
    """Independent categorical columns with weighted frequencies (a profile).

    ``model(x, weights=None)`` observes integer codes ``x`` of shape
    ``(batch, length)`` at site ``"x"`` in ``pyro.plate("data", dim=-1)``;
    ``guide`` samples nothing. Build it from an alignment with
    :meth:`from_alignment`; it has no trainable parameters (``pvae.fit`` is not
    for it).

    :param torch.Tensor log_probs: ``(length, alphabet_size)`` log column frequencies.
    """

    data_kinds = ("labels", "features")
    data_names = ("x", "weights")

    def __init__(self, log_probs: torch.Tensor) -> None:
        super().__init__()
        if log_probs.dim() != 2:
            raise ValueError(f"log_probs must have shape (length, alphabet_size), got {tuple(log_probs.shape)}.")
        self.register_buffer("log_probs", log_probs.log_softmax(-1))

    @classmethod
    def from_alignment(
        cls,
        codes: torch.Tensor,
        weights: torch.Tensor | None = None,
        pseudocount: float = 1.0,
        alphabet_size: int = 21,
    ) -> "SiteIndependentModel":
        """Fit the column frequencies of ``codes`` (closed form, see the module).

        :param torch.Tensor codes: ``(n, L)`` integer codes in ``0..alphabet_size-1``.
        :param weights: ``(n,)`` sequence weights; default 1 each.
        :param float pseudocount: :math:`\\alpha`, added to every letter's weighted count. Default 1.
        :param int alphabet_size: :math:`A`. Default 21 (:data:`pvae.data.ALPHABET`).
        """
        codes = as_data(codes, "codes", kind="labels")
        if codes.dim() != 2 or ((codes < 0) | (codes >= alphabet_size)).any():
            raise DataError(
                f"codes must be (n, L) integers in 0..{alphabet_size - 1}, got shape {tuple(codes.shape)}. "
                "Try msa.codes."
            )
        if not pseudocount > 0:
            raise ValueError(f"pseudocount must be > 0 (a column without a letter would have log p = -inf), got {pseudocount!r}.")
        w = torch.ones(len(codes)) if weights is None else as_data(weights, "weights", dtype=torch.float32)
        if w.shape != (len(codes),) or bool((w < 0).any()):
            raise DataError(f"weights must be ({len(codes)},) and non-negative, got shape {tuple(w.shape)}.")
        counts = torch.zeros(codes.shape[1], alphabet_size, dtype=torch.float64)
        column = torch.arange(codes.shape[1]).expand_as(codes)
        counts.index_put_((column.flatten(), codes.flatten()), w.double()[:, None].expand_as(codes).flatten(),
                          accumulate=True)
        return cls((counts + pseudocount).log().float())

    @property
    def length(self) -> int:
        return int(self.log_probs.shape[0])

    def model(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        """p(x): independent columns; ``weights`` scale each datum (as in training objectives)."""
        if x.dim() != 2 or x.shape[1] != self.length:
            raise DataError(f"x must be (batch, {self.length}) integer codes, got shape {tuple(x.shape)}.")
        with pyro.plate(DATA_PLATE, x.shape[0], dim=-1), pyro.poutine.scale(scale=1.0 if weights is None else weights):
            columns = dist.Categorical(logits=self.log_probs).expand((x.shape[0], self.length))
            pyro.sample(OBS_SITE, columns.to_event(1), obs=x)

    def guide(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        """No latent variable: samples nothing."""

    @torch.no_grad()
    def sample(self, num_samples: int) -> torch.Tensor:
        """``(num_samples, length)`` int64 codes drawn column by column."""
        return dist.Categorical(logits=self.log_probs).sample((num_samples,))
