"""Node roles of the DA-ITN terminal layer: data node, compute node, MPVU,
inference server, client.

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

import collections
import io
import json
import logging
import queue
import threading
import time

import torch

from nodes import wire
import numpy as np

from nodes.data import label_histogram, load_dataset, make_shards, noisy_histogram, verification_set
from nodes.model import build_mlp, bytes_to_state, evaluate, state_digest, state_to_bytes, train_local
from nodes.runtime import NodeRuntime, TransferError
from nodes.wire import EndReason, Message, MsgType, Role, Tlv
from controllers.submissions import task_from_handoff  # the hand-off's two sides live together

log = logging.getLogger("daitn.node")
MT = MsgType


def _model(cfg):
    dims = getattr(cfg, "dims", None) or {"in_features": 64, "n_classes": 10}
    return build_mlp(in_features=dims["in_features"], n_classes=dims["n_classes"],
                     hidden=tuple(cfg.model["hidden"]), seed=cfg.seed)


def _options(cfg) -> dict:
    """This host's options from the spec (hosts.NAME), with their defaults."""
    opts = {"compute": True, "capacity": 1.0, "privacy": "trusted", "trusts": [], "noise_epsilon": None,
            "poison": None}
    opts.update((getattr(cfg, "host_options", None) or {}).get(cfg.name, {}))
    return opts


def warm_up(cfg):
    """Pay torch's first-use cost (~1.7 s per forked process) at start-up,
    not inside the first hop where it would distort time-to-target."""
    m = _model(cfg)
    X = torch.zeros((2, m[0].in_features)).numpy()
    train_local(m, X, torch.zeros(2, dtype=torch.long).numpy(), epochs=1, batch_size=2)
    bytes_to_state(m, state_to_bytes(m))


class LoadMeter:
    """Fraction of wall time spent working since the last reading (the reported load)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._busy = 0.0
        self._since = time.time()

    def add(self, seconds: float):
        with self._lock:
            self._busy += seconds

    def take(self) -> float:
        with self._lock:
            now = time.time()
            load = self._busy / max(now - self._since, 1e-6)
            self._busy, self._since = 0.0, now
            return round(load, 4)


class DataNode:
    """Trains visiting models on the data it holds and forwards them on.

    A data node holds its own shard. A compute node (role ``compute``) holds the
    shards that data nodes without compute sent it (DATA_SHARD, only where their
    privacy level and ``trusts`` allow): the paper's rendezvous at a compute
    facility. A data node without compute trains nothing: it sends its shard to
    a compute node it may use, or records why its data is skipped."""

    def __init__(self, rt: NodeRuntime, load: LoadMeter):
        self.rt = rt
        cfg = rt.cfg
        self.opts = _options(cfg)
        self.load = load
        self.work: queue.Queue = queue.Queue()
        self.lock = threading.Lock()
        self.hosted: dict[str, int] = {}  # owner -> samples hosted for it
        self.controls_done = 0            # lines of RUN/control/NODE.jsonl applied
        self.next_epochs: dict[int, int] = {}  # task -> epochs the DCC gives the next stop (EPOCHS)
        self.drifts = 0
        eps = self.opts["noise_epsilon"] or (getattr(cfg, "knowledge", None) or {}).get("noise_epsilon")
        self.eps = eps or 0.0
        # One noisy release per holding, drawn once: re-drawing the noise for every
        # report would let the DCC average it away (and spend epsilon each time).
        self.rng = np.random.default_rng([cfg.seed, wire.node_id(cfg.name), 7])
        dims = getattr(cfg, "dims", None) or {"in_features": 64, "n_classes": 10}
        self.n_classes = dims["n_classes"]
        if "data" in cfg.roles:
            shards, _ = make_shards(cfg.data_nodes, cfg.data, cfg.seed)
            shard = shards[cfg.name]
            del shards  # only our own partition stays in this process
            self.X, self.y = shard.X, shard.y
        else:
            self.X = np.zeros((0, dims["in_features"]), dtype=np.float32)
            self.y = np.zeros(0, dtype=np.int64)
        self.computes = "compute" in cfg.roles or ("data" in cfg.roles and bool(self.opts["compute"]))
        self.capacity = float(self.opts["capacity"]) if self.computes else 0.0
        self.published_hist = noisy_histogram(label_histogram(self.y, self.n_classes), eps, self.rng)
        if self.computes:
            warm_up(cfg)
        if "data" in cfg.roles:
            rt.event("data_loaded", samples=len(self.y), label_hist=label_histogram(self.y, self.n_classes),
                     published_label_hist=self.published_hist, noise_epsilon=eps, compute=self.computes,
                     capacity=self.capacity)

    def rendezvous_target(self) -> tuple[str | None, str]:
        """Where this data node (without compute) may send its raw data, and why."""
        name, p, trusts = self.rt.name, self.opts["privacy"], list(self.opts["trusts"])
        if p == "local":
            return None, (f"{name} has no compute and privacy 'local': its raw data may not leave it, "
                          f"so no model can train on it")
        if p == "trusted":
            if not trusts:
                return None, (f"{name} has no compute and trusts no compute node "
                              f"(hosts.{name}.trusts is empty): its data is skipped")
            return trusts[0], f"privacy 'trusted' and {trusts[0]} is trusted (hosts.{name}.trusts)"
        candidates = trusts or list(getattr(self.rt.cfg, "compute_nodes", None) or [])
        if not candidates:
            return None, f"{name} has no compute and the spec has no compute node: its data is skipped"
        return candidates[0], f"privacy 'public': any compute node may use it; {candidates[0]} chosen"

    def offload(self) -> bool:
        """Send our shard to a compute node we may use (the rendezvous); False if none."""
        target, why = self.rendezvous_target()
        if target is None:
            self.rt.event("data_unusable", reason=why)
            return False
        buf = io.BytesIO()
        np.savez(buf, X=self.X, y=self.y)
        data = buf.getvalue()
        give_up = time.time() + 60  # the compute node may still be starting (torch warm-up)
        while True:
            try:
                self.rt.send_model(wire.node_id(target), Message(MT.DATA_SHARD, task_id=0, model_id=0), data)
                break
            except TransferError as e:
                if time.time() > give_up or self.rt.stopping.wait(0.5):
                    self.rt.event("data_unusable", reason=f"sending the shard to {target} failed: {e}")
                    return False
        # raw training samples crossed the network: counted in summary.json
        self.rt.event("raw_data_transfer", to=target, bytes=len(data), samples=int(len(self.y)), reason=why)
        return True

    def on_shard(self, first: Message, data: bytes, peer: str):
        """A data node's raw shard arrives (DATA_SHARD): hold it for visiting models."""
        if not self.computes:
            raise wire.WireError(f"{self.rt.name} has no compute: it takes no DATA_SHARD")
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            X, y = z["X"].astype(np.float32, copy=False), z["y"].astype(np.int64, copy=False)
        if X.ndim != 2 or X.shape[1] != self.X.shape[1] or len(X) != len(y):
            raise wire.WireError(f"DATA_SHARD of shape {X.shape}/{y.shape} does not fit "
                                 f"{self.X.shape[1]} features")
        owner = wire.node_name(first.src) if first.src else peer
        with self.lock:
            self.X, self.y = np.concatenate([self.X, X]), np.concatenate([self.y, y])
            self.hosted[owner] = len(y)
            self.published_hist = noisy_histogram(label_histogram(self.y, self.n_classes), self.eps or None,
                                                  self.rng)
        self.rt.event("data_hosted", owner=owner, samples=int(len(y)), total_samples=int(len(self.y)))
        self.rt.report_now()  # the DRRT learns at once that data can be used here
        return None

    def knowledge(self) -> dict:
        has_data = len(self.y) > 0 or "data" in self.rt.cfg.roles
        return {"roles": (Role.DATA if has_data else 0) | (Role.COMPUTE if self.computes else 0),
                "samples": int(len(self.y)), "label_hist": self.published_hist if has_data else [],
                "noise_epsilon": self.eps if has_data else 0.0,
                "capacity": self.capacity, "queue_len": self.work.qsize()}

    def on_model(self, first: Message, state: bytes, peer: str):
        self.work.put((first, state))  # train after acknowledging, so the sender is not held
        return None  # plain ACK

    def control_loop(self):
        """Watch for timeline commands (a visit in progress keeps the data it started with)."""
        while not self.rt.stopping.wait(0.2):
            try:
                self.control()
            except Exception as e:  # a bad command must not end the watch
                log.exception("control command failed")
                self.rt.event("error", error=f"control command failed: {type(e).__name__}: {e}")

    def control(self):
        """Apply what the runner asks of this node on the timeline (RUN/control/NODE.jsonl,
        one JSON command per line, appended): ``drift``."""
        path = self.rt.cfg.run_dir / "control" / f"{self.rt.name}.jsonl"
        try:
            lines = path.read_text().splitlines(keepends=True)
        except FileNotFoundError:
            return
        for line in lines[self.controls_done:]:
            if not line.endswith("\n"):  # still being written
                break
            self.controls_done += 1
            cmd = json.loads(line)
            if cmd.get("kind") == "drift":
                self.drift(list(cmd["labels"]), float(cmd.get("fraction", 1.0)))
            else:
                self.rt.event("warning", text=f"unknown control command {cmd!r}")

    def drift(self, labels: list[int], fraction: float):
        """Data drift: ``fraction`` of our samples are replaced by samples of ``labels``
        drawn from the data set's training pool (new data arriving with another label
        distribution). The published histogram is drawn again (a new holding)."""
        cfg = self.rt.cfg
        ds = load_dataset(cfg.data, cfg.seed)
        pool = np.flatnonzero(np.isin(ds.train_y, labels))
        if not len(pool):
            self.rt.event("warning", text=f"drift: the data set has no samples of labels {labels}")
            return
        self.drifts += 1
        rng = np.random.default_rng([cfg.seed, wire.node_id(cfg.name), 13, self.drifts])
        with self.lock:
            n = len(self.y)
            k = min(n, max(1, round(fraction * n)))
            keep = np.sort(rng.choice(n, n - k, replace=False))
            new = rng.choice(pool, k, replace=len(pool) < k)
            before = label_histogram(self.y, self.n_classes)
            self.X = np.concatenate([self.X[keep], ds.train_X[new].astype(np.float32, copy=False)])
            self.y = np.concatenate([self.y[keep], ds.train_y[new].astype(np.int64, copy=False)])
            after = label_histogram(self.y, self.n_classes)
            self.published_hist = noisy_histogram(after, self.eps or None, self.rng)
        self.rt.event("data_drift", labels=labels, fraction=fraction, replaced=int(k), samples=int(len(self.y)),
                      label_hist_before=before, label_hist=after, published_label_hist=self.published_hist)
        self.rt.report_now()  # the DRRT learns the new label distribution at once

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
        with self.lock:
            X, y = self.X, self.y
        if self.opts.get("poison") == "label_flip":  # a compromised node (hosts.NAME.poison): a threat model
            y = (self.n_classes - 1 - y).astype(y.dtype, copy=False)
            rt.event("poisoned_training", task=first.task_id, hop=hop, poison="label_flip")
        epochs = int(first.tlvs.get(Tlv.EPOCHS) or tr["local_epochs"])  # the DCC's plan may choose them
        stats = train_local(model, X, y, epochs=epochs,
                            batch_size=tr["batch_size"], lr=tr["lr"], momentum=tr["momentum"],
                            seed=cfg.seed * 1000 + hop, capacity=self.capacity)
        self.load.add(stats["seconds"])
        state = state_to_bytes(model)
        digest = state_digest(state)
        rt.event("train", task=first.task_id, hop=hop, lap=itin.lap, version=version, epochs=epochs,
                 samples=stats["samples"], loss=stats["loss"], seconds=stats["seconds"],
                 compute_seconds=stats["compute_seconds"], throttled_seconds=stats["throttled_seconds"],
                 capacity=self.capacity, sha256=digest, parent_sha256=parent)
        common = {Tlv.TARGET_ACCURACY: target, Tlv.DEADLINE: first.tlvs[Tlv.DEADLINE],
                  Tlv.PARTIES: parties}
        for carried in (Tlv.TRANSPORT, Tlv.REQUIRED_LABELS, Tlv.MAX_HOPS):  # the AI object's header goes on
            if carried in first.tlvs:
                common[carried] = first.tlvs[carried]

        def msg(mtype, extra=None):
            return Message(mtype, hop_count=hop, hop_limit=first.hop_limit, task_id=first.task_id,
                           model_id=first.model_id, model_version=version, tlvs={**common, **(extra or {})})

        verdict = rt.send_model(parties.mpvu, msg(MT.EVAL_REQUEST), state)
        if verdict.type != MT.EVAL_VERDICT:
            raise TransferError(f"MPVU answered {MsgType(verdict.type).name}, not a verdict")
        acc = verdict.body.accuracy
        rt.event("evaluation", task=first.task_id, hop=hop, at=rt.name, by=wire.node_name(parties.mpvu),
                 accuracy=acc, loss=verdict.body.loss, version=version, sha256=digest,
                 per_class=verdict.body.per_class, samples=verdict.body.samples)
        end = None
        if acc >= target:
            end = EndReason.TARGET_REACHED
        elif time.time() >= deadline:
            end = EndReason.DEADLINE
        nitin, end, why = self.next_hop(first, itin, end, version, digest, verdict.body)
        if end is None:
            nxt = nitin.segments[nitin.ptr]
            rt.event("forward", task=first.task_id, to=wire.node_name(nxt), ptr=nitin.ptr, lap=nitin.lap,
                     reason=why)
            extra = {Tlv.ITINERARY: nitin, Tlv.ACCURACY: acc}
            if self.next_epochs.get(first.task_id):  # the epochs the DCC's plan gives the next stop
                extra[Tlv.EPOCHS] = self.next_epochs.pop(first.task_id)
            rt.send_model(nxt, msg(MT.MODEL_CHUNK, extra), state)
            return
        if end == EndReason.ROLLED_BACK:  # the DCC goes on from an earlier verified version
            rt.event("model_discarded", task=first.task_id, version=version, sha256=digest, accuracy=acc,
                     hop=hop, by=why)
            return
        rt.event("task_end", task=first.task_id, reason=end.name.lower(), accuracy=acc, hop=hop, by=why)
        rt.send_model(parties.client, msg(MT.TASK_RESULT, {Tlv.END_REASON: end, Tlv.ACCURACY: acc}), state)

    def next_hop(self, first: Message, itin, end, version: int, digest: str, verdict):
        """Where the model goes after this stop -> (itinerary, end reason or None, why).

        Here the DCC decides (it may have re-planned, and it installs this hop's flows
        before answering); without an answer the carried itinerary is followed, and
        that is recorded. AATS and the random walk decide on the node (nodes/modes.py)."""
        route = self.ask_dcc(first, itin, end, version, digest, verdict.accuracy)
        if route is None:
            route = self.carried_route(itin, end)
            self.rt.event("dcc_no_answer", task=first.task_id, hop=first.hop_count + 1,
                          text="the DCC did not answer the hop request; following the carried itinerary")
        return route

    def ask_dcc(self, first: Message, itin, end, version: int, digest: str, acc: float):
        """Hop request (ITINERARY to the DCC): returns (itinerary, end reason or None, why) or None."""
        tlvs = {Tlv.ITINERARY: itin, Tlv.MODEL_DIGEST: bytes.fromhex(digest), Tlv.ACCURACY: acc}
        if end is not None:
            tlvs[Tlv.END_REASON] = end
        # what a DCC that lost its state (restarted) needs to adopt the task: its
        # requirements, parties and the model's size (CHUNK 0 of the model's bytes)
        for k in (Tlv.TARGET_ACCURACY, Tlv.DEADLINE, Tlv.PARTIES):
            if k in first.tlvs:
                tlvs[k] = first.tlvs[k]
        if Tlv.CHUNK in first.tlvs:
            tlvs[Tlv.CHUNK] = wire.Chunk(0, first.tlvs[Tlv.CHUNK].total)
        req = Message(MT.ITINERARY, task_id=first.task_id, model_id=first.model_id, model_version=version,
                      hop_count=first.hop_count + 1, tlvs=tlvs, body=wire.ItineraryBody(""))
        try:
            ans = self.rt.dcc_request(req, lambda a: MT.ITINERARY in a, timeout=1.0, tries=5)
        except TransferError as e:
            log.warning("hop request: %s", e)
            return None
        a = ans[MT.ITINERARY]
        if a.tlvs.get(Tlv.EPOCHS):
            self.next_epochs[first.task_id] = a.tlvs[Tlv.EPOCHS]
        nitin = a.tlvs.get(Tlv.ITINERARY)
        if nitin is None:
            return None
        got_end = a.tlvs.get(Tlv.END_REASON)
        names = [wire.node_name(n) for n in nitin.segments]
        if got_end is not None:
            return nitin, EndReason(got_end), f"dcc: end ({EndReason(got_end).name.lower()})"
        return nitin, None, f"dcc ({a.body.policy}): stop {nitin.ptr} of {names} (lap {nitin.lap})"

    @staticmethod
    def carried_route(itin, end):
        if end is not None:
            return itin, end, "node"
        ptr, lap = itin.ptr + 1, itin.lap
        if ptr >= len(itin.segments):
            ptr, lap = 0, lap + 1
        if lap >= itin.max_laps:
            return itin, EndReason.MAX_LAPS, "node"
        names = [wire.node_name(n) for n in itin.segments]
        return (wire.Itinerary(ptr, lap, itin.max_laps, list(itin.segments)), None,
                f"carried itinerary: segment {ptr} of {names} (lap {lap})")


class MPVU:
    """Model performance verification unit: evaluates models on held-out data
    (data.verification: which labels, how many samples) and reports each verdict
    to the requesting node and to the DCC, for the model's record."""

    def __init__(self, rt: NodeRuntime):
        self.rt = rt
        cfg = rt.cfg
        ds = load_dataset(cfg.data, cfg.seed)
        self.X, self.y = verification_set(ds, cfg.data, cfg.seed)
        self.n_classes = ds.n_classes
        del ds
        warm_up(cfg)
        rt.event("verification_set", samples=len(self.y), label_hist=label_histogram(self.y, self.n_classes))
        # The last KEEP verified versions of every task (header and state): the point
        # the DCC recovers from when a holder dies, or rolls back to after a poisoned
        # model. Kept in memory: a dead MPVU loses them (it is a single point here).
        self.kept: dict[int, collections.OrderedDict] = {}
        self.resumed: set[tuple] = set()
        self.lock = threading.Lock()

    KEEP = 4

    def knowledge(self) -> dict:
        return {"roles": Role.MPVU, "verification_samples": int(len(self.y))}

    def on_dcc_answer(self, m: Message):
        """The DCC's answer to our report: send a kept version on (ITINERARY, REPLY: its
        version, digest, the itinerary from here, END_REASON if the task ends with it)."""
        if m.type != MT.ITINERARY or not m.flags & wire.REPLY:
            return
        digest = m.tlvs.get(Tlv.MODEL_DIGEST)
        itin = m.tlvs.get(Tlv.ITINERARY)
        key = (m.task_id, m.model_version, digest, m.hop_count)
        with self.lock:
            if key in self.resumed:  # repeated until the DCC sees the task go on
                return
            self.resumed.add(key)
            kept = self.kept.get(m.task_id, {}).get(m.model_version)
        if kept is None or digest is None or kept["digest"] != digest.hex() or itin is None:
            self.rt.event("resume_failed", task=m.task_id, version=m.model_version,
                          reason=f"no verified version {m.model_version} of task {m.task_id} with that hash kept "
                                 f"here (kept: {sorted(self.kept.get(m.task_id, {}))})")
            return
        threading.Thread(target=self._resume, args=(m, kept, itin), daemon=True,
                         name=f"resume-{m.task_id}").start()

    def _resume(self, m: Message, kept: dict, itin):
        first = kept["first"]
        tlvs = {k: v for k, v in first.tlvs.items()
                if k in (Tlv.TARGET_ACCURACY, Tlv.DEADLINE, Tlv.PARTIES, Tlv.REQUIRED_LABELS, Tlv.MAX_HOPS)}
        tlvs[Tlv.ITINERARY] = itin
        tlvs[Tlv.ACCURACY] = kept["accuracy"]
        for k in (Tlv.TRANSPORT, Tlv.EPOCHS):
            if k in m.tlvs:
                tlvs[k] = m.tlvs[k]
        end = m.tlvs.get(Tlv.END_REASON)
        parties = first.tlvs[Tlv.PARTIES]
        if end is not None:  # the task ends with this version: it goes to the client
            tlvs[Tlv.END_REASON] = end
            mtype, to = MT.TASK_RESULT, parties.client
        else:
            mtype, to = MT.MODEL_CHUNK, itin.segments[itin.ptr]
        out = Message(mtype, hop_count=m.hop_count, hop_limit=first.hop_limit, task_id=m.task_id,
                      model_id=first.model_id, model_version=m.model_version, tlvs=tlvs)
        self.rt.event("model_resumed", task=m.task_id, version=m.model_version, sha256=kept["digest"],
                      to=wire.node_name(to), msg=MsgType(mtype).name,
                      reason=m.body.policy if m.body is not None else "")
        try:
            self.rt.send_model(to, out, kept["state"])
        except TransferError as e:
            self.rt.event("resume_failed", task=m.task_id, version=m.model_version, reason=str(e))

    def on_model(self, first: Message, state: bytes, peer: str):
        model = _model(self.rt.cfg)
        bytes_to_state(model, state)
        v = evaluate(model, self.X, self.y)
        digest = state_digest(state)
        with self.lock:
            kept = self.kept.setdefault(first.task_id, collections.OrderedDict())
            kept[first.model_version] = {"first": first, "state": state, "digest": digest,
                                         "accuracy": float(v["accuracy"])}
            while len(kept) > self.KEEP:
                kept.popitem(last=False)
        self.rt.event("verdict", task=first.task_id, version=first.model_version, accuracy=v["accuracy"],
                      loss=v["loss"], samples=v["samples"], per_class=v["per_class_accuracy"], sha256=digest,
                      trained_at=peer)
        verdict = Message(MT.EVAL_VERDICT, flags=wire.REPLY, task_id=first.task_id, model_id=first.model_id,
                          model_version=first.model_version, hop_count=first.hop_count,
                          tlvs={Tlv.MODEL_DIGEST: bytes.fromhex(digest)},
                          body=wire.EvalVerdict(v["accuracy"], v["loss"], v["samples"], v["per_class_accuracy"]))
        try:  # the DCC keeps the verdict in the model's record (best effort: UDP)
            self.rt.dcc_send(Message(MT.EVAL_VERDICT, task_id=first.task_id, model_id=first.model_id,
                                     model_version=first.model_version, hop_count=first.hop_count,
                                     tlvs={Tlv.MODEL_DIGEST: bytes.fromhex(digest)}, body=verdict.body))
        except OSError as e:
            log.warning("verdict to the DCC failed: %s", e)
        return verdict


def arrival_gaps(kind: str, n: int, rate: float, burst: int, rng: np.random.Generator) -> np.ndarray:
    """Seconds to wait before each of n queries, for a mean rate (queries/s):
    ``poisson`` exponential gaps; ``constant`` 1/rate; ``bursty`` ``burst``
    queries back to back, bursts burst/rate apart (the same mean rate)."""
    if kind == "constant":
        return np.full(n, 1.0 / rate)
    if kind == "bursty":
        return np.array([(burst / rate if i % burst == 0 else 0.0) for i in range(n)])
    if kind == "poisson":
        return rng.exponential(1.0 / rate, n)
    raise ValueError(f"unknown arrival process {kind!r}; expected poisson, constant or bursty")


class Client:
    """Submits training tasks to the DCC, waits for the trained model, deploys it
    to the task's inference servers, then runs its query workloads."""

    def __init__(self, rt: NodeRuntime):
        self.rt = rt
        self.results: dict[int, Message] = {}
        self.states: dict[int, bytes] = {}
        self.pending: set[int] = set()
        self.done = threading.Condition()
        self.work: queue.Queue = queue.Queue()   # hand-offs of API-submitted tasks and queries
        self.seen: set[tuple[str, int]] = set()  # ... already queued (the DCC repeats them until taken)

    def on_dcc_answer(self, m: Message):
        """The DCC's answer to our knowledge report: work submitted through its API
        (controllers/submissions.py). Queued once per id; run by :meth:`serve`."""
        if m.type == MT.TRAIN_REQUEST and m.flags & wire.REPLY:
            key = ("task", m.task_id)
        elif m.type == MT.INFERENCE_QUERY and m.flags & wire.REPLY:
            key = ("query", m.seq)
        else:
            self.rt.event("message_dropped", peer="dcc", reason=f"unexpected {MsgType(m.type).name} "
                                                                "in answer to a knowledge report")
            return
        with self.done:
            if key in self.seen:
                return
            self.seen.add(key)
        self.work.put((key[0], m))

    def knowledge(self) -> dict:
        return {"roles": Role.CLIENT}

    def expects(self, task_id: int) -> bool:
        return task_id in self.pending

    def on_model(self, first: Message, state: bytes, peer: str):
        with self.done:
            self.results[first.task_id] = first
            self.states[first.task_id] = state
            self.done.notify_all()
        return None

    def deploy(self, task: dict):
        """Send a task's final model to its inference servers (tasks[].deploy_to)."""
        res, state = self.results.get(task["id"]), self.states.get(task["id"])
        for host in task.get("deploy_to") or []:
            if res is None:
                self.rt.event("deploy_skipped", task=task["id"], to=host, reason="the task returned no model")
                continue
            msg = Message(MT.TASK_RESULT, task_id=res.task_id, model_id=res.model_id,
                          model_version=res.model_version, hop_count=res.hop_count,
                          tlvs={Tlv.END_REASON: res.tlvs[Tlv.END_REASON],
                                **({Tlv.ACCURACY: res.tlvs[Tlv.ACCURACY]} if Tlv.ACCURACY in res.tlvs else {})})
            try:
                self.rt.send_model(wire.node_id(host), msg, state)
                self.rt.event("model_deployed", task=task["id"], to=host, version=res.model_version)
            except TransferError as e:
                self.rt.event("deploy_failed", task=task["id"], to=host, error=str(e))

    def _route(self, model: int, seq: int, tlvs: dict, failed: list[str]):
        """QIRCE at the DCC: where query ``seq`` goes now -> (server, reasons, dscp);
        server None with the reasons when Q-FAM refuses it."""
        ask = Message(MT.INFERENCE_QUERY, model_id=model, seq=seq, tlvs=dict(tlvs),
                      body=wire.InferenceQuery([]))  # the DCC never sees the input
        if failed:
            ask.tlvs[Tlv.ITINERARY] = wire.Itinerary(0, 0, 1, [wire.node_id(f) for f in failed])
        ans = self.rt.dcc_request(ask, lambda a: MT.FEASIBILITY in a and
                                  (not a[MT.FEASIBILITY].body.feasible or MT.ITINERARY in a), timeout=1.0, tries=5)
        feas = ans[MT.FEASIBILITY].body
        if not feas.feasible:
            return None, feas.reasons, 0
        plan = ans[MT.ITINERARY]
        # the query route's flows match this mark
        return plan.tlvs[Tlv.ITINERARY].segments[0], [], plan.tlvs.get(Tlv.TRANSPORT, 0)

    def query(self, model: int, seq: int, tlvs: dict, features, fixed: int | None = None) -> dict:
        """One inference query: to ``fixed``, or where the DCC routes it, with
        failover (a server that fails is excluded and the DCC asked again, up to 3
        tries). Returns a record: answered, label, server, latency_ms, service_ms,
        retried, error (and refused when Q-FAM refused it)."""
        q = Message(MT.INFERENCE_QUERY, model_id=model, seq=seq, tlvs=dict(tlvs),
                    body=wire.InferenceQuery([float(x) for x in features]))
        t = time.time()
        failed, rec = [], None
        for _attempt in range(3):
            try:
                server, why, dscp = (fixed, [], 0) if fixed else self._route(model, seq, tlvs, failed)
            except TransferError as e:
                rec = {"error": f"no route from the DCC: {e}"}
                break
            if server is None:
                rec = {"error": "refused: " + "; ".join(why[:2]), "refused": True}
                break
            if dscp:
                q.tlvs[Tlv.TRANSPORT] = dscp
            try:
                ans = self.rt.request(server, q, timeout=30)
            except (TransferError, OSError, wire.WireError) as e:
                rec = {"error": str(e)}
                ans = None
            if ans is not None and ans.type == MT.INFERENCE_RESULT:
                rec = {"answered": True, "server": wire.node_name(server), "label": int(ans.body.label),
                       "confidence": float(ans.body.confidence), "service_ms": ans.body.service_ms,
                       "error": None}
                break
            if ans is not None:
                rec = {"error": getattr(ans.body, "text", MsgType(ans.type).name)}
            if fixed:
                break
            failed.append(wire.node_name(server))
        return {"latency_ms": (time.time() - t) * 1000, "answered": False, "label": None, "service_ms": None,
                "server": None, "retried": len(failed), **(rec or {})}

    def serve(self, idle_s: float):
        """Run the work the DCC hands us (tasks and queries submitted through its
        API) until none came and none is running for ``idle_s`` seconds."""
        rt = self.rt
        rt.event("serving", idle_s=idle_s)
        running: list[threading.Thread] = []
        last = time.time()
        while not rt.stopping.is_set():
            running = [t for t in running if t.is_alive()]
            try:
                kind, m = self.work.get(timeout=0.2)
            except queue.Empty:
                if running:
                    last = time.time()
                elif time.time() - last > idle_s:
                    break
                continue
            last = time.time()
            if kind == "task":
                task = task_from_handoff(m)
                task["client"] = rt.name
                rt.event("task_handed_off", task=task["id"], **{k: v for k, v in task.items() if k != "id"})
                with self.done:
                    self.pending.add(task["id"])
                target = self._served_task
            else:
                rt.event("query_handed_off", seq=m.seq, model=m.model_id)
                target, task = self._served_query, m
            th = threading.Thread(target=target, args=(task,), daemon=True, name=f"{kind}-{m.task_id or m.seq}")
            th.start()
            running.append(th)
        for th in running:
            th.join(timeout=60)
        rt.event("serving_ended", idle_s=idle_s, handed_off=len(self.seen))

    def _served_task(self, task: dict):
        self.run_task(task)
        self.deploy(task)

    def _served_query(self, m: Message):
        rec = self.query(m.model_id, m.seq, {k: v for k, v in m.tlvs.items() if k != Tlv.TRANSPORT},
                         m.body.features)
        if rec["answered"]:
            out = Message(MT.INFERENCE_RESULT, model_id=m.model_id, seq=m.seq,
                          body=wire.InferenceResult(rec["label"], rec["confidence"], float(rec["service_ms"] or 0.0)))
        else:
            out = Message(MT.ERROR, model_id=m.model_id, seq=m.seq, body=wire.Error(5, str(rec["error"])[:500]))
        self.rt.event("submitted_query_result", seq=m.seq, model=m.model_id, answered=rec["answered"],
                      server=rec["server"], label=rec["label"], latency_ms=round(rec["latency_ms"], 3),
                      retried=rec["retried"], error=rec["error"])
        try:  # the DCC acknowledges; retransmitted until it does
            self.rt.dcc_request(out, lambda a: MT.ACK in a, timeout=0.5, tries=6)
        except TransferError as e:
            self.rt.event("warning", text=f"the DCC did not take the result of query {m.seq}: {e}")

    def run_workload(self, w: dict, index: int, queries_X, queries_y, concurrency: int = 8):
        """Send ``w["queries"]`` inference queries to ``w["server"]`` with the spec's
        arrival process; up to ``concurrency`` are in flight (one connection each)."""
        rt = self.rt
        rng = np.random.default_rng([rt.cfg.seed, index, 11])
        n, rate = int(w["queries"]), float(w["rate_qps"])
        gaps = arrival_gaps(w["arrivals"], n, rate, int(w.get("burst_size", 1)), rng)
        pick = rng.integers(0, len(queries_y), n)
        tlvs = {}
        if w.get("max_latency_ms"):
            tlvs[Tlv.MAX_LATENCY] = int(w["max_latency_ms"])
        if w.get("min_accuracy"):
            tlvs[Tlv.MIN_ACCURACY] = float(w["min_accuracy"])
        tlvs[Tlv.PRIVACY_LEVEL] = wire.Privacy[w["privacy"].upper()]
        fixed = wire.node_id(w["server"]) if w.get("server") else None
        slots = threading.BoundedSemaphore(concurrency)
        records, lock = [], threading.Lock()

        def qid(i):  # unique per client across its workloads: the DCC answers route requests by it
            return (index << 20) | (i + 1)

        def one(i):
            rec = self.query(int(w["model"]), qid(i), tlvs, queries_X[pick[i]], fixed)
            label = rec.pop("label", None)
            rec["correct"] = bool(rec["answered"]) and label == int(queries_y[pick[i]])
            rec["i"] = i
            with lock:
                records.append(rec)
            slots.release()

        rt.event("workload_started", workload=index, server=w.get("server") or "dcc (QIRCE)", model=w["model"], queries=n,
                 rate_qps=rate, arrivals=w["arrivals"])
        threads, t_next = [], time.time()
        for i in range(n):
            t_next += gaps[i]
            delay = t_next - time.time()
            if delay > 0 and rt.stopping.wait(delay):
                break
            slots.acquire()
            th = threading.Thread(target=one, args=(i,), daemon=True)
            th.start()
            threads.append(th)
        for th in threads:
            th.join(timeout=60)
        lat = sorted(r["latency_ms"] for r in records if r["answered"])
        answered = sum(r["answered"] for r in records)
        limit = w.get("max_latency_ms")
        servers: dict[str, int] = {}
        for r in records:
            if r["answered"]:
                servers[r["server"]] = servers.get(r["server"], 0) + 1
        out = {"workload": index, "server": w.get("server") or "dcc", "model": w["model"], "sent": len(records),
               "by_server": servers, "refused": sum(1 for r in records if r.get("refused")),
               "failovers": sum(1 for r in records if r["retried"] and r["answered"]),
               "answered": answered, "failed": len(records) - answered,
               "accuracy": (sum(r["correct"] for r in records) / answered) if answered else None,
               "latency_ms_mean": float(np.mean(lat)) if lat else None,
               "latency_ms_p50": float(lat[min(len(lat) - 1, int(0.50 * len(lat)))]) if lat else None,
               "latency_ms_p95": float(lat[min(len(lat) - 1, int(0.95 * len(lat)))]) if lat else None,
               "latency_ms_p99": float(lat[min(len(lat) - 1, int(0.99 * len(lat)))]) if lat else None,
               "over_max_latency": sum(1 for x in lat if limit and x > limit),
               "errors": sorted({r["error"] for r in records if r["error"]})[:5]}
        rt.event("workload_result", **out)
        return out

    def start_task(self, task: dict) -> tuple[float, bytes, int, dict]:
        """A task's initial model and requirement TLVs -> (t0, state, deadline_ms, tlvs)."""
        t0 = time.time()
        state = state_to_bytes(_model(self.rt.cfg))
        deadline_ms = int((t0 + task["deadline_s"]) * 1000)
        tlvs = {Tlv.TARGET_ACCURACY: task["target_accuracy"], Tlv.DEADLINE: deadline_ms}
        if task.get("required_labels"):
            tlvs[Tlv.REQUIRED_LABELS] = task["required_labels"]
        if task.get("byte_budget"):
            tlvs[Tlv.BYTE_BUDGET] = int(task["byte_budget"])
        return t0, state, deadline_ms, tlvs

    def await_result(self, tid: int, deadline_ms: int) -> Message | None:
        """The task's returned model (TASK_RESULT), or None by the deadline + grace."""
        grace = 60.0  # a hop in flight at the deadline still reports back
        with self.done:
            self.done.wait_for(lambda: tid in self.results,
                               timeout=max(0.0, deadline_ms / 1000 - time.time()) + grace)
        return self.results.get(tid)

    def run_task(self, task: dict):
        rt = self.rt
        tid = task["id"]
        t0, state, deadline_ms, tlvs = self.start_task(task)
        # an empty itinerary in the request carries the lap limit the client accepts;
        # the initial model's hash opens the task's lineage at the DCC
        ask = {**tlvs, Tlv.ITINERARY: wire.Itinerary(0, 0, task["max_laps"], []),
               Tlv.MODEL_DIGEST: bytes.fromhex(state_digest(state))}
        rt.event("task_submitted", task=tid, model_bytes=len(state), target_accuracy=task["target_accuracy"],
                 deadline_s=task["deadline_s"], required_labels=task.get("required_labels"))
        req = Message(MT.TRAIN_REQUEST, task_id=tid, model_id=tid, tlvs=ask,
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
        rt.event("itinerary_received", task=tid, itinerary=names, feasible=feas.feasible, reasons=feas.reasons,
                 est_seconds=feas.est_seconds, est_bytes=feas.est_bytes)
        if not feas.feasible or not names:
            return self._finish(tid, t0, "infeasible: " + "; ".join(feas.reasons), None, None)
        got = plan.tlvs[Tlv.ITINERARY]
        itin = wire.Itinerary(got.ptr, 0, min(got.max_laps or task["max_laps"], task["max_laps"]),
                              list(got.segments))
        first = Message(MT.MODEL_CHUNK, task_id=tid, model_id=tid, model_version=0, hop_count=0,
                        tlvs={**tlvs, Tlv.ITINERARY: itin, Tlv.PARTIES: plan.tlvs[Tlv.PARTIES],
                              Tlv.TRANSPORT: plan.tlvs.get(Tlv.TRANSPORT, 0),
                              **({Tlv.EPOCHS: plan.tlvs[Tlv.EPOCHS]} if plan.tlvs.get(Tlv.EPOCHS) else {})})
        rt.event("forward", task=tid, to=names[itin.ptr], ptr=itin.ptr, lap=0, reason="first stop of the DCC's plan")
        try:
            rt.send_model(itin.segments[itin.ptr], first, state)
        except TransferError as e:
            return self._finish(tid, t0, f"transfer_failed: {e}", None, None)
        res = self.await_result(tid, deadline_ms)
        if res is None:
            return self._finish(tid, t0, "no result before deadline + grace", None, None)
        end = EndReason(res.tlvs[Tlv.END_REASON]).name.lower()
        notice = Message(MT.TASK_RESULT, task_id=tid, model_id=res.model_id,
                         model_version=res.model_version, hop_count=res.hop_count,
                         tlvs={Tlv.END_REASON: res.tlvs[Tlv.END_REASON],
                               Tlv.MODEL_DIGEST: res.tlvs[Tlv.MODEL_DIGEST],
                               # a well-formed TASK_RESULT that carries no model: 0 of 0 bytes
                               Tlv.CHUNK: wire.Chunk(0, 0),
                               Tlv.ACCURACY: res.tlvs.get(Tlv.ACCURACY, 0.0)}, body=b"")
        if task.get("replicas"):  # the DCC answers where the replicas go
            try:
                ans = rt.dcc_request(notice, lambda a: MT.ITINERARY in a, timeout=1.0, tries=5)
                hosts = [wire.node_name(n) for n in ans[MT.ITINERARY].tlvs[Tlv.ITINERARY].segments]
                task["deploy_to"] = hosts
                rt.event("placement_received", task=tid, hosts=hosts)
            except TransferError as e:
                rt.event("deploy_skipped", task=tid, reason=f"no placement from the DCC: {e}")
        else:
            try:  # the DCC removes the task's flows (UDP, best effort: they are not needed any more)
                rt.dcc_send(notice)
            except (OSError, wire.WireError) as e:
                log.warning("task result notice to the DCC failed: %s", e)
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


class InferenceServer:
    """Hosts model replicas and answers INFERENCE_QUERY messages, batching queries
    that arrive within ``inference.max_wait_ms`` (up to ``max_batch``). Reports its
    models, load, queue length and recent service time in its knowledge reports."""

    def __init__(self, rt: NodeRuntime, load: LoadMeter):
        self.rt = rt
        inf = getattr(rt.cfg, "inference", None) or {}
        self.max_batch = int(inf.get("max_batch", 8))
        self.max_wait = float(inf.get("max_wait_ms", 5.0)) / 1000
        self.models: dict[int, torch.nn.Module] = {}
        self.queue: queue.Queue = queue.Queue()
        self.load = load
        self.service_ms = 0.0   # EWMA of query service time (queueing + batch compute)
        self.served = 0
        self.batch_sizes: list[int] = []
        warm_up(rt.cfg)

    def summary(self) -> dict:
        b = self.batch_sizes
        return {"served": self.served, "batches": len(b), "max_batch": max(b, default=0),
                "mean_batch": (sum(b) / len(b)) if b else None, "service_ms": self.service_ms}

    def knowledge(self) -> dict:
        return {"roles": Role.INFERENCE, "models": sorted(self.models), "queue_len": self.queue.qsize(),
                "service_ms": round(self.service_ms, 3)}

    def on_model(self, first: Message, state: bytes, peer: str):
        """A TASK_RESULT sent to an inference server deploys that model here."""
        model = _model(self.rt.cfg)
        bytes_to_state(model, state)
        model.eval()
        self.models[first.model_id] = model
        self.rt.event("model_hosted", model=first.model_id, version=first.model_version, by=peer,
                      sha256=state_digest(state))
        self.rt.report_now()  # the QRRT learns of the replica at once
        return None

    def on_query(self, m: Message, peer: str) -> Message:
        if m.model_id not in self.models:
            return Message(MT.ERROR, flags=wire.REPLY, model_id=m.model_id, seq=m.seq,
                           body=wire.Error(3, f"{self.rt.name} hosts no model {m.model_id} "
                                              f"(it hosts {sorted(self.models)})"))
        done = threading.Event()
        item = {"m": m, "t": time.time(), "done": done}
        self.queue.put(item)
        if not done.wait(30):
            return Message(MT.ERROR, flags=wire.REPLY, model_id=m.model_id, seq=m.seq,
                           body=wire.Error(4, "query timed out in the server's queue"))
        return item["reply"]

    def worker(self):
        while not self.rt.stopping.is_set():
            try:
                first = self.queue.get(timeout=0.5)
            except queue.Empty:
                continue
            batch, until = [first], time.time() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.queue.get(timeout=max(0.0, until - time.time())))
                except queue.Empty:
                    break
            t0 = time.time()
            self.batch_sizes.append(len(batch))
            for mid in {it["m"].model_id for it in batch}:
                group = [it for it in batch if it["m"].model_id == mid]
                X = torch.tensor([it["m"].body.features for it in group], dtype=torch.float32)
                with torch.no_grad():
                    p = torch.softmax(self.models[mid](X), dim=1)
                conf, label = p.max(dim=1)
                now = time.time()
                for it, c, lab in zip(group, conf.tolist(), label.tolist()):
                    ms = (now - it["t"]) * 1000
                    self.service_ms = ms if not self.served else 0.8 * self.service_ms + 0.2 * ms
                    self.served += 1
                    it["reply"] = Message(MT.INFERENCE_RESULT, flags=wire.REPLY, model_id=mid, seq=it["m"].seq,
                                          body=wire.InferenceResult(int(lab), float(c), float(ms)))
                    it["done"].set()
            self.load.add(time.time() - t0)


def run_node(rt: NodeRuntime, go_file) -> int:
    """Start the roles of this host and serve until stopped (clients stop when done)."""
    cfg = rt.cfg
    torch.set_num_threads(int(cfg.training["torch_threads"]))
    mode = None  # AATS and the baselines: their role classes, messages and threads (nodes/modes.py)
    if getattr(cfg, "mode", "dcc") != "dcc":
        from nodes.modes import node_mode
        mode = node_mode(rt, go_file)
    kinds = {"data": DataNode, "client": Client, **(mode.role_classes() if mode else {})}
    roles = {}
    load = LoadMeter()
    if "data" in cfg.roles or "compute" in cfg.roles:
        roles["data"] = kinds["data"](rt, load)
    if "mpvu" in cfg.roles:
        roles["mpvu"] = MPVU(rt)
    if "inference" in cfg.roles:
        roles["inference"] = InferenceServer(rt, load)
    if "client" in cfg.roles:
        roles["client"] = kinds["client"](rt)
    capacity = float(_options(cfg)["capacity"]) if "compute" in cfg.roles else 0.0

    def on_model(first, state, peer):
        if mode is not None and mode.takes(first):
            return mode.on_model(first, state, peer)
        role = None
        if first.type == MT.MODEL_CHUNK:
            role = roles.get("data")
        elif first.type == MT.DATA_SHARD and "data" in roles:
            return roles["data"].on_shard(first, state, peer)
        elif first.type == MT.EVAL_REQUEST:
            role = roles.get("mpvu")
        elif first.type == MT.TASK_RESULT:  # our own task's model, or a model to host
            c = roles.get("client")
            role = c if c is not None and c.expects(first.task_id) else roles.get("inference")
        if role is None:
            raise wire.WireError(f"{cfg.name} takes no {MsgType(first.type).name}")
        return role.on_model(first, state, peer)

    def on_control(m, peer):
        if mode is not None and mode.takes(m):
            return mode.on_control(m, peer)
        if m.type == MT.INFERENCE_QUERY and "inference" in roles:
            return roles["inference"].on_query(m, peer)
        raise wire.WireError(f"{cfg.name} takes no {MsgType(m.type).name} over TCP")

    def knowledge():
        k = wire.KnowledgeReport(capacity=capacity)
        for r in roles.values():
            v = r.knowledge()
            k.roles |= int(v.get("roles", 0))
            k.samples = max(k.samples, v.get("samples", 0))
            k.verification_samples = max(k.verification_samples, v.get("verification_samples", 0))
            k.label_hist = v.get("label_hist", k.label_hist)
            k.capacity = max(k.capacity, float(v.get("capacity", 0.0)))
            k.queue_len += int(v.get("queue_len", 0))
            k.service_ms = max(k.service_ms, float(v.get("service_ms", 0.0)))
            k.noise_epsilon = max(k.noise_epsilon, float(v.get("noise_epsilon", 0.0)))
            k.models = sorted(set(k.models) | set(v.get("models", [])))
        if "compute" in cfg.roles:
            k.roles |= Role.COMPUTE
        k.load = load.take()
        return k

    if mode is not None:
        knowledge = mode.attach(roles, knowledge)  # peers get our latest summary too
    serve = threading.Thread(target=rt.serve, args=(on_model, on_control), daemon=True, name="serve")
    serve.start()
    dn = roles.get("data")
    if dn is not None and "data" in cfg.roles and not dn.computes:
        # the rendezvous first: our first report (which the runner waits for)
        # follows the compute node's report of the data it now holds
        dn.offload()
    # a client's reports are answered with work submitted through the DCC's API
    def on_answer(m):  # work for a client (hand-off), a version to send on for the MPVU (recovery)
        if m.type == MT.ITINERARY and "mpvu" in roles:
            roles["mpvu"].on_dcc_answer(m)
        elif "client" in roles:
            roles["client"].on_dcc_answer(m)

    threads = [threading.Thread(target=rt.report_loop, daemon=True, name="report",
                                args=(knowledge, on_answer if {"client", "mpvu"} & set(roles) else None))]
    if "data" in roles:
        threads.append(threading.Thread(target=roles["data"].worker, daemon=True, name="train"))
        threads.append(threading.Thread(target=roles["data"].control_loop, daemon=True, name="control"))
    if "inference" in roles:
        threads.append(threading.Thread(target=roles["inference"].worker, daemon=True, name="infer"))
    if mode is not None:
        threads += mode.threads()
    for t in threads:
        t.start()
    rt.event("node_started", roles=sorted(roles), ip=cfg.ip)
    if "client" in roles:
        while not go_file.exists():  # the runner says go once the DCC knows every data node
            if rt.stopping.wait(0.1):
                return 1
        client = roles["client"]
        mine = [t for t in cfg.tasks if t["client"] == cfg.name]
        client.pending = {t["id"] for t in mine}
        for task in mine:
            client.run_task(task)
            client.deploy(task)
        workloads = [(i, w) for i, w in enumerate(getattr(cfg, "workloads", None) or [])
                     if w["client"] == cfg.name]
        if workloads:
            ds = load_dataset(cfg.data, cfg.seed)  # queries: inputs from the held-out split
            ws = [threading.Thread(target=client.run_workload, args=(w, i, ds.verif_X, ds.verif_y),
                                   daemon=True, name=f"workload-{i}") for i, w in workloads]
            for t in ws:
                t.start()
            for t in ws:
                t.join()
        if getattr(cfg, "serve_s", 0) > 0:
            client.serve(cfg.serve_s)
        # The result arrived before our ACK went out; when this client exits the
        # launcher stops every node, so let the sender read the ACK first (else,
        # under loss, its last transfer could go unrecorded).
        if not rt.wait_idle(30):
            rt.event("warning", text="connections still open 30 s after the last task ended")
        rt.event("node_stopping", reason="client done")
        rt.stopping.set()
        return 0
    rt.stopping.wait()
    rt.event("node_stopping", reason="stopped by the launcher")  # its reports end here: not a failure
    if "inference" in roles:
        rt.event("inference_summary", **roles["inference"].summary())
    # Stopping (SIGTERM from the launcher once the clients are done): let a visit
    # in progress finish its send - its peer may still owe us an ACK that TCP is
    # retransmitting - and our own replies go out, so no transfer goes unrecorded.
    for t in threads:
        if t.name == "train":
            t.join(timeout=30)
    rt.wait_idle(10)
    return 0
