"""Sphinx helpers for pvae's docs (used by ``docs/conf.py`` only).

* ``.. pvae-api:: PACKAGE`` documents every name in ``PACKAGE.__all__``: the
  package docstring, then one section per defining submodule (in import order,
  names in source order) with ``autoclass`` / ``autoexception`` /
  ``autofunction`` / ``autodata`` entries under their public names
  (``pvae.infer.iwae_bound``, not ``pvae.infer.bounds.iwae_bound``). A name
  that another documented package owns (``pvae.VAE`` is ``pvae.models.VAE``)
  becomes a short alias entry that links there, so no object is described
  twice. Constants have no ``__doc__``; their description is given in the
  directive body as ``:NAME: text``. A public name with no docstring and no
  description is a warning, so ``-W`` builds (the test suite) fail on it.
* The tutorials ``tutorials/NN_*.py`` (jupytext percent scripts) are copied
  into ``docs/tutorials/`` before reading, each with one hidden first cell
  that makes the notebook run like ``python tutorials/NN_name.py`` (``__file__``
  and the working directory) and shows every PNG the script saves where it
  saves it (the scripts use the Agg backend and close their figures).
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
from pathlib import Path

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.inspect import stringify_signature
from sphinx.util.nodes import nested_parse_with_titles

logger = logging.getLogger(__name__)

DOCS = Path(__file__).resolve().parents[1]
ROOT = DOCS.parent


def api_packages() -> dict[str, str]:
    """``{package: docname}`` for every ``.. pvae-api:: package`` in ``docs/api/``."""
    found = {}
    for page in sorted((DOCS / "api").glob("*.rst")):
        for m in re.finditer(r"^\.\. pvae-api::\s*(\S+)\s*$", page.read_text(encoding="utf-8"), re.M):
            found[m.group(1)] = f"api/{page.stem}"
    return found


#: The packages with an API page each; of those that export an object, the one
#: that is the longest prefix of its ``__module__`` documents it in full.
API_PACKAGES = tuple(api_packages())


# --------------------------------------------------------------------------- API pages
def _kind(obj) -> str:
    if inspect.ismodule(obj):
        return "module"
    if inspect.isclass(obj):
        return "exception" if issubclass(obj, BaseException) else "class"
    if inspect.isroutine(obj):
        return "function"
    return "data"


def _own_doc(obj) -> str:
    """The object's own docstring (a class's is not inherited from its bases)."""
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    return inspect.cleandoc(doc) if isinstance(doc, str) else ""


def owner(obj, name: str) -> str | None:
    """The documented package whose page describes ``obj`` (None for constants)."""
    module = getattr(obj, "__module__", None)
    if _kind(obj) in ("data", "module") or not isinstance(module, str):
        return None
    best = None
    for pkg_name in API_PACKAGES:
        if module == pkg_name or module.startswith(pkg_name + "."):
            pkg = importlib.import_module(pkg_name)
            if name in getattr(pkg, "__all__", ()) and getattr(pkg, name, None) is obj:
                if best is None or len(pkg_name) > len(best):
                    best = pkg_name
    return best


def _summary(doc: str, literal_roles: bool = False) -> str:
    """The first paragraph of a docstring, on one line.

    With ``literal_roles``, cross-references become literals (their targets were
    written relative to the object's own module and need not resolve elsewhere).
    """
    para = doc.strip().split("\n\n", 1)[0]
    text = " ".join(line.strip() for line in para.splitlines())
    if literal_roles:
        def literal(m: re.Match) -> str:
            target = m.group(2)
            titled = re.match(r"^(.*?)\s*<[^>]*>$", target)  # :class:`title <target>`
            if titled:
                return f"``{titled.group(1)}``"
            if target.startswith("~"):  # :class:`~a.b.C` shows C
                return f"``{target.rsplit('.', 1)[-1]}``"
            return f"``{target}``"

        text = re.sub(r":(?:py:)?(func|meth|class|exc|mod|attr|data|obj):`([^`]+)`", literal, text)
    return text


def _parse_descriptions(content) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    current = None
    for line in content:
        m = re.match(r"^:([A-Za-z_][A-Za-z0-9_]*):\s*(.*)$", line)
        if m:
            current = m.group(1)
            out[current] = [m.group(2)] if m.group(2) else []
        elif current is not None:
            out[current].append(line.strip())
    return out


class ApiDirective(SphinxDirective):
    """``.. pvae-api:: pvae.infer`` (see the module docstring)."""

    required_arguments = 1
    has_content = True

    def run(self) -> list[nodes.Node]:
        pkg_name = self.arguments[0]
        pkg = importlib.import_module(pkg_name)
        described = _parse_descriptions(self.content)
        order = {key: i for i, key in enumerate(vars(pkg))}
        lines: list[str] = [f".. automodule:: {pkg_name}", ""]
        subpackages, aliases, constants = [], [], []
        groups: dict[str, list[tuple[int, str, object]]] = {}
        for name in pkg.__all__:
            obj = getattr(pkg, name)
            kind = _kind(obj)
            if kind == "module":
                subpackages.append((name, obj))
            elif kind == "data":
                constants.append((name, obj))
            elif owner(obj, name) not in (None, pkg_name):
                aliases.append((name, obj))
            else:
                try:
                    line_no = inspect.getsourcelines(obj)[1]
                except (OSError, TypeError):
                    line_no = 0
                groups.setdefault(obj.__module__, []).append((line_no, name, obj))
        for name, obj in [(n, o) for n, o in constants if n not in described and not _attr_doc(pkg_name, n)]:
            logger.warning(
                "%s.%s is public (in __all__) but undocumented: give it a description "
                "(':%s: ...' under '.. pvae-api:: %s' in %s)", pkg_name, name, name, pkg_name, self.env.docname,
                location=(self.env.docname, self.lineno),
            )
        for entries in groups.values():
            for _, name, obj in entries:
                if not _own_doc(obj):
                    logger.warning(
                        "%s.%s is public (in __all__) but has no docstring", pkg_name, name,
                        location=(self.env.docname, self.lineno),
                    )

        if subpackages:
            lines += _heading("Subpackages")
            for name, obj in subpackages:
                lines += [f"* :mod:`{obj.__name__}`: {_summary(_own_doc(obj))}"]
            lines += [""]

        def group_key(module: str) -> tuple[int, str]:
            child = module[len(pkg_name) + 1 :].split(".")[0] if module.startswith(pkg_name + ".") else ""
            return (order.get(child, len(order)), module)

        for module in sorted(groups, key=group_key):
            mod = importlib.import_module(module)
            lines += _heading(f"``{module}``")
            # the submodule is a target for :mod: references (unless the package
            # exports a name that shadows it: pvae.infer.elbo is the function)
            if module.startswith(pkg_name + ".") and module.rsplit(".", 1)[-1] not in pkg.__all__:
                lines += [f".. py:module:: {module}", "", f".. py:currentmodule:: {pkg_name}", ""]
            intro = _summary(_own_doc(mod))
            if intro:
                lines += [intro, ""]
            for _, name, obj in sorted(groups[module], key=lambda e: (e[0], e[1])):
                kind = _kind(obj)
                lines += [f".. auto{kind}:: {pkg_name}.{name}"]
                if kind in ("class", "exception"):
                    lines += ["   :members:", "   :special-members: __call__"]
                    if _public_base_list(obj.__bases__):
                        lines += ["   :show-inheritance:"]
                lines += [""]

        if constants:
            lines += _heading("Constants")
            for name, obj in constants:
                lines += [f".. autodata:: {pkg_name}.{name}"]
                if len(repr(obj)) > 70:
                    lines += ["   :no-value:"]
                lines += [""] + ["   " + s for s in described.get(name, [])] + [""]

        if aliases:
            lines += _heading("Shortcuts")
            lines += [f"Re-exported from the subpackages, so ``import {pkg_name}`` is enough.", ""]
            for name, obj in aliases:
                kind = _kind(obj)
                target = f"{owner(obj, name)}.{name}"
                role = {"function": "func", "class": "class", "exception": "exc"}[kind]
                sig = ""
                if kind == "function":
                    try:
                        sig = stringify_signature(inspect.signature(obj), show_annotation=False)
                    except (TypeError, ValueError):
                        sig = "(...)"
                lines += [f".. py:{kind}:: {name}{sig}", ""]
                lines += [f"   Alias of :{role}:`{target}`: {_summary(_own_doc(obj), literal_roles=True)}", ""]

        node = nodes.section()
        node.document = self.state.document
        nested_parse_with_titles(self.state, StringList(lines, source=f"<pvae-api {pkg_name}>"), node)
        # A shortcut is an alias: a reference that could mean it or the full entry
        # (``:raises DataError:`` in pvae.data) resolves to the full entry.
        objects = self.env.get_domain("py").objects
        for name, _ in aliases:
            entry = objects.get(f"{pkg_name}.{name}")
            if entry is not None:
                objects[f"{pkg_name}.{name}"] = entry._replace(aliased=True)
        return node.children


def _attr_doc(pkg_name: str, name: str) -> bool:
    from sphinx.pycode import ModuleAnalyzer

    try:
        return ("", name) in ModuleAnalyzer.for_module(pkg_name).find_attr_docs()
    except Exception:  # noqa: BLE001 - no source: no doc comment
        return False


def _heading(title: str) -> list[str]:
    return [title, "-" * max(len(title), 4), ""]


# --------------------------------------------------------------------------- tutorials
_SETUP_CELL = '''\
# %% tags=["remove-cell"]
# Added by docs/_ext/pvae_docs.py: run as `python {rel}` would, and show
# each PNG the script saves, where it saves it.
__file__ = {file!r}
import os as _os

_os.chdir({root!r})


def _pvae_docs_show_saved_figures():
    import matplotlib.figure
    from IPython.display import Image, display

    savefig = matplotlib.figure.Figure.savefig

    def savefig_and_show(self, fname, *args, **kwargs):
        out = savefig(self, fname, *args, **kwargs)
        if isinstance(fname, (str, _os.PathLike)) and _os.fspath(fname).lower().endswith(".png"):
            display(Image(filename=_os.fspath(fname)))
        return out

    matplotlib.figure.Figure.savefig = savefig_and_show


_pvae_docs_show_saved_figures()

'''


def tutorial_sources() -> list[Path]:
    return sorted((ROOT / "tutorials").glob("[0-9][0-9]_*.py"))


def _with_setup_cell(script: Path) -> str:
    text = script.read_text(encoding="utf-8")
    cell = _SETUP_CELL.format(rel=script.relative_to(ROOT).as_posix(), file=str(script), root=str(ROOT))
    lines = text.splitlines(keepends=True)
    end = 0
    if lines and lines[0].rstrip() == "# ---":  # the jupytext header stays first
        for i in range(1, len(lines)):
            if lines[i].rstrip() == "# ---":
                end = i + 1
                break
    return "".join(lines[:end]) + ("\n" if end else "") + cell + "".join(lines[end:])


def sync_tutorials(app) -> None:
    """Copy ``tutorials/NN_*.py`` to ``docs/tutorials/`` (rewriting only what changed)."""
    out = DOCS / "tutorials"
    out.mkdir(exist_ok=True)
    wanted = {}
    for script in tutorial_sources():
        wanted[script.name] = _with_setup_cell(script)
    for stale in out.glob("*.py"):
        if stale.name not in wanted:
            stale.unlink()
    for name, text in wanted.items():
        target = out / name
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            tmp = target.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, target)


def _public_base_list(bases) -> list:
    """Public bases: a private pvae base is replaced by its bases; no ``object``."""
    out: list = []

    def add(base) -> None:
        if getattr(base, "__name__", "").startswith("_") and getattr(base, "__module__", "").startswith("pvae"):
            for b in base.__bases__:
                add(b)
        elif base not in out and base is not object:
            out.append(base)

    for base in bases:
        add(base)
    return out


def _public_bases(app, name, obj, options, bases: list) -> None:
    """``Bases:`` lists public classes only (a class with none gets no such line)."""
    bases[:] = _public_base_list(bases)


def _drop_type_docstring(app, what, name, obj, options, lines: list) -> None:
    """A constant has no docstring of its own; don't show its type's (``dict()`` -> ...)."""
    if what in ("data", "attribute") and not inspect.isclass(obj) and not inspect.isroutine(obj):
        type_doc = type(obj).__doc__
        if type_doc and "\n".join(lines).strip() == inspect.cleandoc(type_doc).strip():
            lines[:] = []


def setup(app):
    app.add_directive("pvae-api", ApiDirective)
    app.connect("autodoc-process-bases", _public_bases)
    app.connect("autodoc-process-docstring", _drop_type_docstring)
    app.connect("builder-inited", sync_tutorials)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}


__all__ = ["API_PACKAGES", "ApiDirective", "owner", "setup", "sync_tutorials", "tutorial_sources"]
