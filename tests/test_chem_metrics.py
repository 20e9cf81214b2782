"""pvae.chem.properties and pvae.chem.metrics: RDKit validity, oracles, the MOSES filters and measures, on sets with known answers."""

import math

import numpy as np
import pytest

from pvae.chem import (
    PENALIZED_LOGP_STATS,
    MoleculeFilter,
    canonical_smiles,
    internal_diversity,
    load_filters,
    logp,
    metrics,
    molecular_weight,
    penalized_logp,
    qed,
    sa_score,
)
from pvae.chem import _deps, properties


@pytest.fixture(scope="module")
def moses_filters():
    from conftest import SHARED_DATA

    folder = SHARED_DATA / "moses"
    if not (folder / "mcf.csv").is_file():
        pytest.skip(f"MOSES filters not found in {folder}")
    return load_filters(folder / "mcf.csv", folder / "wehi_pains.csv")


def test_canonical_smiles_counts_validity_by_rdkit():
    assert canonical_smiles("C1=CC=CC=C1") == canonical_smiles("c1ccccc1") == "c1ccccc1"
    assert canonical_smiles("OCC") == canonical_smiles("CCO")
    for invalid in ("C1CC", "c1cccc1", "CC(C", "C(C)(C)(C)(C)C", "xyz", ""):
        assert canonical_smiles(invalid) is None, invalid
    with pytest.raises(TypeError, match="SMILES string"):
        canonical_smiles(None)


def test_oracles_known_values():
    assert molecular_weight("CCO") == pytest.approx(2 * 12.011 + 6 * 1.008 + 15.999, abs=1e-3)
    assert logp("CCO") == pytest.approx(-0.0014, abs=1e-4)  # Crippen's ethanol
    assert 0 < qed("c1ccccc1O") < 1
    assert sa_score("CCO") < sa_score("CC12CC3(C)CC(C)(C1)C(C)(C2)C3O")  # a cage is harder to make
    for oracle in (qed, logp, sa_score, molecular_weight, penalized_logp):
        assert math.isnan(oracle("C1CC"))


def test_penalized_logp_terms_and_standardisation():
    ring8 = "C1CCCCCCC1"  # cyclooctane: the ring penalty is 8 - 6 = 2
    raw = penalized_logp(ring8)
    assert raw == pytest.approx(logp(ring8) - sa_score(ring8) - 2)
    assert penalized_logp("C1CCCCC1") == pytest.approx(logp("C1CCCCC1") - sa_score("C1CCCCC1"))
    terms = {"logp": logp(ring8), "sa": -sa_score(ring8), "cycle": -2.0}
    expected = sum((terms[k] - m) / s for k, (m, s) in PENALIZED_LOGP_STATS.items())
    assert penalized_logp(ring8, standardize=True) == pytest.approx(expected)


def test_moses_filters_atoms_charge_rings_and_patterns(moses_filters):
    assert len(moses_filters.patterns) > 400
    assert moses_filters.passes("CCO") and moses_filters.passes("c1ccccc1O")
    assert moses_filters.passes("C1CCCCCC1")  # seven-membered rings are allowed
    assert moses_filters.reasons("C1CCCCCCC1") == ["ring 8"]
    assert moses_filters.reasons("C[N+](C)(C)C") == ["charge"]
    assert "atom I" in moses_filters.reasons("CCI")
    assert moses_filters.reasons("C1CC") == ["invalid"]
    # an azobenzene phenol: a PAINS pattern (Baell and Holloway's azo_A) matches it
    assert any(name.startswith("azo_A") for name in moses_filters.reasons("Oc1ccc(N=Nc2ccccc2)cc1"))
    np.testing.assert_array_equal(moses_filters(["CCO", "CCI", "C1CC"]), [True, False, False])


def test_filter_files_with_and_without_header(tmp_path):
    (tmp_path / "named.csv").write_text("names,smarts\nhalide,\"[Cl,Br]\"\n")
    (tmp_path / "bare.csv").write_text('"[#7]=[#7]"   ,"<regId=azo(1)>"\n')
    both = load_filters(tmp_path / "named.csv", tmp_path / "bare.csv")
    assert both.patterns == (("halide", "[Cl,Br]"), ("azo(1)", "[#7]=[#7]"))
    assert both.reasons("CCCl") == ["halide"] and both.reasons("CN=NC") == ["azo(1)"]
    assert MoleculeFilter().passes("CCCl")  # no patterns: only the atom, charge and ring rules
    (tmp_path / "bad.csv").write_text("smarts\n[C\n")
    with pytest.raises(ValueError, match="cannot parse the SMARTS"):
        load_filters(tmp_path / "bad.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="no SMARTS"):
        load_filters(tmp_path / "empty.csv")


def test_internal_diversity_matches_rdkit_bulk_tanimoto():
    from rdkit import Chem, DataStructs
    from rdkit.Chem import rdFingerprintGenerator

    smiles = ["CCO", "CCN", "c1ccccc1", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "CCO"]
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=1024)
    fps = [generator.GetFingerprint(Chem.MolFromSmiles(s)) for s in smiles]
    t = np.array([DataStructs.BulkTanimotoSimilarity(fp, fps) for fp in fps])
    for p in (1, 2):
        expected = 1 - np.mean(np.mean(t**p, axis=1) ** (1 / p))
        assert internal_diversity(smiles, p=p, block=4) == pytest.approx(expected, abs=1e-12)
    assert internal_diversity(["CCO", "OCC"]) == pytest.approx(0.0)
    assert internal_diversity(["CCO", "c1ccccc1"]) == pytest.approx(0.5)  # disjoint bits
    with pytest.raises(ValueError, match="at least one"):
        internal_diversity([])


def test_metrics_known_answers(moses_filters):
    generated = ["CCO", "OCC", "not a molecule", "c1ccccc1", "CCN", "Oc1ccc(N=Nc2ccccc2)cc1"]
    result = metrics(generated, train=["C(C)O"], filters=moses_filters, unique_at=(2, 10))
    assert result.num_generated == 6
    assert result.validity == pytest.approx(5 / 6)
    assert result.unique == {2: 0.5, 10: pytest.approx(4 / 5)}  # CCO and OCC are one molecule
    assert result.unique_counts == {2: 2, 10: 5}
    assert result.novelty == pytest.approx(3 / 4)  # ethanol is in train, spelled otherwise
    assert result.filters == pytest.approx(4 / 5)  # the azo compound fails
    assert math.isnan(metrics(generated, train=[]).filters) and result.wasserstein == {}
    row = result.to_dict()
    assert row["unique@2"] == 0.5 and row["validity"] == pytest.approx(5 / 6)


def test_metrics_property_distances():
    test = ["CCO", "CCN", "c1ccccc1O", "CC(=O)O"]
    same = metrics(test, train=[], test=test)
    assert same.wasserstein == {k: pytest.approx(0.0, abs=1e-12) for k in ("qed", "logp", "sa", "weight")}
    heavier = metrics(["CCCCCCCCCCCC"], train=[], test=test)
    assert heavier.wasserstein["weight"] == pytest.approx(
        molecular_weight("CCCCCCCCCCCC") - np.mean([molecular_weight(s) for s in test]))
    with pytest.raises(ValueError, match="at least one generated"):
        metrics([], train=["CCO"])


def test_missing_rdkit_says_how_to_install(monkeypatch):
    real = _deps.importlib.import_module

    def fake(name, *args):
        if name.split(".")[0] == "rdkit":
            raise ImportError(f"No module named {name!r}")
        return real(name, *args)

    monkeypatch.setattr(_deps.importlib, "import_module", fake)
    properties._chem.cache_clear()
    try:
        for call in (lambda: canonical_smiles("CCO"), lambda: qed("CCO"), lambda: metrics(["CCO"], ["CCO"])):
            with pytest.raises(ImportError, match=r"pvae-pyro\[chem\]"):
                call()
    finally:
        properties._chem.cache_clear()
