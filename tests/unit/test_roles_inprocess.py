"""A whole small experiment in one process: the real roles (nodes.roles.run_node) over
MemoryNetwork, a DCC built from the real MTRCE policy, real PyTorch training."""
import json
import threading

import pytest
import torch

from controllers.itinerary import plan_itinerary
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
    """The DCC's control-message policy as controllers/dcc_app.py applies it (knowledge
    from reports; FEASIBILITY + ITINERARY from plan_itinerary, idempotent per task),
    without os_ken. The hosts hang off a line of switches, one per host."""

    def __init__(self):
        self.knowledge: dict[str, dict] = {}
        self.answers: dict[int, tuple] = {}
        self.plans: list[dict] = []
        self.verdicts: list[tuple[str, Message]] = []

    @staticmethod
    def distance(a, b):
        return abs(int(a[1:]) - int(b[1:]))

    def __call__(self, msg: Message, node: str) -> list[Message]:
        if msg.type == MsgType.KNOWLEDGE_REPORT:
            kr = msg.body
            self.knowledge[node] = {"samples": kr.samples, "label_hist": list(kr.label_hist),
                                    "verification_samples": kr.verification_samples,
                                    "roles": [r.name.lower() for r in Role if kr.roles & r]}
            return []
        if msg.type == MsgType.TRAIN_REQUEST:
            if msg.task_id not in self.answers:
                self.answers[msg.task_id] = self.plan(msg, node)
            feas, plan = self.answers[msg.task_id]
            for m in (feas, plan):
                if m is not None:
                    m.dst, m.seq = msg.src, msg.seq
            return [m for m in (feas, plan) if m is not None]
        if msg.type == MsgType.EVAL_VERDICT:  # the MPVU's copy, for the model's record
            self.verdicts.append((node, msg))
            return []
        return [Message(MsgType.ERROR, task_id=msg.task_id, dst=msg.src,
                        body=wire.Error(2, f"the DCC does not take {MsgType(msg.type).name} messages"))]

    def plan(self, msg, client):
        data_nodes = {n: k for n, k in self.knowledge.items() if "data" in k["roles"]}
        mpvus = sorted(n for n, k in self.knowledge.items() if "mpvu" in k["roles"])
        answer = plan_itinerary(client, data_nodes, self.distance, msg.tlvs.get(Tlv.REQUIRED_LABELS))
        feasible = answer.feasible and bool(mpvus)
        self.plans.append({"task": msg.task_id, "itinerary": answer.itinerary, "feasible": feasible})
        feas = Message(MsgType.FEASIBILITY, task_id=msg.task_id, model_id=msg.model_id,
                       body=wire.Feasibility(feasible, 0.0, 0, answer.reasons))
        if not feasible:
            return feas, None
        dscp = 8 + (msg.task_id - 1) % 48  # dcc_app.task_dscp (importing it needs os_ken)
        segments = [wire.node_id(n) for n in answer.itinerary]
        plan = Message(MsgType.ITINERARY, task_id=msg.task_id, model_id=msg.model_id,
                       tlvs={Tlv.ITINERARY: wire.Itinerary(0, 0, 1, segments),
                             Tlv.TRANSPORT: dscp,
                             Tlv.PARTIES: wire.Parties(wire.node_id(client), wire.node_id(mpvus[0]))},
                       body=wire.ItineraryBody(answer.policy))
        return feas, plan


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


def test_a_task_reaches_its_target_in_process(tmp_path, torch_threads):
    dcc = FakeDCC()
    net = MemoryNetwork(dcc, key=KEY)
    go = tmp_path / ".go"
    rts = [NodeRuntime(cfg, net.transport(cfg.name)) for cfg in node_configs(tmp_path)]
    codes: dict[str, int] = {}

    def run(rt):
        codes[rt.name] = run_node(rt, go)

    threads = {rt.name: threading.Thread(target=run, args=(rt,), daemon=True, name=rt.name) for rt in rts}
    try:
        for t in threads.values():
            t.start()
        # as the runner does: go once the DCC knows every data node (and the MPVU)
        wait_for(lambda: {"h2", "h3", "h4", "h5"} <= set(dcc.knowledge), 20,
                 "knowledge reports from h2..h5", last=lambda: sorted(dcc.knowledge))
        go.touch()
        threads["h1"].join(25)
        assert not threads["h1"].is_alive(), "the client did not finish its task within 25 s"
    finally:
        for rt in rts:
            rt.stopping.set()
        for t in threads.values():
            t.join(10)
        for rt in rts:
            rt.close()
    assert not [n for n, t in threads.items() if t.is_alive()], "nodes still running after stopping"
    assert codes == {n: 0 for n in NODES}
    assert net.errors == []

    result = json.loads((tmp_path / "results" / "task-1.json").read_text())
    events = read_events(tmp_path)
    kinds = [e["kind"] for e in events]
    assert "error" not in kinds and "message_dropped" not in kinds and "transfer_failed" not in kinds
    assert result["end_reason"] == "target_reached" and result["accuracy"] >= TARGET, result

    # the itinerary came from the policy: nearest first along the line of switches
    assert dcc.plans == [{"task": 1, "itinerary": ["h2", "h3", "h4"], "feasible": True}]
    received, = [e for e in events if e["kind"] == "itinerary_received"]
    assert received["itinerary"] == ["h2", "h3", "h4"]

    trains = [e for e in events if e["kind"] == "train"]
    verdicts = [e for e in events if e["kind"] == "verdict"]
    assert [e["src"] for e in trains] == (["h2", "h3", "h4"] * 4)[:len(trains)]  # the hops, in order
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
    rts = [NodeRuntime(cfg, net.transport(cfg.name)) for cfg in cfgs]
    threads = {rt.name: threading.Thread(target=run_node, args=(rt, go), daemon=True, name=rt.name)
               for rt in rts}
    try:
        for t in threads.values():
            t.start()
        wait_for(lambda: {"h2", "h3", "h4", "h5"} <= set(dcc.knowledge), 20, "knowledge reports")
        go.touch()
        threads["h1"].join(40)
        assert not threads["h1"].is_alive(), "the client did not finish within 40 s"
    finally:
        for rt in rts:
            rt.stopping.set()
        for t in threads.values():
            t.join(10)
        for rt in rts:
            rt.close()
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
