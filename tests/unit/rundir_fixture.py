"""A small run directory, written by the tests themselves, shaped like a real quickstart run's.

The events copy the fields of a real run (``daitn run experiments/quickstart.yaml``): the DCC's
plan, hop and re-plan events, the nodes' transfers, trainings, MPVU verdicts and evaluations, a
spec-timeline link change, a workload result and the teardown after the nodes finish. The
numbers are chosen so that every figure derived from them is known (see the constants below).

Topology: tree depth 2 fanout 3 - s1 core; s2: h1 h2 h3; s3: h4 h5 h6; s4: h7 h8 h9.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

T0 = 1000.0          # clients_go
SUBMIT = 1000.1      # task_submitted
REACHED = 1000.8     # evaluation at or above the target (0.85)
TIME_TO_TARGET = 0.7
# transfers: h1->h2 model, h2->h9 eval, h2->h4 model, h4->h9 eval, h4->h1 result
TRANSFER_BYTES = (1000, 2000, 3000, 4000, 500)
WIRE_BYTES = sum(TRANSFER_BYTES)
RAW_BYTES = 0
FINAL_ACCURACY = 0.9

SPEC = {
    "name": "fixture",
    "seed": 3,
    "topology": {"generator": "tree", "params": {"depth": 2, "fanout": 3}},
    "links": {"bw": 100.0, "delay": None},
    "nodes": {"h1": ["client"], "h2": ["data"], "h4": ["data"], "h9": ["mpvu"]},
    "controller": {"policy": "greedy"},
    "data": {"dataset": "digits", "partition": "dirichlet", "alpha": 0.3,
             "synthetic": {"samples": 2000}},
    "tasks": [{"id": 1, "client": "h1", "target_accuracy": 0.85, "deadline_s": 60, "max_laps": 2}],
    "workloads": [],
    "timeline": [{"at_s": 0.5, "kind": "set_link", "link": ["s1", "s3"], "bw": 5.0, "loss": None}],
}

SHA = {v: f"{v:02d}" * 32 for v in range(3)}  # version -> 64-hex "hash"


def events() -> list[dict]:
    b = TRANSFER_BYTES
    ev = [
        {"t": 990.0, "src": "testbed", "kind": "network_up", "seconds": 0.9},
        {"t": 990.2, "src": "dcc", "kind": "link_up", "a": "s1", "b": "s2", "cause": "lldp", "configured": True},
        {"t": 990.5, "src": "testbed", "kind": "dcc_converged", "seconds": 0.6, "links": 6},
        {"t": T0, "src": "testbed", "kind": "clients_go"},
        {"t": SUBMIT, "src": "h1", "kind": "task_submitted", "task": 1, "target_accuracy": 0.85,
         "deadline_s": 60.0, "model_bytes": 900, "required_labels": None},
        {"t": 1000.101, "src": "dcc", "kind": "model_version", "task": 1, "version": 0, "sha256": SHA[0],
         "parent_sha256": None, "trained_at": None},
        {"t": 1000.105, "src": "dcc", "kind": "feasibility", "task": 1, "client": "h1", "feasible": True,
         "reasons": [], "est_seconds": 0.3, "est_bytes": 9000, "expected_accuracy": 0.86, "dscp": 8},
        {"t": 1000.105, "src": "dcc", "kind": "plan", "task": 1, "client": "h1", "policy": "greedy",
         "feasible": True, "reasons": [], "planning_ms": 3.5, "laps": 1, "end_after": 2, "mpvu": "h9",
         "labels_covered": list(range(10)), "stops": [{"node": "h2"}, {"node": "h4"}],
         "est_seconds": 0.3, "est_bytes": 9000, "expected_accuracy": 0.86},
        {"t": 1000.106, "src": "dcc", "kind": "hop", "task": 1, "hop": 1, "lap": 0, "from": "h1", "to": "h2",
         "path": ["h1", "s2", "h2"], "verify_path": ["h2", "s2", "s1", "s4", "h9"], "flows": 8,
         "reason": "first stop of the plan", "client": "h1", "dscp": 8, "ptr": 0},
        {"t": 1000.106, "src": "dcc", "kind": "itinerary", "task": 1, "itinerary": ["h2", "h4"],
         "policy": "greedy", "feasible": True, "reasons": [], "mpvu": "h9"},
        {"t": 1000.107, "src": "dcc", "kind": "hop_flows_installed", "task": 1, "hop": 1, "ms": 9.0,
         "why": "first hop"},
        {"t": 1000.11, "src": "h1", "kind": "transfer", "task": 1, "to": "h2", "msg": "MODEL_CHUNK",
         "bytes": b[0], "version": 0, "sha256": SHA[0], "seconds": 0.01, "attempts": 1, "dscp": 8},
        {"t": 1000.2, "src": "h2", "kind": "train", "task": 1, "hop": 1, "lap": 0, "version": 1,
         "sha256": SHA[1], "parent_sha256": SHA[0], "samples": 100, "loss": 1.2},
        {"t": 1000.25, "src": "h2", "kind": "transfer", "task": 1, "to": "h9", "msg": "EVAL_REQUEST",
         "bytes": b[1], "version": 1, "seconds": 0.01, "attempts": 1, "dscp": 8},
        {"t": 1000.28, "src": "h9", "kind": "verdict", "task": 1, "version": 1, "sha256": SHA[1],
         "accuracy": 0.6, "loss": 1.5, "samples": 450},
        {"t": 1000.3, "src": "h2", "kind": "evaluation", "task": 1, "hop": 1, "version": 1, "at": "h2",
         "by": "h9", "accuracy": 0.6, "loss": 1.5, "samples": 450, "sha256": SHA[1]},
        {"t": 1000.5, "src": "testbed", "kind": "link_changed", "link": ["s1", "s3"], "bw": 5.0, "loss": None,
         "at_s": 0.5},
        {"t": 1000.51, "src": "dcc", "kind": "replan", "task": 1, "cause": "bandwidth change (s1-s3)",
         "from": "h2", "old": ["h2", "h4"], "new": ["h4"], "feasible": True, "policy": "greedy",
         "reasons": []},
        {"t": 1000.52, "src": "dcc", "kind": "hop", "task": 1, "hop": 2, "lap": 0, "from": "h2", "to": "h4",
         "path": ["h2", "s2", "s1", "s3", "h4"], "verify_path": ["h4", "s3", "s1", "s4", "h9"], "flows": 12,
         "reason": "stop 1 of ['h2', 'h4'] (lap 0)", "ptr": 1},
        {"t": 1000.53, "src": "dcc", "kind": "hop_flows_installed", "task": 1, "hop": 2, "ms": 11.0,
         "why": "hop request"},
        {"t": 1000.55, "src": "h2", "kind": "transfer", "task": 1, "to": "h4", "msg": "MODEL_CHUNK",
         "bytes": b[2], "version": 1, "seconds": 0.01, "attempts": 1, "dscp": 8},
        {"t": 1000.6, "src": "dcc", "kind": "node_down", "node": "h8", "reason": "no report for 2.5 s"},
        {"t": 1000.65, "src": "h4", "kind": "train", "task": 1, "hop": 2, "lap": 0, "version": 2,
         "sha256": SHA[2], "parent_sha256": SHA[1], "samples": 120, "loss": 0.5},
        {"t": 1000.7, "src": "h4", "kind": "transfer", "task": 1, "to": "h9", "msg": "EVAL_REQUEST",
         "bytes": b[3], "version": 2, "seconds": 0.01, "attempts": 1, "dscp": 8},
        {"t": 1000.78, "src": "h9", "kind": "verdict", "task": 1, "version": 2, "sha256": SHA[2],
         "accuracy": FINAL_ACCURACY, "loss": 0.4, "samples": 450},
        {"t": REACHED, "src": "h4", "kind": "evaluation", "task": 1, "hop": 2, "version": 2, "at": "h4",
         "by": "h9", "accuracy": FINAL_ACCURACY, "loss": 0.4, "samples": 450, "sha256": SHA[2]},
        {"t": 1000.82, "src": "dcc", "kind": "hop", "task": 1, "hop": 3, "lap": 0, "from": "h4", "to": "h1",
         "path": ["h4", "s3", "s1", "s2", "h1"], "verify_path": None, "flows": 6,
         "reason": "task ends: target_reached", "ptr": 1},
        {"t": 1000.83, "src": "h4", "kind": "task_end", "task": 1, "reason": "target_reached",
         "accuracy": FINAL_ACCURACY, "hop": 2, "by": "dcc: end (target_reached)"},
        {"t": 1000.85, "src": "h1", "kind": "task_result", "task": 1, "end_reason": "target_reached",
         "accuracy": FINAL_ACCURACY, "hops": 2, "seconds": 0.75, "version": 2},
        {"t": 1000.9, "src": "h4", "kind": "transfer", "task": 1, "to": "h1", "msg": "TASK_RESULT",
         "bytes": b[4], "version": 2, "seconds": 0.01, "attempts": 1, "dscp": 8},
        {"t": 1000.91, "src": "dcc", "kind": "task_flows_removed", "task": 1, "hops": 3, "replans": 1,
         "seconds": 0.8},
        {"t": 1000.95, "src": "h1", "kind": "workload_result", "workload": 0, "server": "h9", "model": 1,
         "sent": 10, "answered": 9, "failed": 1, "refused": 0, "accuracy": 0.8, "latency_ms_mean": 12.0,
         "latency_ms_p95": 20.0, "by_server": {"h9": 9}, "errors": [], "failovers": 0, "over_max_latency": 0},
        {"t": 1001.0, "src": "h1", "kind": "node_stopping", "reason": "client done"},
        {"t": 1001.0, "src": "h2", "kind": "node_stopping", "reason": "stop"},
        {"t": 1001.2, "src": "dcc", "kind": "node_down", "node": "h2", "reason": "no report for 2.5 s"},
        {"t": 1001.5, "src": "testbed", "kind": "nodes_finished", "returncode": 0},
        {"t": 1001.8, "src": "dcc", "kind": "link_down", "link": [1, 1, 2, 4], "cause": "port_down"},
    ]
    return ev


def summary() -> dict:
    return {"mode": "dcc", "name": "fixture", "seed": 3,
            "tasks": [{"id": 1, "client": "h1", "target_accuracy": 0.85, "final_accuracy": FINAL_ACCURACY,
                       "reached": True, "end_reason": "target_reached", "itinerary": ["h2", "h4"],
                       "planned_itinerary": ["h2", "h4"], "hops": 2, "model_bytes_sent": WIRE_BYTES,
                       "model_transfers": 5, "raw_data_bytes_sent": 0, "seconds": 0.75,
                       "estimate": {"est_seconds": 0.3, "actual_seconds": 0.75, "seconds_ratio": 2.5,
                                    "est_bytes": 9000, "actual_bytes": WIRE_BYTES, "bytes_ratio": 1.167,
                                    "expected_accuracy": 0.86, "actual_accuracy": FINAL_ACCURACY},
                       "replans": 1}],
            "network": {"hosts": 9, "switches": 4, "links": 12, "datapath": "user", "setup_seconds": 0.9,
                        "convergence_seconds": 0.6, "flows_installed_by_dcc": 150, "flows_deleted_by_dcc": 66,
                        "flows_current_by_dcc": 84, "flows_in_dumps": 3, "flows_in_dumps_with_dcc_cookie": 3},
            "raw_data_bytes_sent": RAW_BYTES, "model_versions": 3, "lineage_problems": [],
            "raw_data_transfers": [], "nodes_marked_down": ["h8"]}


FLOWS_S1 = """OFPST_FLOW reply (OF1.3) (xid=0x2):
 cookie=0x100000000000000, duration=8.386s, table=0, n_packets=27, n_bytes=1620, priority=65535,dl_type=0x88cc actions=CONTROLLER:65535
 cookie=0x200000000000001, duration=8.362s, table=0, n_packets=19, n_bytes=21447, priority=100,ip,nw_dst=10.0.0.1 actions=output:1
 cookie=0x400000001000300, duration=1.0s, table=0, n_packets=4, n_bytes=4000, priority=150,ip,nw_src=10.0.0.4,nw_dst=10.0.0.1,nw_tos=32 actions=output:1
"""


def write_run(root: Path, name: str = "run", *, spec: dict | None = None, evs: list[dict] | None = None,
              summ: dict | None = None, maps: dict | None = None) -> Path:
    """A run directory at root/name; returns its path."""
    d = root / name
    (d / "flows").mkdir(parents=True)
    (d / "spec.resolved.yaml").write_text(yaml.safe_dump(spec if spec is not None else SPEC, sort_keys=False))
    (d / "manifest.json").write_text(json.dumps({"run_id": f"20260101-000000-{name}", "spec": "experiments/x.yaml",
                                                 "name": "fixture", "seed": 3,
                                                 "machine": {"hostname": "test", "cpus": 2},
                                                 "links": [{"a": "s1", "b": "s2", "backend": "tc"}]}))
    (d / "events.jsonl").write_text("".join(json.dumps(e, sort_keys=True) + "\n"
                                            for e in (evs if evs is not None else events())))
    (d / "summary.json").write_text(json.dumps(summ if summ is not None else summary(), indent=1))
    (d / "flows" / "s1.txt").write_text(FLOWS_S1)
    if maps is not None:
        (d / "maps.json").write_text(json.dumps(maps))
    return d
