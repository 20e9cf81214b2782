"""Alignments: A2M reading, DeepSequence weights, nearest identities and splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pvae import DataError
from pvae.data import (
    ALPHABET,
    decode_sequences,
    encode_sequences,
    load_msa,
    msa_split,
    nearest_identity,
    sequence_weights,
)

P53 = Path(__file__).resolve().parents[3] / "shared" / "data" / "proteins" / "P53_HUMAN_b0.1.a2m"

# focus columns: the upper-case letters of the first record, ACDEFGHIKL (10);
# 'm' and 'w' are insertions in every record, '.' and lower case too
HAND_MADE = """\
>focus/10-21
mACDEFGHIKLw
>a1/1-12
.ACDEFGHIKL.
>a2
mACDEFGHIKYw
>b1
.WWWWWFGHIK.
>b2
.WWWWWFGHIKy
>c1
.ACDEFGHIW-.
>gaps
.----------.
"""


def _write(tmp_path: Path, text: str, name: str = "family.a2m") -> Path:
    file = tmp_path / name
    file.write_text(text)
    return file


def _brute_weights(seqs: list[str], threshold: float) -> list[float]:
    out = []
    for a in seqs:
        residues = sum(ch != "-" for ch in a)
        if residues == 0:
            out.append(0.0)
            continue
        near = sum(sum(x == y != "-" for x, y in zip(a, b)) / residues > threshold for b in seqs)
        out.append(1.0 / near)
    return out


def test_hand_made_alignment_columns_numbering_and_clusters(tmp_path):
    msa = load_msa(_write(tmp_path, HAND_MADE))
    assert decode_sequences(msa.codes) == [
        "ACDEFGHIKL", "ACDEFGHIKL", "ACDEFGHIKY", "WWWWWFGHIK", "WWWWWFGHIK", "ACDEFGHIW-", "----------",
    ]
    assert msa.names[0] == "focus/10-21" and msa.start == 10 and len(msa) == 7 and msa.length == 10
    assert msa.focus_sequence == "MACDEFGHIKLW"
    assert msa.positions.tolist() == list(range(11, 21))  # m is residue 10, A residue 11
    assert torch.equal(msa.wild_type, encode_sequences(["ACDEFGHIKL"])[0])
    # focus, a1, a2 agree in 9 or 10 of 10 (> 0.8): a cluster of 3; b1, b2 a cluster of 2;
    # c1 agrees with the focus in exactly 8 of its 9 residues (0.889 > 0.8) but the focus in
    # 8 of 10 with c1 (0.8, not above): identity is relative to the first sequence's residues
    expected = [1 / 3, 1 / 3, 1 / 3, 1 / 2, 1 / 2, 1 / 4, 0.0]
    assert msa.weights.tolist() == pytest.approx(expected)
    assert msa.weights.tolist() == pytest.approx(_brute_weights(decode_sequences(msa.codes), 0.8))
    assert msa.effective_size == pytest.approx(sum(expected))
    assert msa.onehot().shape == (7, 10, len(ALPHABET))


def test_weights_match_the_definition_in_blocks():
    gen = torch.Generator().manual_seed(0)
    parents = torch.randint(0, 21, (6, 25), generator=gen)
    children = parents[torch.randint(0, 6, (60,), generator=gen)].clone()
    flips = torch.rand(children.shape, generator=gen) < 0.15
    children[flips] = torch.randint(0, 21, (int(flips.sum()),), generator=gen)
    seqs = decode_sequences(children)
    for threshold in (0.5, 0.8):
        want = torch.tensor(_brute_weights(seqs, threshold))
        for block in (7, 2048):  # tiles across and within one block
            got = sequence_weights(children, threshold, block_rows=block)
            assert torch.allclose(got, want.float(), atol=1e-7), (threshold, block)


def test_nearest_identity_and_index():
    refs = encode_sequences(["AAAAA", "CCCCC", "AAACC"])
    queries = encode_sequences(["AAAAC", "CCCCC", "A----"])
    ident, index = nearest_identity(queries, refs, block_rows=2)
    assert index.tolist() == [0, 1, 0] and ident.tolist() == pytest.approx([0.8, 1.0, 1.0])


def test_distant_split_holds_whole_clusters_out():
    gen = torch.Generator().manual_seed(1)
    parents = torch.randint(0, 20, (12, 30), generator=gen)
    family = parents.repeat_interleave(8, 0)
    flips = torch.rand(family.shape, generator=gen) < 0.05
    family[flips] = torch.randint(0, 20, (int(flips.sum()),), generator=gen)
    from pvae.data.msa import MSA

    msa = MSA(family, sequence_weights(family), tuple(map(str, range(96))), "", 1,
              torch.arange(30), 0.8)
    train, test = msa_split(msa, 0.2, kind="distant", seed=3)
    assert 0 in train.tolist() and len(train) + len(test) == 96
    assert len(test) >= 0.2 * 96 and len(test) % 8 == 0  # whole clusters of 8
    ident_test, _ = nearest_identity(family[test], family[train])
    ident_train, _ = nearest_identity(family[train], family[test])
    assert ident_test.max() <= 0.8 and ident_train.max() <= 0.8
    train_r, test_r = msa_split(msa, 0.2, kind="random", seed=3)
    assert len(test_r) == round(0.2 * 96) and 0 in train_r.tolist()
    assert nearest_identity(family[test_r], family[train_r])[0].max() > 0.8  # relatives in training
    with pytest.raises(ValueError, match="fewer than test_fraction"):
        msa_split(msa.subset(torch.arange(16)), 0.6, kind="distant")


def test_subset_keeps_or_recomputes_weights(tmp_path):
    msa = load_msa(_write(tmp_path, HAND_MADE))
    sub = msa.subset([0, 3, 5])
    assert sub.weights.tolist() == pytest.approx([1 / 3, 1 / 2, 1 / 4])
    assert msa.subset([0, 3, 5], reweight=True).weights.tolist() == pytest.approx([1.0, 1.0, 0.5])
    assert sub.names == ("focus/10-21", "b1", "c1")


@pytest.mark.parametrize(
    "text, match",
    [
        (HAND_MADE.replace(".WWWWWFGHIKy", ".WWWWWFGHIK"), r"record 5 \('b2'\) has 11 alignment columns, the first record 12"),
        (HAND_MADE.replace("ACDEFGHIKYw", "ACDEFGH1KYw"), r"record 3 \('a2'\) has '1' in alignment column 9, not a letter, '-' or '.'"),
        ("ACDEF\n" + HAND_MADE, r"line 1: sequence text before the first '>' header"),
        (">focus\n\n>a\nACD\n", r"the first record \('focus'\) has no sequence"),
        (">focus\nacd\n>a\nacd\n", r"no focus column"),
        (">focus\n-a-\n>a\nAcD\n", r"the first record \('focus'\) has only gaps in its focus columns"),
        (">focus\nAC*D\n>a\nACcD\n", r"record 1 \('focus'\) has '\*' in alignment column 3"),  # not silently an insert
        (">focus\nACdD\n>a\nAC\x00D\n", r"record 2 \('a'\) has '\\x00' in alignment column 3"),  # nor in one
        ("", r"no '>' records"),
        (HAND_MADE.replace("mACDEFGHIKLw", "mACDEFGXIKLw"), r"record 1 \('focus/10-21'\) has the non-standard residue 'X'"),
    ],
)
def test_bad_alignments_raise_clear_errors(tmp_path, text, match):
    file = _write(tmp_path, text)
    with pytest.raises(DataError, match=match) as err:
        load_msa(file)
    assert str(file) in str(err.value)


def test_nonstandard_residues_drop_gap_or_error(tmp_path):
    file = _write(tmp_path, HAND_MADE.replace(".WWWWWFGHIK.", ".WWXWWFGHIK."))
    assert len(load_msa(file)) == 6 and "b1" not in load_msa(file).names
    assert decode_sequences(load_msa(file, nonstandard="gap").codes)[3] == "WW-WWFGHIK"
    with pytest.raises(DataError, match=r"'b1'.*non-standard residue 'X'.*Try nonstandard='drop'"):
        load_msa(file, nonstandard="error")
    with pytest.raises(FileNotFoundError, match="Try"):
        load_msa(tmp_path / "missing.a2m")


def test_encode_sequences_errors():
    with pytest.raises(DataError, match="one length"):
        encode_sequences(["ACD", "AC"])
    with pytest.raises(DataError, match=r"sequence 1 has 'B' at position 2"):
        encode_sequences(["ACD", "ABD"])


@pytest.mark.skipif(not P53.is_file(), reason="shared/data/proteins not present")
def test_p53_alignment():
    msa = load_msa(P53, weights=False)
    # 3,668 records, 38 with X in a focus column dropped (as EVE); 329 focus columns
    assert len(msa) == 3630 and msa.length == 329 and msa.start == 1
    assert len(msa.focus_sequence) == 393 and msa.focus_sequence.startswith("MEEPQSDPSV")
    letters = np.array(list(msa.focus_sequence))
    assert "".join(letters[msa.positions.numpy() - 1]) == decode_sequences(msa.wild_type[None])[0]
    assert msa.positions[0] == 45 and msa.positions[-1] == 374


def test_alignment_with_byte_order_mark_reads_as_without(tmp_path):
    """A BOM before the first '>' used to read as sequence text before the first header."""
    plain = load_msa(_write(tmp_path, HAND_MADE))
    file = tmp_path / "bom.a2m"
    file.write_bytes("\ufeff".encode("utf-8") + HAND_MADE.encode("utf-8"))
    bom = load_msa(file)
    assert torch.equal(bom.codes, plain.codes) and bom.names == plain.names
    assert bom.focus_sequence == plain.focus_sequence and torch.equal(bom.positions, plain.positions)
    assert torch.equal(bom.weights, plain.weights) and bom.start == plain.start
