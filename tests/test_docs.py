"""The API reference builds without a single warning, and documents every public name.

``docs/`` is a Sphinx site (``make docs`` builds it in full, running the
tutorials). Here it is built in its fast mode (``PVAE_DOCS_FAST=1``: the
tutorials are rendered, not run) with ``-W --keep-going`` and ``nitpicky``, so
a broken cross-reference, a malformed docstring, or a public name (in a
package's ``__all__``) without a docstring fails the suite. Each API page is
``.. pvae-api:: PACKAGE`` in ``docs/api/``; a new subpackage needs one.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pickle
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _api_pages() -> dict[str, str]:
    """``{package: docname}`` for every ``.. pvae-api:: package`` directive (read by
    the docs' own extension, so the test and the build agree)."""
    sys.path.insert(0, str(DOCS / "_ext"))
    try:
        from pvae_docs import api_packages
    finally:
        sys.path.remove(str(DOCS / "_ext"))
    return api_packages()


def _public_names(package: str) -> list[tuple[str, object]]:
    module = importlib.import_module(package)
    return [(name, getattr(module, name)) for name in module.__all__]


def _own_doc(obj) -> str:
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    return doc.strip() if isinstance(doc, str) else ""


def test_pvae_and_every_subpackage_have_an_api_page() -> None:
    import pvae

    packages = {"pvae"} | {f"pvae.{m.name}" for m in pkgutil.iter_modules(pvae.__path__) if m.ispkg}
    missing = sorted(packages - set(_api_pages()))
    assert not missing, f"no API page for {missing}: add docs/api/NAME.rst with '.. pvae-api:: PACKAGE'"


def test_every_public_class_function_and_module_has_a_docstring() -> None:
    # constants cannot carry a __doc__: their description is on the API page,
    # which test_every_public_name_is_documented_on_its_page checks
    missing = [
        f"{package}.{name}"
        for package in _api_pages()
        for name, obj in _public_names(package)
        if (inspect.isclass(obj) or inspect.isroutine(obj) or inspect.ismodule(obj)) and not _own_doc(obj)
    ]
    assert not missing, f"public names without a docstring: {missing}"


@pytest.fixture(scope="module")
def fast_build(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    pytest.importorskip(
        "sphinx", reason="sphinx is not installed: `pip install -e '.[dev]'` (as `make test` does) to check the docs"
    )
    out = tmp_path_factory.mktemp("docs")
    env = dict(os.environ, PVAE_DOCS_FAST="1")
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html"]
    command += ["-d", str(out / "doctrees"), str(DOCS), str(out / "html")]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return proc, out


def test_docs_build_without_warnings(fast_build) -> None:
    proc, _ = fast_build
    assert proc.returncode == 0, (
        "the API reference has warnings (PVAE_DOCS_FAST=1 python -m sphinx -W --keep-going -b html docs OUT):\n"
        f"{proc.stderr[-8000:]}\n{proc.stdout[-2000:]}"
    )


def test_every_public_name_is_documented_on_its_page(fast_build) -> None:
    from docutils import nodes
    from sphinx import addnodes

    proc, out = fast_build
    pages = _api_pages()
    doctrees = {}
    for docname in set(pages.values()):
        path = out / "doctrees" / f"{docname}.doctree"
        assert path.exists(), f"{docname} was not built:\n{proc.stderr[-4000:]}"
        doctrees[docname] = pickle.loads(path.read_bytes())
    ids = {i for tree in doctrees.values() for node in tree.findall(nodes.Element) for i in node.get("ids", ())}

    problems = []
    for package, docname in pages.items():
        entries = {}
        for desc in doctrees[docname].findall(addnodes.desc):
            for signature in desc.findall(addnodes.desc_signature):
                for node_id in signature["ids"]:
                    entries.setdefault(node_id, desc)
        for name, obj in _public_names(package):
            if inspect.ismodule(obj):
                if f"module-{obj.__name__}" not in ids:
                    problems.append(f"{package}.{name}: module {obj.__name__} has no API page")
                continue
            desc = entries.get(f"{package}.{name}")
            if desc is None:
                problems.append(f"{package}.{name}: not on {docname}")
                continue
            content = next(iter(desc.findall(addnodes.desc_content)), None)
            if content is None or not content.astext().strip():
                problems.append(f"{package}.{name}: on {docname} without a description")
    assert not problems, "public names missing from the API reference:\n" + "\n".join(problems)
