"""Every public function and class documents its arguments and result, and the public functions have type hints.

Public: ``hyperloss.__all__``, ``hyperloss.distributed.__all__``, ``hyperloss.jax.__all__`` (where it imports), and
the functions and classes of ``hyperloss.reference`` whose names do not start with "_". Docstrings are Google style:
an ``Args:`` section naming every parameter, a ``Returns:`` section (``Attributes:`` for named tuples).
"""

from __future__ import annotations

import importlib
import inspect
import re
from types import ModuleType

import hyperloss
import hyperloss.distributed
import hyperloss.reference

# Gaps in files this check may not fix yet.
KNOWN_GAPS: set[str] = set()

_SECTION = r"^\s*{}:\s*$(.*?)(?=^\s*(?:Args|Returns|Raises|Attributes|Examples?|Notes?):\s*$|\Z)"


def _section(doc: str, name: str) -> str | None:
    match = re.search(_SECTION.format(name), doc, re.S | re.M)
    return None if match is None else match.group(1)


def _names_missing(section: str, names: list[str]) -> list[str]:
    return [n for n in names if not re.search(rf"\b{re.escape(n)}\b", section)]


def _function_gaps(qualname: str, function, skip_self: bool = False) -> list[str]:
    doc = inspect.getdoc(function) or ""
    if not doc:
        return [f"{qualname}: no docstring"]
    signature = inspect.signature(function)
    params = [p for p in signature.parameters.values() if not (skip_self and p.name == "self")]
    gaps = []
    if params:
        args = _section(doc, "Args")
        if args is None:
            gaps.append(f"{qualname}: no Args section")
        else:
            gaps += [f"{qualname}: Args does not name {n}" for n in _names_missing(args, [p.name for p in params])]
    if _section(doc, "Returns") is None:
        gaps.append(f"{qualname}: no Returns section")
    gaps += [f"{qualname}: no type hint for {p.name}" for p in params if p.annotation is inspect.Parameter.empty]
    if signature.return_annotation is inspect.Signature.empty:
        gaps.append(f"{qualname}: no return type hint")
    return gaps


def _class_gaps(qualname: str, cls: type) -> list[str]:
    doc = inspect.getdoc(cls) or ""
    if not doc:
        return [f"{qualname}: no docstring"]
    if issubclass(cls, tuple) and hasattr(cls, "_fields"):  # a named tuple: its fields
        attributes = _section(doc, "Attributes")
        if attributes is None:
            return [f"{qualname}: no Attributes section"]
        return [f"{qualname}: Attributes does not name {n}" for n in _names_missing(attributes, list(cls._fields))]
    gaps = []
    params = [p.name for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"]
    args = _section(doc, "Args")
    if params and args is None:
        gaps.append(f"{qualname}: no Args section for the constructor")
    elif params:
        gaps += [f"{qualname}: Args does not name {n}" for n in _names_missing(args, params)]
    for name, member in vars(cls).items():
        if inspect.isfunction(member) and not name.startswith("_") and name != "extra_repr":
            gaps += _function_gaps(f"{qualname}.{name}", member, skip_self=True)
    return gaps


def _public(module: ModuleType) -> list[str]:
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [
        name
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and (inspect.isfunction(obj) or inspect.isclass(obj))
        and obj.__module__ == module.__name__
    ]


def public_api_gaps() -> list[str]:
    modules = [hyperloss, hyperloss.distributed, hyperloss.reference]
    try:
        modules.append(importlib.import_module("hyperloss.jax"))
    except ImportError:  # jax or the FFI library missing: nothing of it is usable here
        pass
    gaps = []
    for module in modules:
        for name in _public(module):
            obj, qualname = getattr(module, name), f"{module.__name__}.{name}"
            if inspect.ismodule(obj):
                gaps += [] if obj.__doc__ else [f"{qualname}: no module docstring"]
            elif inspect.isclass(obj):
                gaps += _class_gaps(qualname, obj)
            elif callable(obj):
                gaps += _function_gaps(qualname, obj)
    return gaps


def test_public_api_is_documented_and_typed():
    gaps = set(public_api_gaps())
    assert not gaps - KNOWN_GAPS, "\n".join(sorted(gaps - KNOWN_GAPS))
