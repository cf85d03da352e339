"""AATS and the baselines (nodes/modes.py) in one process: the real roles (run_node) over
MemoryNetwork, real PyTorch training, a DCC that takes reports and plans nothing."""
import json
import random
import threading

import pytest
import torch

from nodes import wire
from nodes.memnet import MemoryNetwork
from nodes.model import build_mlp, bytes_to_state, state_digest, state_to_bytes
from nodes.modes import PeerSummary, aats_decide, privacy_forbids
from nodes.runtime import NodeConfig
from nodes.wire import EndReason, Message, MsgType, Role, Tlv
from testbed.spec import DataSpec, ModelSpec, ModesSpec, SpecError, TaskSpec, TrainingSpec, load_spec
from tests.unit.test_roles_inprocess import read_events, run_experiment, torch_threads  # noqa: F401 (fixture)

KEY = bytes(range(32))
NODES = {"h1": ["client"], "h2": ["data"], "h3": ["data"], "h4": ["data"], "h5": ["mpvu"]}
DATA = ["h2", "h3", "h4"]
TARGET = 0.85


class QuietDCC:
    """The DCC of a non-DCC mode: it keeps knowledge reports and the MPVU's verdict copies,
    and records anything else a node sends it (in these modes, nothing should come)."""

    def __init__(self):
        self.knowledge: dict[str, wire.KnowledgeReport] = {}
        self.asked: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def __call__(self, msg: Message, node: str) -> list[Message]:
        with self.lock:
            if msg.type == MsgType.KNOWLEDGE_REPORT:
                self.knowledge[node] = msg.body
            elif msg.type != MsgType.EVAL_VERDICT:
                self.asked.append((node, MsgType(msg.type).name))
        return []


class Recorder:
    """Every model-bearing message's first chunk, decoded, as it crossed a link."""

    def __init__(self, net: MemoryNetwork, names):
        self.msgs: list[tuple[str, str, Message]] = []
        for a in names:
            for b in names:
                if a != b:
                    net.link(a, b).drop = self._hook(a, b)

    def _hook(self, a, b):
        def seen(data: bytes) -> bool:
            m = wire.decode(data, KEY)
            chunk = m.tlvs.get(Tlv.CHUNK)
            if m.type in (MsgType.MODEL_CHUNK, MsgType.TASK_RESULT) and chunk is not None and \
                    (chunk.offset == 0 and m.body):
                self.msgs.append((a, b, m))
            return False  # nothing is lost
        return seen


def configs(run_dir, mode: str, nodes=None, task=None, hosts=None, **opts):
    nodes = nodes or NODES
    modes = ModesSpec().model_dump()
    modes[mode].update(opts)
    task = task or TaskSpec(id=1, client="h1", target_accuracy=TARGET, deadline_s=40, max_laps=6)
    common = dict(run_dir=run_dir, seed=1, hosts={n: f"10.0.0.{n[1:]}" for n in nodes},
                  data=DataSpec().model_dump(), model=ModelSpec(hidden=[32]).model_dump(),
                  training=TrainingSpec().model_dump(), tasks=[task.model_dump()], mpvu="h5",
                  data_nodes=[h for h, r in nodes.items() if "data" in r], key=KEY, report_interval_s=0.3,
                  host_options=hosts or {}, mode=mode, modes=modes)
    return [NodeConfig(name=n, ip=common["hosts"][n], roles=r, **common) for n, r in nodes.items()]


def run(tmp_path, mode, nodes=None, task=None, hosts=None, record=False, timeout=60, **opts):
    dcc = QuietDCC()
    net = MemoryNetwork(dcc, key=KEY)
    rec = Recorder(net, list(nodes or NODES)) if record else None
    codes, _, rts = run_experiment(dcc, net, configs(tmp_path, mode, nodes, task, hosts, **opts),
                                   tmp_path / ".go", set(nodes or NODES), timeout)
    assert net.errors == [], net.errors
    result = json.loads((tmp_path / "results" / "task-1.json").read_text())
    events = read_events(tmp_path)
    # the DCC planned nothing: no node asked it for a plan or a hop
    assert dcc.asked == [], dcc.asked
    kinds = {e["kind"] for e in events}
    assert not kinds & {"error", "message_dropped", "transfer_failed", "dcc_no_answer", "itinerary_received"}, \
        [e for e in events if e["kind"] in ("error", "message_dropped", "transfer_failed")]
    return result, events, net, rec


def of(events, kind, **match):
    return [e for e in events if e["kind"] == kind and all(e.get(k) == v for k, v in match.items())]


# ---- AATS -------------------------------------------------------------------------------

def test_autonomous_model_steers_itself_by_gossip(tmp_path, torch_threads):
    result, events, net, rec = run(tmp_path, "autonomous", record=True, gossip_interval_s=0.2, gossip_fanout=2)
    assert result["end_reason"] == "target_reached" and result["accuracy"] >= TARGET, result

    # gossip: summaries crossed node to node (never through the DCC), and every node learned
    gossip = of(events, "gossip")
    assert gossip and {e["src"] for e in gossip} == set(NODES)
    pairs = {(p.src, p.dst) for p in net.trace if p.type == "KNOWLEDGE_REPORT" and "dcc" not in (p.src, p.dst)}
    assert {("h1", d) for d in DATA} & pairs or {(d, "h1") for d in DATA} & pairs

    decisions = of(events, "aats_decision")
    trains = of(events, "train")
    # one decision at the client and one after every stop, each with its reason
    assert decisions[0]["src"] == "h1" and decisions[0]["hop"] == 0
    assert [d["src"] for d in decisions[1:]] == [t["src"] for t in trains]
    assert all(d["reason"] for d in decisions)
    moves = [d for d in decisions if d["end"] is None]
    assert [d["chosen"] for d in moves] == [t["src"] for t in trains][:len(moves)]
    assert decisions[-1]["end"] == "target_reached"
    for d in moves:  # the chosen one had the best score among the eligible candidates
        best = max(c["score"] for c in d["candidates"] if c["eligible"])
        chosen, = [c for c in d["candidates"] if c["node"] == d["chosen"]]
        assert chosen["eligible"] and chosen["score"] == best
        assert {c["node"] for c in d["candidates"]} == set(DATA) - {d["src"]} or d["src"] == "h1"
    # loop avoidance: no data node twice in a lap
    laps: dict[int, list[str]] = {}
    for t in trains:
        laps.setdefault(t["lap"], []).append(t["src"])
    assert all(len(v) == len(set(v)) for v in laps.values()), laps
    # the first hop: no verdict yet, so the node with the most samples
    samples = {e["src"]: e["samples"] for e in of(events, "data_loaded")}
    assert moves[0]["chosen"] == max(DATA, key=lambda h: (samples[h], -int(h[1:])))

    # the AI object's header: requirements and state travel with it
    hops = [m for a, b, m in rec.msgs if m.type == MsgType.MODEL_CHUNK and a != "h1"]
    assert len(hops) == len(trains) - 1
    for m in hops:
        assert m.tlvs[Tlv.MAX_HOPS] == 24 and m.hop_limit == 24 and Tlv.ACCURACY in m.tlvs
        assert m.tlvs[Tlv.PARTIES] == wire.Parties(1, 5)
        itin = m.tlvs[Tlv.ITINERARY]
        assert itin.segments[itin.ptr] == m.dst  # ptr at the next stop, the rest the lap's visits
    # lineage works as in DCC mode
    from controllers.lineage import Lineage
    assert Lineage.from_events(events).problems() == []


def _peer(name, hist, capacity=1.0, rtt=None):
    return PeerSummary(name, 0.0, int(Role.DATA), sum(hist), hist, capacity, 0.0, 0, rtt)


def decide(known, itin=None, **kw):
    args = dict(task=1, hop=1, accuracy=0.3, per_class=None, target=0.9, deadline_s=100.0, max_hops=10,
                itin=itin or wire.Itinerary(0, 0, 3, [2]), required_labels=None, known=known,
                rtt_scale_ms=200.0, now=0.0)
    args.update(kw)
    return aats_decide("h2", **args)


def test_aats_decide_scores_need_weighted_samples_and_avoids_loops():
    known = {"h3": _peer("h3", [50, 0, 0]), "h4": _peer("h4", [0, 40, 40]), "h5": _peer("h5", [0, 0, 0]),
             "h6": _peer("h6", [100, 100, 100], capacity=0.0)}
    d = decide(known)  # no verdict: every label needed, so samples count
    assert d["end"] is None and d["chosen"] == "h4"
    assert {c["node"] for c in d["candidates"]} == {"h3", "h4"}  # no data / no compute: not candidates
    assert d["itinerary"] == wire.Itinerary(1, 0, 3, [2, 4])
    # a verdict that says labels 1 and 2 are learnt: h3's label 0 is what is needed
    d = decide(known, per_class=[0.1, 1.0, 0.95])
    assert d["chosen"] == "h3" and "h3" in d["reason"]
    # h4 visited in this lap: h3 though it scores less
    d = decide(known, itin=wire.Itinerary(1, 0, 3, [4, 2]))
    assert d["chosen"] == "h3" and [c["node"] for c in d["candidates"] if not c["eligible"]] == ["h4"]
    # all visited: a new lap, not at the node it is at
    d = decide(known, itin=wire.Itinerary(2, 0, 3, [3, 4, 2]))
    assert d["lap"] == 1 and d["chosen"] == "h4" and d["itinerary"].segments == [2, 4]
    d = decide(known, itin=wire.Itinerary(2, 2, 3, [3, 4, 2]))
    assert d["end"] == EndReason.MAX_LAPS and "lap limit" in d["reason"]
    # required labels: only those count
    assert decide(known, required_labels=[0])["chosen"] == "h3"
    # RTT in 20 ms steps: 9 ms of jitter changes nothing, 100 ms does
    tie = {"h3": _peer("h3", [40, 40], rtt=9.0), "h4": _peer("h4", [40, 40], rtt=1.0)}
    assert decide(tie)["chosen"] == "h3"  # equal scores: the lower id
    tie["h3"].rtt_ms = 100.0
    assert decide(tie)["chosen"] == "h4"


@pytest.mark.parametrize("kw,end", [({"accuracy": 0.95}, EndReason.TARGET_REACHED),
                                    ({"now": 101.0}, EndReason.DEADLINE),
                                    ({"hop": 10}, EndReason.MAX_LAPS),
                                    ({"known": {}}, EndReason.INFEASIBLE)])
def test_aats_decide_ends(kw, end):
    args = {"known": {"h3": _peer("h3", [5, 5])}, **kw}
    d = decide(**args)
    assert d["end"] == end and d["chosen"] is None and d["reason"]


def test_autonomous_hop_limit_returns_the_model(tmp_path, torch_threads):
    task = TaskSpec(id=1, client="h1", target_accuracy=0.99, deadline_s=40, max_laps=6)
    result, events, _, _ = run(tmp_path, "autonomous", task=task, gossip_interval_s=0.2, max_hops=2)
    assert result["end_reason"] == "max_hops" and result["hops"] == 2
    assert len(of(events, "train")) == 2
    assert of(events, "aats_decision")[-1]["reason"] == "hop limit 2 reached"


# ---- random walk ---------------------------------------------------------------------

def test_random_walk_is_uniform_seeded_and_ends_on_target(tmp_path, torch_threads):
    result, events, _, _ = run(tmp_path, "random_walk")
    assert result["end_reason"] == "target_reached" and result["accuracy"] >= TARGET
    walk = [t["src"] for t in of(events, "train")]
    # the walk is the seeded draw: (seed 1, task 1, hop), never the node it is at
    here, expect = "h1", []
    for hop in range(len(walk)):
        choices = sorted([h for h in DATA if h != here], key=lambda h: int(h[1:]))
        here = random.Random(f"1/1/{hop}").choice(choices)
        expect.append(here)
    assert walk == expect
    steps = of(events, "walk_step")
    assert [s["chosen"] for s in steps if s["chosen"]] == walk and steps[-1]["end"] == "target_reached"
    assert not of(events, "gossip")


# ---- centralized ---------------------------------------------------------------------

def test_centralized_ships_raw_data_and_flags_privacy(tmp_path, torch_threads):
    from testbed.results import mode_run_summary
    hosts = {"h2": {"privacy": "public"}, "h3": {"privacy": "local"}}
    result, events, net, _ = run(tmp_path, "centralized", hosts=hosts)
    assert result["end_reason"] == "target_reached" and result["accuracy"] >= TARGET
    raw = of(events, "raw_data_transfer")
    assert sorted(e["src"] for e in raw) == DATA and all(e["bytes"] > 1000 and e["task"] == 1 for e in raw)
    shards = [p for p in net.trace if p.type == "DATA_SHARD"]
    assert {p.dst for p in shards} == {"h1"} and sum(p.bytes for p in shards) >= sum(e["bytes"] for e in raw)
    # h2 is public; h3 (local) and h4 (trusted, trusting nobody) forbade it: flagged
    assert sorted(e["src"] for e in of(events, "privacy_violation")) == ["h3", "h4"]
    s = mode_run_summary(events)
    assert [v["node"] for v in s["privacy"]["violations"]] == ["h3", "h4"] or \
        sorted(v["node"] for v in s["privacy"]["violations"]) == ["h3", "h4"]
    # the server trained on the pool, every epoch verified; no model went to a data node
    trains = of(events, "train")
    assert {t["src"] for t in trains} == {"h1"} and trains[0]["samples"] == sum(e["samples"] for e in raw)
    assert len(of(events, "evaluation")) == len(trains) == result["hops"]
    assert not [p for p in net.trace if p.type == "MODEL_CHUNK"]


def test_centralized_server_elsewhere_respecting_privacy(tmp_path, torch_threads):
    hosts = {"h3": {"privacy": "public"}, "h4": {"privacy": "local"}}
    result, events, net, _ = run(tmp_path, "centralized", hosts=hosts, server="h2", respect_privacy=True)
    assert result["end_reason"] == "target_reached", result
    # h2 (the server) pools its own data without the network, h3 ships, h4 keeps its data
    assert [e["src"] for e in of(events, "raw_data_transfer")] == ["h3"]
    kept, = of(events, "data_withheld")
    assert kept["src"] == "h4" and "local" in kept["reason"]
    pooled, = of(events, "data_pooled")
    assert pooled["nodes"] == ["h2", "h3"] and not of(events, "privacy_violation")
    assert {t["src"] for t in of(events, "train")} == {"h2"}
    moves = [(p.src, p.dst) for p in net.trace if p.type in ("MODEL_CHUNK", "TASK_RESULT")]
    assert moves[0] == ("h1", "h2") and moves[-1] == ("h2", "h1")


# ---- federated averaging -------------------------------------------------------------

def test_fedavg_averages_weighted_by_samples(tmp_path, torch_threads):
    from controllers.lineage import Lineage
    result, events, _, rec = run(tmp_path, "fedavg", record=True)
    assert result["end_reason"] == "target_reached" and result["accuracy"] >= TARGET
    rounds = of(events, "fedavg_round")
    samples = {e["src"]: e["samples"] for e in of(events, "data_loaded")}
    assert rounds and all(r["received"] == DATA and r["weights"] == samples for r in rounds)
    aggregates = of(events, "train")
    assert len(aggregates) == len(rounds) == result["hops"] and {a["src"] for a in aggregates} == {"h1"}
    assert len(of(events, "local_train")) == 3 * len(rounds)
    # the first aggregate is the sample-weighted mean of the three updates, exactly
    updates = {a: bytes(m.body) for a, b, m in rec.msgs if m.type == MsgType.MODEL_CHUNK
               and b == "h1" and m.model_version == 1}
    assert sorted(updates) == DATA
    total = sum(samples.values())
    model = build_mlp(hidden=(32,), seed=1)
    avg = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    for n in DATA:
        local = bytes_to_state(build_mlp(hidden=(32,), seed=1), updates[n])
        for k, v in local.state_dict().items():
            avg[k] += v * (samples[n] / total)
    model.load_state_dict(avg)
    assert state_digest(state_to_bytes(model)) == aggregates[0]["sha256"]
    assert aggregates[0]["aggregated_from"] == {n: state_digest(updates[n]) for n in DATA}
    assert Lineage.from_events(events).problems() == []


def test_fedavg_samples_clients_per_round(tmp_path, torch_threads):
    task = TaskSpec(id=1, client="h1", target_accuracy=0.99, deadline_s=40, max_laps=6)
    result, events, _, _ = run(tmp_path, "fedavg", task=task, clients_per_round=2, rounds=3)
    assert result["end_reason"] == "max_rounds" and result["hops"] == 3
    chosen = [r["chosen"] for r in of(events, "fedavg_round")]
    assert chosen == [sorted(random.Random(f"1/1/{r}").sample(DATA, 2), key=lambda h: int(h[1:]))
                      for r in (1, 2, 3)]


# ---- spec ------------------------------------------------------------------------------

def test_privacy_forbids():
    assert privacy_forbids({"privacy": "public"}, "h2", "h1") is None
    assert "local" in privacy_forbids({"privacy": "local"}, "h2", "h1")
    assert privacy_forbids({"privacy": "trusted", "trusts": ["h1"]}, "h2", "h1") is None
    assert "trusts" in privacy_forbids({"privacy": "trusted", "trusts": []}, "h2", "h1")


QUICKSTART = "experiments/quickstart.yaml"


@pytest.mark.parametrize("mode", ["autonomous", "centralized", "fedavg", "random_walk"])
def test_every_mode_validates_on_the_quickstart(mode):
    spec, _ = load_spec(QUICKSTART, [f"mode={mode}"])
    assert spec.mode == mode and spec.modes.fedavg.rounds == 50


@pytest.mark.parametrize("overrides,field", [
    (["mode=swarm"], "mode"),
    (["mode=fedavg", "modes.fedavg.clients_per_round=5"], "modes.fedavg.clients_per_round"),
    (["mode=fedavg", "modes.fedavg.rounds=0"], "modes.fedavg.rounds"),
    (["mode=centralized", "modes.centralized.server=h3"], "modes.centralized.server"),
    (["mode=autonomous", "modes.autonomous.gossip_fanout=0"], "modes.autonomous.gossip_fanout"),
    (["mode=autonomous", "modes.autonomous.gossip_period=1"], "modes.autonomous.gossip_period"),
    (["mode=random_walk", "modes.random_walk.max_hops=300"], "modes.random_walk.max_hops"),
    (["mode=random_walk", "serve_s=10"], "serve_s"),
])
def test_bad_mode_options_name_the_field(overrides, field):
    with pytest.raises(SpecError) as e:
        load_spec(QUICKSTART, overrides)
    assert e.value.field == field, str(e.value)


def test_daitn_check_names_a_bad_mode_option(capsys):
    from testbed.cli import main
    code = main(["check", QUICKSTART, "--set", "mode=fedavg", "--set", "modes.fedavg.clients_per_round=9"])
    assert code == 2
    out = capsys.readouterr()
    assert "modes.fedavg.clients_per_round" in out.out + out.err
