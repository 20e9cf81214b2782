"""RDKit parsing and the property oracles of molecular design: QED, logP, SA score, weight, penalized logP.

Every oracle takes a SMILES string and returns a float, ``nan`` for a string
RDKit cannot parse, so a list of generated strings maps to an array of scores
without special cases. RDKit's own parse warnings are silenced.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

from ._deps import require

# Standardisation of penalized logP by the ZINC250k statistics of Jin et al. (2018,
# JT-VAE, ``bo/run_bo.py``): mean and standard deviation of logP, of -SA and of the
# ring penalty -max(0, largest ring - 6).
PENALIZED_LOGP_STATS = {
    "logp": (2.4570953396190123, 1.434324401111988),
    "sa": (-3.0525811293166134, 0.8335207024513095),
    "cycle": (-0.0485696876403053, 0.2860212110245455),
}


@functools.cache
def _chem() -> Any:
    chem = require("rdkit.Chem")
    require("rdkit.RDLogger").DisableLog("rdApp.*")
    return chem


def to_mol(smiles: str) -> Any | None:
    """The RDKit molecule of a SMILES string, or None when RDKit cannot parse it
    or it has no atoms (the empty string is not a molecule)."""
    if not isinstance(smiles, str):
        raise TypeError(f"expected a SMILES string, got {type(smiles).__name__}.")
    mol = _chem().MolFromSmiles(smiles)
    if mol is None or mol.GetNumAtoms() == 0:
        return None
    return mol


def canonical_smiles(smiles: str) -> str | None:
    """RDKit's canonical SMILES of ``smiles``, or None for an invalid string.

    Two strings name the same molecule exactly when their canonical forms are equal,
    which is how uniqueness and novelty are counted.
    """
    mol = to_mol(smiles)
    return None if mol is None else _chem().MolToSmiles(mol)


def _oracle(function: Callable[[Any], float]) -> Callable[[str], float]:
    @functools.wraps(function)
    def score(smiles: str) -> float:
        mol = to_mol(smiles)
        return math.nan if mol is None else float(function(mol))

    return score


@_oracle
def qed(mol: Any) -> float:
    """Quantitative estimate of drug-likeness (Bickerton et al. 2012), in [0, 1];
    RDKit's ``QED.qed``. Takes a SMILES string; nan if invalid."""
    return require("rdkit.Chem.QED").qed(mol)


@_oracle
def logp(mol: Any) -> float:
    """Octanol-water partition coefficient, Crippen's estimate (Wildman and Crippen
    1999); RDKit's ``Crippen.MolLogP``. Takes a SMILES string; nan if invalid."""
    return require("rdkit.Chem.Crippen").MolLogP(mol)


@_oracle
def sa_score(mol: Any) -> float:
    """Synthetic accessibility score (Ertl and Schuffenhauer 2009), 1 (easy) to 10
    (hard); RDKit's ``Contrib/SA_Score``. Takes a SMILES string; nan if invalid."""
    return require("rdkit.Contrib.SA_Score.sascorer").calculateScore(mol)


@_oracle
def molecular_weight(mol: Any) -> float:
    """Average molecular weight in daltons; RDKit's ``Descriptors.MolWt``. Takes a
    SMILES string; nan if invalid."""
    return require("rdkit.Chem.Descriptors").MolWt(mol)


def _largest_ring(mol: Any) -> int:
    return max((len(ring) for ring in mol.GetRingInfo().AtomRings()), default=0)


def penalized_logp(smiles: str, standardize: bool = False) -> float:
    """Penalized logP, the design target of Gomez-Bombarelli et al. (2018) and
    Jin et al. (2018, JT-VAE):

    .. math::

        \\mathrm{PlogP}(m) = \\log P(m) - \\mathrm{SA}(m) - \\max(0, \\text{largest ring}(m) - 6).

    With ``standardize=True`` each of the three terms is first standardised by
    the ZINC250k mean and deviation JT-VAE uses
    (:data:`PENALIZED_LOGP_STATS`), the form of JT-VAE's table (CVAE 1.98 ...
    JT-VAE 5.30, top-1). Papers differ here: compare like with like.

    :returns: the score, nan for an invalid string.
    """
    mol = to_mol(smiles)
    if mol is None:
        return math.nan
    terms = {
        "logp": require("rdkit.Chem.Crippen").MolLogP(mol),
        "sa": -require("rdkit.Contrib.SA_Score.sascorer").calculateScore(mol),
        "cycle": -max(0, _largest_ring(mol) - 6),
    }
    if standardize:
        return float(sum((value - PENALIZED_LOGP_STATS[name][0]) / PENALIZED_LOGP_STATS[name][1]
                         for name, value in terms.items()))
    return float(sum(terms.values()))
