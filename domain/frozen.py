"""A faster `dataclasses.replace` for the frozen, slotted state records of the hot path.

`dataclasses.replace` re-runs the generated `__init__` with every field as a keyword;
folding states (`evolve`, the agents' views) does it once per delivered message, so it
showed up in profiles. This copies the fields directly. Only for frozen dataclasses
without `__post_init__`, `InitVar`s or `init=False` fields (checked on first use).
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

_T = TypeVar("_T")
_FIELDS: dict[type, tuple[tuple[str, ...], frozenset[str]]] = {}


def _fields(cls: type) -> tuple[tuple[str, ...], frozenset[str]]:
    fields = dataclasses.fields(cls)
    if hasattr(cls, "__post_init__") or any(not f.init for f in fields):
        raise TypeError(f"{cls.__name__} needs dataclasses.replace (post-init or init=False)")
    names = tuple(f.name for f in fields)
    _FIELDS[cls] = (names, frozenset(names))
    return _FIELDS[cls]


def replace(obj: _T, /, **changes: Any) -> _T:
    """A copy of the dataclass instance `obj` with `changes` applied (like
    `dataclasses.replace`); an unknown field name raises TypeError."""
    cls = type(obj)
    names, known = _FIELDS.get(cls) or _fields(cls)
    for name in changes:
        if name not in known:
            raise TypeError(f"{cls.__name__} has no field {name!r}")
    new = object.__new__(cls)
    setattr_ = object.__setattr__
    for name in names:
        setattr_(new, name, changes[name] if name in changes else getattr(obj, name))
    return new
