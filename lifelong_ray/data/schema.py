"""Schema contracts: validate incoming rows against the configured features.

Pure (numpy/pyarrow only, no Ray, no I/O). Each broken rule is a
:class:`Violation` naming the row, the field and the rule, so the HTTP layer can
answer 4xx with exactly what was wrong and the quarantine can store why.

    >>> from lifelong_ray.config import FeatureSpec, LabelSpec, ModelSpec
    >>> spec = ModelSpec(name="m", features=[FeatureSpec(name="x", min=0, max=1),
    ...                  FeatureSpec(name="c", dtype="category", categories=["a", "b"])],
    ...                  label=LabelSpec(name="y", classes=[0, 1]))
    >>> cols, bad = Schema(spec).validate_records([{"x": 0.5, "c": "a"}, {"x": 7, "c": "z"}])
    >>> [(v.index, v.field, v.rule.value) for v in bad]
    [(1, 'x', 'above_max'), (1, 'c', 'unknown_category')]
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from lifelong_ray.config import FeatureSpec, ModelSpec


class Rule(str, Enum):
    MISSING = "missing"
    UNEXPECTED = "unexpected"
    NOT_AN_OBJECT = "not_an_object"
    TYPE = "type"
    NULL = "null"
    NOT_FINITE = "not_finite"
    BELOW_MIN = "below_min"
    ABOVE_MAX = "above_max"
    UNKNOWN_CATEGORY = "unknown_category"
    NOT_INTEGER = "not_integer"
    SCHEMA_CHANGED = "schema_changed"
    LABEL_DOMAIN = "label_domain"


@dataclass(frozen=True)
class Violation:
    """One broken rule. ``index`` is the row (None for a whole batch)."""

    index: int | None
    field: str
    rule: Rule
    message: str

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["rule"] = self.rule.value
        return d


_ABSENT = object()  # a field that is missing, or a row that is not an object: reported once


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class Schema:
    """The feature contract of one model."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.features: list[FeatureSpec] = list(spec.features)
        self.names: list[str] = [f.name for f in self.features]
        self.by_name = {f.name: f for f in self.features}
        self.label = spec.label

    # -- arrow ---------------------------------------------------------------
    def arrow_fields(self) -> list[pa.Field]:
        out = []
        for f in self.features:
            typ = pa.string() if f.dtype == "category" else pa.float64()
            out.append(pa.field(f.name, typ, nullable=f.nullable))
        return out

    # -- records (HTTP) ------------------------------------------------------
    def validate_records(
        self, records: Sequence[Any]
    ) -> tuple[dict[str, np.ndarray], list[Violation]]:
        """Check JSON-like rows; return columns (numeric as float64, categories as
        object arrays, nulls as NaN/None) and every violation found."""
        violations: list[Violation] = []
        n = len(records)
        raw: dict[str, list[Any]] = {name: [_ABSENT] * n for name in self.names}
        allowed = set(self.names)
        for i, rec in enumerate(records):
            if not isinstance(rec, dict):
                violations.append(Violation(i, "<row>", Rule.NOT_AN_OBJECT,
                                            f"instances[{i}] must be an object of feature: value"))
                continue
            for key in rec.keys() - allowed:
                violations.append(Violation(i, str(key), Rule.UNEXPECTED,
                                            f"instances[{i}].{key} is not a feature of this model"))
            for name in self.names:
                if name not in rec:
                    violations.append(Violation(i, name, Rule.MISSING,
                                                f"instances[{i}].{name} is required"))
                else:
                    raw[name][i] = rec[name]
        cols: dict[str, np.ndarray] = {}
        for f in self.features:
            values = raw[f.name]
            if f.dtype == "category":
                cols[f.name] = self._check_category(f, values, violations)
            else:
                cols[f.name] = self._check_numeric(f, values, violations)
        violations.sort(key=lambda v: (v.index if v.index is not None else -1, self._order(v.field)))
        return cols, violations

    def _order(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            return len(self.names)

    def _check_numeric(self, f: FeatureSpec, values: list[Any], out: list[Violation]) -> np.ndarray:
        arr = np.full(len(values), np.nan)
        skip: list[int] = []
        for i, v in enumerate(values):
            if v is None:
                continue
            if v is _ABSENT:
                skip.append(i)
                continue
            if not _is_number(v):
                out.append(Violation(i, f.name, Rule.TYPE,
                                     f"instances[{i}].{f.name} must be a number, got {type(v).__name__}"))
                skip.append(i)
                continue
            arr[i] = float(v) if not isinstance(v, int) or abs(v) < 2**63 else math.inf
        self._numeric_rules(f, arr, [v is None for v in values], out, skip)
        return arr

    def _numeric_rules(self, f: FeatureSpec, arr: np.ndarray, is_null: Sequence[bool],
                       out: list[Violation], skip: Sequence[int] = ()) -> None:
        """Vectorized range/finiteness checks over one column."""
        skip_mask = np.zeros(len(arr), dtype=bool)
        skip_mask[list(skip)] = True
        null = np.asarray(is_null, dtype=bool) & ~skip_mask
        if not f.nullable:
            for i in np.flatnonzero(null):
                out.append(Violation(int(i), f.name, Rule.NULL, f"instances[{i}].{f.name} must not be null"))
        present = ~null & ~skip_mask
        with np.errstate(invalid="ignore"):
            nonfinite = present & ~np.isfinite(arr)
            for i in np.flatnonzero(nonfinite):
                out.append(Violation(int(i), f.name, Rule.NOT_FINITE,
                                     f"instances[{i}].{f.name} must be finite, got {arr[i]}"))
            ok = present & ~nonfinite
            if f.dtype == "int":
                for i in np.flatnonzero(ok & (np.floor(arr) != arr)):
                    out.append(Violation(int(i), f.name, Rule.NOT_INTEGER,
                                         f"instances[{i}].{f.name} must be an integer, got {arr[i]}"))
            if f.min is not None:
                for i in np.flatnonzero(ok & (arr < f.min)):
                    out.append(Violation(int(i), f.name, Rule.BELOW_MIN,
                                         f"instances[{i}].{f.name}={arr[i]:g} is below min {f.min:g}"))
            if f.max is not None:
                for i in np.flatnonzero(ok & (arr > f.max)):
                    out.append(Violation(int(i), f.name, Rule.ABOVE_MAX,
                                         f"instances[{i}].{f.name}={arr[i]:g} is above max {f.max:g}"))

    def _check_category(self, f: FeatureSpec, values: list[Any], out: list[Violation]) -> np.ndarray:
        cats = set(f.categories or [])
        arr = np.empty(len(values), dtype=object)
        for i, v in enumerate(values):
            arr[i] = None if v is _ABSENT else v
            if v is _ABSENT:
                continue
            if v is None:
                if not f.nullable:
                    out.append(Violation(i, f.name, Rule.NULL, f"instances[{i}].{f.name} must not be null"))
            elif not isinstance(v, str):
                out.append(Violation(i, f.name, Rule.TYPE,
                                     f"instances[{i}].{f.name} must be a string, got {type(v).__name__}"))
            elif v not in cats:
                out.append(Violation(i, f.name, Rule.UNKNOWN_CATEGORY,
                                     f"instances[{i}].{f.name}={v!r} is not one of {sorted(cats)}"))
        return arr

    # -- tables (batches, windows) -------------------------------------------
    def check_columns(self, table_schema: pa.Schema, extra_ok: Sequence[str] = ()) -> list[Violation]:
        """Whole-batch check: columns added, missing or retyped -> ``schema_changed``."""
        out: list[Violation] = []
        present = {f.name: f.type for f in table_schema}
        for f in self.features:
            if f.name not in present:
                out.append(Violation(None, f.name, Rule.SCHEMA_CHANGED, f"column {f.name} is missing"))
                continue
            typ = present[f.name]
            want_str = f.dtype == "category"
            is_str = pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_dictionary(typ)
            is_num = pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_null(typ)
            if (want_str and not (is_str or pa.types.is_null(typ))) or (not want_str and not is_num):
                out.append(Violation(None, f.name, Rule.SCHEMA_CHANGED,
                                     f"column {f.name} has type {typ}, expected "
                                     f"{'string' if want_str else 'number'}"))
        known = set(self.names) | set(extra_ok)
        for name in present:
            if name not in known:
                out.append(Violation(None, name, Rule.SCHEMA_CHANGED, f"column {name} is not in the schema"))
        return out

    def row_mask(self, table: pa.Table) -> tuple[np.ndarray, list[Violation]]:
        """Vectorized per-row validity of a table whose columns already match.

        Returns a boolean mask of valid rows and the violations of the others."""
        n = table.num_rows
        out: list[Violation] = []
        for f in self.features:
            col = table.column(f.name)
            is_null = col.is_null().to_numpy(zero_copy_only=False)
            if f.dtype == "category":
                vals = col.to_numpy(zero_copy_only=False)
                bad = ~is_null & ~np.isin(vals.astype(object), np.asarray(f.categories, dtype=object))
                for i in np.flatnonzero(bad):
                    out.append(Violation(int(i), f.name, Rule.UNKNOWN_CATEGORY,
                                         f"row {i}: {f.name}={vals[i]!r} is not one of {f.categories}"))
                if not f.nullable:
                    for i in np.flatnonzero(is_null):
                        out.append(Violation(int(i), f.name, Rule.NULL, f"row {i}: {f.name} must not be null"))
            else:
                arr = col.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
                self._numeric_rules(f, arr, is_null, out)
        mask = np.ones(n, dtype=bool)
        for v in out:
            if v.index is not None:
                mask[v.index] = False
        return mask, out

    # -- labels ---------------------------------------------------------------
    def label_ok(self, value: Any) -> bool:
        return _is_number(value) and float(value).is_integer() and int(value) in self.label.classes
