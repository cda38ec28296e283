"""Frozen dataclasses <-> Flower ``ConfigRecord`` mappings with kebab-case keys."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

__all__ = ["to_record", "from_record"]

T = TypeVar("T")


def to_record(obj: Any) -> dict[str, Any]:
    """``{"field-name": value}`` for every field of the dataclass instance ``obj``."""
    return {f.name.replace("_", "-"): getattr(obj, f.name) for f in dataclasses.fields(obj)}


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
