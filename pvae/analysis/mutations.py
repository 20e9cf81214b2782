"""Mutation effects from a generative model of a protein family, without labels.

A model fitted to a family's alignment scores a variant by how much less
likely it makes the sequence:

.. math::

    s(x^\\text{mut}) = \\log p(x^\\text{mut}) - \\log p(x^\\text{wt}),

with :math:`\\log p` replaced by the ELBO (DeepSequence; EVE's "evolutionary
index" is :math:`-s`) or by the importance-weighted bound
:math:`\\mathrm{IWAE}_K` (tighter, :func:`pvae.infer.iwae_bound`). Lower
scores predict damaging variants. Variants are written ``A123B`` (wild-type
letter, residue number in the alignment's numbering, mutant letter) and
multi-mutants ``A123B:C125D``.

Every distinct sequence (the wild type and each variant) is one datum of a
single vectorised :func:`pvae.infer.log_evidence` pass with ``num_particles``
draws each, so a variant equal to the wild type scores exactly 0, and the
Monte Carlo standard error of a score is
:math:`\\sqrt{\\mathrm{se}_\\text{mut}^2 + \\mathrm{se}_\\text{wt}^2}` (independent draws).

References

1. A. J. Riesselman, J. B. Ingraham, D. S. Marks. Deep generative models of
   genetic variation capture the effects of mutations. Nature Methods 15, 2018.
2. J. Frazer et al. Disease variant prediction with deep generative models of
   evolutionary data. Nature 599, 2021.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch

from ..data.msa import AMINO_ACIDS, MSA
from ..infer.bounds import BoundEstimate, log_evidence
from ..inputs import DataError
from ..models.base import program_verb

__all__ = ["MutationEffects", "mutation_effects", "parse_mutations"]

_MUTATION = re.compile(r"^([A-Z])(\d+)([A-Z])$")


@dataclass(frozen=True)
class MutationEffects:
    """Scores of variants against the wild type.

    :ivar tuple mutations: the variants as given.
    :ivar torch.Tensor score: ``(V,)`` :math:`\\log p(\\text{mut}) - \\log p(\\text{wt})`
        by the bound; NaN where unscored.
    :ivar torch.Tensor stderr: ``(V,)`` its Monte Carlo standard error; NaN where unscored.
    :ivar tuple reasons: None for a scored variant, else why it was not scored.
    :ivar str bound: ``"elbo"`` or ``"iwae"``.
    :ivar int num_particles: draws per sequence.
    """

    mutations: tuple[str, ...]
    score: torch.Tensor
    stderr: torch.Tensor
    reasons: tuple[str | None, ...]
    bound: str
    num_particles: int

    @property
    def scored(self) -> torch.Tensor:
        """``(V,)`` bool: which variants have a score."""
        return torch.tensor([r is None for r in self.reasons], dtype=torch.bool)

    def to_pandas(self):
        """A DataFrame with columns ``mutation, score, stderr, reason``."""
        import pandas as pd

        return pd.DataFrame({
            "mutation": list(self.mutations), "score": self.score.tolist(),
            "stderr": self.stderr.tolist(), "reason": list(self.reasons),
        })


def parse_mutations(
    msa: MSA, mutations: Sequence[str]
) -> tuple[torch.Tensor, list[int], list[str | None]]:
    """Variant sequences at the alignment's focus columns.

    :param MSA msa: the alignment (its focus sequence and numbering).
    :param mutations: strings ``A123B`` or ``A123B:C125D``.
    :returns: ``(codes, rows, reasons)``: ``(S, L)`` codes of the scorable
        variants, for each variant its row in ``codes`` (-1 if unscored) and
        None or the reason it is not scored (a residue outside the focus columns).
    :raises DataError: on a malformed variant, a residue number outside the
        focus sequence, a wild-type letter that disagrees with it, a mutant
        letter outside the 20 amino acids, or one residue mutated twice.
    """
    column_of = {int(p): c for c, p in enumerate(msa.positions.tolist()) if p >= 0}
    end = msa.start + len(msa.focus_sequence) - 1
    columns: list[list[int]] = []
    letters: list[list[int]] = []
    rows: list[int] = []
    reasons: list[str | None] = []
    for text in mutations:
        cols, codes, outside = [], [], []
        parts = str(text).strip().split(":")
        for part in parts:
            found = _MUTATION.match(part.strip().upper())
            if found is None:
                raise DataError(
                    f"mutation {text!r}: {part!r} is not of the form A123B (wild-type letter, residue "
                    "number, mutant letter). Try 'P72R' or 'P72R:R175H'."
                )
            wt, number, mut = found.group(1), int(found.group(2)), found.group(3)
            if not msa.start <= number <= end:
                raise DataError(
                    f"mutation {text!r}: residue {number} is outside the focus sequence "
                    f"({msa.names[0]!r}, residues {msa.start}-{end})."
                )
            actual = msa.focus_sequence[number - msa.start]
            if actual != wt:
                raise DataError(
                    f"mutation {text!r}: the wild type has {actual!r} at residue {number}, not {wt!r}. "
                    f"Try {actual}{number}{mut} (check the numbering: the alignment starts at {msa.start})."
                )
            if mut not in AMINO_ACIDS:
                raise DataError(f"mutation {text!r}: {mut!r} is not one of the 20 amino acids {AMINO_ACIDS}.")
            if number in column_of:
                if column_of[number] in cols:
                    raise DataError(f"mutation {text!r}: residue {number} is mutated twice.")
                cols.append(column_of[number])
                codes.append(AMINO_ACIDS.index(mut))
            else:
                outside.append(number)
        if outside:
            rows.append(-1)
            reasons.append(
                f"residue{'s' if len(outside) > 1 else ''} {', '.join(map(str, outside))} "
                "not in a focus column of the alignment (an insert or low-coverage column)"
            )
        else:
            rows.append(len(columns))
            reasons.append(None)
            columns.append(cols)
            letters.append(codes)
    variants = msa.wild_type.repeat(len(columns), 1)
    if columns:
        which = torch.tensor([v for v, cols in enumerate(columns) for _ in cols], dtype=torch.long)
        variants[which, torch.tensor(sum(columns, []))] = torch.tensor(sum(letters, []))
    return variants, rows, reasons


@program_verb("program", convert=False)
def mutation_effects(
    program: Any,
    msa: MSA,
    mutations: Sequence[str],
    num_particles: int = 1000,
    bound: Literal["elbo", "iwae"] = "elbo",
    chunk_size: int | None = None,
) -> MutationEffects:
    """Score variants of the focus sequence by the change in a bound of :math:`\\log p(x)`.

    ``mutation_effects(program, msa, mutations)`` or
    ``mutation_effects(model, guide, msa, mutations)``; the program reads
    integer codes over :data:`pvae.data.ALPHABET` (as
    pvae's sequence VAE and
    :class:`~pvae.models.SiteIndependentModel` do, or :class:`~pvae.VAE` with a
    categorical likelihood).

    :param MSA msa: the alignment the program was fitted to (its focus sequence,
        numbering and columns).
    :param mutations: variants ``A123B`` / ``A123B:C125D`` in the focus sequence's numbering.
    :param int num_particles: draws per sequence. Default 1000.
    :param str bound: ``"elbo"`` (DeepSequence, EVE) or ``"iwae"``. Default ``"elbo"``.
    :param int chunk_size: particles per vectorised pass (see :func:`pvae.infer.iwae_bound`).
    :returns: :class:`MutationEffects`; variants outside the focus columns are
        unscored, with the reason.
    :raises DataError: on a malformed variant or one that disagrees with the
        wild type (see :func:`parse_mutations`).
    """
    if bound not in ("elbo", "iwae"):
        raise ValueError(f"bound must be 'elbo' or 'iwae', got {bound!r}.")
    if not isinstance(msa, MSA):
        raise TypeError(f"msa must be a pvae.data.MSA (from pvae.data.load_msa), got {type(msa).__name__}.")
    mutations = tuple(mutations)
    variants, rows, reasons = parse_mutations(msa, mutations)
    unique, inverse = torch.unique(torch.cat([msa.wild_type[None], variants]), dim=0, return_inverse=True)
    was_training = getattr(program, "training", False)
    if was_training:
        program.eval()  # no dropout in the evaluation
    try:
        estimate = log_evidence(program, unique, num_particles=num_particles, chunk_size=chunk_size)
    finally:
        if was_training:
            program.train()
    chosen: BoundEstimate = estimate.elbo if bound == "elbo" else estimate.log_evidence
    value, se = chosen.value.double(), chosen.stderr.double()
    rows_t = torch.tensor(rows, dtype=torch.long)
    ok = rows_t >= 0
    u, wt = inverse[1:][rows_t[ok]], inverse[0]
    score = torch.full((len(mutations),), float("nan"), dtype=torch.float64)
    stderr = score.clone()
    score[ok] = value[u] - value[wt]
    stderr[ok] = torch.where(u == wt, torch.zeros_like(se[u]), (se[u].pow(2) + se[wt].pow(2)).sqrt())
    return MutationEffects(mutations, score, stderr, tuple(reasons), bound, num_particles)
