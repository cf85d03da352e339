"""The DCC's live maps, DRRT (training) and QRRT (inference): knowledge, resources, reachability.

Pure state: no os_ken, no mininet, no clock. Every method takes ``now`` (seconds, any
monotonic origin) so the app feeds it event times and tests feed it numbers.

Where the entries come from
---------------------------
- *Knowledge* and node *resources*: the nodes' periodic reports (:meth:`NetworkMaps.node_report`).
- *Links*: the topology the testbed configured (:meth:`NetworkMaps.set_links`), their state
  from LLDP discovery / port status (:meth:`NetworkMaps.link_state`), their load from the
  switches' port counters (:meth:`NetworkMaps.port_stats`), their latency from probes
  (:meth:`NetworkMaps.latency_sample`).
- *Link capacity* is configuration, not measurement: the testbed tells the DCC what it shaped
  (:meth:`NetworkMaps.set_links`, :meth:`NetworkMaps.set_capacity`). OVS on veth pairs reports
  a fixed 10 Gbit/s port speed whatever HTB shaping sits on the interface, so OpenFlow port
  features cannot tell the DCC the real capacity. Utilisation, on the other hand, is measured.

Link load
---------
A switch port's rate is the byte-counter delta between that port's sample and its previous
one: ``rate = delta_bytes * 8 / delta_t`` (bit/s). A sample with a timestamp not after the
previous one is ignored (duplicate or reordered); a counter that goes down (port re-created,
switch restarted) restarts the baseline at that sample and keeps the last rate, whose age
keeps growing. Direction ``a -> b`` of a link is read from the tx counter of ``a``'s port if
``a`` is a switch end (has a port), else from the rx counter of ``b``'s port (a host end has
no OpenFlow counters of its own).

Age and status
--------------
Everything is judged against ``report_interval_s`` (the period at which nodes report):

========= ================================================================================
fresh     age <= ``stale_after_intervals`` (1.5) intervals
stale     older than that, not yet down
down      age >= ``down_after_intervals`` (2.5) intervals without a report
expired   age >= ``expire_after_intervals`` (10) intervals: the node's table entries are
          dropped, the node stays listed in ``nodes``
========= ================================================================================

A report from a down or expired node brings it back (event ``node_up``). Status is computed
from the age at ``now`` in :meth:`snapshot` and :meth:`alive_nodes`; :meth:`tick` turns the
transitions into events and drops expired entries (node entries; port counters and latency
estimates older than the expiry age too).

Snapshot (:meth:`NetworkMaps.snapshot`), JSON-ready, stable keys::

    {"t": now, "report_interval_s": float,
     "drrt": {
       "knowledge": {node: {"roles", "samples", "label_hist", "noise_epsilon",
                            "verification_samples", "age_s", "status"}},    # data or mpvu nodes
       "resources": {
         "compute": {node: {"capacity", "load", "queue_len", "age_s", "status"}},
                                              # compute-role nodes and any node with capacity > 0
         "links": [{"a", "b", "a_port", "b_port", "capacity_mbps", "capacity_source",
                    "up", "delay_ms" (configured), "latency_ms" (measured EWMA, None until
                    sampled), "latency_age_s",
                    "a_to_b": {"rate_mbps", "utilisation", "available_mbps", "packets_per_s",
                               "dropped_per_s", "age_s"},     # None values until measured
                    "b_to_a": {...}}]},
       "reachability": REACH},
     "qrrt": {
       "knowledge": {node: {"models", "age_s", "status"}},                     # inference nodes
       "resources": {node: {"load", "queue_len", "service_ms", "age_s", "status"}},
       "reachability": REACH},                                  # the same object as drrt's
     "nodes": {node: {"roles", "last_report_t", "age_s", "status", "reports"}}}  # all ever seen

    REACH = {"up_links": int,
             "down_links": [{"a", "b", "cause", "down_for_s"}],
             "components": [[node, ...], ...],   # connected over up links; every link end and
                                                 # every reported node; biggest first
             "main_component": int | None,       # index of the component holding most hosts
                                                 # (ties: most switches, then first by name)
             "hosts_reachable": {host: bool}}    # host is in the main component

``utilisation`` = rate / capacity (may exceed 1 when shaping lets bursts through);
``available_mbps`` = max(0, capacity - rate); both None when the capacity is unknown.
Events returned by the methods are dicts with ``kind`` and ``t`` (``now``) plus details:
``node_joined``, ``node_up``, ``knowledge_changed``, ``node_down``, ``node_expired``,
``link_up``, ``link_down``, ``capacity_changed``, ``counters_expired``, ``latency_expired``.

Planners do not read the snapshot raw: :func:`plan_view` gives them configured values unless a
measurement differs materially (so measurement noise cannot change a plan between two runs of
one spec; ``daitn replay``), and structural changes as they are.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Iterable

import networkx as nx

__all__ = ["LinkInfo", "NetworkMaps", "MapsError", "ROLES", "STATUSES", "PLAN_INPUTS", "plan_view"]

ROLES = ("data", "mpvu", "client", "compute", "inference")  # nodes.wire.Role, lower-case
STATUSES = ("fresh", "stale", "down", "expired")
_KNOWLEDGE_FIELDS = ("roles", "samples", "label_hist", "verification_samples", "noise_epsilon", "models")


class MapsError(ValueError):
    """A call named a link the maps do not hold, or gave an impossible value."""


@dataclass(frozen=True)
class LinkInfo:
    """A configured link. Ports are OpenFlow port numbers of switch ends; a host end has
    ``None``. ``capacity_mbps``: the shaped rate (None: unshaped / unknown); ``delay_ms``:
    configured one-way delay. ``up``: state until discovery says otherwise."""

    a: str
    a_port: int | None
    b: str
    b_port: int | None
    capacity_mbps: float | None = None
    delay_ms: float | None = None
    up: bool = True


@dataclass
class _PortCounters:
    """One switch port's last counter sample and the rates derived from the one before."""

    t: float
    rx_bytes: int
    tx_bytes: int
    rx_packets: int
    tx_packets: int
    rx_dropped: int
    tx_dropped: int
    rates: dict | None = None  # bit/s and per-second rates, from the last good pair
    rates_t: float | None = None  # time of the sample that produced ``rates``


@dataclass
class _Link:
    info: LinkInfo
    capacity_mbps: float | None
    capacity_source: str
    up: bool
    state_t: float | None = None
    cause: str = ""
    latency_ms: float | None = None
    latency_t: float | None = None


@dataclass
class _Node:
    first_t: float
    last_t: float
    reports: int = 0
    report: dict = field(default_factory=dict)  # last report's fields; {} once expired
    announced: str = "up"  # last status turned into an event: up | down | expired


def _natural(name: str):
    """Sort key putting h2 before h10."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _key(a: str, b: str) -> frozenset:
    return frozenset((a, b))


def _is_switch(name: str) -> bool:
    return bool(re.fullmatch(r"s[1-9][0-9]*", name))


class NetworkMaps:
    """The DCC's DRRT (training) and QRRT (queries): knowledge, resources, reachability,
    each entry with its age."""

    def __init__(self, *, report_interval_s: float, down_after_intervals: float = 2.5,
                 expire_after_intervals: float = 10.0, ewma: float = 0.5,
                 stale_after_intervals: float = 1.5):
        if not report_interval_s > 0:
            raise MapsError(f"report_interval_s must be > 0 s, got {report_interval_s!r}")
        if not 0 < stale_after_intervals <= down_after_intervals < expire_after_intervals:
            raise MapsError("need 0 < stale_after_intervals <= down_after_intervals < "
                            f"expire_after_intervals, got {stale_after_intervals!r}, "
                            f"{down_after_intervals!r}, {expire_after_intervals!r}")
        if not 0 < ewma <= 1:
            raise MapsError(f"ewma (weight of a new latency sample) must be in (0, 1], got {ewma!r}")
        self.interval = float(report_interval_s)
        self.stale_after = float(stale_after_intervals)
        self.down_after = float(down_after_intervals)
        self.expire_after = float(expire_after_intervals)
        self.ewma = float(ewma)
        self._links: dict[frozenset, _Link] = {}
        self._ports: dict[tuple[str, int], _PortCounters] = {}
        self._nodes: dict[str, _Node] = {}

    # ---- ages --------------------------------------------------------------
    def status_of_age(self, age_s: float) -> str:
        """fresh / stale / down / expired for an entry that is ``age_s`` seconds old."""
        n = age_s / self.interval
        if n >= self.expire_after:
            return "expired"
        if n >= self.down_after:
            return "down"
        if n <= self.stale_after:
            return "fresh"
        return "stale"

    @staticmethod
    def _age(t: float | None, now: float) -> float | None:
        return None if t is None else max(0.0, now - t)

    # ---- topology ----------------------------------------------------------
    def set_links(self, links: Iterable[LinkInfo]) -> None:
        """Replace the configured links. Measurements of links that stay are kept."""
        new: dict[frozenset, _Link] = {}
        for info in links:
            if info.a == info.b:
                raise MapsError(f"link {info.a}-{info.b} joins a node to itself")
            k = _key(info.a, info.b)
            if k in new:
                raise MapsError(f"link {info.a}-{info.b} is given twice to set_links")
            old = self._links.get(k)
            ln = _Link(info=info, capacity_mbps=info.capacity_mbps,
                       capacity_source="config" if info.capacity_mbps is not None else "unknown",
                       up=info.up)
            if old is not None:
                ln.up, ln.state_t, ln.cause = old.up, old.state_t, old.cause
                ln.latency_ms, ln.latency_t = old.latency_ms, old.latency_t
            new[k] = ln
        self._links = new

    def _link(self, a: str, b: str) -> _Link:
        ln = self._links.get(_key(a, b))
        if ln is None:
            raise MapsError(f"no link {a}-{b} in the maps ({len(self._links)} links known); "
                            "give it to set_links() first")
        return ln

    def link_state(self, a: str, b: str, up: bool, now: float, cause: str = "") -> list[dict]:
        """A link came up or went down (LLDP discovery, port status). A link not configured
        is added with unknown ports and capacity. Returns a link_up/link_down event if the
        state changed."""
        k = _key(a, b)
        ln = self._links.get(k)
        configured = ln is not None
        if ln is None:
            if not up:  # a link never configured nor seen cannot go down
                return []
            ln = self._links[k] = _Link(info=LinkInfo(a, None, b, None), capacity_mbps=None,
                                        capacity_source="unknown", up=not up)
        if ln.up == up:
            return []
        ln.up, ln.state_t, ln.cause = up, now, cause
        return [{"kind": "link_up" if up else "link_down", "t": now, "a": ln.info.a, "b": ln.info.b,
                 "cause": cause, "configured": configured}]

    def set_capacity(self, a: str, b: str, mbps: float | None, now: float,
                     source: str = "config") -> list[dict]:
        """Set a link's capacity (both directions); utilisation uses it from now on.
        Returns a capacity_changed event if it changed."""
        if mbps is not None and not mbps > 0:
            raise MapsError(f"capacity of {a}-{b} must be > 0 Mbit/s or None, got {mbps!r}")
        ln = self._link(a, b)
        src = source if mbps is not None else "unknown"
        if ln.capacity_mbps == mbps and ln.capacity_source == src:
            return []
        old = ln.capacity_mbps
        ln.capacity_mbps, ln.capacity_source = mbps, src
        return [{"kind": "capacity_changed", "t": now, "a": ln.info.a, "b": ln.info.b,
                 "old_mbps": old, "new_mbps": mbps, "source": src}]

    # ---- measurements ------------------------------------------------------
    def port_stats(self, switch: str, port: int, now: float, *, rx_bytes: int, tx_bytes: int,
                   rx_packets: int = 0, tx_packets: int = 0, rx_dropped: int = 0,
                   tx_dropped: int = 0) -> None:
        """One port-counter sample of ``switch``'s port ``port`` taken at ``now``."""
        cur = _PortCounters(now, rx_bytes, tx_bytes, rx_packets, tx_packets, rx_dropped, tx_dropped)
        prev = self._ports.get((switch, port))
        if prev is None:
            self._ports[(switch, port)] = cur
            return
        dt = now - prev.t
        if dt <= 0:  # duplicate or reordered reply: no rate can come of it
            return
        counters = ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets", "rx_dropped", "tx_dropped")
        delta = {c: getattr(cur, c) - getattr(prev, c) for c in counters}
        if any(d < 0 for d in delta.values()):
            # counters restarted: this sample is the new baseline; the old rate ages on
            cur.rates, cur.rates_t = prev.rates, prev.rates_t
        else:
            cur.rates = {
                "rx_bps": delta["rx_bytes"] * 8 / dt, "tx_bps": delta["tx_bytes"] * 8 / dt,
                "rx_pps": delta["rx_packets"] / dt, "tx_pps": delta["tx_packets"] / dt,
                "rx_drop_ps": delta["rx_dropped"] / dt, "tx_drop_ps": delta["tx_dropped"] / dt,
            }
            cur.rates_t = now
        self._ports[(switch, port)] = cur

    def latency_sample(self, a: str, b: str, ms: float, now: float) -> None:
        """A one-way latency estimate for link a-b; kept as an EWMA (weight ``ewma`` on the new
        sample; the first sample is taken as is)."""
        if not (ms >= 0 and math.isfinite(ms)):
            raise MapsError(f"latency sample of {a}-{b} must be a finite number >= 0 ms, got {ms!r}")
        ln = self._link(a, b)
        ln.latency_ms = ms if ln.latency_ms is None else self.ewma * ms + (1 - self.ewma) * ln.latency_ms
        ln.latency_t = now

    # ---- node reports ------------------------------------------------------
    def node_report(self, node: str, now: float, *, roles: list[str], samples: int = 0,
                    label_hist: list[int] = (), verification_samples: int = 0,
                    capacity: float = 0.0, load: float = 0.0, queue_len: int = 0,
                    service_ms: float = 0.0, models: list[int] = (),
                    noise_epsilon: float | None = None) -> list[dict]:
        """A node's periodic report. Returns node_joined (first report), node_up (back after
        down or expired) and knowledge_changed (roles, samples, labels, models... differ)."""
        if isinstance(roles, str):
            raise MapsError(f"roles of node {node!r} must be a list of role names, got {roles!r}")
        given = {str(r).lower() for r in roles}
        unknown = sorted(given - set(ROLES))
        if unknown:
            raise MapsError(f"node {node!r} reported unknown role(s) {', '.join(unknown)}; "
                            f"known roles: {', '.join(ROLES)}")
        roles = sorted(given, key=ROLES.index)
        report = {"roles": roles, "samples": int(samples), "label_hist": [int(x) for x in label_hist],
                  "verification_samples": int(verification_samples), "noise_epsilon": noise_epsilon,
                  "models": [int(m) for m in models], "capacity": float(capacity),
                  "load": float(load), "queue_len": int(queue_len), "service_ms": float(service_ms)}
        events: list[dict] = []
        nd = self._nodes.get(node)
        if nd is None:
            nd = self._nodes[node] = _Node(first_t=now, last_t=now)
            events.append({"kind": "node_joined", "t": now, "node": node, "roles": roles,
                           "samples": report["samples"]})
        else:
            was = nd.announced
            if was == "up":
                was = {"down": "down", "expired": "expired"}.get(
                    self.status_of_age(max(0.0, now - nd.last_t)), "up")
            if was != "up":  # back, whether or not tick() saw it go
                events.append({"kind": "node_up", "t": now, "node": node, "was": was,
                               "after_s": max(0.0, now - nd.last_t)})
            if was != "expired" and nd.report:  # an expired node's knowledge is gone: nothing to compare with
                changes = {f: [nd.report[f], report[f]] for f in _KNOWLEDGE_FIELDS
                           if nd.report[f] != report[f]}
                if changes:
                    events.append({"kind": "knowledge_changed", "t": now, "node": node,
                                   "changes": changes})
        nd.last_t = max(nd.last_t, now)
        nd.reports += 1
        nd.report = report
        nd.announced = "up"
        return events

    # ---- time --------------------------------------------------------------
    def _reason(self, age: float) -> str:
        return (f"no report for {age:.1f} s ({age / self.interval:.1f} report intervals "
                f"of {self.interval:g} s)")

    def tick(self, now: float) -> list[dict]:
        """Mark nodes down, expire old entries; returns node_down, node_expired,
        counters_expired and latency_expired events."""
        events: list[dict] = []
        for name in sorted(self._nodes, key=_natural):
            nd = self._nodes[name]
            age = max(0.0, now - nd.last_t)
            st = self.status_of_age(age)
            if st in ("down", "expired") and nd.announced == "up":
                events.append({"kind": "node_down", "t": now, "node": name, "age_s": age,
                               "reason": self._reason(age)})
                nd.announced = "down"
            if st == "expired" and nd.announced != "expired":
                events.append({"kind": "node_expired", "t": now, "node": name, "age_s": age,
                               "reason": self._reason(age) + "; its map entries are dropped"})
                nd.announced = "expired"
                nd.report = {}
        limit = self.expire_after * self.interval
        for (sw, port) in sorted(self._ports, key=lambda k: (_natural(k[0]), k[1])):
            age = now - self._ports[(sw, port)].t
            if age >= limit:
                del self._ports[(sw, port)]
                events.append({"kind": "counters_expired", "t": now, "switch": sw, "port": port,
                               "age_s": age})
        for ln in self._links.values():
            if ln.latency_t is not None and now - ln.latency_t >= limit:
                events.append({"kind": "latency_expired", "t": now, "a": ln.info.a, "b": ln.info.b,
                               "age_s": now - ln.latency_t})
                ln.latency_ms = ln.latency_t = None
        return events

    # ---- views -------------------------------------------------------------
    def _node_view(self, now: float) -> dict[str, tuple[_Node, float, str]]:
        out = {}
        for name in sorted(self._nodes, key=_natural):
            nd = self._nodes[name]
            age = max(0.0, now - nd.last_t)
            st = "expired" if nd.announced == "expired" else self.status_of_age(age)
            out[name] = (nd, age, st)
        return out

    def _direction(self, ln: _Link, src: str, now: float) -> dict:
        info = ln.info
        if src == info.a:
            s_end, s_port, d_end, d_port = info.a, info.a_port, info.b, info.b_port
        else:
            s_end, s_port, d_end, d_port = info.b, info.b_port, info.a, info.a_port
        rates, t = None, None
        if s_port is not None:
            pc = self._ports.get((s_end, s_port))
            if pc is not None and pc.rates is not None:
                rates, t = {"bps": pc.rates["tx_bps"], "pps": pc.rates["tx_pps"],
                            "drops": pc.rates["tx_drop_ps"]}, pc.rates_t
        elif d_port is not None:
            pc = self._ports.get((d_end, d_port))
            if pc is not None and pc.rates is not None:
                rates, t = {"bps": pc.rates["rx_bps"], "pps": pc.rates["rx_pps"],
                            "drops": pc.rates["rx_drop_ps"]}, pc.rates_t
        if rates is None:
            return {"rate_mbps": None, "utilisation": None, "available_mbps": None,
                    "packets_per_s": None, "dropped_per_s": None, "age_s": None}
        mbps = rates["bps"] / 1e6
        cap = ln.capacity_mbps
        return {"rate_mbps": mbps,
                "utilisation": None if cap is None else mbps / cap,
                "available_mbps": None if cap is None else max(0.0, cap - mbps),
                "packets_per_s": rates["pps"], "dropped_per_s": rates["drops"],
                "age_s": self._age(t, now)}

    def _link_rows(self, now: float) -> list[dict]:
        rows = []
        for ln in self._links.values():
            i = ln.info
            rows.append({"a": i.a, "b": i.b, "a_port": i.a_port, "b_port": i.b_port,
                         "capacity_mbps": ln.capacity_mbps, "capacity_source": ln.capacity_source,
                         "up": ln.up, "delay_ms": i.delay_ms, "latency_ms": ln.latency_ms,
                         "latency_age_s": self._age(ln.latency_t, now),
                         "a_to_b": self._direction(ln, i.a, now),
                         "b_to_a": self._direction(ln, i.b, now)})
        rows.sort(key=lambda r: (_natural(r["a"]), _natural(r["b"])))
        return rows

    def reachability(self, now: float) -> dict:
        """Connected components over up links (see the module docstring for the shape)."""
        g = nx.Graph()
        for ln in self._links.values():
            g.add_node(ln.info.a)
            g.add_node(ln.info.b)
            if ln.up:
                g.add_edge(ln.info.a, ln.info.b)
        g.add_nodes_from(self._nodes)
        comps = [sorted(c, key=_natural) for c in nx.connected_components(g)]
        comps.sort(key=lambda c: (-len(c), _natural(c[0])))
        hosts = [n for n in g if not _is_switch(n)]

        def weight(i):
            c = comps[i]
            return (sum(not _is_switch(n) for n in c), sum(_is_switch(n) for n in c), -i)

        main = max(range(len(comps)), key=weight) if comps else None
        in_main = set(comps[main]) if main is not None else set()
        down = [{"a": ln.info.a, "b": ln.info.b, "cause": ln.cause,
                 "down_for_s": self._age(ln.state_t, now)}
                for ln in self._links.values() if not ln.up]
        down.sort(key=lambda d: (_natural(d["a"]), _natural(d["b"])))
        return {"up_links": sum(ln.up for ln in self._links.values()), "down_links": down,
                "components": comps, "main_component": main,
                "hosts_reachable": {h: h in in_main for h in sorted(hosts, key=_natural)}}

    def snapshot(self, now: float) -> dict:
        """The maps at ``now`` as JSON-ready data (shape in the module docstring)."""
        drrt_k, compute, qrrt_k, qrrt_r, nodes = {}, {}, {}, {}, {}
        for name, (nd, age, st) in self._node_view(now).items():
            r = nd.report
            nodes[name] = {"roles": list(r.get("roles", [])), "last_report_t": nd.last_t,
                           "age_s": age, "status": st, "reports": nd.reports}
            if st == "expired" or not r:
                continue
            roles = r["roles"]
            if "data" in roles or "mpvu" in roles:
                drrt_k[name] = {"roles": list(roles), "samples": r["samples"],
                                "label_hist": list(r["label_hist"]),
                                "noise_epsilon": r["noise_epsilon"],
                                "verification_samples": r["verification_samples"],
                                "age_s": age, "status": st}
            if "compute" in roles or r["capacity"] > 0:
                compute[name] = {"capacity": r["capacity"], "load": r["load"],
                                 "queue_len": r["queue_len"], "age_s": age, "status": st}
            if "inference" in roles:
                qrrt_k[name] = {"models": list(r["models"]), "age_s": age, "status": st}
                qrrt_r[name] = {"load": r["load"], "queue_len": r["queue_len"],
                                "service_ms": r["service_ms"], "age_s": age, "status": st}
        reach = self.reachability(now)
        return {"t": now, "report_interval_s": self.interval,
                "drrt": {"knowledge": drrt_k,
                         "resources": {"compute": compute, "links": self._link_rows(now)},
                         "reachability": reach},
                "qrrt": {"knowledge": qrrt_k, "resources": qrrt_r, "reachability": reach},
                "nodes": nodes}

    def alive_nodes(self, role: str, now: float) -> dict[str, dict]:
        """Nodes offering ``role`` that are fresh or stale (not down or expired), with all
        their last report's fields plus ``age_s`` and ``status``: what planners may use."""
        role = role.lower()
        if role not in ROLES:
            raise MapsError(f"unknown role {role!r}; known roles: {', '.join(ROLES)}")
        out = {}
        for name, (nd, age, st) in self._node_view(now).items():
            if st in ("fresh", "stale") and role in nd.report.get("roles", ()):
                out[name] = {**{k: (list(v) if isinstance(v, list) else v) for k, v in nd.report.items()},
                             "age_s": age, "status": st}
        return out


# ---- what the planners see -----------------------------------------------------------------
# Measured link state is noisy: LLDP latency on a 0 ms link reads 0-0.4 ms (tens of ms on a
# busy controller), utilisation from port counters moves with every knowledge report, a node's
# load depends on when its report fell relative to its training. Fed as they are to MTRCE,
# such noise reorders close candidates (greedy's gain per second differs by 1 % between two
# stops of the quickstart), so two runs of one spec could plan differently. The planners
# therefore see ``plan_view(snapshot)``: configured values unless a measurement differs
# materially, and material measurements rounded. Structural changes (a link or node down or
# up, a capacity the testbed set) are not touched, so re-planning on real changes works as before.
PLAN_INPUTS = ("settled", "measured", "configured")
LATENCY_MATERIAL_MS = 2.0    # |measured - configured| latency below max(this, ...) is noise
LATENCY_MATERIAL_REL = 0.25  # ... or below this fraction of the configured delay
UTILISATION_MATERIAL = 0.2   # a direction less loaded than this counts as free
UTILISATION_STEP = 0.1       # above it, utilisation is rounded to this
LOAD_STEP = 0.5              # a node's load (0..1) is rounded to this: idle, half, busy


def _step(x: float, step: float) -> float:
    return round(round(x / step) * step, 9)


def plan_view(snapshot: dict, inputs: str = "settled") -> dict:
    """The maps as the DCC's planners (MTRCE, hop paths) see them; ``snapshot`` is not changed.

    - ``measured``: the snapshot as it is;
    - ``configured``: no measurement at all: latency = configured delay, rate = capacity,
      node load 0 (queued jobs still count: they are reported, not measured);
    - ``settled`` (the default): per link, the configured delay unless the measured latency
      differs from it by more than max(LATENCY_MATERIAL_MS, LATENCY_MATERIAL_REL x delay),
      then the measurement rounded to LATENCY_MATERIAL_MS; per direction, the whole capacity
      unless the measured utilisation reaches UTILISATION_MATERIAL, then the utilisation
      rounded to UTILISATION_STEP; node load rounded to LOAD_STEP.
    """
    if inputs not in PLAN_INPUTS:
        raise MapsError(f"plan inputs must be one of {', '.join(PLAN_INPUTS)}, got {inputs!r}")
    if inputs == "measured":
        return snapshot
    drrt = snapshot.get("drrt")
    if not drrt:
        return snapshot
    res = drrt.get("resources", {})
    links = []
    for row in res.get("links", []):
        row = dict(row)
        delay = float(row.get("delay_ms") or 0.0)
        lat = row.get("latency_ms")
        if inputs == "configured" or (lat is not None and abs(lat - delay) <= max(LATENCY_MATERIAL_MS,
                                                                                  LATENCY_MATERIAL_REL * delay)):
            row["latency_ms"] = None if inputs == "configured" else delay
        elif lat is not None:
            row["latency_ms"] = _step(lat, LATENCY_MATERIAL_MS)
        cap = row.get("capacity_mbps")
        for d in ("a_to_b", "b_to_a"):
            m = dict(row.get(d) or {})
            if inputs == "configured":
                m.update(rate_mbps=None, utilisation=None, available_mbps=None)
            elif cap and m.get("rate_mbps") is not None:
                u = m["rate_mbps"] / cap
                u = 0.0 if u < UTILISATION_MATERIAL else min(_step(u, UTILISATION_STEP), 1.0)
                m.update(rate_mbps=u * cap, utilisation=u, available_mbps=max(0.0, cap * (1 - u)))
            row[d] = m
        links.append(row)
    compute = {}
    for node, c in res.get("compute", {}).items():
        load = float(c.get("load") or 0.0)
        compute[node] = dict(c, load=0.0 if inputs == "configured" else _step(min(max(load, 0.0), 1.0), LOAD_STEP))
    return {**snapshot, "drrt": {**drrt, "resources": {**res, "links": links, "compute": compute}}}
