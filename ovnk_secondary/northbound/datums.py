"""Committed column values of IDL rows, read straight from their datums.

`Row.__getattr__` resolves every reference to a row object and sorts sets on each access,
which costs O(N log N) for a switch's `ports` at N ports (it made pod creation quadratic).
Outside a transaction, and for rows it does not touch, the committed datum (`Row._data`) is
the row's value; a row inserted by the running transaction has none (`_data is None`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ovs.db import data as ovs_data
from ovs.db import types as ovs_types

from ovnk_secondary import naming


def owned(external_ids: dict[str, str]) -> bool:
    """Whether a row with these external_ids carries our ownership marker."""
    return external_ids.get(naming.OWNER_KEY) == naming.OWNER_VALUE


def map_(row: Any, column: str) -> dict[str, str]:
    return {k.value: v.value for k, v in row._data[column].values.items()}


def strings(row: Any, column: str) -> tuple[str, ...]:
    return tuple(sorted(k.value for k in row._data[column].values))


def scalar(row: Any, column: str) -> Any:
    """The value of a column of at most one value (None when empty)."""
    return row._data[column].as_scalar()


def uuids(row: Any, column: str) -> Iterator[Any]:
    return (k.value for k in row._data[column].values)


def references(row: Any, column: str, target: Any) -> bool:
    """Whether the reference set `column` of `row` holds the row with uuid `target`: O(1)."""
    return ovs_data.Atom(ovs_types.UuidType, target) in row._data[column].values
