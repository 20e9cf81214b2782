"""Data: offline loaders for digits, MNIST (IDX) and IHDP (CSV), and a checker."""

from .loaders import (
    IHDP_COLUMNS,
    CausalData,
    Dataset,
    check_data,
    ihdp_split,
    load_digits,
    load_ihdp,
    load_mnist,
    mnist_10k_split,
)

__all__ = [
    "IHDP_COLUMNS",
    "CausalData",
    "Dataset",
    "check_data",
    "ihdp_split",
    "load_digits",
    "load_ihdp",
    "load_mnist",
    "mnist_10k_split",
]

# synthetic data with known ground truth: the free lattice field (issue 6)
from .synthetic import (  # noqa: E402
    FourierModes,
    LatticeField,
    fourier_modes,
    lattice_field,
    lattice_precision,
    lattice_spectrum,
)

__all__ += ["FourierModes", "LatticeField", "fourier_modes", "lattice_field", "lattice_precision", "lattice_spectrum"]

# synthetic spike trains from known latent dynamics (issue 6)
from .synthetic import SpikeTrains, spike_trains  # noqa: E402

__all__ += ["SpikeTrains", "spike_trains"]
