"""A validity filter for generated protein sequences: rules a user composes.

Seed 001 samples new sequences from a VAE's latent space and keeps those
that pass a feasibility screen: a sound mix of amino acids, no known
destabilising motifs. :class:`SequenceFilter` runs such rules in order on
``(m, L)`` codes over :data:`pvae.data.ALPHABET` and reports, for each
rejected sequence, the first rule that rejected it and why:

- :class:`CompositionRule` -- the fraction of a sequence's residues (gaps
  excluded) that fall in each letter group lies within bounds; built from a
  family with :meth:`CompositionRule.from_alignment` (by default each amino
  acid's 1st-99th percentile over the family's sequences);
- :class:`MotifRule` -- no forbidden motif (a regular expression over the
  ungapped sequence, e.g. ``"N[^P][ST]"`` for N-glycosylation sites, ``"C{3,}"``);
- :class:`IdentityRule` -- the identity to the nearest natural sequence lies
  in a range: above a floor (still a family member) and below a ceiling (new,
  not a copy).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping, Protocol, Sequence

import numpy as np
import torch

from ..data.msa import ALPHABET, AMINO_ACIDS, MSA, decode_sequences, nearest_identity
from ..inputs import DataError, as_data

__all__ = [
    "HYDROPHOBIC",
    "CompositionRule",
    "FilterResult",
    "IdentityRule",
    "MotifRule",
    "SequenceFilter",
    "SequenceRule",
]

#: Kyte-Doolittle's hydrophobic residues (positive hydropathy)
HYDROPHOBIC = "AVILMFC"
_GAP = ALPHABET.index("-")


class SequenceRule(Protocol):
    """A rule: its ``check`` gives, for ``(m, L)`` codes, ``(m,)`` bool passes and
    the reason of each failure (None for a pass)."""

    name: str

    def check(self, codes: torch.Tensor) -> tuple[torch.Tensor, list[str | None]]: ...


def _group_fractions(codes: torch.Tensor, groups: Mapping[str, str]) -> torch.Tensor:
    """``(m, G)`` fraction of each sequence's residues (gaps excluded) in each group."""
    counts = torch.nn.functional.one_hot(codes, len(ALPHABET)).sum(1)[:, :_GAP].double()
    member = torch.tensor([[letter in letters for letter in AMINO_ACIDS] for letters in groups.values()],
                          dtype=torch.float64)
    return counts @ member.T / counts.sum(1, keepdim=True).clamp(min=1)


@dataclass(frozen=True)
class CompositionRule:
    """Residue composition within bounds, group by group.

    :ivar dict groups: group name -> its letters (e.g. ``{"W": "W", "hydrophobic": HYDROPHOBIC}``).
    :ivar torch.Tensor low: ``(G,)`` lowest allowed fraction of each group.
    :ivar torch.Tensor high: ``(G,)`` highest allowed fraction.
    """

    groups: Mapping[str, str]
    low: torch.Tensor
    high: torch.Tensor
    name: str = "composition"

    @classmethod
    def from_alignment(
        cls,
        msa: MSA,
        groups: Mapping[str, str] | None = None,
        quantiles: tuple[float, float] = (0.01, 0.99),
    ) -> "CompositionRule":
        """Bounds from the family: the ``quantiles`` of each group's fraction over its sequences.

        :param MSA msa: the natural family.
        :param groups: letter groups; default each of the 20 amino acids alone.
        :param quantiles: lower and upper quantile. Default the 1st and 99th percentile.
        """
        groups = dict(groups) if groups is not None else {a: a for a in AMINO_ACIDS}
        for name, letters in groups.items():
            if not letters or any(letter not in AMINO_ACIDS for letter in letters):
                raise ValueError(f"group {name!r} must be amino-acid letters from {AMINO_ACIDS}, got {letters!r}.")
        fractions = _group_fractions(msa.codes, groups).numpy()
        low, high = np.quantile(fractions, quantiles, axis=0)
        return cls(groups, torch.from_numpy(low), torch.from_numpy(high))

    def check(self, codes: torch.Tensor) -> tuple[torch.Tensor, list[str | None]]:
        fractions = _group_fractions(codes, self.groups)
        bad = (fractions < self.low) | (fractions > self.high)
        names = list(self.groups)
        reasons: list[str | None] = [None] * len(codes)
        for i, g in zip(*(t.tolist() for t in _first_true(bad))):
            reasons[i] = (
                f"composition: {names[g]} fraction {float(fractions[i, g]):.3f} outside "
                f"[{float(self.low[g]):.3f}, {float(self.high[g]):.3f}]"
            )
        return ~bad.any(1), reasons


def _first_true(bad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows with a True, and the column of their first True."""
    rows = bad.any(1).nonzero().squeeze(-1)
    return rows, bad[rows].int().argmax(1)


@dataclass(frozen=True)
class MotifRule:
    """No forbidden motif: regular expressions searched in the ungapped sequence.

    :ivar tuple patterns: the motifs (Python regular expressions over upper-case letters).
    """

    patterns: Sequence[str]
    name: str = "motif"
    _compiled: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "_compiled", tuple(re.compile(p) for p in self.patterns))
        except re.error as err:
            raise ValueError(f"MotifRule: {err.pattern!r} is not a regular expression ({err}).") from None

    def check(self, codes: torch.Tensor) -> tuple[torch.Tensor, list[str | None]]:
        reasons: list[str | None] = []
        for seq in decode_sequences(codes):
            residues = seq.replace("-", "")
            hit = next(((p, m) for p in self._compiled if (m := p.search(residues))), None)
            reasons.append(None if hit is None else
                           f"motif: {hit[0].pattern!r} matches {hit[1].group()!r} at residue {hit[1].start() + 1}")
        return torch.tensor([r is None for r in reasons], dtype=torch.bool), reasons


@dataclass(frozen=True)
class IdentityRule:
    """Identity to the nearest reference sequence within ``[low, high]``.

    :ivar torch.Tensor references: ``(n, L)`` codes of the natural sequences.
    :ivar float low: least identity (a family member). Default 0.
    :ivar float high: most identity (not a copy of a natural sequence). Default 1.
    """

    references: torch.Tensor
    low: float = 0.0
    high: float = 1.0
    name: str = "identity"

    def check(self, codes: torch.Tensor) -> tuple[torch.Tensor, list[str | None]]:
        identity, index = nearest_identity(codes, self.references)
        ok = (identity >= self.low) & (identity <= self.high)
        reasons: list[str | None] = [None] * len(codes)
        for i in (~ok).nonzero().squeeze(-1).tolist():
            reasons[i] = (f"identity: {float(identity[i]):.3f} to the nearest reference (row {int(index[i])}) "
                          f"outside [{self.low:.3f}, {self.high:.3f}]")
        return ok, reasons


@dataclass(frozen=True)
class FilterResult:
    """What a :class:`SequenceFilter` kept and why it rejected the rest.

    :ivar torch.Tensor accepted: ``(a, L)`` codes of the accepted sequences.
    :ivar torch.Tensor accepted_index: ``(a,)`` their rows in the input.
    :ivar torch.Tensor rejected_index: ``(r,)`` rows of the rejected ones.
    :ivar tuple rule: for each rejected row, the name of the first rule that rejected it.
    :ivar tuple reasons: for each rejected row, that rule's reason.
    """

    accepted: torch.Tensor
    accepted_index: torch.Tensor
    rejected_index: torch.Tensor
    rule: tuple[str, ...]
    reasons: tuple[str, ...]

    @property
    def fraction_accepted(self) -> float:
        total = len(self.accepted_index) + len(self.rejected_index)
        return len(self.accepted_index) / total if total else float("nan")

    def counts(self) -> dict[str, int]:
        """Rejections by rule name."""
        out: dict[str, int] = {}
        for name in self.rule:
            out[name] = out.get(name, 0) + 1
        return out


@dataclass(frozen=True)
class SequenceFilter:
    """Rules applied in order; a sequence is accepted when it passes all of them.

    :ivar tuple rules: :class:`SequenceRule` objects (:class:`CompositionRule`,
        :class:`MotifRule`, :class:`IdentityRule`, or a user's own with ``name`` and ``check``).
    """

    rules: Sequence[SequenceRule]

    def __call__(self, codes: torch.Tensor) -> FilterResult:
        """Filter ``(m, L)`` integer codes (e.g. ``SequenceVAE.sample(m)``).

        :raises DataError: if ``codes`` are not ``(m, L)`` codes over :data:`pvae.data.ALPHABET`.
        """
        codes = as_data(codes, "codes", kind="labels")
        if codes.dim() != 2 or bool(((codes < 0) | (codes >= len(ALPHABET))).any()):
            raise DataError(f"codes must be (m, L) integers in 0..{len(ALPHABET) - 1}, got shape "
                            f"{tuple(codes.shape)}. Try SequenceVAE.sample(m) or pvae.data.encode_sequences.")
        first_rule: list[str | None] = [None] * len(codes)
        first_reason: list[str | None] = [None] * len(codes)
        alive = torch.ones(len(codes), dtype=torch.bool)
        for rule in self.rules:
            rows = alive.nonzero().squeeze(-1)
            if not len(rows):
                break
            ok, reasons = rule.check(codes[rows])
            for r, passed, reason in zip(rows.tolist(), ok.tolist(), reasons):
                if not passed:
                    first_rule[r], first_reason[r] = rule.name, reason or rule.name
            alive[rows[~ok]] = False
        rejected = (~alive).nonzero().squeeze(-1)
        return FilterResult(
            codes[alive], alive.nonzero().squeeze(-1), rejected,
            tuple(first_rule[i] for i in rejected.tolist()), tuple(first_reason[i] for i in rejected.tolist()),
        )
