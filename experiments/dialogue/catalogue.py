"""The catalogue of the ask-to-identify game: 100 animals and objects, 23 yes/no attributes each.

`catalogue.csv` (beside this module, written by the project) has a header
``name,animal,mammal,...`` and one row per item with 0/1 per attribute; every
item has a distinct attribute vector, so ten well-chosen questions can always
identify it. `load_catalogue` checks this and names the file and line of bad
input.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os

import numpy as np
from etils import epath

__all__ = ["DEFAULT_PATH", "SMALL_PATH", "Catalogue", "load_catalogue"]

DEFAULT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "catalogue.csv")
# 16 of those items and 12 of the attributes (every item still distinct): the benchmark's default, a size a
# 2-layer model clones on 2 CPU cores (docs/results/dialogue.md).
SMALL_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "catalogue_small.csv")


@dataclasses.dataclass(frozen=True)
class Catalogue:
    """Items and their boolean attributes.

    Attributes:
      names: item names (one lowercase word each), in file order.
      attributes: attribute names, in column order.
      table: bool [n_items, n_attributes]; table[i, j] = item i has attribute j.
    """

    names: tuple[str, ...]
    attributes: tuple[str, ...]
    table: np.ndarray

    def __post_init__(self):
        if self.table.shape != (len(self.names), len(self.attributes)) or self.table.dtype != np.bool_:
            raise ValueError(f"Catalogue.table must be bool [{len(self.names)}, {len(self.attributes)}], "
                             f"got {self.table.dtype} {self.table.shape}")
        object.__setattr__(self, "index", {name: i for i, name in enumerate(self.names)})
        object.__setattr__(self, "attribute_index", {a: j for j, a in enumerate(self.attributes)})

    def has(self, item: str, attribute: str) -> bool:
        """Whether `item` has `attribute` (KeyError naming an unknown one)."""
        if item not in self.index:
            raise KeyError(f"unknown item {item!r}")
        if attribute not in self.attribute_index:
            raise KeyError(f"unknown attribute {attribute!r}")
        return bool(self.table[self.index[item], self.attribute_index[attribute]])


def load_catalogue(path: str = DEFAULT_PATH) -> Catalogue:
    """Reads a catalogue CSV, local or `gs://` (see the module docstring); ValueError naming file and line on
    bad input."""
    rows = list(csv.reader(io.StringIO(epath.Path(path).read_text(), newline="")))
    if not rows or not rows[0] or rows[0][0] != "name":
        raise ValueError(f"{path}:1: the header must start with 'name', then the attribute names")
    attributes = tuple(rows[0][1:])
    if not attributes or len(set(attributes)) != len(attributes):
        raise ValueError(f"{path}:1: need distinct attribute names, got {attributes}")
    names, table, seen = [], [], {}
    for lineno, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(attributes) + 1:
            raise ValueError(f"{path}:{lineno}: expected {len(attributes) + 1} fields, got {len(row)}")
        name, values = row[0], row[1:]
        if not name.isalpha() or not name.islower():
            raise ValueError(f"{path}:{lineno}: item name {name!r} must be one lowercase word")
        if name in attributes:
            raise ValueError(f"{path}:{lineno}: item {name!r} has an attribute's name; questions would be ambiguous")
        bad = [a for a, v in zip(attributes, values) if v not in ("0", "1")]
        if bad:
            raise ValueError(f"{path}:{lineno}: values of {bad} must be 0 or 1")
        vector = tuple(v == "1" for v in values)
        if name in names:
            raise ValueError(f"{path}:{lineno}: duplicate item {name!r}")
        if vector in seen:
            raise ValueError(f"{path}:{lineno}: {name!r} has the same attributes as {seen[vector]!r}")
        seen[vector] = name
        names.append(name)
        table.append(vector)
    if not names:
        raise ValueError(f"{path}: no items")
    return Catalogue(tuple(names), attributes, np.array(table, dtype=np.bool_))
