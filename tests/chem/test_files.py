"""Molecule files: SMILES headers in any case, byte-order marks, filter files."""

from __future__ import annotations

import gzip
import warnings

import pytest

from pvae.chem import load_filters, load_smiles, metrics
from pvae.inputs import DataError

BOM = "\ufeff".encode("utf-8")


@pytest.mark.parametrize("header", ["SMILES", "smiles", "Smiles", " smiles "])
@pytest.mark.parametrize("bom", [False, True], ids=["plain", "bom"])
@pytest.mark.parametrize("gz", [False, True], ids=["csv", "gz"])
def test_one_column_header_in_any_case_or_after_a_bom_is_not_a_molecule(tmp_path, header, bom, gz):
    text = (BOM if bom else b"") + f"{header}\nCCO\nc1ccccc1\n".encode("utf-8")
    file = tmp_path / ("mols.csv.gz" if gz else "mols.csv")
    if gz:
        with gzip.open(file, "wb") as handle:
            handle.write(text)
    else:
        file.write_bytes(text)
    assert load_smiles(file) == ["CCO", "c1ccccc1"]


def test_header_metrics_no_longer_count_the_header_as_an_invalid_molecule(tmp_path):
    pytest.importorskip("rdkit")
    file = tmp_path / "lower.csv"
    file.write_text("smiles\nCCO\nc1ccccc1\n")
    assert metrics(load_smiles(file), train=[]).validity == 1.0


def test_multi_column_header_any_case_and_bom(tmp_path):
    file = tmp_path / "moses.csv"
    file.write_bytes(BOM + b"Split,smiles\ntrain,CCO\ntest,CCN\n")
    assert load_smiles(file) == ["CCO", "CCN"]
    assert load_smiles(file, column="SPLIT") == ["train", "test"]
    with pytest.raises(DataError, match="no column 'mol'"):
        load_smiles(file, column="mol")


def test_real_molecules_on_the_first_line_are_kept(tmp_path):
    """Headerless files keep their first molecule (with or without a BOM), even one that
    looks like a word; a first line that is no SMILES string is kept with a warning."""
    file = tmp_path / "plain.smi"
    file.write_bytes(BOM + b"CCO\nCCN\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_smiles(file) == ["CCO", "CCN"]
        file.write_text("SCCOSN\nCCN\n")  # a word made of SMILES atoms is a molecule
        assert load_smiles(file) == ["SCCOSN", "CCN"]
    file.write_text("smi\nCCO\n")
    with pytest.warns(UserWarning, match="'smi' is not a SMILES string.*column='smi'"):
        assert load_smiles(file) == ["smi", "CCO"]
    assert load_smiles(file, column="SMI") == ["CCO"]


def test_filter_file_with_a_bom_keeps_its_header_out_of_the_patterns(tmp_path):
    pytest.importorskip("rdkit")
    file = tmp_path / "mcf.csv"
    file.write_bytes(BOM + b"smarts,names\n[CX3](=O)[OX2H1],acid\n")  # the BOM sits on "smarts"
    assert load_filters(file).patterns == (("acid", "[CX3](=O)[OX2H1]"),)
