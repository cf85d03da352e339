"""MTRCE, the model training route compute engine: where a travelling model trains, in what order, by which paths.

A policy (:class:`Policy`) turns a :class:`TrainingRequest` and the DCC's maps
(``NetworkMaps.snapshot(now)``, shape in ``controllers/maps.py``) into a :class:`Plan`: one
lap of stops, each with the hop that brings the model there, how many laps the model is
expected to need, and T-FAM's estimates and verdict (``controllers/tfam.py``). Policies are
pure: no os_ken, no mininet, no clock but ``now``; the same input gives the same plan.

Policies (one concept each, swappable behind :class:`Policy`; :func:`get_policy` by name):

- ``greedy`` (:class:`GreedyCoveragePerCost`): from where the model is, repeatedly go to the
  data node with the best gain per second, gain = rise of the one-lap expected accuracy
  (which grows with new label coverage and with data volume) plus a bonus per required
  label newly held, cost = transfer + queue + training + verification; then keep the prefix
  of that sequence that reaches the target soonest.
- ``search`` (:class:`SearchPolicy`): exact over every subset and order when there are at
  most ``exact_limit`` (8) candidates (depth-first branch and bound); beyond that a beam
  search over at most ``max_candidates`` (16) of them, the greedy plan being the incumbent,
  so it is never worse than greedy. Work is capped by a count of itineraries evaluated,
  not wall time, so the answer does not depend on the machine's speed.
- ``naive`` (:class:`NaiveRandom`): the baseline: every usable data node, in an order
  shuffled with the task id as seed, over fewest-hop paths, bandwidth and latency ignored.

What is planned and estimated
-----------------------------
Usable stops are DRRT knowledge entries that are fresh or stale, have the role ``data``,
report samples > 0, have compute (``drrt.resources.compute[node].capacity > 0``), are not
excluded by the request and can be reached from where the model is. Every other data node
is named in the plan's reasons with why it was skipped.

Links: only ``up`` links; per direction the ``available_mbps`` measured, else the capacity,
else 100 Mbit/s assumed (said in the hop's notes); latency = measured ``latency_ms``, else
the configured ``delay_ms``, else 0. A hop's path is the fastest for the model's bytes
(Dijkstra, link weight = latency + bytes * 8 / rate); hosts never forward. Hop estimate:
:meth:`CostModel.transfer_seconds` on the path's total latency and slowest link.

Per stop: the hop to it, queueing (first lap only: it describes the queue now), training
(samples x epochs, scaled by the node's capacity) and one verification at the MPVU (the
model's transfer there and its evaluation). A run ends at the first verdict at or above
the target, so a plan ends at the stop where the expected accuracy first reaches the
target: ``laps`` is the lap it falls in and ``end_after`` the stops of that lap done by
then (laps before it are complete, lap 2 on starting with ``lap_hop`` from the last stop
back to the first); then the model returns to the client (``return_hop``). :meth:`Plan.legs`
lists every leg; ``est_seconds`` and ``est_bytes`` are their sums.

Expected accuracy: :func:`controllers.tfam.expected_accuracy` of the sample-epochs trained,
the distinct samples and the label coverage (:func:`controllers.tfam.label_coverage`: by
share, so a label with 1 sample among 300 barely counts) of the stops seen by then. A
required label counts as held by a node that reports any sample of it.

Plans are compared by (required labels not reached, constraints violated among target,
deadline and byte budget, shortfall of the expected accuracy below the target, estimated
seconds, bytes, stop names): the fastest feasible plan wins; failing that, the one that
fails least. The shortfall term makes an infeasible answer honest: of two plans that each
break one constraint, the one that reaches the target (late, or over budget) wins over
a fast one that stops short of it - so T-FAM says "estimated 41 s exceeds the deadline
of 30 s" rather than a misleading "accuracy stays below the target" - and among plans
that cannot reach it, the one expected to get closest (not merely the quickest).
"""
from __future__ import annotations

import bisect
import math
import random
import re
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field

import networkx as nx
import numpy as np

from controllers.tfam import (CostModel, expected_accuracy, expected_accuracy_rows, label_coverage,
                              samples_needed, verdict)

__all__ = ["TrainingRequest", "Hop", "Stop", "Plan", "Policy", "GreedyCoveragePerCost",
           "SearchPolicy", "NaiveRandom", "POLICIES", "get_policy", "cost_itinerary", "MAX_STOPS"]

# The ITINERARY TLV carries at most 125 node ids (docs/protocol.md): no plan is longer.
MAX_STOPS = 125
LIVE = ("fresh", "stale")
# Gain the greedy policy gives a stop per required label it newly covers: more than any
# accuracy rise (at most 1), so required labels come first unless far dearer to reach.
REQUIRED_BONUS = 1.0
NOTES_PER_KIND = 10  # skipped nodes named one by one per reason; the rest are counted


def _natural(name: str):
    """Sort key putting h2 before h10."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(name))]


def _is_switch(name) -> bool:
    return isinstance(name, str) and re.fullmatch(r"s[1-9][0-9]*", name) is not None


# ---- requests and plans -----------------------------------------------------------------
@dataclass(frozen=True)
class TrainingRequest:
    """What a client asks for: a model of ``model_bytes`` trained to ``target_accuracy``
    within ``deadline_s`` seconds from now, under optional label and byte constraints."""

    task_id: int
    client: str
    model_bytes: int
    target_accuracy: float
    deadline_s: float                      # seconds left from `now`
    required_labels: tuple[int, ...] | None = None
    byte_budget: int | None = None
    max_laps: int = 10
    local_epochs: int = 1                  # epochs per stop (the fewest a stop trains)
    max_epochs: int | None = None          # a policy may give a stop up to this many (None: local_epochs)
    mpvu: str | None = None                # None: pick a live MPVU from the snapshot
    start: str | None = None               # where the model is now (re-planning); None = client
    exclude: frozenset[str] = frozenset()  # nodes not to visit (failed, distrusted)

    def __post_init__(self):
        if not (isinstance(self.model_bytes, int) and self.model_bytes > 0):
            raise ValueError(f"task {self.task_id}: model_bytes must be a positive integer, got {self.model_bytes!r}")
        if not 0 < self.target_accuracy <= 1:
            raise ValueError(f"task {self.task_id}: target_accuracy must be in (0, 1], got {self.target_accuracy!r}")
        if not (isinstance(self.max_laps, int) and self.max_laps >= 1):
            raise ValueError(f"task {self.task_id}: max_laps must be an integer >= 1, got {self.max_laps!r}")
        if not (isinstance(self.local_epochs, int) and self.local_epochs >= 1):
            raise ValueError(f"task {self.task_id}: local_epochs must be an integer >= 1, got {self.local_epochs!r}")
        if self.max_epochs is not None and not (isinstance(self.max_epochs, int)
                                                and self.local_epochs <= self.max_epochs <= 255):
            raise ValueError(f"task {self.task_id}: max_epochs must be an integer in "
                             f"[local_epochs={self.local_epochs}, 255] or None, got {self.max_epochs!r}")
        if self.byte_budget is not None and self.byte_budget < 0:
            raise ValueError(f"task {self.task_id}: byte_budget must be >= 0 or None, got {self.byte_budget!r}")
        if self.required_labels is not None:
            labels = tuple(int(x) for x in self.required_labels)
            if any(x < 0 for x in labels):
                raise ValueError(f"task {self.task_id}: required labels must be >= 0, got {self.required_labels!r}")
            object.__setattr__(self, "required_labels", labels)
        if isinstance(self.exclude, str):
            raise ValueError(f"task {self.task_id}: exclude must be a set of node names, got {self.exclude!r}")
        object.__setattr__(self, "exclude", frozenset(self.exclude))


@dataclass
class Hop:
    """One model transfer: ``path`` runs src..dst, switches included."""

    src: str
    dst: str
    path: list[str]
    est_seconds: float
    bytes: int
    bottleneck_mbps: float | None   # None: no link crossed (src == dst)
    latency_ms: float               # one-way, summed over the path
    notes: list[str] = field(default_factory=list)  # assumptions made about its links


@dataclass
class Stop:
    """A data node the model trains at; ``hop`` brings it there (from the previous stop, or
    from where the model starts for the first stop of lap 1)."""

    node: str
    epochs: int
    samples: int
    labels: list[int]
    est_train_s: float
    hop: Hop
    est_wait_s: float = 0.0          # queue at the node (counted in lap 1 only)
    verify_hop: Hop | None = None    # to the MPVU (None: no MPVU)
    est_verify_s: float = 0.0        # verify_hop's transfer + the MPVU's evaluation


@dataclass
class Plan:
    """An MTRCE policy's answer, with T-FAM's estimates and verdict (see the module doc).
    ``reasons``: why the plan fails the request first, then notes (skipped nodes,
    assumptions)."""

    policy: str
    feasible: bool
    stops: list[Stop]                 # one lap, in order
    laps: int
    mpvu: str | None
    return_hop: Hop | None
    est_seconds: float
    est_bytes: int
    expected_accuracy: float
    reasons: list[str]
    labels_covered: list[int]
    planning_ms: float
    lap_hop: Hop | None = None        # last stop -> first stop, starting laps 2..laps
    end_after: int = 0                # stops of the last lap done when the target is expected

    def itinerary(self) -> list[str]:
        """The stops of one lap, in order (the ITINERARY segment list)."""
        return [s.node for s in self.stops]

    def legs(self) -> list[dict]:
        """Every transfer, wait, training and verification the plan expects, in order:
        {"lap", "kind" (hop | wait | train | verify | return), "node", "seconds", "bytes"}."""
        out = []
        k = len(self.stops)
        for lap in range(1, self.laps + 1):
            for i, s in enumerate(self.stops[: self.end_after if lap == self.laps else k]):
                hop = s.hop if lap == 1 or i > 0 else self.lap_hop
                out.append({"lap": lap, "kind": "hop", "node": s.node, "seconds": hop.est_seconds,
                            "bytes": hop.bytes})
                if lap == 1 and s.est_wait_s:
                    out.append({"lap": lap, "kind": "wait", "node": s.node, "seconds": s.est_wait_s, "bytes": 0})
                out.append({"lap": lap, "kind": "train", "node": s.node, "seconds": s.est_train_s, "bytes": 0})
                if s.verify_hop is not None:
                    out.append({"lap": lap, "kind": "verify", "node": s.node, "seconds": s.est_verify_s,
                                "bytes": s.verify_hop.bytes})
        if self.return_hop is not None:
            out.append({"lap": self.laps, "kind": "return", "node": self.return_hop.dst,
                        "seconds": self.return_hop.est_seconds, "bytes": self.return_hop.bytes})
        return out

    def to_dict(self) -> dict:
        """JSON-ready, for events.jsonl (:meth:`from_dict` reads it back)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Plan:
        def hop(h):
            return None if h is None else Hop(**{**h, "path": list(h["path"]), "notes": list(h["notes"])})

        stops = [Stop(**{**s, "labels": list(s["labels"]), "hop": hop(s["hop"]),
                         "verify_hop": hop(s["verify_hop"])}) for s in d["stops"]]
        return cls(**{**d, "stops": stops, "return_hop": hop(d["return_hop"]), "lap_hop": hop(d["lap_hop"]),
                      "reasons": list(d["reasons"]), "labels_covered": list(d["labels_covered"])})


# ---- routing over the DRRT's links ---------------------------------------------------------
class _Router:
    """The up links as a directed graph, weighted for one transfer size. A host ``h`` is
    split in two: edges into it end at ``h``, edges out of it leave from ``("out", h)``, so
    no path runs through a host (hosts do not forward)."""

    def __init__(self, links: list[dict], nbytes: int, cost: CostModel, fewest_hops: bool):
        self.g = nx.DiGraph()
        self.fewest_hops = fewest_hops
        for row in links:
            if not row.get("up", True):
                continue
            a, b = row["a"], row["b"]
            lat = row.get("latency_ms")
            if lat is None:
                lat = row.get("delay_ms")
            lat = float(lat or 0.0)
            for u, v, d in ((a, b, row.get("a_to_b") or {}), (b, a, row.get("b_to_a") or {})):
                mbps, note = self._rate(row, u, v, d, cost)
                w = 1 if fewest_hops else lat / 1000 + nbytes * 8 / (mbps * 1e6)
                self.g.add_edge(self.src_id(u), v, w=w, lat=lat, mbps=mbps, note=note)
        self._rev = self.g.reverse(copy=False)
        self._from: dict = {}
        self._to: dict = {}

    @staticmethod
    def _rate(row, u, v, d, cost) -> tuple[float, str]:
        cap, avail = row.get("capacity_mbps"), d.get("available_mbps")
        if avail is not None:
            floor = cost.min_share * cap if cap else 0.0
            if avail < floor:
                return floor, (f"link {u}-{v} is saturated ({avail:.1f} of {cap:g} Mbit/s free): "
                               f"assumed a {cost.min_share:.0%} share")
            if avail > 0:
                return float(avail), ""
        if cap:
            return float(cap), ""
        return cost.default_link_mbps, (f"link {u}-{v}: rate unknown, assumed "
                                        f"{cost.default_link_mbps:g} Mbit/s")

    @staticmethod
    def src_id(node):
        return node if _is_switch(node) else ("out", node)

    def __contains__(self, node) -> bool:
        return node in self.g or self.src_id(node) in self.g

    def _dijkstra(self, graph, source) -> dict:
        if source not in graph:
            return {}
        if self.fewest_hops:
            return nx.single_source_shortest_path_length(graph, source)
        return nx.single_source_dijkstra_path_length(graph, source, weight="w")

    def dist_from(self, src: str) -> dict:
        """Weight of the best path from ``src`` to every node (hosts by name)."""
        d = self._from.get(src)
        if d is None:
            d = self._from[src] = self._dijkstra(self.g, self.src_id(src))
            if src in self.g or self.src_id(src) in self.g:
                d = self._from[src] = {**d, src: 0}
        return d

    def dist_to(self, dst: str) -> dict:
        """Weight of the best path to ``dst`` from every node (a host ``h`` as ``("out", h)``)."""
        d = self._to.get(dst)
        if d is None:
            d = self._to[dst] = self._dijkstra(self._rev, dst)
        return d

    def edge(self, u, v) -> dict:
        return self.g.edges[u, v]

    def path(self, src: str, dst: str) -> list[str] | None:
        """The best path src..dst (names), None if there is none. Walked back from ``dst``
        over the distances of one Dijkstra from ``src`` (cached), so a policy pays one
        Dijkstra per position the model leaves from, not one per pair. Ties: the
        predecessor first in natural order, so the same maps always give the same path."""
        if src == dst:
            return [src]
        dist = self.dist_from(src)
        if dst not in dist or dst not in self.g:
            return None
        s_id = self.src_id(src)
        path, v = [dst], dst
        while True:
            best = None
            for u in self.g.pred[v]:
                if u == s_id:
                    name = src
                elif isinstance(u, tuple):  # another host's sending side: hosts do not forward
                    continue
                else:
                    name = u
                du = dist.get(name)
                # exact float equality: Dijkstra set dist[v] to this very sum
                if du is not None and du + self.g.edges[u, v]["w"] == dist[v]:
                    if best is None or _natural(name) < _natural(best):
                        best = name
            if best is None:  # cannot happen with positive weights; fail loudly, not loop
                raise RuntimeError(f"no predecessor of {v} on a best path {src}->{dst}")
            path.append(best)
            if best == src:
                return path[::-1]
            v = best


# ---- planning context: candidates, hops, scoring -------------------------------------------
@dataclass
class _Cand:
    node: str
    samples: int
    n: int            # sample-epochs per visit
    hist: list[int]   # label counts, n_classes long
    mask: int         # labels held (count > 0) as a bitmask
    labels: list[int]
    train_s: float
    wait_s: float


@dataclass
class _Score:
    key: tuple
    laps: int
    end: int
    reaches: bool
    est_s: float
    est_b: int
    acc: float
    visited_mask: int
    lap1_done: bool  # the target is expected within lap 1 (extensions cannot do better)


def _note_list(kind_notes: dict[str, list[str]], more: dict[str, str]) -> list[str]:
    out = []
    for kind, lines in kind_notes.items():
        out += lines[:NOTES_PER_KIND]
        if len(lines) > NOTES_PER_KIND:
            out.append(f"... and {len(lines) - NOTES_PER_KIND} more {more[kind]}")
    return out


class _Context:
    """Everything a policy needs for one request on one snapshot: usable candidates,
    the router, hop and verification costs (cached), and the scorer."""

    def __init__(self, req: TrainingRequest, snapshot: dict, now: float, cost: CostModel,
                 fewest_hops: bool = False):
        self.req, self.cost, self.now = req, cost, now
        drrt = snapshot["drrt"]
        know = drrt["knowledge"]
        compute = drrt["resources"]["compute"]
        self.nbytes = cost.transfer_bytes(req.model_bytes)
        self.router = _Router(drrt["resources"]["links"], self.nbytes, cost, fewest_hops)
        self.client = req.client
        self.start = req.start or req.client
        self.epochs: dict[str, int] = {}       # local epochs per candidate stop
        self.compute_of: dict[str, dict] = {}
        self.n_classes = max((len(k.get("label_hist") or []) for k in know.values()), default=0) or 10
        self.blocking: list[str] = []
        skipped = {"excluded": [], "down": [], "empty": [], "compute": [], "unreachable": []}
        more = {"excluded": "excluded nodes", "down": "data nodes down",
                "empty": "data nodes without samples", "compute": "data nodes without compute",
                "unreachable": "unreachable data nodes"}
        self._hops: dict = {}
        self._verify: dict = {}
        self._need: dict = {}
        self._arrays: dict | None = None

        here = self.start
        if here not in self.router:
            who = f"client {here}" if here == self.client else f"the model's position {here}"
            self.blocking.append(f"{who} is on no up link in the maps")
        reach = self.router.dist_from(here)

        # usable data nodes
        self.cands: dict[str, _Cand] = {}
        unreachable_usable = 0
        for node in sorted(know, key=_natural):
            k = know[node]
            if "data" not in k.get("roles", ()):
                continue
            if node in req.exclude:
                skipped["excluded"].append(f"{node} is excluded by the request")
                continue
            if k.get("status") not in LIVE:
                skipped["down"].append(f"{node} is {k.get('status')} (no report for {k.get('age_s', 0):.0f} s)")
                continue
            if not k.get("samples", 0) > 0:
                skipped["empty"].append(f"{node} reports no samples")
                continue
            c = compute.get(node)
            if c is None or not c.get("capacity", 0) > 0 or c.get("status", "fresh") not in LIVE:
                skipped["compute"].append(f"{node} holds data but has no compute")
                continue
            if node not in reach:
                unreachable_usable += 1
                skipped["unreachable"].append(f"{node} cannot be reached from {here}")
                continue
            hist = [max(0, int(x)) for x in k.get("label_hist") or []]
            hist += [0] * (self.n_classes - len(hist))
            labels = [i for i, n in enumerate(hist) if n > 0]
            train_s = cost.train_seconds(k["samples"], req.local_epochs, c["capacity"], req.model_bytes)
            self.cands[node] = _Cand(node, int(k["samples"]), int(k["samples"]) * req.local_epochs, hist,
                                     sum(1 << i for i in labels), labels, train_s,
                                     cost.wait_seconds(train_s, c.get("load", 0.0), c.get("queue_len", 0)))
            self.compute_of[node] = c
            self.epochs[node] = req.local_epochs
        self.order = list(self.cands)  # natural order
        if not self.cands and here in self.router:
            if unreachable_usable:
                who = f"client {here}" if here == self.client else f"the model at {here}"
                self.blocking.append(f"{who} cannot reach any data node")
            else:
                self.blocking.append("no data node that is up has both data and compute")

        # the MPVU
        self.mpvu = self._pick_mpvu(know, reach)
        if self.client not in reach and here in self.router and self.client != here:
            self.blocking.append(f"the model at {here} cannot return to client {self.client}")

        # labels
        held = 0
        for c in self.cands.values():
            held |= c.mask
        self.required = 0
        for x in req.required_labels or ():
            self.required |= 1 << x
        self.unheld = [x for x in sorted(set(req.required_labels or ())) if not held >> x & 1]
        self.notes = _note_list(skipped, more)

    def _pick_mpvu(self, know: dict, reach: dict) -> str | None:
        req = self.req
        if req.mpvu is not None:
            k = know.get(req.mpvu)
            if k is None or "mpvu" not in k.get("roles", ()):
                self.blocking.append(f"MPVU {req.mpvu} is not in the DRRT")
                return None
            if k.get("status") not in LIVE:
                self.blocking.append(f"MPVU {req.mpvu} is {k.get('status')}")
                return None
            if req.mpvu not in reach:
                self.blocking.append(f"MPVU {req.mpvu} cannot be reached from {self.start}")
                return None
            return req.mpvu
        live = [n for n in sorted(know, key=_natural) if "mpvu" in know[n].get("roles", ())
                and know[n].get("status") in LIVE and n not in req.exclude]
        if not live:
            self.blocking.append("no MPVU is up")
            return None
        near = [n for n in live if n in reach]
        if not near:
            self.blocking.append(f"no MPVU can be reached from {self.start}")
            return None
        if len(near) == 1 or not self.cands:
            return near[0]

        def spread(m):  # mean cost of verifying from every candidate
            d = self.router.dist_to(m)
            return sum(d.get(self.router.src_id(c), math.inf) for c in self.cands) / len(self.cands)
        return min(near, key=lambda m: (spread(m), _natural(m)))

    # ---- costs -------------------------------------------------------------------------
    def hop(self, a: str, b: str) -> Hop | None:
        key = (a, b)
        if key in self._hops:
            return self._hops[key]
        if a == b:
            h = Hop(a, b, [a], 0.0, 0, None, 0.0)
        else:
            path = self.router.path(a, b)
            if path is None:
                h = None
            else:
                lat, mbps, notes = 0.0, math.inf, []
                for i in range(len(path) - 1):
                    e = self.router.edge(self.router.src_id(path[i]) if i == 0 else path[i], path[i + 1])
                    lat += e["lat"]
                    mbps = min(mbps, e["mbps"])
                    if e["note"] and e["note"] not in notes:
                        notes.append(e["note"])
                h = Hop(a, b, path, self.cost.transfer_seconds(self.nbytes, lat, mbps), self.nbytes,
                        mbps, lat, notes)
        self._hops[key] = h
        return h

    def verify(self, node: str) -> tuple[float, int, Hop | None]:
        """Seconds and bytes of one verification from ``node``, and its hop."""
        v = self._verify.get(node)
        if v is None:
            h = self.hop(node, self.mpvu) if self.mpvu is not None else None
            v = (0.0, 0, None) if h is None else (h.est_seconds + self.cost.verify_s, h.bytes, h)
            self._verify[node] = v
        return v

    def coverage(self, hist) -> float:
        return label_coverage(hist, self.cost, self.n_classes)

    def need(self, coverage: float, distinct: int) -> float:
        """Sample-epochs to reach the target at this label coverage and distinct samples."""
        key = (coverage, distinct)
        n = self._need.get(key)
        if n is None:
            n = self._need[key] = samples_needed(self.req.target_accuracy, coverage, self.cost,
                                                 self.n_classes, distinct)
        return n

    def accuracy(self, samples: float, coverage: float, distinct: int) -> float:
        return expected_accuracy(samples, coverage, self.cost, self.n_classes, distinct)

    def arrays(self) -> dict:
        """The candidates (natural order) as numpy arrays for the greedy step."""
        if self._arrays is None:
            cs = [self.cands[n] for n in self.order]
            to_mpvu = self.router.dist_to(self.mpvu) if self.mpvu else {}
            verify = [(to_mpvu.get(_Router.src_id(c.node), math.inf) + self.cost.verify_s) if self.mpvu else 0.0
                      for c in cs]
            req = np.array([(self.required >> i) & 1 for i in range(self.n_classes)], dtype=bool)
            hist = np.array([c.hist for c in cs], dtype=float).reshape(len(cs), self.n_classes)
            self._arrays = {"hist": hist, "samples": np.array([c.samples for c in cs], dtype=float),
                            "n": np.array([c.n for c in cs], dtype=float),
                            "fixed": np.array([c.train_s + c.wait_s for c in cs]) + np.array(verify),
                            "required": (hist > 0) & req[None, :]}
        return self._arrays

    def set_epochs(self, node: str, epochs: int):
        """Train ``epochs`` local epochs at ``node``: its sample-epochs, training and queueing
        estimates follow (the greedy step's arrays are rebuilt)."""
        c, comp = self.cands[node], self.compute_of[node]
        c.n = c.samples * epochs
        c.train_s = self.cost.train_seconds(c.samples, epochs, comp["capacity"], self.req.model_bytes)
        c.wait_s = self.cost.wait_seconds(c.train_s, comp.get("load", 0.0), comp.get("queue_len", 0))
        self.epochs[node] = epochs
        self._arrays = None

    def key_of(self, seq: list[str]) -> tuple:
        tour = _Tour(self)
        for n in seq:
            tour.push(n)
        return tour.score().key

    def build(self, seq: list[str], policy: str) -> Plan:
        """The plan for itinerary ``seq`` with its estimates and verdict."""
        if not seq:
            reasons = list(self.blocking) + verdict(
                target=self.req.target_accuracy, deadline_s=self.req.deadline_s, byte_budget=None,
                max_laps=self.req.max_laps, est_seconds=0.0, est_bytes=0, reaches_target=True,
                expected_acc=0.0, unheld_labels=self.unheld)
            if not reasons:
                reasons = ["no data node can be visited"]
            return Plan(policy, False, [], 0, self.mpvu, None, 0.0, 0,
                        self.accuracy(0, 0.0, 0), reasons + self.notes, [], 0.0)
        tour = _Tour(self)
        for n in seq:
            tour.push(n)
        sc = tour.score()
        stops = []
        for i, n in enumerate(seq):
            c = self.cands[n]
            vs, _, vh = self.verify(n)
            stops.append(Stop(n, self.epochs.get(n, self.req.local_epochs), c.samples, list(c.labels), c.train_s,
                              self.hop(self.start if i == 0 else seq[i - 1], n), c.wait_s, vh, vs))
        lap_hop = self.hop(seq[-1], seq[0]) if sc.laps > 1 else None
        ret = self.hop(seq[sc.end - 1], self.client)
        covered = 0
        for n in seq:
            covered |= self.cands[n].mask
        plan = Plan(policy, False, stops, sc.laps, self.mpvu, ret, 0.0, 0, sc.acc, [],
                    [i for i in range(covered.bit_length()) if covered >> i & 1], 0.0, lap_hop, sc.end)
        legs = plan.legs()
        plan.est_seconds = sum(x["seconds"] for x in legs)
        plan.est_bytes = sum(x["bytes"] for x in legs)
        unvisited = [x for x in sorted(set(self.req.required_labels or ()))
                     if not sc.visited_mask >> x & 1 and x not in self.unheld]
        why = list(self.blocking) + verdict(
            target=self.req.target_accuracy, deadline_s=self.req.deadline_s,
            byte_budget=self.req.byte_budget, max_laps=self.req.max_laps,
            est_seconds=plan.est_seconds, est_bytes=plan.est_bytes, reaches_target=sc.reaches,
            expected_acc=sc.acc, unheld_labels=self.unheld, unvisited_labels=unvisited)
        hop_notes = []
        for h in [s.hop for s in stops] + [s.verify_hop for s in stops] + [lap_hop, ret]:
            for note in (h.notes if h is not None else ()):
                if note not in hop_notes:
                    hop_notes.append(note)
        plan.feasible = not why
        plan.reasons = why + self.notes + hop_notes[:NOTES_PER_KIND]
        return plan


class _Tour:
    """An itinerary being built, with prefix sums so that scoring it is O(stops).
    Index j of every list is the value after the first j stops."""

    __slots__ = ("ctx", "nodes", "n", "m", "mask", "hist", "cov", "work_s", "work_b", "inner_s",
                 "inner_b", "wait", "first")

    def __init__(self, ctx: _Context):
        self.ctx = ctx
        self.nodes: list[str] = []
        self.n, self.m, self.mask, self.work_b, self.inner_b = [0], [0], [0], [0], [0]
        self.hist = [[0] * ctx.n_classes]
        self.cov, self.work_s, self.inner_s, self.wait = [0.0], [0.0], [0.0], [0.0]
        self.first: Hop | None = None

    def __len__(self):
        return len(self.nodes)

    def push(self, node: str) -> bool:
        """Append ``node``; False (and nothing appended) if no path leads there."""
        ctx = self.ctx
        c = ctx.cands[node]
        h = ctx.hop(self.nodes[-1] if self.nodes else ctx.start, node)
        if h is None:
            return False
        if not self.nodes:
            self.first, hs, hb = h, 0.0, 0
        else:
            hs, hb = h.est_seconds, h.bytes
        vs, vb, _ = ctx.verify(node)
        pooled = [a + b for a, b in zip(self.hist[-1], c.hist)]
        self.nodes.append(node)
        self.n.append(self.n[-1] + c.n)
        self.m.append(self.m[-1] + c.samples)
        self.mask.append(self.mask[-1] | c.mask)
        self.hist.append(pooled)
        self.cov.append(ctx.coverage(pooled))
        self.work_s.append(self.work_s[-1] + c.train_s + vs)
        self.work_b.append(self.work_b[-1] + vb)
        self.inner_s.append(self.inner_s[-1] + hs)
        self.inner_b.append(self.inner_b[-1] + hb)
        self.wait.append(self.wait[-1] + c.wait_s)
        return True

    def pop(self) -> None:
        self.nodes.pop()
        for lst in (self.n, self.m, self.mask, self.hist, self.cov, self.work_s, self.work_b,
                    self.inner_s, self.inner_b, self.wait):
            lst.pop()

    def laps(self) -> tuple[int, int, bool]:
        """(lap, stops of that lap) at which the target is first expected, and whether it is
        within max_laps; (max_laps, all stops, False) if not."""
        ctx, k = self.ctx, len(self.nodes)
        for j in range(1, k + 1):
            if self.n[j] >= ctx.need(self.cov[j], self.m[j]):
                return 1, j, True
        need, lap_n = ctx.need(self.cov[k], self.m[k]), self.n[k]
        if math.isinf(need) or lap_n <= 0:
            return ctx.req.max_laps, k, False
        laps = max(2, math.ceil(need / lap_n))
        while laps * lap_n < need:  # guard the float division, both ways
            laps += 1
        while laps > 2 and (laps - 1) * lap_n >= need:
            laps -= 1
        if laps > ctx.req.max_laps:
            return ctx.req.max_laps, k, False
        return laps, bisect.bisect_left(self.n, need - (laps - 1) * lap_n, 1, k + 1), True

    def score(self) -> _Score:
        ctx, k = self.ctx, len(self.nodes)
        laps, end, reaches = self.laps()
        full = laps - 1
        t = self.first.est_seconds + self.wait[k if laps > 1 else end] + self.work_s[end] + self.inner_s[end]
        b = self.first.bytes + self.work_b[end] + self.inner_b[end]
        if full:
            close = ctx.hop(self.nodes[-1], self.nodes[0])
            cs, cb = (close.est_seconds, close.bytes) if close is not None else (math.inf, 0)
            t += full * (self.work_s[k] + self.inner_s[k] + cs)
            b += full * (self.work_b[k] + self.inner_b[k] + cb)
        ret = ctx.hop(self.nodes[end - 1], ctx.client)
        if ret is not None:
            t += ret.est_seconds
            b += ret.bytes
        seen = k if laps > 1 else end  # stops whose data the model has seen by the end
        if reaches:
            acc = ctx.accuracy(full * self.n[k] + self.n[end], self.cov[seen], self.m[seen])
        else:
            acc = ctx.accuracy(laps * self.n[k], self.cov[k], self.m[k])
        req = ctx.req
        visited = self.mask[seen]
        missing = (ctx.required & ~visited).bit_count()
        bad = (not reaches) + (t > req.deadline_s) + (req.byte_budget is not None and b > req.byte_budget)
        short = 0.0 if reaches else round(max(0.0, req.target_accuracy - acc), 6)
        key = (missing, bad, short, t, b, [_natural(n) for n in self.nodes])
        return _Score(key, laps, end, reaches, t, b, acc, visited, reaches and laps == 1)


# ---- policies -------------------------------------------------------------------------------
class Policy(ABC):
    """An MTRCE policy: a pure step from (request, maps, now, cost model) to a plan."""

    name: str = ""
    fewest_hops = False  # route by hop count instead of by time

    def plan(self, req: TrainingRequest, snapshot: dict, now: float, cost: CostModel | None = None) -> Plan:
        """Plan ``req`` on ``snapshot`` (NetworkMaps.snapshot(now)); never raises for a
        request the network cannot meet: the plan is infeasible and says why."""
        t0 = time.perf_counter()
        ctx = _Context(req, snapshot, now, cost or CostModel(), self.fewest_hops)
        seq = self.choose(ctx) if ctx.cands else []
        if seq and req.max_epochs and req.max_epochs > req.local_epochs:
            self.tune_epochs(ctx, seq)
        plan = ctx.build(seq, self.name)
        plan.planning_ms = (time.perf_counter() - t0) * 1000
        return plan

    @abstractmethod
    def choose(self, ctx: _Context) -> list[str]:
        """The itinerary (usable candidates of ``ctx``, in visiting order)."""

    def tune_epochs(self, ctx: _Context, seq: list[str], passes: int = 2):
        """Local epochs per stop of ``seq``, from local_epochs to max_epochs: for each stop in
        turn the count whose plan ranks best (the plan key: constraints met, then estimated
        seconds), until a pass changes nothing. More epochs at a stop trade its training time
        for laps (transfers and verifications) the target would otherwise need; the expected
        accuracy counts them as sample-epochs of the same distinct samples (tfam), so the
        ceiling a stop's data allows does not rise with them."""
        lo, hi = ctx.req.local_epochs, ctx.req.max_epochs
        for _ in range(passes):
            changed = False
            for node in dict.fromkeys(seq):
                best_e, best_k = ctx.epochs[node], ctx.key_of(seq)
                for e in range(lo, hi + 1):
                    if e == best_e:
                        continue
                    ctx.set_epochs(node, e)
                    k = ctx.key_of(seq)
                    if k < best_k:
                        best_e, best_k, changed = e, k, True
                ctx.set_epochs(node, best_e)
            if not changed:
                return


class GreedyCoveragePerCost(Policy):
    """Go next to the stop with the best gain per second, keep the best prefix (module doc).

    Gain of a candidate: the rise of the expected accuracy after one lap of the sequence so
    far plus it (it rises with label coverage and with data volume), plus REQUIRED_BONUS per
    required label it newly holds. Cost: the transfer there (the path's Dijkstra weight),
    queue, training and verification at the MPVU. Stops extending the sequence once it is
    expected to reach the target within lap 1 with the required labels, or ``patience``
    additions have not improved the best prefix (and no remaining node holds a required
    label still missing), or at MAX_STOPS. Per step one Dijkstra from the current position
    and one numpy pass over the candidates."""

    name = "greedy"

    def __init__(self, patience: int = 8):
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience!r}")
        self.patience = patience

    def choose(self, ctx: _Context) -> list[str]:
        return self.sequence(ctx)[0]

    @staticmethod
    def ratios(ctx: _Context, here: str, tour: _Tour) -> np.ndarray:
        """Gain per second of every candidate (natural order) as the next stop after ``tour``
        from ``here``; -inf where it cannot be reached."""
        arr = ctx.arrays()
        dist = ctx.router.dist_from(here)
        d = np.array([dist.get(n, math.inf) for n in ctx.order], dtype=float)
        pooled = np.asarray(tour.hist[-1], dtype=float)
        acc = expected_accuracy_rows(tour.n[-1] + arr["n"], pooled[None, :] + arr["hist"],
                                     tour.m[-1] + arr["samples"], ctx.cost)
        base = ctx.accuracy(tour.n[-1], tour.cov[-1], tour.m[-1])
        have = np.array([(tour.mask[-1] >> i) & 1 for i in range(ctx.n_classes)], dtype=bool)
        gain = acc - base + REQUIRED_BONUS * (arr["required"] & ~have[None, :]).sum(axis=1)
        with np.errstate(invalid="ignore"):
            r = gain / (d + arr["fixed"] + 1e-9)
        r[~np.isfinite(d)] = -math.inf
        return r

    def sequence(self, ctx: _Context) -> tuple[list[str], list[str]]:
        """(best prefix, whole greedy sequence)."""
        tour = _Tour(ctx)
        left = np.ones(len(ctx.order), dtype=bool)
        best_key, best_len, stale = None, 0, 0
        here = ctx.start
        while left.any() and len(tour) < MAX_STOPS:
            r = self.ratios(ctx, here, tour)
            r[~left] = -math.inf
            i = int(np.argmax(r))  # ties: the first in natural order
            if r[i] == -math.inf or not tour.push(ctx.order[i]):
                break
            left[i] = False
            here = ctx.order[i]
            sc = tour.score()
            if best_key is None or sc.key < best_key:
                best_key, best_len, stale = sc.key, len(tour), 0
            else:
                stale += 1
            if sc.lap1_done and sc.key[0] == 0:
                break
            if stale >= self.patience:
                missing = ctx.required & ~tour.mask[-1]
                if not missing or not any(ctx.cands[x].mask & missing
                                          for x, ok in zip(ctx.order, left) if ok):
                    break
        return tour.nodes[:best_len], list(tour.nodes)


class SearchPolicy(Policy):
    """Minimise the estimated time to target subject to deadline, byte budget and label
    coverage (the plan key: missing required labels, then violated constraints, then
    seconds, bytes, names).

    - at most ``exact_limit`` candidates: exact, a depth-first search over every subset
      and order with branch and bound (a prefix that reaches the target in lap 1 is not
      extended; a prefix whose lower bound is no better than a feasible incumbent is cut);
    - more: the search keeps ``max_candidates`` of them (the greedy plan's stops, then the
      best by greedy's gain per second from the start) and runs a beam search of width
      ``beam_width`` (exact again if they are at most ``exact_limit``);
    - either way it evaluates at most ``max_evaluations`` itineraries, then returns the
      best found (a note says so). The greedy plan is the incumbent: never worse than it.
    """

    name = "search"

    def __init__(self, exact_limit: int = 8, max_candidates: int = 16, beam_width: int = 32,
                 max_evaluations: int = 200_000):
        if not 1 <= exact_limit <= max_candidates:
            raise ValueError(f"need 1 <= exact_limit <= max_candidates, got {exact_limit}, {max_candidates}")
        self.exact_limit, self.max_candidates = exact_limit, max_candidates
        self.beam_width, self.max_evaluations = beam_width, max_evaluations

    def choose(self, ctx: _Context) -> list[str]:
        greedy = GreedyCoveragePerCost()
        g_best, g_seq = greedy.sequence(ctx)
        pool = list(ctx.order)
        if len(pool) > self.max_candidates:
            keep = list(dict.fromkeys(g_seq))[: self.max_candidates]
            r = greedy.ratios(ctx, ctx.start, _Tour(ctx))
            rest = [ctx.order[i] for i in np.argsort(-r, kind="stable")
                    if np.isfinite(r[i]) and ctx.order[i] not in keep]
            keep += rest[: self.max_candidates - len(keep)]
            ctx.notes.append(f"search considered {len(keep)} of {len(pool)} candidate data nodes "
                             "(the greedy plan's stops, then the best by gain per second)")
            pool = sorted(keep, key=_natural)
        evals = [0]  # itineraries scored so far (a list: the helpers count into it)
        best = [None, list(g_best)]
        if g_best:
            t = _Tour(ctx)
            for n in g_best:
                t.push(n)
            best[0] = t.score().key
        if len(pool) <= self.exact_limit:
            self._exact(ctx, pool, best, evals)
        else:
            self._beam(ctx, pool, best, evals)
        if evals[0] >= self.max_evaluations:
            ctx.notes.append(f"search stopped after {evals[0]} itineraries (max_evaluations); "
                             "the plan is the best found, not proven best")
        return best[1]

    def _exact(self, ctx: _Context, pool: list[str], best: list, evals: list[int]) -> None:
        """Depth-first over every ordered subset of ``pool``; ``best`` = [key, itinerary]."""
        tour = _Tour(ctx)
        total_n = sum(ctx.cands[n].n for n in pool)
        # The fewest laps any itinerary can need: every sample, at full coverage (coverage is
        # not monotone: a skewed stop can lower a label's share, so take the best possible).
        need = ctx.need(1.0, sum(ctx.cands[n].samples for n in pool))
        min_laps = 1 if math.isinf(need) or total_n <= 0 else max(1, math.ceil(need / total_n))
        used: set[str] = set()

        def dfs():
            for node in pool:
                if node in used or evals[0] >= self.max_evaluations:
                    continue
                if not tour.push(node):
                    continue
                used.add(node)
                evals[0] += 1
                sc = tour.score()
                if best[0] is None or sc.key < best[0]:
                    best[0], best[1] = sc.key, list(tour.nodes)
                # a prefix expected at the target within lap 1 ends there, whatever follows
                go = not sc.lap1_done and len(tour) < MAX_STOPS
                if go and best[0] is not None and best[0][0] == 0 and best[0][1] == 0:
                    # any better extension is feasible and at least: the first hop, the waits
                    # and (laps - 1 >= 1) laps of the stops so far
                    k = len(tour)
                    bound = (tour.first.est_seconds + tour.wait[k]
                             + max(1, min_laps - 1) * (tour.work_s[k] + tour.inner_s[k]))
                    go = bound < best[0][3]  # key[3]: estimated seconds
                if go:
                    dfs()
                used.discard(node)
                tour.pop()

        dfs()

    def _beam(self, ctx: _Context, pool: list[str], best: list, evals: list[int]) -> None:
        """Extend the ``beam_width`` best itineraries by one stop at a time; of those ending
        at the same node with the same set, the best only."""
        beam: list[list[str]] = [[]]
        for _ in range(min(len(pool), MAX_STOPS)):
            children: dict = {}
            for seq in beam:
                tour = _Tour(ctx)
                for n in seq:
                    tour.push(n)
                for node in pool:
                    if node in seq or evals[0] >= self.max_evaluations:
                        continue
                    if not tour.push(node):
                        continue
                    evals[0] += 1
                    sc = tour.score()
                    if best[0] is None or sc.key < best[0]:
                        best[0], best[1] = sc.key, list(tour.nodes)
                    if not sc.lap1_done:
                        state = (frozenset(tour.nodes), node)
                        if state not in children or sc.key < children[state][0]:
                            children[state] = (sc.key, list(tour.nodes))
                    tour.pop()
            if not children:
                return
            beam = [seq for _, seq in sorted(children.values(), key=lambda kv: kv[0])[: self.beam_width]]


class NaiveRandom(Policy):
    """Baseline: every usable data node (up to MAX_STOPS) in an order shuffled with the
    task id as seed, over fewest-hop paths that ignore bandwidth and latency."""

    name = "naive"
    fewest_hops = True

    def choose(self, ctx: _Context) -> list[str]:
        order = list(ctx.order)
        random.Random(ctx.req.task_id).shuffle(order)
        if len(order) > MAX_STOPS:
            ctx.notes.append(f"naive visits the first {MAX_STOPS} of {len(order)} data nodes "
                             f"(an itinerary holds at most {MAX_STOPS})")
        return order[:MAX_STOPS]


POLICIES: dict[str, type[Policy]] = {"greedy": GreedyCoveragePerCost, "search": SearchPolicy,
                                     "naive": NaiveRandom}


def get_policy(name: str, **kw) -> Policy:
    """The policy registered as ``name``, built with ``kw``."""
    cls = POLICIES.get(name)
    if cls is None:
        raise ValueError(f"unknown MTRCE policy {name!r}; known policies: {', '.join(sorted(POLICIES))}")
    return cls(**kw)


def cost_itinerary(req: TrainingRequest, snapshot: dict, now: float, itinerary: list[str],
                   cost: CostModel | None = None, fewest_hops: bool = False) -> Plan:
    """The plan (estimates and verdict) of a given itinerary, e.g. to re-check a running
    task's plan on new maps. ValueError if a node of it is not a usable data node."""
    t0 = time.perf_counter()
    ctx = _Context(req, snapshot, now, cost or CostModel(), fewest_hops)
    bad = [n for n in itinerary if n not in ctx.cands]
    if bad:
        why = [r for r in ctx.notes if r.split(" ", 1)[0] in bad]
        raise ValueError(f"itinerary {itinerary}: {', '.join(bad)} cannot be visited"
                         + (f" ({'; '.join(why)})" if why else " (not a usable data node)"))
    if len(set(itinerary)) != len(itinerary):
        raise ValueError(f"itinerary {itinerary} visits a node twice in one lap")
    plan = ctx.build(list(itinerary), "fixed")
    plan.planning_ms = (time.perf_counter() - t0) * 1000
    return plan
