"""A whole small experiment in one process: the real roles (nodes.roles.run_node) over
MemoryNetwork, a DCC built from the real MTRCE policy, real PyTorch training."""
import json
import threading
import time

import pytest
import torch

from nodes import wire
from nodes.memnet import MemoryNetwork
from nodes.roles import run_node
from nodes.runtime import NodeConfig, NodeRuntime
from nodes.wire import Message, MsgType, Role, Tlv
from testbed.spec import DataSpec, ModelSpec, TaskSpec, TrainingSpec
from testbed.wait import wait_for

KEY = bytes(range(32))
NODES = {"h1": ["client"], "h2": ["data"], "h3": ["data"], "h4": ["data"], "h5": ["mpvu"]}
TARGET = 0.6


class FakeDCC:
    """The DCC's control-message handling as controllers/dcc_app.py does it, without
    os_ken, over the same pure parts: NetworkMaps fed by knowledge reports, the
    TaskTracker (T-FAM + MTRCE, hop requests). The hosts hang off a line of switches,
    one per host; no flows are applied (there is no switch), the tracker's are kept."""

    def __init__(self, nodes=None, policy="naive"):
        from controllers.maps import LinkInfo, NetworkMaps
        from controllers.mtrce import get_policy
        from controllers.tasks import TaskTracker
        from testbed.network import fabric_of, plan_ports
        from topologies.generators import linear
        hosts = sorted(nodes or NODES, key=lambda h: int(h[1:]))
        topo = linear(len(hosts))
        self.fabric = fabric_of(topo)
        self.maps = NetworkMaps(report_interval_s=0.5)
        self.maps.set_links([LinkInfo(a, None if a.startswith("h") else ap, b, None if b.startswith("h") else bp,
                                      100.0, None) for a, ap, b, bp in plan_ports(topo)])
        self.tracker = TaskTracker(self.fabric, get_policy(policy))
        self.knowledge: dict[str, dict] = {}
        self.answers: dict = {}
        self.plans: list[dict] = []
        self.hops: list[dict] = []
        self.verdicts: list[tuple[str, Message]] = []
        self.lock = threading.Lock()

    def __call__(self, msg: Message, node: str) -> list[Message]:
        with self.lock:  # nodes call in their own threads; the app has one event thread
            return self._handle(msg, node)

    def _handle(self, msg, node):
        now = time.time()
        if msg.type == MsgType.KNOWLEDGE_REPORT:
            kr = msg.body
            roles = [r.name.lower() for r in Role if kr.roles & r]
            self.knowledge[node] = {"samples": kr.samples, "label_hist": list(kr.label_hist),
                                    "verification_samples": kr.verification_samples, "roles": roles}
            self.maps.node_report(node, now, roles=roles, samples=kr.samples, label_hist=list(kr.label_hist),
                                  verification_samples=kr.verification_samples, capacity=kr.capacity,
                                  models=list(kr.models))
            return []
        key = (msg.type, msg.task_id, msg.hop_count, msg.model_version)
        if msg.type == MsgType.TRAIN_REQUEST and key not in self.answers:
            self.answers[key] = self.plan(msg, node, now)
        elif msg.type == MsgType.ITINERARY and not msg.flags & wire.REPLY and key not in self.answers:
            end = msg.tlvs.get(Tlv.END_REASON)
            ans, ev = self.tracker.hop_request(msg.task_id, node, None if end is None else
                                              wire.EndReason(end).name.lower(), self.maps.snapshot(now), now)
            self.hops.append(ans)
            t = self.tracker.tasks[msg.task_id]
            tlvs = {Tlv.ITINERARY: wire.Itinerary(max(t.ptr, 0), t.lap, t.max_laps,
                                                  [wire.node_id(n) for n in t.segments]), Tlv.TRANSPORT: t.dscp}
            if ans["end"]:
                tlvs[Tlv.END_REASON] = {"target_reached": 1, "deadline": 2, "max_laps": 3}.get(ans["end"], 5)
            self.answers[key] = [Message(MsgType.ITINERARY, task_id=msg.task_id, model_id=msg.model_id,
                                         tlvs=tlvs, body=wire.ItineraryBody(self.tracker.policy.name))]
        elif msg.type == MsgType.TASK_RESULT:
            self.tracker.finished(msg.task_id, now)
            return []
        elif msg.type == MsgType.EVAL_VERDICT:  # the MPVU's copy, for the model's record
            self.verdicts.append((node, msg))
            return []
        if key in self.answers:
            out = self.answers[key]
            for m in out:
                m.dst, m.seq = msg.src, msg.seq
            return out
        return [Message(MsgType.ERROR, task_id=msg.task_id, dst=msg.src,
                        body=wire.Error(2, f"the DCC does not take {MsgType(msg.type).name} messages"))]

    def plan(self, msg, client, now):
        from controllers.mtrce import TrainingRequest
        ask = msg.tlvs.get(Tlv.ITINERARY)
        req = TrainingRequest(task_id=msg.task_id, client=client, model_bytes=msg.body.model_bytes,
                              target_accuracy=msg.tlvs[Tlv.TARGET_ACCURACY],
                              deadline_s=msg.tlvs[Tlv.DEADLINE] / 1000 - now, max_laps=ask.max_laps)
        dscp = 8 + (msg.task_id - 1) % 48  # dcc_app.task_dscp (importing it needs os_ken)
        a, task, _ = self.tracker.submit(req, dscp, self.maps.snapshot(now), now, ask.max_laps)
        self.plans.append({"task": msg.task_id, "itinerary": task.segments if task else [],
                           "feasible": a.feasible})
        feas = Message(MsgType.FEASIBILITY, task_id=msg.task_id, model_id=msg.model_id,
                       body=wire.Feasibility(a.feasible, float(a.est_seconds or 0), int(a.est_bytes or 0),
                                             a.reasons[:20]))
        if task is None:
            return [feas]
        plan = Message(MsgType.ITINERARY, task_id=msg.task_id, model_id=msg.model_id,
                       tlvs={Tlv.ITINERARY: wire.Itinerary(0, 0, task.max_laps,
                                                           [wire.node_id(n) for n in task.segments]),
                             Tlv.TRANSPORT: dscp,
                             Tlv.PARTIES: wire.Parties(wire.node_id(client), wire.node_id(task.mpvu))},
                       body=wire.ItineraryBody(self.tracker.policy.name))
        return [feas, plan]


@pytest.fixture
def torch_threads():
    before = torch.get_num_threads()  # run_node sets it process-wide
    yield
    torch.set_num_threads(before)


def node_configs(run_dir):
    # The fields launcher.child() takes from the runner's node_config(), with the spec's defaults.
    task = TaskSpec(id=1, client="h1", target_accuracy=TARGET, deadline_s=25, max_laps=4)
    common = dict(run_dir=run_dir, seed=1, hosts={n: f"10.0.0.{n[1:]}" for n in NODES},
                  data=DataSpec().model_dump(), model=ModelSpec(hidden=[32]).model_dump(),
                  training=TrainingSpec().model_dump(), tasks=[task.model_dump()],
                  mpvu="h5", data_nodes=["h2", "h3", "h4"], key=KEY, report_interval_s=0.5)
    return [NodeConfig(name=n, ip=common["hosts"][n], roles=r, **common) for n, r in NODES.items()]


def read_events(run_dir):
    out = []
    for f in sorted((run_dir / "events").glob("*.jsonl")):
        out += [json.loads(line) for line in f.read_text().splitlines()]
    return sorted(out, key=lambda e: e["t"])


def run_experiment(dcc, net, cfgs, go, servers, client_timeout) -> tuple[dict, dict, list]:
    """Run every node's run_node in a thread, go once the DCC knows ``servers`` (as the
    runner does), wait for the client h1, stop everyone; returns (exit codes, threads, runtimes)."""
    rts = [NodeRuntime(cfg, net.transport(cfg.name)) for cfg in cfgs]
    codes: dict[str, int] = {}

    def run(rt):
        codes[rt.name] = run_node(rt, go)

    threads = {rt.name: threading.Thread(target=run, args=(rt,), daemon=True, name=rt.name) for rt in rts}
    try:
        for t in threads.values():
            t.start()
        wait_for(lambda: servers <= set(dcc.knowledge), 20, f"knowledge reports from {sorted(servers)}",
                 last=lambda: sorted(dcc.knowledge))
        go.touch()
        threads["h1"].join(client_timeout)
        assert not threads["h1"].is_alive(), f"the client did not finish within {client_timeout} s"
    finally:
        for rt in rts:
            rt.stopping.set()
        for t in threads.values():
            t.join(10)
        for rt in rts:
            rt.close()
    assert not [n for n, t in threads.items() if t.is_alive()], "nodes still running after stopping"
    return codes, threads, rts


def test_a_task_reaches_its_target_in_process(tmp_path, torch_threads):
    dcc = FakeDCC()
    net = MemoryNetwork(dcc, key=KEY)
    go = tmp_path / ".go"
    # as the runner does: go once the DCC knows every data node (and the MPVU)
    codes, threads, rts = run_experiment(dcc, net, node_configs(tmp_path), go, {"h2", "h3", "h4", "h5"}, 25)
    assert codes == {n: 0 for n in NODES}
    assert net.errors == []

    result = json.loads((tmp_path / "results" / "task-1.json").read_text())
    events = read_events(tmp_path)
    kinds = [e["kind"] for e in events]
    assert "error" not in kinds and "message_dropped" not in kinds and "transfer_failed" not in kinds
    assert result["end_reason"] == "target_reached" and result["accuracy"] >= TARGET, result

    # the itinerary came from the policy (naive: every data node, in a seeded order),
    # and every move after the first was a hop request answered by the tracker
    plan, = dcc.plans
    assert plan["feasible"] and sorted(plan["itinerary"]) == ["h2", "h3", "h4"]
    itinerary = plan["itinerary"]
    received, = [e for e in events if e["kind"] == "itinerary_received"]
    assert received["itinerary"] == itinerary
    assert "dcc_no_answer" not in kinds and len(dcc.hops) >= 1

    trains = [e for e in events if e["kind"] == "train"]
    verdicts = [e for e in events if e["kind"] == "verdict"]
    assert [e["src"] for e in trains] == (itinerary * 4)[:len(trains)]  # the hops, in order
    assert [e["hop"] for e in trains] == list(range(1, len(trains) + 1))
    assert [e["parent_sha256"] for e in trains[1:]] == [e["sha256"] for e in trains[:-1]]
    # every hop's model was verified by the MPVU, and the last verdict ended the task
    assert [v["sha256"] for v in verdicts] == [e["sha256"] for e in trains]
    assert all(v["src"] == "h5" for v in verdicts)
    assert [v["accuracy"] >= TARGET for v in verdicts] == [False] * (len(verdicts) - 1) + [True]
    assert result["sha256"] == trains[-1]["sha256"] and result["hops"] == len(trains)
    assert result["accuracy"] == pytest.approx(verdicts[-1]["accuracy"], abs=1e-4)  # a u16 TLV

    # every model-bearing message crossed sealed, in chunks, with the task's DSCP
    transfers = [e for e in events if e["kind"] == "transfer"]
    assert [t["msg"] for t in transfers if t["msg"] != "EVAL_REQUEST"] == \
        ["MODEL_CHUNK"] * len(trains) + ["TASK_RESULT"]
    assert {t["dscp"] for t in transfers} == {8}
    assert {p.dscp for p in net.trace if p.type == "MODEL_CHUNK"} == {8}
    assert all(rt.ep.dropped == {} for rt in rts) and net.dcc_ep.dropped == {}
    assert all(rt.reports_sent >= 1 for rt in rts)


INF_NODES = {"h1": ["client"], "h2": ["data"], "h3": ["data"], "h4": ["mpvu"], "h5": ["inference"]}


def test_model_deployed_to_an_inference_server_answers_a_workload(tmp_path, torch_threads):
    """Task -> final model deployed to h5 (TASK_RESULT) -> 48 queries at 400/s in
    bursts of 8: all answered, batched (max_wait 30 ms), accuracy as the model's."""
    from testbed.spec import InferenceSpec, WorkloadSpec
    dcc = FakeDCC()
    net = MemoryNetwork(dcc, key=KEY)
    go = tmp_path / ".go"
    task = TaskSpec(id=1, client="h1", target_accuracy=0.5, deadline_s=25, max_laps=3, deploy_to=["h5"])
    wl = WorkloadSpec(client="h1", server="h5", model=1, queries=48, rate_qps=400, arrivals="bursty",
                      burst_size=8)
    common = dict(run_dir=tmp_path, seed=1, hosts={n: f"10.0.0.{n[1:]}" for n in INF_NODES},
                  data=DataSpec().model_dump(), model=ModelSpec(hidden=[32]).model_dump(),
                  training=TrainingSpec().model_dump(), tasks=[task.model_dump()],
                  mpvu="h4", data_nodes=["h2", "h3"], key=KEY, report_interval_s=0.5,
                  inference=InferenceSpec(max_batch=8, max_wait_ms=30).model_dump(),
                  workloads=[wl.model_dump()])
    cfgs = [NodeConfig(name=n, ip=common["hosts"][n], roles=r, **common) for n, r in INF_NODES.items()]
    run_experiment(dcc, net, cfgs, go, {"h2", "h3", "h4", "h5"}, 40)
    assert net.errors == []
    events = read_events(tmp_path)
    hosted, = [e for e in events if e["kind"] == "model_hosted"]
    deployed, = [e for e in events if e["kind"] == "model_deployed"]
    assert hosted["src"] == "h5" and deployed["to"] == "h5"
    result = json.loads((tmp_path / "results" / "task-1.json").read_text())
    assert hosted["sha256"] == result["sha256"]
    w, = [e for e in events if e["kind"] == "workload_result"]
    assert w["sent"] == 48 and w["answered"] == 48 and w["failed"] == 0, w
    assert w["accuracy"] >= 0.4, w  # queries come from the held-out split
    s, = [e for e in events if e["kind"] == "inference_summary"]
    assert s["served"] == 48 and s["max_batch"] > 1 and s["batches"] < 48, s
    # the QRRT's inputs: the server advertised its model, queue and service time
    assert dcc.knowledge["h5"]["roles"] == ["inference"]


def test_arrival_processes():
    import numpy as np
    from nodes.roles import arrival_gaps
    rng = np.random.default_rng(0)
    assert np.allclose(arrival_gaps("constant", 5, 10, 1, rng), 0.1)
    b = arrival_gaps("bursty", 12, 10, 4, rng)
    assert list(b[:4]) == [0.4, 0, 0, 0] and b.sum() == pytest.approx(1.2)
    p = arrival_gaps("poisson", 20000, 50, 1, rng)
    assert p.mean() == pytest.approx(0.02, rel=0.05) and p.std() == pytest.approx(0.02, rel=0.05)
    with pytest.raises(ValueError, match="unknown arrival"):
        arrival_gaps("zipf", 3, 1, 1, rng)
