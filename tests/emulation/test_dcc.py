"""DCC intelligence on a real network (root): T-FAM + MTRCE plans, per-hop flows
for AI traffic that take the DCC's path (not the default shortest path), and
re-planning when a link fails mid-task.

The triangle: h1 (client) on s1, h2 (MPVU) on s2, h3 and h4 (data) on s3. The
direct link s1-s3 is slow (2 Mbit/s) and the two-hop way s1-s2-s3 fast
(100 Mbit/s): default forwarding (fewest hops) sends h1<->h3 over s1-s3, the
DCC's per-hop flows send the task's traffic (its DSCP) over s1-s2-s3. Captures
on both of s1's switch links show where the model went.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from testbed.network import plan_ports
from testbed.results import read_jsonl
from testbed.spec import load_spec
from tests.emulation.test_ai_traffic import run_cli

pytestmark = [pytest.mark.emulation,
              pytest.mark.skipif(os.geteuid() != 0, reason="emulation tier needs root")]

TOPO = {"name": "slow-triangle", "switches": ["s1", "s2", "s3"], "hosts": ["h1", "h2", "h3", "h4"],
        "links": [{"a": "s1", "b": "s2", "bw": 100}, {"a": "s2", "b": "s3", "bw": 100},
                  {"a": "s1", "b": "s3", "bw": 2}, {"a": "h1", "b": "s1", "bw": 100},
                  {"a": "h2", "b": "s2", "bw": 100}, {"a": "h3", "b": "s3", "bw": 100},
                  {"a": "h4", "b": "s3", "bw": 100}]}


def _spec(tmp: Path, max_laps: int = 4, **extra) -> Path:
    (tmp / "topo.yaml").write_text(yaml.safe_dump(TOPO))
    spec = {"name": "dcc-path", "seed": 1, "topology": {"file": str(tmp / "topo.yaml")},
            "nodes": {"h1": ["client"], "h2": ["mpvu"], "h3": ["data"], "h4": ["data"]},
            "data": {"partition": "iid"},
            "tasks": [{"id": 1, "client": "h1", "target_accuracy": 0.8, "deadline_s": 120,
                       "max_laps": max_laps}],
            "knowledge": {"report_interval_s": 0.5}, **extra}
    (tmp / "spec.yaml").write_text(yaml.safe_dump(spec))
    return tmp / "spec.yaml"


def _s1_intf_towards(topo, peer: str) -> str:
    for a, ap, b, bp in plan_ports(topo):
        if {a, b} == {"s1", peer}:
            return f"s1-eth{ap if a == 's1' else bp}"
    raise AssertionError(f"no s1-{peer} link")


def _model_bytes_in(pcap: Path, dscp: int) -> int:
    """TCP payload bytes with the task's DSCP to/from port 7000 in a capture."""
    from scapy.layers.inet import IP, TCP
    from scapy.utils import PcapReader
    n = 0
    with PcapReader(str(pcap)) as rd:
        for p in rd:
            if IP in p and TCP in p and (p[IP].tos >> 2) == dscp and 7000 in (p[TCP].sport, p[TCP].dport):
                n += len(p[TCP].payload)
    return n


@pytest.fixture(scope="module")
def path_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dcc-path")
    spec_path = _spec(tmp)
    _, topo = load_spec(spec_path)
    fast, slow = _s1_intf_towards(topo, "s2"), _s1_intf_towards(topo, "s3")
    out = tmp / "run"
    rc, text = run_cli(out, f"capture=[{fast},{slow},h1-eth0]", spec=spec_path)
    assert rc == 0, text[-3000:]
    return out, fast, slow


def test_plan_and_feasibility_are_recorded(path_run):
    out, _, _ = path_run
    events = read_jsonl(out / "events.jsonl")
    feas = next(e for e in events if e["kind"] == "feasibility")
    assert feas["feasible"] and feas["est_seconds"] > 0 and feas["est_bytes"] > 0
    plan = next(e for e in events if e["kind"] == "plan")
    assert plan["policy"] == "greedy" and set(plan["stops"][0]) >= {"node", "hop"}
    hops = [e for e in events if e["kind"] == "hop" and e["src"] == "dcc"]
    assert hops, "the DCC answered no hop request"
    assert all(e["path"] for e in hops)
    task = json.loads((out / "summary.json").read_text())["tasks"][0]
    assert task["reached"], task
    est = task["estimate"]
    assert est["est_seconds"] > 0 and est["actual_seconds"] > 0 and est["actual_bytes"] > 0
    installs = [e["ms"] for e in events if e["kind"] == "hop_flows_installed"]
    assert installs and len(installs) >= len(hops) - 1
    print(f"T-FAM: est {est['est_seconds']:.2f} s / {est['est_bytes']} B vs actual "
          f"{est['actual_seconds']:.2f} s / {est['actual_bytes']} B; hop flows installed in "
          f"median {sorted(installs)[len(installs) // 2]:.1f} ms")


def test_model_crosses_the_dccs_path_not_the_shortest(path_run):
    out, fast, slow = path_run
    events = read_jsonl(out / "events.jsonl")
    dscp = next(e for e in events if e["kind"] == "itinerary")["dscp"]
    # the DCC's hop h1 -> h3 goes via s2 (fast), default forwarding would take s1-s3
    first = next(e for e in events if e["kind"] == "hop" and e["src"] == "dcc")
    assert first["path"][0] == "h1" and "s2" in first["path"], first
    pcaps = {p.name.split("~")[0]: p for p in (out / "pcaps").glob("*.pcap")}
    on_fast, on_slow = _model_bytes_in(pcaps[fast], dscp), _model_bytes_in(pcaps[slow], dscp)
    model = next(e for e in events if e["kind"] == "task_submitted")["model_bytes"]
    print(f"task bytes on {fast} (DCC path): {on_fast}; on {slow} (shortest path): {on_slow}")
    assert on_fast >= model, "the model did not cross the DCC's path"
    assert on_slow == 0, "task traffic took the shortest path instead of the DCC's"
    # the task's flows are gone at the end; their cookies named task and hop
    flows = "".join(p.read_text() for p in (out / "flows").glob("*.txt"))
    assert "cookie=0x4" not in flows.replace("cookie=0x04", "cookie=0x4")


def test_replan_after_link_failure_mid_task(tmp_path):
    """s2-s3 goes down while the model travels: the DCC re-plans (new paths over
    s1-s3), moves the task's flows, and the task still reaches its target."""
    # slow trainers (a tenth of a core) keep the task going for ~10 s; LLDP every 0.3 s
    # notices the dead link ~1 s after it fails
    spec_path = _spec(tmp_path, max_laps=6, timeline=[{"at_s": 1.0, "kind": "set_link", "link": ["s2", "s3"],
                                           "loss": 100}],
                      hosts={"h3": {"capacity": 0.1}, "h4": {"capacity": 0.1}},
                      controller={"lldp_interval_s": 0.3})
    out = tmp_path / "run"
    rc, text = run_cli(out, spec=spec_path)
    assert rc == 0, text[-3000:]
    events = read_jsonl(out / "events.jsonl")
    down = [e for e in events if e["kind"] == "link_down" and e["src"] == "dcc"]
    assert down, "the DCC never saw s2-s3 go down"
    moved = [e for e in events if e["kind"] in ("replan", "flows_moved")]
    assert moved, "no re-plan after the link failure"
    assert any("link down" in e.get("cause", "") for e in moved)
    later = [e for e in events if e["kind"] == "hop" and e["src"] == "dcc" and e["t"] > down[0]["t"]]
    for e in later:
        p = e["path"] or []
        assert not any({p[i], p[i + 1]} == {"s2", "s3"} for i in range(len(p) - 1)), e
    summary = json.loads((out / "summary.json").read_text())
    task = summary["tasks"][0]
    assert task["reached"], task
    assert summary["lineage_problems"] == [], summary["lineage_problems"]  # no model version lost
    # the link failed while the task ran, not after
    end = next(e for e in events if e["kind"] == "task_result")
    assert down[0]["t"] < end["t"]


def test_queries_routed_spread_and_failed_over(tmp_path):
    """Q-FAM/QIRCE: the model goes to two replicas (h5, h7); a client's queries are
    routed by the DCC to both, with flows for query traffic; h7 crashes mid-workload
    and no query is lost (failover to h5); queries asking for an accuracy no replica
    has are refused at once, with the reason."""
    spec = {"name": "qirce", "seed": 4,
            "topology": {"generator": "tree", "params": {"depth": 2, "fanout": 3}},
            "links": {"bw": 100},
            "nodes": {"h1": ["client"], "h2": ["data"], "h4": ["data"], "h5": ["inference"],
                      "h7": ["inference"], "h9": ["mpvu"]},
            "data": {"partition": "iid"}, "knowledge": {"report_interval_s": 0.5},
            "tasks": [{"id": 1, "client": "h1", "target_accuracy": 0.8, "deadline_s": 60, "max_laps": 4,
                       "deploy_to": ["h5", "h7"]}],
            "workloads": [{"client": "h1", "model": 1, "queries": 240, "rate_qps": 40, "arrivals": "poisson"},
                          {"client": "h1", "model": 1, "queries": 10, "rate_qps": 20, "min_accuracy": 0.999}],
            "timeline": [{"at_s": 4.0, "kind": "crash_node", "node": "h7"}]}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "run"
    rc, text = run_cli(out, spec=tmp_path / "spec.yaml")
    assert rc == 0, text[-3000:]
    events = read_jsonl(out / "events.jsonl")
    w0, w1 = sorted((e for e in events if e["kind"] == "workload_result"), key=lambda e: e["workload"])
    print(f"workload 0: {w0['answered']}/{w0['sent']} answered, by server {w0['by_server']}, "
          f"failovers {w0['failovers']}; workload 1: {w1['refused']} refused")
    assert w0["sent"] == 240 and w0["answered"] == 240, w0  # none lost across the crash
    assert set(w0["by_server"]) == {"h5", "h7"} and min(w0["by_server"].values()) >= 20, w0
    crash = next(e for e in events if e["kind"] == "node_crashed")
    assert crash["node"] == "h7"
    start = next(e for e in events if e["kind"] == "workload_started" and e["workload"] == 0)
    assert start["t"] < crash["t"], "the crash came before the workload: nothing to fail over"
    # Q-FAM refused the over-demanding queries at once, with the reason
    assert w1["refused"] == 10 and w1["answered"] == 0, w1
    refused = [e for e in events if e["kind"] == "query_routed" and not e["feasible"]]
    assert refused and any("accuracy" in r for r in refused[0]["reasons"]), refused[:1]
    # flows for query traffic were installed, with the DSCP the client marked
    routes = [e for e in events if e["kind"] == "query_route_installed"]
    assert {e["server"] for e in routes} == {"h5", "h7"} and all(e["flows"] > 0 for e in routes)


def test_dcc_places_the_replica_near_the_query_source(tmp_path):
    """tasks[].replicas: 1 - the DCC puts the model on the inference host nearest the
    workload's client (h3 shares h1's switch; h8 is two switches away)."""
    spec = {"name": "placement", "seed": 5,
            "topology": {"generator": "tree", "params": {"depth": 2, "fanout": 3}},
            "links": {"bw": 100},
            "nodes": {"h1": ["client"], "h2": ["data"], "h5": ["data"], "h3": ["inference"],
                      "h8": ["inference"], "h9": ["mpvu"]},
            "data": {"partition": "iid"}, "knowledge": {"report_interval_s": 0.5},
            "tasks": [{"id": 1, "client": "h1", "target_accuracy": 0.8, "deadline_s": 60, "max_laps": 4,
                       "replicas": 1}],
            "workloads": [{"client": "h1", "model": 1, "queries": 40, "rate_qps": 40}]}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "run"
    rc, text = run_cli(out, spec=tmp_path / "spec.yaml")
    assert rc == 0, text[-3000:]
    events = read_jsonl(out / "events.jsonl")
    place = next(e for e in events if e["kind"] == "placement")
    assert place["chosen"] == ["h3"] and place["sources"] == {"h1": 40.0}, place
    hosted = [e for e in events if e["kind"] == "model_hosted"]
    assert [e["src"] for e in hosted] == ["h3"]
    w = next(e for e in events if e["kind"] == "workload_result")
    assert w["answered"] == 40 and w["by_server"] == {"h3": 40}, w


def test_reserved_bandwidth_installs_openflow_meters(tmp_path):
    """controller.reserve_mbps: each hop's flows go through an OpenFlow meter (a
    drop band at the reserved rate) on the path's switches while the hop lasts,
    and no meter outlives the task. Slow trainers keep hops open long enough to see."""
    import subprocess
    import time as _time

    from tests.emulation.test_ai_traffic import background_run
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "meters", "seed": 1, "topology": {"generator": "tree", "params": {"depth": 2, "fanout": 3}},
        "links": {"bw": 100}, "controller": {"reserve_mbps": 20},
        "nodes": {"h1": ["client"], "h2": ["data"], "h4": ["data"], "h9": ["mpvu"]},
        "hosts": {"h2": {"capacity": 0.2}, "h4": {"capacity": 0.2}},
        "data": {"partition": "iid"},
        "tasks": [{"id": 1, "client": "h1", "target_accuracy": 0.8, "deadline_s": 60, "max_laps": 4}]}))

    def meters(sw):
        r = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-meters", sw], capture_output=True, text=True)
        return [ln for ln in r.stdout.splitlines() if "rate=" in ln] if r.returncode == 0 else []

    def metered_flows(sw):
        r = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", sw], capture_output=True, text=True)
        return [ln for ln in r.stdout.splitlines() if "meter:" in ln] if r.returncode == 0 else []

    seen, flows = [], []
    out = tmp_path / "run"
    with background_run(out, spec=spec) as run:
        run.wait_started()
        while run.alive() and not seen:
            for sw in ("s1", "s2", "s3", "s4"):
                m = meters(sw)
                if m:
                    seen, flows = m, metered_flows(sw)
                    break
            _time.sleep(0.2)
        rc = run.wait()
    assert rc == 0, run.text()[-3000:]
    assert seen, "no OpenFlow meter was ever installed"
    assert all("rate=20000" in ln for ln in seen), seen
    assert flows and all("ip_dscp=" in ln or "nw_tos=" in ln for ln in flows), flows
    dumps = "".join(p.read_text() for p in (out / "flows").glob("*.txt"))
    assert "meter:" not in dumps, "a metered hop flow outlived the task"


def test_plan_chooses_epochs_per_stop_and_the_nodes_train_them(tmp_path):
    """training.max_local_epochs lets MTRCE give each stop its own epoch count; the DCC
    sends it with the hop (TLV EPOCHS) and each node trains exactly that many."""
    spec_path = _spec(tmp_path, training={"local_epochs": 1, "max_local_epochs": 3})
    out = tmp_path / "run"
    rc, text = run_cli(out, spec=spec_path)
    assert rc == 0, text[-3000:]
    events = read_jsonl(out / "events.jsonl")
    [plan] = [e for e in events if e["kind"] == "plan" and e["src"] == "dcc"]
    planned = {s["node"]: s["epochs"] for s in plan["stops"]}
    assert all(1 <= e <= 3 for e in planned.values())
    trains = [e for e in events if e["kind"] == "train"]
    assert trains
    for e in trains:
        assert e["epochs"] == planned[e["src"]], (e, planned)
    print(f"epochs per stop: {planned}; trained: {[(e['src'], e['epochs']) for e in trains]}")
