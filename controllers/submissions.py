"""Tasks and queries submitted through the northbound API while a run is going on.

The DCC cannot start a task itself: a task belongs to a client (the client holds
the initial model, receives the final one and deploys it). So a submission waits
here until its client's next knowledge report, and the DCC answers that report
with the work (a *hand-off*, see docs/protocol.md):

- a task: ``TRAIN_REQUEST`` (REPLY flag) with the task's id, target accuracy,
  deadline, required labels, byte budget and an ITINERARY TLV whose ``max_laps``
  is the lap limit, whose segments are the fixed ``deploy_to`` hosts and whose
  ``ptr`` is the number of replicas the DCC is to place (``replicas``, 0: none);
- a query: ``INFERENCE_QUERY`` (REPLY flag) with the model id, ``seq`` = the
  query's wire id, the limits (max latency, min accuracy, privacy) and the input.

The client then does what it does for a task or query of its spec (asks the DCC
for a plan or a route, so the task is *taken* when its TRAIN_REQUEST arrives,
the query when its route request does) and tells the DCC how it ended: the
TASK_RESULT notice for a task, an INFERENCE_RESULT (or ERROR) for a query.
Hand-offs are repeated on every report until taken (datagrams may be lost);
the client ignores ids it has already started.

Why through the reports: they already flow every ``report_interval_s`` from
every node to the DCC through the fabric, so the hand-off needs no new listening
socket on the hosts and no path from the management side into the emulation;
the cost is up to one report interval of latency before the client starts.

Pure: no os_ken, no sockets. Validation reuses the spec's own ``TaskSpec``, so a
task submitted at run time takes exactly the fields a spec's task does.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from pydantic import ValidationError

from nodes import wire
from nodes.wire import Message, MsgType, Tlv

QUERY_SEQ_BASE = 1 << 31   # wire seq of API query n = BASE | n: apart from workloads' (index << 20 | i)
MAX_PENDING = 1000         # submissions not yet taken; more are refused (429)
MAX_FEATURES = 4096


class SubmissionError(ValueError):
    """A submission is invalid; ``str()`` names the field and what to do."""


def _pydantic_reason(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "body"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


@dataclass
class TaskSubmission:
    id: int
    client: str
    task: dict                 # TaskSpec fields (validated)
    submitted_at: float
    deadline_at: float         # absolute (submission time + deadline_s)
    status: str = "queued"     # queued -> taken -> ended
    taken_at: float | None = None
    ended_at: float | None = None
    end_reason: str | None = None
    accuracy: float | None = None
    handoffs: int = 0          # times sent to the client (repeated until taken)

    def view(self) -> dict:
        return {"id": self.id, "client": self.client, "status": self.status, "task": self.task,
                "submitted_at": self.submitted_at, "taken_at": self.taken_at, "ended_at": self.ended_at,
                "end_reason": self.end_reason, "accuracy": self.accuracy, "handoffs": self.handoffs}


@dataclass
class QuerySubmission:
    id: int
    client: str
    model: int
    features: list[float]
    max_latency_ms: float | None
    min_accuracy: float | None
    privacy: str
    submitted_at: float
    status: str = "queued"     # queued -> taken -> answered | failed
    taken_at: float | None = None
    ended_at: float | None = None
    server: str | None = None  # where the DCC routed it (last route answered)
    label: int | None = None
    confidence: float | None = None
    service_ms: float | None = None
    error: str | None = None
    handoffs: int = 0
    routes: list = field(default_factory=list)

    @property
    def seq(self) -> int:
        return QUERY_SEQ_BASE | self.id

    def view(self) -> dict:
        out = {k: getattr(self, k) for k in ("id", "client", "model", "max_latency_ms", "min_accuracy",
                                             "privacy", "status", "submitted_at", "taken_at", "ended_at",
                                             "server", "label", "confidence", "service_ms", "error",
                                             "handoffs", "routes")}
        out["seq"] = self.seq
        out["latency_ms"] = (None if self.ended_at is None or self.taken_at is None
                             else round((self.ended_at - self.submitted_at) * 1000, 3))
        return out


class Submissions:
    """The DCC's book of API submissions. ``roles``: host -> roles (from the spec);
    ``task_ids``: ids already used by the spec's tasks (new tasks get the next ones)."""

    def __init__(self, roles: dict[str, list[str]], task_ids=(), features: int | None = None):
        self.roles = roles
        self.clients = sorted((h for h, r in roles.items() if "client" in r), key=lambda h: int(h[1:]))
        self.inference = sorted((h for h, r in roles.items() if "inference" in r), key=lambda h: int(h[1:]))
        self.used_ids = set(int(i) for i in task_ids)
        self.features = features
        self.tasks: dict[int, TaskSubmission] = {}
        self.queries: dict[int, QuerySubmission] = {}

    # ---- submitting ------------------------------------------------------------
    def _client(self, req: dict) -> str:
        client = req.get("client")
        if client is None:
            if not self.clients:
                raise SubmissionError("client: this run has no host with the role 'client'")
            return self.clients[0]
        if client not in self.roles:
            raise SubmissionError(f"client: no host {client!r} in this run (clients: {self.clients})")
        if "client" not in self.roles[client]:
            raise SubmissionError(f"client: {client!r} does not have the role 'client' (clients: {self.clients})")
        return client

    def _room(self):
        pending = sum(1 for s in [*self.tasks.values(), *self.queries.values()] if s.status == "queued")
        if pending >= MAX_PENDING:
            raise OverflowError(f"{pending} submissions are waiting for their clients; try again later")

    def add_task(self, req, now: float | None = None) -> TaskSubmission:
        """Validate a POST /v1/tasks body (the fields of a spec task; ``id`` and
        ``client`` optional) and queue it for its client."""
        from testbed.spec import TaskSpec  # the spec's own schema (pydantic)
        if not isinstance(req, dict):
            raise SubmissionError("body must be a JSON object with the fields of a spec task, e.g. "
                                  '{"target_accuracy": 0.8, "deadline_s": 60}')
        self._room()
        now = time.time() if now is None else now
        body = dict(req)
        client = self._client(body)
        body["client"] = client
        if "id" in body:
            if body["id"] in self.used_ids or body["id"] in self.tasks:
                raise SubmissionError(f"id: task {body['id']} exists already; leave id out to get a new one")
        else:
            body["id"] = max([*self.used_ids, *self.tasks, 0]) + 1
        try:
            # strict: JSON types as they are ("30" is not 30, true is not 1)
            t = TaskSpec.model_validate(body, strict=True)
        except ValidationError as e:
            raise SubmissionError(_pydantic_reason(e)) from None
        if t.deploy_to and t.replicas:
            raise SubmissionError("replicas: give either deploy_to (fixed hosts) or replicas (the DCC places them)")
        for h in t.deploy_to:
            if h not in self.inference:
                raise SubmissionError(f"deploy_to: {h!r} does not have the role 'inference' "
                                      f"(inference hosts: {self.inference})")
        if t.replicas and not self.inference:
            raise SubmissionError("replicas: no host has the role 'inference'")
        if t.replicas and t.replicas > 255:
            raise SubmissionError("replicas: at most 255")
        sub = TaskSubmission(id=t.id, client=client, task=t.model_dump(), submitted_at=now,
                             deadline_at=now + t.deadline_s)
        _fits_the_wire(task_handoff, sub)
        self.tasks[t.id] = sub
        return sub

    def add_query(self, req, models=(), now: float | None = None) -> QuerySubmission:
        """Validate a POST /v1/queries body: {model, features, [max_latency_ms],
        [min_accuracy], [privacy], [client]}; ``models``: model ids this run has."""
        if not isinstance(req, dict):
            raise SubmissionError('body must be a JSON object, e.g. {"model": 1, "features": [0.0, ...]}')
        extra = set(req) - {"model", "features", "max_latency_ms", "min_accuracy", "privacy", "client"}
        if extra:
            raise SubmissionError(f"unknown field(s) {sorted(extra)}; expected model, features, "
                                  "max_latency_ms, min_accuracy, privacy, client")
        self._room()
        now = time.time() if now is None else now
        client = self._client(req)
        model = req.get("model")
        if isinstance(model, bool) or not isinstance(model, int) or not 1 <= model < 2**32:
            raise SubmissionError(f"model: the id of a training task (a positive integer), got {model!r}")
        if models and model not in models:
            raise SubmissionError(f"model: no task {model} in this run (tasks: {sorted(models)})")
        feats = req.get("features")
        if (not isinstance(feats, list) or not feats or len(feats) > MAX_FEATURES
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in feats)):
            raise SubmissionError(f"features: a non-empty list of at most {MAX_FEATURES} numbers (the model's input)")
        if self.features is not None and len(feats) != self.features:
            raise SubmissionError(f"features: the model takes {self.features} inputs, got {len(feats)}")
        lat, acc = req.get("max_latency_ms"), req.get("min_accuracy")
        if lat is not None and (isinstance(lat, bool) or not isinstance(lat, (int, float)) or not 0 < lat < 2**32):
            raise SubmissionError(f"max_latency_ms: a positive number, got {lat!r}")
        if acc is not None and (isinstance(acc, bool) or not isinstance(acc, (int, float)) or not 0 < acc <= 1):
            raise SubmissionError(f"min_accuracy: a number in (0, 1], got {acc!r}")
        privacy = req.get("privacy", "public")
        if privacy not in ("public", "trusted", "local"):
            raise SubmissionError(f"privacy: one of public, trusted, local, got {privacy!r}")
        try:  # JSON integers may be too large for a float (an OverflowError would read as 429)
            values = [float(x) for x in feats]
        except OverflowError:
            raise SubmissionError("features: a number too large for a float") from None
        qid = len(self.queries) + 1
        q = QuerySubmission(id=qid, client=client, model=model, features=values,
                            max_latency_ms=None if lat is None else float(lat),
                            min_accuracy=None if acc is None else float(acc), privacy=privacy, submitted_at=now)
        _fits_the_wire(query_handoff, q)
        self.queries[qid] = q
        return q

    # ---- hand-off ---------------------------------------------------------------
    def handoffs_for(self, client: str, now: float) -> list[Message]:
        """The messages answering ``client``'s knowledge report: its queued work."""
        out = []
        for s in self.tasks.values():
            if s.client == client and s.status == "queued":
                s.handoffs += 1
                out.append(task_handoff(s))
        for q in self.queries.values():
            if q.client == client and q.status == "queued":
                q.handoffs += 1
                out.append(query_handoff(q))
        return out

    def task_taken(self, task_id: int, now: float) -> bool:
        s = self.tasks.get(task_id)
        if s is None or s.status != "queued":
            return False
        s.status, s.taken_at = "taken", now
        return True

    def task_ended(self, task_id: int, end_reason: str, accuracy: float | None, now: float) -> bool:
        s = self.tasks.get(task_id)
        if s is None or s.status == "ended":
            return False
        s.status, s.ended_at, s.end_reason, s.accuracy = "ended", now, end_reason, accuracy
        s.taken_at = s.taken_at or now
        return True

    def query_of_seq(self, seq: int) -> QuerySubmission | None:
        if seq & QUERY_SEQ_BASE:
            return self.queries.get(seq & ~QUERY_SEQ_BASE)
        return None

    def query_routed(self, seq: int, server: str | None, feasible: bool, reasons, now: float):
        q = self.query_of_seq(seq)
        if q is None:
            return
        if q.status == "queued":
            q.status, q.taken_at = "taken", now
        q.routes.append({"server": server, "feasible": feasible, "reasons": list(reasons)[:3]})
        q.server = server or q.server

    def query_ended(self, seq: int, now: float, *, label=None, confidence=None, service_ms=None,
                    error: str | None = None) -> bool:
        q = self.query_of_seq(seq)
        if q is None or q.status in ("answered", "failed"):
            return False
        q.taken_at = q.taken_at or now
        q.ended_at = now
        if error is None:
            q.status, q.label, q.confidence, q.service_ms = "answered", label, confidence, service_ms
        else:
            q.status, q.error = "failed", error
        return True

    def view(self) -> dict:
        return {"tasks": {str(k): s.view() for k, s in self.tasks.items()},
                "queries": {str(k): q.view() for k, q in self.queries.items()}}


# where each submitted field sits in the hand-off message (for error messages)
_WIRE_FIELDS = (("DEADLINE", "deadline_s"), ("ITINERARY.max_laps", "max_laps"), ("ITINERARY.ptr", "replicas"),
                ("ITINERARY", "deploy_to"), ("REQUIRED_LABELS", "required_labels"), ("BYTE_BUDGET", "byte_budget"),
                ("MAX_LATENCY", "max_latency_ms"), ("MIN_ACCURACY", "min_accuracy"),
                ("TARGET_ACCURACY", "target_accuracy"), ("features", "features"))


def _fits_the_wire(handoff, sub):
    """Refuse at the API what the DCC could not hand to the client later: its hand-off
    message is built and encoded once now (fuzzing found e.g. deadline_s: 1e300, which
    passed validation and then raised on the DCC's event thread at every report)."""
    try:
        wire.encode(handoff(sub))
    except (wire.WireError, OverflowError, ValueError, TypeError) as e:
        text = str(e)
        field = next((f for where, f in _WIRE_FIELDS if where in text), "body")
        raise SubmissionError(f"{field}: out of the range the hand-off message to the client carries "
                              f"({text[:160]})") from None


def task_handoff(s: TaskSubmission) -> Message:
    t = s.task
    tlvs = {Tlv.TARGET_ACCURACY: float(t["target_accuracy"]), Tlv.DEADLINE: int(s.deadline_at * 1000),
            Tlv.ITINERARY: wire.Itinerary(int(t.get("replicas") or 0), 0, int(t["max_laps"]),
                                          [wire.node_id(h) for h in t.get("deploy_to") or []])}
    if t.get("required_labels"):
        tlvs[Tlv.REQUIRED_LABELS] = list(t["required_labels"])
    if t.get("byte_budget"):
        tlvs[Tlv.BYTE_BUDGET] = int(t["byte_budget"])
    return Message(MsgType.TRAIN_REQUEST, flags=wire.REPLY, task_id=s.id, model_id=s.id, tlvs=tlvs,
                   body=wire.TrainRequest(0))


def query_handoff(q: QuerySubmission) -> Message:
    tlvs = {Tlv.PRIVACY_LEVEL: wire.Privacy[q.privacy.upper()]}
    if q.max_latency_ms:
        tlvs[Tlv.MAX_LATENCY] = int(q.max_latency_ms)
    if q.min_accuracy:
        tlvs[Tlv.MIN_ACCURACY] = float(q.min_accuracy)
    return Message(MsgType.INFERENCE_QUERY, flags=wire.REPLY, model_id=q.model, seq=q.seq, tlvs=tlvs,
                   body=wire.InferenceQuery(list(q.features)))


def task_from_handoff(m: Message, now: float | None = None) -> dict:
    """The client's side: a hand-off TRAIN_REQUEST -> a task dict like the spec's."""
    now = time.time() if now is None else now
    itin = m.tlvs.get(Tlv.ITINERARY)
    deadline = m.tlvs.get(Tlv.DEADLINE)
    return {"id": m.task_id, "target_accuracy": float(m.tlvs.get(Tlv.TARGET_ACCURACY, 1.0)),
            "deadline_s": max(1.0, deadline / 1000 - now) if deadline else 60.0,
            "max_laps": (itin.max_laps if itin and itin.max_laps else 10),
            "required_labels": list(m.tlvs[Tlv.REQUIRED_LABELS]) if m.tlvs.get(Tlv.REQUIRED_LABELS) else None,
            "byte_budget": m.tlvs.get(Tlv.BYTE_BUDGET),
            "deploy_to": [wire.node_name(n) for n in itin.segments] if itin else [],
            "replicas": (itin.ptr or None) if itin else None, "submitted": True}
