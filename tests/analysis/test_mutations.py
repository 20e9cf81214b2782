"""Mutation effects, the site-independent model and the sequence filter, against closed forms."""

from __future__ import annotations

import math

import pyro
import pytest
import torch

import pvae
from pvae import DataError
from pvae.analysis import (
    CompositionRule,
    IdentityRule,
    MotifRule,
    SequenceFilter,
    mutation_effects,
    parse_mutations,
)
from pvae.data import AMINO_ACIDS, encode_sequences, load_msa
from pvae.models import SiteIndependentModel

# focus residues 5..14 ("mk" inserts at 5, 6; focus columns ACDEFGHI at residues 7..14);
# column 1 (residue 7) is A in 4 of 5 records, W in one
FAMILY = """\
>wt/5-14
mkACDEFGHI
>s1
..ACDEFGHV
>s2
..ACDEFGLI
>s3
..ACDEYGHI
>s4
..WCDEFGHI
"""


@pytest.fixture
def msa(tmp_path):
    file = tmp_path / "family.a2m"
    file.write_text(FAMILY)
    return load_msa(file, weights=False)


def test_site_independent_frequencies_and_exact_evidence(msa):
    model = SiteIndependentModel.from_alignment(msa.codes, pseudocount=0.5)
    p = model.log_probs.exp()
    assert p[0, AMINO_ACIDS.index("A")] == pytest.approx((4 + 0.5) / (5 + 21 * 0.5))
    assert p[0, AMINO_ACIDS.index("W")] == pytest.approx((1 + 0.5) / (5 + 21 * 0.5))
    assert torch.allclose(p.sum(1), torch.ones(8))
    # no latent variable: every bound is the exact log-likelihood, with zero Monte Carlo error
    exact = model.log_probs.gather(1, msa.codes.T).sum(0)
    est = pvae.infer.log_evidence(model, msa.codes, num_particles=3)
    assert torch.allclose(est.log_evidence.value, exact) and torch.allclose(est.elbo.value, exact)
    assert float(est.log_evidence.stderr.abs().max()) == 0.0


def test_scores_are_log_odds_under_the_site_independent_model(msa):
    model = SiteIndependentModel.from_alignment(msa.codes, pseudocount=0.5)
    lp = model.log_probs
    a, w, i, v = (AMINO_ACIDS.index(c) for c in "AWIV")
    eff = mutation_effects(model, msa, ["A7W", "A7A", "I14V:A7W", "K6R", "M5A:A7W"], num_particles=2)
    want = [lp[0, w] - lp[0, a], 0.0, lp[7, v] - lp[7, i] + lp[0, w] - lp[0, a]]
    assert eff.score[:3].tolist() == pytest.approx([float(t) for t in want], abs=1e-5)
    assert eff.score[0] < 0  # away from the family's preferred residue
    assert eff.score[1] == 0.0 and eff.stderr[1] == 0.0  # the wild type itself, exactly
    assert eff.scored.tolist() == [True, True, True, False, False]
    assert "residue 6 not in a focus column" in eff.reasons[3] and "residue 5 " in eff.reasons[4]
    assert math.isnan(eff.score[3]) and list(eff.to_pandas().columns) == ["mutation", "score", "stderr", "reason"]
    # both calling conventions
    again = mutation_effects(model.model, model.guide, msa, ["A7W"], num_particles=2)
    assert again.score[0] == eff.score[0]


def test_a_vae_scores_the_wild_type_zero_and_prefers_the_family(msa):
    pyro.set_rng_seed(0)
    # any program over the codes: here pvae.VAE with a categorical likelihood per position
    program = pvae.VAE(msa.length, latent_dim=2, hidden_dims=(16,), likelihood="categorical",
                       likelihood_kwargs={"cardinalities": [21] * msa.length})
    family = msa.codes.repeat(40, 1)
    pvae.fit(program, family, num_epochs=60, batch_size=50, learning_rate=1e-2, progress=False)
    eff = mutation_effects(program, msa, ["A7A", "A7W", "C8W", "E10K:F11K"], num_particles=200)
    assert eff.score[0] == 0.0 and eff.stderr[0] == 0.0
    # residues never seen at their columns are far less likely than the family's
    assert bool((eff.score[2:] < -3 * eff.stderr[2:]).all()), eff.score
    assert bool(torch.isfinite(eff.stderr[1:]).all()) and bool((eff.stderr[1:] > 0).all())
    iw = mutation_effects(program, msa, ["A7A", "C8W"], num_particles=200, bound="iwae")
    assert iw.score[0] == 0.0 and iw.score[1] < 0 and iw.bound == "iwae"


@pytest.mark.parametrize(
    "mutation, match",
    [
        ("C7W", r"the wild type has 'A' at residue 7, not 'C'\. Try A7W"),
        ("A7B", r"'B' is not one of the 20 amino acids"),
        ("A7", r"'A7' is not of the form A123B"),
        ("A99W", r"residue 99 is outside the focus sequence \('wt/5-14', residues 5-14\)"),
        ("A7W:A7C", r"residue 7 is mutated twice"),
    ],
)
def test_bad_mutations_raise_clear_errors(msa, mutation, match):
    with pytest.raises(DataError, match=match):
        parse_mutations(msa, [mutation])


def test_composition_rule_from_the_family_and_its_reasons(msa):
    rule = CompositionRule.from_alignment(msa, groups={"W": "W", "hydrophobic": "AVILMFC"}, quantiles=(0.0, 1.0))
    # W: 0 in four records, 1/8 in one; hydrophobic A, C, F, I, V, L
    assert rule.low.tolist() == pytest.approx([0.0, 3 / 8]) and rule.high.tolist() == pytest.approx([1 / 8, 5 / 8])
    codes = encode_sequences(["ACDEFGHI", "WWDEFGHI", "DDDDDDDD", "AC--FG-I"])
    ok, reasons = rule.check(codes)
    assert ok.tolist() == [True, False, False, False]
    assert reasons[1] == "composition: W fraction 0.250 outside [0.000, 0.125]"
    assert reasons[2] == "composition: hydrophobic fraction 0.000 outside [0.375, 0.625]"
    assert reasons[3] == "composition: hydrophobic fraction 0.800 outside [0.375, 0.625]"  # 4 of 5 residues


def test_filter_runs_rules_in_order_and_names_the_first_failure(msa):
    flt = SequenceFilter([
        MotifRule([r"C{2,}", r"N[^P][ST]"]),
        IdentityRule(msa.codes, low=0.5, high=0.99),
    ])
    codes = encode_sequences(["ACDEFGHI", "ACCEFGHI", "ANGSFGHI", "ACDEFGHV", "WWWWWWWW", "ACDEYGHV"])
    res = flt(codes)
    assert res.accepted_index.tolist() == [5] and torch.equal(res.accepted, codes[5:])
    assert res.rejected_index.tolist() == [0, 1, 2, 3, 4]
    assert res.rule == ("identity", "motif", "motif", "identity", "identity")
    assert res.reasons[1] == "motif: 'C{2,}' matches 'CC' at residue 2"
    assert res.reasons[2] == "motif: 'N[^P][ST]' matches 'NGS' at residue 2"
    assert res.reasons[0].startswith("identity: 1.000 to the nearest reference (row 0) outside [0.500, 0.990]")
    assert res.reasons[4].startswith("identity: 0.125")
    assert res.counts() == {"identity": 3, "motif": 2} and res.fraction_accepted == pytest.approx(1 / 6)
    with pytest.raises(DataError, match="codes must be"):
        flt(torch.full((2, 8), 30))
    with pytest.raises(ValueError, match="not a regular expression"):
        MotifRule(["C(D"])
