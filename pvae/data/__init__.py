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
