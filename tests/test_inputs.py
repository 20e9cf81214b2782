"""Any array in, one calling convention: every verb reads NumPy, pandas and any
dtype the same way, and takes ``(model, guide, *data)`` as well as ``(program, *data)``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch

import pvae
from pvae import DataError, DataTypeError
from pvae.analysis import anomaly_scores, encode_mean, pearson_residuals
from pvae.causal import CEVAE
from pvae.data import load_digits
from pvae.infer import (
    active_units,
    amortization_gap,
    collapse_diagnostics,
    collapse_summary,
    elbo,
    elbo_terms,
    iwae_bound,
    kl_per_dim,
    latent_activity,
    log_evidence,
    mutual_information,
    psis_diagnostics,
    refine,
    site_log_probs,
    to_inference_data,
)
from pvae.inputs import as_data, as_data_args, program_dtype_device
from pvae.models import ModelGuidePair, SemiSupervisedVAE


@pytest.fixture(scope="module")
def x32() -> torch.Tensor:
    return load_digits(binarize=True).x[:40]


def _vae(seed: int = 0) -> pvae.VAE:
    pyro.set_rng_seed(seed)
    return pvae.VAE(64, 2, hidden_dims=(16,))


# -- any array in ------------------------------------------------------------------
ARRAYS = {
    "float64 tensor": lambda x: x.double(),
    "int64 tensor": lambda x: x.long(),
    "uint8 tensor": lambda x: x.to(torch.uint8),
    "bool tensor": lambda x: x.bool(),
    "float64 ndarray": lambda x: x.double().numpy(),
    "int32 ndarray": lambda x: x.int().numpy(),
    "read-only ndarray": lambda x: np.frombuffer(x.double().numpy().tobytes()).reshape(x.shape),
    "Fortran ndarray": lambda x: np.asfortranarray(x.double().numpy()),
    "reversed view": lambda x: x.double().numpy()[::-1].copy()[::-1],
    "DataFrame": lambda x: pd.DataFrame(x.numpy()),
    "DataFrame of ints": lambda x: pd.DataFrame(x.long().numpy()),
    "nested list": lambda x: x.tolist(),
}


@pytest.mark.parametrize("make", ARRAYS.values(), ids=ARRAYS.keys())
def test_fit_reads_any_array_as_the_float32_run_would(x32, make):
    """The issue's failing call, for every array type: training on converted data is
    the same run, to the bit, as training on the float32 tensor."""
    data = make(x32)
    runs = []
    for d in (x32, data):
        vae = _vae()
        runs.append(pvae.fit(vae, d, num_epochs=2, batch_size=16, seed=1, progress=False, diagnostics_every=None))
        assert all(p.dtype == torch.float32 for p in vae.parameters())
    assert [h["loss"] for h in runs[0].history] == [h["loss"] for h in runs[1].history]


def test_a_float64_program_reads_data_as_float64(x32):
    vae = _vae().double()
    assert program_dtype_device(vae) == (torch.float64, torch.device("cpu"))
    b = iwae_bound(vae, x32.numpy(), num_particles=3)
    assert b.value.dtype == torch.float64
    result = pvae.fit(vae, x32.int().numpy(), num_epochs=1, progress=False, diagnostics_every=None)
    assert np.isfinite(result.history[-1]["elbo"])


def test_a_hand_written_pair_keeps_tensor_dtypes():
    """pvae cannot see a pyro.param's dtype before the program runs: tensors keep
    theirs, NumPy data take torch's default dtype, and integer arguments after the
    first stay integers."""

    def model(x, counts):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros((), dtype=x.dtype), 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)
            assert counts.dtype == torch.int64

    pair = ModelGuidePair(model, model)  # only the argument handling matters here
    x64 = torch.randn(5, dtype=torch.float64)
    assert as_data_args(pair, (x64, np.arange(5)))[0].dtype == torch.float64
    args = as_data_args(pair, (x64.numpy(), np.arange(5)))
    assert args[0].dtype == torch.get_default_dtype() and args[1].dtype == torch.int64


def test_kinds_labels_and_masks(x32):
    ssvae = SemiSupervisedVAE(64, 10, latent_dim=2, hidden_dims=(16,))
    y = np.array([float(i % 10) for i in range(len(x32))])
    x, labels = as_data_args(ssvae, (x32.numpy(), y))
    assert x.dtype == torch.float32 and labels.dtype == torch.int64
    torch.testing.assert_close(labels, torch.as_tensor(y).long())
    with pytest.raises(DataTypeError, match=r"^y must hold integer labels"):
        as_data_args(ssvae, (x32, y + 0.5))
    vae = _vae()
    mask = (np.arange(x32.numel()).reshape(x32.shape) % 3 != 0).astype(np.int8)
    _, m = as_data_args(vae, (x32, mask))
    assert m.dtype == torch.bool and int(m.sum()) == int(mask.sum())
    with pytest.raises(DataTypeError, match=r"^mask must be a mask of True/False"):
        as_data_args(vae, (x32, mask * 2))


@pytest.mark.parametrize(
    "value, match",
    [
        (np.array([["a", "b"]]), r"^x must hold numbers, got ndarray of NumPy dtype <U1"),
        (pd.DataFrame({"a": ["u", "v"], "b": [1.0, 2.0]}), r"non-numeric columns \['a'\]"),
        ([[1.0, 2.0], [3.0]], r"^x could not be read as an array"),
        (np.ones((2, 2)) * 1j, r"^x must be real"),
        ({"a": 1}, r"^x must hold numbers"),
    ],
)
def test_what_cannot_be_converted_names_the_argument(value, match):
    with pytest.raises(DataTypeError, match=match):
        as_data(value, "x")


def test_pandas_nullable_columns_become_nan():
    s = pd.Series([1, None, 3], dtype="Int64")
    torch.testing.assert_close(as_data(s), torch.tensor([1.0, float("nan"), 3.0]), equal_nan=True)


def test_masked_arrays_read_their_masked_entries_as_nan():
    ma = np.ma.masked_array([[1.0, 2.0], [3.0, -999.0]], mask=[[0, 0], [0, 1]])
    torch.testing.assert_close(as_data(ma), torch.tensor([[1.0, 2.0], [3.0, float("nan")]]), equal_nan=True)
    # the placeholder never reaches a program: NaN without a mask is refused there
    with pytest.raises(DataError, match="NaN"):
        pvae.VAE(2, latent_dim=1, likelihood="normal").validate(as_data(ma))
    with pytest.raises(DataTypeError, match="masked array"):
        as_data(np.ma.masked_array([[1, 2]], mask=[[0, 1]]), "x")


def test_fit_errors_name_the_argument(x32):
    vae = _vae()
    with pytest.raises(DataTypeError, match=r"^data must be an array .* got str\. Try .* A DataLoader"):
        pvae.fit(vae, "digits.csv")
    with pytest.raises(DataError, match=r"^the arrays of data must share their first"):
        pvae.fit(vae, (x32, x32[:3].bool()))
    with pytest.raises(DataTypeError, match=r"^validation_data must hold numbers"):
        pvae.fit(vae, x32, validation_data=np.array([["a"] * 64]))


def test_cevae_reads_numpy_and_pandas():
    data = pvae.data.hidden_confounder_data(200, feature_dim=3, seed=0)
    x, t, y = data.x, data.t, data.y
    results = []
    for args in ((x, t, y), (pd.DataFrame(x.numpy()), pd.Series(t.long().numpy()), y.double().numpy())):
        pyro.set_rng_seed(0)
        cevae = CEVAE(feature_dim=3, latent_dim=2, hidden_dim=16, num_layers=1)
        cevae.fit(*args, num_epochs=2, batch_size=50)
        results.append(cevae.ate(x.numpy(), num_samples=10))
    assert results[0] == results[1]


# -- one calling convention ----------------------------------------------------------
def _x(x32):
    return x32[:6]


# (verb, extra positional data after x, keyword options): each is called both ways
PAIR_VERBS = {
    "site_log_probs": (site_log_probs, {"num_particles": 2}, lambda r: r.log_weight),
    "elbo": (elbo, {"num_particles": 2}, lambda r: r),
    "elbo_terms": (elbo_terms, {"num_particles": 2}, lambda r: r.elbo),
    "iwae_bound": (iwae_bound, {"num_particles": 4}, lambda r: r.value),
    "log_evidence": (log_evidence, {"num_particles": 4}, lambda r: r.log_evidence.value),
    "psis_diagnostics": (psis_diagnostics, {"num_particles": 16}, lambda r: r.khat),
    "latent_activity": (latent_activity, {}, lambda r: r),
    "active_units": (active_units, {}, lambda r: torch.tensor(float(r))),
    "kl_per_dim": (kl_per_dim, {}, lambda r: r),
    "mutual_information": (mutual_information, {}, lambda r: torch.tensor(r)),
    "collapse_diagnostics": (collapse_diagnostics, {"warn": False}, lambda r: r.kl_per_dim),
    "collapse_summary": (collapse_summary, {}, lambda r: torch.tensor(list(r.values()))),
    "refine": (refine, {"num_steps": 2}, lambda r: r.elbo_trace),
    "amortization_gap": (
        amortization_gap, {"num_steps": 2, "elbo_particles": 4, "evidence_particles": 4}, lambda r: r.log_evidence
    ),
    "pearson_residuals": (pearson_residuals, {"num_samples": 2}, lambda r: r),
    "anomaly_scores": (anomaly_scores, {"num_particles": 2}, lambda r: r),
    "to_inference_data": (
        lambda *a, **k: to_inference_data(*a[:-1], (a[-1],), **k), {"num_samples": 2},
        lambda r: torch.as_tensor(r.log_likelihood["x"].values),
    ),
}


@pytest.mark.parametrize("name", PAIR_VERBS)
def test_every_verb_takes_both_conventions_and_any_array(x32, name):
    verb, options, value = PAIR_VERBS[name]
    vae, x = _vae(), _x(x32)
    results = []
    for call in (
        lambda: verb(vae, x, **options),
        lambda: verb(vae.model, vae.guide, x, **options),
        lambda: verb(vae.model, vae.guide, x.double().numpy(), **options),
        lambda: verb(vae, pd.DataFrame(x.long().numpy()), **options),
    ):
        pyro.set_rng_seed(3)
        results.append(value(call()))
    for r in results[1:]:
        torch.testing.assert_close(r, results[0], equal_nan=True)


@pytest.mark.parametrize("name", PAIR_VERBS)
def test_every_verb_gives_fits_clear_error_for_nan_and_off_support_data(x32, name):
    # before, NaN reached the encoder and failed inside the guide as "Expected
    # parameter loc ... to satisfy the constraint Real()"; 2.5 is no Bernoulli value
    verb, options, _ = PAIR_VERBS[name]
    vae = _vae()
    holes = x32.clone()
    holes[0, 3] = float("nan")
    with pytest.raises(DataError, match=r"1 NaN entries at observed positions .* mask=~torch.isnan\(x\)"):
        verb(vae.model, vae.guide, holes, **options)
    with pytest.raises(DataError, match=r"'bernoulli' needs x in"):
        verb(vae, x32 * 2.5, **options)
    # a mask marking the NaN missing is accepted wherever the verb passes it on
    if name in ("elbo", "elbo_terms", "iwae_bound", "site_log_probs"):
        verb(vae, holes, ~torch.isnan(holes), **options)


def test_verbs_validate_with_the_model_keywords_the_program_checks():
    # a multimodal program's `present` travels as a keyword; its validate needs it
    mvae = pvae.models.MultimodalVAE((5, 3), ("bernoulli", "normal"), latent_dim=2, hidden_dims=(8,))
    x1, x2 = torch.randint(0, 2, (4, 5)).float(), torch.randn(4, 3)
    present = torch.ones(4, 2, dtype=torch.bool)
    present[:2, 1] = False
    x2[:2] = float("nan")
    assert elbo_terms(mvae, x1, x2, present=present, num_particles=2).elbo.isfinite().all()
    with pytest.raises(DataError, match="modality '1'"):
        elbo_terms(mvae, x1, x2, num_particles=2)


def test_fit_takes_both_conventions(x32):
    runs = []
    for call in ("program", "pair"):
        vae = _vae()
        args = (vae,) if call == "program" else (vae.model, vae.guide)
        runs.append(pvae.fit(*args, x32, num_epochs=1, seed=2, progress=False, diagnostics_every=None).history)
    assert runs[0][0]["loss"] == runs[1][0]["loss"]


def test_the_older_guide_keyword_still_works(x32):
    vae, x = _vae(), _x(x32)
    opts = {"num_steps": 2, "elbo_particles": 4, "evidence_particles": 4}
    pyro.set_rng_seed(5)
    a = amortization_gap(vae.model, x, guide=vae.guide, **opts)
    pyro.set_rng_seed(5)
    b = amortization_gap(vae, x, **opts)
    torch.testing.assert_close(a.log_evidence, b.log_evidence)
    pyro.set_rng_seed(5)
    r = refine(vae.model, x, guide=vae.guide, num_steps=2)
    assert r.elbo_trace.shape == (3, len(x))


def test_encode_mean_reads_any_array(x32):
    vae = _vae()
    torch.testing.assert_close(encode_mean(vae, x32.double().numpy()), encode_mean(vae, x32))


@pytest.mark.parametrize(
    "args",
    [(), (torch.zeros(3, 64),), ("not a program", torch.zeros(3, 64)), (torch.zeros(3, 64), _vae())],
    ids=["nothing", "data only", "a string", "data then program"],
)
def test_a_mistaken_call_names_both_forms(args):
    with pytest.raises(TypeError, match=r"iwae_bound\(model, guide, \*data, \.\.\.\) .* iwae_bound\(program, \*data"):
        iwae_bound(*args)
