"""The MOSES measures of a molecular generator (Polykovskiy et al. 2020) that need no trained network.

Validity, uniqueness at k, novelty, the fraction passing the medicinal-chemistry
and PAINS filters, internal diversity on Morgan fingerprints, and the
Wasserstein distance of four property distributions to a reference set.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from ._deps import require
from .properties import _chem, _largest_ring, canonical_smiles, logp, molecular_weight, qed, sa_score, to_mol

MOSES_ATOMS = frozenset({"C", "N", "S", "O", "F", "Cl", "Br", "H"})
PROPERTIES = {"qed": qed, "logp": logp, "sa": sa_score, "weight": molecular_weight}


def _read_patterns(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(name, SMARTS) pairs of a filter file: MOSES's ``mcf.csv`` (a ``names,smarts``
    header) or ``wehi_pains.csv`` (no header; ``smarts,<regId=name>`` rows)."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        rows = [[field.strip() for field in row] for row in csv.reader(handle) if row]
    if not rows:
        raise ValueError(f"{path}: no SMARTS patterns.")
    header = [field.lower() for field in rows[0]]
    if "smarts" in header:
        column = header.index("smarts")
        name_column = 1 - column if len(header) == 2 else None
        rows = rows[1:]
    else:
        column, name_column = 0, 1
    named = [(row[name_column] if name_column is not None and len(row) > 1 else row[column], row[column])
             for row in rows]
    return [(name.removeprefix("<regId=").removesuffix(">"), smarts) for name, smarts in named]


@dataclasses.dataclass(frozen=True)
class MoleculeFilter:
    """The MOSES filters: a molecule passes when it parses, has only
    ``allowed_atoms``, no charged atom, no ring larger than ``max_ring_size``,
    and no SMARTS pattern (medicinal-chemistry filters, PAINS) matches it with
    explicit hydrogens added.

    :param patterns: ``(name, SMARTS)`` pairs; see :func:`load_filters`.
    :param allowed_atoms: element symbols allowed. Default MOSES's
        C, N, S, O, F, Cl, Br, H.
    :param int max_ring_size: largest ring allowed. Default 7 (MOSES rejects
        rings of eight atoms or more).
    """

    patterns: tuple[tuple[str, str], ...] = ()
    allowed_atoms: frozenset[str] = MOSES_ATOMS
    max_ring_size: int = 7

    def __post_init__(self) -> None:
        chem = _chem()
        compiled = []
        for name, smarts in self.patterns:
            query = chem.MolFromSmarts(smarts)
            if query is None:
                raise ValueError(f"filter {name!r}: RDKit cannot parse the SMARTS {smarts!r}.")
            compiled.append((name, query))
        object.__setattr__(self, "_queries", tuple(compiled))

    def reasons(self, smiles: str) -> list[str]:
        """Why ``smiles`` fails the filters (empty when it passes): ``"invalid"``,
        ``"atom X"``, ``"charge"``, ``"ring N"`` or the name of a matching pattern."""
        mol = to_mol(smiles)
        if mol is None:
            return ["invalid"]
        reasons = sorted({f"atom {atom.GetSymbol()}" for atom in mol.GetAtoms()
                          if atom.GetSymbol() not in self.allowed_atoms})
        if any(atom.GetFormalCharge() != 0 for atom in mol.GetAtoms()):
            reasons.append("charge")
        ring = _largest_ring(mol)
        if ring > self.max_ring_size:
            reasons.append(f"ring {ring}")
        with_hydrogens = _chem().AddHs(mol)
        reasons.extend(name for name, query in self._queries if with_hydrogens.HasSubstructMatch(query))
        return reasons

    def passes(self, smiles: str) -> bool:
        """Whether ``smiles`` is a valid molecule that passes every filter."""
        return not self.reasons(smiles)

    def __call__(self, smiles: Iterable[str]) -> np.ndarray:
        """A boolean array: which of ``smiles`` pass."""
        return np.array([self.passes(s) for s in smiles], dtype=bool)


def load_filters(*paths: str | os.PathLike, allowed_atoms: Iterable[str] = MOSES_ATOMS,
                 max_ring_size: int = 7) -> MoleculeFilter:
    """The MOSES filters from SMARTS files, e.g.
    ``load_filters("moses/mcf.csv", "moses/wehi_pains.csv")``.

    :param paths: CSV files of SMARTS patterns, with a ``smarts`` header column
        or headerless ``smarts,name`` rows.
    :raises ValueError: for a file without patterns or a SMARTS RDKit cannot parse.
    """
    patterns = tuple(pair for path in paths for pair in _read_patterns(path))
    return MoleculeFilter(patterns, frozenset(allowed_atoms), max_ring_size)


def morgan_fingerprints(smiles: Sequence[str], radius: int = 2, bits: int = 1024) -> torch.Tensor:
    """Morgan (ECFP-like) bit fingerprints of valid SMILES as a ``(n, bits)`` float tensor
    (RDKit's ``rdFingerprintGenerator``; MOSES's radius 2 and 1024 bits).

    :raises ValueError: if a string is not a valid molecule.
    """
    generator = require("rdkit.Chem.rdFingerprintGenerator").GetMorganGenerator(radius=radius, fpSize=bits)
    rows = np.zeros((len(smiles), bits), dtype=np.float32)
    for i, s in enumerate(smiles):
        mol = to_mol(s)
        if mol is None:
            raise ValueError(f"invalid SMILES {s!r}: fingerprints need valid molecules.")
        rows[i] = generator.GetFingerprintAsNumPy(mol)
    return torch.from_numpy(rows)


def tanimoto(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Tanimoto similarity :math:`|a \\cap b| / |a \\cup b|` of every row of ``a``
    with every row of ``b`` (0/1 fingerprints), as an ``(n_a, n_b)`` matrix;
    two empty fingerprints have similarity 1."""
    intersection = a @ b.T
    union = a.sum(-1, keepdim=True) + b.sum(-1) - intersection
    return torch.where(union > 0, intersection / union.clamp_min(1), torch.ones_like(union))


def internal_diversity(smiles: Sequence[str], p: int = 1, block: int = 2048) -> float:
    """MOSES's internal diversity of a set of molecules,

    .. math::

        \\mathrm{IntDiv}_p(G) = 1 - \\frac{1}{|G|} \\sum_{m_1 \\in G}
            \\Big(\\frac{1}{|G|} \\sum_{m_2 \\in G} T(m_1, m_2)^p\\Big)^{1/p},

    with :math:`T` the Tanimoto similarity of Morgan fingerprints (all pairs,
    self-pairs included, as MOSES computes it); computed in blocks of rows.
    """
    if len(smiles) == 0:
        raise ValueError("internal_diversity needs at least one molecule.")
    fingerprints = morgan_fingerprints(smiles).double()
    rows = [tanimoto(chunk, fingerprints).pow(p).mean(-1).pow(1.0 / p)
            for chunk in fingerprints.split(block)]
    return float(1.0 - torch.cat(rows).mean())


def property_values(smiles: Sequence[str], names: Iterable[str] = tuple(PROPERTIES)) -> dict[str, np.ndarray]:
    """The properties ``names`` (keys of :data:`PROPERTIES`) of each of ``smiles`` (nan if invalid)."""
    return {name: np.array([PROPERTIES[name](s) for s in smiles], dtype=float) for name in names}


@dataclasses.dataclass(frozen=True)
class MosesMetrics:
    """The MOSES measures of a generated set (fractions in [0, 1]).

    :ivar int num_generated: strings generated.
    :ivar float validity: fraction RDKit parses into a molecule with atoms.
    :ivar dict unique: ``{k: fraction}``, distinct canonical molecules among
        the first k valid ones (MOSES's unique@k; computed on fewer when fewer
        are valid, see ``unique_counts``).
    :ivar dict unique_counts: ``{k: valid molecules the fraction was computed on}``.
    :ivar float novelty: fraction of the distinct valid molecules not in the training set.
    :ivar float filters: fraction of the valid molecules passing the filters (nan without filters).
    :ivar float int_div1: internal diversity, p = 1.
    :ivar float int_div2: internal diversity, p = 2.
    :ivar dict wasserstein: ``{property: W1 distance}`` between the valid
        generated molecules' and the test set's distributions of QED, logP, SA
        and weight (empty without a test set).
    """

    num_generated: int
    validity: float
    unique: dict[int, float]
    unique_counts: dict[int, int]
    novelty: float
    filters: float
    int_div1: float
    int_div2: float
    wasserstein: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """A flat dict (``unique@1000``, ``wasserstein_qed``, ...) for tables and JSON."""
        row: dict[str, Any] = {"num_generated": self.num_generated, "validity": self.validity}
        row.update({f"unique@{k}": v for k, v in self.unique.items()})
        row.update({"novelty": self.novelty, "filters": self.filters,
                    "int_div1": self.int_div1, "int_div2": self.int_div2})
        row.update({f"wasserstein_{k}": v for k, v in self.wasserstein.items()})
        return row


def metrics(generated: Sequence[str], train: Iterable[str], test: Sequence[str] | None = None,
            filters: MoleculeFilter | None = None, unique_at: Sequence[int] = (1000, 10000),
            diversity_sample: int | None = 10000, seed: int = 0, train_canonical: bool = False) -> MosesMetrics:
    """The MOSES measures of ``generated`` against ``train`` (and ``test``).

    :param generated: generated SMILES strings (invalid ones included: they
        count against validity and are dropped from the rest).
    :param train: the training SMILES; canonicalised here, so any valid
        spelling is recognised, unless ``train_canonical``.
    :param test: reference SMILES for the property distributions (e.g. MOSES
        test); None skips them.
    :param filters: a :class:`MoleculeFilter` (e.g. :func:`load_filters` of MOSES's
        ``mcf.csv`` and ``wehi_pains.csv``); None reports nan.
    :param unique_at: the k of unique@k. Default (1000, 10000).
    :param diversity_sample: internal diversity on a random subset of this many
        valid molecules (the all-pairs cost grows quadratically). None: all.
    :param int seed: seed of that subset.
    :param bool train_canonical: ``train`` is already RDKit-canonical (MOSES's
        files are): use it as it is, which saves canonicalising 1.6M strings.
    :raises ValueError: for an empty generated set.
    """
    generated = list(generated)
    if not generated:
        raise ValueError("metrics needs at least one generated string.")
    canonical = [canonical_smiles(s) for s in generated]
    valid = [c for c in canonical if c is not None]
    nan = float("nan")
    distinct = set(valid)
    train_set = set(train) if train_canonical else {c for c in map(canonical_smiles, train) if c is not None}
    unique = {k: len(set(valid[:k])) / len(valid[:k]) if valid else nan for k in unique_at}
    diverse = valid
    if diversity_sample is not None and len(valid) > diversity_sample:
        chosen = np.random.default_rng(seed).choice(len(valid), diversity_sample, replace=False)
        diverse = [valid[i] for i in chosen]
    wasserstein = {}
    if test is not None and valid:
        stats = require("scipy.stats")
        ours = property_values(valid)
        theirs = property_values(list(test))
        wasserstein = {name: float(stats.wasserstein_distance(ours[name], theirs[name][~np.isnan(theirs[name])]))
                       for name in PROPERTIES}
    return MosesMetrics(
        num_generated=len(generated),
        validity=len(valid) / len(generated),
        unique=unique,
        unique_counts={k: len(valid[:k]) for k in unique_at},
        novelty=len(distinct - train_set) / len(distinct) if distinct else nan,
        filters=float(filters(valid).mean()) if filters is not None and valid else nan,
        int_div1=internal_diversity(diverse, p=1) if diverse else nan,
        int_div2=internal_diversity(diverse, p=2) if diverse else nan,
        wasserstein=wasserstein,
    )
