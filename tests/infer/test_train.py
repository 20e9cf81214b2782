"""``pvae.fit``: learning, history, hand-written programs, resume, divergence,
data checks, checkpoint safety, early stopping, KL warm-up, data formats."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import lru_cache

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import constraints
from torch.utils.data import DataLoader, TensorDataset

import pvae
from pvae.infer import CheckpointError, ElboObjective, load_checkpoint
from pvae.models import VAE, ModelGuidePair, SupportError

HISTORY_KEYS = {"epoch", "loss", "elbo", "reconstruction", "kl", "kl_weight", "seconds"}
VAL_KEYS = {"val_elbo", "val_reconstruction", "val_kl"}


@lru_cache(maxsize=1)
def _digits() -> torch.Tensor:
    from sklearn.datasets import load_digits

    return torch.tensor(load_digits().data / 16.0 > 0.5, dtype=torch.float32)  # (1797, 64)


def _vae(latent_dim: int = 4, **kw) -> VAE:
    return VAE(64, latent_dim=latent_dim, hidden_dims=(32,), **kw)


def _params(program) -> list[torch.Tensor]:
    return [p.detach().clone() for p in program.parameters()]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def _without_seconds(history):
    # wall time varies; collapse diagnostics are a report added at the last epoch
    # of each fit call, so an interrupted run has them one epoch earlier too
    skip = {"seconds", "active_units", "mutual_information"}
    return [{k: v for k, v in row.items() if k not in skip} for row in history]


@torch.no_grad()
def _val_elbo(vae, x, num_particles=10) -> float:
    return ElboObjective(num_particles)(vae.model, vae.guide, (x,), {}).elbo.item() / x.shape[0]


# -- learning and history ------------------------------------------------------------
def test_digits_training_raises_validation_elbo_and_history_is_consistent():
    X = _digits()
    xt, xv = X[:1000], X[1000:1300]
    vae = _vae()
    before = _val_elbo(vae, xv)
    result = pvae.fit(vae, xt, num_epochs=5, batch_size=100, learning_rate=1e-2, validation_data=xv, seed=0)
    after = _val_elbo(vae, xv)
    # Margin 10 nats/image: the untrained decoder puts ~1/2 on every pixel
    # (64 log 2 = 44 nats); a model of each pixel's marginal frequency alone
    # scores -25.8 on these images, and 5 epochs measured -45.2 -> -26.3 / -25.8
    # (two init seeds), a gain of ~19 nats. 10 nats is half of that, and far
    # above the Monte Carlo standard error of each estimate (300 images x 10
    # particles: < 0.3 nats); a trainer that did not update, or updated the
    # wrong way, gains <= 0.
    assert after - before > 10.0, (before, after)

    assert result.program is vae and not vae.training
    assert [row["epoch"] for row in result.history] == list(range(5))
    for row in result.history:
        # collapse diagnostics come with the last epoch (diagnostics_every=10 > 5 epochs)
        diag = {"active_units", "mutual_information"} if row["epoch"] == 4 else set()
        assert set(row) == HISTORY_KEYS | VAL_KEYS | diag, set(row)
        assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in row.values()), row
        # per-datum averages of float32 batch totals: 1e-3 nats absolute
        assert row["elbo"] == pytest.approx(row["reconstruction"] - row["kl"], abs=1e-3)
        assert row["val_elbo"] == pytest.approx(row["val_reconstruction"] - row["val_kl"], abs=1e-3)
        assert row["loss"] == pytest.approx(-row["elbo"], abs=1e-3)  # beta = 1, no warm-up
        assert row["kl_weight"] == 1.0
        assert row["seconds"] >= 0
    val = [row["val_elbo"] for row in result.history]
    assert result.best_epoch == max(range(5), key=val.__getitem__)
    assert result.stopped_early is False and result.checkpoint_path is None
    # the history's last validation ELBO is the model's (1 particle vs 10: 1 nat)
    assert val[-1] == pytest.approx(after, abs=1.0)
    assert result.to_dict()["history"][-1]["val_elbo"] == val[-1]


def test_history_elbo_is_beta_1_while_the_loss_uses_beta():
    X = _digits()[:200]
    vae = _vae(beta=3.0)
    result = pvae.fit(vae, X, num_epochs=1, batch_size=50, seed=0)
    row = result.history[0]
    assert row["elbo"] == pytest.approx(row["reconstruction"] - row["kl"], abs=1e-3)
    assert row["loss"] == pytest.approx(-(row["reconstruction"] - 3.0 * row["kl"]), abs=1e-3)
    assert abs(row["kl"]) > 1e-2  # otherwise the check above could not tell beta apart


# -- hand-written programs ------------------------------------------------------------
def _normal_normal_model(x, idx):
    # z_i ~ N(0, 1), x_i | z_i ~ N(z_i, 1): posterior N(x_i / 2, 1/2), evidence N(x_i; 0, 2)
    with pyro.plate("data", 20, subsample=idx):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def _per_datum_guide(x, idx):
    loc = pyro.param("q_loc", torch.zeros(20))
    scale = pyro.param("q_scale", torch.ones(20), constraint=constraints.positive)
    with pyro.plate("data", 20, subsample=idx):
        pyro.sample("z", dist.Normal(loc[idx], scale[idx]))


def test_hand_written_pair_with_per_datum_params_trains():
    x = 2 * torch.randn(20)
    idx = torch.arange(20)  # passed with the data so shuffling keeps x_i with q_i
    pair = ModelGuidePair(_normal_normal_model, _per_datum_guide)
    result = pvae.fit(pair, (x, idx), num_epochs=100, batch_size=10, learning_rate=0.05, seed=0)
    store = pyro.get_param_store()
    assert set(store.keys()) == {"q_loc", "q_scale"}
    elbos = [row["elbo"] for row in result.history]
    late = sum(elbos[-10:]) / 10
    log_evidence = dist.Normal(0.0, math.sqrt(2.0)).log_prob(x).mean().item()
    # measured: -3.56 -> -2.50 with log p(x) = -2.47; a 0.5-nat gain is > 5 SE
    # of the 10-epoch average (1 particle, 20 data: SE ~ 0.07)
    assert late - elbos[0] > 0.5, (elbos[0], late)
    assert late < log_evidence + 0.25, (late, log_evidence)  # a lower bound, within MC error
    # the trained values are the param store's, and they approach the posterior
    q_loc, q_scale = store["q_loc"].detach(), store["q_scale"].detach()
    err_before = (x / 2).abs().mean()
    err_after = (q_loc - x / 2).abs().mean()
    assert err_after < 0.5 * err_before, (err_before, err_after)
    assert (q_scale - math.sqrt(0.5)).abs().mean() < 0.15, q_scale


def test_hand_written_pair_with_pyro_module_trains_its_module():
    net = torch.nn.Linear(1, 1)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        pyro.module("encoder", net)
        scale = pyro.param("q_scale", torch.tensor(1.0), constraint=constraints.positive)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(net(x.unsqueeze(-1)).squeeze(-1), scale))

    x = 2 * torch.randn(400)
    result = pvae.fit(ModelGuidePair(model, guide), x, num_epochs=40, batch_size=100, learning_rate=0.05, seed=0)
    assert result.history[-1]["elbo"] > result.history[0]["elbo"] + 0.5
    store = pyro.get_param_store()
    assert set(store.keys()) == {"encoder$$$weight", "encoder$$$bias", "q_scale"}
    assert store["encoder$$$weight"] is net.weight
    # exact amortised posterior: loc = x / 2, scale = sqrt(1/2). Adam noise at
    # lr 0.05 with 1 particle is ~0.05 (measured 0.508, -0.019, 0.738).
    assert net.weight.item() == pytest.approx(0.5, abs=0.1)
    assert net.bias.item() == pytest.approx(0.0, abs=0.1)
    assert store["q_scale"].item() == pytest.approx(math.sqrt(0.5), abs=0.1)


# -- resume -----------------------------------------------------------------------------
def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    X = _digits()
    xt, xv = X[:300], X[300:400]
    kw = dict(batch_size=64, learning_rate=5e-3, validation_data=xv, seed=1)
    pyro.set_rng_seed(11)
    straight = _vae()
    res_a = pvae.fit(straight, xt, num_epochs=4, checkpoint_dir=tmp_path / "a", **kw)

    pyro.set_rng_seed(11)  # the interrupted run starts from the same init
    pvae.fit(_vae(), xt, num_epochs=2, checkpoint_dir=tmp_path / "b", **kw)
    assert load_checkpoint(tmp_path / "b")["epoch"] == 1
    resumed = _vae()  # a fresh object, constructed identically (its init differs)
    assert not _same(_params(resumed), _params(straight))
    res_b = pvae.fit(resumed, xt, num_epochs=4, checkpoint_dir=tmp_path / "b", resume=True, **kw)

    assert _same(_params(resumed), _params(straight))
    assert _without_seconds(res_b.history) == _without_seconds(res_a.history)
    assert res_b.best_epoch == res_a.best_epoch
    assert load_checkpoint(tmp_path / "b")["epoch"] == 3


def test_resume_with_early_stopping_reproduces_an_uninterrupted_run(tmp_path):
    # Train on blank images, validate on full ones: every epoch makes the
    # validation ELBO worse, so the best epoch is 0 and patience=2 stops after
    # epoch 2, restoring epoch 0's parameters. Interrupting after epoch 0 and
    # resuming must end in the same place (fit's docstring: "with the same seed
    # this reproduces an uninterrupted run exactly").
    kw = dict(
        validation_data=torch.ones(50, 64), batch_size=50, learning_rate=1e-2, patience=2, seed=0
    )
    xt = torch.zeros(200, 64)
    pyro.set_rng_seed(11)
    straight = _vae()
    res_a = pvae.fit(straight, xt, num_epochs=10, checkpoint_dir=tmp_path / "a", **kw)
    assert res_a.stopped_early and res_a.best_epoch == 0 and len(res_a.history) == 3

    pyro.set_rng_seed(11)
    pvae.fit(_vae(), xt, num_epochs=1, checkpoint_dir=tmp_path / "b", **kw)
    resumed = _vae()
    res_b = pvae.fit(resumed, xt, num_epochs=10, checkpoint_dir=tmp_path / "b", resume=True, **kw)
    assert _without_seconds(res_b.history) == _without_seconds(res_a.history)
    assert res_b.stopped_early and res_b.best_epoch == 0
    assert _same(_params(resumed), _params(straight)), "resumed run did not restore the best epoch"


def test_resume_into_another_program_raises_checkpoint_error(tmp_path):
    X = _digits()[:100]
    pvae.fit(_vae(latent_dim=4), X, num_epochs=1, batch_size=50, checkpoint_dir=tmp_path)
    other = _vae(latent_dim=5)
    before = _params(other)
    with pytest.raises(CheckpointError, match="VAE"):
        pvae.fit(other, X, num_epochs=2, batch_size=50, checkpoint_dir=tmp_path, resume=True)
    assert _same(_params(other), before)


# -- divergence -------------------------------------------------------------------------
def test_divergence_in_first_epoch_names_epoch_and_step_and_restores_initial_params():
    # Adam's first step moves every weight by ~learning_rate, so with 1e30 the
    # second step's forward pass overflows: deterministic NaN at epoch 0 step 1.
    X = _digits()[:200]
    vae = _vae()
    before = _params(vae)
    with pytest.raises(pvae.TrainingDivergedError) as info:
        pvae.fit(vae, X, num_epochs=3, batch_size=50, learning_rate=1e30, seed=0)
    msg = str(info.value)
    assert "epoch 0 step 1" in msg, msg
    assert "learning_rate" in msg
    assert _same(_params(vae), before)  # restored to the state before training
    assert info.value.result.history == ()


def test_divergence_in_first_epoch_does_not_mention_epoch_minus_1():
    # There is no "end of epoch -1": the parameters go back to their values
    # before training, and the message should say so.
    vae = _vae()
    with pytest.raises(pvae.TrainingDivergedError) as info:
        pvae.fit(vae, _digits()[:200], num_epochs=3, batch_size=50, learning_rate=1e30, seed=0)
    msg = str(info.value)
    assert "epoch -1" not in msg, f"message refers to a nonexistent epoch: {msg}"


def test_learning_rate_1e6_is_caught_as_divergence_although_the_loss_stays_finite():
    # With lr=1e6 Adam moves weights by ~1e6 per step; the Bernoulli loss stays
    # finite (~1e29 per image: binary_cross_entropy_with_logits is stable) but
    # explodes past 1000x its first value (~44 nats), which fit calls divergence.
    X = _digits()[:200]
    vae = _vae()
    before = _params(vae)
    with pytest.raises(pvae.TrainingDivergedError, match="exceeded 1000x its first value") as info:
        pvae.fit(vae, X, num_epochs=3, batch_size=50, learning_rate=1e6, seed=0)
    assert "epoch 0 step" in str(info.value)
    assert _same(_params(vae), before)
    # with the size criterion off, only NaN/inf would stop it: the run completes
    result = pvae.fit(_vae(), X, num_epochs=1, batch_size=50, learning_rate=1e6, seed=0, divergence_factor=None)
    assert result.history[0]["loss"] > 1e3 * 44


def test_divergence_after_good_epochs_keeps_the_last_checkpoint(tmp_path):
    # Deterministic divergence in epoch 2: after epoch 1 (checkpoint written),
    # the callback overwrites a decoder weight with inf, so epoch 2's first loss
    # is NaN. fit must restore the end-of-epoch-1 parameters and leave the
    # epoch-1 checkpoint in place.
    X = _digits()[:200]
    vae = _vae()
    at_epoch_1 = {}

    def poison(row):
        if row["epoch"] == 1:
            at_epoch_1["params"] = _params(vae)
            with torch.no_grad():
                vae.decoder[0].weight.fill_(math.inf)

    with pytest.raises(pvae.TrainingDivergedError) as info:
        pvae.fit(vae, X, num_epochs=4, batch_size=50, checkpoint_dir=tmp_path, callback=poison, seed=0)
    msg = str(info.value)
    assert "epoch 2 step 0" in msg, msg
    assert all(torch.isfinite(p).all() for p in vae.parameters())
    assert _same(_params(vae), at_epoch_1["params"])
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["epoch"] == 1 and len(ckpt["history"]) == 2
    assert [r["epoch"] for r in info.value.result.history] == [0, 1]
    # the checkpoint holds the last good parameters, and they load into a VAE
    fresh = _vae()
    fresh.load_state_dict(ckpt["state"]["module"])
    assert _same(_params(fresh), at_epoch_1["params"])


def test_resume_with_a_diverging_learning_rate_diverges_and_keeps_the_checkpoint(tmp_path):
    # The recipe from the brief: 2 good epochs, then resume with learning_rate
    # 1e30. The new learning rate must be used (it is an explicit argument), so
    # epoch 2 diverges; the epoch-1 checkpoint survives.
    X = _digits()[:200]
    vae = _vae()
    pvae.fit(vae, X, num_epochs=2, batch_size=50, learning_rate=1e-3, checkpoint_dir=tmp_path, seed=1)
    good = _params(vae)
    with pytest.raises(pvae.TrainingDivergedError) as info:
        pvae.fit(
            vae, X, num_epochs=4, batch_size=50, learning_rate=1e30,
            checkpoint_dir=tmp_path, resume=True, seed=1,
        )
    assert "epoch 2" in str(info.value)
    ckpt = load_checkpoint(tmp_path)
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(p).all() for p in vae.parameters())
    assert _same(_params(vae), good)


# -- data checks -----------------------------------------------------------------------
def test_nan_without_mask_fails_before_training(tmp_path):
    X = _digits()[:100].clone()
    X[3, 5] = float("nan")
    vae = _vae()
    before = _params(vae)
    with pytest.raises(ValueError, match="mask"):
        pvae.fit(vae, X, num_epochs=1, batch_size=50, checkpoint_dir=tmp_path)
    assert _same(_params(vae), before)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_nan_in_validation_data_fails_before_training():
    X = _digits()[:100]
    bad = X[:20].clone()
    bad[0, 0] = float("nan")
    vae = _vae()
    before = _params(vae)
    with pytest.raises(ValueError, match="mask"):
        pvae.fit(vae, X, num_epochs=1, batch_size=50, validation_data=bad)
    assert _same(_params(vae), before)


def test_off_support_data_raises_support_error_before_training():
    X = _digits()[:100] * 2.0  # {0, 2}: not Bernoulli data
    vae = _vae()
    before = _params(vae)
    with pytest.raises(SupportError, match="bernoulli"):
        pvae.fit(vae, X, num_epochs=1, batch_size=50)
    assert _same(_params(vae), before)


# -- checkpoint safety -------------------------------------------------------------------
@dataclass
class _Foreign:
    weights: list


class _Exploit:
    """Unpickling this creates a directory: proof that code ran."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def _write(path, obj=None, raw: bytes | None = None):
    path.parent.mkdir(parents=True, exist_ok=True)
    if raw is not None:
        path.write_bytes(raw)
    else:
        torch.save(obj, path)
    return path


def test_corrupt_checkpoint_raises_checkpoint_error(tmp_path):
    g = torch.Generator().manual_seed(0)
    raw = bytes(torch.randint(0, 256, (4096,), generator=g, dtype=torch.uint8).tolist())
    path = _write(tmp_path / "checkpoint.pt", raw=raw)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)
    # a truncated real checkpoint too
    good = tmp_path / "good"
    pvae.fit(_vae(), _digits()[:100], num_epochs=1, batch_size=50, checkpoint_dir=good)
    data = (good / "checkpoint.pt").read_bytes()
    trunc = _write(tmp_path / "trunc" / "checkpoint.pt", raw=data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_checkpoint(trunc)
    # and fit(resume=True) reports it instead of training from scratch
    vae = _vae()
    before = _params(vae)
    with pytest.raises(CheckpointError):
        pvae.fit(vae, _digits()[:100], num_epochs=2, batch_size=50, checkpoint_dir=tmp_path, resume=True)
    assert _same(_params(vae), before)


def test_missing_checkpoint_raises_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nowhere.pt")


def test_foreign_dict_without_format_tag_raises_checkpoint_error(tmp_path):
    vae = _vae()
    path = _write(tmp_path / "checkpoint.pt", {"epoch": 3, "state": vae.state_dict(), "history": []})
    with pytest.raises(CheckpointError, match="format tag"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError):
        pvae.fit(vae, _digits()[:100], num_epochs=4, batch_size=50, checkpoint_dir=tmp_path, resume=True)


def test_checkpoint_needing_a_custom_class_is_refused(tmp_path):
    path = _write(tmp_path / "foreign.pt", _Foreign([1.0, 2.0]))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_malicious_checkpoint_never_executes_code(tmp_path):
    marker = tmp_path / "pwned"
    path = _write(tmp_path / "ckpt" / "checkpoint.pt", {"format": "pvae-checkpoint-v1", "x": _Exploit(str(marker))})
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    with pytest.raises(CheckpointError):
        pvae.fit(_vae(), _digits()[:100], num_epochs=2, batch_size=50, checkpoint_dir=path.parent, resume=True)
    assert not marker.exists()
    # the file really is dangerous: a plain unpickle would have run the payload
    with open(path, "rb") as fh:
        torch.load(fh, weights_only=False)
    assert marker.exists()


# -- early stopping and KL warm-up ------------------------------------------------------
def test_early_stopping_stops_and_restores_the_best_epoch():
    # Blank training images, full validation images: each epoch of training
    # makes the validation ELBO worse (measured -56 -> -81 nats after one more
    # epoch), so with patience=1 the run stops after epoch 1 with best epoch 0.
    xt, xv = torch.zeros(200, 64), torch.ones(50, 64)
    kw = dict(validation_data=xv, batch_size=50, learning_rate=1e-2, seed=0)
    pyro.set_rng_seed(7)
    vae = _vae()
    result = pvae.fit(vae, xt, num_epochs=10, patience=1, **kw)
    assert result.stopped_early is True
    assert len(result.history) == 2 and result.best_epoch == 0
    assert result.history[1]["val_elbo"] < result.history[0]["val_elbo"]
    # restore_best: the final parameters are exactly those after epoch 0
    pyro.set_rng_seed(7)
    one_epoch = _vae()
    pvae.fit(one_epoch, xt, num_epochs=1, **kw)
    assert _same(_params(vae), _params(one_epoch))
    # without restore_best the run ends at epoch 1's parameters instead
    pyro.set_rng_seed(7)
    no_restore = _vae()
    res = pvae.fit(no_restore, xt, num_epochs=10, patience=1, restore_best=False, **kw)
    assert res.stopped_early and not _same(_params(no_restore), _params(one_epoch))


def test_no_early_stop_while_improving():
    X = _digits()
    result = pvae.fit(
        _vae(), X[:300], num_epochs=3, batch_size=50, learning_rate=1e-2,
        validation_data=X[300:400], patience=5, seed=0,
    )
    assert result.stopped_early is False and len(result.history) == 3


def test_patience_needs_validation_data():
    with pytest.raises(ValueError, match="validation_data"):
        pvae.fit(_vae(), _digits()[:100], num_epochs=1, patience=1)


def test_kl_warmup_rises_to_one():
    X = _digits()[:200]  # 4 steps per epoch
    n = 2
    result = pvae.fit(_vae(), X, num_epochs=4, batch_size=50, kl_warmup=n, seed=0)
    w = [row["kl_weight"] for row in result.history]
    # linear per step from 0 to 1 over n epochs: within epoch e the weight lies
    # in [e / n, (e + 1) / n], and is 1 from epoch n on
    for e, we in enumerate(w):
        assert min(1.0, e / n) <= we <= min(1.0, (e + 1) / n), w
    assert w[0] < w[1] < 1.0 and w[2:] == [1.0, 1.0], w


def test_kl_weight_enters_the_loss():
    # weight 0: the loss is minus the reconstruction term alone
    result = pvae.fit(_vae(), _digits()[:100], num_epochs=1, batch_size=50, kl_warmup=lambda e: 0.0, seed=0)
    row = result.history[0]
    assert row["kl_weight"] == 0.0
    assert row["loss"] == pytest.approx(-row["reconstruction"], abs=1e-3)
    assert abs(row["kl"]) > 1e-2  # so the check above distinguishes the weights


# -- data formats ---------------------------------------------------------------------
def test_dataloader_data_and_validation():
    X = _digits()
    vae = _vae()
    before = _params(vae)
    train = DataLoader(TensorDataset(X[:200]), batch_size=50, shuffle=True)
    val = DataLoader(TensorDataset(X[200:300]), batch_size=100)
    result = pvae.fit(vae, train, num_epochs=2, learning_rate=1e-2, validation_data=val, seed=0)
    assert len(result.history) == 2
    assert all(math.isfinite(row["val_elbo"]) for row in result.history)
    assert not _same(_params(vae), before)
    assert result.history[1]["elbo"] > result.history[0]["elbo"]


def test_tuple_of_data_and_mask():
    X = _digits()[:200].clone()
    mask = torch.rand(X.shape) < 0.7
    X[~mask] = float("nan")
    vae = _vae()
    result = pvae.fit(vae, (X, mask), num_epochs=2, batch_size=50, validation_data=(X[:50], mask[:50]), seed=0)
    assert all(math.isfinite(v) for row in result.history for v in row.values())
    # the same data in a DataLoader of (x, mask) batches
    loader = DataLoader(TensorDataset(X, mask), batch_size=50)
    result = pvae.fit(_vae(), loader, num_epochs=1, seed=0)
    assert math.isfinite(result.history[0]["elbo"])


def test_masked_fit_ignores_masked_values():
    # identical runs except for the values hidden by the mask: identical training
    X = _digits()[:100]
    mask = torch.rand(X.shape) < 0.7
    runs = []
    for filler in (float("nan"), 0.5):  # 0.5 is even off the Bernoulli support
        pyro.set_rng_seed(3)
        vae = _vae()
        pvae.fit(vae, (torch.where(mask, X, torch.tensor(filler)), mask), num_epochs=1, batch_size=50, seed=0)
        runs.append(_params(vae))
    assert _same(*runs)
