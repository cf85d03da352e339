"""Node roles of the DA-ITN terminal layer: data node, MPVU, client.

Each role is a small class over :class:`nodes.runtime.NodeRuntime`. The model
travels as a MODEL message whose metadata carries the task's requirements and
its itinerary as a segment list with a pointer (DESIGN.md §6): every data node
trains it locally, has the MPVU verify it, then forwards it to the next
segment, or returns it to the client when the target or deadline is met.
Raw training samples never leave the data node that holds them.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
import time

import torch

from nodes import protocol as proto
from nodes.data import label_histogram, load_digits_split, make_shards
from nodes.model import build_mlp, bytes_to_state, evaluate, state_digest, state_to_bytes, train_local
from nodes.runtime import NodeRuntime, TransferError

log = logging.getLogger("daitn.node")
MT = proto.MsgType


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
        return {"samples": int(len(self.shard.y)), "label_hist": label_histogram(self.shard.y)}

    def on_message(self, msg: proto.Message, peer: str):
        if msg.type != MT.MODEL:
            return None
        self.work.put(msg)  # train after acknowledging, so the sender is not held
        return proto.Message.control(MT.ACK, {"received": len(msg.payload)}, msg.task_id, msg.seq)

    def worker(self):
        while not self.rt.stopping.is_set():
            try:
                msg = self.work.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                self.visit(msg)
            except Exception as e:  # the model would be lost silently otherwise
                log.exception("visit failed")
                self.rt.event("error", task=msg.task_id, error=f"{type(e).__name__}: {e}")

    def visit(self, msg: proto.Message):
        cfg, rt = self.rt.cfg, self.rt
        meta, state = msg.model_parts()
        model = _model(cfg)
        bytes_to_state(model, state)
        tr = cfg.training
        hop = meta["hop"] + 1
        stats = train_local(model, self.shard.X, self.shard.y, epochs=tr["local_epochs"],
                            batch_size=tr["batch_size"], lr=tr["lr"], momentum=tr["momentum"],
                            seed=cfg.seed * 1000 + hop)
        state = state_to_bytes(model)
        meta.update(hop=hop, version=meta["version"] + 1, sha256=state_digest(state),
                    parent_sha256=meta["sha256"], trained_at=rt.name)
        rt.event("train", task=msg.task_id, hop=hop, lap=meta["lap"], version=meta["version"],
                 samples=stats["samples"], loss=stats["loss"], seconds=stats["seconds"],
                 sha256=meta["sha256"])
        verdict = rt.send_model(cfg.mpvu, proto.Message.with_model(MT.EVAL_REQUEST, meta, state,
                                                                   msg.task_id, hop)).body()
        acc = verdict["accuracy"]
        rt.event("evaluation", task=msg.task_id, hop=hop, at=rt.name, by=cfg.mpvu, accuracy=acc,
                 loss=verdict["loss"], version=meta["version"])
        meta["accuracy"] = acc
        end = None
        if acc >= meta["target_accuracy"]:
            end = "target_reached"
        elif time.time() >= meta["deadline"]:
            end = "deadline"
        else:
            ptr, lap = meta["ptr"] + 1, meta["lap"]
            if ptr >= len(meta["itinerary"]):
                ptr, lap = 0, lap + 1
            if lap >= meta["max_laps"]:
                end = "max_laps"
            else:
                meta.update(ptr=ptr, lap=lap)
                nxt = meta["itinerary"][ptr]
                rt.event("forward", task=msg.task_id, to=nxt, ptr=ptr, lap=lap,
                         reason=f"next segment {ptr} of {meta['itinerary']} (lap {lap})")
                rt.send_model(nxt, proto.Message.with_model(MT.MODEL, meta, state, msg.task_id, hop))
                return
        meta["end_reason"] = end
        rt.event("task_end", task=msg.task_id, reason=end, accuracy=acc, hop=hop)
        rt.send_model(meta["client"], proto.Message.with_model(MT.TASK_RESULT, meta, state,
                                                               msg.task_id, hop))


class MPVU:
    """Model performance verification unit: evaluates models on held-out data."""

    def __init__(self, rt: NodeRuntime):
        self.rt = rt
        cfg = rt.cfg
        _, _, self.X, self.y = load_digits_split(cfg.data["verification_fraction"], cfg.seed)
        warm_up(cfg)
        rt.event("verification_set", samples=len(self.y), label_hist=label_histogram(self.y))

    def knowledge(self) -> dict:
        return {"samples": 0, "verification_samples": int(len(self.y))}

    def on_message(self, msg: proto.Message, peer: str):
        if msg.type != MT.EVAL_REQUEST:
            return None
        meta, state = msg.model_parts()
        model = _model(self.rt.cfg)
        bytes_to_state(model, state)
        v = evaluate(model, self.X, self.y)
        self.rt.event("verdict", task=msg.task_id, version=meta["version"], accuracy=v["accuracy"],
                      loss=v["loss"], samples=v["samples"], sha256=meta["sha256"])
        return proto.Message.control(MT.EVAL_VERDICT, v, msg.task_id, msg.seq)


class Client:
    """Submits training tasks to the DCC and waits for the trained model."""

    def __init__(self, rt: NodeRuntime):
        self.rt = rt
        self.results: dict[int, dict] = {}
        self.done = threading.Condition()

    def knowledge(self) -> dict:
        return {"samples": 0}

    def on_message(self, msg: proto.Message, peer: str):
        if msg.type != MT.TASK_RESULT:
            return None
        meta, _state = msg.model_parts()
        with self.done:
            self.results[msg.task_id] = meta
            self.done.notify_all()
        return proto.Message.control(MT.ACK, {"received": len(msg.payload)}, msg.task_id, msg.seq)

    def run_task(self, task: dict):
        rt, cfg = self.rt, self.rt.cfg
        tid = task["id"]
        t0 = time.time()
        req = {"model_bytes": None, "target_accuracy": task["target_accuracy"],
               "deadline_s": task["deadline_s"], "required_labels": task.get("required_labels")}
        model = _model(cfg)
        state = state_to_bytes(model)
        req["model_bytes"] = len(state)
        rt.event("task_submitted", task=tid, **req)
        try:
            answer = rt.dcc_request(proto.Message.control(MT.TRAIN_REQUEST, req, task_id=tid),
                                    MT.ITINERARY).body()
        except TransferError as e:
            return self._finish(tid, t0, {"end_reason": f"dcc_unreachable: {e}", "accuracy": None})
        rt.event("itinerary_received", task=tid, itinerary=answer["itinerary"],
                 feasible=answer["feasible"], reasons=answer["reasons"])
        if not answer["feasible"] or not answer["itinerary"]:
            return self._finish(tid, t0, {"end_reason": "infeasible: " + "; ".join(answer["reasons"]),
                                          "accuracy": None})
        meta = {"task": tid, "target_accuracy": task["target_accuracy"],
                "deadline": t0 + task["deadline_s"], "itinerary": answer["itinerary"], "ptr": 0,
                "lap": 0, "max_laps": task["max_laps"], "client": rt.name, "hop": 0, "version": 0,
                "sha256": state_digest(state)}
        first = answer["itinerary"][0]
        rt.event("forward", task=tid, to=first, ptr=0, lap=0, reason="first segment")
        try:
            rt.send_model(first, proto.Message.with_model(MT.MODEL, meta, state, tid, 0))
        except TransferError as e:
            return self._finish(tid, t0, {"end_reason": f"transfer_failed: {e}", "accuracy": None})
        grace = 60.0  # a hop in flight at the deadline still reports back
        with self.done:
            self.done.wait_for(lambda: tid in self.results, timeout=max(0.0, meta["deadline"] - time.time()) + grace)
        res = self.results.get(tid) or {"end_reason": "no result before deadline + grace", "accuracy": None}
        return self._finish(tid, t0, res)

    def _finish(self, tid: int, t0: float, res: dict):
        out = {"task": tid, "end_reason": res.get("end_reason"), "accuracy": res.get("accuracy"),
               "hops": res.get("hop"), "version": res.get("version"), "sha256": res.get("sha256"),
               "seconds": time.time() - t0}
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

    def handler(msg, peer, _conn):
        for r in roles.values():
            reply = r.on_message(msg, peer)
            if reply is not None:
                return reply
        return proto.Message.control(MT.ERROR, {"error": f"{cfg.name} takes no {msg.type.name}"},
                                     msg.task_id, msg.seq)

    def knowledge():
        k = {"roles": sorted(roles)}
        for r in roles.values():
            for key, v in r.knowledge().items():
                k[key] = max(k.get(key, 0), v) if isinstance(v, int) else v
        return k

    threads = [threading.Thread(target=rt.serve, args=(handler,), daemon=True, name="serve"),
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
        rt.stopping.set()
        return 0
    rt.stopping.wait()
    return 0
