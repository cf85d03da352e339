"""AATS and the baselines: the same spec under another paradigm (spec ``mode``, issue #7).

The DCC process runs in every mode: it installs plain forwarding, keeps the
nodes' knowledge reports (heartbeats) and the MPVU's verdict copies. Outside
``mode: dcc`` no node asks it anything (no TRAIN_REQUEST or hop request reaches
it), so it plans nothing. What each mode does on a node:

- ``autonomous`` (AATS, the paper's fully autonomous DA-ITN): every node gossips
  its summary (KNOWLEDGE_REPORT, node to node over TCP, push-pull) with a few
  peers per round; the model travels as an AI object whose header carries its
  requirements and state, and wherever it is, the node holding it picks the next
  data node from the header and that local knowledge (:func:`aats_decide`).
- ``random_walk``: the model walks data nodes chosen uniformly at random (seeded
  per task and hop, so a replay walks the same way).
- ``centralized``: the server (the task's client by default) asks every data node
  for its raw shard (TRAIN_REQUEST node to node, answered by DATA_SHARD), trains on
  the pool and has the MPVU verify each round; shipped bytes are a privacy cost.
- ``fedavg``: the server sends the global model to the round's data nodes, each
  trains locally and sends it back, the server averages them weighted by samples
  and has the MPVU verify the average.

All modes train with :func:`nodes.model.train_local`, verify at the MPVU over the
network (EVAL_REQUEST), and write the events DCC mode writes (``task_submitted``,
``train``, ``evaluation``, ``transfer``, ``task_result``), so ``summary.json``,
``daitn compare`` and the lineage read every mode alike. Their own events:
``gossip``, ``aats_decision``, ``walk_step``, ``raw_data_transfer`` (with the
task), ``privacy_violation``, ``data_withheld``, ``local_train``, ``fedavg_round``.
"""
from __future__ import annotations

import dataclasses
import functools
import io
import logging
import random
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from nodes import wire
from nodes.model import bytes_to_state, state_digest, state_to_bytes, train_local
from nodes.roles import Client, DataNode, _model, _options
from nodes.runtime import NodeRuntime, TransferError
from nodes.wire import EndReason, Message, MsgType, Tlv, WireError

log = logging.getLogger("daitn.node")
MT = MsgType

__all__ = ["MODES", "node_mode", "NodeMode", "Autonomous", "RandomWalk", "Centralized", "FedAvg",
           "PeerSummary", "Gossip", "aats_decide", "exchange_summary", "privacy_forbids"]

MODES = ("autonomous", "centralized", "fedavg", "random_walk")
MAX_SEGMENTS = 125  # an ITINERARY TLV holds at most 125 node ids (docs/protocol.md)
RTT_STEP_MS = 20    # AATS rounds RTTs to this: exchange times on a busy 2-core host jitter ~10 ms


def node_mode(rt: NodeRuntime, go_file) -> "NodeMode":
    """The mode object of this node for the spec's ``mode`` (not ``dcc``)."""
    kinds = {"autonomous": Autonomous, "random_walk": RandomWalk, "centralized": Centralized, "fedavg": FedAvg}
    try:
        return kinds[rt.cfg.mode](rt, go_file)
    except KeyError:
        raise ValueError(f"unknown mode {rt.cfg.mode!r}; modes are dcc, {', '.join(MODES)}") from None


def _size(rt: NodeRuntime, msg: Message) -> int:
    """Bytes of ``msg`` as it crosses the wire (header, TLVs, payload, AUTH trailer)."""
    unsigned = dataclasses.replace(msg, flags=msg.flags & ~wire.AUTH)
    return len(wire.encode(unsigned)) + (wire.TRAILER_LEN if rt.ep.key else 0)


def exchange_summary(rt: NodeRuntime, peer: str, mine: wire.KnowledgeReport,
                     timeout: float = 5.0) -> tuple[wire.KnowledgeReport, float, int]:
    """Push-pull: send our summary to ``peer`` (KNOWLEDGE_REPORT over TCP), get its own
    back -> (its summary, round-trip ms of the exchange, bytes both ways)."""
    msg = Message(MT.KNOWLEDGE_REPORT, body=mine)
    t = time.perf_counter()
    reply = rt.request(wire.node_id(peer), msg, timeout=timeout)
    rtt_ms = (time.perf_counter() - t) * 1000
    if reply.type != MT.KNOWLEDGE_REPORT:
        text = getattr(reply.body, "text", "")
        raise TransferError(f"{peer} answered {MsgType(reply.type).name} to a summary {text}".rstrip())
    return reply.body, rtt_ms, _size(rt, msg) + _size(rt, reply)


def _task_tlvs(m: Message) -> dict:
    """The task's requirements and parties, as every message of the task carries them."""
    return {t: m.tlvs[t] for t in (Tlv.TARGET_ACCURACY, Tlv.DEADLINE, Tlv.PARTIES)}


def _end(accuracy, target: float, deadline_s: float, now: float, count: int, limit: int,
         unit: str) -> tuple[EndReason | None, str]:
    """Whether a task ends now, and why (the same rules in every mode)."""
    if accuracy is not None and accuracy >= target:
        return EndReason.TARGET_REACHED, f"MPVU verdict {accuracy:.4f} >= target {target}"
    if now >= deadline_s:
        return EndReason.DEADLINE, f"deadline passed ({now - deadline_s:.1f} s ago)"
    if count >= limit:
        return EndReason.MAX_LAPS, f"{unit} limit {limit} reached"
    return None, ""


def _train_event(rt: NodeRuntime, kind: str, task: int, hop: int, version: int, stats: dict, capacity: float,
                 sha256: str, parent: str, lap: int = 0, **extra):
    rt.event(kind, task=task, hop=hop, lap=lap, version=version, samples=stats["samples"], loss=stats["loss"],
             seconds=stats["seconds"], compute_seconds=stats["compute_seconds"],
             throttled_seconds=stats["throttled_seconds"], capacity=capacity, sha256=sha256,
             parent_sha256=parent, **extra)


def _verify(rt: NodeRuntime, task: Message, state: bytes, hop: int, version: int) -> wire.EvalVerdict:
    """Have the task's MPVU verify ``state`` (EVAL_REQUEST over the network); record the evaluation."""
    parties = task.require(Tlv.PARTIES)
    msg = Message(MT.EVAL_REQUEST, hop_count=hop, task_id=task.task_id, model_id=task.model_id,
                  model_version=version, tlvs=_task_tlvs(task))
    verdict = rt.send_model(parties.mpvu, msg, state)
    if verdict.type != MT.EVAL_VERDICT:
        raise TransferError(f"MPVU answered {MsgType(verdict.type).name}, not a verdict")
    v = verdict.body
    rt.event("evaluation", task=task.task_id, hop=hop, at=rt.name, by=wire.node_name(parties.mpvu),
             accuracy=v.accuracy, loss=v.loss, version=version, sha256=state_digest(state),
             per_class=v.per_class, samples=v.samples)
    return v


class NodeMode:
    """What a paradigm changes on one node: role classes, the messages it takes, threads.

    Every mode answers a peer's summary (KNOWLEDGE_REPORT over TCP) with this node's
    latest knowledge report, the one it last sent the DCC."""

    name = ""
    limit_unit = "lap"   # what MAX_LAPS means in this mode (end_reason "max_<unit>s")

    def __init__(self, rt: NodeRuntime, go_file):
        self.rt, self.go_file = rt, go_file
        self.opts = dict((getattr(rt.cfg, "modes", None) or {}).get(self.name) or {})
        self.roles: dict = {}
        self._knowledge = None
        self._latest: wire.KnowledgeReport | None = None

    def role_classes(self) -> dict:
        return {}

    def attach(self, roles: dict, knowledge):
        """Called by run_node with the node's roles and its report function; returns the
        report function to use (it remembers the latest report for peers)."""
        self.roles, self._knowledge = roles, knowledge

        def reporting():
            self._latest = knowledge()
            return self._latest
        return reporting

    def summary(self) -> wire.KnowledgeReport:
        return self._latest if self._latest is not None else self._knowledge()

    def takes(self, m: Message) -> bool:
        return m.type == MT.KNOWLEDGE_REPORT

    def on_control(self, m: Message, peer: str) -> Message:
        if m.type != MT.KNOWLEDGE_REPORT:
            raise WireError(f"{self.rt.name} takes no {MsgType(m.type).name} in mode {self.name}")
        self.heard(m)
        return Message(MT.KNOWLEDGE_REPORT, flags=wire.REPLY, seq=m.seq, body=self.summary())

    def heard(self, m: Message):
        """A peer's summary arrived (AATS learns from it)."""

    def on_model(self, first: Message, state: bytes, peer: str):
        raise WireError(f"{self.rt.name} takes no {MsgType(first.type).name} in mode {self.name}")

    def threads(self) -> list[threading.Thread]:
        return []

    def end_reason(self, res: Message) -> str:
        end = EndReason(res.tlvs[Tlv.END_REASON])
        return f"max_{self.limit_unit}s" if end == EndReason.MAX_LAPS else end.name.lower()


# ---- walks: the model moves on by itself (AATS, random walk) -------------------------

class WalkingDataNode(DataNode):
    """A data node whose visiting model chooses its next stop here, not at the DCC."""

    def __init__(self, rt: NodeRuntime, load, mode: "Walk"):
        super().__init__(rt, load)
        self.mode = mode

    def next_hop(self, first: Message, itin, end, version: int, digest: str, verdict):
        return self.mode.route(first, itin, verdict.accuracy, verdict.per_class)


class ModeClient(Client):
    """A client of a non-DCC mode: it submits a task to nobody; the mode carries it out."""

    def __init__(self, rt: NodeRuntime, mode: "NodeMode"):
        super().__init__(rt)
        self.mode = mode

    def submit(self, task: dict) -> tuple[int, float, bytes, int, dict]:
        """The task's start, recorded as in DCC mode -> (id, t0, state, deadline_ms, tlvs)."""
        t0, state, deadline_ms, tlvs = self.start_task(task)
        self.rt.event("task_submitted", task=task["id"], model_bytes=len(state),
                      target_accuracy=task["target_accuracy"], deadline_s=task["deadline_s"],
                      required_labels=task.get("required_labels"), mode=self.mode.name)
        return task["id"], t0, state, deadline_ms, tlvs

    def hand_over(self, t0: float, deadline_ms: int, head: Message, state: bytes, why: str) -> dict:
        """Send the task's model to the first stop of ``head``'s itinerary and wait for it back."""
        itin, tid = head.tlvs[Tlv.ITINERARY], head.task_id
        nxt = itin.segments[itin.ptr]
        self.rt.event("forward", task=tid, to=wire.node_name(nxt), ptr=itin.ptr, lap=itin.lap, reason=why)
        try:
            self.rt.send_model(nxt, head, state)
        except TransferError as e:
            return self._finish(tid, t0, f"transfer_failed: {e}", None, None)
        res = self.await_result(tid, deadline_ms)
        if res is None:
            return self._finish(tid, t0, "no result before deadline + grace", None, None)
        return self._finish(tid, t0, self.mode.end_reason(res), res.tlvs.get(Tlv.ACCURACY), res)


class WalkingClient(ModeClient):
    """Starts a task whose model walks on its own: the first stop is the mode's choice."""

    def run_task(self, task: dict):
        rt = self.rt
        tid, t0, state, deadline_ms, tlvs = self.submit(task)
        tlvs[Tlv.MAX_HOPS] = self.mode.max_hops
        self.mode.prepare()
        mpvu = self.mode.mpvu()
        tlvs[Tlv.PARTIES] = wire.Parties(rt.node, wire.node_id(mpvu))
        head = Message(MT.MODEL_CHUNK, task_id=tid, model_id=tid, hop_limit=self.mode.max_hops,
                       tlvs={**tlvs, Tlv.ITINERARY: wire.Itinerary(0, 0, task["max_laps"], [])})
        itin, end, why = self.mode.route(head, None, None, None)
        if end is not None:
            return self._finish(tid, t0, f"{end.name.lower()}: {why}", None, None)
        head.tlvs[Tlv.ITINERARY] = itin
        return self.hand_over(t0, deadline_ms, head, state, why)


class Walk(NodeMode):
    """A model that walks data nodes with no DCC: ends on its target, deadline or hop limit."""

    limit_unit = "hop"

    def __init__(self, rt, go_file):
        super().__init__(rt, go_file)
        self.max_hops = int(self.opts.get("max_hops", 24))

    def role_classes(self) -> dict:
        return {"data": functools.partial(WalkingDataNode, mode=self),
                "client": functools.partial(WalkingClient, mode=self)}

    def prepare(self):
        """At the client, before the first decision."""

    def mpvu(self) -> str:
        return self.rt.cfg.mpvu

    def route(self, first: Message, itin, accuracy, per_class) -> tuple[wire.Itinerary, EndReason | None, str]:
        """Where the model goes from this node -> (itinerary, end or None, why). ``itin`` is
        None at the client (before the first hop)."""
        raise NotImplementedError


class RandomWalk(Walk):
    """Random-walk learning: each next stop is a data node drawn uniformly at random
    (not the one the model is at), seeded by (seed, task, hop)."""

    name = "random_walk"

    def walkable(self) -> list[str]:
        opts = self.rt.cfg.host_options or {}
        return [h for h in self.rt.cfg.data_nodes if (opts.get(h) or {}).get("compute", True)]

    def route(self, first, itin, accuracy, per_class):
        rt, here = self.rt, self.rt.name
        hop = first.hop_count + (0 if itin is None else 1)
        end, why = _end(accuracy, first.tlvs[Tlv.TARGET_ACCURACY], first.tlvs[Tlv.DEADLINE] / 1000, time.time(),
                        hop, self.max_hops, "hop")
        walk = [] if itin is None else list(itin.segments[:itin.ptr + 1])
        choices = [h for h in self.walkable() if h != here] or self.walkable()
        chosen = None
        if end is None and not choices:
            end, why = EndReason.INFEASIBLE, "no data node with compute to walk to"
        if end is None:
            chosen = random.Random(f"{rt.cfg.seed}/{first.task_id}/{hop}").choice(sorted(choices, key=wire.node_id))
            why = f"{chosen}: drawn uniformly from {len(choices)} data nodes (seeded by seed, task, hop {hop})"
        rt.event("walk_step", task=first.task_id, hop=hop, at=here, accuracy=accuracy, choices=choices,
                 chosen=chosen, end=None if end is None else end.name.lower(), reason=why)
        segments = (walk + [wire.node_id(chosen)] if chosen else walk)[-MAX_SEGMENTS:]
        lap = itin.lap if itin is not None else 0
        max_laps = (itin or first.tlvs[Tlv.ITINERARY]).max_laps
        return wire.Itinerary(max(len(segments) - 1, 0), lap, max_laps, segments), end, why


# ---- AATS: gossip and the AI object's own decisions ---------------------------------

@dataclass
class PeerSummary:
    """What a node knows of a peer from gossip (its last summary and the measured RTT)."""
    name: str
    t: float
    roles: int
    samples: int
    label_hist: list[int]
    capacity: float
    load: float
    queue_len: int
    rtt_ms: float | None = None   # the least of the last exchanges (queueing excluded as far as possible)

    @classmethod
    def of(cls, name: str, kr: wire.KnowledgeReport, t: float, rtt_ms: float | None = None) -> "PeerSummary":
        return cls(name, t, int(kr.roles), int(kr.samples), list(kr.label_hist), float(kr.capacity),
                   float(kr.load), int(kr.queue_len), rtt_ms)


class Gossip:
    """Neighbour summaries exchanged node to node: every ``interval`` s this node sends its
    summary to its next ``fanout`` peers (round robin over a seeded shuffle of the run's
    hosts) and learns theirs from the answers; peers that contact it teach it too."""

    RTT_SAMPLES = 5

    def __init__(self, rt: NodeRuntime, interval: float, fanout: int):
        self.rt, self.interval, self.fanout = rt, interval, fanout
        self.peers = sorted((h for h in rt.cfg.hosts if h != rt.name), key=wire.node_id)
        random.Random(f"{rt.cfg.seed}/{rt.name}/gossip").shuffle(self.peers)
        self.table: dict[str, PeerSummary] = {}
        self._rtts: dict[str, list[float]] = {}
        self.lock = threading.RLock()  # view() is called while waiting on ``changed``
        self.changed = threading.Condition(self.lock)

    def learn(self, name: str, kr: wire.KnowledgeReport, rtt_ms: float | None = None, now: float | None = None):
        with self.lock:
            if rtt_ms is not None:
                self._rtts[name] = (self._rtts.get(name, []) + [rtt_ms])[-self.RTT_SAMPLES:]
            rtts = self._rtts.get(name)
            self.table[name] = PeerSummary.of(name, kr, time.time() if now is None else now,
                                              min(rtts) if rtts else None)
            self.changed.notify_all()

    def view(self, max_age: float, now: float | None = None) -> dict[str, PeerSummary]:
        """The peers heard from within ``max_age`` s."""
        now = time.time() if now is None else now
        with self.lock:
            return {n: s for n, s in self.table.items() if now - s.t <= max_age}

    def loop(self, summary):
        """Gossip rounds until the node stops."""
        i = 0
        while not self.rt.stopping.is_set():
            for _ in range(min(self.fanout, len(self.peers))):
                peer = self.peers[i % len(self.peers)]
                i += 1
                try:
                    kr, rtt, nbytes = exchange_summary(self.rt, peer, summary(), timeout=max(2.0, self.interval))
                except (TransferError, OSError, WireError) as e:  # not started yet, crashed, stopping
                    log.info("gossip with %s failed: %s", peer, e)
                    continue
                self.learn(peer, kr, rtt)
                self.rt.event("gossip", peer=peer, rtt_ms=round(rtt, 3), bytes=nbytes, samples=kr.samples,
                              roles=int(kr.roles))
            if self.rt.stopping.wait(self.interval):
                return


def _need(per_class, n: int, required) -> list[float]:
    """How much the model still needs each label: 1 - its per-class accuracy from the
    last verdict (1 where unknown); only the required labels count if the task names some."""
    need = [1.0] * n
    for label, acc in enumerate(per_class or []):
        if label < n and acc is not None:
            need[label] = max(0.0, 1.0 - float(acc))
    if required:
        want = set(required)
        need = [w if label in want else 0.0 for label, w in enumerate(need)]
    return need


def aats_decide(here: str, *, task: int, hop: int, accuracy, per_class, target: float, deadline_s: float,
                max_hops: int, itin: wire.Itinerary, required_labels, known: dict[str, PeerSummary],
                rtt_scale_ms: float, now: float) -> dict:
    """The AI object's next hop from its header and the node's gossip knowledge (pure).

    Candidates are peers holding data and compute. Loop avoidance: the ITINERARY's
    segments up to ``ptr`` are the data nodes visited in this lap; when every
    candidate has been visited a new lap starts (not at the node it is at), up to the
    header's ``max_laps``. Score = need-weighted samples (samples on labels the last
    verdict says the model is weak at) x capacity / (1 + RTT / rtt_scale_ms), RTT in
    RTT_STEP_MS steps so that jitter does not change decisions; ties go to the lower node id.

    Returns {end (EndReason or None), chosen, itinerary, reason, candidates, lap}.
    """
    out = {"task": task, "hop": hop, "at": here, "accuracy": accuracy, "known": sorted(known, key=wire.node_id),
           "chosen": None, "itinerary": None, "candidates": [], "lap": itin.lap}
    end, why = _end(accuracy, target, deadline_s, now, hop, max_hops, "hop")
    if end is not None:
        return {**out, "end": end, "reason": why}
    cands = {n: s for n, s in known.items() if s.samples > 0 and s.capacity > 0}
    if not cands:
        return {**out, "end": EndReason.INFEASIBLE,
                "reason": f"no data node with compute known from gossip (heard from {len(known)} peers)"}
    visited = [wire.node_name(x) for x in itin.segments[:itin.ptr + 1]]
    lap = itin.lap
    fresh = [n for n in cands if n not in visited]
    new_lap = not fresh
    if new_lap:
        lap += 1
        if lap >= itin.max_laps:
            return {**out, "end": EndReason.MAX_LAPS, "lap": lap,
                    "reason": f"every known data node visited, lap limit {itin.max_laps} reached"}
        visited = [here]  # the lap starts where the model is (a node is no candidate of its own)
        fresh = [n for n in cands if n != here] or list(cands)
    n_labels = max((len(s.label_hist) for s in cands.values()), default=0)
    need = _need(per_class, n_labels, required_labels)
    rows = []
    for n in sorted(cands, key=wire.node_id):
        s = cands[n]
        useful = sum(w * c for w, c in zip(need, s.label_hist))
        rtt = None if s.rtt_ms is None else RTT_STEP_MS * round(s.rtt_ms / RTT_STEP_MS)
        score = useful * s.capacity / (1 + (rtt or 0) / rtt_scale_ms)
        rows.append({"node": n, "samples": s.samples, "useful": round(useful, 2), "capacity": s.capacity,
                     "load": round(s.load, 3), "rtt_ms": rtt, "score": round(score, 3), "eligible": n in fresh})
    best = max((r for r in rows if r["eligible"]), key=lambda r: (r["score"], -wire.node_id(r["node"])))
    segments = ([wire.node_id(v) for v in visited] + [wire.node_id(best["node"])])[-MAX_SEGMENTS:]
    weak = [lab for lab, w in sorted(enumerate(need), key=lambda x: -x[1])[:3] if w > 0]
    reason = (f"{best['node']}: best score {best['score']:.1f} of {len(fresh)} unvisited candidates"
              f"{' (new lap)' if new_lap else ''}; {best['useful']:.0f} need-weighted samples"
              f" (weakest labels {weak}), capacity {best['capacity']:g}, rtt {best['rtt_ms']} ms")
    return {**out, "end": None, "chosen": best["node"], "lap": lap, "candidates": rows, "reason": reason,
            "itinerary": wire.Itinerary(len(segments) - 1, lap, itin.max_laps, segments)}


class Autonomous(Walk):
    """AATS: the model steers itself from its header and the holder's gossip knowledge."""

    name = "autonomous"

    def __init__(self, rt, go_file):
        super().__init__(rt, go_file)
        self.gossip = Gossip(rt, float(self.opts.get("gossip_interval_s", 1.0)),
                             int(self.opts.get("gossip_fanout", 3)))
        self.max_age = float(self.opts.get("max_age_s", 5.0))
        self.rtt_scale = float(self.opts.get("rtt_scale_ms", 200.0))
        self.wait_s = float(self.opts.get("wait_knowledge_s", 10.0))

    def heard(self, m: Message):
        if m.src:
            self.gossip.learn(wire.node_name(m.src), m.body)

    def threads(self) -> list[threading.Thread]:
        return [threading.Thread(target=self.gossip.loop, args=(self.summary,), daemon=True, name="gossip")]

    def mpvu(self) -> str:
        """The MPVU as gossip names it (Role.MPVU); the spec's while gossip has not yet."""
        heard = [n for n, s in self.gossip.view(self.max_age).items() if s.roles & wire.Role.MPVU]
        return sorted(heard, key=wire.node_id)[0] if heard else self.rt.cfg.mpvu

    def prepare(self):
        """At the client, before the first decision: until every host of the address book
        was heard from, or for ``wait_knowledge_s`` (then it decides with what it knows)."""
        want = set(self.gossip.peers)
        give_up = time.time() + self.wait_s

        def ready():
            return want <= set(self.gossip.view(self.max_age)) or time.time() >= give_up

        with self.gossip.changed:
            while not ready() and not self.rt.stopping.is_set():
                self.gossip.changed.wait(0.2)

    def route(self, first, itin, accuracy, per_class):
        rt = self.rt
        hop = first.hop_count + (0 if itin is None else 1)  # trainings so far, this stop's included
        itin = first.tlvs[Tlv.ITINERARY] if itin is None else itin  # at the client: nothing visited
        d = aats_decide(rt.name, task=first.task_id, hop=hop, accuracy=accuracy, per_class=per_class,
                        target=first.tlvs[Tlv.TARGET_ACCURACY], deadline_s=first.tlvs[Tlv.DEADLINE] / 1000,
                        max_hops=first.tlvs.get(Tlv.MAX_HOPS, self.max_hops),
                        itin=itin, required_labels=first.tlvs.get(Tlv.REQUIRED_LABELS),
                        known=self.gossip.view(self.max_age), rtt_scale_ms=self.rtt_scale, now=time.time())
        nitin = d.pop("itinerary")
        end = d["end"]
        rt.event("aats_decision", **{**d, "end": None if end is None else end.name.lower(),
                                     "visited": [wire.node_name(x) for x in itin.segments[:itin.ptr + 1]]})
        return (nitin if nitin is not None else itin), end, d["reason"]


# ---- one host trains or aggregates (centralized, federated averaging) ---------------

class ServerClient(ModeClient):
    """A client whose task one server host carries out: itself, or another host it sends
    the initial model to (MODEL_CHUNK with a one-segment itinerary naming the server)."""

    def run_task(self, task: dict):
        rt = self.rt
        tid, t0, state, deadline_ms, tlvs = self.submit(task)
        server = self.mode.server_of(task)
        head = Message(MT.MODEL_CHUNK, task_id=tid, model_id=tid,
                       tlvs={**tlvs, Tlv.ITINERARY: wire.Itinerary(0, 0, 1, [wire.node_id(server)]),
                             Tlv.PARTIES: wire.Parties(rt.node, wire.node_id(rt.cfg.mpvu))})
        if server != rt.name:
            return self.hand_over(t0, deadline_ms, head, state, f"the {self.mode.name} server")
        try:
            res, final = self.mode.serve(head, state)
        except (TransferError, WireError) as e:  # e.g. the MPVU unreachable: the task fails, said why
            rt.event("error", task=tid, error=f"{type(e).__name__}: {e}")
            return self._finish(tid, t0, f"error: {e}", None, None)
        with self.done:
            self.results[tid], self.states[tid] = res, final
        return self._finish(tid, t0, self.mode.end_reason(res), res.tlvs.get(Tlv.ACCURACY), res)


class ServerMode(NodeMode):
    """Baselines in which one server host trains (centralized) or aggregates (fedavg)."""

    def __init__(self, rt, go_file):
        super().__init__(rt, go_file)
        self.lock = threading.Condition()

    def role_classes(self) -> dict:
        return {"client": functools.partial(ServerClient, mode=self)}

    def server_of(self, task: dict) -> str:
        return self.opts.get("server") or task["client"]

    @staticmethod
    def _is_task_to_serve(m: Message) -> bool:
        itin = m.tlvs.get(Tlv.ITINERARY)
        return m.type == MT.MODEL_CHUNK and itin is not None and len(itin.segments) == 1

    def on_model(self, first: Message, state: bytes, peer: str):
        if self._is_task_to_serve(first):  # a client's task, carried out here
            threading.Thread(target=self._serve_for_client, args=(first, state), daemon=True,
                             name=f"serve-{first.task_id}").start()
            return None
        return super().on_model(first, state, peer)

    def _serve_for_client(self, first: Message, state: bytes):
        try:
            res, final = self.serve(first, state)
            self.rt.send_model(first.require(Tlv.PARTIES).client, res, final)
        except Exception as e:  # the client would wait for nothing otherwise
            log.exception("serving task %d failed", first.task_id)
            self.rt.event("error", task=first.task_id, error=f"{type(e).__name__}: {e}")

    def serve(self, first: Message, state: bytes) -> tuple[Message, bytes]:
        """Carry out the task -> (TASK_RESULT for the client, the final model)."""
        raise NotImplementedError

    def _result(self, first: Message, end: EndReason, why: str, acc, hop: int, version: int,
                state: bytes) -> tuple[Message, bytes]:
        self.rt.event("task_end", task=first.task_id, reason=end.name.lower(), accuracy=acc, hop=hop, by=why)
        tlvs = {**_task_tlvs(first), Tlv.END_REASON: end, Tlv.MODEL_DIGEST: bytes.fromhex(state_digest(state))}
        if acc is not None:
            tlvs[Tlv.ACCURACY] = acc
        return Message(MT.TASK_RESULT, hop_count=hop, task_id=first.task_id, model_id=first.model_id,
                       model_version=version, tlvs=tlvs), state

    def _rounds(self, first: Message, state: bytes, limit: int, one_round) -> tuple[Message, bytes]:
        """``one_round(r, model, parent_sha256) -> state`` trains or aggregates ``model`` in
        place and records it; each round's model is verified, until the target, the
        deadline or ``limit`` rounds."""
        cfg, rt = self.rt.cfg, self.rt
        model = _model(cfg)
        bytes_to_state(model, state)
        target, deadline = first.tlvs[Tlv.TARGET_ACCURACY], first.tlvs[Tlv.DEADLINE] / 1000
        parent, acc = state_digest(state), None
        for r in range(1, limit + 1):
            state = one_round(r, model, parent)
            parent = state_digest(state)
            acc = _verify(rt, first, state, r, r).accuracy
            end, why = _end(acc, target, deadline, time.time(), r, limit, self.limit_unit)
            if end is not None:
                return self._result(first, end, why, acc, r, r, state)
        return self._result(first, EndReason.MAX_LAPS, f"{self.limit_unit} limit {limit} reached", acc,
                            limit, limit, state)


def privacy_forbids(opts: dict, name: str, to: str) -> str | None:
    """Why ``name``'s privacy level forbids its raw data going to ``to`` (None: it allows it)."""
    p = opts.get("privacy", "trusted")
    if p == "local":
        return f"{name} has privacy 'local': its raw data may not leave it"
    if p == "trusted" and to not in (opts.get("trusts") or []):
        return f"{name} has privacy 'trusted' and does not trust {to} (hosts.{name}.trusts)"
    return None


class Centralized(ServerMode):
    """The data-centre baseline: raw shards to one server, which trains on the pool."""

    name = "centralized"
    limit_unit = "epoch"

    def __init__(self, rt, go_file):
        super().__init__(rt, go_file)
        self.pool: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # node -> its shard, at the server

    def takes(self, m: Message) -> bool:
        return (super().takes(m) or m.type == MT.TRAIN_REQUEST or self._is_task_to_serve(m)
                or (m.type == MT.DATA_SHARD and m.task_id != 0))

    # -- at a data node: the server asks for our shard
    def on_control(self, m: Message, peer: str) -> Message:
        if m.type != MT.TRAIN_REQUEST:
            return super().on_control(m, peer)
        dn, rt = self.roles.get("data"), self.rt
        if dn is None or not len(dn.y):
            return Message(MT.ERROR, flags=wire.REPLY, task_id=m.task_id,
                           body=wire.Error(6, f"{rt.name} holds no data"))
        server = wire.node_name(m.src)
        forbids = privacy_forbids(dn.opts, rt.name, server)
        if forbids and self.opts.get("respect_privacy"):
            rt.event("data_withheld", task=m.task_id, to=server, privacy=dn.opts["privacy"], reason=forbids)
            return Message(MT.ERROR, flags=wire.REPLY, task_id=m.task_id, body=wire.Error(7, forbids))
        threading.Thread(target=self._ship, args=(m.task_id, server, forbids), daemon=True, name="ship").start()
        return Message(MT.ACK, flags=wire.REPLY, task_id=m.task_id, body=wire.Ack(0, wire.AckStatus.OK))

    def _ship(self, task: int, server: str, forbids: str | None):
        dn, rt = self.roles["data"], self.rt
        with dn.lock:
            X, y = dn.X, dn.y
        buf = io.BytesIO()
        np.savez(buf, X=X, y=y)
        data = buf.getvalue()
        try:
            rt.send_model(wire.node_id(server), Message(MT.DATA_SHARD, task_id=task, model_id=task), data)
        except TransferError as e:
            rt.event("error", task=task, error=f"shipping the shard to {server} failed: {e}")
            return
        rt.event("raw_data_transfer", task=task, to=server, bytes=len(data), samples=int(len(y)),
                 reason=f"centralized: every shard goes to the server {server}", privacy=dn.opts["privacy"],
                 privacy_violation=forbids is not None)
        if forbids:
            rt.event("privacy_violation", task=task, node=rt.name, to=server, privacy=dn.opts["privacy"],
                     reason=forbids, bytes=len(data))

    # -- at the server
    def on_model(self, first: Message, state: bytes, peer: str):
        if first.type != MT.DATA_SHARD:
            return super().on_model(first, state, peer)
        with np.load(io.BytesIO(state), allow_pickle=False) as z:
            X, y = z["X"].astype(np.float32, copy=False), z["y"].astype(np.int64, copy=False)
        with self.lock:
            self.pool[wire.node_name(first.src)] = (X, y)
            self.lock.notify_all()
        self.rt.event("shard_received", task=first.task_id, owner=wire.node_name(first.src), samples=int(len(y)))
        return None

    def _gather(self, first: Message, state: bytes) -> list[str]:
        """Ask every data node for its shard; wait for those that agreed -> the nodes pooled."""
        rt, tid = self.rt, first.task_id
        own = self.roles.get("data")
        if own is not None and "data" in rt.cfg.roles:
            with self.lock:
                self.pool.setdefault(rt.name, (own.X, own.y))  # ours: no network
        expected = []
        for dn in rt.cfg.data_nodes:
            if dn in self.pool:
                expected.append(dn)
                continue
            req = Message(MT.TRAIN_REQUEST, task_id=tid, model_id=tid, tlvs={Tlv.PARTIES: first.tlvs[Tlv.PARTIES]},
                          body=wire.TrainRequest(len(state)))
            try:
                ans = rt.request(wire.node_id(dn), req, timeout=10)
            except TransferError as e:
                rt.event("warning", task=tid, text=f"{dn} did not answer the request for its data: {e}")
                continue
            if ans.type == MT.ERROR:
                rt.event("data_refused", task=tid, node=dn, reason=ans.body.text)
                continue
            expected.append(dn)
        deadline = first.tlvs[Tlv.DEADLINE] / 1000
        with self.lock:
            self.lock.wait_for(lambda: all(d in self.pool for d in expected) or self.rt.stopping.is_set(),
                               timeout=max(0.0, deadline - time.time()))
            got = [d for d in expected if d in self.pool]
        rt.event("data_pooled", task=tid, nodes=got, missing=sorted(set(expected) - set(got)),
                 samples=int(sum(len(self.pool[d][1]) for d in got)))
        return got

    def serve(self, first, state):
        rt, cfg, tr = self.rt, self.rt.cfg, self.rt.cfg.training
        nodes = self._gather(first, state)
        if not nodes:
            return self._result(first, EndReason.INFEASIBLE, "no data node's shard reached the server", None, 0, 0,
                                state)
        X = np.concatenate([self.pool[n][0] for n in nodes])
        y = np.concatenate([self.pool[n][1] for n in nodes])
        capacity = float(_options(cfg)["capacity"])

        def epoch(r, model, parent):
            stats = train_local(model, X, y, epochs=tr["local_epochs"], batch_size=tr["batch_size"], lr=tr["lr"],
                                momentum=tr["momentum"], seed=cfg.seed * 1000 + r, capacity=capacity)
            new = state_to_bytes(model)
            _train_event(rt, "train", first.task_id, r, r, stats, capacity, state_digest(new), parent,
                         pooled_from=nodes)
            return new

        return self._rounds(first, state, int(self.opts.get("max_epochs", 50)), epoch)


class FedAvgDataNode(DataNode):
    """A FedAvg participant: a visit is one round, training the global model on our data
    and sending it back to the server (the itinerary's next and last segment)."""

    def __init__(self, rt: NodeRuntime, load, mode: "FedAvg"):
        super().__init__(rt, load)
        self.mode = mode

    def visit(self, first: Message, state: bytes):
        rt, cfg = self.rt, self.rt.cfg
        tr, r = cfg.training, first.model_version + 1
        model = _model(cfg)
        bytes_to_state(model, state)
        with self.lock:
            X, y = self.X, self.y
        stats = train_local(model, X, y, epochs=int(self.mode.opts.get("local_epochs") or tr["local_epochs"]),
                            batch_size=tr["batch_size"], lr=tr["lr"], momentum=tr["momentum"],
                            seed=cfg.seed * 1000 + r, capacity=self.capacity)
        self.load.add(stats["seconds"])
        new = state_to_bytes(model)
        _train_event(rt, "local_train", first.task_id, r, r, stats, self.capacity, state_digest(new),
                     state_digest(state), round=r)
        itin = first.require(Tlv.ITINERARY)
        back = wire.Itinerary(itin.ptr + 1, 0, 1, list(itin.segments))
        rt.send_model(itin.segments[-1], Message(MT.MODEL_CHUNK, hop_count=r, task_id=first.task_id,
                                                 model_id=first.model_id, model_version=r,
                                                 tlvs={**_task_tlvs(first), Tlv.ITINERARY: back}), new)


class FedAvg(ServerMode):
    """Federated averaging: the server sends the global model to the round's data nodes,
    each trains ``local_epochs`` on its own data and sends it back (MODEL_CHUNK with the
    two-segment itinerary [data node, server]); the server averages the parameters
    weighted by the nodes' sample counts (from their summaries) and has the MPVU verify."""

    name = "fedavg"
    limit_unit = "round"

    def __init__(self, rt, go_file):
        super().__init__(rt, go_file)
        self.updates: dict[tuple[int, int], dict[str, bytes]] = {}  # (task, round) -> node -> state

    def role_classes(self) -> dict:
        return {**super().role_classes(), "data": functools.partial(FedAvgDataNode, mode=self)}

    @staticmethod
    def _is_update(m: Message) -> bool:
        itin = m.tlvs.get(Tlv.ITINERARY)
        return m.type == MT.MODEL_CHUNK and itin is not None and itin.ptr == len(itin.segments) - 1 > 0

    def takes(self, m: Message) -> bool:
        # a round's model for our data goes to the data node (FedAvgDataNode), as a visit would
        return super().takes(m) or self._is_task_to_serve(m) or self._is_update(m)

    def on_model(self, first: Message, state: bytes, peer: str):
        if not self._is_update(first):
            return super().on_model(first, state, peer)
        with self.lock:  # a data node's model, back at the server
            self.updates.setdefault((first.task_id, first.model_version), {})[wire.node_name(first.src)] = state
            self.lock.notify_all()
        return None

    def _participants(self, first: Message) -> dict[str, int]:
        """Data nodes with compute and their sample counts (FedAvg's weights), from
        their summaries (KNOWLEDGE_REPORT exchanged node to node)."""
        out = {}
        for dn in self.rt.cfg.data_nodes:
            if dn == self.rt.name:
                kr = self.summary()
            else:
                try:
                    kr, _, _ = exchange_summary(self.rt, dn, self.summary())
                except TransferError as e:
                    self.rt.event("warning", task=first.task_id, text=f"no summary from {dn}: {e}")
                    continue
            if kr.samples > 0 and kr.capacity > 0:
                out[dn] = int(kr.samples)
        return out

    def serve(self, first, state):
        rt, cfg, tid = self.rt, self.rt.cfg, first.task_id
        weights = self._participants(first)
        if not weights:
            return self._result(first, EndReason.INFEASIBLE, "no data node with compute answered", None, 0, 0, state)
        pool = sorted(weights, key=wire.node_id)
        k = min(int(self.opts.get("clients_per_round") or len(pool)), len(pool))
        timeout = float(self.opts.get("round_timeout_s", 60.0))

        def one_round(r, model, parent):
            t0 = time.time()
            chosen = sorted(random.Random(f"{cfg.seed}/{tid}/{r}").sample(pool, k), key=wire.node_id)
            sent_state = state_to_bytes(model)

            def send(dn):
                m = Message(MT.MODEL_CHUNK, hop_count=r - 1, task_id=tid, model_id=first.model_id,
                            model_version=r - 1,
                            tlvs={**_task_tlvs(first),
                                  Tlv.ITINERARY: wire.Itinerary(0, 0, 1, [wire.node_id(dn), rt.node])})
                try:
                    rt.send_model(wire.node_id(dn), m, sent_state)
                except TransferError as e:
                    log.warning("round %d: %s", r, e)

            senders = [threading.Thread(target=send, args=(dn,), daemon=True) for dn in chosen]
            for th in senders:
                th.start()
            with self.lock:
                self.lock.wait_for(lambda: set(chosen) <= set(self.updates.get((tid, r), {}))
                                   or rt.stopping.is_set(), timeout=timeout)
                got = dict(self.updates.pop((tid, r), {}))
            for th in senders:
                th.join(timeout=1)
            if not got:
                raise TransferError(f"round {r}: no data node sent its model back within {timeout:g} s")
            total = sum(weights[n] for n in got)
            avg = {name: torch.zeros_like(p) for name, p in model.state_dict().items()}
            for n in sorted(got, key=wire.node_id):  # a fixed order: float sums are replayable
                local = _model(cfg)
                s = got[n]
                bytes_to_state(local, s)
                for name, p in local.state_dict().items():
                    avg[name] += p * (weights[n] / total)
            model.load_state_dict(avg)
            new = state_to_bytes(model)
            rt.event("fedavg_round", task=tid, round=r, chosen=chosen, received=sorted(got, key=wire.node_id),
                     weights={n: weights[n] for n in got}, seconds=round(time.time() - t0, 4))
            rt.event("train", task=tid, hop=r, lap=0, version=r, samples=total, loss=None,
                     seconds=round(time.time() - t0, 4), capacity=None, sha256=state_digest(new),
                     parent_sha256=parent, aggregated_from={n: state_digest(s) for n, s in got.items()})
            return new

        return self._rounds(first, state, int(self.opts.get("rounds", 50)), one_round)
