"""The CEVAE program and estimator: shapes over outcome families and sizes, the
paper's hidden-confounder experiment, save/load, bad input, Pyro drop-in."""

from __future__ import annotations

import copy
import inspect
import io
import math
import tempfile
from pathlib import Path
from statistics import NormalDist

import pyro
import pytest
import torch
from pyro import poutine

from pvae.causal import CEVAE, EffectEstimate, ate_error, ite, potential_outcomes
from pvae.causal.cevae import PRESETS
from pvae.data import hidden_confounder_data
from pvae.models import Program

# the tests below were written for the paper's configuration (test_presets covers the default)
SMALL = dict(latent_dim=2, hidden_dim=8, num_layers=2, num_samples=5, preset="paper")
FAMILIES = ("bernoulli", "normal", "laplace", "student_t", "exponential")


def _outcome(family: str, n: int, t: torch.Tensor) -> torch.Tensor:
    if family == "bernoulli":
        return torch.bernoulli(0.3 + 0.4 * t)
    if family == "exponential":
        return torch.distributions.Exponential(1.0 + t).sample() + 1e-3
    return 2.0 * t + torch.randn(n) * 3 + 10


def _data(family: str, n: int, feature_dim: int = 4):
    x = torch.cat([torch.randn(n, feature_dim - 2), torch.randint(0, 2, (n, 2)).float()], -1)
    t = torch.randint(0, 2, (n,)).float()
    return x, t, _outcome(family, n, t)


@pytest.fixture(scope="module")
def fitted() -> tuple[CEVAE, tuple[torch.Tensor, ...]]:
    pyro.set_rng_seed(0)
    x, t, y = _data("normal", 60)
    model = CEVAE(4, "normal", **SMALL)
    model.fit(x, t, y, num_epochs=3, batch_size=20, validation_fraction=0.2, seed=0)
    return model, (x, t, y)


def test_fit_seed_fixes_the_initial_weights_of_an_unfitted_model_only():
    """Built under different random states, two models fitted with the same seed end
    equal (torch seeds each new process at random, so the build alone would differ);
    a fitted model refitted with that seed trains on from its weights."""
    x, t, y = _data("normal", 60)
    models = []
    for state in (1, 2):
        torch.manual_seed(state)
        models.append(CEVAE(4, "normal", **SMALL))
    before = [torch.cat([p.detach().flatten() for p in m.parameters()]) for m in models]
    assert not torch.equal(*before)
    for m in models:
        m.fit(x, t, y, num_epochs=2, batch_size=20, seed=3)
    after = [torch.cat([p.detach().flatten() for p in m.parameters()]) for m in models]
    assert torch.equal(*after)
    models[0].fit(x, t, y, num_epochs=2, batch_size=20, seed=3)  # a warm start, not a fresh fit
    again = torch.cat([p.detach().flatten() for p in models[0].parameters()])
    assert not torch.allclose(again, after[1])


@pytest.mark.parametrize("n", [1, 2, 37])
@pytest.mark.parametrize("family", FAMILIES)
def test_smoke_grid_over_outcome_families_and_sizes(family, n):
    x, t, y = _data(family, n)
    model = CEVAE(4, family, **SMALL)
    losses = model.fit(x, t, y, num_epochs=2, batch_size=16, seed=0)
    assert len(losses) == 2 * -(-n // 16) and all(torch.isfinite(torch.tensor(losses)))
    assert model.binary_mask.tolist() == ([False, False, True, True] if n > 2 else model.binary_mask.tolist())
    tau = model.ite(x)
    assert tau.shape == (n,) and torch.isfinite(tau).all()
    one = model.ite(x[:1])  # a single data point
    assert one.shape == (1,)
    y0, y1 = model.potential_outcomes(x)
    assert y0.shape == y1.shape == (n,)
    if family == "bernoulli":
        assert ((y0 >= 0) & (y0 <= 1) & (y1 >= 0) & (y1 <= 1)).all()
    if family == "exponential":
        assert (y0 > 0).all() and (y1 > 0).all()
    lower, upper = model.effect_interval(x, alpha=0.1)
    assert lower.shape == upper.shape == (n,) and (lower <= upper).all()
    lo, hi = model.ate_interval(x)
    assert lo <= hi and isinstance(model.ate(x), float)


@pytest.mark.parametrize("family, options", [
    ("normal", {}), ("bernoulli", {}), ("exponential", {}),
    ("normal", {"outcome_inputs": "zx", "outcome_standardisation": "arm"}),
])
def test_own_queries_equal_the_generic_do_query_on_the_program(family, options):
    """CEVAE reads E[y | do(t=a), z] from its outcome networks; the generic query replays
    the guide's z into poutine.do(model) and reads the outcome site. Under one seed both
    draw the same z, so the potential outcomes agree to rounding."""
    x, t, y = _data(family, 20)
    model = CEVAE(4, family, **SMALL, **options)
    model.fit(x, t, y, num_epochs=2, batch_size=10, seed=0)
    pyro.set_rng_seed(3)
    ours = model.potential_outcomes(x, num_samples=50)
    pyro.set_rng_seed(3)
    generic = potential_outcomes(model, x, num_samples=50)
    for a, est in zip(ours, generic):
        torch.testing.assert_close(a, est.mean)


def test_program_sites_and_shapes(fitted):
    model, (x, t, y) = fitted
    assert isinstance(model, Program)
    guide_tr = poutine.trace(model.guide).get_trace(x, t, y)
    model_tr = poutine.trace(poutine.replay(model.model, trace=guide_tr)).get_trace(x, t, y)
    assert guide_tr.nodes["z"]["value"].shape == (60, 2)
    assert guide_tr.nodes["t"]["infer"]["is_auxiliary"] and guide_tr.nodes["y"]["is_observed"]
    for name in ("x", "t", "y"):
        assert model_tr.nodes[name]["is_observed"]
    assert torch.equal(model_tr.nodes["z"]["value"], guide_tr.nodes["z"]["value"])
    # the model is written in the data's units: the outcome's mean is near the data's
    ymean = model_tr.nodes["y"]["fn"].mean.detach()
    assert abs(float(ymean.mean()) - float(y.mean())) < 3 * float(y.std())
    # new units: the guide samples t and y from its auxiliary networks
    assert poutine.trace(model.guide).get_trace(x[:3]).nodes["y"]["value"].shape == (3,)


def test_estimator_interface(fitted):
    model, (x, _, _) = fitted
    pyro.set_rng_seed(1)
    a = model.effect(x[:10])
    pyro.set_rng_seed(1)
    b = model.ite(x[:10])
    torch.testing.assert_close(a, b)
    est = model.effect_inference(x[:10], alpha=0.2, num_samples=7)
    assert isinstance(est, EffectEstimate) and est.draws.shape == (7, 10) and est.alpha == 0.2
    ate_est = model.ate_inference(x, num_samples=7)
    assert ate_est.mean.shape == () and ate_est.lower <= ate_est.mean <= ate_est.upper
    # the ATE interval is at least as wide as the posterior draws' spread (it adds estimation error):
    # mean +- z_{0.975} sqrt(Var_s ate^(s) + ate_stderr^2), z from the standard library, not pvae
    assert float(model.ate_stderr) > 0
    draws = ate_est.draws.double()
    assert draws.shape == (7,)
    z = NormalDist().inv_cdf(0.975)
    se = math.sqrt(float(draws.var()) + float(model.ate_stderr) ** 2)
    assert float(ate_est.mean) == pytest.approx(float(draws.mean()), rel=1e-6, abs=1e-6)
    assert float(ate_est.upper - ate_est.lower) == pytest.approx(2 * z * se, rel=1e-5)
    assert float(ate_est.upper - ate_est.lower) >= 2 * z * float(draws.std()) * (1 - 1e-6)
    # the generic query and the method agree under the same seed
    pyro.set_rng_seed(2)
    generic = ite(model, x[:10], num_samples=5)
    pyro.set_rng_seed(2)
    torch.testing.assert_close(generic.mean, model.ite(x[:10], num_samples=5))
    # chunking by batch_size gives the same shapes
    assert model.ite(x, batch_size=7).shape == (60,)


def test_ate_stderr_is_the_standard_error_of_the_difference_of_the_held_out_arm_means(monkeypatch):
    """ate_stderr = sqrt(s0^2 / n0 + s1^2 / n1), s_a^2 the (n_a - 1) sample variance of the
    held-out factual residuals y - mu_a(x) of arm a: the standard error of a difference of two
    means (not the residuals' standard deviation, sqrt(n_a) times larger). The arm means that
    fit() used are recorded by a spy, so the hand computation (float64, independent code) sees
    the same posterior draws; float32 rounding bounds the agreement at rel 1e-5."""
    x, t, y = _data("normal", 60)
    t[:30], t[30:] = 0.0, 1.0  # both arms in the validation split, whatever the permutation
    seen: dict[str, object] = {}
    arm_means, arm_stderr = CEVAE._arm_means, CEVAE._arm_stderr

    def spy_means(self, xs, num_samples):
        out = arm_means(self, xs, num_samples)
        seen["means"] = [o.detach().clone() for o in out]
        return out

    def spy_stderr(self, xs, ts, ys):
        seen["args"] = (xs.clone(), ts.clone(), ys.clone())
        return arm_stderr(self, xs, ts, ys)

    monkeypatch.setattr(CEVAE, "_arm_means", spy_means)
    monkeypatch.setattr(CEVAE, "_arm_stderr", spy_stderr)
    model = CEVAE(4, "normal", **SMALL)
    model.fit(x, t, y, num_epochs=2, batch_size=20, validation_fraction=0.3, seed=0)
    xs, ts, ys = seen["args"]
    # it is computed on the held-out rows (validation_rows), not on the training rows
    assert xs.shape[0] == 18 and len(model.validation_rows) == 18
    order = torch.cdist(xs, x).argmin(1)
    assert torch.equal(order.sort().values, model.validation_rows)
    assert torch.equal(ts, t[order]) and torch.equal(ys, y[order])
    y0, y1 = (m.double().numpy() for m in seen["means"])
    yv, tv = ys.double().numpy(), ts.numpy()
    var = 0.0
    for arm, mu in ((0, y0), (1, y1)):
        r = (yv - mu)[tv == arm]
        assert len(r) >= 2
        var += float(((r - r.mean()) ** 2).sum() / (len(r) - 1)) / len(r)
    assert float(model.ate_stderr) == pytest.approx(math.sqrt(var), rel=1e-5)


def test_validation_split_keeps_the_best_epoch():
    x, t, y = _data("normal", 50)
    val = _data("normal", 20)
    model = CEVAE(4, "normal", **SMALL)
    model.fit(x, t, y, num_epochs=4, batch_size=25, validation_data=val, seed=0)
    scores = [row["validation"] for row in model.training_history]
    assert len(scores) == 4 and all(isinstance(s, float) for s in scores)
    model2 = CEVAE(4, "normal", **SMALL)
    model2.fit(x, t, y, num_epochs=30, batch_size=25, validation_data=val, patience=1, seed=0,
               early_stopping="outcome")
    assert len(model2.training_history) < 30  # stopped early


def test_outcome_per_arm_early_stopping_takes_each_outcome_network_from_its_arms_best_check(monkeypatch):
    x, t, y = _data("normal", 60)
    t[:4], t[4:8] = 1.0, 0.0  # both arms in the validation rows
    valid, (x, t, y) = (x[:20], t[:20], y[:20]), (x[20:], t[20:], y[20:])
    # a scripted validation score: the pooled score is best at check 2, the control arm at
    # check 4, the treated arm at check 1; record the networks at every check
    pooled = [-3.0, -1.0, -2.0, -2.5, -2.0]
    errors = [[5.0, 1.0], [4.0, 2.0], [3.0, 3.0], [2.0, 4.0], [2.5, 5.0]]
    seen: list[dict[str, torch.Tensor]] = []

    def scripted(self, x, t, y, criterion, objective):
        assert criterion == "outcome_per_arm"
        seen.append(copy.deepcopy(self.state_dict()))
        k = len(seen) - 1
        return pooled[k], errors[k]

    monkeypatch.setattr(CEVAE, "_validation_score", scripted)
    model = CEVAE(4, "normal", outcome_inputs="zx", outcome_standardisation="arm", **SMALL)
    model.fit(x, t, y, num_epochs=5, batch_size=20, validation_data=valid, early_stopping="outcome_per_arm", seed=0)
    state = model.state_dict()
    for name, value in state.items():
        if name == "ate_stderr":  # set after training, from the chosen networks
            continue
        check = 3 if name.startswith("py0.") else 0 if name.startswith("py1.") else 1
        torch.testing.assert_close(value, seen[check][name], rtol=0, atol=0, msg=name)
    assert not torch.equal(seen[0]["py1.0.weight"], seen[1]["py1.0.weight"])  # the checks differ


def test_the_pvae_preset_stops_after_ten_checks_without_a_better_score(monkeypatch):
    x, t, y = _data("normal", 60)
    checks: list[int] = []

    def best_at_the_third_check(self, x, t, y, criterion, objective):
        checks.append(len(checks))
        return (-1.0 if len(checks) == 3 else -2.0), [1.0, 1.0]

    monkeypatch.setattr(CEVAE, "_validation_score", best_at_the_third_check)
    small = {**SMALL, "preset": "pvae"}
    model = CEVAE(4, "normal", **small)
    model.fit(x, t, y, num_epochs=100, batch_size=30, seed=0)  # checks every epoch
    assert len(checks) == 13 and len(model.training_history) == 13  # the best, then ten without a better one
    checks.clear()
    CEVAE(4, "normal", **small).fit(x, t, y, num_epochs=20, batch_size=30, seed=0, patience=0)
    assert len(checks) == 20  # patience=0: every epoch, then the best
    checks.clear()
    CEVAE(4, "normal", **small).fit(x, t, y, num_epochs=20, batch_size=30, seed=0, patience=2)
    assert len(checks) == 5
    checks.clear()  # no validation rows: the preset's patience does not apply, an explicit one is refused
    CEVAE(4, "normal", **small).fit(x, t, y, num_epochs=15, batch_size=30, seed=0, validation_fraction=0.0)
    assert checks == []
    with pytest.raises(ValueError, match="patience .early stopping. needs validation data"):
        CEVAE(4, "normal", **small).fit(x, t, y, num_epochs=15, validation_fraction=0.0, patience=3)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="patience must be a non-negative integer"):
            CEVAE(4, "normal", **small).fit(x, t, y, num_epochs=1, patience=bad)


def test_outcome_per_arm_validation_errors_and_refusals():
    x, t, y = _data("normal", 40)
    model = CEVAE(4, "normal", **SMALL)
    valid = (x[:10], torch.zeros(10), y[:10])  # no treated validation rows
    model.fit(x[10:], t[10:], y[10:], num_epochs=3, batch_size=15, validation_data=valid,
              early_stopping="outcome_per_arm", seed=0)
    score, errors = model._validation_score(*valid, "outcome_per_arm", None)
    assert errors[1] == float("inf") and errors[0] >= 0 and score <= 0
    # the pooled score is the "outcome" criterion's
    pyro.set_rng_seed(1)
    pooled = model._validation_score(*valid, "outcome", None)
    pyro.set_rng_seed(1)
    assert model._validation_score(*valid, "outcome_per_arm", None)[0] == pytest.approx(pooled)
    assert torch.isfinite(model.ite(x)).all()
    with pytest.raises(ValueError, match="early_stopping must be one of"):
        model.fit(x, t, y, num_epochs=1, early_stopping="per_arm")


def test_pickle_round_trip_gives_the_same_ite(fitted, tmp_path):
    model, (x, _, _) = fitted
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)  # a pickle: only for trusted files
    pyro.set_rng_seed(5)
    expected = model.ite(x)
    pyro.set_rng_seed(5)
    torch.testing.assert_close(loaded.ite(x), expected, rtol=0, atol=0)
    # the weights-only format
    path = tmp_path / "cevae.pt"
    model.save(path)
    again = CEVAE.load(path)
    assert again.config() == model.config()
    pyro.set_rng_seed(5)
    torch.testing.assert_close(again.ite(x), expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="not a CEVAE file"):
        torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
        CEVAE.load(tmp_path / "other.pt")


BAD_INPUTS = {
    "t not binary": (lambda x, t, y: (x, t * 2, y), r"t must be binary \(0 or 1\), got 2"),
    "lengths differ": (lambda x, t, y: (x, t[:-1], y), r"t must have shape \(n,\) with n = 20 rows of x, got \(19,\)"),
    "y length": (lambda x, t, y: (x, t, y[:5]), r"y must have shape \(n,\) with n = 20"),
    "NaN in x": (lambda x, t, y: (x.index_fill(0, torch.tensor([3]), float("nan")), t, y),
                 r"x has 4 NaN or infinite entries \(first at \(3, 0\)\)"),
    "NaN in y": (lambda x, t, y: (x, t, y.index_fill(0, torch.tensor([0]), float("nan"))), "y has 1 NaN"),
    "feature count": (lambda x, t, y: (x[:, :3], t, y), r"x must have shape \(n, feature_dim=4\), got \(20, 3\)\. "
                      r"Try CEVAE\(feature_dim=3\)"),
    "x not 2-D": (lambda x, t, y: (x[:, 0], t, y), r"x must have shape \(n, feature_dim=4\), got \(20,\)"),
    "empty": (lambda x, t, y: (x[:0], t[:0], y[:0]), "x holds no rows"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_refused_and_nothing_is_trained(case):
    make, message = BAD_INPUTS[case]
    model = CEVAE(4, "normal", **SMALL)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=message):
        model.fit(*make(*_data("normal", 20)), num_epochs=1)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "parameters or buffers changed"
    assert not bool(model.fitted)
    with pytest.raises(RuntimeError, match=r"not fitted\. Try \.fit"):
        model.ite(torch.zeros(2, 4))


def test_bad_outcomes_options_and_queries(fitted):
    x, t, _ = _data("normal", 10)
    with pytest.raises(ValueError, match="y must be 0 or 1 for outcome_dist='bernoulli'"):
        CEVAE(4, "bernoulli", **SMALL).fit(x, t, torch.randn(10))
    with pytest.raises(ValueError, match="y must be positive for outcome_dist='exponential'"):
        CEVAE(4, "exponential", **SMALL).fit(x, t, -torch.rand(10))
    with pytest.raises(ValueError, match=r"outcome_dist must be one of \['bernoulli'"):
        CEVAE(4, "gamma")
    with pytest.raises(ValueError, match="feature_dim must be a positive integer"):
        CEVAE(0)
    with pytest.raises(ValueError, match="feature_types must list 'binary' or 'continuous'"):
        CEVAE(4, feature_types=["binary"])
    with pytest.raises(ValueError, match="learning_rate_decay must be in"):
        CEVAE(4, "normal", **SMALL).fit(x, t, torch.randn(10), learning_rate_decay=0)
    with pytest.raises(ValueError, match="validation_data must be a tuple"):
        CEVAE(4, "normal", **SMALL).fit(x, t, torch.randn(10), validation_data=x)
    with pytest.raises(ValueError, match="validation_data: t must be binary"):
        CEVAE(4, "normal", **SMALL).fit(x, t, torch.randn(10), validation_data=(x, t + 3, torch.randn(10)))
    model, _ = fitted
    with pytest.raises(ValueError, match="x column 2 is declared binary but holds 0.5"):
        model.ite(torch.full((3, 4), 0.5))
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\)"):
        model.ate_interval(x, alpha=0)
    # declared feature types are checked at fit
    with pytest.raises(ValueError, match="x column 0 is declared binary"):
        CEVAE(4, "normal", feature_types=["binary"] * 4, **SMALL).fit(x, t, torch.randn(10))


def test_numpy_and_column_inputs_are_accepted():
    x, t, y = _data("normal", 12)
    model = CEVAE(4, "normal", **SMALL)
    model.fit(x.numpy(), t[:, None].numpy(), y[:, None], num_epochs=1)
    assert model.ite(x.numpy()).shape == (12,)


@pytest.mark.parametrize("treated", [[1, 0, 0, 1, 0, 1, 0], [1] * 7, [0] * 7])
def test_twin_heads_give_each_row_its_own_arms_network_eagerly_and_under_capture(treated, monkeypatch):
    """Eagerly each arm's rows go through its own head only; under capture both heads run on
    every row and are selected. Both equal the definition row by row, values and gradients."""
    from pvae.causal.cevae import _Head, _twin
    from pvae.infer import capture

    torch.manual_seed(0)
    nets = _Head(3, 8, 2, "elu"), _Head(3, 8, 2, "elu")  # (net1, net0)
    inp, t = torch.randn(4, 7, 3), torch.tensor(treated, dtype=torch.float)  # particles x rows x features
    params = [p for net in nets for p in net.parameters()]

    def value_and_grads(capturing: bool | None) -> list[torch.Tensor]:
        monkeypatch.setattr(capture, "_capturing", int(bool(capturing)))
        if capturing is None:  # the definition: row i through net1 if t_i else net0
            per_row = [nets[0 if t[i] else 1](inp[:, i]) for i in range(7)]
            loc, scale = (torch.stack([o[k] for o in per_row], 1) for k in (0, 1))
        else:
            loc, scale = _twin(t, inp, *nets)
        grads = torch.autograd.grad(loc.square().sum() + scale.log().sum(), params, allow_unused=True)
        return [loc, scale, *(torch.zeros_like(p) if g is None else g for p, g in zip(params, grads))]

    truth = value_and_grads(None)
    for capturing in (False, True):
        for got, want in zip(value_and_grads(capturing), truth):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family, options", [("normal", {}), ("bernoulli", {"outcome_inputs": "zx"})])
def test_the_captured_step_trains_as_the_eager_one(family, options):
    """fit(compile=True) replays the captured step (no fallback: under capture the twin heads
    keep fixed shapes) and reproduces the eager run (each arm's rows through its own head)
    under one seed: the same draws, losses and parameters equal to float rounding."""
    import warnings

    x, t, y = _data(family, 60)
    runs = []
    for compile in (False, True):
        pyro.set_rng_seed(1)  # the same initial weights
        model = CEVAE(4, family, **SMALL, **options)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a CaptureWarning (fallback) fails the test
            losses = model.fit(x, t, y, num_epochs=4, batch_size=20, validation_fraction=0.2, seed=0,
                               compile=compile)
        runs.append((torch.tensor(losses), model.state_dict()))
    (eager, eager_state), (captured, captured_state) = runs
    torch.testing.assert_close(captured, eager, rtol=1e-5, atol=1e-6)
    for name, value in eager_state.items():
        torch.testing.assert_close(captured_state[name], value, rtol=1e-4, atol=1e-6, msg=name)
    with pytest.raises(ValueError, match="compile must be one of"):
        CEVAE(4, family, **SMALL).fit(x, t, y, num_epochs=1, compile="yes")


def test_drop_in_signature_of_pyro_cevae():
    from pyro.contrib.cevae import CEVAE as PyroCEVAE

    for name in ("__init__", "fit", "ite"):
        ours = list(inspect.signature(getattr(CEVAE, name)).parameters)
        theirs = list(inspect.signature(getattr(PyroCEVAE, name)).parameters)
        assert ours[: len(theirs)] == theirs, (name, ours, theirs)
        ours_defaults = {k: v.default for k, v in inspect.signature(getattr(CEVAE, name)).parameters.items()}
        for k, v in inspect.signature(getattr(PyroCEVAE, name)).parameters.items():
            # a default of None is the preset's: preset="paper" gives Pyro's
            ours_default = PRESETS["paper"][k] if ours_defaults[k] is None and k in PRESETS["paper"] else ours_defaults[k]
            assert ours_default == v.default, (name, k)
    assert CEVAE(3, "studentt", **SMALL).outcome_dist == "student_t"  # Pyro's spelling


def test_presets_select_the_whole_configuration_and_split_reproducibly():
    assert sorted(PRESETS) == ["paper", "pvae"]
    default = CEVAE(4, "normal", latent_dim=2, hidden_dim=8, num_layers=1)
    assert default.preset == "pvae" and default.outcome_inputs == "zx" and default.outcome_standardisation == "arm"
    assert CEVAE(4, latent_dim=2, hidden_dim=8).outcome_standardisation == "pooled"  # bernoulli: no per-arm scale
    paper = CEVAE(4, "normal", preset="paper", latent_dim=2, hidden_dim=8)
    assert (paper.outcome_inputs, paper.outcome_standardisation) == ("z", "pooled")
    mixed = CEVAE(4, "normal", outcome_inputs="z", latent_dim=2, hidden_dim=8)  # explicit arguments win
    assert (mixed.outcome_inputs, mixed.outcome_standardisation) == ("z", "arm")
    assert PRESETS["pvae"] == {"outcome_inputs": "zx", "outcome_standardisation": "arm",
                               "early_stopping": "outcome_per_arm", "num_epochs": 600, "patience": 10,
                               "validation_fraction": 0.3}
    assert PRESETS["paper"]["num_epochs"] == 100 and PRESETS["paper"]["validation_fraction"] == 0.0
    assert PRESETS["paper"]["patience"] == 0
    # fit without validation data: the pvae preset holds out 30% of the rows, the same for the same seed
    x, t, y = _data("normal", 50)
    rows = []
    for seed in (3, 3, 4):
        model = CEVAE(4, "normal", latent_dim=2, hidden_dim=8, num_layers=1, num_samples=5)
        model.fit(x, t, y, num_epochs=2, batch_size=20, seed=seed)
        rows.append(model.validation_rows)
        assert model.training_history[-1]["validation"] is not None
    assert rows[0].shape == (15,) and torch.equal(rows[0], rows[1]) and not torch.equal(rows[0], rows[2])
    paper.fit(x, t, y, num_epochs=1, batch_size=20, seed=3)
    assert paper.validation_rows is None and "validation" not in paper.training_history[-1]
    # the preset survives a save / load round trip
    with tempfile.TemporaryDirectory() as d:
        paper.save(Path(d) / "m.pt")
        assert CEVAE.load(Path(d) / "m.pt").preset == "paper"
    with pytest.raises(ValueError, match=r"preset must be one of \['paper', 'pvae'\]"):
        CEVAE(4, preset="best")


# -- the paper's hidden-confounder experiment -------------------------------------------
# hidden_confounder_data: population ATE 0.7262; the naive difference of means is biased
# by about +0.11 (the confounder raises both treatment and outcome).
def _hidden_confounder_run(num_data, feature_dim, num_epochs, seed, **kw):
    data = hidden_confounder_data(num_data, feature_dim, seed=seed)
    model = CEVAE(feature_dim, "bernoulli", num_samples=50, **{"preset": "paper", **kw})  # the paper's experiment
    model.fit(data.x, data.t, data.y, num_epochs=num_epochs, batch_size=100, validation_fraction=0.2, seed=seed)
    truth = float(data.true_ite.mean())
    naive = float(data.y[data.t == 1].mean() - data.y[data.t == 0].mean())
    est = model.ate_inference(data.x)
    return truth, naive, est


def test_hidden_confounder_fast():
    """Small and quick: the CEVAE removes most of the confounding bias and its 95% ATE
    interval covers the truth. Tolerance 0.08: with these settings the estimate's error
    over data/model seeds 0, 1, 2 was 0.001, 0.034, 0.033 (the naive difference's: 0.086,
    0.077, 0.091; measured 2025 on this machine, torch 2.13 CPU)."""
    truth, naive, est = _hidden_confounder_run(1000, 20, 30, seed=0, latent_dim=1, hidden_dim=32, num_layers=2)
    err = abs(float(est.mean) - truth)
    print(f"truth {truth:.3f} naive {naive:.3f} cevae {float(est.mean):.3f} [{float(est.lower):.3f}, "
          f"{float(est.upper):.3f}]")
    assert err < 0.08
    assert err < abs(naive - truth)
    assert float(est.lower) <= truth <= float(est.upper)
    # and it is not merely wide: with a binary outcome each held-out residual variance is at most
    # about 1/4 (calibrated means), so with ~100 of the 200 held-out units per arm the estimation
    # error's se is <= sqrt(2 * 0.25 / 100) = 0.071 and the 95% width <= 2 * 1.96 * 0.071 = 0.28
    # (plus the posterior draws' small spread); measured 0.130 (se 0.033). An interval built from
    # the residuals' standard deviation instead of the standard error of their mean is 1.35 wide.
    assert float(est.upper - est.lower) < 0.3


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_hidden_confounder_recovers_the_ate(seed):
    """The paper's setting at 5000 units, hidden layers of the default size, latent_dim 5: the ATE within
    0.06 and closer than the naive difference. Seen (seeds 0, 1): truth 0.729 / 0.730,
    naive 0.837 / 0.849, CEVAE 0.686 / 0.698. The interval is not asserted here: at this
    size the remaining bias (-0.03 to -0.06, a Normal latent standing in for a binary
    confounder; also with latent_dim=1) exceeds its half-width (about 0.03)."""
    truth, naive, est = _hidden_confounder_run(5000, 20, 40, seed=seed, latent_dim=5)
    err = abs(float(est.mean) - truth)
    print(f"truth {truth:.3f} naive {naive:.3f} cevae {float(est.mean):.3f} [{float(est.lower):.3f}, "
          f"{float(est.upper):.3f}]")
    assert err < 0.06
    assert err < abs(naive - truth)
    assert ate_error(torch.full((5,), float(est.mean)), torch.full((5,), truth)) == pytest.approx(err)


def test_objective_is_elbo_plus_auxiliary_log_likelihoods(fitted):
    from pvae.causal import CEVAEObjective
    from pvae.infer import ElboObjective

    model, (x, t, y) = fitted
    args = (x, t, y)
    pyro.set_rng_seed(4)
    ours = CEVAEObjective()(model.model, model.guide, args, {})
    pyro.set_rng_seed(4)
    elbo = ElboObjective()(model.model, model.guide, args, {})
    pyro.set_rng_seed(4)
    guide_tr = poutine.trace(model.guide).get_trace(*args)
    aux = guide_tr.nodes["t"]["fn"].log_prob(t).sum() + guide_tr.nodes["y"]["fn"].log_prob(y).sum()
    torch.testing.assert_close(ours.loss, elbo.loss - aux)
    torch.testing.assert_close(ours.elbo, elbo.elbo)


def test_outcome_weight_scales_the_outcome_site():
    x, t, y = _data("normal", 10)
    model = CEVAE(4, "normal", outcome_weight=5.0, **SMALL)
    model.fit(x, t, y, num_epochs=1)
    guide_tr = poutine.trace(model.guide).get_trace(x, t, y)
    model_tr = poutine.trace(poutine.replay(model.model, trace=guide_tr)).get_trace(x, t, y)
    assert model_tr.nodes["y"]["scale"] == 5.0 and model_tr.nodes["x"]["scale"] == 1.0
    assert model.config()["outcome_weight"] == 5.0
    with pytest.raises(ValueError, match="outcome_weight must be a positive number"):
        CEVAE(4, outcome_weight=0)


def test_outcome_networks_that_read_x_and_per_arm_standardisation(tmp_path):
    x, t, y = _data("normal", 40)
    y = y + 50 * t  # arms far apart: pooled and per-arm standardisation differ
    model = CEVAE(4, "normal", outcome_inputs="zx", outcome_standardisation="arm", **SMALL)
    valid = (x[30:], t[30:], y[30:])
    x, t, y = x[:30], t[:30], y[:30]
    model.fit(x, t, y, num_epochs=2, batch_size=16, validation_data=valid, early_stopping="outcome", seed=0)
    assert model.py0[0].in_features == model.py1[0].in_features == SMALL["latent_dim"] + 4
    for arm in (0, 1):  # each arm's own mean and standard deviation, not the pooled ones
        ya = y[t == arm]
        assert float(model.y_arm_loc[arm]) == pytest.approx(float(ya.mean()), rel=1e-5)
        assert float(model.y_arm_scale[arm]) == pytest.approx(float(ya.std(unbiased=False)), rel=1e-5)
    assert float(model.y_loc) == pytest.approx(float(y.mean()), rel=1e-5)
    # the model's outcome is in the data's units: standardising then mapping back is the identity
    arm = torch.tensor([0.0, 1.0])
    loc, scale = model._y_affine(arm)
    torch.testing.assert_close(loc + scale * model._standardise_y(torch.tensor([3.0, 70.0]), arm), torch.tensor([3.0, 70.0]))
    tau = model.ite(x)
    assert tau.shape == (30,) and torch.isfinite(tau).all()
    path = tmp_path / "zx.pt"
    model.save(path)
    again = CEVAE.load(path)
    assert again.config()["outcome_inputs"] == "zx" and again.config()["outcome_standardisation"] == "arm"
    pyro.set_rng_seed(3)
    expected = model.ite(x)
    pyro.set_rng_seed(3)
    torch.testing.assert_close(again.ite(x), expected, rtol=0, atol=0)


def test_an_arm_too_small_to_standardise_falls_back_to_the_pooled_values():
    x, _, y = _data("normal", 12)
    t = torch.zeros(12)
    t[0] = 1.0  # one treated unit: no standard deviation
    model = CEVAE(4, "normal", outcome_standardisation="arm", **SMALL)
    model.fit(x, t, y, num_epochs=1)
    assert float(model.y_arm_scale[1]) == pytest.approx(float(model.y_scale))
    assert float(model.y_arm_loc[1]) == pytest.approx(float(model.y_loc))
    assert float(model.y_arm_loc[0]) == pytest.approx(float(y[1:].mean()), rel=1e-5)


def test_outcome_option_errors():
    with pytest.raises(ValueError, match="outcome_inputs must be 'z' or 'zx'"):
        CEVAE(4, "normal", outcome_inputs="x")
    with pytest.raises(ValueError, match="outcome_standardisation must be 'pooled' or 'arm'"):
        CEVAE(4, "normal", outcome_standardisation="each")
    with pytest.raises(ValueError, match="outcome_standardisation='arm' needs a location-scale outcome"):
        CEVAE(4, "bernoulli", outcome_standardisation="arm")


def test_a_deep_ensemble_pools_its_members_posterior_draws():
    x, t, y = _data("normal", 60)
    pyro.set_rng_seed(1)
    model = CEVAE(4, "normal", **SMALL)
    losses = model.fit(x, t, y, num_epochs=3, batch_size=20, seed=5, num_fits=3)
    assert len(model.members) == 2 and len(losses) == 3 * 3
    pyro.set_rng_seed(1)
    single = CEVAE(4, "normal", **SMALL)
    single.fit(x, t, y, num_epochs=3, batch_size=20, seed=5)
    # member 0 is the plain fit with the same seed; the others differ (seeds 6, 7)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), single.state_dict().values()))
    assert not torch.equal(model.members[0].py0[0].weight, model.py0[0].weight)
    pyro.set_rng_seed(0)
    posterior = model.effect_inference(x, num_samples=40, method="posterior")
    pyro.set_rng_seed(0)
    alone = single.effect_inference(x, num_samples=40)
    torch.testing.assert_close(posterior.mean, alone.mean)
    pyro.set_rng_seed(0)
    pooled = model.effect_inference(x, num_samples=40)
    assert pooled.num_samples == 3 * 40  # every member's draws
    # the pooled mean is the members' average: between their smallest and largest
    per_member = torch.stack([m.effect_inference(x, num_samples=400, method="posterior").mean
                              for m in (model, *model.members)])
    assert ((pooled.upper - pooled.lower).mean() >= (posterior.upper - posterior.lower).mean()), "wider"
    pyro.set_rng_seed(0)
    ite = model.ite(x, num_samples=400)
    assert ((ite >= per_member.min(0).values - 0.05) & (ite <= per_member.max(0).values + 0.05)).all()
    lower, upper = model.effect_interval(x, num_samples=40, method="posterior")
    assert lower.shape == upper.shape == (60,)
    # the members survive save / load
    with tempfile.TemporaryDirectory() as d:
        model.save(Path(d) / "ensemble.pt")
        loaded = CEVAE.load(Path(d) / "ensemble.pt")
    assert len(loaded.members) == 2
    assert torch.equal(loaded.members[1].py1[0].weight, model.members[1].py1[0].weight)
    with pytest.raises(ValueError, match="num_fits must be a positive integer"):
        CEVAE(4, "normal", **SMALL).fit(x, t, y, num_epochs=1, num_fits=0)
    with pytest.raises(ValueError, match=r"method must be one of \['ensemble', 'mixture', 'posterior'\]"):
        model.effect_inference(x, method="bootstrap")
    pyro.set_rng_seed(0)
    mixture = model.effect_inference(x, num_samples=40, method="mixture")
    pyro.set_rng_seed(0)
    rubin = model.effect_inference(x, num_samples=40)
    torch.testing.assert_close(rubin.mean, mixture.mean)  # same draws, other intervals
    assert not torch.equal(rubin.lower, mixture.lower)


def test_rubins_rules_interval_against_a_hand_computation():
    """Three fits, two units, four draws each: T = W + (1 + 1/M) B and
    nu = (M - 1)(1 + W / ((1 + 1/M) B))^2, computed by hand; fits that agree give
    the normal interval of the within-fit variance."""
    from scipy import stats

    from pvae.causal.cevae import _rubin_interval

    offsets = torch.tensor([-1.5, -0.5, 0.5, 1.5])  # mean 0, unbiased variance 5/3
    member_means = torch.tensor([[0.0, 2.0], [1.0, 2.0], [2.0, 2.0]])  # unit 2: the fits agree
    draws = member_means[:, None, :] + torch.tensor([1.0, 0.5])[None, None, :] * offsets[None, :, None]
    lower, upper = _rubin_interval(draws.double(), 0.05)
    within = torch.tensor([5 / 3, 0.25 * 5 / 3], dtype=torch.float64)
    between = torch.tensor([(1 + 1 / 3) * 1.0, 0.0], dtype=torch.float64)  # var of (0, 1, 2) = 1
    nu0 = 2 * (1 + within[0] / between[0]) ** 2
    half0 = stats.t.ppf(0.975, float(nu0)) * math.sqrt(within[0] + between[0])
    half1 = stats.norm.ppf(0.975) * math.sqrt(within[1])
    torch.testing.assert_close(lower, torch.tensor([1.0 - half0, 2.0 - half1], dtype=torch.float64))
    torch.testing.assert_close(upper, torch.tensor([1.0 + half0, 2.0 + half1], dtype=torch.float64))


def _heterogeneous_effect_data(n: int, g: torch.Generator):
    """Observed confounding and a unit effect that is a function of x: tau(x) = 2 + x_3."""
    x = torch.randn(n, 5, generator=g)
    t = torch.bernoulli(torch.sigmoid(0.8 * x[:, 0]), generator=g)
    mu0 = x[:, 0] + 0.5 * x[:, 1] ** 2
    tau = 2.0 + x[:, 2]
    return x, t, mu0 + t * tau + torch.randn(n, generator=g), tau


def test_ensemble_intervals_cover_known_unit_effects_at_about_the_nominal_rate():
    """95% intervals of tau(x) on 500 new units, from ensembles of three fits (default
    preset), three data sets and seeds. One fit's coverage is a mean over 500 units
    (binomial sd 0.0097 at 0.95), though its units share one network's error, so fits
    spread more (measured: Rubin 0.942, 0.990, 0.964; the pooled draws 0.718, 0.958,
    0.946; one posterior 0.498, 0.806, 0.920). The mean over the three fits must lie
    within [0.95 - 5 sd, 0.95 + 4 sd] = [0.90, 0.99]: the upper end fails intervals
    that are merely wide; one model's posterior, which ignores the networks' error,
    must cover less."""
    covers: dict[str, list[float]] = {"ensemble": [], "posterior": []}
    for seed in range(3):
        g = torch.Generator().manual_seed(100 + seed)
        x, t, y, _ = _heterogeneous_effect_data(600, g)
        x_new, _, _, tau = _heterogeneous_effect_data(500, g)
        pyro.set_rng_seed(seed)
        model = CEVAE(5, "normal", latent_dim=4, hidden_dim=32, num_layers=2, num_samples=50)
        model.fit(x, t, y, num_epochs=60, batch_size=100, seed=seed, num_fits=3)
        for method, values in covers.items():
            est = model.effect_inference(x_new, method=method)
            values.append(float(((est.lower <= tau) & (tau <= est.upper)).float().mean()))
    ensemble, posterior = (sum(v) / 3 for v in covers.values())
    assert 0.90 <= ensemble <= 0.99, covers
    assert posterior < ensemble - 0.05, covers


def test_pvae_fit_trains_a_cevae_as_cevae_fit_sets_it_up():
    # before: pvae.fit(cevae, ...) used the plain ELBO (q(t | x), q(y | t, x) never trained: the
    # guide's auxiliary sites are observed), no standardisation and no binary columns
    import pvae
    from pvae.causal.cevae import CEVAEObjective

    pyro.set_rng_seed(0)
    x, t, y = _data("normal", 60)
    model = CEVAE(4, "normal", **SMALL)
    before = {k: v.clone() for k, v in model.named_parameters()}
    pyro.set_rng_seed(1)
    pvae.fit(model, (x, t, y), num_epochs=2, batch_size=20, progress=False)
    assert [k for k, v in model.named_parameters() if torch.equal(v, before[k])] == []  # every head trained
    reference = CEVAE(4, "normal", **SMALL)
    reference._set_standardisation(x, y, t)
    for name in ("binary_mask", "x_loc", "x_scale", "y_loc", "y_scale"):
        assert torch.equal(getattr(model, name), getattr(reference, name)), name
    assert bool(model.binary_mask[-2:].all()) and not bool(model.binary_mask[:2].any())
    # the objective pvae.fit takes by default is CEVAE's own
    assert isinstance(pvae.infer.make_objective(CEVAE.objectives[0]), CEVAEObjective)
    assert math.isfinite(model.ate(x))
    with pytest.raises(RuntimeError, match="keeps no held-out rows"):
        model.ate_interval(x)
    with pytest.raises(ValueError, match="trains correctly with objective 'cevae', not 'elbo'"):
        pvae.fit(model, (x, t, y), num_epochs=1, objective="elbo")
    with pytest.raises(ValueError, match="one particle"):
        pvae.fit(model, (x, t, y), num_epochs=1, num_particles=2)


def test_a_diverging_fit_raises_pvae_fits_error_with_the_last_good_state():
    from pvae.infer import TrainingDivergedError

    pyro.set_rng_seed(0)
    x, t, y = _data("normal", 40)
    model = CEVAE(4, "normal", **SMALL)
    with pytest.raises(TrainingDivergedError, match="CEVAE training diverged") as err:
        model.fit(x, t, y, num_epochs=3, batch_size=20, learning_rate=1e9, validation_fraction=0.0, seed=0)
    assert err.value.result.program is model and err.value.result.stopped_early is False
    assert all(p.isfinite().all() for p in model.parameters())  # back at the last good epoch
