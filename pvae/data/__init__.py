"""Data: offline loaders for digits, numeric CSV, MNIST (IDX), IHDP (CSV) and protein
alignments (A2M, with sequence weights and splits), a checker, and
synthetic generators with known ground truth. Nothing is bundled or downloaded:
loaders take a path."""

from .loaders import (
    IHDP_COLUMNS,
    CausalData,
    Dataset,
    check_data,
    ihdp_split,
    load_csv,
    load_digits,
    load_ihdp,
    load_mnist,
    mnist_10k_split,
)
from .msa import (
    ALPHABET,
    AMINO_ACIDS,
    MSA,
    decode_sequences,
    encode_sequences,
    load_msa,
    msa_split,
    nearest_identity,
    sequence_weights,
)
from .synthetic import (
    FourierModes,
    LatticeField,
    SpikeTrains,
    fourier_modes,
    hidden_confounder_data,
    lattice_field,
    lattice_precision,
    lattice_spectrum,
    spike_trains,
)

__all__ = [
    "ALPHABET",
    "AMINO_ACIDS",
    "MSA",
    "decode_sequences",
    "encode_sequences",
    "load_msa",
    "msa_split",
    "nearest_identity",
    "sequence_weights",
    "IHDP_COLUMNS",
    "CausalData",
    "Dataset",
    "FourierModes",
    "LatticeField",
    "SpikeTrains",
    "check_data",
    "fourier_modes",
    "hidden_confounder_data",
    "ihdp_split",
    "lattice_field",
    "lattice_precision",
    "lattice_spectrum",
    "load_csv",
    "load_digits",
    "load_ihdp",
    "load_mnist",
    "mnist_10k_split",
    "spike_trains",
]
