"""Every public function and class of jfbjax carries a real docstring.

"Public" means: named in the ``__all__`` of ``jfbjax``, of a sub-package
(``imaging``, ``models``, ``data``, ``training``) or of any of their modules
that define one; plus the public methods and properties those classes
define themselves. Constants (numbers, strings, tuples, enum members) cannot
carry a docstring of their own and are skipped.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import inspect
import pkgutil
from typing import NamedTuple

import pytest

import jfbjax

MIN_CHARS = 80  # a docstring shorter than this must span at least two lines
MIN_LINES = 2


def _modules() -> list[str]:
    names = ["jfbjax"]
    for info in pkgutil.walk_packages(jfbjax.__path__, prefix="jfbjax."):
        if not info.name.rsplit(".", 1)[-1].startswith("_"):
            names.append(info.name)
    return sorted(names)


def _own_doc(obj) -> str:
    """The docstring ``obj`` was written with: "" when it has none of its own.

    Classes do not inherit a docstring here (``inspect.getdoc`` would return
    the base class's), and the signature text that ``dataclasses`` and
    ``NamedTuple`` generate for an undocumented class does not count.
    """
    if inspect.isclass(obj):
        doc = vars(obj).get("__doc__")
        if doc and doc.startswith(f"{obj.__name__}("):  # generated: "Name(field, ...)"
            return ""
    else:
        doc = getattr(obj, "__doc__", None)
    return inspect.cleandoc(doc) if isinstance(doc, str) else ""


def _trivial(doc: str) -> bool:
    lines = [line for line in doc.splitlines() if line.strip()]
    return len(doc) < MIN_CHARS and len(lines) < MIN_LINES


def _documentable(obj) -> bool:
    if isinstance(obj, enum.Enum | int | float | str | bytes | tuple | list | dict | frozenset):
        return False
    return inspect.isclass(obj) or callable(obj)


def _methods(cls) -> list[tuple[str, object]]:
    """Public methods and properties ``cls`` defines itself (not inherited)."""
    out = []
    for name, raw in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(raw, staticmethod | classmethod):
            out.append((name, raw.__func__))
        elif isinstance(raw, property):
            out.append((name, raw.fget))
        elif inspect.isfunction(raw):
            out.append((name, raw))
    return out


def find_missing(module_names: list[str]) -> list[str]:
    """``module.name: reason`` for every public object without a real docstring."""
    problems = []
    seen: set[int] = set()
    for mod_name in module_names:
        module = importlib.import_module(mod_name)
        for name in getattr(module, "__all__", ()):
            if not hasattr(module, name):
                problems.append(f"{mod_name}.{name}: in __all__ but not defined")
                continue
            obj = getattr(module, name)
            if not _documentable(obj) or id(obj) in seen:
                continue
            seen.add(id(obj))
            doc = _own_doc(obj)
            if not doc:
                problems.append(f"{mod_name}.{name}: no docstring")
            elif _trivial(doc):
                problems.append(f"{mod_name}.{name}: docstring too short ({doc!r})")
            if inspect.isclass(obj) and obj.__module__.startswith("jfbjax"):
                for meth_name, meth in _methods(obj):
                    if not _own_doc(meth):
                        problems.append(f"{mod_name}.{name}.{meth_name}: no docstring")
    return problems


MODULES = _modules()


def test_the_walk_covers_the_subpackages():
    for sub in ("jfbjax.imaging", "jfbjax.models", "jfbjax.data", "jfbjax.training"):
        assert sub in MODULES
    # and the names the README documents are among those checked
    assert {"fixed_point", "Anderson", "JFB", "IFT"} <= set(jfbjax.__all__)


@pytest.mark.parametrize("module_name", MODULES)
def test_public_objects_have_docstrings(module_name):
    problems = find_missing([module_name])
    assert not problems, "missing or trivial docstrings:\n  " + "\n  ".join(problems)


def test_the_check_flags_missing_docstrings(tmp_path, monkeypatch):
    """The checker is not vacuous: undocumented objects of every kind are caught."""
    source = '''
import dataclasses
from typing import NamedTuple

__all__ = ["bare", "short", "Data", "Tuple", "Documented", "CONSTANT"]

CONSTANT = 3


def bare(x):
    return x


def short(x):
    """Too short."""
    return x


@dataclasses.dataclass
class Data:
    x: int = 0


class Tuple(NamedTuple):
    a: int


class Documented:
    """A class with a proper docstring that is long enough to pass the check
    and spans two lines, but one of its methods has none."""

    def method(self):
        return 1

    @property
    def prop(self):
        return 2

    def _private(self):
        return 3
'''
    (tmp_path / "jfbjax_docstring_probe.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    problems = find_missing(["jfbjax_docstring_probe"])
    flagged = {p.split(":")[0].removeprefix("jfbjax_docstring_probe.") for p in problems}
    assert flagged == {"bare", "short", "Data", "Tuple", "Documented.method", "Documented.prop"}


def test_the_check_accepts_documented_objects():
    @dataclasses.dataclass
    class Fine:
        """A dataclass with a docstring of its own, long enough to count as one
        (two lines)."""

        x: int = 0

    class AlsoFine(NamedTuple):
        """A record with one integer field ``a``, described at some length on a single line."""

        a: int

    assert _own_doc(Fine) and not _trivial(_own_doc(Fine))
    assert _own_doc(AlsoFine) and not _trivial(_own_doc(AlsoFine))
