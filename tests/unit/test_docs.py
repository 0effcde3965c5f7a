"""The docs stay true: the config reference is regenerated and compared, every YAML
config in the docs loads through the real loader, every event kind and every
`status --json` key is documented, and every `lifelong` command the docs show exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lifelong_ray.cli import build_parser, status_document
from lifelong_ray.config import load_config, parse_config
from lifelong_ray.docs import main as docs_main
from lifelong_ray.docs import render_config_reference
from lifelong_ray.events import EventKind

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _yaml_blocks(path: Path) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", path.read_text(), flags=re.S)


def test_config_reference_is_up_to_date():
    assert (DOCS / "config.md").read_text() == render_config_reference(), \
        "docs/config.md is stale: run `python -m lifelong_ray.docs`"


def test_the_check_flag_catches_a_stale_file(tmp_path, capsys):
    out = tmp_path / "config.md"
    assert docs_main(["--out", str(out)]) == 0
    assert docs_main(["--out", str(out), "--check"]) == 0
    out.write_text(out.read_text().replace("psi_threshold", "psi_treshold"))
    assert docs_main(["--out", str(out), "--check"]) == 1
    assert "is stale" in capsys.readouterr().err


def test_the_reference_covers_every_key_with_its_description():
    from lifelong_ray.config import Config

    md = render_config_reference()
    for section, field in Config.model_fields.items():
        assert f"## `{section}`" in md
        for key, f in field.annotation.model_fields.items():
            assert f"| `{key}` |" in md, f"{section}.{key}"
    assert "| `window_recent` | int | `2000` | ≥ 10 | most recent labeled rows |" in md
    assert "### `model.features[]`" in md and "### `slo.fast`" in md


def test_the_minimal_config_in_the_reference_loads():
    (block,) = _yaml_blocks(DOCS / "config.md")
    cfg = parse_config(__import__("yaml").safe_load(block))
    assert cfg.model.name == "churn"


@pytest.fixture(scope="module")
def ladder(tmp_path_factory):
    """Each rung's config from docs/maturity.md, loaded from a file by the real loader."""
    out = []
    for i, block in enumerate(_yaml_blocks(DOCS / "maturity.md"), start=1):
        path = tmp_path_factory.mktemp("rung") / f"rung{i}.yaml"
        path.write_text(block)
        out.append(load_config(path))
    return out


def test_every_rung_of_the_ladder_loads_and_says_what_it_claims(ladder):
    scheduled, drift, online = ladder
    assert scheduled.training.mode == "batch" and scheduled.drift.sequential == "none"
    assert not scheduled.drift.retrain_on_feature_drift and scheduled.rollout.require_approval == ["full"]
    assert drift.training.mode == "batch" and drift.drift.sequential == "page_hinkley"
    assert drift.drift.retrain_on_feature_drift and drift.rollout.probation_labels > 0 and not \
        drift.rollout.require_approval
    assert online.training.mode == "hybrid" and online.training.online_min_gain > 0


def test_the_runbook_explains_every_event_kind():
    text = (DOCS / "runbook.md").read_text()
    missing = [k.value for k in EventKind if f"| `{k.value}` |" not in text]
    assert not missing, f"docs/runbook.md does not explain {missing}"


def test_the_runbook_documents_every_status_key(tmp_path):
    cfg = parse_config({"model": {"name": "m", "features": [{"name": "x"}], "label": {"name": "y", "classes": [0, 1]}},
                        "storage": {"root": str(tmp_path)}})
    doc = status_document(cfg, None)
    text = (DOCS / "runbook.md").read_text()
    missing = [k for k in doc if not re.search(rf"`models\[\]\.{k}(\[\])?`", text)]
    assert not missing, f"docs/runbook.md does not document status keys {missing}"


def test_every_lifelong_command_in_the_docs_exists():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    shown = set()
    for name in ("runbook.md", "maturity.md"):
        shown |= set(re.findall(r"\blifelong (?!app\b)([a-z][a-z-]+)", (DOCS / name).read_text()))
    unknown = sorted(c for c in shown if c not in sub.choices)
    assert not unknown, f"docs show commands that do not exist: {unknown}"
    assert {"up", "down", "status", "history", "approve", "rollback", "retrain", "pause", "resume",
            "quarantine"} <= shown
