"""The run report of ``lifelong demo`` and ``lifelong backtest``: ``report.json`` + ``report.png``.

The JSON layout is the contract of DESIGN.md §4::

    {"summary": {...every key of REQUIRED_SUMMARY_KEYS, plus any extras...},
     "events":  [{"t", "kind", "model", "version", "reason", "data"?}, ...],
     "series":  {"sample": [...], "accuracy": [...], "static_accuracy"?: [...],
                 "canary_weight"?: [...], "t": [...], "drift_points"?: [...]}}

``series`` lists are aligned per point: ``accuracy[i]`` is the windowed accuracy of
the served predictions at ``sample[i]``, ``t[i]`` the seconds since start then.
Events carry ``t`` (seconds since start) and may carry ``data["sample"]``.

    >>> summary = dict.fromkeys(REQUIRED_SUMMARY_KEYS)
    >>> events = [{"t": 1.0, "kind": "promoted", "model": "demo", "version": "v1",
    ...            "reason": "bootstrap", "data": {"bootstrap": True}},
    ...           {"t": 9.0, "kind": "drift_detected", "model": "demo", "version": "v1",
    ...            "reason": "accuracy 0.52 < 0.94 - 0.10"}]
    >>> summary.update(summarize_events(events))
    >>> report = build_report(events=events, series={"sample": [0, 500], "accuracy": [0.9, 0.5]},
    ...                       summary=summary)
    >>> report["summary"]["drifts_detected"], report["summary"]["promotions"]
    (1, 0)
    >>> try:
    ...     build_report(events=[], series={}, summary={"samples": 1})
    ... except ValueError as e:
    ...     print(str(e)[:60])
    report summary is missing required key 'prequential_accuracy
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "REQUIRED_SUMMARY_KEYS",
    "SERIES_POINT_KEYS",
    "build_report",
    "summarize_events",
    "write_report",
    "plot_report",
    "to_jsonable",
    "print_summary",
]

REQUIRED_SUMMARY_KEYS: tuple[str, ...] = (
    "samples",
    "prequential_accuracy",
    "drifts_detected",
    "retrains",
    "promotions",
    "rollbacks",
    "detection_delays",
    "accuracy_before_drift",
    "accuracy_after_drift_static",
    "accuracy_after_recovery",
    "seconds_to_recover",
    "train_seconds",
    "wall_seconds",
)

# Series keys that hold one value per point and must match ``series["sample"]`` in length.
SERIES_POINT_KEYS: tuple[str, ...] = ("accuracy", "static_accuracy", "canary_weight", "t")


def _bootstrap(ev: Mapping[str, Any]) -> bool:
    data = ev.get("data") or {}
    return bool(data.get("bootstrap"))


def summarize_events(events: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Count the decisions in an event list.

    ``promotions`` excludes the bootstrap promotion of the first version
    (an event whose ``data["bootstrap"]`` is true); ``retrains`` counts full
    retrains, ``incremental_steps`` the online fine-tuning jobs
    (``data["job_kind"] == "online"``).

        >>> summarize_events([{"kind": "drift_detected"}, {"kind": "retrain_started"},
        ...                   {"kind": "retrain_started", "data": {"job_kind": "online"}},
        ...                   {"kind": "promoted", "data": {"bootstrap": True}},
        ...                   {"kind": "promoted"}, {"kind": "rolled_back"}])
        {'drifts_detected': 1, 'retrains': 1, 'promotions': 1, 'rollbacks': 1, 'incremental_steps': 1}
    """
    out = {"drifts_detected": 0, "retrains": 0, "promotions": 0, "rollbacks": 0, "incremental_steps": 0}
    for ev in events:
        kind = _kind(ev)
        if kind == "drift_detected":
            out["drifts_detected"] += 1
        elif kind == "retrain_started" and (ev.get("data") or {}).get("job_kind") == "online":
            out["incremental_steps"] += 1
        elif kind == "retrain_started":
            out["retrains"] += 1
        elif kind == "promoted" and not _bootstrap(ev):
            out["promotions"] += 1
        elif kind == "rolled_back":
            out["rollbacks"] += 1
    return out


def _kind(ev: Mapping[str, Any]) -> str:
    k = ev.get("kind")
    return str(getattr(k, "value", k))


def to_jsonable(obj: Any) -> Any:
    """Plain JSON values: numpy scalars/arrays to python, enums to values, NaN/inf to ``None``.

        >>> to_jsonable({"a": np.float32(0.5), "b": [np.int64(3), float("nan")], "c": (1, 2)})
        {'a': 0.5, 'b': [3, None], 'c': [1, 2]}
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)) and not isinstance(obj, np.bool_):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return [to_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "to_json"):  # lifelong_ray.events.Event and friends
        return to_jsonable(obj.to_json())
    if hasattr(obj, "value"):  # enums
        return to_jsonable(obj.value)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot put {type(obj).__name__} into a report: {obj!r}")


def build_report(*, events: Sequence[Any], series: Mapping[str, Any], summary: Mapping[str, Any]) -> dict:
    """Assemble and validate ``{"summary", "events", "series"}`` as plain JSON values.

    Raises :class:`ValueError` naming the first missing summary key (values may
    be ``None`` where a metric does not apply), an event without ``t`` or
    ``kind``, or a per-point series list whose length differs from ``sample``.
    Events may be dicts or :class:`lifelong_ray.events.Event` objects; they are
    sorted by ``t``.
    """
    for key in REQUIRED_SUMMARY_KEYS:
        if key not in summary:
            raise ValueError(f"report summary is missing required key {key!r} "
                             f"(every key of DESIGN.md §4 is required; use None where it does not apply)")
    evs: list[dict[str, Any]] = []
    for i, ev in enumerate(events):
        e = to_jsonable(ev)
        if not isinstance(e, dict):
            raise ValueError(f"report event {i} is not a mapping: {ev!r}")
        for key in ("t", "kind"):
            if e.get(key) is None:
                raise ValueError(f"report event {i} has no {key!r}: {e!r}")
        e.setdefault("model", None)
        e.setdefault("version", None)
        e.setdefault("reason", "")
        evs.append(e)
    evs.sort(key=lambda e: e["t"])
    ser = to_jsonable(dict(series))
    if "sample" in ser:
        n = len(ser["sample"])
        for key in SERIES_POINT_KEYS:
            if key in ser and ser[key] is not None and len(ser[key]) != n:
                raise ValueError(f"report series {key!r} has {len(ser[key])} points, 'sample' has {n}")
    return {"summary": to_jsonable(dict(summary)), "events": evs, "series": ser}


def write_report(report: Mapping[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``out_dir/report.json`` and ``out_dir/report.png``; return both paths.

    The JSON is strict (NaN/inf become ``null``) and indented for reading.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / "report.json", out / "report.png"
    body = json.dumps(to_jsonable(report), indent=2, allow_nan=False)
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(body + "\n")
    tmp.replace(json_path)
    plot_report(report, png_path)
    return json_path, png_path


# --------------------------------------------------------------------------- plot

# kind -> (label, marker, colour, lane); lanes are rows of the event strip, top first.
_EVENT_STYLE: dict[str, tuple[str, str, str, int]] = {
    "drift_detected": ("drift detected", "v", "#d62728", 0),
    "retrain_started": ("retrain started", "o", "#ff7f0e", 1),
    "candidate_registered": ("candidate registered", "s", "#9467bd", 2),
    "canary_started": ("canary started", "D", "#17becf", 3),
    "promoted": ("promoted", "^", "#2ca02c", 4),
    "rolled_back": ("rolled back", "X", "#8c564b", 4),
}
_LANES = ["drift", "retrain", "registered", "canary", "promote /\nrollback"]


def _fmt(v: Any, spec: str = ".3f", suffix: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    try:
        return format(v, spec) + suffix
    except (TypeError, ValueError):
        return str(v)


def _floats(values: Sequence[Any] | None) -> np.ndarray:
    if values is None:
        return np.array([], dtype=float)
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)


def _event_sample(ev: Mapping[str, Any], t_axis: np.ndarray, s_axis: np.ndarray) -> float | None:
    data = ev.get("data") or {}
    if data.get("sample") is not None:
        return float(data["sample"])
    t = ev.get("t")
    if t is None or len(t_axis) < 1 or not np.all(np.isfinite(t_axis)):
        return None
    if len(t_axis) == 1:
        return float(s_axis[0])
    order = np.argsort(t_axis, kind="stable")
    return float(np.interp(float(t), t_axis[order], s_axis[order]))


def plot_report(report: Mapping[str, Any], path: str | Path) -> None:
    """Draw the report as a PNG (matplotlib Agg; no display needed).

    Top: served accuracy over samples (the initial model's static accuracy
    dashed), the canary weight of the newest version on a right axis, drift
    onsets as red bands with their detection delay. Bottom: one lane per
    decision kind with a marker per event. Title: the headline numbers.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    summary = report.get("summary") or {}
    series = report.get("series") or {}
    events = report.get("events") or []

    samples = _floats(series.get("sample"))
    acc = _floats(series.get("accuracy"))
    static = _floats(series.get("static_accuracy"))
    weight = _floats(series.get("canary_weight"))
    t_axis = _floats(series.get("t"))
    drift_points = summary.get("drift_points") or series.get("drift_points") or []
    delays = summary.get("detection_delays") or []

    fig = Figure(figsize=(13, 7.2), dpi=110, layout="constrained")
    gs = fig.add_gridspec(2, 1, height_ratios=[3.2, 1.25])
    ax = fig.add_subplot(gs[0])
    lane_ax = fig.add_subplot(gs[1], sharex=ax)

    handles: list[Any] = []
    # Canary weight first, on a twin axis, so accuracy lines draw on top.
    if len(weight) == len(samples) and len(weight) and np.isfinite(weight).any():
        wax = ax.twinx()
        wax.fill_between(samples, 0, np.nan_to_num(weight), step="post", color="#17becf", alpha=0.13, lw=0)
        wax.step(samples, weight, where="post", color="#17becf", lw=1.2, alpha=0.8)
        wax.set_ylim(0, 105)
        wax.set_ylabel("newest version's traffic share (%)", color="#0f7f8c")
        wax.tick_params(axis="y", colors="#0f7f8c")
        ax.set_zorder(wax.get_zorder() + 1)
        ax.patch.set_visible(False)
        handles.append(Patch(facecolor="#17becf", alpha=0.35, edgecolor="#17becf",
                             label="canary weight (right axis)"))
    if len(acc) == len(samples) and len(acc):
        (h,) = ax.plot(samples, acc, color="#1f77b4", lw=2.0, label="served accuracy (windowed)")
        handles.insert(0, h)
    if len(static) == len(samples) and len(static) and np.isfinite(static).any():
        (h,) = ax.plot(samples, static, color="#7f7f7f", lw=1.5, ls="--", label="initial model (static)")
        handles.insert(1, h)
    before = summary.get("accuracy_before_drift")
    if isinstance(before, (int, float)) and math.isfinite(before):
        ax.axhline(before, color="#1f77b4", lw=0.8, ls=":", alpha=0.7)
        handles.append(Line2D([], [], color="#1f77b4", lw=0.8, ls=":", label="accuracy before drift"))

    x_max = float(np.nanmax(samples)) if len(samples) else float(summary.get("samples") or 1)
    for i, p in enumerate(drift_points):
        for a in (ax, lane_ax):
            a.axvline(p, color="#d62728", lw=1.6, alpha=0.85, zorder=0)
        d = delays[i] if i < len(delays) else None
        if isinstance(d, (int, float)) and math.isfinite(d) and d >= 0:
            ax.axvspan(p, p + d, color="#d62728", alpha=0.08, lw=0)
            ax.annotate(f"drift {i + 1}\ndetected +{int(d)}", xy=(p, 0.02), xycoords=("data", "axes fraction"),
                        xytext=(4, 0), textcoords="offset points", fontsize=8.5, color="#a01c1c", va="bottom")
        else:
            ax.annotate(f"drift {i + 1}", xy=(p, 0.02), xycoords=("data", "axes fraction"),
                        xytext=(4, 0), textcoords="offset points", fontsize=8.5, color="#a01c1c", va="bottom")
    if drift_points:
        handles.append(Line2D([], [], color="#d62728", lw=1.6, label="known drift onset"))
        if any(isinstance(d, (int, float)) and d >= 0 for d in delays):
            handles.append(Patch(facecolor="#d62728", alpha=0.15, label="detection delay"))

    ax.set_ylim(0, 1.04)
    ax.set_ylabel("accuracy")
    ax.grid(True, alpha=0.25)
    ax.tick_params(labelbottom=False)

    # Event lanes.
    lane_y = {i: len(_LANES) - 1 - i for i in range(len(_LANES))}
    seen: dict[str, Any] = {}
    marked: set[str] = set()
    for ev in events:
        kind = _kind(ev)
        style = _EVENT_STYLE.get(kind)
        if style is None:
            continue
        x = _event_sample(ev, t_axis, samples)
        if x is None:
            continue
        label, marker, colour, lane = style
        h = lane_ax.scatter([x], [lane_y[lane]], marker=marker, s=70, color=colour,
                            edgecolor="black", linewidth=0.5, zorder=3, label=label)
        seen.setdefault(kind, h)
        if kind in ("promoted", "rolled_back") and not _bootstrap(ev):
            ax.axvline(x, color=colour, lw=1.0, ls="-.", alpha=0.7)
            marked.add(kind)
    for kind in ("promoted", "rolled_back"):
        if kind in marked:
            label, _, colour, _ = _EVENT_STYLE[kind]
            handles.append(Line2D([], [], color=colour, lw=1.0, ls="-.", label=label))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.07, 1.0), fontsize=8.5, frameon=False)
    lane_ax.set_yticks(list(lane_y.values()), _LANES, fontsize=8.5)
    lane_ax.set_ylim(-0.7, len(_LANES) - 0.3)
    lane_ax.grid(True, axis="x", alpha=0.25)
    lane_ax.set_xlabel("sample")
    pad = 0.01 * x_max if x_max > 0 else 1.0
    lane_ax.set_xlim(-pad, x_max + pad)
    if seen:
        order = [k for k in _EVENT_STYLE if k in seen]
        lane_ax.legend([seen[k] for k in order], [_EVENT_STYLE[k][0] for k in order], loc="upper left",
                       bbox_to_anchor=(1.07, 1.0), fontsize=8.5, frameon=False)

    model = next((e.get("model") for e in events if e.get("model")), None) or summary.get("model")
    line1 = (f"{model + ' — ' if model else ''}{_fmt(summary.get('samples'), 'd')} samples · "
             f"prequential accuracy {_fmt(summary.get('prequential_accuracy'))} · "
             f"drifts detected {_fmt(summary.get('drifts_detected'), 'd')} · "
             f"retrains {_fmt(summary.get('retrains'), 'd')} · promotions {_fmt(summary.get('promotions'), 'd')} · "
             f"rollbacks {_fmt(summary.get('rollbacks'), 'd')}")
    line2 = (f"accuracy before drift {_fmt(before)} → after drift, static model "
             f"{_fmt(summary.get('accuracy_after_drift_static'))} → after recovery "
             f"{_fmt(summary.get('accuracy_after_recovery'))} · recovered in "
             f"{_fmt(summary.get('seconds_to_recover'), '.1f', ' s')} · training "
             f"{_fmt(summary.get('train_seconds'), '.1f', ' s')} of {_fmt(summary.get('wall_seconds'), '.1f', ' s')} wall")
    fig.suptitle(line1, fontsize=12.5, fontweight="bold")
    ax.set_title(line2, fontsize=10, color="#333333")
    fig.savefig(str(path), format="png")


def print_summary(report: Mapping[str, Any], title: str, extra_keys: Sequence[str] = (),
                  console: Any = None) -> None:
    """Print the summary table and the decisions (every event with its reason)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    sm = report["summary"]
    table = Table(title=title, show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in tuple(REQUIRED_SUMMARY_KEYS) + tuple(extra_keys):
        v = sm.get(key)
        table.add_row(key, f"{v:.3f}" if isinstance(v, float) else str(v))
    console.print(table)
    ev = Table(title="decisions", show_header=True)
    for col in ("t", "sample", "kind", "version", "reason"):
        ev.add_column(col, overflow="fold")
    for e in report["events"]:
        ev.add_row(f"{e['t']:.1f}", str(e.get("data", {}).get("sample", "")), e["kind"], e.get("version") or "",
                   e["reason"])
    console.print(ev)
