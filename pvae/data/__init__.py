"""Data: offline loaders for digits, numeric CSV, MNIST (IDX), IHDP (CSV), protein
alignments (A2M, with sequence weights and splits) and single-cell counts
(AnnData, the ``[anndata]`` extra), a checker, and
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
from .single_cell import CountData, from_anndata, read_counts, write_latent
from .synthetic import (
    FourierModes,
    LatticeField,
    SimulatedCounts,
    SpikeTrains,
    fourier_modes,
    hidden_confounder_data,
    lattice_field,
    lattice_precision,
    lattice_spectrum,
    simulate_counts,
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
    "CountData",
    "Dataset",
    "FourierModes",
    "LatticeField",
    "SimulatedCounts",
    "SpikeTrains",
    "check_data",
    "fourier_modes",
    "from_anndata",
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
    "read_counts",
    "simulate_counts",
    "spike_trains",
    "write_latent",
]
