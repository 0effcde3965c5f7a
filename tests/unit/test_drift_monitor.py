"""Hysteresis of the drift monitor, table-driven."""

from __future__ import annotations

import json

import pytest

from lifelong_ray.drift import MonitorState, update_monitor


@pytest.mark.parametrize("required,flags,fires,final", [
    # fires on the window where the streak reaches `required`
    (1, "1", [0], (1, True)),
    (2, "11", [1], (2, True)),
    (3, "11", [], (2, False)),
    # stays active without re-firing while flagged
    (2, "111111", [1], (6, True)),
    # a clean window resets; the next streak fires again
    (2, "1101101", [1, 4], (1, False)),
    (2, "11011", [1, 4], (2, True)),
    # interrupted streaks never fire
    (3, "1101101101", [], (1, False)),
    (1, "101", [0, 2], (1, True)),
    (2, "", [], (0, False)),
    (2, "0000", [], (0, False)),
])
def test_hysteresis_table(required, flags, fires, final):
    state = MonitorState()
    fired_at = []
    for i, ch in enumerate(flags):
        state, fired = update_monitor(state, ch == "1", required)
        if fired:
            fired_at.append(i)
    assert fired_at == fires
    assert (state.consecutive, state.active) == final


@pytest.mark.parametrize("state,flagged,required,expected", [
    (MonitorState(0, False), True, 2, (MonitorState(1, False), False)),
    (MonitorState(1, False), True, 2, (MonitorState(2, True), True)),
    (MonitorState(2, True), True, 2, (MonitorState(3, True), False)),
    (MonitorState(9, True), False, 2, (MonitorState(0, False), False)),
    (MonitorState(1, False), False, 2, (MonitorState(0, False), False)),
    # a streak restored from before `required` was raised fires on its next flag
    (MonitorState(5, False), True, 3, (MonitorState(6, True), True)),
])
def test_single_steps(state, flagged, required, expected):
    assert update_monitor(state, flagged, required) == expected


def test_state_is_immutable_and_json_serializable():
    state = MonitorState(consecutive=3, active=True)
    with pytest.raises(AttributeError):
        state.consecutive = 0  # type: ignore[misc]
    assert MonitorState.from_json(json.loads(json.dumps(state.to_json()))) == state
    assert state.to_json() == {"consecutive": 3, "active": True}


@pytest.mark.parametrize("required", [0, -1, 1.5, True])
def test_required_is_validated(required):
    with pytest.raises(ValueError, match="required"):
        update_monitor(MonitorState(), True, required)
