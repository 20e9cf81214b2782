"""Property-based tests (hypothesis) of pvae's data layer.

Every validator and loader, given anything, either returns something sane (the
documented dtype and shape, finite values where promised) or raises one of
pvae's documented errors -- :class:`pvae.DataError` / :class:`pvae.DataTypeError`
(:class:`~pvae.models.likelihoods.SupportError` is a DataError), and
:class:`FileNotFoundError` for a missing file -- with a message that names the
argument or the file. Never a raw torch / NumPy / Pyro / codec error: those
propagate out of :func:`_outcome` and fail the property.

The deterministic regression tests next to each property pin the bugs the
properties found.
"""

from __future__ import annotations

import gzip
import math
import re
import struct
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import pvae
from pvae import DataError, DataTypeError
from pvae.data import ALPHABET, AMINO_ACIDS, IHDP_COLUMNS, check_data, load_csv, load_ihdp, load_mnist, load_msa
from pvae.inputs import DATA_KINDS, as_data, as_data_args, as_data_tuple
from pvae.models import LIKELIHOODS, ModelGuidePair
from pvae.models.likelihoods import SupportError

# The autouse conftest fixture (param store, seeds) runs once per test, not per
# example; nothing here depends on it being reset between examples.
# Sized so that the file runs in well under a minute on a loaded 2-core machine.
_QUIET = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
FAST = settings(max_examples=60, suppress_health_check=_QUIET)
PER_FAMILY = settings(max_examples=25, suppress_health_check=_QUIET)  # x 8 likelihoods
FITS = settings(max_examples=5, suppress_health_check=_QUIET)  # x 8 likelihoods: 40 one-epoch fits

F32_OVERFLOW = 2.0**128 - 2.0**103  # the smallest magnitude float32 rounds to inf


def _names(message: str, name: str) -> bool:
    """``name`` appears in ``message`` as a word (``x`` in ``x[0, 1]``, not in ``expected``)."""
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", message) is not None


def _outcome(call, *names: str):
    """``(result, None)``, or ``(None, err)`` for a DataError naming one of ``names``.

    Any other exception propagates and fails the property.
    """
    try:
        return call(), None
    except DataError as err:
        message = str(err)
        assert any(_names(message, n) for n in names), (
            f"{type(err).__name__} names none of {names}: {message}"
        )
        return None, err


# ---------------------------------------------------------------- as_data: NumPy arrays
REAL_DTYPES = [
    np.float16, np.float32, np.float64, np.longdouble,
    np.int8, np.int16, np.int32, np.int64,
    np.uint8, np.uint16, np.uint32, np.uint64, np.bool_,
]
COMPLEX_DTYPES = [np.complex64, np.complex128, np.clongdouble]
SPECIAL_FLOATS = [0.0, -0.0, 1.0, -1.0, 2.0, 0.5, math.nan, math.inf, -math.inf]


def _elements(dtype: np.dtype):
    if dtype.kind == "b":
        return st.booleans()
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return st.one_of(st.sampled_from([0, 1]), st.integers(int(info.min), int(info.max)))
    if dtype.kind == "f":
        width = min(dtype.itemsize * 8, 64)
        big = [2.0**63, -(2.0**63), 1e20, 3e38, 1e300] if width == 64 else ([2.0**63, 3e38] if width == 32 else [])
        return st.one_of(
            st.sampled_from(SPECIAL_FLOATS + big),
            st.integers(-100, 100).map(float),
            st.floats(width=width),
        )
    return st.complex_numbers(allow_nan=True, allow_infinity=True, width=min(dtype.itemsize * 8, 128))


def _dtypes(pool):
    """A dtype from ``pool``, in native or swapped byte order."""
    return st.sampled_from(pool).flatmap(
        lambda d: st.sampled_from([np.dtype(d), np.dtype(d).newbyteorder()])
    )


SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)
numeric_arrays = (_dtypes(REAL_DTYPES + COMPLEX_DTYPES)).flatmap(
    lambda d: hnp.arrays(d, SHAPES, elements=_elements(d))
)


def _as_float64(array: np.ndarray) -> np.ndarray:
    """The values of a real array as float64 (what pvae reads uint64 and longdouble as)."""
    return array.astype(np.float64)


def _check_converted(array: np.ndarray, kind: str, dtype, out: torch.Tensor | None, err) -> None:
    """The documented outcome of ``as_data(array, kind=kind, dtype=dtype)``."""
    floating = dtype or torch.get_default_dtype()
    if array.dtype.kind == "c":
        assert isinstance(err, DataTypeError), f"complex data must raise DataTypeError, got {out}"
        return
    values = _as_float64(array)
    native = array.dtype.newbyteorder("=")
    if kind == "labels":
        ok = array.dtype.kind in "iu" and native != np.uint64 or (
            array.dtype.kind in "fu"
            and bool(np.all(np.isfinite(values) & (values == np.round(values)) & (values >= -(2.0**63)) & (values < 2.0**63)))
        )
        assert (err is None) == ok, f"labels from {array.dtype} {array!r}: expected ok={ok}, got {err!r}"
        if ok:
            assert out.dtype == torch.int64
            expected = (
                torch.from_numpy(array.astype(np.int64))
                if array.dtype.kind in "iu" and native != np.uint64
                else torch.from_numpy(values).long()
            )
            assert torch.equal(out, expected)
    elif kind == "mask":
        ok = array.dtype.kind == "b" or bool(np.all((values == 0) | (values == 1)))
        assert (err is None) == ok, f"mask from {array.dtype} {array!r}: expected ok={ok}, got {err!r}"
        if ok:
            assert out.dtype == torch.bool and torch.equal(out, torch.from_numpy(np.asarray(values != 0)))
    else:
        assert err is None, f"real data must convert for kind {kind!r}: {err}"
        is_float = array.dtype.kind == "f" or native == np.uint64
        if kind == "features" or is_float:
            assert out.dtype == floating
            expected = torch.from_numpy(values).to(floating)
            # ints round to float32 once in pvae, via float64 here: at most one ulp apart
            torch.testing.assert_close(out, expected, rtol=2.5e-7, atol=0, equal_nan=True)
        else:
            assert out.dtype == (torch.int64 if native in (np.uint16, np.uint32) else
                                 torch.from_numpy(np.zeros(0, native)).dtype)
            assert torch.equal(out, torch.from_numpy(array.astype(native)).to(out.dtype))
    if out is not None:
        assert out.shape == array.shape


@FAST
@given(array=numeric_arrays, kind=st.sampled_from(DATA_KINDS),
       dtype=st.sampled_from([None, torch.float32, torch.float64]),
       name=st.sampled_from(["x", "mask", "y", "my_data"]))
def test_as_data_numpy_arrays_convert_or_raise_data_errors(array, kind, dtype, name):
    """Real NumPy arrays (every dtype, byte order, shape incl. 0-d and 0-size, NaN
    and inf) convert as the kind's table says, or raise a DataTypeError naming the
    argument exactly when the kind forbids the values."""
    out, err = _outcome(lambda: as_data(array, name, kind=kind, dtype=dtype), name)
    _check_converted(array, kind, dtype, out, err)


non_numeric_arrays = st.one_of(
    hnp.arrays(hnp.datetime64_dtypes(), SHAPES),
    hnp.arrays(hnp.timedelta64_dtypes(), SHAPES),
    hnp.arrays(hnp.unicode_string_dtypes(), SHAPES),
    hnp.arrays(hnp.byte_string_dtypes(), SHAPES),
    hnp.arrays(object, SHAPES, elements=st.one_of(st.none(), st.text(), st.integers(), st.floats())),
    st.just(np.zeros(2, dtype=[("a", "f8"), ("b", "i4")])),
)


@FAST
@given(array=non_numeric_arrays, kind=st.sampled_from(DATA_KINDS), name=st.sampled_from(["x", "args[1]"]))
def test_as_data_non_numeric_arrays_raise_data_type_errors(array, kind, name):
    """Dates, strings, bytes, objects and records never become tensors."""
    out, err = _outcome(lambda: as_data(array, name, kind=kind), name)
    assert isinstance(err, DataTypeError), f"{array.dtype} became {out!r}"


def test_as_data_reads_longdouble_and_rejects_clongdouble():
    """Regression: float128 raised torch's raw TypeError ("can't convert np.ndarray of
    type numpy.longdouble"); it is read as float64 now, and complex256 is a DataTypeError."""
    out = as_data(np.array([[0.5, 2.0]], dtype=np.longdouble), "x")
    assert out.dtype == torch.float32 and out.tolist() == [[0.5, 2.0]]
    assert as_data(np.array([3.0], dtype=np.longdouble), "y", kind="labels").tolist() == [3]
    with pytest.raises(DataTypeError, match=r"^x must be real"):
        as_data(np.zeros(2, dtype=np.clongdouble), "x")


def test_as_data_labels_out_of_int64_range_raise():
    """Regression: float labels beyond int64 (1e20, 2**63, uint64 max) silently
    became -9223372036854775808; now a DataTypeError naming the argument."""
    for bad in (np.array([1e20]), np.array([2.0**63]), np.array([2**64 - 1], dtype=np.uint64)):
        with pytest.raises(DataTypeError, match=r"^y must hold integer labels.*out-of-int64-range"):
            as_data(bad, "y", kind="labels")
    assert as_data(np.array([-(2.0**63)]), "y", kind="labels").item() == -(2**63)


# ---------------------------------------------------------------- as_data: torch tensors
TORCH_DTYPES = [
    torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.float8_e4m3fn, torch.float8_e5m2,
    torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool,
    torch.complex64, torch.complex128,
]


@FAST
@given(array=hnp.arrays(np.float64, SHAPES, elements=_elements(np.dtype(np.float64))),
       tdtype=st.sampled_from(TORCH_DTYPES), kind=st.sampled_from(DATA_KINDS),
       dtype=st.sampled_from([None, torch.float32, torch.float64]), transpose=st.booleans())
def test_as_data_torch_tensors_convert_or_raise_data_errors(array, tdtype, kind, dtype, transpose):
    """Tensors of every dtype (float8 and bfloat16 included), contiguous or not."""
    tensor = torch.from_numpy(array).to(tdtype)  # float -> int of NaN is torch's business
    if transpose:
        tensor = tensor.mT if tensor.dim() >= 2 else tensor
    out, err = _outcome(lambda: as_data(tensor, "x", kind=kind, dtype=dtype), "x")
    if tensor.is_complex():
        assert isinstance(err, DataTypeError)
        return
    values = tensor.double()
    if kind == "labels":
        ok = tensor.dtype != torch.bool and (not tensor.is_floating_point() or bool(
            (torch.isfinite(values) & (values == values.round()) & (values >= -(2.0**63)) & (values < 2.0**63)).all()))
        assert (err is None) == ok, (tensor, err)
        if ok:
            assert out.dtype == torch.int64 and torch.equal(out, values.long() if tensor.is_floating_point() else tensor.long())
    elif kind == "mask":
        ok = tensor.dtype == torch.bool or bool(((values == 0) | (values == 1)).all())
        assert (err is None) == ok, (tensor, err)
        if ok:
            assert out.dtype == torch.bool and torch.equal(out, values != 0)
    else:
        assert err is None, err
        if kind == "features" or tensor.is_floating_point():
            target = dtype or (tensor.dtype if tensor.is_floating_point() else torch.get_default_dtype())
            assert out.dtype == target
            assert torch.equal(out.isnan(), tensor.to(target).isnan())
        else:
            assert out.dtype == tensor.dtype and torch.equal(out, tensor)
    if out is not None:
        assert out.shape == tensor.shape


def test_as_data_float8_labels():
    """Regression: float8 labels raised torch's NotImplementedError
    ('"isfinite" not implemented for Float8_e4m3fn')."""
    labels = torch.tensor([0.0, 1.0, 3.0]).to(torch.float8_e4m3fn)
    assert as_data(labels, "y", kind="labels").tolist() == [0, 1, 3]
    with pytest.raises(DataTypeError, match=r"^y must hold integer labels"):
        as_data(torch.tensor([0.5]).to(torch.float8_e4m3fn), "y", kind="labels")


# ---------------------------------------------------------------- as_data: nested lists
@st.composite
def nested_lists(draw):
    """Nested lists from a rectangular array, clean or corrupted; returns (value, how)."""
    array = draw(hnp.arrays(
        st.sampled_from([np.float64, np.int64, np.bool_]),
        hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=3),
        elements=st.integers(0, 1),
    ))
    value = array.tolist()
    if array.dtype == np.float64 and draw(st.booleans()):  # NaN, inf and fractions among the floats
        flat = array.reshape(-1)
        flat[draw(st.integers(0, flat.size - 1))] = draw(st.sampled_from([0.5, math.nan, math.inf]))
        value = array.tolist()
    how = draw(st.sampled_from(["clean", "ragged", "string", "none", "dict", "complex", "huge int"]))
    if how == "ragged":
        assume(array.ndim >= 2 and array.shape[0] >= 2)
        inner = value[0]
        while isinstance(inner[0], list):
            inner = inner[0]
        inner.append(1.0)
        return value, how
    if how == "clean":
        return value, how
    leaf = {"string": "abc", "none": None, "dict": {}, "complex": 1 + 2j, "huge int": 2**70}[how]
    parent = value
    if not isinstance(parent, list) or not parent:
        return leaf, how
    while isinstance(parent[0], list):
        parent = parent[0]
    parent[0] = leaf
    return value, how


@FAST
@given(case=nested_lists(), kind=st.sampled_from(DATA_KINDS))
def test_as_data_nested_lists(case, kind):
    """Rectangular lists of numbers convert; ragged lists, strings, None, dicts,
    complex numbers and ints beyond uint64 raise DataTypeError naming the argument."""
    value, how = case
    out, err = _outcome(lambda: as_data(value, "x", kind=kind), "x")
    if how == "clean":
        assert out is not None or (kind in ("labels", "mask") and isinstance(err, DataTypeError))
        if out is not None:
            assert out.shape == np.asarray(value).shape
    else:
        assert isinstance(err, DataTypeError), f"{how}: {value!r} became {out!r}"


# ---------------------------------------------------------------- as_data: pandas
NUMERIC_COLUMNS = ["float", "int", "uint8", "bool", "Int64", "Float64", "boolean"]
TEXT_COLUMNS = ["string", "object", "datetime"]


@st.composite
def pandas_frames(draw):
    n = draw(st.integers(0, 4))
    specs = draw(st.lists(st.sampled_from(NUMERIC_COLUMNS + TEXT_COLUMNS), min_size=1, max_size=4))
    maybe = lambda s: st.one_of(st.none(), s)  # noqa: E731
    columns = {}
    for j, spec in enumerate(specs):
        if spec == "float":
            col = np.array(draw(st.lists(st.sampled_from([0.0, 1.5, math.nan, -2.0]), min_size=n, max_size=n)), dtype=float)
        elif spec == "int":
            col = np.array(draw(st.lists(st.integers(-9, 9), min_size=n, max_size=n)), dtype=np.int64)
        elif spec == "uint8":
            col = np.array(draw(st.lists(st.integers(0, 255), min_size=n, max_size=n)), dtype=np.uint8)
        elif spec == "bool":
            col = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
        elif spec == "Int64":
            col = pd.array(draw(st.lists(maybe(st.integers(-9, 9)), min_size=n, max_size=n)), dtype="Int64")
        elif spec == "Float64":
            col = pd.array(draw(st.lists(maybe(st.sampled_from([0.0, 0.25, 7.0])), min_size=n, max_size=n)), dtype="Float64")
        elif spec == "boolean":
            col = pd.array(draw(st.lists(maybe(st.booleans()), min_size=n, max_size=n)), dtype="boolean")
        elif spec == "string":
            col = pd.array(draw(st.lists(st.text("abcxyz", min_size=1, max_size=3), min_size=n, max_size=n)), dtype="string")
        elif spec == "object":
            col = np.array(draw(st.lists(st.text("abcxyz", min_size=1, max_size=3), min_size=n, max_size=n)) + [None], dtype=object)[:n]
        else:
            col = pd.to_datetime(draw(st.lists(st.integers(0, 10**9), min_size=n, max_size=n)), unit="s")
        columns[f"c{j}"] = col
    frame = pd.DataFrame(columns, index=range(n))
    if draw(st.booleans()) and len(specs) == 1:
        return frame["c0"], specs
    return frame, specs


@FAST
@given(case=pandas_frames(), kind=st.sampled_from(DATA_KINDS))
def test_as_data_pandas(case, kind):
    """DataFrames and Series with nullable (pd.NA), string, object and datetime
    columns: numeric ones convert (NA -> NaN), the others raise DataTypeError."""
    value, specs = case
    out, err = _outcome(lambda: as_data(value, "x", kind=kind), "x")
    numeric = all(s in NUMERIC_COLUMNS for s in specs)
    expected_shape = value.shape
    if not numeric:
        if len(value) > 0 or all(s == "datetime" for s in specs):
            assert isinstance(err, DataTypeError), f"{specs} became {out!r}"
        return
    expected = torch.from_numpy(np.array(value.to_numpy(dtype=np.float64, na_value=np.nan), copy=True))
    if kind == "features":
        assert err is None, err
        assert out.dtype == torch.float32 and out.shape == expected_shape
        torch.testing.assert_close(out, expected.float(), equal_nan=True)
    elif kind == "mask":
        ok = bool(((expected == 0) | (expected == 1)).all())
        assert (err is None) == ok, (specs, err)
        if ok:
            assert out.dtype == torch.bool and torch.equal(out, expected != 0)
    elif kind == "labels":
        if out is not None:
            assert out.dtype == torch.int64 and torch.equal(out, expected.long())
        else:
            assert isinstance(err, DataTypeError)
    else:
        assert err is None and out.shape == expected_shape
        torch.testing.assert_close(out.double(), expected, equal_nan=True)


def test_as_data_pandas_dates_beside_numbers_raise():
    """Regression: a datetime (or timedelta) column beside numeric ones was read as
    nanoseconds since 1970 (a frame of dates alone already raised)."""
    when = pd.to_datetime(["2020-01-01", "2021-06-30"])
    for frame in (pd.DataFrame({"age": [30, 40], "visit": when}),
                  pd.DataFrame({"dose": [1.5, 2.0], "wait": when - when[0]}),
                  pd.DataFrame({"n": pd.array([1, None], dtype="Int64"), "visit": when.tz_localize("UTC")})):
        with pytest.raises(DataTypeError, match=r"^x must hold numbers.*non-numeric columns \['(visit|wait)'\].*Try"):
            as_data(frame, "x")
    assert as_data(pd.DataFrame({"age": [30, 40], "ok": [True, False]}), "x").tolist() == [[30.0, 1.0], [40.0, 0.0]]


# ---------------------------------------------------------------- as_data_args / as_data_tuple
def _plain_model(x, extra=None):
    pass


@FAST
@given(x=numeric_arrays, second=st.one_of(st.none(), numeric_arrays), program=st.sampled_from(["vae", "vae64", "pair"]))
def test_as_data_args_names_each_argument(x, second, program):
    """A program's declared kinds and names apply per argument: errors name ``x`` /
    ``mask`` (a VAE) or ``x`` / ``args[1]`` (a hand-written pair); results take the
    program's dtype."""
    if program == "pair":
        prog, names, kinds, dtype = ModelGuidePair(_plain_model, _plain_model), ("x", "args[1]"), ("features", "any"), None
    else:
        vae = pvae.VAE(3, 2, hidden_dims=(4,))
        prog = vae.double() if program == "vae64" else vae
        names, kinds = ("x", "mask"), ("features", "mask")
        dtype = torch.float64 if program == "vae64" else torch.float32
    args = (x, second)
    try:
        out = as_data_args(prog, args)
    except DataError as err:
        # the first argument that fails is named
        for value, name, kind in zip(args, names, kinds):
            if value is None:
                continue
            _, first = _outcome(lambda: as_data(value, name, kind=kind, dtype=dtype), name)
            if first is not None:
                assert str(err) == str(first)
                return
        raise AssertionError(f"as_data_args raised {err!r} but each argument converts alone")
    assert len(out) == 2 and (out[1] is None) == (second is None)
    for value, o, name, kind in zip(args, out, names, kinds):
        if value is not None:
            _check_converted(value, kind, dtype, o, None)


@FAST
@given(n=st.integers(0, 3), m=st.integers(0, 3), zero_d=st.booleans())
def test_as_data_tuple_lengths(n, m, zero_d):
    """Arrays of different lengths, 0-d arrays, and no rows are DataErrors naming ``data``."""
    vae = pvae.VAE(2, 2, hidden_dims=(4,))
    x = np.zeros(()) if zero_d else np.zeros((n, 2))
    out, err = _outcome(lambda: as_data_tuple(vae, (x, np.ones((m, 2), dtype=bool))), "data")
    assert (err is None) == (not zero_d and n == m and n > 0)
    if out is not None:
        assert [t.dtype for t in out] == [torch.float32, torch.bool]


# ---------------------------------------------------------------- check_data
check_arrays = _dtypes([np.float16, np.float32, np.float64, np.int32, np.uint8, np.bool_]).flatmap(
    lambda d: hnp.arrays(d, SHAPES, elements=_elements(d))
)


@FAST
@given(array=check_arrays, allow_nan=st.booleans(), as_tensor=st.booleans(), transpose=st.booleans(),
       name=st.sampled_from(["x", "validation_x"]))
def test_check_data(array, allow_nan, as_tensor, transpose, name):
    """check_data returns a contiguous float32 (n, d) tensor, n, d >= 1, with no inf
    (and no NaN unless allow_nan), or raises a DataError naming the argument."""
    value = torch.from_numpy(array.astype(array.dtype.newbyteorder("="))) if as_tensor else array
    if transpose:
        value = value.mT if as_tensor and value.dim() >= 2 else (value.T if not as_tensor else value)
    out, err = _outcome(lambda: check_data(value, name=name, allow_nan=allow_nan), name)
    x32 = torch.as_tensor(np.asarray(value).astype(np.float64)).float()
    ok = x32.dim() == 2 and x32.numel() > 0 and not bool(x32.isinf().any()) and (allow_nan or not bool(x32.isnan().any()))
    assert (err is None) == ok, f"check_data({x32!r}, allow_nan={allow_nan}): {err!r}"
    if ok:
        assert out.dtype == torch.float32 and out.is_contiguous() and out.shape == x32.shape
        assert torch.equal(out.isnan(), x32.isnan()) and not bool(out.isinf().any())


def test_check_data_one_row_and_empty():
    """One row passes; no rows, no columns or an empty list is a DataError naming x."""
    assert check_data(np.ones((1, 1))).shape == (1, 1)
    for empty in (np.zeros((0, 3)), np.zeros((3, 0)), []):
        with pytest.raises(DataError, match="^x "):
            check_data(empty)


# ---------------------------------------------------------------- VAE.validate and fit
CARDS = [2, 3, 4]


# families whose features may be any number d; internal_coordinates has a fixed layout
# (3 * atoms - 6 features: bonds, angles, dihedrals), tested in tests/models/test_geometry_likelihoods.py
PER_FEATURE = [name for name in LIKELIHOODS if name != "internal_coordinates"]


def _make_vae(likelihood: str, d: int) -> pvae.VAE:
    kwargs = {"likelihood_kwargs": {"cardinalities": CARDS[:d]}} if likelihood == "categorical" else {}
    return pvae.VAE(d, 2, hidden_dims=(4,), likelihood=likelihood, **kwargs)


def _in_support(likelihood: str, x: torch.Tensor) -> torch.Tensor:
    """Support of each family, written out independently of pvae's checks."""
    v = x.double()
    finite = torch.isfinite(v)
    whole = finite & (v == torch.floor(v)) & (v >= 0)
    if likelihood == "bernoulli":
        return (v == 0) | (v == 1)
    if likelihood == "continuous_bernoulli":
        return (v >= 0) & (v <= 1)
    if likelihood == "von_mises":
        return (v >= 0) & (v < 1)
    if likelihood in ("poisson", "negative_binomial", "zero_inflated_negative_binomial"):
        return whole
    if likelihood == "categorical":
        return whole & (v < torch.tensor(CARDS[: x.shape[-1]], dtype=torch.float64))
    return finite


def _valid_values(likelihood: str):
    if likelihood == "bernoulli":
        return st.sampled_from([0.0, 1.0])
    if likelihood == "continuous_bernoulli":
        return st.floats(0, 1)
    if likelihood == "von_mises":
        return st.floats(0, 0.999)
    if likelihood in ("poisson", "negative_binomial", "zero_inflated_negative_binomial"):
        return st.integers(0, 20).map(float)
    if likelihood == "categorical":
        return st.integers(0, 1).map(float)
    return st.floats(-10, 10)


WILD = st.sampled_from([-1.0, 0.5, 1.5, 2.0, 3.0, 4.0, 7.25, -0.0, 1e6, 1e30, math.nan, math.inf, -math.inf])


@PER_FAMILY
@pytest.mark.parametrize("likelihood", PER_FEATURE)
@given(data=st.data())
def test_vae_validate(likelihood, data):
    """VAE.validate(x, mask) passes exactly when x is (n, d) and every observed entry
    is in the family's support (NaN allowed where masked); else a DataError naming
    ``x`` or ``mask`` (SupportError for off-support values)."""
    d = data.draw(st.integers(1, 3), "d")
    vae = _make_vae(likelihood, d)
    shape = data.draw(st.sampled_from([
        "ok", "ok", "ok", "one row", "empty", "more features", "fewer features", "1-D", "3-D"]), "shape")
    n = {"one row": 1, "empty": 0}.get(shape, data.draw(st.integers(1, 4), "n"))
    cols = {"more features": d + 1, "fewer features": d - 1}.get(shape, d)
    assume(cols >= 1)
    values = data.draw(hnp.arrays(np.float64, (n, cols), elements=st.one_of(_valid_values(likelihood), WILD)), "x")
    x = torch.from_numpy(values)
    if shape == "1-D":
        x = x.reshape(-1)
    elif shape == "3-D":
        x = x[:, None, :]
    tdtype = data.draw(st.sampled_from([torch.float32, torch.float64, torch.float16, torch.int64, torch.bool, torch.complex64]), "dtype")
    x = x.to(tdtype)
    mask_kind = data.draw(st.sampled_from(["none", "bool", "bool", "wrong shape", "uint8"]), "mask")
    if mask_kind == "none":
        mask = None
    elif mask_kind == "bool":
        mask = torch.from_numpy(data.draw(hnp.arrays(np.bool_, tuple(x.shape)), "mask values"))
    elif mask_kind == "wrong shape":
        mask = torch.ones(*x.shape[:-1], x.shape[-1] + 1, dtype=torch.bool) if x.dim() else torch.ones(1, dtype=torch.bool)
    else:
        mask = torch.ones(x.shape, dtype=torch.uint8)
    _, err = _outcome(lambda: vae.validate(x, mask), "x", "mask")

    if x.dim() != 2 or x.shape[-1] != d:
        assert err is not None and _names(str(err), "x"), f"shape {tuple(x.shape)} passed"
        return
    if mask_kind in ("wrong shape", "uint8"):
        assert err is not None and _names(str(err), "mask"), f"mask {mask_kind} passed"
        return
    if x.is_complex():
        assert isinstance(err, DataTypeError)
        return
    observed = torch.ones(x.shape, dtype=torch.bool) if mask is None else mask
    nan_observed = bool((x.double().isnan() & observed).any())
    off_support = bool((observed & ~_in_support(likelihood, x)).any())
    if nan_observed:
        assert err is not None and not isinstance(err, SupportError), f"NaN at an observed entry passed: {x}"
    elif off_support:
        assert isinstance(err, SupportError), f"off-support x {x} (mask {mask}) gave {err!r}"
    else:
        assert err is None, f"valid x {x} (mask {mask}) raised {err!r}"


def test_validate_bool_int_and_complex_x():
    """Regression: bool x raised torch's NotImplementedError ('"floor_vml_cpu" not
    implemented for Bool') for the count families, complex x a raw '"ge_cpu" not
    implemented for ComplexFloat'; now bool / int x are checked as the numbers they
    are and complex x is a DataTypeError naming x."""
    vae = _make_vae("poisson", 3)
    vae.validate(torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(SupportError, match=r"needs x in the non-negative integers.*x\[0, 0\] = -1"):
        vae.validate(-torch.ones(2, 3, dtype=torch.int64))
    _make_vae("categorical", 3).validate(torch.zeros(2, 3, dtype=torch.bool))
    for likelihood in ("poisson", "bernoulli", "normal"):
        with pytest.raises(DataTypeError, match=r"^x must be real"):
            _make_vae(likelihood, 3).validate(torch.zeros(2, 3, dtype=torch.complex64))


FIT_CASES = ["valid", "valid", "NaN where masked", "NaN observed", "off support", "mask shape",
             "mask values", "more features", "empty", "lengths differ", "1-D x"]
OFF_SUPPORT = {"bernoulli": 0.5, "continuous_bernoulli": 1.5, "poisson": -1.0, "negative_binomial": 2.5,
               "zero_inflated_negative_binomial": 0.5, "ar1_normal": math.inf,
               "von_mises": 1.5,
               "categorical": None, "normal": math.inf, "laplace": -math.inf, "student_t": math.inf}


def _fit(vae, data):
    return pvae.fit(vae, data, num_epochs=1, progress=False, diagnostics_every=None, seed=0)


@FITS
@pytest.mark.parametrize("likelihood", PER_FEATURE)
@given(data=st.data())
def test_fit_trains_or_raises_data_errors(likelihood, data):
    """pvae.fit on tiny data: valid data (one row included, NaN allowed where masked,
    as a tensor, array, DataFrame or list) trains one epoch to a finite loss; each
    corruption raises a DataError naming x, mask or data."""
    d = data.draw(st.integers(1, 3), "d")
    n = data.draw(st.integers(1, 4), "n")
    case = data.draw(st.sampled_from(FIT_CASES), "case")
    x = data.draw(hnp.arrays(np.float64, (n, d), elements=_valid_values(likelihood)), "x")
    mask = data.draw(st.one_of(st.none(), hnp.arrays(np.bool_, (n, d))), "mask")
    if case == "NaN where masked":
        mask = np.ones((n, d), bool) if mask is None else mask
        mask.flat[data.draw(st.integers(0, n * d - 1), "where")] = False
        x[~mask] = math.nan
    elif case in ("NaN observed", "off support"):
        observed = np.argwhere(np.ones((n, d), bool) if mask is None else mask)
        assume(len(observed) > 0)
        i, j = observed[data.draw(st.integers(0, len(observed) - 1), "where")]
        off = float(CARDS[j]) if likelihood == "categorical" else OFF_SUPPORT[likelihood]
        x[i, j] = math.nan if case == "NaN observed" else off
    elif case == "mask shape":
        mask = np.ones((n, d + 1), bool)
    elif case == "mask values":
        mask = np.full((n, d), 0.5)
    elif case == "more features":
        x = np.concatenate([x, x[:, :1]], axis=1)
        mask = None if mask is None else np.concatenate([mask, mask[:, :1]], axis=1)
    elif case == "empty":
        x, mask = x[:0], None if mask is None else mask[:0]
    elif case == "lengths differ":
        mask = np.ones((n + 1, d), bool)
    elif case == "1-D x":
        x, mask = x.reshape(-1), None
    if case == "more features" and likelihood == "categorical" and d == 3:
        assume(False)  # a 4th feature cannot be built: _make_vae(..., 3) is the widest
    vae = _make_vae(likelihood, d)
    container = data.draw(st.sampled_from(["tensor", "numpy", "frame", "list"]), "container")
    wrap = {"tensor": torch.from_numpy, "numpy": lambda a: a, "list": lambda a: a.tolist(),
            "frame": lambda a: pd.DataFrame(a) if a.ndim == 2 else a}[container]
    payload = wrap(x) if mask is None else (wrap(x), wrap(mask))
    result, err = _outcome(lambda: _fit(vae, payload), "x", "mask", "data", "data[0]", "data[1]")
    if case in ("valid", "NaN where masked"):
        assert err is None, f"{case} data raised {err!r}"
        assert len(result.history) == 1 and math.isfinite(result.history[0]["loss"])
        assert all(bool(torch.isfinite(p).all()) for p in vae.parameters())
    else:
        assert err is not None, f"{case}: fit trained on {x!r} with mask {mask!r}"
        if case == "off support":
            assert isinstance(err, SupportError)


@pytest.mark.parametrize("likelihood", PER_FEATURE)
def test_fit_one_row_trains(likelihood):
    """One data point trains, with and without a mask (NaN at the masked entry)."""
    d = 2
    first = 0.5 if likelihood == "von_mises" else 1.0  # the periodic support is [0, 1)
    x = torch.tensor([[first, 0.0]])
    vae = _make_vae(likelihood, d)
    assert math.isfinite(_fit(vae, x).history[0]["loss"])
    mask = torch.tensor([[True, False]])
    x_nan = torch.tensor([[first, math.nan]])
    assert math.isfinite(_fit(_make_vae(likelihood, d), (x_nan, mask)).history[0]["loss"])


# ---------------------------------------------------------------- file corruption
JUNK = st.one_of(
    st.binary(min_size=1, max_size=6),
    st.sampled_from([b"\x00", b"\xff\xfe", b"\xc3", b'"', b"\r", b"\n", b",", b"abc", b"inf", b"1e999", b"nan", b"-"]),
)
FILE_CORRUPTIONS = ["none", "flip", "truncate", "junk", "ragged", "not a number", "empty", "header only"]


def _corrupt_bytes(draw, raw: bytes, how: str) -> bytes:
    if how == "flip":
        raw = bytearray(raw)
        for _ in range(draw(st.integers(1, 3))):
            i = draw(st.integers(0, len(raw) - 1))
            raw[i] ^= draw(st.integers(1, 255))
        return bytes(raw)
    if how == "truncate":
        return raw[: draw(st.integers(0, len(raw) - 1))]
    if how == "junk":
        i = draw(st.integers(0, len(raw)))
        return raw[:i] + draw(JUNK) + raw[i:]
    return raw


def _load_written(raw: bytes, filename: str, load):
    """Write ``raw`` to ``filename`` in a fresh folder and ``_outcome(load(folder, file))``,
    errors expected to name the file."""
    with tempfile.TemporaryDirectory() as folder:
        file = Path(folder) / filename
        file.write_bytes(raw)
        return _outcome(lambda: load(folder, file), str(file))


def _write_lines(lines: list[list[str]]) -> bytes:
    return "".join(",".join(row) + "\n" for row in lines).encode()


@st.composite
def csv_files(draw):
    n, d = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    values = np.array(draw(st.lists(st.lists(
        st.one_of(st.floats(width=32, allow_nan=False, allow_infinity=False), st.integers(-99, 99).map(float)),
        min_size=d, max_size=d), min_size=n, max_size=n)), dtype=np.float64)
    header = draw(st.booleans())
    lines = ([[f"col{j}" for j in range(d)]] if header else []) + [[repr(float(v)) for v in row] for row in values]
    how = draw(st.sampled_from(FILE_CORRUPTIONS))
    if how in ("ragged", "not a number"):
        assume(len(lines) >= 2)  # a bad first row would be read as the header
        i = draw(st.integers(1, len(lines) - 1))
        if how == "ragged":
            lines[i] = lines[i] + ["1.0"]
        else:
            lines[i][draw(st.integers(0, d - 1))] = draw(st.sampled_from(["abc", "1.0.0", "--1", "0x10", "1e"]))
    raw = _write_lines(lines)
    if how == "empty":
        raw = b""
    elif how == "header only":
        raw = _write_lines([[f"col{j}" for j in range(d)]])
    raw = _corrupt_bytes(draw, raw, how)
    return raw, values, how


@FAST
@given(case=csv_files())
def test_load_csv_corrupted(case):
    """load_csv on a valid numeric CSV returns it exactly; on byte flips, truncation,
    junk (non-UTF-8, NUL, quotes, CR), ragged rows, non-numeric cells, an empty file
    or a header alone it returns a sane Dataset or raises a DataError naming the file."""
    raw, values, how = case
    ds, err = _load_written(raw, "data.csv", lambda folder, file: load_csv(file))
    if how == "none":
        assert err is None, err
        assert torch.equal(ds.x, torch.from_numpy(values).float()) and ds.name == "data"
    elif how in ("ragged", "not a number", "empty", "header only"):
        assert err is not None, f"{how}: read {ds.x!r}"
    if ds is not None:
        assert ds.x.dtype == torch.float32 and ds.x.dim() == 2 and ds.x.numel() > 0
        assert not bool(ds.x.isinf().any()) and ds.y is None


def test_load_csv_header_width_must_match(tmp_path):
    """Regression: a header narrower or wider than the data rows was dropped and the
    rows' own width used, so ``a\\n1,2`` read as one row of two columns."""
    file = tmp_path / "narrow.csv"
    file.write_text("a\n1,2\n3,4\n")
    with pytest.raises(DataError, match=r"narrow\.csv, line 2: expected 1 columns \(as in the first row\), got 2\. Try"):
        load_csv(file)
    file.write_text("a,b,c\n1,2\n")
    with pytest.raises(DataError, match=r"line 2: expected 3 columns"):
        load_csv(file)
    file.write_text("a,b\n1,2\n,4\n")
    assert load_csv(file).x.shape == (2, 2)


def test_load_csv_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere\.csv.*Try"):
        load_csv(tmp_path / "nowhere.csv")


# ---------------------------------------------------------------- MNIST IDX files
MNIST_CORRUPTIONS = ["none", "truncate", "magic", "dims", "flip", "extra", "count", "bad gzip", "gzip flip"]


def _idx(magic: int, dims: tuple[int, ...], data: bytes) -> bytes:
    return struct.pack(f">I{len(dims)}I", magic, *dims) + data


@st.composite
def idx_folders(draw):
    n, rows, cols = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    images = draw(hnp.arrays(np.uint8, (n, rows, cols)))
    labels = draw(hnp.arrays(np.uint8, (n,)))
    files = {"images": _idx(2051, (n, rows, cols), images.tobytes()), "labels": _idx(2049, (n,), labels.tobytes())}
    gz = draw(st.booleans())
    how = draw(st.sampled_from(MNIST_CORRUPTIONS if gz else MNIST_CORRUPTIONS[:-2]))
    target = draw(st.sampled_from(["images", "labels"]))
    raw = files[target]
    if how == "truncate":
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    elif how == "magic":
        magic = draw(st.integers(0, 2**32 - 1).filter(lambda m: m != {"images": 2051, "labels": 2049}[target]))
        raw = struct.pack(">I", magic) + raw[4:]
    elif how == "dims":
        ndim = 3 if target == "images" else 1
        k = draw(st.integers(0, ndim - 1))
        old = struct.unpack_from(">I", raw, 4 + 4 * k)[0]
        new = draw(st.integers(0, 2**32 - 1).filter(lambda v: v != old))
        raw = raw[: 4 + 4 * k] + struct.pack(">I", new) + raw[8 + 4 * k:]
    elif how == "flip":
        raw = _corrupt_bytes(draw, raw, "flip")
    elif how == "extra":
        raw = raw + draw(st.binary(min_size=1, max_size=5))
    elif how == "count":
        target, raw = "labels", _idx(2049, (n + 1,), labels.tobytes() + b"\x00")
    files[target] = raw
    blobs = {k: (gzip.compress(v, mtime=0) if gz else v) for k, v in files.items()}
    if how == "bad gzip":
        blobs[target] = draw(st.sampled_from([files[target], b"", b"\x1f\x8b", blobs[target][:-3], b"\x1f\x8b\x08junk"]))
    elif how == "gzip flip":
        blobs[target] = _corrupt_bytes(draw, blobs[target], draw(st.sampled_from(["flip", "truncate", "junk"])))
    return blobs, gz, how, images, labels


@FAST
@given(case=idx_folders(), binarize=st.sampled_from([None, "static"]))
def test_load_mnist_corrupted(case, binarize):
    """load_mnist on small IDX files (gzipped or not) reads them exactly; truncated
    files, wrong magic numbers, wrong dims, extra bytes, mismatched counts, byte flips
    and bad gzip streams give a sane Dataset or a DataError naming the file."""
    blobs, gz, how, images, labels = case
    suffix = ".gz" if gz else ""
    with tempfile.TemporaryDirectory() as folder:
        for kind, stem in (("images", "t10k-images-idx3-ubyte"), ("labels", "t10k-labels-idx1-ubyte")):
            (Path(folder) / f"{stem}{suffix}").write_bytes(blobs[kind])
        ds, err = _outcome(lambda: load_mnist(folder, binarize=binarize), str(Path(folder) / "t10k-images-idx3-ubyte"),
                           str(Path(folder) / "t10k-labels-idx1-ubyte"))
    if how == "none":
        assert err is None, err
        x = torch.from_numpy(images.reshape(len(images), -1).astype(np.float32) / 255.0)
        assert torch.equal(ds.x, (x > 0.5).float() if binarize else x)
        assert torch.equal(ds.y, torch.from_numpy(labels.astype(np.int64)))
    elif how in ("truncate", "magic", "dims", "extra", "count"):
        assert err is not None, f"{how}: read {ds!r}"
    if ds is not None:
        assert ds.x.dtype == torch.float32 and ds.x.dim() == 2 and ds.y.dtype == torch.int64
        assert ds.y.shape == (len(ds.x),) and bool(((ds.x >= 0) & (ds.x <= 1)).all())


# ---------------------------------------------------------------- IHDP CSV files
IHDP_CORRUPTIONS = FILE_CORRUPTIONS + ["treatment", "x14", "nan cell", "inf cell", "header row"]


@st.composite
def ihdp_files(draw):
    n = draw(st.integers(1, 4))
    real = st.floats(-50, 50, width=32)
    rows = []
    for _ in range(n):
        row = [float(draw(st.integers(0, 1)))] + [draw(real) for _ in range(4)] + [draw(real) for _ in range(25)]
        row[5 + 13] = float(draw(st.integers(1, 2)))
        rows.append(row)
    values = np.array(rows)
    lines = [[repr(v) for v in row] for row in rows]
    how = draw(st.sampled_from(IHDP_CORRUPTIONS))
    i = draw(st.integers(0, n - 1))
    if how == "ragged":
        lines[i] = lines[i] + ["1.0"]
    elif how == "not a number":
        lines[i][draw(st.integers(0, 29))] = draw(st.sampled_from(["abc", "", "1.0.0", "--1"]))
    elif how == "treatment":
        lines[i][0] = draw(st.sampled_from(["2.0", "0.5", "-1"]))
    elif how == "x14":
        lines[i][18] = draw(st.sampled_from(["0", "3", "1.5"]))
    elif how == "nan cell":
        lines[i][draw(st.integers(0, 29))] = "nan"
    elif how == "inf cell":
        lines[i][draw(st.integers(0, 29))] = draw(st.sampled_from(["inf", "-inf", "1e999", "1e39"]))
    elif how == "header row":
        lines.insert(0, list(IHDP_COLUMNS))
    raw = _write_lines(lines)
    if how == "empty":
        raw = b""
    elif how == "header only":
        raw = _write_lines([list(IHDP_COLUMNS)])
    return _corrupt_bytes(draw, raw, how), values, how


@FAST
@given(case=ihdp_files())
def test_load_ihdp_corrupted(case):
    """load_ihdp on a valid 30-column CSV returns it (x14 shifted to {0, 1}); on
    corruption it returns finite data with a binary treatment and x14 in {0, 1},
    or raises a DataError naming the file."""
    raw, values, how = case
    data, err = _load_written(raw, "ihdp_npci_1.csv", lambda folder, file: load_ihdp(folder))
    if how == "none":
        assert err is None, err
        x = values[:, 5:].copy()
        x[:, 13] -= 1
        assert torch.equal(data.x, torch.from_numpy(x).float()) and data.name == "ihdp-1"
        assert torch.equal(data.t, torch.from_numpy(values[:, 0]).float())
    elif how not in ("flip", "truncate", "junk"):
        assert err is not None, f"{how}: read {data!r}"
    if data is not None:
        assert data.x.dtype == torch.float32 and data.x.shape == (len(data), 25)
        for field in (data.x, data.t, data.y, data.y_cf, data.mu0, data.mu1):
            assert bool(torch.isfinite(field).all())
        assert set(data.t.tolist()) <= {0.0, 1.0} and set(data.x[:, 13].tolist()) <= {0.0, 1.0}


def _ihdp_line(**cells: str) -> str:
    row = ["1", "0.5", "0.25", "0", "1"] + ["0.5"] * 25
    row[18] = "2"
    for k, v in cells.items():
        row[IHDP_COLUMNS.index(k)] = v
    return ",".join(row) + "\n"


def test_load_ihdp_non_utf8_and_bad_csv(tmp_path):
    """Regression: a non-UTF-8 byte raised a raw UnicodeDecodeError (and a csv.Error
    escaped); now a DataError naming the file."""
    file = tmp_path / "bad.csv"
    file.write_bytes(_ihdp_line().encode() + b"\xff\xfe," * 3 + b"\n")
    with pytest.raises(DataError, match=r"bad\.csv is not a readable CSV text file.*Try"):
        load_ihdp(file)
    file.write_bytes(_ihdp_line(y_factual='"' + "1" * 200_000).encode())  # longer than csv's field limit
    with pytest.raises(DataError, match=r"bad\.csv is not a readable CSV text file"):
        load_ihdp(file)


def test_load_ihdp_infinite_values(tmp_path):
    """Regression: ``inf`` and numbers beyond float32 (1e39) were read as inf; now a
    DataError naming the file and column."""
    file = tmp_path / "inf.csv"
    for cell, column in (("inf", "y_factual"), ("-1e39", "x3"), ("1e999", "mu1")):
        file.write_text(_ihdp_line() + _ihdp_line(**{column: cell}))
        with pytest.raises(DataError, match=rf"inf\.csv: column '{column}' holds .* at row 1; expected finite"):
            load_ihdp(file)


# ---------------------------------------------------------------- load_msa: A2M files
A2M_CORRUPTIONS = ["none", "flip", "truncate", "junk", "ragged", "unknown letter", "empty", "header only"]


@st.composite
def a2m_files(draw):
    """An A2M alignment (focus record first: upper case and ``-`` are focus columns,
    lower case and ``.`` insertions), the codes it must read as, and a corruption."""
    n, width = draw(st.integers(1, 4)), draw(st.integers(1, 8))
    focus_chars = st.sampled_from(list(AMINO_ACIDS + "-" + AMINO_ACIDS.lower() + "."))
    focus = draw(st.lists(focus_chars, min_size=width, max_size=width))
    assume(any(ch.isupper() for ch in focus))
    rows = [focus] + [draw(st.lists(st.sampled_from(list(ALPHABET + AMINO_ACIDS.lower() + ".")),
                                    min_size=width, max_size=width)) for _ in range(n - 1)]
    columns = [j for j, ch in enumerate(focus) if ch.isupper() or ch == "-"]
    codes = [[ALPHABET.index(row[j].upper()) if row[j] != "." else len(AMINO_ACIDS) for j in columns] for row in rows]
    how = draw(st.sampled_from(A2M_CORRUPTIONS))
    if how == "ragged":
        assume(n >= 2)
        i = draw(st.integers(1, n - 1))
        rows[i] = rows[i] + [draw(st.sampled_from(list(AMINO_ACIDS)))]
    elif how == "unknown letter":
        rows[draw(st.integers(0, n - 1))][draw(st.sampled_from(columns))] = draw(st.sampled_from(list("*1?_#~")))
    wrap = draw(st.integers(1, 8))  # FASTA line width
    text = "".join(f">seq{i}/1-{width}\n" + "".join("".join(row[k:k + wrap]) + "\n" for k in range(0, len(row), wrap))
                   for i, row in enumerate(rows))
    raw = text.encode()
    if how == "empty":
        raw = b""
    elif how == "header only":
        raw = b">focus/1-9\n" + b"".join(f">seq{i}\nACD\n".encode() for i in range(n - 1))
    return _corrupt_bytes(draw, raw, how), torch.tensor(codes), how


@FAST
@given(case=a2m_files())
def test_load_msa_corrupted(case):
    """load_msa on a valid A2M file reads exactly its focus columns; on byte flips,
    truncation, junk (non-UTF-8, NUL, quotes, CR), ragged rows, an unknown letter in
    a focus column, an empty file or a focus record without sequence it returns a
    sane MSA or raises a DataError naming the file."""
    raw, codes, how = case
    msa, err = _load_written(raw, "family.a2m", lambda folder, file: load_msa(file))
    if how == "none":
        assert err is None, err
        assert torch.equal(msa.codes, codes)
        assert torch.allclose(msa.weights, pvae.data.sequence_weights(codes, 0.8))
    elif how in ("ragged", "unknown letter", "empty", "header only"):
        assert err is not None, f"{how}: read {msa.codes!r}"
    if msa is not None:
        assert msa.codes.dtype == torch.long and msa.codes.dim() == 2 and len(msa) >= 1
        assert bool(((msa.codes >= 0) & (msa.codes < len(ALPHABET))).all())
        assert msa.weights.shape == (len(msa),) and bool((msa.weights >= 0).all() & (msa.weights <= 1).all())
        assert float(msa.weights[0]) > 0  # the focus record has residues; only all-gap records weigh 0
        assert msa.positions.shape == (msa.length,)
