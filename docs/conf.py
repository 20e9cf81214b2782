"""Sphinx configuration for pvae's API reference and tutorials.

Two modes (see the Makefile's ``docs`` target and ``tests/test_docs.py``):

* full (``make docs``): the tutorials (``tutorials/NN_*.py``, jupytext percent
  scripts) are executed in their smoke mode (``PVAE_SMOKE=1``) so the pages
  carry their figures; output in ``docs/_build/html``;
* fast (``PVAE_DOCS_FAST=1``): the tutorials are rendered without running
  them; the test suite builds this mode with ``-W --keep-going`` (nitpicky) so
  a broken cross-reference or a malformed docstring fails CI.

Nothing here reaches the network: no intersphinx, and MathJax is served from
the ``sphinx-mathjax-offline`` package's copy.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(ROOT))

import pvae  # noqa: E402

FAST = os.environ.get("PVAE_DOCS_FAST", "") not in ("", "0")

project = "pvae"
author = "pvae contributors"
copyright = "pvae contributors"  # noqa: A001 - Sphinx's name
release = version = pvae.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "myst_nb",
    "pvae_docs",
]
if not FAST:  # source pages: slow to highlight, and nothing in them to check
    extensions.append("sphinx.ext.viewcode")

root_doc = "index"
# conf.py and the helpers are Python files too, and ".py" is a notebook format here
exclude_patterns = ["_build", "_ext", "conf.py", "**/.ipynb_checkpoints"]
templates_path: list[str] = []
html_theme = "furo"
html_title = f"pvae {release}"
html_static_path: list[str] = []

# MathJax from the sphinx-mathjax-offline wheel (its files go to _static/mathjax),
# so the pages render their maths without a network.
_mathjax = importlib.util.find_spec("sphinx-mathjax-offline")
if _mathjax is not None and _mathjax.origin:
    html_static_path.append(str(Path(_mathjax.origin).parent / "static"))
    mathjax_path = "mathjax/tex-chtml.js"

# --- autodoc: the docstrings are reST in Pyro's style; `:param type name:` carries
# the types, so the annotations are not repeated (they would add hundreds of
# references to typing constructs and torch types with no inventory offline).
autodoc_typehints = "none"
autodoc_member_order = "bysource"
autodoc_class_signature = "mixed"
autoclass_content = "class"
# an override without a docstring of its own (forward, expand, ...) is not shown
# with torch's or Pyro's docstring, which is in another style and about their class
autodoc_inherit_docstrings = False
add_module_names = False

# --- warnings: every reference must resolve.
nitpicky = True
nitpick_ignore = [
    # Pyro's docstring idiom `:param callable model:`; `callable` is a built-in
    # function, not a class, so Sphinx's built-in resolver does not cover it
    ("py:class", "callable"),
]
# Third-party types have no inventory offline (intersphinx is not used: there is
# no network at build time), so references to them cannot resolve. Written in
# full only: a short alias (``Tensor``, ``np.ndarray``, ``dist.Normal``) in a
# docstring is still an error.
nitpick_ignore_regex = [
    # torch.Tensor, torch.dtype, torch.nn.Module, torch.func.vmap, ...
    (r"py:.*", r"torch(\..*)?"),
    # pyro.nn.PyroModule, pyro.plate, pyro.distributions.*, pyro.contrib.cevae.CEVAE
    (r"py:.*", r"pyro(\..*)?"),
    # lightning.LightningModule, lightning.pytorch.* (pvae.lightning's base class)
    (r"py:.*", r"lightning(\..*)?"),
    # numpy.ndarray
    (r"py:.*", r"numpy(\..*)?"),
    # scipy.sparse.csgraph.dijkstra (scikit-learn's dependency)
    (r"py:.*", r"scipy(\..*)?"),
    # arviz.InferenceData, matplotlib.axes.Axes: dependencies whose types the
    # export and figure docstrings name
    (r"py:.*", r"(arviz|matplotlib)(\..*)?"),
    # pathlib.Path, os.PathLike: standard library, but without Python's
    # inventory offline either (built-in names such as int or ValueError are
    # resolved by Sphinx itself)
    (r"py:class", r"pathlib\.Path|os\.PathLike"),
]

# --- MyST (README front page, tutorials' markdown cells)
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3
myst_dmath_double_inline = True

# --- tutorials: jupytext percent scripts read as notebooks
nb_custom_formats = {".py": ["jupytext.reads", {"fmt": "py:percent"}]}
nb_merge_streams = True
nb_execution_timeout = 900
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_execution_in_temp = False
if FAST:
    nb_execution_mode = "off"
else:
    nb_execution_mode = os.environ.get("PVAE_DOCS_EXECUTE", "force")  # or "cache"
    nb_execution_cache_path = str(DOCS / "_build" / ".jupyter_cache")
    # the environment the kernels inherit: the tutorials' smoke mode, as in tests/test_tutorials.py
    os.environ.setdefault("PVAE_SMOKE", "1")
    os.environ.setdefault("PVAE_FIGURES", str(DOCS / "_build" / "figures"))
    os.environ.setdefault("PVAE_DATA", str(ROOT.parent / "shared" / "data"))
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
