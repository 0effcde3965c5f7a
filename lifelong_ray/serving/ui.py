"""The status page ``GET /ui``: one self-contained HTML document (no Ray, no HTTP here).

Two halves:

* :func:`gather` reads what the ingress can read for one model — its routing table,
  the registry (versions, aliases, holdout accuracy), the persisted controller state
  (rollout and retrain stage, drift monitors, error budget), the audit log (events and
  their reasons) and the ``labeled`` log (served predictions joined with their labels)
  — into a :class:`ModelView`. Nothing new is stored: *windowed quality over time* is
  recomputed from the labeled log the way the controller cuts it (consecutive windows
  of ``drift.label_window`` labeled rows, accuracy per serving version).
* :func:`render_page` turns views into HTML: inline CSS, a server-rendered inline SVG
  chart, no script, no external resource (the page works offline and under the strict
  :data:`SECURITY_HEADERS` policy). Every string that comes from data (model and
  version names, reasons, operator names) goes through :func:`html.escape`.

    >>> pts = quality_points([0.0, 1.0, 2.0, 3.0], ["v1", "v1", "v1", "v1"], [1, 1, 0, 0], [1, 0, 0, 0], window=2)
    >>> [(p.version, p.accuracy, p.n) for p in pts]
    [('v1', 0.5, 2), ('v1', 1.0, 2)]
    >>> "&lt;b&gt;" in render_page([ModelView(name="<b>")], now=0.0)
    True
"""

from __future__ import annotations

import datetime as dt
import html
import logging
import math
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:  # pragma: no cover
    from lifelong_ray.config import Config
    from lifelong_ray.serving.routing import RoutingTable
    from lifelong_ray.storage import Storage

logger = logging.getLogger(__name__)

#: headers the page is served with: nothing may load from anywhere, styles are inline
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
#: newest labeled-log files read per model (older quality is not charted)
MAX_LABELED_FILES = 400
#: newest audit events kept per model (chart markers and the decisions table)
MAX_EVENTS = 500
#: rows in the "latest decisions" table
DECISIONS_SHOWN = 20
#: seconds between automatic reloads of the page
REFRESH_S = 15

#: event kinds marked on the quality chart, with their colour
MARKED_KINDS: dict[str, str] = {
    "drift_detected": "#e8590c",
    "retrain_started": "#1c7ed6",
    "retrain_finished": "#0ca678",
    "retrain_failed": "#c92a2a",
    "canary_started": "#7048e8",
    "promoted": "#2b8a3e",
    "rolled_back": "#e03131",
    "rollout_aborted": "#d6336c",
    "gate_failed": "#f06595",
    "budget_frozen": "#862e9c",
    "quarantined": "#5c940d",
    "paused": "#495057",
    "resumed": "#868e96",
}
_VERSION_COLOURS = ["#1971c2", "#e8590c", "#2f9e44", "#9c36b5", "#c2255c", "#0c8599", "#f08c00", "#495057"]
_STAGE_COLOURS = {"stable": "#2b8a3e", "canary": "#e8590c", "shadow": "#7048e8", "approval": "#f08c00",
                  "probation": "#1971c2", "idle": "#868e96", "pending": "#f08c00", "running": "#1c7ed6"}


def esc(value: Any) -> str:
    """HTML-escape ``str(value)`` (quotes too, so it is safe in attributes).

    >>> esc('<a href="x">')
    '&lt;a href=&quot;x&quot;&gt;'
    """
    return html.escape(str(value), quote=True)


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QualityPoint:
    """Labeled accuracy of one version over one window of labeled rows."""

    t: float         # prediction time of the window's last row
    version: str
    accuracy: float
    n: int           # labeled rows of this version in the window


@dataclass(frozen=True)
class EventView:
    """One audit event as the page needs it."""

    t: float
    kind: str
    version: str | None
    reason: str


@dataclass
class ModelView:
    """Everything the page shows about one model; every part may be missing."""

    name: str
    routing: dict[str, Any] = field(default_factory=dict)
    versions: list[dict[str, Any]] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)
    state: dict[str, Any] | None = None
    events: list[EventView] = field(default_factory=list)
    quality: list[QualityPoint] = field(default_factory=list)
    label_window: int = 0
    labeled_rows: int = 0
    errors: list[str] = field(default_factory=list)


def quality_points(t: Sequence[float], version: Sequence[str | None], prediction: Sequence[int],
                   label: Sequence[int], *, window: int, min_n: int | None = None) -> list[QualityPoint]:
    """Windowed accuracy per version: rows sorted by ``t``, cut into consecutive windows of
    ``window`` rows (the last, partial one too if it holds at least half a window); a
    version gets a point in a window where it has at least ``min_n`` rows (default: a
    twentieth of the window, at least 1, so a 10% canary shows). Rows without a version (batch-ingested) are skipped.

    >>> pts = quality_points([3, 1, 2, 4], ["a", "a", "b", "a"], [1, 1, 1, 1], [1, 0, 1, 1], window=4, min_n=1)
    >>> [(p.version, p.accuracy, p.n, p.t) for p in pts]
    [('a', 0.6666666666666666, 3, 4.0), ('b', 1.0, 1, 4.0)]
    """
    if window < 1:
        raise ValueError("window must be >= 1")
    min_n = max(1, window // 20) if min_n is None else max(1, min_n)
    ts = np.asarray(t, dtype=np.float64)
    vs = np.asarray([v if v is not None else "" for v in version], dtype=object)
    ok = np.asarray(prediction, dtype=np.int64) == np.asarray(label, dtype=np.int64)
    keep = vs != ""
    ts, vs, ok = ts[keep], vs[keep], ok[keep]
    order = np.argsort(ts, kind="stable")
    ts, vs, ok = ts[order], vs[order], ok[order]
    out: list[QualityPoint] = []
    for start in range(0, len(ts), window):
        end = min(start + window, len(ts))
        if end - start < max(1, window // 2):
            break
        w_v, w_ok, t_end = vs[start:end], ok[start:end], float(ts[end - 1])
        for v in sorted(set(w_v.tolist())):
            mask = w_v == v
            n = int(mask.sum())
            if n >= min_n:
                out.append(QualityPoint(t=t_end, version=str(v), accuracy=float(w_ok[mask].mean()), n=n))
    return out


class _LabeledCache:
    """Meta columns of labeled-log files by path (files are immutable once written); per
    log only the files of the latest listing are kept, so the cache stays bounded."""

    def __init__(self) -> None:
        self._by_log: dict[str, dict[str, pa.Table]] = {}
        self._lock = threading.Lock()

    def read(self, storage: "Storage", prefix: str, paths: list[str]) -> list[pa.Table]:
        from lifelong_ray.data.logs import read_parquet_file

        key = f"{storage.uri}|{prefix}"
        with self._lock:
            old = self._by_log.get(key, {})
        new: dict[str, pa.Table] = {}
        for p in paths:
            table = old.get(p)
            if table is None:
                table = read_parquet_file(storage, p, ["t", "version", "prediction", "label"])
                if table is None:  # compacted or expired since it was listed
                    continue
            new[p] = table
        with self._lock:
            self._by_log[key] = new
        return list(new.values())


_CACHE = _LabeledCache()


def read_quality(storage: "Storage", model: str, window: int,
                 max_files: int = MAX_LABELED_FILES) -> tuple[list[QualityPoint], int]:
    """Windowed quality from the newest ``max_files`` files of the labeled log, and the rows read."""
    from lifelong_ray.data.logs import ModelLogs

    logs = ModelLogs(storage, model)
    paths = logs.live_files(logs.labeled_prefix)[-max_files:]
    tables = [tb for tb in _CACHE.read(storage, logs.labeled_prefix, paths) if tb.num_rows]
    if not tables:
        return [], 0
    t, version, pred, label = [], [], [], []
    for tb in tables:
        t.append(tb.column("t").to_numpy(zero_copy_only=False))
        version.extend(tb.column("version").to_pylist())
        pred.append(tb.column("prediction").fill_null(-1).to_numpy(zero_copy_only=False))
        label.append(tb.column("label").fill_null(-2).to_numpy(zero_copy_only=False))
    n = len(version)
    return quality_points(np.concatenate(t), version, np.concatenate(pred), np.concatenate(label),
                          window=max(1, window)), n


def _summary(md: Any) -> dict[str, Any]:
    if not isinstance(md, dict):
        return {}
    metrics = md.get("metrics") if isinstance(md.get("metrics"), dict) else {}
    return {"created_at": md.get("created_at"), "holdout_accuracy": metrics.get("holdout_accuracy"),
            "kind": md.get("kind"), "parent": md.get("parent"), "job_id": md.get("job_id"),
            "runner": md.get("runner"), "train_rows": (md.get("window") or {}).get("rows")
            if isinstance(md.get("window"), dict) else None}


def gather(storage: "Storage", cfg: "Config", table: "RoutingTable | None" = None, *,
           max_events: int = MAX_EVENTS, max_files: int = MAX_LABELED_FILES, registry: Any = None) -> ModelView:
    """Read one model's page data; a part that cannot be read becomes an entry of ``errors``.

    ``table`` is the routing table the ingress routes with (read from storage if None);
    ``registry`` one kept by the caller (its metadata cache spares re-reads). Reads are
    bounded: the newest versions plus those routed or aliased, the audit log's newest
    ``max_events`` events (:func:`~lifelong_ray.serving.reads.event_tail`), the newest
    ``max_files`` labeled files."""
    from lifelong_ray.control.controller import state_path
    from lifelong_ray.registry.store import Registry
    from lifelong_ray.serving.reads import event_tail, shown_versions
    from lifelong_ray.serving.routing import read_routing

    name = cfg.model.name
    view = ModelView(name=name, label_window=cfg.drift.label_window)
    try:
        view.routing = (table if table is not None else read_routing(storage, name)).to_json()
    except Exception as err:  # noqa: BLE001 - the page answers with whatever it can read
        view.errors.append(f"routing table unreadable: {type(err).__name__}: {err}")
    try:
        reg = registry if registry is not None else Registry(storage, name)
        aliases = dict(reg.aliases())
        routed = set(view.routing.get("weights") or {}) | {v for v in (view.routing.get("champion"),
                                                                       view.routing.get("shadow")) if v}
        for v in shown_versions(reg.list_versions(), {*aliases.values(), *routed}):
            try:
                view.versions.append({"version": v, **_summary(reg.metadata(v))})
            except Exception as err:  # noqa: BLE001
                view.versions.append({"version": v, "error": f"metadata unreadable: {err}"})
        view.aliases = aliases
    except Exception as err:  # noqa: BLE001
        view.errors.append(f"registry unreadable: {type(err).__name__}: {err}")
    try:
        path = state_path(name)
        if storage.exists(path):
            view.state = storage.read_json(path)
    except Exception as err:  # noqa: BLE001
        view.errors.append(f"controller state unreadable: {type(err).__name__}: {err}")
    try:
        events = event_tail(storage, name, max_events)
        view.events = [EventView(t=e.t, kind=e.kind.value, version=e.version, reason=e.reason) for e in events]
    except Exception as err:  # noqa: BLE001
        view.errors.append(f"audit log unreadable: {type(err).__name__}: {err}")
    try:
        view.quality, view.labeled_rows = read_quality(storage, name, cfg.drift.label_window, max_files)
    except Exception as err:  # noqa: BLE001
        view.errors.append(f"labeled log unreadable: {type(err).__name__}: {err}")
    return view


# --------------------------------------------------------------------------------------
# formatting helpers
# --------------------------------------------------------------------------------------
def _utc(t: float | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    if t is None or not isinstance(t, (int, float)) or not math.isfinite(t):
        return "–"
    return dt.datetime.fromtimestamp(float(t), tz=dt.timezone.utc).strftime(fmt)


def _ago(t: float | None, now: float) -> str:
    if t is None or not isinstance(t, (int, float)) or not math.isfinite(t):
        return ""
    s = now - float(t)
    if s < 0:
        return "in the future"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{s / size:.0f} {unit} ago"
    return f"{s:.0f} s ago"


def _num(x: Any, fmt: str = "{:.3f}") -> str:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return "–"
    return fmt.format(x)


def _pct(x: Any) -> str:
    return _num(x, "{:.0f}%") if isinstance(x, (int, float)) and float(x) == round(float(x)) else _num(x, "{:.1f}%")


def _badge(text: str, colour: str) -> str:
    return f'<span class="badge" style="background:{colour}">{esc(text)}</span>'


def version_colours(versions: Iterable[str]) -> dict[str, str]:
    """A stable colour per version (sorted order), shared by the chart and the tables."""
    return {v: _VERSION_COLOURS[i % len(_VERSION_COLOURS)] for i, v in enumerate(sorted(set(versions)))}


def _nice_step(span: float, target: int = 7) -> float:
    """A round time step (seconds) giving at most ``target`` ticks over ``span``."""
    steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
             172800, 604800]
    for s in steps:
        if span / s <= target:
            return float(s)
    return float(math.ceil(span / target / 86400) * 86400)


# --------------------------------------------------------------------------------------
# the chart (inline SVG)
# --------------------------------------------------------------------------------------
def quality_chart(points: Sequence[QualityPoint], events: Sequence[EventView], *,
                  reference: float | None = None, width: int = 1180, height: int = 270,
                  colours: Mapping[str, str] | None = None) -> str:
    """SVG of windowed accuracy per version over time, with the events of
    :data:`MARKED_KINDS` as vertical markers (hover shows their reason)."""
    marked = [e for e in events if e.kind in MARKED_KINDS and math.isfinite(e.t)]
    if points:  # markers long before the charted quality would squash it: keep recent ones
        first = min(p.t for p in points)
        last = max(p.t for p in points)
        pad = max(60.0, 0.05 * (last - first))
        marked = [e for e in marked if e.t >= first - pad]
    ts = [p.t for p in points] + [e.t for e in marked]
    if not ts:
        return ('<div class="empty">No labeled predictions and no events yet: the chart fills in once '
                'feedback labels arrive (POST /v1/models/{model}:feedback).</div>')
    colours = dict(colours or version_colours(p.version for p in points))
    left, right, top, bottom = 52, 16, 26, 34
    pw, ph = width - left - right, height - top - bottom
    t0, t1 = min(ts), max(ts)
    if t1 - t0 < 1e-9:
        t0, t1 = t0 - 30, t1 + 30
    accs = [p.accuracy for p in points] + ([reference] if reference is not None else [])
    lo = max(0.0, math.floor((min(accs) - 0.02) * 10) / 10) if accs else 0.0
    lo = min(lo, 0.9)

    def x(t: float) -> float:
        return left + (t - t0) / (t1 - t0) * pw

    def y(a: float) -> float:
        return top + (1.0 - (a - lo) / (1.0 - lo)) * ph

    parts = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
             f'width="{width}" height="{height}" role="img" aria-label="windowed quality over time">',
             f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fff" stroke="#dee2e6"/>']
    y_step = 0.1 if 1.0 - lo > 0.3 else 0.05
    a = lo
    while a <= 1.0 + 1e-9:
        yy = y(a)
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#f1f3f5"/>'
                     f'<text x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end" class="tick">{a:.2f}</text>')
        a += y_step
    step = _nice_step(t1 - t0)
    fmt = "%H:%M:%S" if step < 60 else ("%H:%M" if t1 - t0 < 86400 else "%m-%d %H:%M")
    tick = math.ceil(t0 / step) * step
    while tick <= t1 + 1e-9:
        xx = x(tick)
        parts.append(f'<line x1="{xx:.1f}" x2="{xx:.1f}" y1="{top}" y2="{top + ph}" stroke="#f1f3f5"/>'
                     f'<text x="{xx:.1f}" y="{top + ph + 16}" text-anchor="middle" class="tick">'
                     f'{esc(_utc(tick, fmt))}</text>')
        tick += step
    parts.append(f'<text x="{left + pw}" y="{height - 2}" text-anchor="end" class="tick">UTC</text>'
                 f'<text x="{left}" y="14" class="tick">labeled accuracy per version</text>')
    if reference is not None and lo <= reference <= 1.0:
        yy = y(reference)
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#868e96" '
                     f'stroke-dasharray="6 4"><title>champion reference accuracy {reference:.3f}</title></line>'
                     f'<text x="{left + pw - 4}" y="{yy - 4:.1f}" text-anchor="end" class="tick">'
                     f'reference {reference:.3f}</text>')
    for e in marked:
        xx, c = x(e.t), MARKED_KINDS[e.kind]
        tip = esc(f"{_utc(e.t)} {e.kind}{' ' + e.version if e.version else ''}: {e.reason}")
        parts.append(f'<g class="marker"><title>{tip}</title>'
                     f'<line x1="{xx:.1f}" x2="{xx:.1f}" y1="{top}" y2="{top + ph}" stroke="{c}" '
                     f'stroke-width="1.5" stroke-dasharray="3 3" opacity="0.8"/>'
                     f'<path d="M{xx - 5:.1f},{top - 8} L{xx + 5:.1f},{top - 8} L{xx:.1f},{top} Z" fill="{c}"/></g>')
    by_version: dict[str, list[QualityPoint]] = {}
    for p in points:
        by_version.setdefault(p.version, []).append(p)
    for v, pts in sorted(by_version.items()):
        c = colours.get(v, "#343a40")
        pts = sorted(pts, key=lambda p: p.t)
        path = " ".join(f"{'M' if i == 0 else 'L'}{x(p.t):.1f},{y(p.accuracy):.1f}" for i, p in enumerate(pts))
        parts.append(f'<path d="{path}" fill="none" stroke="{c}" stroke-width="2"/>')
        for p in pts:
            parts.append(f'<circle cx="{x(p.t):.1f}" cy="{y(p.accuracy):.1f}" r="3" fill="{c}">'
                         f'<title>{esc(v)} {p.accuracy:.3f} on {p.n} labels (window ending {esc(_utc(p.t))})'
                         f'</title></circle>')
    parts.append("</svg>")
    legend = [f'<span class="key"><i style="background:{colours.get(v, "#343a40")}"></i>{esc(v)}</span>'
              for v in sorted(by_version)]
    legend += [f'<span class="key"><i class="tri" style="border-top-color:{MARKED_KINDS[k]}"></i>{esc(k)}</span>'
               for k in MARKED_KINDS if any(e.kind == k for e in marked)]
    return "".join(parts) + f'<div class="legend">{"".join(legend)}</div>'


# --------------------------------------------------------------------------------------
# the page
# --------------------------------------------------------------------------------------
def _roles(view: ModelView) -> dict[str, list[str]]:
    st, rt = view.state or {}, view.routing or {}
    roles: dict[str, list[str]] = {}

    def add(v: Any, role: str) -> None:
        if isinstance(v, str) and v and role not in roles.setdefault(v, []):
            roles[v].append(role)

    add(rt.get("champion") or st.get("champion"), "champion")
    add(st.get("candidate"), "candidate")
    add(rt.get("shadow"), "shadow")
    add(st.get("previous_champion"), "previous")
    for v in (st.get("retiring") or {}):
        add(v, "retiring")
    for alias, v in view.aliases.items():
        if alias != "champion":
            add(v, f"alias {alias}")
    return roles


def _cards(view: ModelView, now: float) -> str:
    st = view.state or {}
    rt = view.routing or {}
    stage = str(st.get("rollout", "–"))
    rollout = [_badge(stage, _STAGE_COLOURS.get(stage, "#495057"))]
    if st.get("paused"):
        rollout.append(_badge("paused", "#c92a2a"))
    if st.get("candidate"):
        step = st.get("step_index", -1)
        rollout.append(f'<div>candidate <b>{esc(st["candidate"])}</b>'
                       f'{f", step {int(step) + 1}" if isinstance(step, int) and step >= 0 else ""}</div>')
    if st.get("approval_for"):
        rollout.append(f'<div>waiting for approval ({esc(st["approval_for"])})</div>')
    rollout.append(f'<div class="muted">routing generation {esc(rt.get("generation", "–"))}'
                   f'{", shadow " + esc(rt["shadow"]) + " " + _pct(100 * (rt.get("shadow_fraction") or 0)) if rt.get("shadow") else ""}'
                   f'</div>')

    rstage = str(st.get("retrain", "–"))
    retrain = [_badge(rstage, _STAGE_COLOURS.get(rstage, "#495057")),
               f'<div>{esc(st.get("retrain_count", 0))} retrains; last finished '
               f'{esc(_ago(st.get("last_retrain_finished_t"), now) or "never")}</div>']
    if st.get("retrain_reason") and rstage != "idle":
        retrain.append(f'<div class="muted">{esc(st["retrain_reason"])}</div>')
    if st.get("retrain_deferred_reason") and rstage == "pending":
        retrain.append(f'<div class="muted">deferred: {esc(st["retrain_deferred_reason"])}</div>')

    drift = []
    fd = st.get("last_feature_drift") if isinstance(st.get("last_feature_drift"), dict) else None
    if fd:
        drift.append(f'<div>{_badge("features drifted" if fd.get("drifted") else "features ok", "#e8590c" if fd.get("drifted") else "#2b8a3e")}'
                     f' max PSI {_num(fd.get("max_psi"))}</div><div class="muted">{esc(fd.get("reason", ""))}</div>')
    q = st.get("last_quality") if isinstance(st.get("last_quality"), dict) else None
    if q:
        drift.append(f'<div>{_badge("quality drifted" if q.get("drifted") else "quality ok", "#e8590c" if q.get("drifted") else "#2b8a3e")}'
                     f' accuracy {_num(q.get("accuracy"))} vs reference {_num(q.get("reference"))}'
                     f' (n={esc(q.get("n", "–"))})</div>')
    if not drift:
        drift.append('<div class="muted">no drift window measured yet</div>')

    b = st.get("budget") if isinstance(st.get("budget"), dict) else {}
    budget = []
    if st.get("budget_frozen"):
        budget.append(f'{_badge("frozen", "#c92a2a")} <span class="muted">{esc(st.get("budget_reason", ""))}</span>')
    elif b.get("alerting"):
        budget.append(_badge("burning", "#e8590c"))
    elif b:
        budget.append(_badge("ok", "#2b8a3e"))
    slis = b.get("slis")
    for sli, s in sorted((slis if isinstance(slis, dict) else {}).items()):
        rem = s.get("remaining") if isinstance(s, dict) else None
        frac = min(1.0, max(0.0, float(rem))) if isinstance(rem, (int, float)) and math.isfinite(rem) else 0.0
        colour = "#2b8a3e" if frac > 0.5 else ("#f08c00" if frac > 0.2 else "#c92a2a")
        burns = s.get("burn") if isinstance(s, dict) and isinstance(s.get("burn"), dict) else {}
        burn_txt = " · ".join(f"{esc(k)} ×{_num(v, '{:.1f}')}" for k, v in list(burns.items())[:3])
        budget.append(f'<div class="sli"><span class="sli-name">{esc(sli)}</span>'
                      f'<span class="bar"><span style="width:{frac * 100:.0f}%;background:{colour}"></span></span>'
                      f'<span>{_num(rem, "{:.0%}") if rem is not None else "–"}</span>'
                      f'<span class="muted burn">{"burn " + burn_txt if burn_txt else ""}</span></div>')
    if not budget:
        budget.append('<div class="muted">not measured yet</div>')

    def card(title: str, body: list[str]) -> str:
        return f'<div class="card"><h3>{esc(title)}</h3>{"".join(body)}</div>'

    return ('<div class="cards">' + card("Rollout", rollout) + card("Retraining", retrain)
            + card("Drift", drift) + card("Error budget", budget) + "</div>")


def _versions_table(view: ModelView, colours: Mapping[str, str]) -> str:
    weights = {str(k): v for k, v in (view.routing.get("weights") or {}).items()}
    roles = _roles(view)
    known = {d["version"] for d in view.versions}
    rows = list(view.versions) + [{"version": v} for v in sorted(set(weights) - known)]
    rows.sort(key=lambda d: str(d["version"]), reverse=True)
    if not rows:
        return '<div class="empty">No registered version yet.</div>'
    body = []
    for d in rows:
        v = str(d["version"])
        w = weights.get(v, 0.0)
        wf = float(w) if isinstance(w, (int, float)) and math.isfinite(w) else 0.0
        role = " ".join(_badge(r, "#1971c2" if r == "champion" else "#868e96") for r in roles.get(v, []))
        dim = "" if wf > 0 or roles.get(v) else ' class="dim"'
        body.append(
            f'<tr{dim}><td class="nowrap"><i class="dot" style="background:{colours.get(v, "#adb5bd")}"></i><b>{esc(v)}</b></td>'
            f'<td>{role}</td>'
            f'<td class="nowrap"><span class="bar"><span style="width:{wf:.0f}%;background:{colours.get(v, "#adb5bd")}"></span>'
            f'</span> {_pct(wf)}</td>'
            f'<td>{_num(d.get("holdout_accuracy"))}</td><td>{esc(d.get("kind") or "–")}</td>'
            f'<td>{esc(d.get("parent") or "–")}</td>'
            f'<td class="nowrap">{esc(_utc(d.get("created_at"), "%m-%d %H:%M"))}'
            f'{"<div class=error>" + esc(d["error"]) + "</div>" if d.get("error") else ""}</td></tr>')
    return ('<table><thead><tr><th>version</th><th>role</th><th>traffic</th><th>holdout</th>'
            '<th>kind</th><th>parent</th><th>created</th></tr></thead><tbody>'
            + "".join(body) + "</tbody></table>")


def _decisions(view: ModelView, now: float, shown: int = DECISIONS_SHOWN) -> str:
    if not view.events:
        return '<div class="empty">No decision recorded yet.</div>'
    rows = []
    for e in list(reversed(view.events))[:shown]:
        c = MARKED_KINDS.get(e.kind, "#868e96")
        rows.append(f'<tr><td class="nowrap">{esc(_utc(e.t, "%m-%d %H:%M:%S"))}<div class="muted">{esc(_ago(e.t, now))}</div></td>'
                    f'<td>{_badge(e.kind, c)}</td><td>{esc(e.version or "–")}</td>'
                    f'<td class="reason">{esc(e.reason)}</td></tr>')
    return ('<table class="decisions"><thead><tr><th>time (UTC)</th><th>decision</th><th>version</th>'
            '<th>reason</th></tr></thead><tbody>' + "".join(rows) + "</tbody></table>")


def render_model(view: ModelView, now: float) -> str:
    """The section of one model."""
    st = view.state or {}
    colours = version_colours([d["version"] for d in view.versions]
                              + list((view.routing or {}).get("weights") or {})
                              + [p.version for p in view.quality])
    champion = (view.routing or {}).get("champion") or st.get("champion")
    errors = "".join(f'<div class="error">{esc(e)}</div>' for e in view.errors)
    tick = (f'controller tick {esc(st.get("seq", "–"))}, {esc(_ago(st.get("last_tick_t"), now))}'
            if view.state else "no controller state yet")
    ref = st.get("champion_reference_accuracy")
    ref = float(ref) if isinstance(ref, (int, float)) and math.isfinite(ref) else None
    chart = quality_chart(view.quality, view.events, reference=ref, colours=colours)
    window = (f'windows of {view.label_window} labeled rows; {view.labeled_rows} labeled rows read'
              if view.label_window else "")
    return (f'<section id="model-{esc(view.name)}"><div class="model-head"><h2>{esc(view.name)}</h2>'
            f'<span>champion <b>{esc(champion or "none")}</b></span><span class="muted">{tick}</span></div>'
            f'{errors}{_cards(view, now)}'
            f'<div class="panel"><h3>Quality over time <span class="muted">{esc(window)}</span></h3>{chart}</div>'
            f'<div class="grid2"><div class="panel"><h3>Versions and traffic</h3>{_versions_table(view, colours)}</div>'
            f'<div class="panel"><h3>Latest decisions</h3>{_decisions(view, now)}</div></div></section>')


_CSS = """
*{box-sizing:border-box}body{margin:0;font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
color:#212529;background:#f4f6f8}header{background:#1f2937;color:#f8f9fa;padding:12px 24px;display:flex;
gap:24px;align-items:baseline}header h1{font-size:18px;margin:0}header a{color:#a5d8ff;text-decoration:none;
margin-right:12px}main{padding:16px 24px;max-width:1400px}section{margin-bottom:32px}
.model-head{display:flex;gap:20px;align-items:baseline}.model-head h2{margin:4px 0 10px;font-size:20px}
.cards{display:grid;grid-template-columns:repeat(4,1fr);gap:12px;margin-bottom:12px}
.card,.panel{background:#fff;border:1px solid #dee2e6;border-radius:8px;padding:10px 14px}
.panel{margin-bottom:12px;overflow-x:auto}h3{font-size:13px;text-transform:uppercase;letter-spacing:.04em;
color:#495057;margin:0 0 8px}h3 .muted{text-transform:none;letter-spacing:0;font-weight:normal}
.card div{margin-top:4px}.badge{display:inline-block;color:#fff;border-radius:10px;padding:1px 8px;
font-size:12px;font-weight:600;margin-right:4px;white-space:nowrap}.muted{color:#868e96;font-size:12px}
.grid2{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1fr);gap:12px}
table{border-collapse:collapse;width:100%}th{text-align:left;font-size:12px;color:#868e96;font-weight:600;
border-bottom:1px solid #dee2e6;padding:4px 6px}td{border-bottom:1px solid #f1f3f5;padding:5px 6px;
vertical-align:top}tr.dim td{color:#adb5bd}.nowrap{white-space:nowrap}.reason{word-break:break-word}
.bar{display:inline-block;width:56px;height:8px;background:#e9ecef;border-radius:4px;overflow:hidden;
vertical-align:middle}.bar span{display:block;height:100%}.sli{display:grid;
grid-template-columns:minmax(70px,1fr) 60px 40px;gap:0 6px;align-items:center}.sli-name{font-weight:600}
.sli .burn{grid-column:1/-1;margin-top:-2px}
.dot{display:inline-block;width:10px;height:10px;border-radius:50%;margin-right:6px}
.chart{max-width:100%;height:auto;font-family:inherit}.chart .tick{font-size:11px;fill:#868e96}
.legend{display:flex;flex-wrap:wrap;gap:14px;margin-top:4px;font-size:12px}.key i{display:inline-block;
width:12px;height:4px;margin-right:5px;vertical-align:middle}.key i.tri{width:0;height:0;border-left:6px solid
transparent;border-right:6px solid transparent;border-top:9px solid;background:none!important}
.empty{color:#868e96;padding:18px;text-align:center}.error{background:#fff5f5;color:#c92a2a;border:1px solid
#ffc9c9;border-radius:6px;padding:6px 10px;margin-bottom:8px}
@media (max-width:900px){.cards{grid-template-columns:1fr 1fr}.grid2{grid-template-columns:1fr}}
"""


def render_page(views: Sequence[ModelView], now: float, *, refresh_s: int | None = REFRESH_S) -> str:
    """The whole status page (UTF-8 HTML string) for ``views``, as of ``now`` (epoch seconds)."""
    nav = "".join(f'<a href="#model-{esc(v.name)}">{esc(v.name)}</a>' for v in views)
    body = "".join(render_model(v, now) for v in views) or '<div class="empty">No model is served here.</div>'
    meta = f'<meta http-equiv="refresh" content="{int(refresh_s)}">' if refresh_s else ""
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">{meta}'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f'<title>lifelong-ray status</title><style>{_CSS}</style></head><body>'
            f'<header><h1>lifelong-ray status</h1><nav>{nav}</nav>'
            f'<span class="muted">as of {esc(_utc(now))} UTC · JSON: /v1/models/&lt;model&gt; · '
            f'metrics: /metrics</span></header><main>{body}</main></body></html>')
