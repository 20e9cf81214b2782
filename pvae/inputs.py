"""Any array in: how user data become the tensors a Pyro program reads.

Every public verb that takes data (:func:`pvae.fit`, the bounds, the gap, the
diagnostics, the analysis tools, the causal fit and queries) passes its data
through :func:`as_data` once, so that torch tensors of any floating or integer
dtype, NumPy arrays, pandas DataFrames and Series, and nested lists all work,
and so that what cannot work fails here, with the argument's name, rather than
deep inside torch (``mat1 and mat2 must have the same dtype``).

What each argument becomes depends on its *kind*, which a program may declare
per positional argument in a ``data_kinds`` attribute (pvae's own programs
do); for a program that declares none, the first argument is ``"features"``
and the others ``"any"``:

====================  =============================================================
kind                  conversion
====================  =============================================================
``"features"``        any real, integer or bool dtype -> the program's floating
                      dtype (counts and binary data become floats: the networks
                      read floats, and the likelihoods check integrality)
``"labels"``          integers, or floats holding whole numbers -> ``int64``
``"mask"``            bool, or 0/1 in any dtype -> ``bool``
``"any"``             floating -> the program's floating dtype; integer and bool
                      dtypes are kept (a user's program decides what they mean)
====================  =============================================================

Every tensor is moved to the program's device. The program's dtype and device
are those of its first floating parameter (or buffer). A program whose
parameters pvae cannot see (plain functions with ``pyro.param`` sites) keeps a
tensor's floating dtype and device; NumPy and pandas data, and integers, take
torch's default dtype there.

Errors are :class:`DataError` (a :class:`ValueError`) and
:class:`DataTypeError` (also a :class:`TypeError`): both name the argument,
say what was expected and what came, and suggest a fix.
"""

from __future__ import annotations

import itertools
from typing import Any, Literal, Sequence

import numpy as np
import torch

DataKind = Literal["features", "labels", "mask", "any"]
DATA_KINDS: tuple[str, ...] = ("features", "labels", "mask", "any")

__all__ = [
    "DATA_KINDS",
    "DataError",
    "DataKind",
    "DataTypeError",
    "as_data",
    "as_data_args",
    "as_data_tuple",
    "is_array",
    "program_dtype_device",
]


class DataError(ValueError):
    """Data that a pvae verb cannot use: a wrong shape, NaN without a mask, a value
    outside a likelihood's support, mismatched lengths, an empty array.

    The message names the argument, shows what was expected and what came, and
    suggests a fix.
    """


class DataTypeError(DataError, TypeError):
    """Data of a type or dtype that cannot be converted to a tensor (strings,
    objects, complex numbers); also a :class:`TypeError`."""


def program_owner(program: Any) -> Any:
    """The object behind a program: itself, or the program whose own ``model`` and
    ``guide`` methods its ``model`` and ``guide`` are (``ModelGuidePair(vae.model,
    vae.guide)`` is ``vae``)."""
    model, guide = getattr(program, "model", None), getattr(program, "guide", None)
    owner = getattr(model, "__self__", None)
    if owner is not None and owner is not program and getattr(guide, "__self__", None) is owner:
        same = [getattr(getattr(owner, name, None), "__func__", None) is getattr(fn, "__func__", fn)
                for name, fn in (("model", model), ("guide", guide))]
        if all(same):
            return owner
    return program


def program_dtype_device(program: Any) -> tuple[torch.dtype | None, torch.device | None]:
    """The floating dtype and device a program computes in.

    Those of the first floating parameter or buffer of ``program`` (or of the
    module whose bound methods ``program.model`` and ``program.guide`` are) when
    it is a :class:`torch.nn.Module`; else ``(None, None)``: unknown.

    :param program: a program, or any object.
    :returns: ``(dtype, device)``, each None when unknown.
    """
    module = program_owner(program)
    if isinstance(module, torch.nn.Module):
        for tensor in itertools.chain(module.parameters(), module.buffers()):
            if tensor.is_floating_point():
                return tensor.dtype, tensor.device
    return None, None


def _type_name(value: Any) -> str:
    dtype = getattr(value, "dtype", None)
    return f"{type(value).__name__} of dtype {dtype}" if dtype is not None else type(value).__name__


def _from_pandas(value: Any, name: str) -> np.ndarray:
    array = value.to_numpy()
    if array.dtype != object:
        return array
    dtypes = getattr(value, "dtypes", None)
    try:  # nullable integer / boolean columns (pd.NA) and mixed numeric frames
        if hasattr(dtypes, "items") and any(getattr(d, "kind", "") in ("m", "M") for d in dtypes):
            raise TypeError  # pandas would read dates and durations beside numbers as nanoseconds
        return value.to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError):
        from pandas.api.types import is_numeric_dtype  # pandas is there: value is one of its objects

        columns = dtypes.items() if hasattr(dtypes, "items") else ()
        bad = [str(c) for c, d in columns if not is_numeric_dtype(d)]
        where = f" (non-numeric columns {bad})" if bad else ""
        raise DataTypeError(
            f"{name} must hold numbers, got a {type(value).__name__} with non-numeric values{where}. "
            f"Try {name}.select_dtypes('number'), or encode categories as integers first."
        ) from None


def _from_masked(value: np.ma.MaskedArray, name: str) -> np.ndarray:
    """NumPy's masked entries read as NaN (np.asarray would keep the placeholders under the mask)."""
    if value.dtype.kind not in "fc":
        raise DataTypeError(
            f"{name} is a masked array of dtype {value.dtype} with masked entries, which have no NaN to read "
            f"them as. Try {name}.astype(float).filled(np.nan) with mask=~np.ma.getmaskarray({name})."
        )
    return value.filled(np.nan)


# NumPy dtypes torch cannot hold (or barely operates on), read as the nearest it can.
_WIDEN = {
    np.dtype(np.uint16): np.int64,
    np.dtype(np.uint32): np.int64,
    np.dtype(np.uint64): np.float64,
    np.dtype(np.longdouble): np.float64,  # float128 / float96 where the platform has them
    np.dtype(np.clongdouble): np.complex128,
}


def _to_tensor(value: Any, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if type(value).__module__.partition(".")[0] == "pandas" and hasattr(value, "to_numpy"):
        value = _from_pandas(value, name)
    if isinstance(value, np.ma.MaskedArray) and np.ma.is_masked(value):
        value = _from_masked(value, name)
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as err:  # ragged nested lists
        raise DataTypeError(
            f"{name} could not be read as an array ({err}); got {type(value).__name__}. "
            f"Try a rectangular NumPy array or torch tensor."
        ) from None
    if array.dtype.kind not in "biufc":
        raise DataTypeError(
            f"{name} must hold numbers, got {type(value).__name__} of NumPy dtype {array.dtype}. "
            f"Try np.asarray({name}, dtype=float)."
        )
    native = array.dtype.newbyteorder("=")
    array = array.astype(_WIDEN.get(native, native), copy=False)
    if not array.flags.writeable or not array.flags.c_contiguous:  # read-only views, negative strides
        array = np.array(array, order="C", copy=True)
    return torch.from_numpy(array)


def as_data(
    value: Any,
    name: str = "x",
    *,
    kind: DataKind = "features",
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Convert one data argument to a tensor of the right dtype and device.

    :param value: a torch tensor (any dtype), a NumPy array, a pandas DataFrame
        or Series, or a (nested) list of numbers.
    :param str name: the argument's name, used in error messages. Default ``"x"``.
    :param str kind: ``"features"``, ``"labels"``, ``"mask"`` or ``"any"``
        (the table in :mod:`pvae.inputs`). Default ``"features"``.
    :param dtype: the floating dtype to convert to. Default None: a tensor keeps
        its floating dtype, anything else takes torch's default dtype.
    :type dtype: torch.dtype or None
    :param device: where the tensor goes; None leaves it where it is.
    :returns: the converted tensor (``value`` itself when nothing changes).
    :rtype: torch.Tensor
    :raises DataTypeError: if ``value`` holds no numbers (strings, objects),
        complex numbers, or labels / mask values that are not whole numbers / 0-1.
    :raises ValueError: on an unknown ``kind``.
    """
    if kind not in DATA_KINDS:
        raise ValueError(f"kind must be one of {list(DATA_KINDS)}, got {kind!r}.")
    tensor = _to_tensor(value, name)
    if tensor.is_complex():
        raise DataTypeError(f"{name} must be real, got a complex tensor ({tensor.dtype}). Try {name}.real or {name}.abs().")
    floating = dtype
    if floating is None:
        floating = value.dtype if isinstance(value, torch.Tensor) and value.is_floating_point() else torch.get_default_dtype()
    if kind == "features" or (kind == "any" and tensor.is_floating_point()):
        target = floating
    elif kind == "labels":
        target = torch.int64
        if tensor.is_floating_point():
            values = tensor.double()  # float8 / bfloat16 lack some ops; every float fits in float64
            whole = torch.isfinite(values) & (values == values.round())
            if not bool((whole & (values >= -(2.0**63)) & (values < 2.0**63)).all()):
                raise DataTypeError(
                    f"{name} must hold integer labels, got {_type_name(value)} with non-integer, "
                    f"non-finite or out-of-int64-range values. "
                    f"Try {name}.round().long(), or -1 for an unknown label where allowed."
                )
        elif tensor.dtype == torch.bool:
            raise DataTypeError(f"{name} must hold integer labels, got a bool tensor. Try {name}.long().")
    elif kind == "mask":
        target = torch.bool
        if tensor.dtype != torch.bool and not bool(((tensor == 0) | (tensor == 1)).all()):
            raise DataTypeError(
                f"{name} must be a mask of True/False (or 1/0) values, True where observed; got "
                f"{_type_name(value)} with other values. Try {name} = ~torch.isnan(x)."
            )
    else:
        target = tensor.dtype
    if tensor.dtype != target or (device is not None and tensor.device != torch.device(device)):
        tensor = tensor.to(device=device, dtype=target)
    return tensor


def as_data_args(
    program: Any,
    args: Sequence[Any],
    names: Sequence[str] | None = None,
    *,
    device: torch.device | str | None = None,
) -> tuple[Any, ...]:
    """Convert the positional data arguments of a call on ``program``.

    Each argument's kind is ``program.data_kinds[i]`` when the program declares
    it, else ``"features"`` for the first and ``"any"`` for the rest; ``None``
    arguments stay None.

    :param program: the program the data are for (its dtype and device win).
    :param args: the positional data arguments.
    :param names: names for error messages; default the program's
        ``data_names``, else ``x`` for the first and ``args[i]`` for the others.
    :param device: override the program's device.
    :returns: the converted arguments, as a tuple.
    """
    dtype, program_device = program_dtype_device(program)
    device = device if device is not None else program_device
    owner = program_owner(program)
    kinds = tuple(getattr(owner, "data_kinds", None) or ())
    names = tuple(names) if names is not None else tuple(getattr(owner, "data_names", None) or ())
    out = []
    for i, value in enumerate(args):
        if value is None:
            out.append(None)
            continue
        kind = kinds[i] if i < len(kinds) else ("features" if i == 0 else "any")
        name = names[i] if i < len(names) else ("x" if i == 0 else f"args[{i}]")
        out.append(as_data(value, name, kind=kind, dtype=dtype, device=device))
    return tuple(out)


def is_array(value: Any) -> bool:
    """A tensor, NumPy array or pandas object: one data argument, not a tuple of them."""
    return isinstance(value, (torch.Tensor, np.ndarray)) or (
        type(value).__module__.partition(".")[0] == "pandas" and hasattr(value, "to_numpy")
    )


def as_data_tuple(
    program: Any, data: Any, name: str = "data", *, device: torch.device | str | None = None
) -> tuple[torch.Tensor, ...]:
    """Read ``data`` as the program's positional arguments, converted.

    :param program: the program the data are for.
    :param data: one array (a tensor, NumPy array, pandas object, or a nested list
        of numbers), or a tuple of arrays sharing their first dimension, e.g.
        ``(x, mask)``.
    :param str name: the argument's name in errors. Default ``"data"``.
    :param device: override the program's device.
    :returns: the converted tensors, as a tuple.
    :raises DataTypeError: if ``data`` is none of those.
    :raises DataError: on arrays of different lengths, or no rows.
    """
    if is_array(data) or (isinstance(data, list) and not any(is_array(t) for t in data)):
        data = (data,)  # one array; a nested list of numbers is one too
    if not (isinstance(data, (tuple, list)) and data and all(is_array(t) or isinstance(t, list) for t in data)):
        raise DataTypeError(
            f"{name} must be an array (torch tensor, NumPy array, pandas DataFrame), or a tuple of "
            f"arrays sharing their first dimension such as (x, mask); got {type(data).__name__}. "
            f"Try np.asarray(...) on what you read, or a tuple (x, mask)."
        )
    names = [name] if len(data) == 1 else [f"{name}[{i}]" for i in range(len(data))]
    tensors = as_data_args(program, data, names, device=device)
    sizes = {t.shape[0] if t.dim() else None for t in tensors}
    if len(sizes) != 1 or None in sizes:
        raise DataError(
            f"the arrays of {name} must share their first (data) dimension, got shapes "
            f"{[tuple(t.shape) for t in tensors]}. Try passing one row per data point in each."
        )
    if next(iter(sizes)) == 0:
        raise DataError(f"{name} is empty: it has no rows. Pass at least one data point.")
    return tensors
