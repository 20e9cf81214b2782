"""``pvae.fit`` and its engine: the divergence guard against non-finite gradients,
resuming a learning-rate schedule, and the checks of fit's options (audit of the
training engine, findings 2-7 and 10)."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import pvae
from pvae.infer import Callback, LearningRateSchedule, load_checkpoint
from pvae.infer.callbacks import ClipGradNorm, DivergenceGuard
from pvae.infer import engine
from pvae.infer.engine import TrainState, adam, minibatches, run
from pvae.infer.capture import TrainStep
from pvae.infer.objectives import make_objective
from pvae.models import VAE, ModelGuidePair


def _vae(seed: int = 11) -> VAE:
    pyro.set_rng_seed(seed)
    return VAE(16, latent_dim=2, hidden_dims=(8,))


def _binary(n: int = 120, d: int = 16, seed: int = 0) -> torch.Tensor:
    return (torch.rand(n, d, generator=torch.Generator().manual_seed(seed)) < 0.4).float()


def _params(module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def _finite(tensors) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


# -- a program whose loss is finite while its gradient is NaN, where FLAG says ---------------
class _NanGradPair:
    """A normal-normal pair with an encoder ``net``; while ``flag["on"]`` the guide's location
    gains ``0 * sqrt(|loc - loc|)``: the same value, a NaN gradient (0 * inf)."""

    def __init__(self) -> None:
        torch.manual_seed(3)
        self.net = torch.nn.Linear(1, 1)
        self.flag = {"on": False}
        self.pair = ModelGuidePair(self.model, self.guide)

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(self, x):
        pyro.module("enc", self.net)
        with pyro.plate("data", x.shape[0]):
            loc = self.net(x.unsqueeze(-1)).squeeze(-1)
            if self.flag["on"]:
                loc = loc + 0.0 * (loc - loc.detach()).abs().sqrt()
            pyro.sample("z", dist.Normal(loc, 1.0))


class _SwitchOn(Callback):
    """Turns the NaN gradient on for the steps ``(epoch, step)`` in ``when``."""

    def __init__(self, flag: dict, when) -> None:
        self.flag, self.when = flag, set(when)

    def on_step_start(self, state, batch) -> None:
        self.flag["on"] = (state.epoch, state.step) in self.when


# -- 2. non-finite gradients -----------------------------------------------------------------
def test_nan_gradient_on_an_epochs_last_step_never_becomes_the_good_state_or_the_checkpoint(tmp_path):
    # Audit r3b: the NaN gradient on epoch 1's last step (4 steps an epoch) used to make NaN
    # parameters the "last good" state, overwrite the epoch-1 checkpoint with them, and
    # "restore" NaN at epoch 2 with a message saying the checkpoint was intact.
    p = _NanGradPair()
    x = torch.randn(40, generator=torch.Generator().manual_seed(0))
    at_epoch_0 = {}

    def keep(row):
        if row["epoch"] == 0:
            at_epoch_0["params"] = _params(p.net)

    with pytest.raises(pvae.TrainingDivergedError) as info:
        pvae.fit(p.pair, x, num_epochs=4, batch_size=10, checkpoint_dir=tmp_path, seed=0, diagnostics_every=None,
                 callback=keep, callbacks=[_SwitchOn(p.flag, {(1, 3)})])
    msg = str(info.value)
    assert "during epoch 1" in msg and "'enc$$$weight'" in msg, msg
    assert "restored to the end of epoch 0" in msg and "is intact" in msg, msg
    assert _finite(p.net.parameters())
    assert _same(_params(p.net), at_epoch_0["params"])
    ckpt = load_checkpoint(tmp_path)
    assert ckpt["epoch"] == 0 and _finite(ckpt["state"]["params"])
    assert _same(ckpt["state"]["params"], at_epoch_0["params"])
    assert [r["epoch"] for r in info.value.result.history] == [0]


def test_nan_gradient_on_the_runs_last_step_raises_instead_of_returning_nan_weights(tmp_path):
    # Audit r3: one batch per epoch, one epoch: the NaN update was the run's last, and fit
    # returned NaN weights with no error (and wrote them as the checkpoint).
    p = _NanGradPair()
    before = _params(p.net)
    x = torch.randn(40, generator=torch.Generator().manual_seed(0))
    p.flag["on"] = True
    with pytest.raises(pvae.TrainingDivergedError, match="during epoch 0") as info:
        pvae.fit(p.pair, x, num_epochs=1, batch_size=40, checkpoint_dir=tmp_path, seed=0, diagnostics_every=None)
    assert "their values before training" in str(info.value)
    assert _same(_params(p.net), before)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_nan_gradient_mid_epoch_is_caught_at_the_next_step_and_named():
    p = _NanGradPair()
    x = torch.randn(40, generator=torch.Generator().manual_seed(0))
    with pytest.raises(pvae.TrainingDivergedError) as info:
        pvae.fit(p.pair, x, num_epochs=3, batch_size=10, seed=0, diagnostics_every=None,
                 callbacks=[_SwitchOn(p.flag, {(1, 1)})])
    msg = str(info.value)
    assert "at epoch 1 step 2" in msg and "were already NaN or infinite" in msg and "enc$$$bias" in msg, msg
    assert _finite(p.net.parameters())


def test_engine_checks_parameters_once_an_epoch_for_any_guard_and_without_one():
    # The shared path CEVAE trains on: its guard builds a RuntimeError; without a guard the
    # engine raises its own NonFiniteParametersError. Either way the parameters are restored.
    p = _NanGradPair()
    x = torch.randn(20, generator=torch.Generator().manual_seed(0))

    def state():
        params = list(p.net.parameters())
        return TrainState(p.pair, make_objective("elbo"), params, adam(params, 1e-3),
                          TrainStep(p.pair, make_objective("elbo"), params), num_epochs=2, steps_per_epoch=2)

    before = _params(p.net)
    p.flag["on"] = True
    guard = DivergenceGuard(None, lambda message, _: RuntimeError(f"CEVAE {message}"), 1e-3)
    with pyro.validation_enabled(False):
        with pytest.raises(RuntimeError, match="CEVAE training diverged: the parameters .* during epoch 0"):
            run(state(), lambda: minibatches((x,), 20, shuffle=False), [guard])
        assert _same(_params(p.net), before)
        with pytest.raises(engine.NonFiniteParametersError, match="during epoch 0") as info:
            run(state(), lambda: minibatches((x,), 20, shuffle=False), [])
    assert info.value.epoch == 0 and info.value.names == ["enc$$$weight", "enc$$$bias"]
    assert _same(_params(p.net), before)


def test_non_finite_parameters_before_training_are_refused():
    # e.g. from a checkpoint written before the per-epoch check: no good state to train from
    p = _NanGradPair()
    with torch.no_grad():
        p.net.bias.fill_(math.inf)
    params = list(p.net.parameters())
    state = TrainState(p.pair, make_objective("elbo"), params, adam(params, 1e-3),
                       TrainStep(p.pair, make_objective("elbo"), params), num_epochs=1)
    with pytest.raises(engine.NonFiniteParametersError, match="are NaN or infinite before training starts"):
        run(state, lambda: minibatches((torch.zeros(4),), 4, shuffle=False), [])


# -- 3. resume with a learning-rate schedule ----------------------------------------------
@pytest.mark.parametrize("every", ["epoch", "step"])
def test_resume_continues_a_learning_rate_schedule_exactly(tmp_path, every):
    # Audit r2: the resumed run restarted the schedule at the initial rate.
    x = _binary()
    gamma = 0.5 if every == "epoch" else 0.8

    def schedule():
        return LearningRateSchedule(lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, gamma), every=every)

    kw = dict(batch_size=40, learning_rate=1e-2, seed=1, diagnostics_every=None)
    straight = _vae()
    res_a = pvae.fit(straight, x, num_epochs=4, checkpoint_dir=tmp_path / "a", callbacks=[schedule()], **kw)
    pvae.fit(_vae(), x, num_epochs=2, checkpoint_dir=tmp_path / "b", callbacks=[schedule()], **kw)
    resumed = _vae(seed=99)
    # another option of fit (callback=) on resume does not lose the schedule's state
    res_b = pvae.fit(resumed, x, num_epochs=4, checkpoint_dir=tmp_path / "b", resume=True,
                     callbacks=[schedule()], callback=lambda row: None, **kw)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in res_a.history]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in res_b.history] == strip
    assert [r["learning_rate"] for r in res_b.history][1] is not None
    assert _same(_params(resumed), _params(straight))


# -- 4. patience -----------------------------------------------------------------------------
def test_patience_0_never_stops_early_as_in_cevae():
    # Audit r5: patience=0 stopped after epoch 0. Training on blank rows and validating on full
    # ones makes every epoch worse, so any patience >= 1 would stop; 0 means "never".
    xt, xv = torch.zeros(80, 16), torch.ones(20, 16)
    res = pvae.fit(_vae(), xt, num_epochs=4, batch_size=40, learning_rate=1e-2, validation_data=xv, patience=0,
                   seed=0, diagnostics_every=None)
    assert len(res.history) == 4 and res.stopped_early is False
    assert res.history[-1]["val_elbo"] < res.history[0]["val_elbo"]  # it would have stopped otherwise
    # 0 needs no validation data (nothing to stop on), as in CEVAE.fit
    assert len(pvae.fit(_vae(), xt, num_epochs=2, batch_size=40, patience=0, diagnostics_every=None).history) == 2


@pytest.mark.parametrize("patience", [-1, -3, 1.5, True, "2"])
def test_negative_or_non_integer_patience_is_refused(patience):
    with pytest.raises(ValueError, match="patience must be a non-negative integer"):
        pvae.fit(_vae(), torch.zeros(20, 16), num_epochs=2, validation_data=torch.ones(5, 16), patience=patience)


def test_numpy_integer_patience_is_accepted():
    res = pvae.fit(_vae(), torch.zeros(40, 16), num_epochs=3, batch_size=20, learning_rate=1e-2,
                   validation_data=torch.ones(10, 16), patience=np.int64(1), seed=0, diagnostics_every=None)
    assert res.stopped_early and len(res.history) == res.best_epoch + 2


# -- 5. clip_norm ----------------------------------------------------------------------------
@pytest.mark.parametrize("clip_norm", [0.0, -1.0, math.nan, 0])
def test_clip_norm_not_above_zero_is_refused(clip_norm):
    with pytest.raises(ValueError, match="clip_norm must be a number > 0"):
        pvae.fit(_vae(), _binary(), num_epochs=1, clip_norm=clip_norm)
    with pytest.raises(ValueError, match="clip_norm must be a number > 0"):
        ClipGradNorm(clip_norm)


# -- 6. the history's learning rate ---------------------------------------------------------
def test_history_learning_rate_is_the_rate_the_epoch_used():
    # Audit r9: the row held the next epoch's rate.
    used: dict[int, list[float]] = {}

    class Spy(Callback):
        def on_step_start(self, state, batch):
            used.setdefault(state.epoch, []).append(state.optimizer.param_groups[0]["lr"])

    for every in ("epoch", "step"):
        used.clear()
        sched = LearningRateSchedule(lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1),
                                     every=every)
        res = pvae.fit(_vae(), _binary(), num_epochs=3, batch_size=60, learning_rate=1.0, seed=0,
                       callbacks=[Spy(), sched], diagnostics_every=None, divergence_factor=None)
        # every="epoch": the epoch's one rate; every="step": the rate of its last update
        assert [r["learning_rate"] for r in res.history] == [used[e][-1] for e in range(3)], (every, used)


# -- 7. options that were silently dropped, and integer checks -------------------------------
@pytest.mark.parametrize("kw", [dict(batch_size=64.0), dict(num_epochs=True), dict(num_epochs=2.0),
                                dict(batch_size=False), dict(batch_size="64")])
def test_non_integer_num_epochs_or_batch_size_is_refused(kw):
    with pytest.raises(ValueError, match="must be a positive integer"):
        pvae.fit(_vae(), _binary(), **{"num_epochs": 1, **kw})


def test_numpy_integers_are_fine_for_num_epochs_and_batch_size():
    res = pvae.fit(_vae(), _binary(), num_epochs=np.int64(2), batch_size=np.int32(60), diagnostics_every=None)
    assert len(res.history) == 2


@pytest.mark.parametrize("kw", [dict(devices=2), dict(num_nodes=2), dict(accelerator="gpu")])
def test_distributed_options_without_a_strategy_are_refused(kw):
    with pytest.raises(ValueError, match="only act with strategy="):
        pvae.fit(_vae(), _binary(), num_epochs=1, **kw)


def test_strategy_passes_on_divergence_factor_and_diagnostics_and_refuses_restore_best_false(monkeypatch):
    pytest.importorskip("lightning")
    import pvae.lightning

    seen = {}

    def spy(program, data, **kw):
        seen.update(kw)
        return "ran"

    monkeypatch.setattr(pvae.lightning, "fit_distributed", spy)
    assert pvae.fit(_vae(), _binary(), strategy="ddp_spawn", divergence_factor=2.0, diagnostics_every=3,
                    patience=0, num_epochs=1) == "ran"
    assert seen["divergence_factor"] == 2.0 and seen["diagnostics_every"] == 3
    with pytest.raises(ValueError, match="restore_best=False"):
        pvae.fit(_vae(), _binary(), strategy="ddp_spawn", restore_best=False, num_epochs=1)


# -- 10. resuming a finished, early-stopped run ---------------------------------------------
def test_resuming_an_early_stopped_run_trains_no_further(tmp_path):
    # Audit r10: the rerun trained another epoch and appended a row.
    xt, xv = torch.zeros(80, 16), torch.ones(20, 16)
    kw = dict(validation_data=xv, batch_size=40, learning_rate=1e-2, patience=1, seed=0, diagnostics_every=None)
    first_program = _vae()
    first = pvae.fit(first_program, xt, num_epochs=10, checkpoint_dir=tmp_path, **kw)
    assert first.stopped_early and [r["epoch"] for r in first.history] == [0, 1]
    saved = (tmp_path / "checkpoint.pt").read_bytes()
    again_program = _vae(seed=5)
    again = pvae.fit(again_program, xt, num_epochs=10, checkpoint_dir=tmp_path, resume=True, **kw)
    assert again.stopped_early and again.best_epoch == first.best_epoch
    assert [r["epoch"] for r in again.history] == [0, 1]
    assert (tmp_path / "checkpoint.pt").read_bytes() == saved
    assert _same(_params(again_program), _params(first_program))  # the best epoch, restored
