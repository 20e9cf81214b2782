"""Lazy imports of the optional cheminformatics libraries (the ``[chem]`` extra)."""

from __future__ import annotations

import importlib
from types import ModuleType

INSTALL_HINT = 'pip install "pvae-pyro[chem]"  (or: pip install rdkit selfies)'


def require(module: str) -> ModuleType:
    """Import ``module`` (``"rdkit"``, ``"rdkit.Chem"``, ``"selfies"``, ...) or
    raise an ImportError that says how to install it.

    :raises ImportError: naming the missing package and the extra that installs it.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        package = module.split(".")[0]
        raise ImportError(
            f"pvae.chem needs the package {package!r}, which is not installed ({err}). Try: {INSTALL_HINT}"
        ) from err
