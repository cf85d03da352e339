"""Timeline events on a real network (root): a link cut and restored, a node
joining late, data drifting at a node - each seen by the DCC and answered by
re-planning the running task, which still ends with a verified model.

The triangle s1-s2-s3 (every link 100 Mbit/s, so a cut link has a way around):
h1 (client) and h6 (data) on s1, h2 (data) and h5 (MPVU) on s2, h3 and h4 (data)
on s3; h4 is not running until the timeline lets it join. Slow trainers (5% of
a core) keep the task going while the timeline runs.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from testbed.results import read_jsonl
from tests.emulation.test_ai_traffic import run_cli

pytestmark = [pytest.mark.emulation,
              pytest.mark.skipif(os.geteuid() != 0, reason="emulation tier needs root")]

TOPO = {"name": "triangle", "switches": ["s1", "s2", "s3"], "hosts": ["h1", "h2", "h3", "h4", "h5", "h6"],
        "links": [{"a": "s1", "b": "s2"}, {"a": "s2", "b": "s3"}, {"a": "s1", "b": "s3"},
                  {"a": "h1", "b": "s1"}, {"a": "h6", "b": "s1"}, {"a": "h2", "b": "s2"},
                  {"a": "h5", "b": "s2"}, {"a": "h3", "b": "s3"}, {"a": "h4", "b": "s3"}]}
TIMELINE = [{"at_s": 1.0, "kind": "link_down", "link": ["s2", "s3"]},
            {"at_s": 2.0, "kind": "join_node", "node": "h4"},
            {"at_s": 3.0, "kind": "drift", "node": "h2", "labels": [0, 1], "fraction": 1.0},
            {"at_s": 4.0, "kind": "link_up", "link": ["s2", "s3"]}]


@pytest.fixture(scope="module")
def timeline_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("timeline")
    (tmp / "topo.yaml").write_text(yaml.safe_dump(TOPO))
    slow = {"capacity": 0.05}
    spec = {"name": "timeline", "seed": 1, "topology": {"file": str(tmp / "topo.yaml")}, "links": {"bw": 100},
            "nodes": {"h1": ["client"], "h2": ["data"], "h3": ["data"], "h4": ["data"], "h5": ["mpvu"],
                      "h6": ["data"]},
            "hosts": {"h2": slow, "h3": slow, "h4": slow, "h6": slow},
            "data": {"partition": "iid"},
            "tasks": [{"id": 1, "client": "h1", "target_accuracy": 0.85, "deadline_s": 120, "max_laps": 6}],
            "knowledge": {"report_interval_s": 0.5}, "controller": {"lldp_interval_s": 0.3},
            "timeline": TIMELINE}
    (tmp / "spec.yaml").write_text(yaml.safe_dump(spec))
    out = tmp / "run"
    rc, text = run_cli(out, spec=tmp / "spec.yaml")
    return rc, text, read_jsonl(out / "events.jsonl"), out


def _runner(events, kind):
    return [e for e in events if e["kind"] == kind and e["src"] == "testbed"]


def _replans(events, cause_part: str):
    """Re-plans for a cause: the plan changed (replan) or was re-made and stood (replan_kept)."""
    return [e for e in events if e["kind"] in ("replan", "replan_kept") and e["src"] == "dcc"
            and cause_part in e.get("cause", "")]


def test_task_survives_the_timeline(timeline_run):
    rc, text, events, out = timeline_run
    assert "timeline: link s2-s3 down" in text and "timeline: link s2-s3 up" in text, text[-3000:]
    [res] = [e for e in events if e["kind"] == "task_result"]
    assert res["end_reason"] in ("target_reached", "laps_exhausted", "deadline"), res
    assert res["sha256"], res  # a verified model came back
    summary = json.loads((out / "summary.json").read_text())
    assert summary["lineage_problems"] == [], summary["lineage_problems"]  # no version lost or unlinked
    active = [e for e in events if e["kind"] == "train"]
    assert active[-1]["t"] > _runner(events, "link_state_changed")[-1]["t"], \
        "the task ended before the timeline finished: nothing here was re-planned mid-task"


def test_link_cut_and_restore_reach_the_dcc_and_replan(timeline_run):
    _, _, events, _ = timeline_run
    cut, restore = _runner(events, "link_state_changed")
    down = [e for e in events if e["kind"] == "link_down" and e["src"] == "dcc" and e["t"] >= cut["t"]
            and {e.get("a"), e.get("b")} == {"s2", "s3"}]
    assert down, "the DCC never saw s2-s3 go down"
    lag = down[0]["t"] - cut["t"]
    print(f"DCC saw the cut {lag * 1000:.0f} ms after it")
    assert lag < 2.0  # port status is immediate; LLDP (0.3 s) the fallback
    assert _replans(events, "link down"), "no re-plan for the cut"
    up = [e for e in events if e["kind"] == "link_up" and e["src"] == "dcc" and e["t"] >= restore["t"]
          and {e.get("a"), e.get("b")} == {"s2", "s3"}]
    assert up, "the DCC never saw s2-s3 come back"
    assert _replans(events, "link up"), "no re-plan for the restored link"


def test_late_node_joins_and_is_planned_with(timeline_run):
    _, _, events, _ = timeline_run
    [join] = _runner(events, "node_joins")
    assert not [e for e in events if e["src"] == "h4" and e["t"] < join["t"]], "h4 ran before it joined"
    joined = [e for e in events if e["kind"] == "node_joined" and e["src"] == "dcc" and e.get("node") == "h4"]
    assert joined and joined[0]["t"] >= join["t"]
    print(f"h4 reported {joined[0]['t'] - join['t']:.2f} s after it was let join")
    assert _replans(events, "node joined (h4)")


def test_drift_changes_the_data_and_replans(timeline_run):
    _, _, events, _ = timeline_run
    [asked] = _runner(events, "drift_requested")
    [drift] = [e for e in events if e["kind"] == "data_drift" and e["src"] == "h2"]
    print(f"h2's data drifted {drift['t'] - asked['t']:.2f} s after the runner asked")
    assert drift["t"] - asked["t"] < 2.0  # polled every 0.2 s, plus loading the pool
    assert sum(drift["label_hist"][2:]) == 0 and sum(drift["label_hist"][:2]) == drift["samples"]
    assert sum(drift["label_hist_before"][2:]) > 0
    changed = [e for e in events if e["kind"] == "knowledge_changed" and e["src"] == "dcc"
               and e.get("node") == "h2" and e["t"] >= drift["t"]]
    assert changed and "label_hist" in changed[0]["changes"]
    assert _replans(events, "data changed (h2)")
    # training at h2 after the drift sees only labels 0 and 1: its samples match
    after = [e for e in events if e["kind"] == "train" and e["src"] == "h2" and e["t"] > drift["t"]]
    for e in after:
        assert e["samples"] == drift["samples"]
