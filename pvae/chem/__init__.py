"""Molecules: SMILES files, SMILES/SELFIES tokenisers, RDKit validity and properties, the MOSES metrics.

The cheminformatics libraries are the optional extra ``[chem]`` (RDKit,
SELFIES), imported when first needed; without them the functions that need
them raise an ImportError saying how to install them.
"""

from .metrics import (
    MOSES_ATOMS,
    PROPERTIES,
    MoleculeFilter,
    MosesMetrics,
    internal_diversity,
    load_filters,
    metrics,
    morgan_fingerprints,
    property_values,
    tanimoto,
)
from .properties import (
    PENALIZED_LOGP_STATS,
    canonical_smiles,
    logp,
    molecular_weight,
    penalized_logp,
    qed,
    sa_score,
    to_mol,
)
from .tokens import END_TOKEN, SMILES_PATTERN, MoleculeTokenizer, load_smiles

__all__ = [
    "END_TOKEN",
    "MOSES_ATOMS",
    "PENALIZED_LOGP_STATS",
    "PROPERTIES",
    "SMILES_PATTERN",
    "MoleculeFilter",
    "MoleculeTokenizer",
    "MosesMetrics",
    "canonical_smiles",
    "internal_diversity",
    "load_filters",
    "load_smiles",
    "logp",
    "metrics",
    "molecular_weight",
    "morgan_fingerprints",
    "penalized_logp",
    "property_values",
    "qed",
    "sa_score",
    "tanimoto",
    "to_mol",
]
