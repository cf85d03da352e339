"""The quickstart under each non-DCC paradigm (nodes/modes.py), on the real fabric:
`daitn run experiments/quickstart.yaml --set mode=M` for autonomous (AATS), centralized,
fedavg and random_walk.

Each run must reach the quickstart's target with the DCC planning nothing (no plan,
itinerary or hop event from it, and no TRAIN_REQUEST or hop request on the client's
link), and leave what its mode is about: AATS decisions with reasons and gossip between
nodes; raw bytes and privacy flags for centralized; averaged rounds for fedavg; a seeded
uniform walk. The summary format is DCC mode's, so `daitn compare` reads all four.
"""
import json
import os
import random

import pytest

from controllers.lineage import Lineage
from testbed.results import read_jsonl
from tests.emulation.test_ai_traffic import assert_nothing_left, run_cli, run_id_of

pytestmark = [pytest.mark.emulation,
              pytest.mark.skipif(os.geteuid() != 0, reason="emulation tier needs root")]

MODES = ("autonomous", "centralized", "fedavg", "random_walk")
DATA = ["h2", "h4", "h6", "h8"]
PLANNING = {"plan", "itinerary", "hop", "feasibility", "replan", "replan_kept", "hop_flows_installed"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One quickstart run per mode, made on first use (they queue for the emulation lock)."""
    base = tmp_path_factory.mktemp("modes")
    made: dict[str, dict] = {}

    def get(mode: str) -> dict:
        if mode not in made:
            out = base / mode
            rc, text = run_cli(out, f"mode={mode}")
            print(text[-2500:])
            run_id = run_id_of(out)
            if run_id:
                assert_nothing_left(run_id)
            assert rc == 0, f"daitn run --set mode={mode} failed ({rc}):\n{text[-3000:]}"
            made[mode] = {"dir": out, "summary": json.loads((out / "summary.json").read_text()),
                          "events": read_jsonl(out / "events.jsonl")}
        return made[mode]
    return get


def of(events, kind, **match):
    return [e for e in events if e["kind"] == kind and all(e.get(k) == v for k, v in match.items())]


@pytest.mark.parametrize("mode", MODES)
def test_reaches_the_target_without_dcc_planning(runs, mode):
    r = runs(mode)
    s, events = r["summary"], r["events"]
    assert s["mode"] == mode
    (t,) = s["tasks"]
    assert t["reached"] and t["final_accuracy"] >= t["target_accuracy"] == 0.85, t
    assert t["end_reason"] == "target_reached" and t["hops"] >= 1 and t["seconds"] > 0
    # the DCC ran (forwarding, knowledge, verdict copies) but planned nothing
    dcc = {e["kind"] for e in events if e["src"] == "dcc"}
    assert "topology_converged" in dcc and "knowledge_report" in dcc
    assert not dcc & PLANNING, dcc & PLANNING
    assert t["planned_itinerary"] == [] and s["network"]["flows_installed_by_dcc"] > 0
    # ... and on the wire: the client never asked it for a plan or a hop
    from scapy.all import rdpcap
    from nodes.scapy_layers import DAITN
    from nodes.wire import MsgType
    (pcap,) = (r["dir"] / "pcaps").glob("h1-eth0~*.pcap")
    types = {MsgType(p[DAITN].type).name for p in rdpcap(str(pcap)) if DAITN in p}
    assert "KNOWLEDGE_REPORT" in types and not types & {"TRAIN_REQUEST", "ITINERARY"}, types
    # same summary and events as DCC mode: trainings verified by the MPVU, a whole lineage
    trains, evals = of(events, "train", task=1), of(events, "evaluation", task=1)
    assert t["itinerary"] == [e["src"] for e in trains] and len(evals) == len(trains) == t["hops"]
    assert evals[-1]["accuracy"] == t["final_accuracy"] and all(e["by"] == "h9" for e in evals)
    assert t["model_bytes_sent"] > 0 and s["lineage_problems"] == []
    assert Lineage.from_events(events, epochs=1).problems() == []
    log = (r["dir"] / "logs" / "controller.log").read_text()
    assert "Traceback" not in log and " ERROR " not in log
    assert not of(events, "error") and not of(events, "transfer_failed")


def test_autonomous_decisions_and_gossip(runs):
    r = runs("autonomous")
    s, events = r["summary"], r["events"]
    decisions = of(events, "aats_decision", task=1)
    trains = of(events, "train", task=1)
    assert decisions[0]["src"] == "h1" and [d["src"] for d in decisions[1:]] == [t["src"] for t in trains]
    moves = [d for d in decisions if d["end"] is None]
    assert [d["chosen"] for d in moves] == [t["src"] for t in trains]
    assert all(d["reason"] and d["candidates"] for d in moves) and decisions[-1]["end"] == "target_reached"
    for d in moves:
        assert {c["node"] for c in d["candidates"]} <= set(DATA)
        best = max(c["score"] for c in d["candidates"] if c["eligible"])
        assert [c["score"] for c in d["candidates"] if c["node"] == d["chosen"]] == [best]
    laps: dict[int, list[str]] = {}
    for t in trains:
        laps.setdefault(t["lap"], []).append(t["src"])
    assert all(len(v) == len(set(v)) for v in laps.values()), laps  # loop avoidance
    # gossip: summaries node to node, every host took part
    gossip = of(events, "gossip")
    assert {e["src"] for e in gossip} == {"h1", *DATA, "h9"} and all(e["bytes"] > 36 for e in gossip)
    assert s["gossip"]["exchanges"] == len(gossip) and s["tasks"][0]["decisions"] == len(decisions)


def test_centralized_ships_raw_data_and_flags_privacy(runs):
    r = runs("centralized")
    s, events = r["summary"], r["events"]
    (t,) = s["tasks"]
    raw = of(events, "raw_data_transfer", task=1)
    assert sorted(e["src"] for e in raw) == DATA and all(e["to"] == "h1" for e in raw)
    assert s["raw_data_bytes_sent"] == t["raw_data_bytes_sent"] == sum(e["bytes"] for e in raw) > 100_000
    shards = [e for e in of(events, "transfer", task=1) if e["msg"] == "DATA_SHARD"]
    assert sorted(e["src"] for e in shards) == DATA
    # the quickstart's data nodes are 'trusted' and trust nobody: every shipment is flagged
    assert sorted(v["node"] for v in s["privacy"]["violations"]) == DATA
    assert s["privacy"]["violating_bytes"] == s["raw_data_bytes_sent"]
    assert {e["src"] for e in of(events, "train", task=1)} == {"h1"} and t["pooled_from"] == DATA


def test_fedavg_averages_rounds(runs):
    r = runs("fedavg")
    s, events = r["summary"], r["events"]
    (t,) = s["tasks"]
    rounds = of(events, "fedavg_round", task=1)
    samples = {e["src"]: e["samples"] for e in of(events, "data_loaded")}
    assert len(rounds) == t["rounds"] == t["hops"] >= 1 and t["participants"] == DATA
    assert all(x["received"] == DATA and x["weights"] == samples for x in rounds)
    assert len(of(events, "local_train", task=1)) == 4 * len(rounds)
    aggregates = of(events, "train", task=1)
    assert {a["src"] for a in aggregates} == {"h1"} and all(len(a["aggregated_from"]) == 4 for a in aggregates)
    assert s["raw_data_bytes_sent"] == 0


def test_random_walk_is_uniform_and_seeded(runs):
    r = runs("random_walk")
    events = r["events"]
    walk = [t["src"] for t in of(events, "train", task=1)]
    here, expect = "h1", []
    for hop in range(len(walk)):  # seed 1, task 1: the draw every node made
        here = random.Random(f"1/1/{hop}").choice([h for h in DATA if h != here])
        expect.append(here)
    assert walk == expect and not of(events, "gossip")


def test_compare_reads_every_mode(runs, tmp_path):
    from testbed.compare import compare
    dirs = [runs(m)["dir"] for m in MODES]
    out = tmp_path / "cmp"
    rows = compare(dirs, out, warn=lambda m: None)["rows"]
    assert [x["mode"] for x in rows] == list(MODES)
    assert all(x["tasks_reached"] == 1 and x["time_to_target_s"] > 0 for x in rows)
    raw = {x["mode"]: x["raw_data_bytes"] for x in rows}
    assert raw["centralized"] > 0 and raw["autonomous"] == raw["fedavg"] == raw["random_walk"] == 0
