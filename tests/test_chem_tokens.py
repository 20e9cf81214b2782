"""pvae.chem.tokens: SMILES files, SMILES/SELFIES tokenisers and codes."""

import gzip

import pytest
import torch

from pvae.chem import END_TOKEN, MoleculeTokenizer, load_smiles
from pvae.chem import _deps
from pvae.inputs import DataError, DataTypeError


@pytest.fixture(scope="module")
def moses_smiles():
    from conftest import SHARED_DATA

    path = SHARED_DATA / "moses" / "train.csv.gz"
    if not path.is_file():
        pytest.skip(f"MOSES data not found at {path}")
    return load_smiles(path, limit=2000)


def test_load_smiles_header_limit_and_errors(tmp_path):
    path = tmp_path / "mols.csv.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("SMILES,SPLIT\nCCO,train\n\nc1ccccc1Cl,train\nCC(=O)O,test\n")
    assert load_smiles(path) == ["CCO", "c1ccccc1Cl", "CC(=O)O"]
    assert load_smiles(path, limit=2) == ["CCO", "c1ccccc1Cl"]
    plain = tmp_path / "plain.smi"
    plain.write_text("CCO\nCCN\n")
    assert load_smiles(plain) == ["CCO", "CCN"]
    (tmp_path / "empty.csv").write_text("SMILES\n")
    with pytest.raises(DataError, match="no SMILES"):
        load_smiles(tmp_path / "empty.csv")
    with pytest.raises(FileNotFoundError, match="no SMILES file"):
        load_smiles(tmp_path / "missing.csv")
    (tmp_path / "other.csv").write_text("name,value\na,1\n")
    with pytest.raises(DataError, match="no column 'SMILES'"):
        load_smiles(tmp_path / "other.csv")


def test_smiles_tokens_are_chemical():
    tok = MoleculeTokenizer.fit(["Clc1ccc[nH]1", "BrC%10CC%10", "C[C@@H](O)Cl"])
    assert tok.tokenize(["Clc1ccc[nH]1"]) == [["Cl", "c", "1", "c", "c", "c", "[nH]", "1"]]
    assert tok.tokenize(["BrC%10CC%10"]) == [["Br", "C", "%10", "C", "C", "%10"]]
    assert tok.tokens[0] == END_TOKEN and "[C@@H]" in tok.tokens
    codes = tok.encode(["Clc1ccc[nH]1"])
    assert codes.shape == (1, tok.length) and codes.dtype == torch.long
    assert (codes[0, 8:] == 0).all() and (codes[0, :8] > 0).all()  # tokens, then end tokens


def test_smiles_round_trip_on_moses(moses_smiles):
    tok = MoleculeTokenizer.fit(moses_smiles)
    assert tok.decode(tok.encode(moses_smiles)) == moses_smiles
    assert MoleculeTokenizer(**tok.to_dict()) == tok


def test_selfies_round_trip_on_moses(moses_smiles):
    from rdkit import Chem

    mols = moses_smiles[:300]
    tok = MoleculeTokenizer.fit(mols, kind="selfies")
    assert tok.tokens[0] == END_TOKEN and all(t.startswith("[") for t in tok.tokens[1:])
    decoded = tok.decode(tok.encode(mols))
    canon = [Chem.MolToSmiles(Chem.MolFromSmiles(s)) for s in mols]
    assert [Chem.MolToSmiles(Chem.MolFromSmiles(s)) for s in decoded] == canon
    # any SELFIES coding decodes to a molecule RDKit parses
    random_codes = torch.randint(1, tok.vocab_size, (50, tok.length), generator=torch.Generator().manual_seed(0))
    assert all(Chem.MolFromSmiles(s) is not None for s in tok.decode(random_codes))


def test_decode_cuts_at_the_first_end_token():
    tok = MoleculeTokenizer.fit(["CCO"])
    c, o = tok.tokens.index("C"), tok.tokens.index("O")
    assert tok.decode(torch.tensor([[c, o, 0, c], [0, c, c, c], [c, c, c, o]])) == ["CO", "", "CCCO"]


def test_tokenizer_errors():
    tok = MoleculeTokenizer.fit(["CCO", "CCN"])
    with pytest.raises(DataError, match=r"molecule 0 \('CCCl'\) has the token 'Cl'"):
        tok.encode(["CCCl"])
    with pytest.raises(DataError, match="has 5 tokens"):
        tok.encode(["CCCCO"])
    assert tok.fits(["CCC", "CCCl", "CCCCO"]) == [True, False, False]
    with pytest.raises(DataError, match="character SMILES does not use at position 2"):
        tok.tokenize(["CC!O"])
    with pytest.raises(DataError, match="empty"):
        MoleculeTokenizer.fit([])
    with pytest.raises(DataTypeError, match="one string"):
        tok.encode("CCO")
    with pytest.raises(DataError, match="too short"):
        MoleculeTokenizer.fit(["CCCCO"], length=3)
    with pytest.raises(ValueError, match="kind must be"):
        MoleculeTokenizer.fit(["CCO"], kind="inchi")
    with pytest.raises(DataError, match="must lie in 0..3"):
        tok.decode(torch.tensor([[7, 0, 0, 0]]))
    with pytest.raises(DataTypeError, match="integer tensor"):
        tok.decode(torch.zeros(1, 4))


def test_missing_selfies_says_how_to_install(monkeypatch):
    real = _deps.importlib.import_module

    def fake(name, *args):
        if name.split(".")[0] in ("selfies", "rdkit"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args)

    monkeypatch.setattr(_deps.importlib, "import_module", fake)
    with pytest.raises(ImportError, match=r"pvae-pyro\[chem\]"):
        MoleculeTokenizer.fit(["CCO"], kind="selfies")
    assert MoleculeTokenizer.fit(["CCO"]).vocab_size == 3  # SMILES needs neither library
