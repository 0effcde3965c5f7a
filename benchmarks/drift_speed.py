"""How fast is a feature drift check of a big window, and does it agree with scipy?

PSI + two-sample KS over a window of 1,000,000 rows x 20 numeric features against a
training reference of the same size, side by side in one run with the obvious
alternative, a per-feature scipy loop:

* ``lifelong_ray`` -- :func:`lifelong_ray.drift.feature_drift` on the window (a dict of
  float64 columns, as ``Schema.validate_records`` returns them) against a
  :class:`~lifelong_ray.drift.Reference` built ONCE beforehand, as at training time,
  with ``max_sample`` = rows: the reference keeps every training value, sorted, so the
  KS test is against the full 1M-row reference, not a sample. The timed part is the
  whole check of one new window: copying and sorting its columns, PSI bins, KS
  statistics and p-values, per-feature verdicts and the report with its reason.
* ``scipy loop`` -- for each feature ``scipy.stats.ks_2samp(ref, cur, method="asymp")``
  plus the same PSI in plain numpy (``searchsorted`` of the window into the reference
  quantile edges, ``bincount``, the PSI sum). Its quantile edges and reference bin
  shares are also computed once beforehand, untimed.

Both apply the same rule (``DriftConfig`` defaults): a feature is drifted when
``PSI > 0.2`` or ``(p < 0.01 and D >= 0.1)``. The run checks that the two agree on every
feature's verdict and reports the largest ``|p - p_scipy|`` (and ``|D - D_scipy|``,
``|PSI - PSI_numpy|``).

Data (seeded numpy): reference and window drawn independently; even-numbered features
unchanged, odd-numbered ones changed -- five clearly (caught by PSI or by KS with its
effect floor), five slightly (a 1M-row KS calls most of them significant, but below
the effect floor, so not drifted). Families: normal, lognormal, rounded normal (heavy
ties), Poisson counts (few distinct values), uniform.

Seconds are the median of ``--repeats`` runs of each method, the two methods
alternating (ours, scipy, ours, scipy, ...) so that load from other processes on a
shared machine hits both alike; the speedup is the ratio of the medians.
``--json`` prints exactly ``{"seconds", "baseline_seconds", "speedup",
"max_pvalue_diff"}`` and nothing else on stdout; without it, result tables (rich).

Run from the repository root::

    python benchmarks/drift_speed.py            # 1,000,000 x 20, ~1.5 min on 2 cores
    python benchmarks/drift_speed.py --json
    python benchmarks/drift_speed.py --rows 100000 --features 8 --repeats 5
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import scipy
from scipy import stats

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lifelong_ray.config import DriftConfig, FeatureSpec, LabelSpec, ModelSpec  # noqa: E402
from lifelong_ray.data.schema import Schema  # noqa: E402
from lifelong_ray.drift import Reference, feature_drift  # noqa: E402
from lifelong_ray.drift.stats import bin_proportions, ks_2samp_columns, sorted_columns  # noqa: E402

BINS = 10  # Reference.from_columns default
PSI_EPS = 1e-4  # lifelong_ray.drift.stats.psi default
JSON_KEYS = ("seconds", "baseline_seconds", "speedup", "max_pvalue_diff")

Gen = Callable[[np.random.Generator, int], np.ndarray]


@dataclass(frozen=True)
class FeatureKind:
    """How one feature's reference and window values are drawn."""

    change: str  # human-readable
    ref: Gen
    cur: Gen


def _normal(mu: float = 0.0, sd: float = 1.0) -> Gen:
    return lambda rng, n: rng.normal(mu, sd, size=n)


def _lognormal(scale: float = 1.0) -> Gen:
    return lambda rng, n: scale * rng.lognormal(0.0, 0.5, size=n)


def _rounded(mu: float = 0.0) -> Gen:
    return lambda rng, n: np.round(rng.normal(mu, 1.0, size=n), 1)


def _poisson(lam: float = 3.0) -> Gen:
    return lambda rng, n: rng.poisson(lam, size=n).astype(np.float64)


def _uniform(lo: float = 0.0) -> Gen:
    return lambda rng, n: rng.uniform(lo, lo + 1.0, size=n)


UNCHANGED = [
    FeatureKind("none (normal)", _normal(), _normal()),
    FeatureKind("none (lognormal)", _lognormal(), _lognormal()),
    FeatureKind("none (rounded normal, ties)", _rounded(), _rounded()),
    FeatureKind("none (Poisson 3)", _poisson(), _poisson()),
    FeatureKind("none (uniform)", _uniform(), _uniform()),
]
CHANGED = [
    FeatureKind("normal mean +0.5 sd", _normal(), _normal(0.5)),
    FeatureKind("lognormal scale x1.5", _lognormal(), _lognormal(1.5)),
    FeatureKind("rounded normal +0.3 sd", _rounded(), _rounded(0.3)),
    FeatureKind("Poisson 3 -> 4", _poisson(), _poisson(4.0)),
    FeatureKind("normal sd x2", _normal(), _normal(0.0, 2.0)),
    FeatureKind("normal mean +0.05 sd", _normal(), _normal(0.05)),
    FeatureKind("normal mean +0.02 sd", _normal(), _normal(0.02)),
    FeatureKind("uniform +0.005", _uniform(), _uniform(0.005)),
    FeatureKind("lognormal scale x1.01", _lognormal(), _lognormal(1.01)),
    FeatureKind("normal mean +0.003 sd", _normal(), _normal(0.003)),
]


def feature_kinds(features: int) -> list[FeatureKind]:
    """Even features unchanged, odd ones changed (clear changes first)."""
    kinds = []
    for j in range(features):
        pool = CHANGED if j % 2 else UNCHANGED
        kinds.append(pool[(j // 2) % len(pool)])
    return kinds


def make_data(rows: int, features: int, seed: int) -> tuple[list[str], list[FeatureKind], dict, dict]:
    """Seeded reference and window columns (name -> float64 array)."""
    rng = np.random.default_rng(seed)
    kinds = feature_kinds(features)
    names = [f"f{j:02d}" for j in range(features)]
    ref = {name: k.ref(rng, rows) for name, k in zip(names, kinds)}
    cur = {name: k.cur(rng, rows) for name, k in zip(names, kinds)}
    return names, kinds, ref, cur


def _median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, list[float], Any]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


def scipy_loop(ref: dict, cur: dict, names: list[str], edges: dict, ref_props: dict,
               cfg: DriftConfig) -> dict[str, np.ndarray]:
    """The baseline: one scipy KS test and one numpy PSI per feature."""
    d, p, psis = [], [], []
    for name in names:
        r = stats.ks_2samp(ref[name], cur[name], method="asymp")
        x = cur[name]
        counts = np.bincount(np.searchsorted(edges[name], x, side="right"), minlength=BINS)
        c = np.clip(counts / x.size, PSI_EPS, None)
        q = np.clip(ref_props[name], PSI_EPS, None)
        d.append(float(r.statistic))
        p.append(float(r.pvalue))
        psis.append(float(np.sum((c - q) * np.log(c / q))))
    d_, p_, psi_ = np.array(d), np.array(p), np.array(psis)
    drifted = (psi_ > cfg.psi_threshold) | ((p_ < cfg.ks_pvalue) & (d_ >= cfg.ks_min_statistic))
    return {"statistic": d_, "p_value": p_, "psi": psi_, "drifted": drifted}


def run_benchmark(rows: int = 1_000_000, features: int = 20, repeats: int = 3, seed: int = 0,
                  breakdown: bool = False) -> dict[str, Any]:
    """Build the data and the reference, time both methods, compare their results."""
    cfg = DriftConfig()
    names, kinds, ref, cur = make_data(rows, features, seed)
    schema = Schema(ModelSpec(name="bench", label=LabelSpec(name="y", classes=[0, 1]),
                              features=[FeatureSpec(name=n) for n in names]))

    # once, at "training time" (untimed in the comparison)
    t0 = time.perf_counter()
    reference = Reference.from_columns(ref, schema, bins=BINS, max_sample=rows)
    reference_seconds = time.perf_counter() - t0
    assert reference.sample.shape == (rows, features)  # the full reference, not a sample
    grid = np.linspace(0.0, 1.0, BINS + 1)
    edges = {n: np.quantile(ref[n], grid)[1:-1] for n in names}
    ref_props = {n: np.bincount(np.searchsorted(edges[n], ref[n], side="right"), minlength=BINS) / rows
                 for n in names}

    # alternate the two methods, so a change in machine load hits both alike
    our_times, base_times = [], []
    for _ in range(repeats):
        t, _, report = _median_time(lambda: feature_drift(reference, cur, cfg), 1)
        our_times.append(t)
        t, _, base = _median_time(lambda: scipy_loop(ref, cur, names, edges, ref_props, cfg), 1)
        base_times.append(t)
    seconds, base_seconds = statistics.median(our_times), statistics.median(base_times)

    ours = {
        "statistic": np.array([f.statistic for f in report.features]),
        "p_value": np.array([f.p_value for f in report.features]),
        "psi": np.array([f.psi for f in report.features]),
        "drifted": np.array([f.drifted for f in report.features]),
    }
    result: dict[str, Any] = {
        "rows": rows, "features": features, "repeats": repeats, "seed": seed,
        "seconds": seconds, "baseline_seconds": base_seconds, "speedup": base_seconds / seconds,
        "max_pvalue_diff": float(np.max(np.abs(ours["p_value"] - base["p_value"]))),
        "max_statistic_diff": float(np.max(np.abs(ours["statistic"] - base["statistic"]))),
        "max_psi_diff": float(np.max(np.abs(ours["psi"] - base["psi"]))),
        "verdicts_agree": bool(np.array_equal(ours["drifted"], base["drifted"])),
        "n_drifted": int(ours["drifted"].sum()), "n_drifted_baseline": int(base["drifted"].sum()),
        "reference_seconds": reference_seconds,
        "times": our_times, "baseline_times": base_times,
        "per_feature": [
            {"feature": n, "change": k.change, "statistic": float(ours["statistic"][j]),
             "p_value": float(ours["p_value"][j]), "p_scipy": float(base["p_value"][j]),
             "psi": float(ours["psi"][j]), "drifted": bool(ours["drifted"][j]),
             "drifted_scipy": bool(base["drifted"][j])}
            for j, (n, k) in enumerate(zip(names, kinds))
        ],
        "reason": report.reason,
    }
    if breakdown:
        result["stages"] = _stages(reference, ref, cur, names, repeats, base["statistic"])
    return result


def _stages(reference: Reference, ref: dict, cur: dict, names: list[str], repeats: int,
            d_scipy: np.ndarray) -> list[tuple[str, float]]:
    """Where the time goes: each stage of our path on its own, and the p-value share
    of the scipy loop (medians of ``repeats``)."""
    cols = [cur[n] for n in names]
    t_sort, _, xs = _median_time(lambda: sorted_columns(cols), repeats)
    t_psi, _, _ = _median_time(lambda: bin_proportions(xs, reference.interior_edges), repeats)
    t_ks, _, _ = _median_time(lambda: ks_2samp_columns(reference.sample, xs), repeats)
    n = len(next(iter(cur.values())))
    en = np.round(n * n / (2.0 * n))
    t_kstwo, _, _ = _median_time(lambda: [stats.kstwo.sf(d, en) for d in d_scipy], 1)
    t_ks1, _, _ = _median_time(lambda: [stats.ks_2samp(ref[m], cur[m], method="asymp") for m in names], 1)
    return [
        ("ours: copy + sort the window's columns (sorted_columns)", t_sort),
        ("ours: PSI bin shares on the sorted columns (bin_proportions)", t_psi),
        ("ours: KS statistics + p-values (ks_2samp_columns)", t_ks),
        ("scipy: ks_2samp over all features", t_ks1),
        ("scipy: of which kstwo.sf p-values", t_kstwo),
    ]


def json_summary(result: dict[str, Any]) -> dict[str, float]:
    """Exactly the ``--json`` keys."""
    return {k: float(result[k]) for k in JSON_KEYS}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kb = int(next(ln.split()[1] for ln in f if ln.startswith("MemTotal")))
        mem = f", {kb / 2**20:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    load = ""
    if hasattr(os, "getloadavg"):
        load = ", load avg {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    return (f"{cpu}, {cores} cores{mem}{load}; Python {platform.python_version()}, "
            f"numpy {np.__version__}, scipy {scipy.__version__}")


def print_tables(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # piped into a file: don't wrap at 80 columns
        console = Console(width=132)
    r = result
    console.print(f"Drift check speed: {r['rows']:,} rows x {r['features']} features, reference of "
                  f"{r['rows']:,} rows (full, sorted; built once in {r['reference_seconds']:.2f} s, untimed), "
                  f"median of {r['repeats']} repeats, seed {r['seed']}")
    console.print(f"{_dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} | {machine()}")

    t = Table(title="PSI + KS on one window")
    for col in ("method", "seconds", "speedup", "max |p - p_scipy|", "max |D - D_scipy|",
                "drifted", "verdicts agree"):
        t.add_column(col, justify="left" if col == "method" else "right")
    t.add_row("lifelong_ray feature_drift", f"{r['seconds']:.3f}", f"{r['speedup']:.1f}x",
              f"{r['max_pvalue_diff']:.1e}", f"{r['max_statistic_diff']:.1e}",
              f"{r['n_drifted']}/{r['features']}", "yes" if r["verdicts_agree"] else "NO")
    t.add_row("scipy ks_2samp loop + numpy PSI", f"{r['baseline_seconds']:.3f}", "1.0x", "-", "-",
              f"{r['n_drifted_baseline']}/{r['features']}", "")
    console.print(t)
    console.print(f"runs (s): ours {', '.join(f'{x:.3f}' for x in r['times'])}; "
                  f"scipy {', '.join(f'{x:.2f}' for x in r['baseline_times'])}; "
                  f"max |PSI - PSI_numpy| {r['max_psi_diff']:.1e}")

    f = Table(title="Per feature")
    for col in ("feature", "change", "KS D", "p", "p scipy", "PSI", "drifted", "scipy"):
        f.add_column(col, justify="left" if col in ("feature", "change") else "right")
    for row in r["per_feature"]:
        f.add_row(row["feature"], row["change"], f"{row['statistic']:.4f}", f"{row['p_value']:.3g}",
                  f"{row['p_scipy']:.3g}", f"{row['psi']:.4f}", "yes" if row["drifted"] else "no",
                  "yes" if row["drifted_scipy"] else "no")
    console.print(f)
    if "stages" in r:
        s = Table(title="Where the time goes (each stage timed on its own)")
        s.add_column("stage")
        s.add_column("seconds", justify="right")
        for name, sec in r["stages"]:
            s.add_row(name, f"{sec:.3f}")
        console.print(s)
    console.print(f"reason: {r['reason']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows of the reference and of the window")
    ap.add_argument("--features", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per method; the median is reported")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print only the JSON summary")
    args = ap.parse_args(argv)
    if args.rows < 2 or args.features < 1 or args.repeats < 1:
        ap.error("need --rows >= 2, --features >= 1, --repeats >= 1")
    result = run_benchmark(args.rows, args.features, args.repeats, args.seed, breakdown=not args.json)
    if args.json:
        print(json.dumps(json_summary(result)))
    else:
        print_tables(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
