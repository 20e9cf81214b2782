"""Generators with known independent factors: sprites and block-design fMRI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import mutual_info_score

from pvae.data import canonical_hrf, fmri_blocks, simulate_counts, sprites


@pytest.mark.parametrize("make", [lambda: sprites(200).images, lambda: fmri_blocks(20).x,
                                  lambda: simulate_counts(50, 30).counts], ids=["sprites", "fmri", "counts"])
def test_numpy_based_generators_without_a_seed_follow_the_global_torch_rng(make):
    """seed=None: reproducible under torch.manual_seed, as the torch-based generators are."""
    torch.manual_seed(7)
    a = make()
    torch.manual_seed(7)
    assert torch.equal(a, make())
    assert not torch.equal(a, make())


def test_sprites_are_deterministic_binary_and_their_factors_independent():
    a, b = sprites(3000, seed=4), sprites(3000, seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.factors, b.factors)
    assert not torch.equal(a.images, sprites(3000, seed=5).images)
    assert a.images.shape == (3000, 32 * 32) and set(a.images.unique().tolist()) == {0.0, 1.0}
    assert a.factor_names == ("shape", "scale", "orientation", "x", "y")
    f = a.factors.numpy()
    assert [len(np.unique(c)) for c in f.T] == [3, 6, 20, 16, 16]
    # pairwise mutual information of independent uniform factors: only the plug-in bias,
    # about (|A| - 1)(|B| - 1) / (2 n) nats
    for i in range(5):
        for j in range(i + 1, 5):
            bias = (len(np.unique(f[:, i])) - 1) * (len(np.unique(f[:, j])) - 1) / (2 * len(f))
            assert mutual_info_score(f[:, i], f[:, j]) < 2.5 * bias + 1e-3
    # each image shows its factors: more pixels on at larger scale, the centre of mass at (x, y)
    area = a.images.sum(1).numpy()
    assert np.corrcoef(area, f[:, 1])[0, 1] > 0.8
    grid = (np.arange(32) + 0.5) / 32
    img = a.images.numpy().reshape(-1, 32, 32)
    cx = (img.sum(1) * grid).sum(1) / area
    assert np.abs(cx - np.array(a.factor_values[3])[f[:, 3]]).max() < 0.06


def test_fmri_noise_is_ar1_with_the_asked_rho_and_the_signal_follows_the_design():
    d = fmri_blocks(400, num_regions=5, length=80, rho=0.7, noise_scale=1.5, seed=0)
    e = (d.x - d.signal).reshape(400, 5, 80).numpy()
    assert e.std() == pytest.approx(1.5, rel=0.03)
    lag1 = (e[..., 1:] * e[..., :-1]).mean() / e.var()
    assert lag1 == pytest.approx(0.7, abs=0.02)
    sig = d.signal.reshape(400, 5, 80)
    expected = d.subject_maps[d.subject][:, :, None] + d.task_maps[d.task][:, :, None] * d.time_course
    torch.testing.assert_close(sig, expected)
    h = canonical_hrf(2.0)
    assert h.argmax() * 2.0 == pytest.approx(5.0, abs=1.0) and h.min() < 0  # peak near 5 s, undershoot
    with pytest.raises(ValueError, match="rho"):
        fmri_blocks(10, rho=1.0)


def test_fmri_event_design_is_the_hrf_convolved_event_train_shared_by_every_run():
    d = fmri_blocks(50, length=60, rho=0.5, design="event", event_rate=0.3, seed=4)
    again = fmri_blocks(50, length=60, rho=0.5, design="event", event_rate=0.3, seed=4)
    torch.testing.assert_close(d.x, again.x, rtol=0, atol=0)
    events = d.stimulus.double().numpy()
    assert set(events) == {0.0, 1.0} and 0.15 < events.mean() < 0.45  # about event_rate of the scans
    course = np.convolve(events, canonical_hrf(2.0))[:60]
    np.testing.assert_allclose(d.time_course.double().numpy(), course / course.max(), rtol=1e-6)
    block = fmri_blocks(50, length=60, rho=0.5, block_length=6, seed=4)
    np.testing.assert_array_equal(block.stimulus.numpy(), (np.arange(60) // 6) % 2)
    sig = d.signal.reshape(50, 8, 60)
    torch.testing.assert_close(sig, d.subject_maps[d.subject][:, :, None]
                               + d.task_maps[d.task][:, :, None] * d.time_course)
    with pytest.raises(ValueError, match="design"):
        fmri_blocks(10, design="mixed")
    with pytest.raises(ValueError, match="event_rate"):
        fmri_blocks(10, design="event", event_rate=0.0)


@pytest.mark.parametrize("kwargs", [
    dict(length=6, block_length=6),   # no "on" scan at all
    dict(length=7, block_length=6),   # an "on" scan, but the HRF is 0 there (h(0) = 0)
    dict(length=12, block_length=20),
    dict(length=1, design="event"),   # the one event at scan 0 has no response yet
    dict(tr=13.0),                    # every sample past the positive lobe of the HRF
    dict(tr=-1.0),
])
def test_fmri_design_without_response_is_refused_before_any_draw(kwargs):
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    with pytest.raises(ValueError, match="length|tr"):
        fmri_blocks(5, seed=None, **kwargs)
    assert torch.equal(torch.random.get_rng_state(), before)  # seed=None would draw from torch: nothing drawn


def test_fmri_shortest_valid_designs_peak_at_one():
    block = fmri_blocks(5, length=8, block_length=6, seed=0)
    np.testing.assert_array_equal(block.time_course.numpy(), [0, 0, 0, 0, 0, 0, 0, 1])
    event = fmri_blocks(5, length=2, design="event", seed=0)
    np.testing.assert_array_equal(event.time_course.numpy(), [0, 1])
    for d in (block, event):
        assert torch.isfinite(d.x).all() and torch.isfinite(d.signal).all()


@pytest.mark.parametrize("tr, duration", [(32.0, 32.0), (40.0, 32.0), (12.5, 32.0), (0.0, 32.0), (2.0, math.nan)])
def test_canonical_hrf_refuses_samplings_without_a_positive_response(tr, duration):
    with pytest.raises(ValueError, match="tr|duration"):
        canonical_hrf(tr, duration)
    h = canonical_hrf(12.0)  # the last tr with a sample (t = 12 s) in the positive lobe
    assert h.max() == 1.0 and np.isfinite(h).all()
