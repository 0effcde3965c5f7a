"""The feature transform fitted with each model and saved inside its artifact.

Training and serving call the SAME :class:`FeatureTransform` (rule 6: no
train/serve skew). It is pure numpy: numeric features are standardized with the
training mean/std (std floored at 1e-6) and missing values are imputed with the
mean (so they become 0 after scaling); category features are one-hot encoded
over the schema's categories, with ``None`` or an unknown value giving all zeros.

    >>> import numpy as np
    >>> from lifelong_ray.config import FeatureSpec, LabelSpec, ModelSpec
    >>> from lifelong_ray.data.schema import Schema
    >>> schema = Schema(ModelSpec(name="m", features=[FeatureSpec(name="x"),
    ...     FeatureSpec(name="c", dtype="category", categories=["a", "b"])],
    ...     label=LabelSpec(name="y", classes=[0, 1])))
    >>> cols = {"x": np.array([1.0, 3.0, np.nan]),
    ...         "c": np.array(["a", "b", None], dtype=object)}
    >>> t = FeatureTransform.fit(cols, schema)
    >>> t.feature_names
    ['x', 'c=a', 'c=b']
    >>> t.apply(cols)
    array([[-1.,  1.,  0.],
           [ 1.,  0.,  1.],
           [ 0.,  0.,  0.]], dtype=float32)
    >>> FeatureTransform.from_json(t.to_json()).apply(cols).tolist() == t.apply(cols).tolist()
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from lifelong_ray.data.schema import Schema

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

STD_FLOOR = 1e-6
_FORMAT = 1


def _as_float(values: Any) -> np.ndarray:
    """float64 view of a numeric column; None -> NaN."""
    return np.asarray(values, dtype=np.float64)


class FeatureTransform:
    """Standardize numeric features, one-hot encode category features.

    ``steps`` is a list of dicts, one per feature in schema order:
    ``{"name", "kind": "numeric", "mean", "std"}`` or
    ``{"name", "kind": "category", "categories": [...]}``. Build it with
    :meth:`fit` or :meth:`from_json` rather than by hand.
    """

    def __init__(self, steps: list[dict[str, Any]]) -> None:
        self.steps = [dict(s) for s in steps]
        for s in self.steps:
            if s.get("kind") == "numeric":
                if not (np.isfinite(s["mean"]) and np.isfinite(s["std"]) and s["std"] > 0):
                    raise ValueError(f"feature {s['name']}: mean/std must be finite, std > 0")
            elif s.get("kind") == "category":
                if not s.get("categories"):
                    raise ValueError(f"feature {s['name']}: categories must be non-empty")
            else:
                raise ValueError(f"feature {s.get('name')}: unknown kind {s.get('kind')!r}")

    # -- fitting ---------------------------------------------------------------
    @classmethod
    def fit(cls, columns: dict[str, np.ndarray], schema: Schema) -> "FeatureTransform":
        """Learn per-feature statistics from training columns (non-finite values ignored)."""
        steps: list[dict[str, Any]] = []
        for f in schema.features:
            if f.name not in columns:
                raise KeyError(f"column {f.name!r} is missing from the training data")
            if f.dtype == "category":
                steps.append({"name": f.name, "kind": "category", "categories": list(f.categories or [])})
                continue
            x = _as_float(columns[f.name])
            x = x[np.isfinite(x)]
            mean = float(x.mean()) if x.size else 0.0
            std = float(x.std()) if x.size else 1.0
            steps.append({"name": f.name, "kind": "numeric", "mean": mean, "std": max(std, STD_FLOOR)})
        return cls(steps)

    # -- applying --------------------------------------------------------------
    @property
    def n_out(self) -> int:
        return sum(1 if s["kind"] == "numeric" else len(s["categories"]) for s in self.steps)

    @property
    def feature_names(self) -> list[str]:
        out: list[str] = []
        for s in self.steps:
            if s["kind"] == "numeric":
                out.append(s["name"])
            else:
                out.extend(f"{s['name']}={c}" for c in s["categories"])
        return out

    @property
    def input_names(self) -> list[str]:
        return [s["name"] for s in self.steps]

    def apply(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        """The model input, float32 ``[n, n_out]``.

        Non-finite numeric values (NaN, None, ±inf) are imputed with the mean.
        """
        missing = [s["name"] for s in self.steps if s["name"] not in columns]
        if missing:
            raise KeyError(f"columns missing for the transform: {missing}")
        n = len(columns[self.steps[0]["name"]]) if self.steps else 0
        out = np.zeros((n, self.n_out), dtype=np.float32)
        j = 0
        for s in self.steps:
            col = columns[s["name"]]
            if len(col) != n:
                raise ValueError(f"column {s['name']!r} has {len(col)} rows, expected {n}")
            if s["kind"] == "numeric":
                x = _as_float(col)
                z = (x - s["mean"]) / s["std"]
                out[:, j] = np.where(np.isfinite(x), z, 0.0)
                j += 1
            else:
                arr = np.asarray(col, dtype=object)
                for k, cat in enumerate(s["categories"]):
                    out[:, j + k] = arr == cat
                j += len(s["categories"])
        return out

    # -- persistence -----------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"format": _FORMAT, "steps": [dict(s) for s in self.steps]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "FeatureTransform":
        if d.get("format") != _FORMAT:
            raise ValueError(f"unsupported transform format {d.get('format')!r}, expected {_FORMAT}")
        return cls(d["steps"])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FeatureTransform) and self.steps == other.steps

    def __repr__(self) -> str:
        return f"FeatureTransform({self.input_names} -> {self.n_out} features)"


# -- column extraction (shared by training windows, batch scoring and serving) ----
def columns_from_table(table: "pa.Table", schema: Schema) -> dict[str, np.ndarray]:
    """Schema columns of an Arrow table: numeric -> float64 (null -> NaN),
    category -> object array of ``str``/``None``.

    >>> import pyarrow as pa
    >>> from lifelong_ray.config import FeatureSpec, LabelSpec, ModelSpec
    >>> schema = Schema(ModelSpec(name="m", features=[FeatureSpec(name="x"),
    ...     FeatureSpec(name="c", dtype="category", categories=["a"])],
    ...     label=LabelSpec(name="y", classes=[0, 1])))
    >>> cols = columns_from_table(pa.table({"x": [1, None], "c": ["a", None]}), schema)
    >>> cols["x"].tolist(), cols["c"].tolist()
    ([1.0, nan], ['a', None])
    """
    import pyarrow as pa

    out: dict[str, np.ndarray] = {}
    for f in schema.features:
        col = table.column(f.name)
        if f.dtype == "category":
            out[f.name] = np.asarray(col.cast(pa.string()).to_numpy(zero_copy_only=False), dtype=object)
        else:
            out[f.name] = col.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
    return out


def columns_from_pandas(df: Any, schema: Schema) -> dict[str, np.ndarray]:
    """Same as :func:`columns_from_table`, from a pandas DataFrame (Ray Data batches).

    >>> import pandas as pd
    >>> from lifelong_ray.config import FeatureSpec, LabelSpec, ModelSpec
    >>> schema = Schema(ModelSpec(name="m", features=[FeatureSpec(name="x"),
    ...     FeatureSpec(name="c", dtype="category", categories=["a"])],
    ...     label=LabelSpec(name="y", classes=[0, 1])))
    >>> cols = columns_from_pandas(pd.DataFrame({"x": [1.0, None], "c": ["a", None]}), schema)
    >>> cols["x"].tolist(), cols["c"].tolist()
    ([1.0, nan], ['a', None])
    """
    out: dict[str, np.ndarray] = {}
    for f in schema.features:
        s = df[f.name]
        missing = np.asarray(s.isna(), dtype=bool)
        if f.dtype == "category":
            arr = np.asarray(s.to_numpy(dtype=object), dtype=object).copy()
            arr[missing] = None
        else:
            arr = np.asarray(s.to_numpy(dtype=np.float64, na_value=np.nan), dtype=np.float64)
        out[f.name] = arr
    return out
