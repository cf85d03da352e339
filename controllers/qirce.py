"""QIRCE and Q-FAM, the DCC's query side: which replica answers an inference query, whether any can, where replicas go.

:class:`QueryRouter` turns a :class:`Query` (what ``nodes.roles.Client.run_workload`` sends:
the model, MAX_LATENCY, MIN_ACCURACY and PRIVACY_LEVEL TLVs), the DCC's maps
(``NetworkMaps.snapshot(now)``, shape in ``controllers/maps.py``) and the replicas the DCC
deployed (:class:`ReplicaInfo`, with the MPVU's verdict of the deployed version) into a
:class:`RouteDecision`: the server, its path, the predicted latency and, when no replica
will do, every reason why, at once (Q-FAM). :func:`place_replicas` chooses where a model's
replicas go after training. Pure: no os_ken, no mininet, no clock but ``now``.

Candidates and what rules one out (checked in this order; a candidate keeps the first)
--------------------------------------------------------------------------------------
- *privacy* (``wire.Privacy`` names, lower-case): ``public`` goes anywhere; ``trusted`` only
  to a server the client trusts (``trusted[client]``) or to the client itself; ``local``
  only to the client itself. In the testbed a host is one node, so "the client's own host"
  is the client node: a ``local`` query is answered only if the client hosts a replica
  (``inference`` role), with no network at all, and is refused otherwise. Trust does not
  widen ``local``: a trusted server is still another machine.
- *accuracy*: with ``min_accuracy``, the replica's MPVU verdict must reach it. A replica
  without a verdict is refused for such a query: nothing backs a promise of accuracy.
- *excluded*: ``route(..., exclude=...)``, the servers the caller saw fail (failover).
- *state*: the server's QRRT entry must be fresh or stale, and it must report the model
  among its ``models`` (a deployment not yet arrived, or lost in a restart, is no replica).
  A down, expired or never-reported server is no candidate.
- *path*: the client must reach the server, and the server the client, over up links.
- *latency*: with ``max_latency_ms``, the prediction must be under it.

Predicted latency (ms), per candidate (``candidates[i]`` carries every part)
--------------------------------------------------------------------------
``network + queue + service + feedback``:

- *network*: the query travels client -> server and the result back, each on its fastest
  path for its size over up links (Dijkstra; per link latency = measured ``latency_ms``,
  else the configured ``delay_ms``, else 0; rate = measured ``available_mbps`` but at least
  ``min_share`` of the capacity, else the capacity, else ``default_link_mbps``; hosts never
  forward). A message of a few hundred bytes is one packet, which every link stores and
  forwards, so the transfer time is summed over the links (not only the slowest, as for a
  model). ``nodes/runtime.py`` opens a TCP connection per query, so a SYN/SYN-ACK round trip
  comes first: network = (1 + ``connect_round_trips``) x (latency there + latency back)
  + transfer of the query there + transfer of the result back. Message sizes:
  ``features_bytes`` + ``query_overhead_bytes`` and ``result_bytes`` (:class:`QueryCost`,
  checked against ``nodes.wire.encode`` in the tests).
- *queue*: ``queue_len x service`` as the server last reported them. A report without a
  queue length is estimated from its load (busy fraction) as ``load x service``.
- *service*: the server's reported ``service_ms`` (EWMA of enqueue-to-answer time, so it
  already holds its own batching wait). A server that has answered nothing reports 0:
  ``default_service_ms`` is assumed (the 5 ms a lone query waits for its batch to fill,
  ``inference.max_wait_ms``, plus about 1 ms of MLP forward pass) and said in the notes.
- *feedback*: :meth:`QueryRouter.record_outcome` keeps, per server, an EWMA of observed
  minus predicted latency; it is added (a prediction is never below 0) and decays with
  ``feedback_half_life_s`` since the last outcome, as fresher reports take over.

Choosing among the candidates (load spreading)
----------------------------------------------
Sending every query to the single best replica would pile its queue up before its next
report shows it. The router takes the candidates whose prediction is within ``tolerance``
(relative) plus ``tolerance_ms`` of the best, and under the query's ``max_latency_ms``,
then by ``spread``:

- ``p2c`` (default): power of two choices: two of them drawn with the router's seeded RNG,
  the one the router sent fewer queries to recently wins (its own count, decayed with
  ``recent_half_life_s``: what the server's reports do not show yet); ties: lower
  prediction, then name. Two equal replicas share queries evenly; one outside the
  tolerance gets none.
- ``best``: always the lowest prediction (ties: name), deterministic, no spreading.
- ``random``: uniform among them, seeded.

Servers that failed recently (EWMA failure rate >= ``suspect_failure_rate``) are chosen only
when no other candidate qualifies. :meth:`QueryRouter.failover_order` ranks the candidates
meeting every requirement, best prediction first; ``route(..., exclude=failed)`` answers
the next best.

Snapshots are read-only here: the graph built from one is kept (with its shortest paths
per client) for as long as the same snapshot object is passed, so many queries between two
snapshots cost one Dijkstra per client and direction. ``NetworkMaps.snapshot()`` builds a
new dict each call; do not mutate one in place and route with it again.

Placement (:func:`place_replicas`): greedy k-median. Start with no replica; k times, add the
candidate that most lowers the rate-weighted network latency from the query sources to their
nearest chosen replica (first: fewest queries per second left without any reachable
replica; ties: name). Greedy is within a constant factor of the optimum for this
objective and takes k x candidates x sources steps (numpy).
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import asdict, dataclass
from functools import lru_cache

import networkx as nx
import numpy as np

__all__ = ["Query", "ReplicaInfo", "RouteDecision", "QueryCost", "QueryRouter", "place_replicas",
           "PRIVACY_LEVELS", "SPREADS"]

PRIVACY_LEVELS = ("public", "trusted", "local")  # nodes.wire.Privacy, lower-case
SPREADS = ("p2c", "best", "random")
LIVE = ("fresh", "stale")
REASONS_PER_KIND = 5  # rejected candidates named one by one per reason; the rest are counted


@lru_cache(maxsize=1 << 16)  # names repeat at every decision
def _natural(name) -> tuple:
    """Sort key putting h2 before h10."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(name)))


@lru_cache(maxsize=1 << 16)
def _is_switch(name) -> bool:
    return isinstance(name, str) and re.fullmatch(r"s[1-9][0-9]*", name) is not None


def _ms(x: float) -> str:
    """73.4 -> '73 ms'; 2.04 -> '2 ms'; 0.45 -> '0.5 ms'."""
    if x >= 9.95:
        return f"{x:.0f} ms"
    return f"{x:.1f}".removesuffix(".0") + " ms"


# ---- queries, replicas, decisions ---------------------------------------------------------
@dataclass(frozen=True)
class Query:
    """One inference query as the DCC sees it: from ``client``, for ``model_id``, with the
    MAX_LATENCY, MIN_ACCURACY and PRIVACY_LEVEL the client set; ``features_bytes`` is the
    query body's size (64 float32 features for digits: 256)."""

    query_id: int
    client: str
    model_id: int
    max_latency_ms: float | None = None
    min_accuracy: float | None = None
    privacy: str = "public"
    features_bytes: int = 256

    def __post_init__(self):
        p = str(getattr(self.privacy, "name", self.privacy)).lower()  # a wire.Privacy works too
        if p not in PRIVACY_LEVELS:
            raise ValueError(f"query {self.query_id}: privacy must be one of {', '.join(PRIVACY_LEVELS)}, "
                             f"got {self.privacy!r}")
        object.__setattr__(self, "privacy", p)
        if self.max_latency_ms is not None and not self.max_latency_ms > 0:
            raise ValueError(f"query {self.query_id}: max_latency_ms must be > 0 or None, got {self.max_latency_ms!r}")
        if self.min_accuracy is not None and not 0 < self.min_accuracy <= 1:
            raise ValueError(f"query {self.query_id}: min_accuracy must be in (0, 1] or None, "
                             f"got {self.min_accuracy!r}")
        if not (isinstance(self.features_bytes, int) and self.features_bytes >= 0):
            raise ValueError(f"query {self.query_id}: features_bytes must be an integer >= 0, "
                             f"got {self.features_bytes!r}")


@dataclass
class ReplicaInfo:
    """A replica the DCC deployed: ``node`` hosts ``model_id``; ``accuracy`` is the MPVU's
    last verdict of the deployed version (None: never verified)."""

    node: str
    model_id: int
    accuracy: float | None


@dataclass
class RouteDecision:
    """QIRCE's answer to one query, with Q-FAM's verdict. ``reasons``: why it is infeasible
    first (or why this server), then notes; ``candidates``: every replica of the model
    considered, with its predicted latency parts and ``rejected`` (None: eligible)."""

    query_id: int
    feasible: bool
    server: str | None
    path: list[str] | None          # client .. server, switches included
    predicted_ms: float | None
    reasons: list[str]
    candidates: list[dict]

    def to_dict(self) -> dict:
        """JSON-ready (for events.jsonl): plain lists, dicts, numbers and strings."""
        return asdict(self)


@dataclass(frozen=True)
class QueryCost:
    """The constants predictions use; each says where it comes from."""

    # nodes/runtime.py TcpTransport.request opens a connection per query: one SYN/SYN-ACK
    # round trip before the query goes.
    connect_round_trips: int = 1
    # INFERENCE_QUERY bytes besides the features: 36-byte header, MAX_LATENCY, MIN_ACCURACY and
    # PRIVACY_LEVEL TLVs, the 2-byte feature count and the 40-byte AUTH trailer (nodes.wire).
    query_overhead_bytes: int = 94
    # INFERENCE_RESULT with AUTH: header, label, confidence, service time, trailer.
    result_bytes: int = 85
    # A server that has answered nothing reports service_ms 0: a lone query waits
    # inference.max_wait_ms (5 ms default) for its batch, then ~1 ms of MLP forward pass.
    default_service_ms: float = 6.0
    default_link_mbps: float = 100.0   # a link direction whose rate nobody knows
    min_share: float = 0.1             # a saturated link still gives a flow this share of capacity

    def __post_init__(self):
        for name in ("connect_round_trips", "query_overhead_bytes", "result_bytes", "default_service_ms",
                     "min_share"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"QueryCost.{name} must be >= 0, got {getattr(self, name)!r}")
        if not self.default_link_mbps > 0:
            raise ValueError(f"QueryCost.default_link_mbps must be > 0, got {self.default_link_mbps!r}")


# ---- the network as the snapshot shows it ------------------------------------------------------
class _Net:
    """Up links of a snapshot as a directed graph; a host ``h`` sends from ``("out", h)`` and
    receives at ``h``, so no path runs through a host. Edge data: ``lat`` (ms) and ``mbps``.
    Shortest-path trees are cached per (source or target, message size)."""

    def __init__(self, snapshot: dict, cost: QueryCost):
        self.g = nx.DiGraph()
        for row in snapshot.get("drrt", {}).get("resources", {}).get("links", []):
            if not row.get("up", True):
                continue
            lat = row.get("latency_ms")
            lat = float((row.get("delay_ms") if lat is None else lat) or 0.0)
            cap = row.get("capacity_mbps")
            for u, v, d in ((row["a"], row["b"], row.get("a_to_b") or {}),
                            (row["b"], row["a"], row.get("b_to_a") or {})):
                avail = d.get("available_mbps")
                if avail is not None and cap:
                    mbps = max(float(avail), cost.min_share * cap)
                elif cap:
                    mbps = float(cap)
                else:
                    mbps = cost.default_link_mbps
                self.g.add_edge(self.src_id(u), v, lat=lat, mbps=max(mbps, 1e-6))
        self._rev = self.g.reverse(copy=False)
        self._trees: dict = {}

    @staticmethod
    def src_id(node):
        return node if _is_switch(node) else ("out", node)

    @staticmethod
    def _weight(nbytes: int):
        bits = nbytes * 8

        def w(u, v, d):
            return d["lat"] + bits / (d["mbps"] * 1e3)  # ms
        return w

    def _tree(self, key, graph, source, nbytes) -> tuple[dict, dict]:
        """(paths from ``source`` by node, {node: (path, latency, transfer)} filled lazily)."""
        t = self._trees.get(key)
        if t is None:
            paths = (nx.single_source_dijkstra(graph, source, weight=self._weight(nbytes))[1]
                     if source in graph else {})
            t = self._trees[key] = (paths, {})
        return t

    def _parts(self, path: list, nbytes: int) -> tuple[float, float]:
        lat = tx = 0.0
        for u, v in zip(path, path[1:]):
            d = self.g.edges[u, v]
            lat += d["lat"]
            tx += nbytes * 8 / (d["mbps"] * 1e3)
        return lat, tx

    def there(self, src: str, dst: str, nbytes: int):
        """(path src..dst by name, latency ms, transfer ms) or None if unreachable. The
        caller must not change the path list (it is cached)."""
        if src == dst:
            return [src], 0.0, 0.0
        paths, done = self._tree(("from", src, nbytes), self.g, self.src_id(src), nbytes)
        if dst not in done:
            p = paths.get(dst)
            done[dst] = None if p is None else ([src, *p[1:]], *self._parts(p, nbytes))
        return done[dst]

    def back(self, src: str, dst: str, nbytes: int):
        """Like :meth:`there`, over one shortest-path tree into ``dst`` for every ``src``."""
        if src == dst:
            return [src], 0.0, 0.0
        paths, done = self._tree(("to", dst, nbytes), self._rev, dst, nbytes)
        if src not in done:
            p = paths.get(self.src_id(src))
            if p is None:
                done[src] = None
            else:
                p = p[::-1]
                done[src] = ([src, *p[1:]], *self._parts(p, nbytes))
        return done[src]


# ---- per-server memory ------------------------------------------------------------------------
@dataclass
class _ServerMemory:
    """What the router learnt about one server from its own decisions and their outcomes."""

    sent: float = 0.0               # queries routed there, decayed
    sent_t: float = 0.0
    bias_ms: float = 0.0            # EWMA of observed - predicted latency
    failure_rate: float = 0.0       # EWMA of failures (1) and answers (0)
    outcome_t: float | None = None
    outcomes: int = 0
    observed_ms: float | None = None  # EWMA of observed latency of answered queries
    last_predicted_ms: float | None = None


def _decay(value: float, since: float | None, now: float, half_life: float) -> float:
    if since is None or half_life <= 0:
        return value
    return value * 0.5 ** (max(0.0, now - since) / half_life)


class QueryRouter:
    """QIRCE + Q-FAM: routes each query to a replica (see the module docstring)."""

    def __init__(self, *, trusted: dict[str, set[str]] | None = None, seed: int = 0, spread: str = "p2c",
                 cost: QueryCost | None = None, tolerance: float = 0.25, tolerance_ms: float = 2.0,
                 recent_half_life_s: float = 1.0, feedback_half_life_s: float = 10.0,
                 feedback_weight: float = 0.3, suspect_failure_rate: float = 0.5):
        if spread not in SPREADS:
            raise ValueError(f"spread must be one of {', '.join(SPREADS)}, got {spread!r}")
        if not (tolerance >= 0 and tolerance_ms >= 0):
            raise ValueError(f"tolerance and tolerance_ms must be >= 0, got {tolerance!r}, {tolerance_ms!r}")
        if not 0 < feedback_weight <= 1:
            raise ValueError(f"feedback_weight (weight of a new outcome) must be in (0, 1], got {feedback_weight!r}")
        if not 0 < suspect_failure_rate <= 1:
            raise ValueError(f"suspect_failure_rate must be in (0, 1], got {suspect_failure_rate!r}")
        if isinstance(trusted, dict):
            for c, s in trusted.items():
                if isinstance(s, str):
                    raise ValueError(f"trusted[{c!r}] must be a set of server names, got the string {s!r}")
        self.trusted = {c: frozenset(s) for c, s in (trusted or {}).items()}
        self.spread = spread
        self.cost = cost or QueryCost()
        self.tolerance, self.tolerance_ms = float(tolerance), float(tolerance_ms)
        self.recent_half_life_s = float(recent_half_life_s)
        self.feedback_half_life_s = float(feedback_half_life_s)
        self.feedback_weight = float(feedback_weight)
        self.suspect_failure_rate = float(suspect_failure_rate)
        self.rng = random.Random(seed)
        self.memory: dict[str, _ServerMemory] = {}
        self._net_cache: tuple[dict, _Net] | None = None  # holds the snapshot: its id stays unique

    # ---- the network ---------------------------------------------------------------------
    def _net(self, snapshot: dict) -> _Net:
        if self._net_cache is None or self._net_cache[0] is not snapshot:
            self._net_cache = (snapshot, _Net(snapshot, self.cost))
        return self._net_cache[1]

    # ---- feedback ------------------------------------------------------------------------
    def record_outcome(self, server: str, latency_ms: float | None, ok: bool, now: float,
                       predicted_ms: float | None = None) -> None:
        """What became of a query sent to ``server``: answered (``ok``) after ``latency_ms``,
        or failed. Answers refine the server's latency bias (observed minus ``predicted_ms``,
        default: the last prediction the router made for it); failures raise its failure
        rate. Both decay with ``feedback_half_life_s``."""
        m = self.memory.setdefault(server, _ServerMemory())
        a = self.feedback_weight
        bias = _decay(m.bias_ms, m.outcome_t, now, self.feedback_half_life_s)
        fail = _decay(m.failure_rate, m.outcome_t, now, self.feedback_half_life_s)
        if ok:
            if latency_ms is None or not (latency_ms >= 0 and math.isfinite(latency_ms)):
                raise ValueError(f"outcome at {server}: an answered query needs a latency >= 0 ms, got {latency_ms!r}")
            pred = m.last_predicted_ms if predicted_ms is None else predicted_ms
            if pred is not None:
                # pred already holds the bias of its time: moving the bias by a share of the
                # error is an EWMA of (observed - prediction without feedback)
                bias += a * (latency_ms - pred)
            m.observed_ms = latency_ms if m.observed_ms is None else a * latency_ms + (1 - a) * m.observed_ms
            fail = (1 - a) * fail
        else:
            fail = a + (1 - a) * fail
        m.bias_ms, m.failure_rate, m.outcome_t = bias, fail, now
        m.outcomes += 1

    def feedback(self, server: str, now: float) -> dict:
        """The router's memory of ``server`` at ``now`` (JSON-ready)."""
        m = self.memory.get(server, _ServerMemory())
        return {"recent_queries": _decay(m.sent, m.sent_t, now, self.recent_half_life_s),
                "bias_ms": _decay(m.bias_ms, m.outcome_t, now, self.feedback_half_life_s),
                "failure_rate": _decay(m.failure_rate, m.outcome_t, now, self.feedback_half_life_s),
                "observed_ms": m.observed_ms, "outcomes": m.outcomes}

    # ---- candidates ----------------------------------------------------------------------
    def _evaluate(self, q: Query, snapshot: dict, replicas: list[ReplicaInfo], now: float,
                  exclude) -> list[dict]:
        """Every replica of the model with its prediction and first reason for rejection."""
        qrrt = snapshot.get("qrrt", {})
        know, res = qrrt.get("knowledge", {}), qrrt.get("resources", {})
        nodes = snapshot.get("nodes", {})
        net = self._net(snapshot)
        trusted = self.trusted.get(q.client, frozenset())
        c = self.cost
        qbytes, rbytes = q.features_bytes + c.query_overhead_bytes, c.result_bytes
        seen, out = set(), []
        for rep in sorted((r for r in replicas if r.model_id == q.model_id), key=lambda r: _natural(r.node)):
            if rep.node in seen:  # the same replica listed twice: one candidate
                continue
            seen.add(rep.node)
            s = rep.node
            k, r = know.get(s), res.get(s)
            status = (k or {}).get("status") or nodes.get(s, {}).get("status")
            cand = {"server": s, "model_id": q.model_id, "accuracy": rep.accuracy, "status": status,
                    "age_s": (k or {}).get("age_s"), "path": None, "path_back": None, "network_ms": None,
                    "queue_ms": None, "service_ms": None, "feedback_ms": 0.0, "predicted_ms": None,
                    "queue_len": (r or {}).get("queue_len"), "failure_rate": 0.0, "suspect": False,
                    "notes": [], "rejected": None, "kind": None, "chosen": False}
            reject = []  # (kind, reason), first one wins
            if q.privacy == "local" and s != q.client:
                reject.append(("privacy", f"{s} is not {q.client}: a 'local' query may not leave its client"))
            elif q.privacy == "trusted" and s != q.client and s not in trusted:
                reject.append(("privacy", f"{q.client} does not trust {s} with a 'trusted' query"))
            if q.min_accuracy is not None:
                if rep.accuracy is None:
                    reject.append(("accuracy", f"{s}'s replica of model {q.model_id} has no MPVU verdict: "
                                               f"nothing backs accuracy >= {q.min_accuracy:g}"))
                elif rep.accuracy < q.min_accuracy:
                    reject.append(("accuracy", f"{s}'s replica of model {q.model_id} scored "
                                               f"{rep.accuracy:.3g} at the MPVU, below the {q.min_accuracy:g} asked"))
            if s in exclude:
                reject.append(("excluded", f"{s} is excluded (failed for this query)"))
            if k is None or r is None:
                st = nodes.get(s, {}).get("status")
                reject.append(("down", f"{s} has no QRRT entry ({st or 'never reported'}; "
                                       "not an inference node, or its entry expired)"))
            elif status not in LIVE:
                reject.append(("down", f"{s} is {status} (no report for {k.get('age_s', 0):.1f} s)"))
            elif q.model_id not in (k.get("models") or []):
                reject.append(("down", f"{s} does not report model {q.model_id} "
                                       f"(it reports {sorted(k.get('models') or [])})"))
            if k is not None and r is not None:
                there = net.there(q.client, s, qbytes)
                back = net.back(s, q.client, rbytes) if there is not None else None
                if there is None or back is None:
                    reject.append(("path", f"no path between {q.client} and {s} over up links"))
                else:
                    (p1, l1, t1), (p2, l2, t2) = there, back
                    service = float(r.get("service_ms") or 0.0)
                    if service <= 0:
                        service = c.default_service_ms
                        cand["notes"].append(f"{s} has answered nothing yet: service assumed "
                                             f"{_ms(service)}")
                    ql = r.get("queue_len")
                    if ql is None:
                        queue = max(0.0, min(1.0, float(r.get("load") or 0.0))) * service
                        cand["notes"].append(f"{s} reports no queue length: estimated from its load")
                    else:
                        queue = ql * service
                    m = self.memory.get(s)
                    fb = fail = 0.0
                    if m is not None:
                        fb = _decay(m.bias_ms, m.outcome_t, now, self.feedback_half_life_s)
                        fail = _decay(m.failure_rate, m.outcome_t, now, self.feedback_half_life_s)
                    network = (1 + c.connect_round_trips) * (l1 + l2) + t1 + t2
                    base = network + queue + service
                    fb = max(fb, -base)  # a prediction is never below 0 ms
                    cand.update(path=list(p1), path_back=list(p2), network_ms=network, queue_ms=queue,
                                service_ms=service, feedback_ms=fb, predicted_ms=base + fb, failure_rate=fail,
                                suspect=fail >= self.suspect_failure_rate)
            if not reject and q.max_latency_ms is not None and cand["predicted_ms"] > q.max_latency_ms:
                reject.append(("latency", f"{s} predicts {self._breakdown(cand)}, over the "
                                          f"{_ms(q.max_latency_ms)} allowed"))
            if reject:
                cand["kind"], cand["rejected"] = reject[0]
            out.append(cand)
        return out

    @staticmethod
    def _breakdown(c: dict) -> str:
        s = (f"{_ms(c['predicted_ms'])} = {_ms(c['network_ms'])} network + {_ms(c['queue_ms'])} queue + "
             f"{_ms(c['service_ms'])} service")
        if abs(c["feedback_ms"]) >= 0.05:
            sign = "+" if c["feedback_ms"] > 0 else "-"
            s += f" {sign} {_ms(abs(c['feedback_ms']))} from recent outcomes"
        return s

    def _headline(self, q: Query, cands: list[dict]) -> str:
        """Why no candidate is left, in the request's terms first (privacy, accuracy), then
        the network's (down, excluded, unreachable), then time."""
        model = f"model {q.model_id}"
        kinds = [c["kind"] for c in cands]
        if all(k == "privacy" for k in kinds):
            if q.privacy == "local":
                return (f"no replica of {model} on {q.client} itself for a 'local' query from {q.client} "
                        f"(replicas on {', '.join(c['server'] for c in cands)})")
            t = sorted(self.trusted.get(q.client, ()), key=_natural)
            trusts = f"{q.client} trusts {', '.join(t)}" if t else f"{q.client} trusts no inference server"
            return f"no trusted replica of {model} for a sensitive query from {q.client} ({trusts})"
        left = [c for c in cands if c["kind"] != "privacy"]
        if all(c["kind"] == "accuracy" for c in left):
            known = [c for c in left if c["accuracy"] is not None]
            best = max(known, key=lambda c: c["accuracy"], default=None)
            detail = [f"best verdict {best['accuracy']:.3g} at {best['server']}"] if best else []
            unknown = [c["server"] for c in left if c["accuracy"] is None]
            if unknown:
                detail.append(f"no verdict at {', '.join(unknown[:REASONS_PER_KIND])}"
                              + (f" and {len(unknown) - REASONS_PER_KIND} more" if len(unknown) > REASONS_PER_KIND
                                 else ""))
            return (f"no replica of {model} is verified at accuracy >= {q.min_accuracy:g} "
                    f"({'; '.join(detail)})")
        left = [c for c in left if c["kind"] != "accuracy"]
        if not any(c["kind"] == "latency" for c in left):
            what = {"excluded": "excluded", "down": "down or not hosting it", "path": "unreachable"}
            counts = {}
            for c in left:
                counts[what[c["kind"]]] = counts.get(what[c["kind"]], 0) + 1
            return (f"no replica of {model} that meets the query's requirements can serve {q.client} now: "
                    + ", ".join(f"{n} {w}" for w, n in counts.items()))
        slow = sorted((c for c in left if c["kind"] == "latency"),
                      key=lambda c: (c["predicted_ms"], _natural(c["server"])))
        shown = "; ".join(f"{c['server']}: {self._breakdown(c)}" for c in slow[:3])
        return f"every replica of {model} predicts more than {_ms(q.max_latency_ms)} ({shown})"

    @staticmethod
    def _rejection_notes(cands: list[dict]) -> list[str]:
        per_kind: dict[str, list[str]] = {}
        for c in cands:
            if c["rejected"]:
                per_kind.setdefault(c["kind"], []).append(c["rejected"])
        out = []
        for reasons in per_kind.values():
            out += reasons[:REASONS_PER_KIND]
            if len(reasons) > REASONS_PER_KIND:
                out.append(f"... and {len(reasons) - REASONS_PER_KIND} more like it")
        return out

    def _ranked(self, cands: list[dict]) -> list[dict]:
        ok = [c for c in cands if c["rejected"] is None]
        return sorted(ok, key=lambda c: (c["suspect"], c["predicted_ms"], _natural(c["server"])))

    # ---- public --------------------------------------------------------------------------
    def failover_order(self, q: Query, snapshot: dict, replicas: list[ReplicaInfo], now: float,
                       exclude: set[str] = frozenset()) -> list[str]:
        """Servers able to answer ``q``, best first (servers that failed recently last); no
        state changes. Failover: try them in turn."""
        return [c["server"] for c in self._ranked(self._evaluate(q, snapshot, replicas, now, exclude))]

    def route(self, q: Query, snapshot: dict, replicas: list[ReplicaInfo], now: float,
              exclude: set[str] = frozenset()) -> RouteDecision:
        """Q-FAM + QIRCE: the replica that answers ``q``, or every reason none can."""
        if isinstance(exclude, str):
            raise ValueError(f"query {q.query_id}: exclude must be a set of server names, got {exclude!r}")
        cands = self._evaluate(q, snapshot, replicas, now, exclude)
        if not cands:
            n_other = len({r.node for r in replicas})
            why = f"model {q.model_id} has no replica"
            if n_other:
                why += f" (the {n_other} replica(s) given host other models)"
            return RouteDecision(q.query_id, False, None, None, None, [why], [])
        ranked = self._ranked(cands)
        if not ranked:
            return RouteDecision(q.query_id, False, None, None, None,
                                 [self._headline(q, cands), *self._rejection_notes(cands)], cands)
        pool = [c for c in ranked if not c["suspect"]] or ranked
        best = pool[0]
        # (over max_latency_ms was rejected already)
        limit = best["predicted_ms"] * (1 + self.tolerance) + self.tolerance_ms
        close = [c for c in pool if c["predicted_ms"] <= limit]
        chosen, how = self._spread(close, now)
        m = self.memory.setdefault(chosen["server"], _ServerMemory())
        m.sent = _decay(m.sent, m.sent_t, now, self.recent_half_life_s) + 1
        m.sent_t = now
        m.last_predicted_ms = chosen["predicted_ms"]
        chosen["chosen"] = True
        reasons = [f"{chosen['server']} answers: predicts {self._breakdown(chosen)}"]
        if len(close) > 1:
            reasons.append(f"{len(close)} replicas within {self.tolerance:.0%} + {_ms(self.tolerance_ms)} of the "
                           f"best ({best['server']}, {_ms(best['predicted_ms'])}): {how}")
        if pool is not ranked and len(pool) < len(ranked):
            reasons.append("servers that failed recently are kept for failover: "
                           + ", ".join(c["server"] for c in ranked if c["suspect"]))
        elif pool[0]["suspect"]:
            reasons.append(f"every candidate failed recently; {chosen['server']} is the best of them")
        reasons += chosen["notes"]
        reasons += self._rejection_notes(cands)
        return RouteDecision(q.query_id, True, chosen["server"], list(chosen["path"]), chosen["predicted_ms"],
                             reasons, cands)

    def _spread(self, close: list[dict], now: float) -> tuple[dict, str]:
        if len(close) == 1 or self.spread == "best":
            return close[0], "the best prediction wins"
        if self.spread == "random":
            return self.rng.choice(close), "one of them drawn at random"

        def recent(c):
            m = self.memory.get(c["server"])
            return 0.0 if m is None else _decay(m.sent, m.sent_t, now, self.recent_half_life_s)
        a, b = self.rng.sample(close, 2)
        pick = min((a, b), key=lambda c: (recent(c), c["predicted_ms"], _natural(c["server"])))
        other = b if pick is a else a
        drawn = f"of two drawn ({a['server']}, {b['server']}), {pick['server']}"
        if recent(pick) < recent(other):
            return pick, f"{drawn} was sent fewer queries lately ({recent(pick):.1f} vs {recent(other):.1f})"
        if pick["predicted_ms"] < other["predicted_ms"]:
            return pick, f"{drawn}: as many queries lately ({recent(pick):.1f}), lower prediction"
        return pick, f"{drawn}: as many queries lately ({recent(pick):.1f}), same prediction, first by name"


# ---- placement ---------------------------------------------------------------------------------
def place_replicas(model_id: int, sources: dict[str, float], snapshot: dict, candidates: list[str], k: int,
                   cost: QueryCost | None = None, features_bytes: int = 256) -> tuple[list[str], list[str]]:
    """Where ``k`` replicas of ``model_id`` go: greedy k-median over the network latency
    (as :class:`QueryRouter` predicts it, without queue or service) from each query source
    (``sources``: client -> queries per second) to its nearest replica, weighted by rate.
    ``candidates``: inference nodes that may host it; down or unknown ones are skipped.
    Returns (chosen in the order picked, reasons)."""
    if not (isinstance(k, int) and k >= 1):
        raise ValueError(f"model {model_id}: k (replicas to place) must be an integer >= 1, got {k!r}")
    bad = {s: r for s, r in sources.items() if not (r >= 0 and math.isfinite(r))}
    if bad:
        raise ValueError(f"model {model_id}: query rates must be finite and >= 0 q/s, got {bad}")
    cost = cost or QueryCost()
    know = snapshot.get("qrrt", {}).get("knowledge", {})
    net = _Net(snapshot, cost)
    qbytes, rbytes = features_bytes + cost.query_overhead_bytes, cost.result_bytes
    reasons: list[str] = []
    usable = []
    for c in sorted(dict.fromkeys(candidates), key=_natural):
        st = know.get(c, {}).get("status")
        if st in LIVE:
            usable.append(c)
        else:
            reasons.append(f"{c} skipped: {'no QRRT entry (not an inference node, or expired)' if st is None else st}")
    src = sorted((s for s, r in sources.items() if r > 0), key=_natural)
    if not usable:
        return [], [f"no live inference node among the {len(candidates)} candidates for model {model_id}", *reasons]
    if not src:
        return [], [f"no query source with a rate > 0 for model {model_id}: nothing to place for", *reasons]
    rate = np.array([float(sources[s]) for s in src])
    lat = np.full((len(src), len(usable)), np.inf)  # ms, source x candidate
    for i, s in enumerate(src):
        for j, c in enumerate(usable):
            there = net.there(s, c, qbytes)
            back = net.back(c, s, rbytes) if there is not None else None
            if there is not None and back is not None:
                lat[i, j] = (1 + cost.connect_round_trips) * (there[1] + back[1]) + there[2] + back[2]
    cur = np.full(len(src), np.inf)
    chosen: list[int] = []
    total = rate.sum()

    def score(col):  # (q/s left without a replica, rate-weighted latency of the served)
        d = np.minimum(cur[:, None], col)
        served = np.isfinite(d)
        return (rate[:, None] * ~served).sum(axis=0), (rate[:, None] * np.where(served, d, 0.0)).sum(axis=0)

    for n in range(min(k, len(usable))):
        unserved, weighted = score(lat)
        order = sorted((j for j in range(len(usable)) if j not in chosen),
                       key=lambda j: (round(unserved[j], 9), round(weighted[j], 9), _natural(usable[j])))
        j = order[0]
        unserved_before = (rate * ~np.isfinite(cur)).sum()
        before = (rate * np.where(np.isfinite(cur), cur, 0.0)).sum() / max(total - unserved_before, 1e-12)
        cur = np.minimum(cur, lat[:, j])
        chosen.append(j)
        after = weighted[j] / max(total - unserved[j], 1e-12)  # over the sources served
        near = [src[i] for i in sorted(range(len(src)), key=lambda i: (-rate[i], _natural(src[i])))
                if np.isfinite(lat[i, j]) and lat[i, j] <= cur[i]][:3]
        serves = ", ".join(f"{s} ({sources[s]:g} q/s) at {_ms(lat[src.index(s), j])}" for s in near)
        if n == 0:
            reasons.append(f"{usable[j]} first: rate-weighted mean latency {_ms(after)}"
                           + (f"; nearest replica for {serves}" if serves else ""))
        elif after < before - 1e-9 or unserved[j] < unserved_before - 1e-9:
            reasons.append(f"{usable[j]} added: mean latency {_ms(before)} -> {_ms(after)}"
                           + (f"; now nearest for {serves}" if serves else ""))
        else:
            reasons.append(f"{usable[j]} added for failover: no source is nearer to it "
                           f"(mean latency stays {_ms(after)})")
    if k > len(usable):
        reasons.append(f"asked for {k} replicas, only {len(usable)} live inference node(s): all chosen")
    lost = [s for s, d in zip(src, cur) if not np.isfinite(d)]
    if lost:
        reasons.append(f"no chosen replica is reachable from {', '.join(lost)}")
    return [usable[j] for j in chosen], reasons
