"""Pure forwarding policy: expected fabric + discovered links -> flow specs.

No os_ken import: the app (:mod:`controllers.dcc_app`) turns ``FlowSpec`` into
OpenFlow messages; tests run these functions against a fake flow table.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import networkx as nx

from controllers import cookies
from nodes.wire import DCC_IP, DCC_UDP_PORT

PRIO_DISCOVERY = 0xFFFF
PRIO_DCC_SERVICE = 200
# an AI task's hop (controllers.aiflows) overrides the default path for its
# (src, dst, DSCP) only: above forwarding, which it must beat; below the punts,
# which it cannot overlap (they match LLDP, ARP and the DCC address) but which
# must stay first should a future hop flow ever be written too wide
PRIO_AI_HOP = 150
PRIO_FORWARDING = 100

ETH_ARP = 0x0806
ETH_IPV4 = 0x0800
ETH_LLDP = 0x88CC
IPPROTO_UDP = 17
CONTROLLER = "CONTROLLER"


@dataclass(frozen=True)
class HostPort:
    name: str
    ip: str
    mac: str
    switch: str
    port: int


@dataclass
class Fabric:
    """What the spec says the network is: switches (name -> dpid), switch
    links with port numbers, hosts with their attachment point."""

    switches: dict[str, int]
    links: list[tuple[str, int, str, int]]  # (a, a_port, b, b_port)
    hosts: dict[str, HostPort]
    extra: dict = field(default_factory=dict)  # roles etc. for the DCC

    @classmethod
    def from_dict(cls, d: dict) -> "Fabric":
        return cls(
            switches={k: int(v) for k, v in d["switches"].items()},
            links=[(ln["a"], int(ln["a_port"]), ln["b"], int(ln["b_port"])) for ln in d["links"]],
            hosts={n: HostPort(n, h["ip"], h["mac"], h["switch"], int(h["port"]))
                   for n, h in d["hosts"].items()},
            extra=d.get("extra", {}),
        )

    @classmethod
    def load(cls, path: str) -> "Fabric":
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def to_dict(self) -> dict:
        return {
            "switches": self.switches,
            "links": [{"a": a, "a_port": ap, "b": b, "b_port": bp} for a, ap, b, bp in self.links],
            "hosts": {n: {"ip": h.ip, "mac": h.mac, "switch": h.switch, "port": h.port}
                      for n, h in self.hosts.items()},
            "extra": self.extra,
        }

    def name_of(self, dpid: int) -> str:
        for n, d in self.switches.items():
            if d == dpid:
                return n
        return f"dpid{dpid}"

    def expected_links(self) -> set[tuple[int, int, int, int]]:
        """Directed (src_dpid, src_port, dst_dpid, dst_port), both directions."""
        out = set()
        for a, ap, b, bp in self.links:
            da, db = self.switches[a], self.switches[b]
            out.add((da, ap, db, bp))
            out.add((db, bp, da, ap))
        return out


@dataclass(frozen=True, repr=False)
class FlowSpec:
    """One flow entry: match fields use OpenFlow 1.3 OXM names (os_ken OFPMatch kwargs).

    ``meter``: the OpenFlow meter the flow's packets pass first (a meter
    instruction before the actions), None for none.
    """

    dpid: int
    priority: int
    cookie: int
    match: tuple  # sorted (field, value) pairs, hashable
    actions: tuple  # ("output", port) or ("output", CONTROLLER)
    meter: int | None = None

    def match_dict(self) -> dict:
        return dict(self.match)

    def __repr__(self) -> str:
        # unchanged for flows without a meter: the app orders flow-mods by str(spec)
        s = (f"FlowSpec(dpid={self.dpid!r}, priority={self.priority!r}, cookie={self.cookie!r}, "
             f"match={self.match!r}, actions={self.actions!r}")
        return s + (f", meter={self.meter!r})" if self.meter is not None else ")")


def _flow(dpid, priority, cookie, match: dict, actions, meter: int | None = None) -> FlowSpec:
    return FlowSpec(dpid, priority, cookie, tuple(sorted(match.items())), tuple(actions), meter)


def compare_links(fabric: Fabric, discovered: set[tuple[int, int, int, int]]) -> dict:
    """Cross-check LLDP-discovered links against the spec."""
    exp = fabric.expected_links()
    return {"missing": sorted(exp - discovered), "unexpected": sorted(discovered - exp)}


def switch_graph(links: set[tuple[int, int, int, int]]) -> nx.Graph:
    """Undirected graph of dpids; edge attribute ``ports[dpid]`` = local port number."""
    g = nx.Graph()
    for s, sp, d, dp in sorted(links):
        if g.has_edge(s, d):
            continue
        g.add_edge(s, d, ports={s: sp, d: dp})
    return g


def next_hops_towards(g: nx.Graph, dst: int, dpids) -> dict[int, int]:
    """For every switch, the port of its next hop on a shortest path to ``dst``.

    One BFS tree rooted at ``dst`` (neighbours visited in dpid order) so every
    switch agrees on the path: no loops, deterministic across runs.
    """
    out: dict[int, int] = {}
    if dst not in g:
        return out
    parent = {dst: None}
    frontier = [dst]
    while frontier:
        nxt = []
        for u in frontier:
            for v in sorted(g.neighbors(u)):
                if v not in parent:
                    parent[v] = u
                    out[v] = g.edges[u, v]["ports"][v]
                    nxt.append(v)
        frontier = nxt
    return {d: p for d, p in out.items() if d in set(dpids)}


def forwarding_flows(fabric: Fabric, discovered: set[tuple[int, int, int, int]]) -> list[FlowSpec]:
    """Proactive ARP + IPv4 forwarding to every host along shortest paths.

    ARP is matched on its target address and unicast along the same tree as IP,
    so broadcasts never flood (no storms on rings or fat-trees).
    """
    g = switch_graph(discovered)
    g.add_nodes_from(fabric.switches.values())
    flows = []
    for num, (hname, h) in enumerate(sorted(fabric.hosts.items(), key=lambda kv: _hnum(kv[0]))):
        dst = fabric.switches[h.switch]
        cookie = cookies.make(cookies.FORWARDING, _hnum(hname))
        ports = next_hops_towards(g, dst, fabric.switches.values())
        ports[dst] = h.port
        for dpid, port in sorted(ports.items()):
            flows.append(_flow(dpid, PRIO_FORWARDING, cookie,
                               {"eth_type": ETH_IPV4, "ipv4_dst": h.ip}, [("output", port)]))
            flows.append(_flow(dpid, PRIO_FORWARDING, cookie,
                               {"eth_type": ETH_ARP, "arp_tpa": h.ip}, [("output", port)]))
    return flows


def service_flows(dpid: int) -> list[FlowSpec]:
    """Punt DA-ITN control traffic and ARP for the DCC address, and LLDP."""
    svc = cookies.make(cookies.DCC_SERVICE)
    return [
        _flow(dpid, PRIO_DISCOVERY, cookies.make(cookies.DISCOVERY),
              {"eth_type": ETH_LLDP}, [("output", CONTROLLER)]),
        _flow(dpid, PRIO_DCC_SERVICE, svc, {"eth_type": ETH_ARP, "arp_tpa": DCC_IP},
              [("output", CONTROLLER)]),
        _flow(dpid, PRIO_DCC_SERVICE, svc,
              {"eth_type": ETH_IPV4, "ip_proto": IPPROTO_UDP, "ipv4_dst": DCC_IP,
               "udp_dst": DCC_UDP_PORT}, [("output", CONTROLLER)]),
    ]


def _hnum(host: str) -> int:
    return int(host[1:]) if host[1:].isdigit() else 0


def lookup(flows: list[FlowSpec], dpid: int, pkt: dict) -> FlowSpec | None:
    """Fake flow table: highest-priority flow on ``dpid`` whose match ``pkt`` satisfies.

    ``pkt`` uses the match field names (``ipv4_src``, ``ipv4_dst``, ``ip_dscp``...);
    an IPv4 packet without ``ip_dscp`` is best effort (DSCP 0), as on the wire.
    """
    if pkt.get("eth_type") == ETH_IPV4 and "ip_dscp" not in pkt:
        pkt = {**pkt, "ip_dscp": 0}
    best = None
    for f in flows:
        if f.dpid != dpid:
            continue
        if all(pkt.get(k) == v for k, v in f.match):
            if best is None or f.priority > best.priority:
                best = f
    return best
