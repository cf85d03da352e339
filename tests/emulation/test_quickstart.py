"""The walking skeleton end to end: `daitn run experiments/quickstart.yaml`.

Runs the real CLI (controller process, OVS fabric, forked PyTorch nodes) and
checks that the run directory is complete and self-consistent: the summary's
itinerary, byte counts and flow counts agree with events.jsonl and with the
flow tables dumped from the switches.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from controllers import cookies
from testbed.results import parse_flow_dump, read_jsonl

pytestmark = [pytest.mark.emulation,
              pytest.mark.skipif(os.geteuid() != 0, reason="emulation tier needs root")]
REPO = Path(__file__).resolve().parents[2]
DAITN = [sys.executable, "-m", "testbed.cli"]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    out = tmp_path_factory.mktemp("qs") / "run"
    t0 = time.time()
    r = subprocess.run(DAITN + ["run", str(REPO / "experiments/quickstart.yaml"), "--out", str(out)],
                       capture_output=True, text=True, timeout=600, cwd=REPO)
    print(r.stdout[-3000:], r.stderr[-3000:])
    print(f"quickstart wall time: {time.time() - t0:.1f} s")
    assert r.returncode == 0, f"daitn run failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return out


def test_run_directory_is_complete(quickstart):
    for name in ("spec.resolved.yaml", "manifest.json", "events.jsonl", "summary.json"):
        assert (quickstart / name).is_file(), name
    for d in ("pcaps", "flows", "logs", "plots"):
        assert any((quickstart / d).iterdir()), f"{d}/ is empty"
    man = json.loads((quickstart / "manifest.json").read_text())
    assert man["capabilities"]["backends"]["switching"].startswith("Open vSwitch")
    assert man["seed"] == 1
    png = quickstart / "plots" / "accuracy_vs_time.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_reaches_target_without_moving_raw_data(quickstart):
    s = json.loads((quickstart / "summary.json").read_text())
    assert s["mode"] == "dcc"
    (t,) = s["tasks"]
    assert t["reached"] and t["final_accuracy"] >= 0.85 == t["target_accuracy"]
    assert t["end_reason"] == "target_reached"
    assert t["raw_data_bytes_sent"] == 0


def test_summary_agrees_with_events(quickstart):
    s = json.loads((quickstart / "summary.json").read_text())
    (t,) = s["tasks"]
    events = read_jsonl(quickstart / "events.jsonl")
    assert [e["t"] for e in events] == sorted(e["t"] for e in events)
    trains = [e for e in events if e["kind"] == "train" and e["task"] == 1]
    assert t["itinerary"] == [e["src"] for e in trains]
    assert t["hops"] == len(trains) == max(e["hop"] for e in trains)
    plan = [e for e in events if e["kind"] == "itinerary" and e["src"] == "dcc"]
    assert len(plan) == 1 and plan[0]["itinerary"] == t["planned_itinerary"]
    # the model visited the planned data nodes in the planned order, lap after lap
    n = len(t["planned_itinerary"])
    assert t["itinerary"] == [t["planned_itinerary"][i % n] for i in range(len(t["itinerary"]))]
    assert sorted(t["planned_itinerary"]) == ["h2", "h4", "h6", "h8"]
    transfers = [e for e in events if e["kind"] == "transfer" and e["task"] == 1]
    assert t["model_bytes_sent"] == sum(e["bytes"] for e in transfers) > 0
    # every hop: one model in, one evaluation at the MPVU; plus the result to the client
    assert sum(e["msg"] == "EVAL_REQUEST" for e in transfers) == t["hops"]
    assert sum(e["msg"] == "TASK_RESULT" for e in transfers) == 1
    evals = [e for e in events if e["kind"] == "evaluation" and e["task"] == 1]
    assert evals[-1]["accuracy"] == t["final_accuracy"]
    # every model version's hash chain: each trained version names its parent
    verdicts = [e for e in events if e["kind"] == "verdict"]
    assert [v["sha256"] for v in verdicts] == [e["sha256"] for e in trains]


def test_flow_counts_agree_with_switch_dumps(quickstart):
    s = json.loads((quickstart / "summary.json").read_text())
    flows = []
    for p in sorted((quickstart / "flows").glob("s*.txt")):
        flows += parse_flow_dump(p.read_text())
    assert len(list((quickstart / "flows").glob("s*.txt"))) == s["network"]["switches"] == 4
    assert flows, "no flows dumped"
    assert all(cookies.function_of(f["cookie"]) for f in flows), "a flow without a DCC cookie"
    # every flow the DCC holds is in a table; the task's hop flows came and went
    n = s["network"]
    assert n["flows_current_by_dcc"] == len(flows) == n["flows_in_dumps"]
    assert n["flows_installed_by_dcc"] - n["flows_deleted_by_dcc"] == len(flows)
    assert n["flows_deleted_by_dcc"] > 0, "no per-hop flow was ever removed"
    assert not [f for f in flows if cookies.function_of(f["cookie"]) == "ai-task-hop"], \
        "a task's hop flows outlived the task"
    # model traffic crossed DCC forwarding flows
    fwd = [f for f in flows if cookies.function_of(f["cookie"]) == "forwarding"]
    assert sum(f["n_packets"] for f in fwd) > 100


def test_capture_holds_da_itn_control_traffic(quickstart):
    from scapy.all import rdpcap
    from nodes.wire import MsgType
    from nodes.scapy_layers import DAITN

    (pcap,) = (quickstart / "pcaps").glob("h1-eth0~*.pcap")
    assert pcap.name == "h1-eth0~s2-eth1.pcap"  # named by both ends of the link
    pkts = rdpcap(str(pcap))
    types = {MsgType(p[DAITN].type).name for p in pkts if DAITN in p}
    assert {"TRAIN_REQUEST", "ITINERARY"} <= types, types


def test_controller_logged_no_exception(quickstart):
    log = (quickstart / "logs" / "controller.log").read_text()
    assert "Traceback" not in log and " ERROR " not in log
