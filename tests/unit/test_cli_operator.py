"""`lifelong approve|rollback|retrain|pause|resume` write one operator command each."""

from __future__ import annotations

import pytest
import yaml

from lifelong_ray.cli import main
from lifelong_ray.config import load_config
from lifelong_ray.control.commands import read_commands
from lifelong_ray.storage import Storage


@pytest.fixture
def config(tmp_path):
    data = yaml.safe_load(open("configs/demo.yaml"))
    data["storage"]["root"] = str(tmp_path / "store")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize("argv, kind, version", [
    (["approve", "demo", "v0002"], "approve", "v0002"),
    (["rollback", "demo"], "rollback", None),
    (["retrain", "demo"], "retrain", None),
    (["pause", "demo"], "pause", None),
    (["resume", "demo"], "resume", None),
])
def test_operator_command_is_written_with_who_and_why(config, argv, kind, version, capsys):
    assert main([*argv, "--why", "ticket 42", "--who", "ana", "--config", config]) == 0
    (cmd,) = read_commands(Storage(load_config(config).storage.root), "demo")
    assert (cmd.kind.value, cmd.version, cmd.who, cmd.why) == (kind, version, "ana", "ticket 42")
    assert cmd.id in capsys.readouterr().out


def test_a_blank_reason_is_refused_and_nothing_is_written(config, capsys):
    assert main(["pause", "demo", "--why", "  ", "--config", config]) == 2
    assert "--why is required" in capsys.readouterr().err
    assert read_commands(Storage(load_config(config).storage.root), "demo") == []
