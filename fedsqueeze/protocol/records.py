"""Frozen dataclasses <-> Flower ``ConfigRecord`` mappings with kebab-case keys."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

__all__ = ["OMIT_DEFAULT", "to_record", "from_record"]

T = TypeVar("T")


#: Field metadata of a key left out of the record while it has its default value (see :func:`to_record`).
OMIT_DEFAULT = {"omit-default": True}


def to_record(obj: Any) -> dict[str, Any]:
    """``{"field-name": value}`` for every field of the dataclass instance ``obj``.

    A field declared with ``metadata=OMIT_DEFAULT`` is left out while it holds its
    default: keys added to an instruction later (``dataset``, ``device``) do not
    change the bytes of the messages of runs that leave them at their defaults.
    :func:`from_record` fills them back in.
    """
    return {f.name.replace("_", "-"): getattr(obj, f.name) for f in dataclasses.fields(obj)
            if not (f.metadata.get("omit-default") and getattr(obj, f.name) == f.default)}


def from_record(cls: type[T], record: Mapping[str, Any], what: str) -> T:
    """Build ``cls`` from a kebab-case mapping; fields with defaults may be absent.

    Raises
    ------
    ValueError
        If a field without a default is missing (named, with ``what`` saying
        which kind of record it was).
    """
    fields = {f.name.replace("_", "-"): f for f in dataclasses.fields(cls)}
    missing = [k for k, f in fields.items()
               if k not in record and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"{what} misses keys {missing}")
    return cls(**{f.name: record[k] for k, f in fields.items() if k in record})
