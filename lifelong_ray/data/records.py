"""Log records: the rows of one append as plain values, one JSON line each.

Building Arrow arrays for the one or ten rows of a request costs more than the rest
of the log write together (0.4 ms with cold caches, against ~0.03 ms for a JSON
line), so the segment log (:mod:`lifelong_ray.data.segments`) writes a request's rows
as a :class:`LogRecord` line and builds the Arrow columns once per seal, for all its
records at once (:func:`records_table`).

A record holds a schema, the row count ``n``, the columns with a value per row
(``rows``) and the columns with one value for all ``n`` rows (``same``: the time,
the version, the routing key of one request). Values are what JSON carries: numbers,
strings, booleans, None (null). Floats keep NaN and infinities (Python's JSON
extension), so a null and a NaN stay apart. Text is written as UTF-8, so a string that
is not valid Unicode (a lone surrogate) fails :meth:`LogRecord.encode`, that is, its
own append, and never reaches a segment.

    >>> import pyarrow as pa
    >>> schema = pa.schema([("request_id", pa.string()), ("t", pa.float64()), ("x", pa.float64())])
    >>> rec = LogRecord(schema, 2, rows={"request_id": ["a", "b"], "x": [0.5, None]}, same={"t": 7.0})
    >>> line = rec.encode()
    >>> line
    b'{"n":2,"rows":{"request_id":["a","b"],"x":[0.5,null]},"same":{"t":7.0}}\\n'
    >>> records_table(schema, [decode_line(line)]).to_pydict()
    {'request_id': ['a', 'b'], 't': [7.0, 7.0], 'x': [0.5, None]}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable

import pyarrow as pa


@dataclass(frozen=True)
class LogRecord:
    """The rows of one append (see the module docstring); every schema column is in
    exactly one of ``rows`` (a list of ``n`` values) or ``same`` (one value)."""

    schema: pa.Schema
    n: int
    rows: dict[str, list[Any]] = field(default_factory=dict)
    same: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_table(cls, table: pa.Table) -> "LogRecord":
        """A table of JSON-typed columns (numbers, strings, booleans, nulls) as a record
        (every column per row); other types (timestamps, binary) fail :meth:`encode`."""
        return cls(table.schema, table.num_rows, rows={c: table.column(c).to_pylist() for c in table.column_names})

    def encode(self) -> bytes:
        """One JSON line (newline-terminated; JSON escapes every newline inside), UTF-8.
        ``UnicodeEncodeError`` for text that is not valid Unicode, ``TypeError`` for a
        value JSON cannot carry."""
        return (json.dumps({"n": self.n, "rows": self.rows, "same": self.same}, separators=(",", ":"),
                           ensure_ascii=False) + "\n").encode()

    def to_table(self) -> pa.Table:
        return records_table(self.schema, [{"n": self.n, "rows": self.rows, "same": self.same}])


def decode_line(line: bytes) -> dict[str, Any]:
    """The record of one line of :meth:`LogRecord.encode` (``ValueError`` if it is not one)."""
    try:
        rec = json.loads(line)
    except RecursionError:  # absurdly nested: damage, not a record
        raise ValueError("nested too deeply to be a log record") from None
    if not (isinstance(rec, dict) and isinstance(rec.get("n"), int) and isinstance(rec.get("rows"), dict)
            and isinstance(rec.get("same"), dict)):
        raise ValueError("not a log record")
    for name, values in rec["rows"].items():
        if not isinstance(values, list) or len(values) != rec["n"]:
            raise ValueError(f"column {name!r} does not hold {rec['n']} values")
    return rec


def records_table(schema: pa.Schema, records: Iterable[dict[str, Any]]) -> pa.Table:
    """The Arrow table of decoded records (``ValueError`` when a column is missing or
    a value does not fit its type)."""
    records = list(records)
    columns = {}
    for f in schema:
        values: list[Any] = []
        for rec in records:
            if f.name in rec["rows"]:
                values.extend(rec["rows"][f.name])
            elif f.name in rec["same"]:
                values.extend([rec["same"][f.name]] * rec["n"])
            else:
                raise ValueError(f"a record has no column {f.name!r}")
        try:
            columns[f.name] = pa.array(values, type=f.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as err:
            raise ValueError(f"column {f.name!r}: {err}") from None
    return pa.table(columns, schema=schema)
