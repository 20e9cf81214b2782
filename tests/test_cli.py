"""The ``pvae`` command line, run in-process (smoke settings) and once as a subprocess."""

from __future__ import annotations

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
from pvae.infer import site_log_probs

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


@pytest.fixture(scope="module")
def fit_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuple[torch.Tensor, ...]]:
    """A smoke fit, and the validation rows :func:`pvae.fit` was given (recorded by a spy, so
    a test can check what ``evaluate`` reads without re-deriving the CLI's split)."""
    out = tmp_path_factory.mktemp("fit")
    seen: dict[str, Any] = {}
    real_fit = pvae.fit

    def spy(*args: Any, validation_data: Any = None, **kwargs: Any) -> Any:
        seen["validation_data"] = validation_data
        return real_fit(*args, validation_data=validation_data, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pvae, "fit", spy)
        assert main(["fit", "--data", "digits", "--smoke", "--quiet", "--seed", "1", "--out", str(out)]) == 0
    return out, tuple(seen["validation_data"])


@pytest.fixture(scope="module")
def fit_dir(fit_run: tuple[Path, tuple[torch.Tensor, ...]]) -> Path:
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
    fit_run: tuple[Path, tuple[torch.Tensor, ...]], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    fit_dir, fit_validation = fit_run
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


def test_help_runs_as_a_module() -> None:
    done = subprocess.run([sys.executable, "-m", "pvae.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "fit" in done.stdout and "evaluate" in done.stdout and "demo" in done.stdout


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
