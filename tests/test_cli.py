"""The ``pvae`` command line, run in-process (smoke settings) and once as a subprocess."""

from __future__ import annotations

import csv
import gzip
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import pytest
import torch

import pvae
from pvae import cli
from pvae.analysis import plot_image, plot_latent_map, plot_reconstructions, plot_samples
from pvae.cli import main
from pvae.causal import CEVAE
from pvae.data import load_mnist
from pvae.infer import amortization_gap, site_log_probs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DEMO_FILES = ("training_curves.png", "reconstructions.png", "samples.png", "prototype.png", "latent_map.png")


def _is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 100 and path.read_bytes()[:8] == PNG_MAGIC


def _assert_one_line_error(capsys: pytest.CaptureFixture, *needles: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pvae: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return lines[0]


# a fit folder, the validation rows and the training rows pvae.fit was given
_FitRun = tuple[Path, tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]


@pytest.fixture(scope="module")
def fit_run(tmp_path_factory: pytest.TempPathFactory) -> _FitRun:
    """A smoke fit, and the validation and training rows :func:`pvae.fit` was given (recorded
    by a spy, so a test can check what ``evaluate`` and ``gap`` read without re-deriving the
    CLI's split)."""
    out = tmp_path_factory.mktemp("fit")
    seen: dict[str, Any] = {}
    real_fit = pvae.fit

    def spy(program: Any, data: Any, *args: Any, validation_data: Any = None, **kwargs: Any) -> Any:
        seen["validation_data"], seen["data"] = validation_data, data
        return real_fit(program, data, *args, validation_data=validation_data, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pvae, "fit", spy)
        assert main(["fit", "--data", "digits", "--smoke", "--quiet", "--seed", "1", "--out", str(out)]) == 0
    return out, tuple(seen["validation_data"]), tuple(seen["data"])


@pytest.fixture(scope="module")
def fit_dir(fit_run: _FitRun) -> Path:
    return fit_run[0]


def test_fit_writes_config_model_and_metrics(fit_dir: Path) -> None:
    for name in ("config.json", "metrics.json", "model.pt", "checkpoint.pt"):
        assert (fit_dir / name).is_file(), name
    metrics = json.loads((fit_dir / "metrics.json").read_text())
    config = json.loads((fit_dir / "config.json").read_text())
    assert metrics["epochs"] == 2 and len(metrics["history"]) == 2
    for part in ("train", "validation"):
        assert all(math.isfinite(metrics[part][k]) for k in ("elbo", "reconstruction", "kl")), metrics[part]
    assert config["model"]["input_dim"] == 64 and config["model"]["likelihood"] == "bernoulli"
    fingerprint = config["data"].pop("sha256")
    assert config["data"] == {"spec": "digits", "binarize": True, "limit": 512, "image_shape": [8, 8], "n_rows": 512}
    assert fingerprint == cli._fingerprint(cli._load_data("digits", True, "bernoulli", 512)[0].x)
    assert config["command"] == "fit"
    state = torch.load(fit_dir / "model.pt", weights_only=True)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())


def test_evaluate_matches_the_fit_validation_elbo(
    fit_run: _FitRun, capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    fit_dir, fit_validation, _ = fit_run
    evaluated: list[tuple[torch.Tensor, ...]] = []
    real_terms = cli._elbo_terms

    def spy(vae: pvae.VAE, tensors: tuple[torch.Tensor, ...], *args: Any) -> dict:
        evaluated.append(tensors)
        return real_terms(vae, tensors, *args)

    monkeypatch.setattr(cli, "_elbo_terms", spy)
    capsys.readouterr()
    assert main(["evaluate", str(fit_dir), "--num-particles", "8"]) == 0
    assert "ELBO" in capsys.readouterr().out
    report = json.loads((fit_dir / "evaluation.json").read_text())
    assert report["split"] == "validation" and report["n"] == 51  # 10% of the 512 smoke rows
    # exactly the rows (values and order) the fit validated on: another split's 51 rows fail here
    # (their ELBO differs from the fit's by < 0.2 nats, which no tolerance on the ELBO can tell apart)
    assert len(evaluated) == 1 and len(evaluated[0]) == len(fit_validation) == 1
    assert torch.equal(evaluated[0][0], fit_validation[0])
    # and the reported number is the 8-particle ELBO of those rows under the saved weights and
    # evaluate's seed (0): recomputed here from model.pt, same draws, so equal to rounding
    config = json.loads((fit_dir / "config.json").read_text())
    vae = pvae.VAE(**config["model"])
    vae.load_state_dict(torch.load(fit_dir / "model.pt", weights_only=True))
    vae.eval()
    pyro.set_rng_seed(0)
    with torch.no_grad():
        lp = site_log_probs(vae.model, vae.guide, fit_validation[0], num_particles=8)
    expected = lp.log_weight.mean(0).double().mean().item()
    assert report["elbo"]["mean"] == pytest.approx(expected, abs=1e-5), (report["elbo"], expected)
    # a units check only (fit's value is a 1-particle estimate from its own pass): the rows are checked above
    fitted = json.loads((fit_dir / "metrics.json").read_text())["validation"]["elbo"]
    assert abs(report["elbo"]["mean"] - fitted) < 3.0, (report["elbo"], fitted)
    assert report["reconstruction"]["mean"] - report["kl"]["mean"] == pytest.approx(report["elbo"]["mean"], abs=1e-3)


def test_evaluate_on_other_data(fit_dir: Path) -> None:
    assert main(["evaluate", str(fit_dir), "--data", "digits", "--num-particles", "2"]) == 0
    report = json.loads((fit_dir / "evaluation.json").read_text())
    assert report["split"] == "all" and report["n"] == 1797 and math.isfinite(report["elbo"]["mean"])


def _cells(fig: Any) -> list[np.ndarray]:
    """The image of every cell of a grid figure, row-major."""
    return [np.asarray(ax.images[0].get_array()) for ax in fig.axes if ax.images]


def test_demo_smoke_writes_every_figure_of_the_fitted_model(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The figures exist, and show what they say: the validation inputs above their
    reconstructions, the prototype decoded at z = 0, every digit's encoder mean (its first
    two principal components) coloured by that digit's own label."""
    from sklearn.decomposition import PCA

    from pvae.analysis import figures
    from pvae.data import load_digits

    drawn: dict[str, Any] = {}
    real_save, real_fit = figures._save, pvae.fit
    seen: dict[str, Any] = {}

    def save_spy(fig: Any, path: Any) -> Path:
        drawn[Path(path).name] = fig
        return real_save(fig, path)

    def fit_spy(*args: Any, validation_data: Any = None, **kwargs: Any) -> Any:
        seen["validation"] = validation_data[0]
        return real_fit(*args, validation_data=validation_data, **kwargs)

    monkeypatch.setattr(figures, "_save", save_spy)
    monkeypatch.setattr(pvae, "fit", fit_spy)
    out = tmp_path / "demo"
    assert main(["demo", "--smoke", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in DEMO_FILES:
        assert _is_png(out / name), name
        assert str(out / name) in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and math.isfinite(metrics["validation"]["elbo"])

    config = json.loads((out / "config.json").read_text())
    vae = pvae.VAE(**config["model"])
    vae.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    vae.eval()
    digits = load_digits(binarize=True)
    x_val = seen["validation"][:10]
    with torch.no_grad():
        x_hat = vae.reconstruct(x_val)
        prototype = vae.decode(torch.zeros(1, vae.latent_dim)).mean
        z_loc = vae.encode(digits.x)[0]
    cells = _cells(drawn["reconstructions.png"])
    assert len(cells) == 20
    for j in range(10):
        assert np.allclose(cells[j], x_val[j].reshape(8, 8).numpy())
        assert np.allclose(cells[10 + j], x_hat[j].reshape(8, 8).numpy(), atol=1e-6)
    (cell,) = _cells(drawn["prototype.png"])
    assert np.allclose(cell, prototype.reshape(8, 8).numpy(), atol=1e-6)
    samples = _cells(drawn["samples.png"])
    assert len(samples) == 64 and all(c.shape == (8, 8) and 0 <= c.min() and c.max() <= 1 for c in samples)
    points = drawn["latent_map.png"].axes[0].collections[0]
    assert np.array_equal(np.asarray(points.get_array()), digits.y.numpy())  # each digit its own label
    expected = PCA(n_components=2).fit_transform(z_loc.double().numpy())
    assert np.allclose(points.get_offsets(), expected, atol=1e-4)


def test_csv_with_missing_values_fits_with_a_mask(tmp_path: Path) -> None:
    rows = [[0.1 * i, "", 1.0 - 0.05 * i] if i % 3 == 0 else [0.1 * i, -0.2 * i, "nan"] for i in range(20)]
    path = tmp_path / "table.csv"
    path.write_text("a,b,c\n" + "\n".join(",".join(str(v) for v in r) for r in rows) + "\n")
    out = tmp_path / "fit"
    args = ["--data", f"csv:{path}", "--likelihood", "normal", "--epochs", "2", "--batch-size", "8"]
    assert main(["fit", *args, "--latent-dim", "2", "--hidden-dims", "16", "--quiet", "--out", str(out)]) == 0
    assert main(["evaluate", str(out)]) == 0
    report = json.loads((out / "evaluation.json").read_text())
    assert report["n"] == 2 and math.isfinite(report["elbo"]["mean"])


def _write(tmp_path: Path, name: str, text: str) -> str:
    (tmp_path / name).write_text(text)
    return str(tmp_path / name)


@pytest.mark.parametrize(
    "make_args, needle",
    [
        (lambda t: ["--data", "imagenet"], "--data must be"),
        (lambda t: ["--data", "mnist:"], "--data must be"),
        (lambda t: ["--data", f"mnist:{t / 'no-such-folder'}"], "MNIST folder not found"),
        (lambda t: ["--data", f"csv:{t / 'missing.csv'}"], "CSV file not found"),
        (lambda t: ["--data", "digits", "--likelihood", "gaussian"], "invalid choice: 'gaussian'"),
        (lambda t: ["--data", "digits", "--hidden-dims", "64,x"], "--hidden-dims"),
        (lambda t: ["--data", "digits", "--latent-dim", "0"], "--latent-dim"),
        (lambda t: ["--data", "csv:" + _write(t, "text.csv", "1,2\n3,oops\n")], "line 2, column 2: 'oops'"),
        (lambda t: ["--data", "csv:" + _write(t, "ragged.csv", "1,2\n3\n")], "expected 2 columns"),
        (lambda t: ["--data", "csv:" + _write(t, "inf.csv", "1,2\n3,inf\n")], "infinite"),
        # observed (non-NaN) values outside Bernoulli's support; the NaN is masked out
        (lambda t: ["--data", "csv:" + _write(t, "grey.csv", "0,1\n1,0.3\nnan,0\n")],
         "likelihood 'bernoulli' needs x in {0, 1}"),
    ],
)
def test_user_errors_are_one_line_with_status_2(tmp_path, capsys, make_args, needle) -> None:
    status = main(["fit", *make_args(tmp_path), "--smoke", "--quiet", "--out", str(tmp_path / "out")])
    assert status == 2
    _assert_one_line_error(capsys, needle)


def test_evaluate_rejects_garbage_weights(fit_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    shutil.copy(fit_dir / "config.json", tmp_path / "config.json")
    (tmp_path / "model.pt").write_bytes(b"\x00garbage, not a state_dict\xff" * 10)
    assert main(["evaluate", str(tmp_path)]) == 2
    line = _assert_one_line_error(capsys, "model.pt", "corrupt")
    assert "weights_only=False" not in line  # never suggest unpickling code


def test_evaluate_on_a_folder_without_a_fit(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["evaluate", str(tmp_path)]) == 2
    _assert_one_line_error(capsys, "config.json")


def test_divergence_exits_1_and_debug_reraises(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["fit", "--data", "digits", "--likelihood", "normal", "--learning-rate", "1e6", "--smoke", "--quiet",
            "--out", str(tmp_path)]
    assert main(args) == 1
    _assert_one_line_error(capsys, "diverged")
    with pytest.raises(ValueError, match="--data must be"):
        main(["fit", "--data", "nope", "--out", str(tmp_path), "--debug"])


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture) -> None:
    assert main([]) == 2
    _assert_one_line_error(capsys, "required")


@pytest.mark.parametrize("module", ["pvae", "pvae.cli"])
def test_help_runs_as_a_module(module: str) -> None:
    """``python -m pvae`` (pvae/__main__.py) and ``python -m pvae.cli`` both run the command line."""
    done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "{fit,evaluate,gap,effect,demo}" in done.stdout, done.stdout


def test_python_m_pvae_passes_the_exit_status_on(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "pvae", "gap", str(tmp_path / "none")], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.startswith("pvae: error: ") and "Traceback" not in done.stderr, done.stderr


def test_figures_without_image_shape_and_small_latents(tmp_path: Path) -> None:
    x = torch.rand(6, 5)
    assert _is_png(plot_reconstructions(x, x.flip(0), None, tmp_path / "rec.png", n=4))
    assert _is_png(plot_samples(torch.randn(3, 5), None, tmp_path / "samples.png"))
    assert _is_png(plot_image(torch.rand(64), (8, 8), tmp_path / "proto.png", title="z = 0"))
    assert _is_png(plot_latent_map(torch.randn(30, 2), torch.arange(30) % 3, tmp_path / "z2.png"))
    assert _is_png(plot_latent_map(torch.randn(30, 1), None, tmp_path / "z1.png"))
    with pytest.raises(ValueError, match="image_shape"):
        plot_samples(torch.rand(2, 5), (2, 2), tmp_path / "bad.png")


def test_evaluate_on_data_of_another_width_is_a_one_line_error(
    fit_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The fit has 64 columns (8x8 digits); a 5-column CSV used to end in torch's shape traceback."""
    path = _write(tmp_path, "five.csv", "\n".join(",".join(str((i * 5 + j) % 2) for j in range(5)) for i in range(8)))
    capsys.readouterr()
    assert main(["evaluate", str(fit_dir), "--data", f"csv:{path}", "--num-particles", "2"]) == 2
    _assert_one_line_error(capsys, "5 columns", "64")


# -- the data evaluate reads must be the data the fit split ------------------------------
def _table(path: Path, rows: int, scale: float = 1.0) -> str:
    path.write_text("a,b,c\n" + "\n".join(f"{scale * 0.1 * i:.3f},{scale * (i % 7) / 7:.3f},{0.5 - 0.01 * i:.3f}"
                                          for i in range(rows)) + "\n")
    return f"csv:{path}"


def test_evaluate_refuses_data_that_changed_since_the_fit(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The validation split is rebuilt from the data's rows: a grown or edited table used to
    give a 'validation' ELBO on rows the model had trained on (9 of 12 in the audit)."""
    table = tmp_path / "table.csv"
    spec = _table(table, 100)
    out = tmp_path / "fit"
    assert main(["fit", "--data", spec, "--likelihood", "normal", "--epochs", "1", "--latent-dim", "2",
                 "--hidden-dims", "8", "--quiet", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["n_rows"] == 100 and len(config["data"]["sha256"]) == 64
    capsys.readouterr()
    _table(table, 120)  # 20 rows appended
    assert main(["evaluate", str(out)]) == 2
    _assert_one_line_error(capsys, "120 rows", "had 100", "--data")
    _table(table, 100, scale=2.0)  # as many rows, other values
    assert main(["evaluate", str(out)]) == 2
    _assert_one_line_error(capsys, "changed since the fit", "--data")
    assert main(["evaluate", str(out), "--data", spec, "--num-particles", "2"]) == 0  # a whole-set evaluation
    assert json.loads((out / "evaluation.json").read_text())["n"] == 100
    _table(table, 100)  # the fit's data again
    capsys.readouterr()
    assert main(["evaluate", str(out), "--num-particles", "2"]) == 0
    assert main(["evaluate", str(out), "--num-particles", "2", "--binarize"]) == 0  # same rows, read otherwise
    assert capsys.readouterr().err == ""


def test_evaluate_of_a_config_without_the_row_count_warns_and_still_evaluates(
    fit_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Folders fitted before config.json recorded the data's rows and checksum still evaluate."""
    for name in ("model.pt", "metrics.json"):
        shutil.copy(fit_dir / name, tmp_path / name)
    config = json.loads((fit_dir / "config.json").read_text())
    del config["data"]["n_rows"], config["data"]["sha256"], config["command"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path), "--num-particles", "2"]) == 0
    captured = capsys.readouterr()
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("pvae: warning: ") and "row count" in line, captured.err
    assert json.loads((tmp_path / "evaluation.json").read_text())["n"] == 51


# -- a run never overwrites another silently -------------------------------------------------
_SMOKE = ["--data", "digits", "--smoke", "--quiet", "--hidden-dims", "16"]
_TINY_GAP = ["--num-data", "3", "--num-steps", "2", "--elbo-particles", "4", "--evidence-particles", "8", "--quiet"]


def test_fit_refuses_a_folder_holding_a_run_unless_told_to_overwrite_it(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    assert main(["fit", *_SMOKE, "--out", str(out)]) == 0
    assert main(["evaluate", str(out), "--num-particles", "2"]) == 0
    before = {name: (out / name).read_bytes() for name in ("config.json", "model.pt", "checkpoint.pt", "evaluation.json")}
    capsys.readouterr()
    assert main(["fit", *_SMOKE, "--latent-dim", "4", "--out", str(out)]) == 2
    _assert_one_line_error(capsys, "already holds a previous run", "--overwrite", "--resume")
    assert {name: (out / name).read_bytes() for name in before} == before  # nothing touched
    assert main(["fit", *_SMOKE, "--overwrite", "--resume", "--out", str(out)]) == 2
    _assert_one_line_error(capsys, "--overwrite", "--resume")
    (tmp_path / "file").write_text("")
    assert main(["fit", *_SMOKE, "--out", str(tmp_path / "file")]) == 2
    _assert_one_line_error(capsys, "not a folder")

    # --overwrite deletes the old run's files (the stale evaluation too) and writes the new
    # config before training: interrupted, the folder describes the run it holds
    real_fit = pvae.fit
    at_start: dict[str, Any] = {}

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        at_start["files"] = sorted(p.name for p in out.iterdir())
        at_start["latent_dim"] = json.loads((out / "config.json").read_text())["model"]["latent_dim"]
        raise KeyboardInterrupt

    monkeypatch.setattr(pvae, "fit", interrupted)
    (out / "notes.txt").write_text("mine")  # not a run's file: kept
    assert main(["fit", *_SMOKE, "--latent-dim", "4", "--overwrite", "--out", str(out)]) == 2
    assert at_start == {"files": ["config.json", "notes.txt"], "latent_dim": 4}
    _assert_one_line_error(capsys, "interrupted")
    monkeypatch.setattr(pvae, "fit", real_fit)
    assert main(["fit", *_SMOKE, "--latent-dim", "4", "--overwrite", "--out", str(out)]) == 0
    assert (out / "notes.txt").read_text() == "mine" and not (out / "evaluation.json").exists()
    assert json.loads((out / "config.json").read_text())["model"]["latent_dim"] == 4
    assert (out / "model.pt").read_bytes() != before["model.pt"]


def test_resume_continues_the_run_in_the_folder_and_refuses_another(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert main(["fit", *_SMOKE, "--epochs", "2", "--out", str(whole)]) == 0
    assert main(["fit", *_SMOKE, "--epochs", "1", "--out", str(part)]) == 0
    assert main(["evaluate", str(part), "--num-particles", "2"]) == 0
    assert main(["gap", str(part), *_TINY_GAP]) == 0
    capsys.readouterr()
    assert main(["fit", *_SMOKE, "--epochs", "2", "--latent-dim", "3", "--resume", "--out", str(part)]) == 2
    _assert_one_line_error(capsys, "--resume", "latent_dim", "--overwrite")
    assert main(["fit", *_SMOKE, "--epochs", "2", "--resume", "--out", str(part)]) == 0
    metrics = json.loads((part / "metrics.json").read_text())
    first = json.loads((whole / "metrics.json").read_text())
    assert metrics["epochs"] == 2
    for epoch in (0, 1):  # the first epoch is the 1-epoch run's, the second continues it as the whole run did
        for key in ("elbo", "kl", "val_elbo"):
            assert metrics["history"][epoch][key] == pytest.approx(first["history"][epoch][key], rel=1e-5)
    assert not (part / "evaluation.json").exists()  # it was the 1-epoch model's
    assert not (part / "gap.json").exists()  # so was this
    resumed = torch.load(part / "model.pt", weights_only=True)
    straight = torch.load(whole / "model.pt", weights_only=True)
    assert all(torch.allclose(resumed[k], straight[k], atol=1e-6) for k in straight)


def test_demo_replaces_its_own_report_and_refuses_other_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``make demo`` twice works: the demo replaces a previous demo report (a stale
    evaluation.json included); a fit's folder is refused without --overwrite."""
    out = tmp_path / "demo"
    demo = ["demo", "--smoke", "--quiet", "--epochs", "1", "--out", str(out)]
    assert main(demo) == 0
    assert main(["evaluate", str(out), "--num-particles", "2"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["command"] == "demo"
    del config["command"]  # a report written before configs named their command
    (out / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main(demo) == 0
    assert "replacing the previous demo report" in capsys.readouterr().out
    assert not (out / "evaluation.json").exists() and all(_is_png(out / name) for name in DEMO_FILES)
    fit = tmp_path / "fit"
    assert main(["fit", *_SMOKE, "--out", str(fit)]) == 0
    model = (fit / "model.pt").read_bytes()
    capsys.readouterr()
    assert main(["demo", "--smoke", "--quiet", "--out", str(fit)]) == 2
    _assert_one_line_error(capsys, "already holds a previous run", "--overwrite")
    assert (fit / "model.pt").read_bytes() == model
    assert main(["fit", *_SMOKE, "--out", str(out)]) == 2  # and a fit does not replace a demo report
    _assert_one_line_error(capsys, "already holds a previous run")
    assert main(["demo", "--smoke", "--quiet", "--epochs", "1", "--overwrite", "--out", str(fit)]) == 0
    assert json.loads((fit / "config.json").read_text())["command"] == "demo"


# -- the KL warm-up is a finite number of epochs ------------------------------------------
@pytest.mark.parametrize("value", ["nan", "inf", "NaN", "-1"])
def test_kl_warmup_must_be_finite_and_non_negative(tmp_path: Path, capsys: pytest.CaptureFixture, value: str) -> None:
    """``--kl-warmup nan`` used to train (NaN passes ``< 0``) and write NaN into config.json;
    ``inf`` trained with a KL weight of 0 throughout."""
    out = tmp_path / "out"
    assert main(["fit", *_SMOKE, f"--kl-warmup={value}", "--out", str(out)]) == 2
    _assert_one_line_error(capsys, "--kl-warmup", "finite")
    assert not out.exists()
    with pytest.raises(ValueError, match="kl_warmup must be a finite number of epochs"):
        pvae.fit(pvae.VAE(4, latent_dim=1, hidden_dims=(2,)), torch.zeros(8, 4), num_epochs=1, kl_warmup=float(value))


# -- gap: the amortisation gap of a fit folder ---------------------------------------------
_GAP = ["--num-data", "6", "--num-steps", "15", "--num-particles", "4", "--elbo-particles", "50",
        "--evidence-particles", "200", "--seed", "3"]


def _fitted_vae(folder: Path) -> pvae.VAE:
    config = json.loads((folder / "config.json").read_text())
    vae = pvae.VAE(**config["model"])
    vae.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
    return vae.eval()


def test_gap_equals_amortization_gap_on_the_rows_the_fit_trained_on(
    fit_run: _FitRun, capsys: pytest.CaptureFixture
) -> None:
    """``pvae gap`` is :func:`pvae.infer.amortization_gap` of the saved weights on the first
    rows pvae.fit trained on, with the same options and seed: the same numbers, per datum."""
    fit_dir, _, fit_training = fit_run
    before = {p.name: p.read_bytes() for p in fit_dir.iterdir()}
    capsys.readouterr()
    assert main(["gap", str(fit_dir), *_GAP, "--flexible-family", "full_covariance"]) == 0
    printed = capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in fit_dir.iterdir() if p.name != "gap.json"} == {
        k: v for k, v in before.items() if k != "gap.json"}  # the run's files untouched
    result = json.loads((fit_dir / "gap.json").read_text())
    assert result["split"] == "train" and result["n"] == 6 and len(result["rows"]) == 6

    vae = _fitted_vae(fit_dir)  # building it draws its initial weights: before the seed
    pyro.set_rng_seed(3)
    expected = amortization_gap(vae, fit_training[0][:6], num_steps=15, num_particles=4,
                                elbo_particles=50, evidence_particles=200, flexible_family="full_covariance")
    fields = ("log_evidence", "elbo_optimal", "elbo_amortized", "approximation_gap", "amortization_gap",
              "elbo_flexible", "approximation_gap_flexible")
    for name in fields:
        got = torch.tensor(result["per_datum"][name])
        assert torch.allclose(got, getattr(expected, name), atol=1e-4), (name, got, getattr(expected, name))
        mean, stderr = expected.summary()[name]
        assert result["summary"][name]["mean"] == pytest.approx(mean, abs=1e-4), name
        assert result["summary"][name]["stderr"] == pytest.approx(stderr, abs=1e-4), name
    # the parts add up, and the table shows the numbers it wrote
    s = result["summary"]
    assert s["log_evidence"]["mean"] - s["elbo_amortized"]["mean"] == pytest.approx(
        s["approximation_gap"]["mean"] + s["amortization_gap"]["mean"], abs=1e-4)
    for label, name in (("log p(x)", "log_evidence"), ("amortisation gap", "amortization_gap"),
                        ("approximation gap (flexible)", "approximation_gap_flexible")):
        line = next(row for row in printed.splitlines() if row.startswith("  ") and row[2:32].strip() == label)
        assert f"{s[name]['mean']:.3f}" in line and f"{s[name]['stderr']:.3f}" in line, (line, s[name])


def test_gap_rows_of_a_split_or_of_other_data(
    fit_run: _FitRun
) -> None:
    """``--split validation`` reads the rows the fit validated on; ``--data`` the first rows of that set."""
    fit_dir, fit_validation, _ = fit_run
    assert main(["gap", str(fit_dir), *_TINY_GAP, "--split", "validation"]) == 0
    result = json.loads((fit_dir / "gap.json").read_text())
    digits = cli._load_data("digits", True, "bernoulli")[0].x
    assert result["split"] == "validation" and torch.equal(digits[result["rows"]], fit_validation[0][:3])
    assert main(["gap", str(fit_dir), *_TINY_GAP, "--data", "digits", "--num-steps", "0",
                 "--elbo-particles", "400"]) == 0
    result = json.loads((fit_dir / "gap.json").read_text())
    assert result["split"] == "all" and result["rows"] == [0, 1, 2] and result["num_steps"] == 0
    # q* = the encoder's q without a step: no amortisation gap beyond the noise of two 400-particle
    # ELBO estimates (their per-datum standard error is about 0.1 nats here)
    assert all(abs(g) < 0.5 for g in result["per_datum"]["amortization_gap"]), result["per_datum"]


@pytest.mark.parametrize(
    "make_args, needle",
    [
        (lambda d, t: [str(t / "nothing-here")], "not a folder"),
        (lambda d, t: [str(t)], "config.json"),
        (lambda d, t: [str(d), "--data", "digits", "--split", "train"], "--split"),
        (lambda d, t: [str(d), "--num-data", "0"], "--num-data"),
        (lambda d, t: [str(d), "--num-steps", "-1"], "--num-steps"),
        (lambda d, t: [str(d), "--flexible-family", "iaf"], "invalid choice: 'iaf'"),
        (lambda d, t: [str(d), "--data", "csv:" + _write(t, "five.csv", "0,1,0,1,1\n1,0,0,1,0\n")], "5 columns"),
    ],
)
def test_gap_user_errors_are_one_line_with_status_2(fit_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                    make_args: Any, needle: str) -> None:
    capsys.readouterr()
    assert main(["gap", *make_args(fit_dir, tmp_path), *_TINY_GAP]) == 2
    _assert_one_line_error(capsys, needle)


# -- effect: a CEVAE on a CSV table ---------------------------------------------------------
TRUE_ATE = 2.0
# CEVAE settings that fit the 400-row table below in about a second
_SMALL_CEVAE = ["--latent-dim", "4", "--hidden-dim", "32", "--num-layers", "2", "--epochs", "40",
                "--batch-size", "64", "--learning-rate", "3e-3", "--quiet"]


def _confounded_table(path: Path, n: int = 400, seed: int = 1) -> Path:
    """``y = 1 + age + 0.5 income + 2 t + noise``, treatment more likely for larger ``age``:
    every unit's effect is 2, and the naive difference of means is confounded (about 3.2)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    t = torch.bernoulli(torch.sigmoid(1.5 * x[:, 0]), generator=g)
    y = 1 + x[:, 0] + 0.5 * x[:, 1] + TRUE_ATE * t + 0.5 * torch.randn(n, generator=g)
    rows = [f"{a:.4f},{int(ti)},{b:.4f},{yi:.4f},{c:.4f}" for (a, b, c), ti, yi in zip(x.tolist(), t.tolist(),
                                                                                          y.tolist())]
    path.write_text("age,t,income,y,bmi\n" + "\n".join(rows) + "\n")
    return path


def _read_ite(path: Path) -> dict[str, list[float]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {key: [float(r[key]) for r in rows] for key in rows[0]}


def test_effect_recovers_a_known_ate_and_writes_its_results(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """On 400 rows with a true effect of 2 for every unit and confounding by ``age``, the ATE
    is within 0.25 of 2 and its 95% interval holds 2 (seeds 0-5 of this fit: estimates
    1.95-2.10, intervals about +-0.18 wide, all holding 2); the naive difference is about 3.2."""
    table = _confounded_table(tmp_path / "table.csv")
    out = tmp_path / "effect"
    capsys.readouterr()
    assert main(["effect", "--data", str(table), "--treatment", "t", "--outcome", "y", *_SMALL_CEVAE,
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "effect.json").read_text())
    ate = summary["ate"]
    assert abs(ate["estimate"] - TRUE_ATE) < 0.25, ate
    assert ate["lower"] <= TRUE_ATE <= ate["upper"] and ate["level"] == 0.95, ate
    assert summary["naive_difference"] > 2.8, summary["naive_difference"]  # adjustment mattered
    assert summary["covariates"] == ["age", "income", "bmi"] and summary["model"]["outcome_dist"] == "normal"
    assert summary["n"] == 400 and summary["n_treated"] + summary["n_control"] == 400
    assert f"{ate['estimate']:.4g}" in printed and f"[{ate['lower']:.4g}, {ate['upper']:.4g}]" in printed, printed
    ite = _read_ite(out / "ite.csv")
    assert ite["row"] == [float(i) for i in range(1, 401)]
    assert all(lo <= v <= hi for lo, v, hi in zip(ite["ite_lower"], ite["ite"], ite["ite_upper"]))
    assert sum(ite["ite"]) / 400 == pytest.approx(ate["estimate"], abs=1e-4)  # the same posterior draws
    # the saved model answers the same: its ATE interval under the same seed is the one reported
    cevae = CEVAE.load(out / "cevae.pt")
    x = torch.tensor(np.loadtxt(table, delimiter=",", skiprows=1, dtype=np.float32)[:, [0, 2, 4]])
    pyro.set_rng_seed(0)
    assert cevae.ate_interval(x) == pytest.approx((ate["lower"], ate["upper"]), abs=1e-4)


def test_effect_columns_by_name_or_number_and_explicit_covariates(tmp_path: Path) -> None:
    table = _confounded_table(tmp_path / "table.csv", n=60)
    out = tmp_path / "named"
    args = ["--latent-dim", "2", "--hidden-dim", "8", "--num-layers", "1", "--epochs", "1", "--quiet"]
    assert main(["effect", "--data", f"csv:{table}", "--treatment", "2", "--outcome", "y",
                 "--covariates", "bmi", "age", "--alpha", "0.1", *args, "--out", str(out)]) == 0
    summary = json.loads((out / "effect.json").read_text())
    assert summary["treatment"] == "t" and summary["covariates"] == ["bmi", "age"]
    assert summary["model"]["feature_dim"] == 2 and summary["ate"]["level"] == pytest.approx(0.9)
    headerless = tmp_path / "headerless.csv"
    headerless.write_text("\n".join(table.read_text().splitlines()[1:]) + "\n")
    binary_y = tmp_path / "binary.csv"
    lines = headerless.read_text().splitlines()
    binary_y.write_text("\n".join(",".join(c if j != 3 else str(int(float(c) > 2)) for j, c in
                                           enumerate(line.split(","))) for line in lines) + "\n")
    out = tmp_path / "numbers"
    assert main(["effect", "--data", str(binary_y), "--treatment", "2", "--outcome", "4", *args,
                 "--out", str(out)]) == 0
    summary = json.loads((out / "effect.json").read_text())
    assert summary["covariates"] == ["1", "3", "5"] and summary["model"]["outcome_dist"] == "bernoulli"
    assert -1 <= summary["ate"]["estimate"] <= 1  # a difference of probabilities


def _effect_table(t: Path, name: str, rows: list[str]) -> str:
    return _write(t, name, "a,t,y\n" + "\n".join(rows) + "\n")


_OK_ROWS = ["0.1,0,1.0", "0.2,1,2.0", "0.3,0,1.5", "0.4,1,2.5"]


@pytest.mark.parametrize(
    "make_args, needle",
    [
        (lambda t: ["--data", _effect_table(t, "a.csv", _OK_ROWS), "--treatment", "treat", "--outcome", "y"],
         "--treatment 'treat' is not a column"),
        (lambda t: ["--data", _effect_table(t, "a.csv", _OK_ROWS), "--treatment", "t", "--outcome", "9"],
         "--outcome '9' is not a column"),
        (lambda t: ["--data", _effect_table(t, "a.csv", _OK_ROWS), "--treatment", "t", "--outcome", "y",
                    "--covariates", "a", "b"], "--covariates 'b' is not a column"),
        (lambda t: ["--data", _effect_table(t, "a.csv", _OK_ROWS), "--treatment", "t", "--outcome", "y",
                    "--covariates", "a", "y"], "the outcome column"),
        (lambda t: ["--data", _effect_table(t, "a.csv", _OK_ROWS), "--treatment", "y", "--outcome", "y"],
         "the same column"),
        (lambda t: ["--data", _effect_table(t, "b.csv", ["0.1,0,1", "0.2,2,2", "0.3,1,1"]), "--treatment", "t",
                    "--outcome", "y"], "must be binary (0 or 1), got 2 in data row 2"),
        (lambda t: ["--data", _effect_table(t, "b.csv", ["0.1,0,1", "0.2,,2", "0.3,1,1"]), "--treatment", "t",
                    "--outcome", "y"], "treatment column 't' has 1 missing value"),
        (lambda t: ["--data", _effect_table(t, "b.csv", ["0.1,1,1", "0.2,1,2"]), "--treatment", "t",
                    "--outcome", "y"], "treated and untreated rows"),
        (lambda t: ["--data", _effect_table(t, "c.csv", ["0.1,0,1", "0.2,1,NaN", "0.3,1,", "0.4,0,2"]),
                    "--treatment", "t", "--outcome", "y"],
         "outcome column 'y' has 2 missing value(s) (first in data row 2)"),
        (lambda t: ["--data", _effect_table(t, "c.csv", ["0.1,0,1", "nan,1,2", "0.3,1,1"]), "--treatment", "t",
                    "--outcome", "y"], "covariate column 'a' has 1 missing value"),
        (lambda t: ["--data", _effect_table(t, "a.csv", _OK_ROWS), "--treatment", "t", "--outcome", "y",
                    "--outcome-dist", "bernoulli"], "--outcome-dist bernoulli needs a 0/1 outcome"),
        (lambda t: ["--data", _effect_table(t, "a.csv", _OK_ROWS), "--treatment", "t", "--outcome", "y",
                    "--alpha", "1.5"], "--alpha"),
        (lambda t: ["--data", str(t / "missing.csv"), "--treatment", "t", "--outcome", "y"], "CSV file not found"),
        (lambda t: ["--data", _write(t, "text.csv", "a,t,y\n1,0,x\n"), "--treatment", "t", "--outcome", "y"],
         "line 2, column 3: 'x'"),
        (lambda t: ["--data", _effect_table(t, "a.csv", _OK_ROWS), "--treatment", "t"], "--outcome"),
    ],
)
def test_effect_user_errors_are_one_line_with_status_2(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                       make_args: Any, needle: str) -> None:
    out = tmp_path / "out"
    assert main(["effect", *make_args(tmp_path), "--epochs", "1", "--out", str(out)]) == 2
    _assert_one_line_error(capsys, needle)
    assert not out.exists()  # refused before anything was written


def test_effect_refuses_a_folder_holding_results_unless_told_to_overwrite(
    fit_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    table = _effect_table(tmp_path, "a.csv", [f"{0.1 * i:.1f},{i % 2},{i % 3}.5" for i in range(12)])
    out = tmp_path / "effect"
    args = ["effect", "--data", table, "--treatment", "t", "--outcome", "y", "--latent-dim", "2", "--hidden-dim",
            "8", "--num-layers", "1", "--epochs", "1", "--quiet", "--out", str(out)]
    assert main(args) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(before) == ["cevae.pt", "effect.json", "ite.csv"]
    capsys.readouterr()
    assert main(args) == 2
    _assert_one_line_error(capsys, "already holds a previous run", "--overwrite")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert main(["fit", *_SMOKE, "--out", str(out)]) == 2  # nor does a fit replace an effect
    _assert_one_line_error(capsys, "already holds a previous run")
    fit_files = {p.name: p.read_bytes() for p in fit_dir.iterdir()}
    assert main([*args[:-1], str(fit_dir)]) == 2  # an effect does not replace a fit
    _assert_one_line_error(capsys, "already holds a previous run")
    assert {p.name: p.read_bytes() for p in fit_dir.iterdir()} == fit_files
    (out / "notes.txt").write_text("mine")
    assert main([*args, "--overwrite", "--seed", "1"]) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "effect.json").read_text())["training"]["seed"] == 1
    assert (out / "cevae.pt").read_bytes() != before["cevae.pt"]


def test_demo_does_not_replace_a_report_holding_an_effect(tmp_path: Path) -> None:
    """``pvae demo`` replaces its own report only: an effect written into that folder is kept."""
    (tmp_path / "config.json").write_text(json.dumps({"format": cli.CONFIG_FORMAT, "command": "demo"}))
    assert cli._check_out(tmp_path, "demo", overwrite=False, resume=False) == ["config.json"]
    (tmp_path / "effect.json").write_text("{}")
    with pytest.raises(FileExistsError, match="effect.json"):
        cli._check_out(tmp_path, "demo", overwrite=False, resume=False)


# -- MNIST: the split of the folder's IDX files -------------------------------------------
def _write_idx(folder: Path, prefix: str, n: int, seed: int, gz: bool) -> None:
    """Fake MNIST IDX files: ``n`` random 28x28 images and labels (never the real data)."""
    rng = np.random.default_rng(seed)
    files = {
        f"{prefix}-images-idx3-ubyte": b"\0\0\x08\x03" + b"".join(d.to_bytes(4, "big") for d in (n, 28, 28))
        + rng.integers(0, 256, n * 784, dtype=np.uint8).tobytes(),
        f"{prefix}-labels-idx1-ubyte": b"\0\0\x08\x01" + n.to_bytes(4, "big")
        + rng.integers(0, 10, n, dtype=np.uint8).tobytes(),
    }
    for name, raw in files.items():
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)


def test_mnist_spec_names_the_split(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``mnist:PATH`` reads the folder's t10k (test) files as before; ``mnist-train:PATH`` its
    train files, and ``evaluate`` re-reads the split the fit was trained on."""
    folder = tmp_path / "mnist"
    folder.mkdir()
    _write_idx(folder, "t10k", 20, seed=0, gz=True)
    _write_idx(folder, "train", 30, seed=1, gz=False)
    tiny = ["--latent-dim", "2", "--hidden-dims", "8", "--epochs", "1", "--batch-size", "16", "--quiet"]
    for kind, n, name in (("mnist", 20, "mnist-test"), ("mnist-test", 20, "mnist-test"),
                          ("mnist-train", 30, "mnist-train")):
        out = tmp_path / kind
        capsys.readouterr()
        assert main(["fit", "--data", f"{kind}:{folder}", *tiny, "--out", str(out)]) == 0
        assert f"on {name}:" in capsys.readouterr().out
        config = json.loads((out / "config.json").read_text())
        assert config["data"]["spec"] == f"{kind}:{folder.resolve()}" and config["data"]["n_rows"] == n
        assert config["data"]["image_shape"] == [28, 28] and config["data"]["binarize"] is True
        assert main(["evaluate", str(out), "--num-particles", "2"]) == 0  # refused if it read the other split
        assert json.loads((out / "evaluation.json").read_text())["n"] == round(0.1 * n)
    assert torch.equal(cli._load_data(f"mnist-train:{folder}", False, "normal")[0].x,
                       load_mnist(folder, split="train").x)
    only_test = tmp_path / "only-test"
    only_test.mkdir()
    _write_idx(only_test, "t10k", 5, seed=2, gz=True)
    capsys.readouterr()
    assert main(["fit", "--data", f"mnist-train:{only_test}", *tiny, "--out", str(tmp_path / "x")]) == 2
    _assert_one_line_error(capsys, "no MNIST training files", f"mnist:{only_test}")
    assert main(["fit", "--data", f"mnist-val:{folder}", *tiny, "--out", str(tmp_path / "x")]) == 2
    _assert_one_line_error(capsys, "--data must be", "mnist-train:PATH")


def test_effect_divergence_exits_1_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """CEVAE's divergence guard raises TrainingDivergedError: reported as one line, status 1, as ``fit``'s."""
    table = _confounded_table(tmp_path / "table.csv", n=40)
    out = tmp_path / "out"
    assert main(["effect", "--data", str(table), "--treatment", "t", "--outcome", "y", "--latent-dim", "2",
                 "--hidden-dim", "8", "--num-layers", "1", "--epochs", "2", "--learning-rate", "1e9",
                 "--out", str(out)]) == 1
    _assert_one_line_error(capsys, "CEVAE training diverged")
    assert not out.exists()


def test_effect_reads_only_the_named_columns_so_text_columns_may_sit_beside(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    """A patient table with an identifier and a date: with --covariates the fit reads only the
    named columns (the same numbers as the table without them); without, one line says how."""
    numeric = _confounded_table(tmp_path / "table.csv", n=40)
    lines = numeric.read_text().splitlines()
    mixed = tmp_path / "patients.csv"
    mixed.write_text("\n".join([f"id,{lines[0]},visit"] + [f"P{i:03d},{row},2024-01-{i % 28 + 1:02d}"
                                                          for i, row in enumerate(lines[1:])]) + "\n")
    small = ["--latent-dim", "2", "--hidden-dim", "8", "--num-layers", "1", "--epochs", "2", "--num-samples", "5"]
    reports = []
    for table in (numeric, mixed):
        out = tmp_path / f"out-{table.stem}"
        assert main(["effect", "--data", str(table), "--treatment", "t", "--outcome", "y",
                     "--covariates", "age", "income", "bmi", *small, "--out", str(out), "--quiet"]) == 0
        reports.append(json.loads((out / "effect.json").read_text()))
    assert reports[0]["ate"] == reports[1]["ate"] and reports[1]["covariates"] == ["age", "income", "bmi"]
    capsys.readouterr()
    assert main(["effect", "--data", str(mixed), "--treatment", "t", "--outcome", "y", *small]) == 2
    _assert_one_line_error(capsys, "'P000' is not a number", "--covariates COL")
