"""Node roles of the DA-ITN terminal layer: data node, MPVU, client.

Each role is a small class over :class:`nodes.runtime.NodeRuntime`. The model
travels as an AI object: MODEL_CHUNK messages whose TLVs carry the task's
requirements (target accuracy, deadline), its parties (client, MPVU), the
DCC-assigned DSCP, and its itinerary as a segment list with a pointer
(docs/protocol.md). Every data node trains the model locally, has the MPVU
verify it, then forwards it to the next segment, or returns it to the client
when the target, the deadline or the lap limit is reached. Raw training
samples never leave the data node that holds them.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
import time

import torch

from nodes import wire
from nodes.data import label_histogram, load_digits_split, make_shards
from nodes.model import build_mlp, bytes_to_state, evaluate, state_digest, state_to_bytes, train_local
from nodes.runtime import NodeRuntime, TransferError
from nodes.wire import EndReason, Message, MsgType, Role, Tlv

log = logging.getLogger("daitn.node")
MT = MsgType


def _partition(cfg) -> dict:
    d = cfg.data
    return {"kind": d["partition"], "alpha": d["alpha"], "min_size": d["min_samples_per_node"],
            "verification_fraction": d["verification_fraction"]}


def _model(cfg):
    return build_mlp(hidden=tuple(cfg.model["hidden"]), seed=cfg.seed)


def warm_up(cfg):
    """Pay torch's first-use cost (~1.7 s per forked process) at start-up,
    not inside the first hop where it would distort time-to-target."""
    m = _model(cfg)
    X = torch.zeros((2, 64)).numpy()
    train_local(m, X, torch.zeros(2, dtype=torch.long).numpy(), epochs=1, batch_size=2)
    bytes_to_state(m, state_to_bytes(m))


class DataNode:
    """Holds one non-IID shard; trains visiting models on it; forwards them on."""

    def __init__(self, rt: NodeRuntime):
        self.rt = rt
        cfg = rt.cfg
        shards, _, _ = make_shards(cfg.data_nodes, _partition(cfg), cfg.seed)
        self.shard = shards[cfg.name]
        del shards  # only our own partition stays in this process
        self.work: queue.Queue = queue.Queue()
        warm_up(cfg)
        self.rt.event("data_loaded", samples=len(self.shard.y),
                      label_hist=label_histogram(self.shard.y))

    def knowledge(self) -> dict:
        return {"roles": Role.DATA, "samples": int(len(self.shard.y)),
                "label_hist": label_histogram(self.shard.y)}

    def on_model(self, first: Message, state: bytes, peer: str):
        self.work.put((first, state))  # train after acknowledging, so the sender is not held
        return None  # plain ACK

    def worker(self):
        while not self.rt.stopping.is_set():
            try:
                first, state = self.work.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                self.visit(first, state)
            except Exception as e:  # the model would be lost silently otherwise
                log.exception("visit failed")
                self.rt.event("error", task=first.task_id, error=f"{type(e).__name__}: {e}")

    def visit(self, first: Message, state: bytes):
        cfg, rt = self.rt.cfg, self.rt
        itin = first.require(Tlv.ITINERARY)
        target = first.require(Tlv.TARGET_ACCURACY)
        deadline = first.require(Tlv.DEADLINE) / 1000
        parties = first.require(Tlv.PARTIES)
        parent = first.require(Tlv.MODEL_DIGEST).hex()
        model = _model(cfg)
        bytes_to_state(model, state)
        tr = cfg.training
        hop = first.hop_count + 1
        version = first.model_version + 1
        stats = train_local(model, self.shard.X, self.shard.y, epochs=tr["local_epochs"],
                            batch_size=tr["batch_size"], lr=tr["lr"], momentum=tr["momentum"],
                            seed=cfg.seed * 1000 + hop)
        state = state_to_bytes(model)
        digest = state_digest(state)
        rt.event("train", task=first.task_id, hop=hop, lap=itin.lap, version=version,
                 samples=stats["samples"], loss=stats["loss"], seconds=stats["seconds"],
                 sha256=digest, parent_sha256=parent)
        common = {Tlv.TARGET_ACCURACY: target, Tlv.DEADLINE: first.tlvs[Tlv.DEADLINE],
                  Tlv.PARTIES: parties}
        if Tlv.TRANSPORT in first.tlvs:
            common[Tlv.TRANSPORT] = first.tlvs[Tlv.TRANSPORT]

        def msg(mtype, extra=None):
            return Message(mtype, hop_count=hop, task_id=first.task_id, model_id=first.model_id,
                           model_version=version, tlvs={**common, **(extra or {})})

        verdict = rt.send_model(parties.mpvu, msg(MT.EVAL_REQUEST), state)
        if verdict.type != MT.EVAL_VERDICT:
            raise TransferError(f"MPVU answered {MsgType(verdict.type).name}, not a verdict")
        acc = verdict.body.accuracy
        rt.event("evaluation", task=first.task_id, hop=hop, at=rt.name, by=wire.node_name(parties.mpvu),
                 accuracy=acc, loss=verdict.body.loss, version=version)
        end = None
        if acc >= target:
            end = EndReason.TARGET_REACHED
        elif time.time() >= deadline:
            end = EndReason.DEADLINE
        else:
            ptr, lap = itin.ptr + 1, itin.lap
            if ptr >= len(itin.segments):
                ptr, lap = 0, lap + 1
            if lap >= itin.max_laps:
                end = EndReason.MAX_LAPS
            else:
                nxt = itin.segments[ptr]
                nitin = wire.Itinerary(ptr, lap, itin.max_laps, list(itin.segments))
                names = [wire.node_name(n) for n in itin.segments]
                rt.event("forward", task=first.task_id, to=wire.node_name(nxt), ptr=ptr, lap=lap,
                         reason=f"next segment {ptr} of {names} (lap {lap})")
                rt.send_model(nxt, msg(MT.MODEL_CHUNK, {Tlv.ITINERARY: nitin, Tlv.ACCURACY: acc}), state)
                return
        rt.event("task_end", task=first.task_id, reason=end.name.lower(), accuracy=acc, hop=hop)
        rt.send_model(parties.client, msg(MT.TASK_RESULT, {Tlv.END_REASON: end, Tlv.ACCURACY: acc}), state)


class MPVU:
    """Model performance verification unit: evaluates models on held-out data."""

    def __init__(self, rt: NodeRuntime):
        self.rt = rt
        cfg = rt.cfg
        _, _, self.X, self.y = load_digits_split(cfg.data["verification_fraction"], cfg.seed)
        warm_up(cfg)
        rt.event("verification_set", samples=len(self.y), label_hist=label_histogram(self.y))

    def knowledge(self) -> dict:
        return {"roles": Role.MPVU, "verification_samples": int(len(self.y))}

    def on_model(self, first: Message, state: bytes, peer: str):
        model = _model(self.rt.cfg)
        bytes_to_state(model, state)
        v = evaluate(model, self.X, self.y)
        self.rt.event("verdict", task=first.task_id, version=first.model_version, accuracy=v["accuracy"],
                      loss=v["loss"], samples=v["samples"], sha256=state_digest(state))
        return Message(MT.EVAL_VERDICT, flags=wire.REPLY, task_id=first.task_id, model_id=first.model_id,
                       model_version=first.model_version, hop_count=first.hop_count,
                       body=wire.EvalVerdict(v["accuracy"], v["loss"], v["samples"], v["per_class_accuracy"]))


class Client:
    """Submits training tasks to the DCC and waits for the trained model."""

    def __init__(self, rt: NodeRuntime):
        self.rt = rt
        self.results: dict[int, Message] = {}
        self.done = threading.Condition()

    def knowledge(self) -> dict:
        return {"roles": Role.CLIENT}

    def on_model(self, first: Message, state: bytes, peer: str):
        with self.done:
            self.results[first.task_id] = first
            self.done.notify_all()
        return None

    def run_task(self, task: dict):
        rt, cfg = self.rt, self.rt.cfg
        tid = task["id"]
        t0 = time.time()
        model = _model(cfg)
        state = state_to_bytes(model)
        deadline_ms = int((t0 + task["deadline_s"]) * 1000)
        tlvs = {Tlv.TARGET_ACCURACY: task["target_accuracy"], Tlv.DEADLINE: deadline_ms}
        if task.get("required_labels"):
            tlvs[Tlv.REQUIRED_LABELS] = task["required_labels"]
        rt.event("task_submitted", task=tid, model_bytes=len(state), target_accuracy=task["target_accuracy"],
                 deadline_s=task["deadline_s"], required_labels=task.get("required_labels"))
        req = Message(MT.TRAIN_REQUEST, task_id=tid, model_id=tid, tlvs=tlvs,
                      body=wire.TrainRequest(len(state)))

        def answered(a):
            f = a.get(MT.FEASIBILITY)
            return f is not None and (not f.body.feasible or MT.ITINERARY in a)

        try:
            ans = rt.dcc_request(req, answered)
        except TransferError as e:
            return self._finish(tid, t0, f"dcc_unreachable: {e}", None, None)
        feas = ans[MT.FEASIBILITY].body
        plan = ans.get(MT.ITINERARY)
        names = [wire.node_name(n) for n in plan.tlvs[Tlv.ITINERARY].segments] if plan else []
        rt.event("itinerary_received", task=tid, itinerary=names, feasible=feas.feasible, reasons=feas.reasons)
        if not feas.feasible or not names:
            return self._finish(tid, t0, "infeasible: " + "; ".join(feas.reasons), None, None)
        itin = plan.tlvs[Tlv.ITINERARY]
        itin = wire.Itinerary(0, 0, task["max_laps"], list(itin.segments))
        first = Message(MT.MODEL_CHUNK, task_id=tid, model_id=tid, model_version=0, hop_count=0,
                        tlvs={**tlvs, Tlv.ITINERARY: itin, Tlv.PARTIES: plan.tlvs[Tlv.PARTIES],
                              Tlv.TRANSPORT: plan.tlvs.get(Tlv.TRANSPORT, 0)})
        rt.event("forward", task=tid, to=names[0], ptr=0, lap=0, reason="first segment")
        try:
            rt.send_model(itin.segments[0], first, state)
        except TransferError as e:
            return self._finish(tid, t0, f"transfer_failed: {e}", None, None)
        grace = 60.0  # a hop in flight at the deadline still reports back
        with self.done:
            self.done.wait_for(lambda: tid in self.results,
                               timeout=max(0.0, deadline_ms / 1000 - time.time()) + grace)
        res = self.results.get(tid)
        if res is None:
            return self._finish(tid, t0, "no result before deadline + grace", None, None)
        end = EndReason(res.tlvs[Tlv.END_REASON]).name.lower()
        return self._finish(tid, t0, end, res.tlvs.get(Tlv.ACCURACY), res)

    def _finish(self, tid: int, t0: float, end: str, accuracy, res: Message | None):
        out = {"task": tid, "end_reason": end, "accuracy": accuracy,
               "hops": res.hop_count if res else None, "version": res.model_version if res else None,
               "sha256": res.tlvs[Tlv.MODEL_DIGEST].hex() if res else None, "seconds": time.time() - t0}
        self.rt.event("task_result", **out)
        path = self.rt.cfg.run_dir / "results" / f"task-{tid}.json"
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(out, indent=1))
        tmp.rename(path)
        return out


def run_node(rt: NodeRuntime, go_file) -> int:
    """Start the roles of this host and serve until stopped (clients stop when done)."""
    cfg = rt.cfg
    torch.set_num_threads(int(cfg.training["torch_threads"]))
    roles = {}
    if "data" in cfg.roles:
        roles["data"] = DataNode(rt)
    if "mpvu" in cfg.roles:
        roles["mpvu"] = MPVU(rt)
    if "client" in cfg.roles:
        roles["client"] = Client(rt)

    # which role takes which model-bearing message
    by_type = {MT.MODEL_CHUNK: roles.get("data"), MT.EVAL_REQUEST: roles.get("mpvu"),
               MT.TASK_RESULT: roles.get("client")}

    def on_model(first, state, peer):
        role = by_type.get(first.type)
        if role is None:
            raise wire.WireError(f"{cfg.name} takes no {MsgType(first.type).name}")
        return role.on_model(first, state, peer)

    def knowledge():
        k = wire.KnowledgeReport()
        for r in roles.values():
            v = r.knowledge()
            k.roles |= int(v.get("roles", 0))
            k.samples = max(k.samples, v.get("samples", 0))
            k.verification_samples = max(k.verification_samples, v.get("verification_samples", 0))
            k.label_hist = v.get("label_hist", k.label_hist)
        return k

    threads = [threading.Thread(target=rt.serve, args=(on_model,), daemon=True, name="serve"),
               threading.Thread(target=rt.report_loop, args=(knowledge,), daemon=True, name="report")]
    if "data" in roles:
        threads.append(threading.Thread(target=roles["data"].worker, daemon=True, name="train"))
    for t in threads:
        t.start()
    rt.event("node_started", roles=sorted(roles), ip=cfg.ip)
    if "client" in roles:
        while not go_file.exists():  # the runner says go once the DCC knows every data node
            if rt.stopping.wait(0.1):
                return 1
        for task in cfg.tasks:
            if task["client"] == cfg.name:
                roles["client"].run_task(task)
        # The result arrived before our ACK went out; when this client exits the
        # launcher stops every node, so let the sender read the ACK first (else,
        # under loss, its last transfer could go unrecorded).
        if not rt.wait_idle(30):
            rt.event("warning", text="connections still open 30 s after the last task ended")
        rt.stopping.set()
        return 0
    rt.stopping.wait()
    # Stopping (SIGTERM from the launcher once the clients are done): let a visit
    # in progress finish its send - its peer may still owe us an ACK that TCP is
    # retransmitting - and our own replies go out, so no transfer goes unrecorded.
    for t in threads:
        if t.name == "train":
            t.join(timeout=30)
    rt.wait_idle(10)
    return 0
