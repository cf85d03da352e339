"""The DCC's task tracker: where each training task's model is, where it goes
next, which flows carry it there, and re-planning when the network changes.

Pure (no os_ken): the app feeds it requests and network changes with ``now``
and a DRRT snapshot (controllers.maps), and applies what it returns — replies
for the nodes, the flows wanted for AI traffic (``wanted_flows()``) and events
for events.jsonl. Policies (MTRCE) and feasibility (T-FAM) are plugged in.

Hop by hop: the model's holder asks the DCC before every move (an ITINERARY
request, docs/protocol.md); the DCC answers with the next stop — after a
re-plan, a new one — and installs flows for that hop along the planned path:
holder -> next stop, and next stop -> MPVU for the verification that follows.
Flows of a hop stay until the next request of that task (the model arrived
and moved on) or until the task ends, so a hop never loses its path mid-transfer.
"""
from __future__ import annotations

import dataclasses

import math
from dataclasses import dataclass, field

import networkx as nx

from controllers import aiflows
from controllers.fabric import Fabric, FlowSpec
from controllers.maps import PLAN_INPUTS, plan_view
from controllers.mtrce import Plan, Policy, TrainingRequest
from controllers.tfam import Assessment, CostModel, assess

DEFAULT_MBPS = 100.0  # a link whose capacity nobody configured or measured


def fastest_path(snapshot: dict, a: str, b: str, nbytes: int, exclude: set[str] = frozenset()) -> list[str] | None:
    """Host-to-host path over up links minimising latency + transfer time of
    ``nbytes`` at each link's available bandwidth (as MTRCE estimates a hop)."""
    g = nx.DiGraph()
    for ln in snapshot.get("drrt", {}).get("resources", {}).get("links", []):
        if not ln.get("up", True):
            continue
        lat = (ln.get("latency_ms") if ln.get("latency_ms") is not None else ln.get("delay_ms")) or 0.0
        for u, v, d in ((ln["a"], ln["b"], ln.get("a_to_b") or {}), (ln["b"], ln["a"], ln.get("b_to_a") or {})):
            mbps = d.get("available_mbps") or ln.get("capacity_mbps") or DEFAULT_MBPS
            g.add_edge(u, v, w=lat / 1000 + nbytes * 8 / (max(mbps, 1e-3) * 1e6))
    for n in exclude:  # hosts only: traffic must not transit a host
        if n in g and n not in (a, b):
            g.remove_node(n)
    hosts = [n for n in g if n.startswith("h") and n not in (a, b)]
    g.remove_nodes_from(hosts)
    try:
        return nx.shortest_path(g, a, b, weight="w")
    except (nx.NetworkXNoPath, nx.NodeNotFound):
        return None


def fewest_hops_path(snapshot: dict, a: str, b: str, nbytes: int = 0) -> list[str] | None:
    """Host-to-host path over up links with the fewest links (hosts never transit):
    how the naive baseline routes."""
    g = nx.Graph()
    for ln in snapshot.get("drrt", {}).get("resources", {}).get("links", []):
        if ln.get("up", True):
            g.add_edge(ln["a"], ln["b"])
    g.remove_nodes_from([n for n in list(g) if n.startswith("h") and n not in (a, b)])
    try:
        return nx.shortest_path(g, a, b)
    except (nx.NetworkXNoPath, nx.NodeNotFound):
        return None


def path_is_up(snapshot: dict, path: list[str]) -> bool:
    up = {frozenset((ln["a"], ln["b"])) for ln in snapshot.get("drrt", {}).get("resources", {}).get("links", [])
          if ln.get("up", True)}
    return all(frozenset(p) in up for p in zip(path, path[1:]))


def plan_paths(plan: Plan | None) -> dict[tuple[str, str], list[str]]:
    """Every leg the plan costed, by (from, to): the paths its estimates assume."""
    out: dict[tuple[str, str], list[str]] = {}
    if plan is None:
        return out
    hops = [s.hop for s in plan.stops] + [s.verify_hop for s in plan.stops]
    hops += [getattr(plan, "lap_hop", None), plan.return_hop]
    for h in hops:
        if h is not None and h.path:
            out[(h.src, h.dst)] = list(h.path)
    return out


@dataclass
class ActiveTask:
    task_id: int
    client: str
    mpvu: str
    dscp: int
    request: TrainingRequest
    assessment: Assessment
    segments: list[str]                  # the stops of a lap, in order
    max_laps: int
    deadline: float                      # absolute
    started: float
    ptr: int = -1                        # index in segments of the stop the model is heading to / at
    lap: int = 0
    holder: str = ""                     # node holding the model (client at first)
    heading: str | None = None           # where the current hop goes
    hop: int = 0                         # hops started
    flows: frozenset = frozenset()       # FlowSpecs of the current hop (and its verification leg)
    meters: frozenset = frozenset()      # MeterSpecs of the current hop (reserve_mbps)
    paths: dict = field(default_factory=dict)  # "hop"/"verify" -> node path
    replans: int = 0
    ended: str | None = None
    planned: dict = field(default_factory=dict)  # (from, to) -> the path the plan costed
    epochs: dict = field(default_factory=dict)   # stop -> local epochs the plan gives it


class TaskTracker:
    """Active training tasks of the DCC; see the module docstring."""

    def __init__(self, fabric: Fabric, policy: Policy, cost: CostModel | None = None,
                 ip_of=None, reserve_mbps: float | None = None, plan_inputs: str | None = None):
        self.fabric = fabric
        self.policy = policy
        self.cost = cost or CostModel()
        self.ip_of = ip_of or (lambda h: fabric.hosts[h].ip)
        self.reserve_mbps = reserve_mbps
        self.tasks: dict[int, ActiveTask] = {}
        self.done: dict[int, ActiveTask] = {}
        # legs the plan did not cost (after a re-plan without plan, ...) are routed as the
        # policy routes: the naive baseline by fewest hops, the others by transfer time
        self.route = fewest_hops_path if policy.name == "naive" else fastest_path
        # What plans and hop paths see of measured state (controllers.maps.plan_view): settled
        # unless the fabric's config (spec controller.plan_inputs) says otherwise. Settled
        # inputs make a replay of a run plan the same; real changes still re-plan.
        self.plan_inputs = plan_inputs or fabric.extra.get("plan_inputs") or "settled"
        if self.plan_inputs not in PLAN_INPUTS:
            raise ValueError(f"plan_inputs must be one of {', '.join(PLAN_INPUTS)}, got {self.plan_inputs!r}")

    # ---- requests ------------------------------------------------------------
    def submit(self, req: TrainingRequest, dscp: int, snapshot: dict, now: float,
               max_laps: int) -> tuple[Assessment, ActiveTask | None, list[dict]]:
        """T-FAM + MTRCE for a new task; if feasible, its first hop starts (client -> stop 1)."""
        snapshot = plan_view(snapshot, self.plan_inputs)
        a = assess(req, snapshot, now, self.policy, self.cost)
        ev = [{"kind": "feasibility", "task": req.task_id, **a.to_dict()}]
        if not a.feasible or a.plan is None or not a.plan.stops:
            return a, None, ev
        plan = a.plan
        t = ActiveTask(req.task_id, req.client, plan.mpvu, dscp, req, a, plan.itinerary(), max_laps,
                       now + req.deadline_s, now, holder=req.client, planned=plan_paths(plan),
                       epochs={s.node: s.epochs for s in plan.stops})
        self.tasks[t.task_id] = t
        ev.append({"kind": "plan", "task": t.task_id, "policy": plan.policy, **plan.to_dict()})
        ev += self._move(t, t.segments[0], 0, 0, snapshot, "first stop of the plan")
        return a, t, ev

    def hop_request(self, task_id: int, holder: str, end_reason: str | None, snapshot: dict,
                    now: float) -> tuple[dict, list[dict]]:
        """The model's holder asks where to go next. Returns the answer
        {"next", "ptr", "lap", "segments", "end"} and events. ``end_reason``: the
        holder ended the task itself (target reached, deadline)."""
        snapshot = plan_view(snapshot, self.plan_inputs)
        t = self.tasks.get(task_id)
        if t is None:
            raise KeyError(f"task {task_id} is not active at the DCC")
        ev = []
        if t.ended is None and end_reason is None:
            if now >= t.deadline:
                end_reason = "deadline"
            else:
                ptr, lap = t.ptr + 1, t.lap
                if ptr >= len(t.segments):
                    ptr, lap = 0, lap + 1
                if lap >= t.max_laps:
                    end_reason = "max_laps"
                else:
                    ev += self._move(t, t.segments[ptr], ptr, lap, snapshot,
                                     f"stop {ptr} of {t.segments} (lap {lap})", holder=holder)
                    return self._answer(t), ev
        if t.heading != t.client:  # ending (now, or decided by a re-plan): back to the client
            t.ended = t.ended or end_reason
            ev += self._move(t, t.client, t.ptr, t.lap, snapshot, f"task ends: {t.ended}", holder=holder)
        return self._answer(t), ev

    def finished(self, task_id: int, now: float) -> list[dict]:
        """The client has the final model: the task's flows go."""
        t = self.tasks.pop(task_id, None)
        if t is None:
            return []
        t.flows, t.meters = frozenset(), frozenset()
        self.done[task_id] = t
        return [{"kind": "task_flows_removed", "task": task_id, "hops": t.hop, "replans": t.replans,
                 "seconds": now - t.started}]

    # ---- network changes -----------------------------------------------------
    def replan(self, cause: str, snapshot: dict, now: float) -> list[dict]:
        """Re-plan every active task from where its model is: the remaining stops
        are re-chosen (nodes now down are left out) and the current hop's flows
        move to the best path that exists now."""
        snapshot = plan_view(snapshot, self.plan_inputs)
        ev = []
        for t in list(self.tasks.values()):
            if t.ended is None:
                left = t.deadline - now
                req = TrainingRequest(**{**t.request.__dict__, "start": t.heading or t.holder,
                                         "deadline_s": max(left, 0.0),
                                         "max_laps": max(t.max_laps - t.lap, 1)})
                a = assess(req, snapshot, now, self.policy, self.cost)
                old = list(t.segments)
                here = t.heading or t.holder
                if a.plan is not None and a.plan.stops:
                    new = a.plan.itinerary()
                    t.planned = plan_paths(a.plan)
                    t.epochs.update({s.node: s.epochs for s in a.plan.stops})
                else:  # no plan at all: keep the old stops that are still up
                    nodes = snapshot.get("nodes", {})
                    new = [n for n in old if nodes.get(n, {}).get("status") in ("fresh", "stale")]
                    if not new:
                        t.ended = "infeasible"
                        ev.append({"kind": "replan", "task": t.task_id, "cause": cause, "old": old, "new": [],
                                   "from": here, "feasible": False, "reasons": a.reasons[:5],
                                   "policy": self.policy.name, "ends": "no usable stop left"})
                        new = None
                if new:
                    if new[0] == here and len(new) > 1:  # the model is there already: go on, come back later
                        new = new[1:] + new[:1]
                    new_ptr = new.index(here) if here in new and new.index(here) < len(new) - 1 else -1
                    # the stops still to come, in order (a rotation that visits them alike is no change)
                    if new[new_ptr + 1:] + new[:new_ptr + 1] != old[t.ptr + 1:] + old[:t.ptr + 1]:
                        t.segments = new
                        # the next request goes on from `here`'s place, or starts the new order
                        t.ptr = new_ptr
                        t.replans += 1
                        ev.append({"kind": "replan", "task": t.task_id, "cause": cause, "old": old,
                                   "new": new, "from": here, "feasible": a.feasible,
                                   "reasons": a.reasons[-5:], "policy": self.policy.name})
                    else:  # re-planned for the change, and the plan stands: said, not silent
                        ev.append({"kind": "replan_kept", "task": t.task_id, "cause": cause, "stops": old,
                                   "from": here, "feasible": a.feasible, "reasons": a.reasons[-5:],
                                   "policy": self.policy.name})
            ev += self._reroute(t, snapshot, cause)
        return ev

    def adopt(self, *, task_id: int, holder: str, client: str, mpvu: str, target: float, deadline: float,
              model_bytes: int, segments: list[str], ptr: int, lap: int, max_laps: int, hop: int, dscp: int,
              now: float) -> list[dict]:
        """Take over a task another DCC planned (this one was restarted and lost its state):
        the model is at ``holder``, which asks where next; the itinerary it carries is the
        plan. Returns events; the hop request is then answered as usual."""
        if task_id in self.tasks:
            raise ValueError(f"task {task_id} is active already")
        req = TrainingRequest(task_id=task_id, client=client, model_bytes=max(int(model_bytes), 1),
                              target_accuracy=target, deadline_s=max(deadline - now, 0.001),
                              max_laps=max(max_laps, 1))
        a = Assessment(True, [f"adopted from {holder}'s hop request after a DCC restart: the itinerary it "
                              f"carries is the plan"], None, None, None, None)
        t = ActiveTask(task_id, client, mpvu, dscp, req, a, list(segments), max(max_laps, 1), deadline, now,
                       ptr=ptr, lap=lap, holder=holder, heading=holder, hop=hop)
        self.tasks[task_id] = t
        return [{"kind": "task_adopted", "task": task_id, "holder": holder, "client": client, "mpvu": mpvu,
                 "segments": list(segments), "ptr": ptr, "lap": lap, "hop": hop,
                 "deadline_in_s": round(deadline - now, 3)}]

    def resume(self, task_id: int, holder: str, snapshot: dict, now: float, cause: str,
               exclude=()) -> tuple[dict, list[dict]]:
        """Go on from a copy of the model at ``holder`` (the MPVU, which keeps the last
        verified versions): the model's holder died, or its version was rolled back.
        ``exclude`` is left out of this task's plans from now on; the remaining stops
        are planned from ``holder`` and the next hop starts there. Returns the answer
        for ``holder`` ({"next", ..., "end"}) and events."""
        snapshot = plan_view(snapshot, self.plan_inputs)
        t = self.tasks[task_id]
        if exclude:
            t.request = dataclasses.replace(t.request, exclude=frozenset(t.request.exclude or ()) | set(exclude))
        req = dataclasses.replace(t.request, start=holder, deadline_s=max(t.deadline - now, 0.0),
                                  max_laps=max(t.max_laps - t.lap, 1))
        a = assess(req, snapshot, now, self.policy, self.cost)
        old = list(t.segments)
        nodes = snapshot.get("nodes", {})
        if a.plan is not None and a.plan.stops:
            new = a.plan.itinerary()
            t.planned = plan_paths(a.plan)
            t.epochs.update({s.node: s.epochs for s in a.plan.stops})
        else:  # no plan: the old stops still up and allowed
            new = [n for n in old if n not in req.exclude and nodes.get(n, {}).get("status") in ("fresh", "stale")]
        t.replans += 1
        ev = [{"kind": "replan", "task": task_id, "cause": cause, "old": old, "new": new, "from": holder,
               "feasible": a.feasible, "reasons": a.reasons[-5:], "policy": self.policy.name}]
        if now >= t.deadline:
            t.ended = "deadline"
        elif not new:
            t.ended = "infeasible"
        if t.ended is not None:  # the verified version goes back to the client
            ev += self._move(t, t.client, t.ptr, t.lap, snapshot, f"task ends: {t.ended}", holder=holder)
        else:
            t.segments = new
            ev += self._move(t, new[0], 0, t.lap, snapshot, f"resume from {holder}: {cause}", holder=holder)
        return self._answer(t), ev

    # ---- flows ---------------------------------------------------------------
    def wanted_flows(self) -> set[FlowSpec]:
        out: set[FlowSpec] = set()
        for t in self.tasks.values():
            out |= t.flows
        return out

    def wanted_meters(self) -> set:
        out = set()
        for t in self.tasks.values():
            out |= t.meters
        return out

    def _move(self, t: ActiveTask, nxt: str, ptr: int, lap: int, snapshot: dict, why: str,
              holder: str | None = None) -> list[dict]:
        if holder is not None:
            t.holder = holder
        t.heading, t.ptr, t.lap = nxt, ptr, lap
        t.hop += 1
        ev = self._reroute(t, snapshot, None)
        ev.append({"kind": "hop", "task": t.task_id, "hop": t.hop, "from": t.holder, "to": nxt,
                   "path": t.paths.get("hop"), "verify_path": t.paths.get("verify"), "ptr": ptr, "lap": lap,
                   "reason": why, "flows": len(t.flows)})
        return ev

    def _reroute(self, t: ActiveTask, snapshot: dict, cause: str | None) -> list[dict]:
        """(Re)compute the paths of the current hop and its verification leg, and their flows."""
        if t.heading is None:
            return []
        nbytes = t.request.model_bytes
        legs = {"hop": (t.holder, t.heading)}
        if t.heading != t.client and t.mpvu:
            legs["verify"] = (t.heading, t.mpvu)
        paths, flows, meters, errors = {}, set(), set(), []
        for name, (a, b) in legs.items():
            if a == b:
                continue
            p = t.planned.get((a, b))
            if p is None or not path_is_up(snapshot, p):  # the plan's leg, while its links are up
                p = self.route(snapshot, a, b, nbytes)
            if p is None:
                continue  # unreachable now: default forwarding (if any) carries it; said below
            meter = None
            if self.reserve_mbps and name == "hop":  # the hop reserves bandwidth; its ACKs are not metered
                meter = aiflows.meter_id_for(t.task_id, t.hop % 256)
            try:
                hop_flows = aiflows.hop_flows(self.fabric, p, task_id=t.task_id, hop=t.hop, dscp=t.dscp,
                                              src_ip=self.ip_of(a), dst_ip=self.ip_of(b), meter_id=meter)
            except ValueError as e:  # the maps and the fabric disagree: say so, keep default forwarding
                ev_err = {"kind": "no_path", "task": t.task_id, "hop": t.hop, "legs": [name], "detail": str(e)}
                errors.append(ev_err)
                continue
            paths[name] = p
            flows |= set(hop_flows)
            if meter is not None:
                meters |= set(aiflows.hop_meters(self.fabric, p, self.reserve_mbps, meter))
        ev = list(errors)
        if cause is not None and paths != t.paths:
            ev.append({"kind": "flows_moved", "task": t.task_id, "hop": t.hop, "cause": cause,
                       "old": t.paths, "new": paths})
        missing = [n for n in legs if n not in paths and legs[n][0] != legs[n][1]]
        if missing:
            ev.append({"kind": "no_path", "task": t.task_id, "hop": t.hop, "legs": missing,
                       "detail": {n: legs[n] for n in missing}})
        t.paths, t.flows, t.meters = paths, frozenset(flows), frozenset(meters)
        return ev

    def _answer(self, t: ActiveTask) -> dict:
        return {"next": t.heading, "ptr": max(t.ptr, 0), "lap": t.lap, "segments": list(t.segments),
                "end": t.ended, "max_laps": t.max_laps}


def estimate_vs_actual(assessment: dict | None, actual_seconds: float | None, actual_bytes: int | None,
                       actual_accuracy: float | None) -> dict | None:
    """T-FAM's estimates next to what happened, with ratios (actual / estimate)."""
    if not assessment:
        return None

    def ratio(actual, est):
        return None if actual is None or not est or (isinstance(est, float) and math.isnan(est)) \
            else round(actual / est, 3)
    return {"est_seconds": assessment.get("est_seconds"), "actual_seconds": actual_seconds,
            "seconds_ratio": ratio(actual_seconds, assessment.get("est_seconds")),
            "est_bytes": assessment.get("est_bytes"), "actual_bytes": actual_bytes,
            "bytes_ratio": ratio(actual_bytes, assessment.get("est_bytes")),
            "expected_accuracy": assessment.get("expected_accuracy"), "actual_accuracy": actual_accuracy}
