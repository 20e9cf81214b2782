"""Molecules: SMILES files, SMILES/SELFIES tokenisers, RDKit validity and properties, the MOSES metrics.

The cheminformatics libraries are the optional extra ``[chem]`` (RDKit,
SELFIES), imported when first needed; without them the functions that need
them raise an ImportError saying how to install them.
"""

from .tokens import END_TOKEN, SMILES_PATTERN, MoleculeTokenizer, load_smiles

__all__ = ["END_TOKEN", "SMILES_PATTERN", "MoleculeTokenizer", "load_smiles"]
