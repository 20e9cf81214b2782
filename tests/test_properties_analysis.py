"""Property-based tests (hypothesis) of pvae's analysis and data layers against brute force.

The example-based tests (tests/analysis, tests/data, tests/test_chem_*.py) pin a
few hand-made inputs each; here hypothesis draws the inputs and every answer is
compared with an O(N^2) (or otherwise naive) reimplementation of the docstring's
definition that shares no code with pvae, or with an invariance the definition
implies:

* **alignments** (:mod:`pvae.data.msa`): A2M files written from random focus and
  insert columns, wrapped lines and non-standard residues read back to the
  documented codes, numbering and weights; :func:`sequence_weights` and
  :func:`nearest_identity` equal pure-Python identities for any block size and
  thresholds equal to identities that occur (8/10 is not above 0.8); the ``"distant"`` split of
  :func:`msa_split` holds whole single-linkage clusters out and never leaves a
  training record within the threshold of a held-out one (either direction).
* **mutation effects**: variants differ from the wild type exactly at the named
  focus columns; under the site-independent model (no latent: the bound is exact)
  a score is the sum of the per-column log odds, whatever the order of the parts.
* **disentanglement**: MIG's mutual-information matrix equals plug-in mutual
  informations of independently binned codes; MIG is invariant to permuting and
  affinely rescaling code dimensions; a factorial grid copied into the code has
  MIG 1 exactly, independent noise stays below a G-test bound; DCI's D and C
  follow from its importance matrix by the documented entropies, lie in [0, 1]
  and (lasso on standardised codes) do not move under affine rescaling or a
  permutation of the code dimensions.
* **integration metrics**: batch mixing entropy, batch ASW, cell-type ASW and kNN
  accuracy equal a brute-force silhouette (Rousseeuw 1987, scikit-learn's
  singleton convention) and brute-force neighbourhoods, are invariant to
  permuting cells and relabelling batches / cell types; coincident cells
  (exact duplicates) are each other's neighbours, never themselves; a subsample
  (``max_cells``) is topped up as documented and never makes a measure fail.
* **conformal p-values**: equal ``(1 + #{null >= s}) / (n + 1)`` with ties and
  infinities, flag exactly when the threshold does, and are super-uniform:
  ``P(p <= a) = floor(a (n+1)) / (n+1)`` for continuous scores, at most that with
  ties, checked over thousands of exchangeable draws with binomial tolerances.
  Float64 scores against float32 null scores are ranked in full precision (a
  regression test: they were ranked after a cast to float32, found here).
* **MOSES metrics** (RDKit): validity, unique@k and novelty on sets built from
  MOSES molecules, random re-spellings, duplicates and invalid strings equal the
  answers known from the construction; internal diversity equals brute-force
  RDKit Tanimoto and is unchanged by shuffling or doubling the set; the SMILES
  tokenizer round-trips molecules and arbitrary token codes, ``fits`` says exactly
  what ``encode`` accepts; SELFIES round-trips molecules.

Hypothesis settings: the profiles of tests/conftest.py (no deadline; CI
derandomised). Examples that draw random numbers take their seed from
hypothesis, so every failure replays.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st
from scipy import stats

from pvae.analysis import (
    AnomalyDetector,
    batch_asw,
    batch_mixing_entropy,
    cell_type_asw,
    dci,
    integration_metrics,
    knn_accuracy,
    mutation_effects,
    mutual_information_gap,
    parse_mutations,
)
from pvae.analysis.integration import _subsample  # the subset integration_metrics(max_cells=) documents
from pvae.data import (
    AMINO_ACIDS,
    decode_sequences,
    encode_sequences,
    load_msa,
    msa_split,
    nearest_identity,
    sequence_weights,
)
from pvae.data.msa import MSA
from pvae.inputs import DataError
from pvae.models import ModelGuidePair, SiteIndependentModel

_QUIET = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large]
FEW = settings(max_examples=60, suppress_health_check=_QUIET)
SOME = settings(max_examples=30, suppress_health_check=_QUIET)
SLOW = settings(max_examples=10, suppress_health_check=_QUIET)
SEEDS = st.integers(0, 2**32 - 1)
# Monte Carlo checks: 5 binomial standard deviations (one-sided normal tail 3e-7 per
# check; the ~20 checks of a run keep a false alarm below 1e-5).
Z = 5.0


# ================================================================ alignments
def _identity(a: str, b: str) -> float:
    """id(a, b): residues of ``a`` matched in ``b`` over ``a``'s residues (0 for all gaps)."""
    residues = sum(ch != "-" for ch in a)
    return sum(x == y != "-" for x, y in zip(a, b)) / residues if residues else 0.0


def _brute_weights(seqs: list[str], threshold: float) -> list[float]:
    out = []
    for a in seqs:
        if all(ch == "-" for ch in a):
            out.append(0.0)
        else:
            out.append(1.0 / sum(_identity(a, b) > threshold for b in seqs))
    return out


def _brute_clusters(seqs: list[str], threshold: float) -> list[int]:
    """Single-linkage components of 'identity above the threshold in either direction'."""
    parent = list(range(len(seqs)))

    def root(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for i, a in enumerate(seqs):
        for j, b in enumerate(seqs):
            if _identity(a, b) > threshold:
                parent[root(i)] = root(j)
    return [root(i) for i in range(len(seqs))]


@st.composite
def alignments(draw, max_n=24, max_len=16):
    """Equal-length strings over a few letters and '-' (high identities), or a
    family of mutated parents; some rows may be all gaps."""
    length = draw(st.integers(1, max_len))
    letters = draw(st.sampled_from(["A-", "AC", "AC-", "ACD-", AMINO_ACIDS[:6] + "-", AMINO_ACIDS + "-"]))
    n = draw(st.integers(1, max_n))
    if draw(st.booleans()):
        seqs = draw(st.lists(st.text(letters, min_size=length, max_size=length), min_size=n, max_size=n))
    else:  # clusters: parents with a few substitutions each
        rng = np.random.default_rng(draw(SEEDS))
        alphabet = np.array(list(letters))
        parents = rng.choice(alphabet, size=(draw(st.integers(1, 4)), length))
        rate = draw(st.sampled_from([0.0, 0.05, 0.2, 0.5]))
        rows = parents[rng.integers(len(parents), size=n)]
        flip = rng.random(rows.shape) < rate
        rows[flip] = rng.choice(alphabet, size=int(flip.sum()))
        seqs = ["".join(r) for r in rows]
    return seqs


def _thresholds(seqs: list[str]):
    # "strictly above" matters where an identity equals the threshold (8/10 is not above 0.8):
    # thresholds at identities that occur in the alignment, at the fractions i / L, or anywhere
    length = len(seqs[0])
    occurring = sorted({_identity(a, b) for a in seqs for b in seqs} - {1.0})
    return st.one_of(st.sampled_from(occurring or [0.0]),
                     st.sampled_from([i / length for i in range(length)] + [0.0, 0.8]),
                     st.floats(0.0, 1.0, exclude_max=True))


@FEW
@given(data=st.data())
def test_sequence_weights_and_nearest_identity_equal_brute_force_for_any_block(data):
    seqs = data.draw(alignments())
    length = len(seqs[0])
    threshold = data.draw(_thresholds(seqs))
    codes = encode_sequences(seqs)
    block = data.draw(st.integers(1, len(seqs) + 2))
    got = sequence_weights(codes, threshold, block_rows=block)
    want = torch.tensor(_brute_weights(seqs, threshold), dtype=torch.float32)
    # exact: integer counts, 1 / count rounded once to float32 on both sides
    assert torch.equal(got, want), (threshold, block, got, want)

    refs = data.draw(alignments(max_n=10, max_len=length).filter(lambda r: len(r[0]) == length)
                     | st.just(seqs))
    ident, index = nearest_identity(codes, encode_sequences(refs), block_rows=block)
    brute = [[_identity(q, r) for r in refs] for q in seqs]
    assert ident.dtype == torch.float64
    assert ident.tolist() == [max(row) for row in brute]  # float64 ratios of the same integers: exact
    assert all(brute[i][j] == max(brute[i]) for i, j in enumerate(index.tolist()))  # a nearest one


@FEW
@given(data=st.data())
def test_distant_split_holds_whole_clusters_out(data):
    seqs = data.draw(alignments(max_n=30, max_len=12).filter(lambda s: len(s) >= 2))
    n, length = len(seqs), len(seqs[0])
    threshold = data.draw(_thresholds(seqs))
    fraction = data.draw(st.floats(0.01, 0.99))
    seed = data.draw(st.integers(0, 1000))
    block = data.draw(st.integers(1, n + 1))
    codes = encode_sequences(seqs)
    msa = MSA(codes, torch.ones(n), tuple(map(str, range(n))), "", 1, torch.arange(length), threshold)
    labels = _brute_clusters(seqs, threshold)
    sizes = {c: labels.count(c) for c in set(labels)}
    target = max(1, round(fraction * n))
    outside = n - sizes[labels[0]]
    if outside < target:
        with pytest.raises(ValueError, match="fewer than test_fraction"):
            msa_split(msa, fraction, kind="distant", seed=seed, block_rows=block)
        return
    train, test = msa_split(msa, fraction, kind="distant", seed=seed, block_rows=block)
    tr, te = train.tolist(), test.tolist()
    assert tr == sorted(tr) and te == sorted(te) and sorted(tr + te) == list(range(n))
    assert 0 in tr and len(te) >= target
    held = {labels[i] for i in te}
    assert labels[0] not in held and all((labels[i] in held) == (i in te) for i in range(n))  # whole clusters
    # clusters are drawn "until" the fraction is reached: without the largest one it is not
    assert len(te) - max(sizes[c] for c in held) < target
    for i in tr:
        for j in te:
            assert _identity(seqs[i], seqs[j]) <= threshold and _identity(seqs[j], seqs[i]) <= threshold

    train_r, test_r = msa_split(msa, fraction, kind="random", seed=seed)
    assert 0 in train_r.tolist() and len(test_r) == min(target, n - 1)
    assert sorted(train_r.tolist() + test_r.tolist()) == list(range(n))


NONSTANDARD = "BJOUXZ"


@FEW
@given(data=st.data(), seed=SEEDS)
def test_a2m_files_read_back_to_their_focus_columns_numbering_and_weights(data, seed, tmp_path_factory):
    rng = np.random.default_rng(seed)
    width = data.draw(st.integers(1, 14))
    # per alignment column: a focus column (upper case or '-') or an insert column (lower case or '.')
    focus_col = rng.random(width) < data.draw(st.floats(0.3, 1.0))
    focus_col[rng.integers(width)] = True
    focus = "".join(
        (rng.choice(list(AMINO_ACIDS)) if rng.random() < 0.85 else "-") if f
        else (rng.choice(list(AMINO_ACIDS.lower())) if rng.random() < 0.7 else ".")
        for f in focus_col)
    assume(any(ch in AMINO_ACIDS for ch in focus))  # the focus has a residue in a focus column
    n_other = data.draw(st.integers(0, 8))
    odd_rate = data.draw(st.sampled_from([0.0, 0.05]))
    others = []
    for _ in range(n_other):
        row = []
        for f in focus_col:
            if rng.random() < odd_rate:
                letter = rng.choice(list(NONSTANDARD))
            else:
                letter = rng.choice(list(AMINO_ACIDS[:4]))  # few letters: identities above 0.8 happen
            gap = rng.random() < 0.2
            row.append(("-" if gap else letter) if f else ("." if gap else letter.lower()))
        others.append("".join(row))
    start = data.draw(st.integers(1, 500))
    header = data.draw(st.sampled_from([f"focus/{start}-{start + 99}", "focus"]))
    line = data.draw(st.integers(1, width + 1))

    def wrapped(seq):
        return "\n".join(seq[i:i + line] for i in range(0, len(seq), line))

    text = f">{header}\n{wrapped(focus)}\n" + "".join(f">r{i}\n\n{wrapped(s)}\n" for i, s in enumerate(others))
    path = tmp_path_factory.mktemp("a2m") / "family.a2m"
    path.write_text(text)
    note(text)

    def focus_columns(seq):
        return "".join("-" if ch in "-." else ch.upper() for ch, f in zip(seq, focus_col) if f)

    threshold = data.draw(_thresholds([focus_columns(s) for s in [focus, *others]]))
    msa = load_msa(path, threshold=threshold)

    # nonstandard="drop": a record with X, B, ... in a focus column goes; in an insert column it stays
    kept = [i for i, s in enumerate(others) if not any(ch in NONSTANDARD for ch, f in zip(s, focus_col) if f)]
    expected = [focus_columns(s) for s in [focus] + [others[i] for i in kept]]
    assert decode_sequences(msa.codes) == expected
    assert msa.names == (header, *(f"r{i}" for i in kept))
    first = start if header != "focus" else 1
    assert msa.start == first
    assert msa.focus_sequence == "".join(ch.upper() for ch in focus if ch not in "-.")
    numbers, number = [], first
    for ch, f in zip(focus, focus_col):
        if f:
            numbers.append(number if ch != "-" else -1)
        number += ch not in "-."
    assert msa.positions.tolist() == numbers
    assert torch.equal(msa.weights, torch.tensor(_brute_weights(expected, threshold), dtype=torch.float32))


# ================================================================ mutation effects
@SOME
@given(data=st.data(), seed=SEEDS)
def test_variants_and_site_independent_scores_equal_per_column_log_odds(data, seed, tmp_path_factory):
    rng = np.random.default_rng(seed)
    # the focus record: residues in focus columns (upper case), insert residues (lower case),
    # focus-column gaps ('-', no residue number) and insert columns without a residue ('.')
    kinds = data.draw(st.lists(st.sampled_from("UUUUUli-."), min_size=2, max_size=14).filter(lambda k: "U" in k))
    focus = "".join({"U": rng.choice(list(AMINO_ACIDS)), "l": rng.choice(list(AMINO_ACIDS.lower())),
                     "i": rng.choice(list(AMINO_ACIDS.lower())), "-": "-", ".": "."}[k] for k in kinds)
    in_focus = [k in "U-" for k in kinds]
    family = ["".join(rng.choice(list(AMINO_ACIDS[:5]) + ["-"]) if f else "." for f in in_focus) for _ in range(6)]
    start = data.draw(st.integers(1, 300))
    path = tmp_path_factory.mktemp("family") / "family.a2m"
    path.write_text(f">wt/{start}-{start + 99}\n{focus}\n" + "".join(f">s{i}\n{r}\n" for i, r in enumerate(family)))
    msa = load_msa(path, weights=False)
    wild = decode_sequences(msa.wild_type[None])[0]
    # residue number -> (focus column or None, wild-type letter), counted over the focus record's letters
    residues, number, column = {}, start, 0
    for ch, f in zip(focus, in_focus):
        if ch not in "-.":
            residues[number] = (column if f else None, ch.upper())
            number += 1
        column += f
    model = SiteIndependentModel.from_alignment(msa.codes, pseudocount=data.draw(st.floats(0.1, 2.0)))
    lp = model.log_probs.double()

    variants, changes = [], []
    for _ in range(data.draw(st.integers(1, 5))):
        numbers = data.draw(st.lists(st.sampled_from(sorted(residues)), min_size=1, max_size=4, unique=True))
        letters = data.draw(st.lists(st.sampled_from(AMINO_ACIDS), min_size=len(numbers), max_size=len(numbers)))
        variants.append(":".join(f"{residues[r][1]}{r}{m}" for r, m in zip(numbers, letters)))
        changes.append({residues[r][0]: m for r, m in zip(numbers, letters)})
    codes_v, rows, reasons = parse_mutations(msa, variants)
    scored = [None not in change for change in changes]
    assert [r is None for r in reasons] == scored and [r >= 0 for r in rows] == scored
    for row, change, ok in zip(rows, changes, scored):
        if ok:
            want = list(wild)
            for c, m in change.items():
                want[c] = m
            assert decode_sequences(codes_v[row][None])[0] == "".join(want)

    # the same parts in reverse order, and every single mutation of the variants
    reversed_ = [":".join(reversed(v.split(":"))) for v in variants]
    singles = sorted({p for v in variants for p in v.split(":")})
    eff = mutation_effects(model, msa, variants + reversed_ + singles, num_particles=1)
    score = dict(zip(eff.mutations, eff.score.tolist()))
    for v, change, ok in zip(variants, changes, scored):
        if not ok:
            assert math.isnan(score[v]) and not eff.scored[eff.mutations.index(v)]
            continue
        want = sum(float(lp[c, AMINO_ACIDS.index(m)] - lp[c, AMINO_ACIDS.index(wild[c])]) for c, m in change.items())
        # float32 log-likelihoods of sums of <= 14 float32 terms (|log p| < 10): 1e-4
        assert score[v] == pytest.approx(want, abs=1e-4)
        assert score[":".join(reversed(v.split(":")))] == score[v]  # the same sequence, scored once
        assert score[v] == pytest.approx(sum(score[p] for p in v.split(":")), abs=1e-4)  # additive
        if all(wild[c] == m for c, m in change.items()):
            assert score[v] == 0.0 and eff.stderr[eff.mutations.index(v)] == 0.0


# ================================================================ disentanglement
def _bins(column: np.ndarray, num_bins: int) -> np.ndarray:
    """Equal-width bins on [min, max], the maximum in the last bin; one bin for a constant."""
    lo, hi = column.min(), column.max()
    if hi == lo:
        return np.zeros(len(column), dtype=int)
    return np.minimum(np.floor((column - lo) / (hi - lo) * num_bins).astype(int), num_bins - 1)


def _near_an_edge(column: np.ndarray, num_bins: int) -> bool:
    """Whether a value lies within rounding of an interior bin edge (then either bin is right).

    Rounding, in bin units: the values' own (eps |x|, e.g. of 1e4 + 1e-3 z) over the bin
    width, times a safety factor of 1e3; at least 1e-9."""
    lo, hi = column.min(), column.max()
    if hi == lo:
        return False
    u = (column - lo) / (hi - lo) * num_bins
    tol = max(1e-9, 1e3 * np.finfo(float).eps * np.abs(column).max() / (hi - lo) * num_bins)
    inside = (u > 0.5) & (u < num_bins - 0.5)
    return bool((np.abs(u - np.round(u))[inside] < tol).any())


def _plugin_mi(a: np.ndarray, b: np.ndarray) -> float:
    """Plug-in mutual information (nats) of two label arrays, from the contingency table."""
    n = len(a)
    joint = {}
    for x, y in zip(a.tolist(), b.tolist()):
        joint[x, y] = joint.get((x, y), 0) + 1
    pa = {x: c / n for x, c in zip(*np.unique(a, return_counts=True))}
    pb = {y: c / n for y, c in zip(*np.unique(b, return_counts=True))}
    return sum(c / n * math.log(c / n / (pa[x] * pb[y])) for (x, y), c in joint.items())


def _factor_labels(column: np.ndarray, num_bins: int) -> np.ndarray:
    whole = np.all(column == np.round(column))
    return column if whole and len(np.unique(column)) <= max(num_bins, 64) else _bins(column, num_bins)


@st.composite
def codes_and_factors(draw):
    """Codes that copy, rescale, mix or ignore factors; discrete (few or many values,
    whole or not) and continuous factors."""
    rng = np.random.default_rng(draw(SEEDS))
    n = draw(st.integers(20, 300))
    k = draw(st.integers(1, 3))
    factors = []
    for _ in range(k):
        kind = draw(st.sampled_from(["few", "many", "halves", "normal"]))
        if kind == "few":
            f = rng.integers(draw(st.integers(2, 12)), size=n) * draw(st.sampled_from([1, 3, -2]))
        elif kind == "many":  # whole numbers, more values than the discrete rule allows; a prime
            f = rng.integers(0, 998, size=n)  # range (997 > bins) keeps them off the bin edges
            f[:2] = 0, 997
        elif kind == "halves":  # few values, not whole: binned like a code
            f = rng.choice([-0.4, 0.5, 1.7, 2.25, 3.1], size=n)
        else:
            f = rng.normal(size=n)
        if len(np.unique(f)) < 2:
            f[0] = f[1] + 1
        factors.append(f.astype(float))
    v = np.stack(factors, 1)
    j = draw(st.integers(2, 5))
    codes = []
    for _ in range(j):
        source = draw(st.integers(-1, k - 1))
        noise = draw(st.sampled_from([1e-6, 0.1, 1.0]))
        base = v[:, source] * draw(st.sampled_from([1.0, -0.5, 7.0])) if source >= 0 else 0.0
        heavy = rng.standard_cauchy(n) if draw(st.booleans()) else rng.normal(size=n)
        codes.append(base + noise * heavy)
    return np.stack(codes, 1), v, draw(st.integers(2, 30))


@FEW
@given(case=codes_and_factors())
def test_mig_equals_plug_in_mutual_informations_of_binned_codes(case):
    z, v, num_bins = case
    assume(not any(_near_an_edge(c, num_bins) for c in z.T))
    assume(not any(_near_an_edge(c, num_bins) for c in v.T))
    mig, gaps, mi = mutual_information_gap(z, v, num_bins)
    want = np.zeros((z.shape[1], v.shape[1]))
    for kk, column in enumerate(v.T):
        labels = _factor_labels(column, num_bins)
        h = _plugin_mi(labels, labels)
        want[:, kk] = [_plugin_mi(_bins(c, num_bins), labels) / h for c in z.T]
    np.testing.assert_allclose(mi, want, atol=1e-10, rtol=0)
    top = np.sort(want, 0)
    np.testing.assert_allclose(gaps, top[-1] - top[-2], atol=1e-10)
    assert mig == pytest.approx(gaps.mean(), abs=1e-12)
    assert 0 <= mig <= 1 + 1e-12 and ((mi >= -1e-12) & (mi <= 1 + 1e-12)).all()


@FEW
@given(case=codes_and_factors(), data=st.data())
def test_mig_is_invariant_to_permuting_and_affinely_rescaling_code_dimensions(case, data):
    z, v, num_bins = case
    mig, gaps, mi = mutual_information_gap(z, v, num_bins)
    perm = data.draw(st.permutations(range(z.shape[1])))
    mig_p, gaps_p, mi_p = mutual_information_gap(z[:, perm], v, num_bins)
    assert mig_p == mig and np.array_equal(mi_p, mi[perm]) and np.array_equal(gaps_p, gaps)
    rows = np.random.default_rng(0).permutation(len(z))
    assert np.allclose(mutual_information_gap(z[rows], v[rows], num_bins)[2], mi, atol=1e-12, rtol=0)
    # equal-width bins move with an affine map (a negative scale reverses them)
    col = data.draw(st.integers(0, z.shape[1] - 1))
    scale = data.draw(st.sampled_from([1e-3, 0.5, 3.0, 1e3, -1.0, -20.0]))
    shift = data.draw(st.sampled_from([0.0, -5.0, 1e4]))
    moved = z.copy()
    moved[:, col] = scale * z[:, col] + shift
    assume(not _near_an_edge(z[:, col], num_bins) and not _near_an_edge(moved[:, col], num_bins))
    np.testing.assert_allclose(mutual_information_gap(moved, v, num_bins)[2], mi, atol=1e-10, rtol=0)


@FEW
@given(data=st.data(), seed=SEEDS)
def test_mig_of_a_factorial_grid_copied_into_the_code_is_one(data, seed):
    rng = np.random.default_rng(seed)
    num_bins = data.draw(st.integers(2, 25))
    sizes = data.draw(st.lists(st.integers(2, num_bins), min_size=1, max_size=3))
    reps = data.draw(st.integers(1, 3))
    # every combination of factor values `reps` times: the empirical factors are exactly
    # independent, and so is a noise dimension taking one value per repetition
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in sizes], indexing="ij"), -1).reshape(-1, len(sizes))
    v = np.repeat(grid, reps, axis=0)
    rep = np.tile(np.arange(reps), len(grid))
    # values spread evenly: distinct values of a factor fall into distinct bins of its dimension
    dims = [v[:, kk] * data.draw(st.sampled_from([1.0, -2.0, 0.1])) + 3.0 for kk in range(len(sizes))]
    dims.append(rng.normal(size=reps)[rep])
    order = data.draw(st.permutations(range(len(dims))))
    z = np.stack([dims[o] for o in order], 1)
    mig, gaps, mi = mutual_information_gap(z, v, num_bins)
    assert mig == pytest.approx(1.0, abs=1e-12) and np.allclose(gaps, 1.0, atol=1e-12)
    # each factor is found in the dimension it was copied to
    assert [order.index(kk) for kk in range(len(sizes))] == list(mi.argmax(0))


@SOME
@given(data=st.data(), seed=SEEDS)
def test_mig_of_independent_noise_is_below_the_g_test_bound(data, seed):
    rng = np.random.default_rng(seed)
    n = data.draw(st.integers(500, 4000))
    num_bins = data.draw(st.integers(2, 10))
    values = data.draw(st.lists(st.integers(2, 6), min_size=1, max_size=3))
    v = np.stack([rng.integers(m, size=n) for m in values], 1)
    assume(all(len(np.unique(c)) == m for c, m in zip(v.T, values)))
    j = data.draw(st.integers(2, 4))
    z = rng.normal(size=(n, j))
    mig, gaps, mi = mutual_information_gap(z, v, num_bins)
    # independent: 2 n I(z_j; v_k) is the G statistic, ~ chi2((B - 1)(m - 1)); a gap is at
    # most the largest normalised I. Bound at a tail of 1e-7 split over the J K pairs (the
    # chi-square approximation needs expected counts >= 5: n / (B m) >= 500 / 60).
    for kk, m in enumerate(values):
        h = stats.entropy(np.bincount(v[:, kk]))
        bound = stats.chi2.isf(1e-7 / (j * len(values)), (num_bins - 1) * (m - 1)) / (2 * n) / h
        assert gaps[kk] <= mi[:, kk].max() <= bound, (kk, mi[:, kk], bound)
    assert 0 <= mig


def _entropy_base(p: np.ndarray, base: int) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum() / math.log(base))


def _d_and_c(r: np.ndarray) -> tuple[float, float]:
    """D and C of Eastwood and Williams from an importance matrix (J, K), both J, K >= 2."""
    j, k = r.shape
    total = r.sum()
    d = sum(r[i].sum() / total * (1 - _entropy_base(r[i] / r[i].sum(), k)) for i in range(j) if r[i].sum() > 0)
    c = np.mean([1 - _entropy_base(r[:, q] / r[:, q].sum(), j) if r[:, q].sum() > 0 else 0.0 for q in range(k)])
    return d, float(c)


# two code dimensions copying one factor are collinear: coordinate descent may stop early
# (scikit-learn warns); D and C stay what the importances say, which is what is tested
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@FEW
@given(case=codes_and_factors(), data=st.data())
def test_dci_lasso_scores_follow_from_importances_and_ignore_rescaling_and_order(case, data):
    z, v, _ = case
    alpha = data.draw(st.sampled_from([1e-3, 0.01, 0.1]))
    s = dci(z, v, importance="lasso", alpha=alpha)
    r = s.importance
    assert r.shape == (z.shape[1], v.shape[1]) and (r >= 0).all()
    # [0, 1] up to rounding: 1 - H of a uniform row is -1e-24, not 0 (noticed, harmless)
    assert -1e-12 <= s.disentanglement <= 1 + 1e-12 and -1e-12 <= s.completeness <= 1 + 1e-12
    assert s.informativeness <= 1 + 1e-12
    if v.shape[1] >= 2 and r.sum() > 0:  # the entropies in base K and J (base 1 is undefined)
        d, c = _d_and_c(r)
        assert s.disentanglement == pytest.approx(d, abs=1e-12) and s.completeness == pytest.approx(c, abs=1e-12)
    # codes are standardised first: an affine map of a dimension (even a reflection) changes
    # nothing but rounding (the same coordinate descent on the same numbers, up to 1 ulp)
    col = data.draw(st.integers(0, z.shape[1] - 1))
    moved = z.copy()
    moved[:, col] = data.draw(st.sampled_from([-1.0, 0.01, 250.0])) * z[:, col] + 17.0
    s2 = dci(moved, v, importance="lasso", alpha=alpha)
    np.testing.assert_allclose(s2.importance, r, atol=1e-6 * max(1.0, r.max()))
    assert s2.disentanglement == pytest.approx(s.disentanglement, abs=1e-5)
    assert s2.completeness == pytest.approx(s.completeness, abs=1e-5)
    # Permuting the dimensions permutes the importances, where the lasso has one solution:
    # codes in general position (two copies of one factor share the weight arbitrarily).
    # Coordinate descent stops at a duality gap of 1e-4 times |y|^2, so in another feature
    # order it stops elsewhere inside that tolerance: over 600 draws importances moved by
    # <= 1.5e-4 of their largest (20 rows, 5 dimensions); a mixed-up index moves them by O(1).
    perm = data.draw(st.permutations(range(z.shape[1])))
    if np.linalg.eigvalsh(np.corrcoef(z.T)).min() > 0.1:
        s3 = dci(z[:, perm], v, importance="lasso", alpha=alpha)
        np.testing.assert_allclose(s3.importance, r[perm], atol=1e-3 * max(1.0, r.max()))
        assert s3.disentanglement == pytest.approx(s.disentanglement, abs=1e-2)
        assert s3.completeness == pytest.approx(s.completeness, abs=1e-2)


@settings(max_examples=4, suppress_health_check=_QUIET)
@given(seed=SEEDS, classes=st.integers(2, 4), j=st.integers(2, 4), mix=st.floats(0.0, 1.0))
def test_dci_gbt_scores_follow_from_importances(seed, classes, j, mix):
    # trees cost one fit per class and stage: few classes, 200 rows
    rng = np.random.default_rng(seed)
    v = np.stack([rng.integers(classes, size=200), rng.normal(size=200)], 1)
    z = rng.normal(size=(200, j))
    z[:, 0] += v[:, 0]
    z[:, 1] += mix * v[:, 0] + (1 - mix) * v[:, 1]
    s = dci(z, v, importance="gbt")
    r = s.importance
    assert (r >= 0).all() and -1e-12 <= s.disentanglement <= 1 + 1e-12 and -1e-12 <= s.completeness <= 1 + 1e-12
    if v.shape[1] >= 2 and r.sum() > 0:
        d, c = _d_and_c(r)
        assert s.disentanglement == pytest.approx(d, abs=1e-12) and s.completeness == pytest.approx(c, abs=1e-12)


# ================================================================ integration metrics
def _distances(z: np.ndarray) -> np.ndarray:
    return np.sqrt(((z[:, None, :] - z[None, :, :]) ** 2).sum(-1))


def _codes(labels) -> np.ndarray:
    """Labels as ranks among the sorted distinct labels (the documented tie order)."""
    order = sorted(set(labels))
    return np.array([order.index(x) for x in labels])


def _silhouettes(d: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """s(i) = (b - a) / max(a, b) (Rousseeuw 1987); 0 for a cell alone in its group (scikit-learn)."""
    out = np.zeros(len(labels))
    for i in range(len(labels)):
        own = labels == labels[i]
        if own.sum() == 1:
            continue
        a = d[i, own].sum() / (own.sum() - 1)
        b = min(d[i, labels == other].mean() for other in set(labels.tolist()) - {labels[i]})
        out[i] = (b - a) / max(a, b) if max(a, b) > 0 else 0.0
    return out


def _knn(d: np.ndarray, k: int) -> np.ndarray:
    """Each cell's k nearest other cells; rejects draws where the k-th and (k+1)-th tie."""
    out = []
    for i in range(len(d)):
        others = [j for j in range(len(d)) if j != i]
        order = sorted(others, key=lambda j: d[i, j])
        if k < len(order):
            assume(d[i, order[k]] - d[i, order[k - 1]] > 1e-9)
        out.append(order[:k])
    return np.array(out)


def _brute_mixing(d, batch, k):
    b = _codes(batch)
    nbr = b[_knn(d, k)]
    num = b.max() + 1
    h = []
    for row in nbr:
        p = np.bincount(row, minlength=num) / k
        h.append(-sum(x * math.log(x) for x in p if x > 0))
    return float(np.mean(h) / math.log(num))


def _brute_knn_accuracy(d, types, k):
    t = _codes(types)
    votes = t[_knn(d, k)]
    hits = [int(np.argmax(np.bincount(row, minlength=t.max() + 1))) == t[i] for i, row in enumerate(votes)]
    return float(np.mean(hits))


def _asw_defined(batch, types, u) -> bool:
    """scib skips a type whose cells come from one batch, or from as many batches as cells."""
    inside = [b for b, t in zip(batch.tolist(), types.tolist()) if t == u]
    return 2 <= len(set(inside)) < len(inside)


def _brute_batch_asw(d, batch, types):
    b, t = _codes(batch), _codes(types)
    scores = []
    for u in sorted(set(t.tolist())):
        inside = t == u
        if _asw_defined(b, t, u):
            s = _silhouettes(d[np.ix_(inside, inside)], b[inside])
            scores.append(float((1 - np.abs(s)).mean()))
    return float(np.mean(scores)) if scores else None


@st.composite
def cells(draw, max_n=40):
    """An embedding of cells around type and batch centres, with batch and type labels."""
    n = draw(st.integers(4, max_n))
    batch = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    types = draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))
    rng = np.random.default_rng(draw(SEEDS))
    dim = draw(st.integers(1, 4))
    type_sep, batch_sep = draw(st.sampled_from([0.0, 1.0, 5.0])), draw(st.sampled_from([0.0, 1.0, 5.0]))
    centres_t, centres_b = rng.normal(size=(5, dim)), rng.normal(size=(4, dim))
    z = type_sep * centres_t[types] + batch_sep * centres_b[batch] + rng.normal(size=(n, dim))
    return z, np.array(batch), np.array(types)


@FEW
@given(case=cells(), data=st.data())
def test_integration_metrics_equal_brute_force_and_ignore_order_and_names(case, data):
    z, batch, types = case
    n = len(z)
    d = _distances(z)
    k = data.draw(st.integers(1, n - 1))
    rows = np.array(data.draw(st.permutations(range(n))))
    # arbitrary new names: a bijection that does not keep the order of the labels
    names_b = dict(zip(range(4), data.draw(st.permutations(["x", "b2", "a", "zz"]))))
    names_t = dict(zip(range(5), data.draw(st.permutations(["t", "T0", "m", "bb", "q"]))))
    batch2 = np.array([names_b[x] for x in batch])[rows]
    types2 = np.array([names_t[x] for x in types])[rows]

    if len(set(batch.tolist())) >= 2:
        got = batch_mixing_entropy(z, batch, k)
        assert got == pytest.approx(_brute_mixing(d, batch, k), abs=1e-12)
        assert batch_mixing_entropy(z[rows], batch2, k) == pytest.approx(got, abs=1e-12)
        assert 0 <= got <= 1 + 1e-12
    want = _brute_batch_asw(d, batch, types)
    if want is None:
        with pytest.raises(ValueError, match="batch ASW needs"):
            batch_asw(z, batch, types)
    else:
        got = batch_asw(z, batch, types)
        assert got == pytest.approx(want, abs=1e-12)
        assert batch_asw(z[rows], batch2, types2) == pytest.approx(got, abs=1e-12)
    if 2 <= len(set(types.tolist())) < n:
        got = cell_type_asw(z, types)
        assert got == pytest.approx((_silhouettes(d, types).mean() + 1) / 2, abs=1e-12)
        assert cell_type_asw(z[rows], types2) == pytest.approx(got, abs=1e-12)
        if want is not None and len(set(batch.tolist())) >= 2:
            everything = integration_metrics(z, batch, types, k=k, k_accuracy=k, max_cells=None)
            assert everything.to_dict() == pytest.approx({
                "batch_mixing": batch_mixing_entropy(z, batch, k), "batch_asw": want,
                "cell_type_asw": got, "knn_accuracy": knn_accuracy(z, types, k)}, abs=1e-12)
    got = knn_accuracy(z, types, k)
    assert got == _brute_knn_accuracy(d, types, k)  # ties of the vote: the smallest label
    assert knn_accuracy(z[rows], types[rows], k) == got


@FEW
@given(data=st.data(), seed=SEEDS)
def test_coincident_cells_are_each_others_neighbours_never_their_own(data, seed):
    rng = np.random.default_rng(seed)
    copies = data.draw(st.integers(2, 4))
    base = rng.normal(size=(data.draw(st.integers(2, 12)), data.draw(st.integers(1, 3))))
    n = len(base) * copies
    order = rng.permutation(n)  # the copies of a point anywhere in the rows
    z = np.tile(base, (copies, 1))[order]
    point = np.tile(np.arange(len(base)), copies)[order]
    batch = np.array(data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)))
    k = copies - 1  # exactly the other copies, all at distance 0
    nbrs = [[j for j in range(n) if j != i and point[j] == point[i]] for i in range(n)]
    want_acc = np.mean([np.argmax(np.bincount(batch[nb], minlength=3)) == batch[i] for i, nb in enumerate(nbrs)])
    assert knn_accuracy(z, batch, k) == pytest.approx(want_acc, abs=1e-12)
    if len(set(batch.tolist())) >= 2:
        codes = _codes(batch)
        num = codes.max() + 1
        ent = [stats.entropy(np.bincount(codes[nb], minlength=num)) for nb in nbrs]
        assert batch_mixing_entropy(z, batch, k) == pytest.approx(np.mean(ent) / math.log(num), abs=1e-12)


@FEW
@given(data=st.data(), seed=SEEDS)
def test_subsampled_integration_metrics_never_fail_where_the_full_data_are_defined(data, seed):
    # adversarial labels (rare batches and types, a single type whose batch ASW is
    # defined): the random subset is topped up with what the measures need
    n = data.draw(st.integers(3, 30))
    batch = np.array(data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)))
    types = np.array(data.draw(st.lists(st.integers(0, 5), min_size=n, max_size=n)))
    assume(len(set(batch.tolist())) >= 2 and 2 <= len(set(types.tolist())) < n)
    assume(any(_asw_defined(batch, types, u) for u in set(types.tolist())))
    z = np.random.default_rng(seed).normal(size=(n, 2))
    max_cells = data.draw(st.integers(1, n - 1))
    result = integration_metrics(z, batch, types, k=1, k_accuracy=1, max_cells=max_cells, seed=seed)
    assert all(0 <= value <= 1 for value in result.to_dict().values()), result
    # the documented top-up: every batch and every type, a type whose batch ASW is defined,
    # more cells than types; distinct cells, at least max_cells of them
    keep = _subsample(batch, types, max_cells, seed)
    assert len(set(keep.tolist())) == len(keep) >= max_cells
    assert set(batch[keep].tolist()) == set(batch.tolist()) and set(types[keep].tolist()) == set(types.tolist())
    assert any(_asw_defined(batch[keep], types[keep], u) for u in set(types.tolist()))
    assert len(keep) > len(set(types.tolist()))


# ================================================================ conformal p-values
def _detector(null) -> AnomalyDetector:
    """A detector whose 'score' of a datum is the datum itself (the scores are what is tested)."""
    det = AnomalyDetector(ModelGuidePair(lambda x: None, lambda x: None))
    det.score = lambda x: torch.as_tensor(x, dtype=torch.float64)
    return det.calibrate(torch.as_tensor(null, dtype=torch.float64))


SCORES = st.one_of(st.integers(-3, 3).map(float), st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False))


@FEW
@given(null=st.lists(SCORES, min_size=2, max_size=40), data=st.data())
def test_p_values_and_decisions_equal_the_rank_definition(null, data):
    det = _detector(null)
    n = len(null)
    tests = data.draw(st.lists(st.one_of(SCORES, st.sampled_from(null), st.sampled_from([math.inf, -math.inf])),
                               min_size=1, max_size=20))
    p = det.p_value(tests)
    want = [(1 + sum(s_i >= s for s_i in null)) / (n + 1) for s in tests]
    assert p.tolist() == want  # exact: the same integer ratio rounded once
    order = np.argsort(tests, kind="stable")
    assert (np.diff(p.numpy()[order]) <= 0).all()  # higher score, smaller p
    for k in data.draw(st.lists(st.integers(0, n), min_size=1, max_size=3)):
        if k == 0:  # below 1 / (n + 1): n null scores cannot resolve it
            with pytest.raises(ValueError, match="cannot resolve"):
                det.threshold(0.5 / (n + 1))
            continue
        fpr = data.draw(st.sampled_from([k / (n + 1), (k + 0.5) / (n + 1)]))
        if fpr >= 1:
            continue
        flagged = det.predict(tests, fpr=fpr)
        assert flagged.tolist() == [q <= fpr for q in want], fpr
        # at most floor(fpr (n + 1)) - 1 = k - 1 null scores lie above the threshold (fewer with ties)
        assert int((torch.tensor(null) > det.threshold(fpr)).sum()) <= k - 1


@FEW
@given(null=st.lists(st.floats(-100, 100, width=32), min_size=2, max_size=20),
       data=st.data())
def test_p_values_of_float64_scores_against_float32_null_scores_follow_the_ranks(null, data):
    """Regression: p_values_of ranked the scores after casting them to the null scores' dtype,
    so with float32 null scores [0, 1] the float64 score 1 + 2e-9 (above both: p = 1/3, and
    predict(fpr=1/3) flags it) got p = 2/3. It now ranks in the promoted dtype."""
    det = AnomalyDetector(ModelGuidePair(lambda x: None, lambda x: None))
    det.score = lambda x: torch.as_tensor(x, dtype=torch.float32)
    det.calibrate(null)  # a float32 program's null scores
    n = len(null)
    # float64 scores (e.g. from NumPy) at and a hair above / below the null scores
    tests = [x + d for x in data.draw(st.lists(st.sampled_from(null), min_size=1, max_size=5))
             for d in (0.0, 1e-9 * (1 + abs(x)), -1e-9 * (1 + abs(x)))]
    p = det.p_values_of(torch.tensor(tests, dtype=torch.float64))
    want = [(1 + sum(s_i >= s for s_i in null)) / (n + 1) for s in tests]
    assert p.tolist() == pytest.approx(want, rel=1e-6)  # p in the null's float32
    k = data.draw(st.integers(1, n))  # threshold() and the p-values decide alike at fpr = k / (n + 1)
    flagged = torch.tensor(tests, dtype=torch.float64) > det.threshold(k / (n + 1))
    assert flagged.tolist() == [q <= k / (n + 1) for q in want]


@FEW
@given(null=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=2, max_size=60, unique=True))
def test_p_values_of_the_n_plus_1_ranks_are_uniform(null):
    # exchangeable and continuous: a new score falls into each of the n + 1 gaps of the sorted
    # null with probability 1 / (n + 1); its p-values must then be 1/(n+1), ..., 1, once each
    s = np.sort(null)
    n = len(s)
    gaps = np.concatenate([[s[0] - 1], (s[:-1] + s[1:]) / 2, [s[-1] + 1]])
    assume(len(np.unique(gaps)) == n + 1 and not np.isin(gaps, s).any())
    p = _detector(null).p_value(gaps)
    assert sorted(p.tolist()) == [(i + 1) / (n + 1) for i in range(n + 1)]


@SLOW
@given(n=st.integers(2, 60), ties=st.sampled_from([0, 2, 3, 10]), alpha=st.sampled_from([0.05, 0.1, 0.3]), seed=SEEDS)
def test_conformal_p_values_are_super_uniform_over_calibration_draws(n, ties, alpha, seed):
    # R exchangeable draws of (calibration set, new score), all iid; continuous scores
    # (ties = 0) or a few values (ties); P(p <= a) = floor(a (n+1)) / (n+1) for continuous
    # scores and at most that with ties. Binomial tolerance of Z standard deviations.
    rng = np.random.default_rng(seed)
    reps = 1500
    draws = rng.normal(size=(reps, n + 1)) if not ties else rng.integers(ties, size=(reps, n + 1)).astype(float)
    hits = 0
    resolvable = alpha >= 1 / (n + 1)  # else threshold() refuses alpha, and no p is <= alpha
    for row in draws:
        det = _detector(row[:n])
        flag = bool(det.p_value(row[n:])[0] <= alpha)
        if resolvable:
            assert flag == bool(det.predict(row[n:], fpr=alpha)[0])
        hits += flag
    exact = math.floor(alpha * (n + 1)) / (n + 1)
    sd = math.sqrt(max(exact * (1 - exact), 1 / reps) / reps)
    assert hits / reps <= exact + Z * sd, (hits / reps, exact)
    if not ties:
        assert hits / reps >= exact - Z * sd, (hits / reps, exact)


# ================================================================ chemistry (RDKit)
INVALID = ["C1CC", "c1cccc1", "CC(C", "C(C)(C)(C)(C)C", "xyz", "", "C==C", "N(C)(C)(C)C", "Cl(C)C", "c1ccccc"]


@pytest.fixture(scope="module")
def pool():
    """80 MOSES test molecules, each with up to 3 random re-spellings (RDKit, seeded), and canonical forms."""
    Chem = pytest.importorskip("rdkit.Chem")
    from conftest import SHARED_DATA
    from pvae.chem import load_smiles

    path = SHARED_DATA / "moses" / "test.csv.gz"
    if not path.is_file():
        pytest.skip(f"MOSES data not found at {path}")
    smiles = load_smiles(path, limit=80)
    canon = [Chem.MolToSmiles(Chem.MolFromSmiles(s)) for s in smiles]
    assert len(set(canon)) == len(canon)  # MOSES molecules are distinct
    spellings = []
    for i, s in enumerate(smiles):
        variants = list(Chem.MolToRandomSmilesVect(Chem.MolFromSmiles(s), 3, randomSeed=i + 1))
        # keep spellings RDKit reads back to the same molecule (it does for MOSES; checked, not assumed)
        variants = [x for x in variants if Chem.MolToSmiles(Chem.MolFromSmiles(x)) == canon[i]]
        spellings.append([s, *variants])
    return smiles, spellings, canon


def _brute_int_div(smiles, p):
    from rdkit import Chem, DataStructs
    from rdkit.Chem import rdFingerprintGenerator

    generator = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=1024)
    fps = [generator.GetFingerprint(Chem.MolFromSmiles(s)) for s in smiles]
    sims = np.array([DataStructs.BulkTanimotoSimilarity(fp, fps) for fp in fps])
    return 1 - float(np.mean(np.mean(sims**p, axis=1) ** (1 / p)))


@SOME
@given(data=st.data())
def test_moses_validity_uniqueness_and_novelty_equal_the_construction(pool, data):
    from pvae.chem import metrics

    smiles, spellings, canon = pool
    m = len(smiles)
    # distinct molecules, each 1-4 times (in different spellings), some in the training set,
    # and invalid strings, in any order
    distinct = data.draw(st.lists(st.integers(0, m - 1), max_size=8, unique=True))
    copies = [i for i in distinct for _ in range(data.draw(st.integers(1, 4)))]
    invalid = data.draw(st.lists(st.sampled_from(INVALID), max_size=4, min_size=0 if copies else 1))
    entries = data.draw(st.permutations(copies + invalid))
    generated, ids = [], []
    for e in entries:
        if isinstance(e, str):
            generated.append(e)
        else:
            generated.append(spellings[e][data.draw(st.integers(0, len(spellings[e]) - 1))])
            ids.append(e)
    train_ids = {i for i in distinct if data.draw(st.booleans())} | set(data.draw(st.lists(st.integers(0, m - 1),
                                                                                           max_size=5)))
    train = [spellings[i][-1] for i in train_ids] + data.draw(st.lists(st.sampled_from(INVALID), max_size=3))
    ks = data.draw(st.lists(st.integers(1, 35), min_size=1, max_size=3, unique=True))
    result = metrics(generated, train, unique_at=ks, diversity_sample=None)
    assert result.num_generated == len(generated)
    assert result.validity == len(ids) / len(generated)
    for k in ks:
        assert result.unique_counts[k] == len(ids[:k])
        if ids:
            assert result.unique[k] == len(set(ids[:k])) / len(ids[:k])
        else:
            assert math.isnan(result.unique[k])
    if ids:
        assert result.novelty == len(set(ids) - train_ids) / len(set(ids))
        valid = [smiles[i] for i in ids]
        assert result.int_div1 == pytest.approx(_brute_int_div(valid, 1), abs=1e-12)
        assert result.int_div2 == pytest.approx(_brute_int_div(valid, 2), abs=1e-12)
    else:
        assert math.isnan(result.novelty) and math.isnan(result.int_div1)
    # a training set given in canonical form, read as it is, counts the same molecules
    canonical_train = metrics(generated, [canon[i] for i in train_ids], unique_at=ks, diversity_sample=None,
                              train_canonical=True)
    assert canonical_train.novelty == result.novelty or math.isnan(result.novelty)
    # the order of the generated strings matters only to unique@k for k below the valid count
    shuffled = metrics(list(reversed(generated)), train, unique_at=[len(generated)], diversity_sample=None)
    assert shuffled.validity == result.validity
    if ids:
        assert shuffled.novelty == result.novelty and shuffled.int_div1 == pytest.approx(result.int_div1, abs=1e-12)
        assert shuffled.unique[len(generated)] == len(set(ids)) / len(ids)


@SOME
@given(data=st.data())
def test_internal_diversity_is_brute_force_tanimoto_and_ignores_order_and_doubling(pool, data):
    from pvae.chem import internal_diversity

    smiles, spellings, canon = pool
    ids = data.draw(st.lists(st.integers(0, len(smiles) - 1), min_size=1, max_size=25))
    chosen = [spellings[i][data.draw(st.integers(0, len(spellings[i]) - 1))] for i in ids]
    p = data.draw(st.sampled_from([1, 2, 3]))
    block = data.draw(st.integers(1, len(ids) + 1))
    got = internal_diversity(chosen, p=p, block=block)
    assert got == pytest.approx(_brute_int_div([smiles[i] for i in ids], p), abs=1e-12)
    assert 0 <= got <= 1
    # all pairs, self-pairs included: the set twice over, or reordered, has the same diversity
    assert internal_diversity(chosen + chosen, p=p) == pytest.approx(got, abs=1e-12)
    assert internal_diversity(chosen[::-1], p=p, block=block) == pytest.approx(got, abs=1e-12)


@SOME
@given(data=st.data(), seed=SEEDS)
def test_smiles_tokenizer_round_trips_molecules_and_any_token_codes(pool, data, seed):
    from pvae.chem import MoleculeTokenizer

    smiles, spellings, canon = pool
    fit_on = data.draw(st.lists(st.sampled_from([s for v in spellings for s in v]), min_size=1, max_size=40))
    extra = data.draw(st.integers(0, 5))
    longest = max(len(t) for t in MoleculeTokenizer.fit(fit_on).tokenize(fit_on))
    tok = MoleculeTokenizer.fit(fit_on, length=longest + 1 + extra)
    subset = data.draw(st.lists(st.sampled_from(fit_on), min_size=1, max_size=10))
    codes = tok.encode(subset)
    assert codes.shape == (len(subset), tok.length)
    assert tok.decode(codes) == subset and all(tok.fits(subset))
    # any sequence of vocabulary tokens, then end tokens, reads back to its codes: the
    # SMILES tokens are a prefix-free-enough alphabet for MOSES (no "Cl" from "C" + "l")
    rng = np.random.default_rng(seed)
    rows = torch.zeros(8, tok.length, dtype=torch.long)
    for row in rows:
        used = int(rng.integers(1, tok.length))
        row[:used] = torch.from_numpy(rng.integers(1, tok.vocab_size, size=used))
    assert torch.equal(tok.encode(tok.decode(rows)), rows)
    # codes after the first end token are ignored
    noisy = rows.clone()
    noisy[:, -1] = torch.from_numpy(rng.integers(0, tok.vocab_size, size=8))
    cut = [row.tolist().index(0) if 0 in row.tolist() else tok.length for row in noisy]
    want = ["".join(tok.tokens[c] for c in row[:end]) for row, end in zip(noisy.tolist(), cut)]
    assert tok.decode_tokens(noisy) == want
    # fits() says exactly which molecules encode() takes (known tokens, at most length - 1 of
    # them): a vocabulary missing a token, and a length near the molecules' token counts
    others = data.draw(st.lists(st.sampled_from([s for v in spellings for s in v]), min_size=1, max_size=10))
    counts = [len(t) for t in tok.tokenize(others)]
    vocabulary = MoleculeTokenizer.fit(others).tokens
    dropped = data.draw(st.sampled_from(vocabulary[1:] + ("",)))
    tight = MoleculeTokenizer("smiles", tuple(t for t in vocabulary if t != dropped),
                              max(2, data.draw(st.sampled_from(counts)) + data.draw(st.integers(-1, 1))))
    assert tight.fits(others) == [n < tight.length and dropped not in t
                                  for n, t in zip(counts, tok.tokenize(others))]
    for molecule, ok in zip(others, tight.fits(others)):
        try:
            tight.encode([molecule])
            encoded = True
        except DataError:
            encoded = False
        assert ok == encoded, molecule


@settings(max_examples=8, suppress_health_check=_QUIET)
@given(data=st.data())
def test_selfies_tokenizer_round_trips_molecules(pool, data):
    pytest.importorskip("selfies")
    from rdkit import Chem

    from pvae.chem import MoleculeTokenizer

    smiles, spellings, canon = pool
    ids = data.draw(st.lists(st.integers(0, len(smiles) - 1), min_size=1, max_size=12))
    chosen = [spellings[i][data.draw(st.integers(0, len(spellings[i]) - 1))] for i in ids]
    tok = MoleculeTokenizer.fit(chosen, kind="selfies")
    decoded = tok.decode(tok.encode(chosen))
    canon = [Chem.MolToSmiles(Chem.MolFromSmiles(smiles[i])) for i in ids]
    assert [Chem.MolToSmiles(Chem.MolFromSmiles(s)) for s in decoded] == canon
