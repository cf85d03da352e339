"""Topology as plain data: switches, hosts and links with their shaping parameters.

Naming scheme (Mininet's): switches ``s1..sN`` (dpid = N), hosts ``h1..hM``.
Every generator, topohub import and YAML file produces a :class:`Topology`;
nothing here imports mininet or os_ken.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import networkx as nx


class TopologyError(ValueError):
    """A topology is malformed or unknown; the message says what and where."""


_SWITCH = re.compile(r"^s([1-9][0-9]*)$")
_HOST = re.compile(r"^h([1-9][0-9]*)$")


def is_switch(name: str) -> bool:
    return bool(_SWITCH.match(name))


def is_host(name: str) -> bool:
    return bool(_HOST.match(name))


def dpid_of(switch: str) -> int:
    """Datapath id of switch ``sN`` is N (Mininet's default)."""
    m = _SWITCH.match(switch)
    if not m:
        raise TopologyError(f"{switch!r} is not a switch name (expected s1, s2, ...)")
    return int(m.group(1))


LINK_BACKENDS = (None, "tc", "ns3")   # None: the spec's links.backend (default auto) decides


@dataclass(frozen=True)
class Link:
    """An undirected link; shaping applies to both directions.

    ``bw_mbit``: rate limit in Mbit/s (None: unshaped). ``delay_ms``: one-way
    delay. ``loss_pct``: random loss per direction, in percent (0..100).
    ``backend``: what emulates the link - ``tc`` (a veth shaped by HTB), ``ns3``
    (two taps joined by ns-3) or None (the spec's ``links.backend`` decides).
    """

    a: str
    b: str
    bw_mbit: float | None = None
    delay_ms: float | None = None
    loss_pct: float | None = None
    backend: str | None = None

    def endpoints(self) -> tuple[str, str]:
        return (self.a, self.b)


@dataclass
class Topology:
    """A network to emulate. ``labels`` maps a switch to its real-world name
    (e.g. s3 -> "Denver"); ``positions`` maps a node to (x, y) or (lon, lat)."""

    name: str
    switches: list[str]
    hosts: list[str]
    links: list[Link]
    labels: dict[str, str] = field(default_factory=dict)
    positions: dict[str, tuple[float, float]] = field(default_factory=dict)
    source: str = ""  # where it came from: generator call, topohub name, file path

    def graph(self) -> nx.Graph:
        g = nx.Graph()
        for s in self.switches:
            g.add_node(s, kind="switch")
        for h in self.hosts:
            g.add_node(h, kind="host")
        for ln in self.links:
            g.add_edge(ln.a, ln.b, link=ln)
        return g

    def switch_links(self) -> list[Link]:
        return [ln for ln in self.links if is_switch(ln.a) and is_switch(ln.b)]

    def host_switch(self, host: str) -> str:
        """The switch a host is attached to (hosts have exactly one link)."""
        for ln in self.links:
            if ln.a == host and is_switch(ln.b):
                return ln.b
            if ln.b == host and is_switch(ln.a):
                return ln.a
        raise TopologyError(f"host {host!r} is not attached to any switch")

    def with_link_defaults(self, bw_mbit=None, delay_ms=None, loss_pct=None) -> "Topology":
        """Fill link parameters that are unset with the given defaults."""
        links = [
            replace(
                ln,
                bw_mbit=ln.bw_mbit if ln.bw_mbit is not None else bw_mbit,
                delay_ms=ln.delay_ms if ln.delay_ms is not None else delay_ms,
                loss_pct=ln.loss_pct if ln.loss_pct is not None else loss_pct,
            )
            for ln in self.links
        ]
        return replace(self, links=links)

    def with_link_values(self, bw_mbit=None, delay_ms=None, loss_pct=None) -> "Topology":
        """Set link parameters on every link, replacing the topology's own
        values for each parameter that is given (not None)."""
        links = [
            replace(
                ln,
                bw_mbit=bw_mbit if bw_mbit is not None else ln.bw_mbit,
                delay_ms=delay_ms if delay_ms is not None else ln.delay_ms,
                loss_pct=loss_pct if loss_pct is not None else ln.loss_pct,
            )
            for ln in self.links
        ]
        return replace(self, links=links)

    def validate(self) -> "Topology":
        """Check names, attachment and parameters; raise TopologyError naming the culprit."""
        where = f"topology {self.name!r}"
        if not self.switches:
            raise TopologyError(f"{where}: has no switches")
        for s in self.switches:
            if not is_switch(s):
                raise TopologyError(f"{where}: switch name {s!r} must be s<N> (s1, s2, ...)")
        for h in self.hosts:
            if not is_host(h):
                raise TopologyError(f"{where}: host name {h!r} must be h<N> (h1, h2, ...)")
        names = set(self.switches) | set(self.hosts)
        if len(names) != len(self.switches) + len(self.hosts):
            raise TopologyError(f"{where}: duplicate node names")
        seen = set()
        for i, ln in enumerate(self.links):
            lw = f"{where}: link {i} ({ln.a}-{ln.b})"
            for end in (ln.a, ln.b):
                if end not in names:
                    raise TopologyError(f"{lw}: unknown node {end!r}")
            if ln.a == ln.b:
                raise TopologyError(f"{lw}: a link cannot join a node to itself")
            key = frozenset((ln.a, ln.b))
            if key in seen:
                raise TopologyError(f"{lw}: duplicate link")
            seen.add(key)
            if is_host(ln.a) and is_host(ln.b):
                raise TopologyError(f"{lw}: hosts must attach to switches, not to each other")
            if ln.bw_mbit is not None and not ln.bw_mbit > 0:
                raise TopologyError(f"{lw}: bw must be > 0 Mbit/s, got {ln.bw_mbit}")
            if ln.delay_ms is not None and ln.delay_ms < 0:
                raise TopologyError(f"{lw}: delay must be >= 0 ms, got {ln.delay_ms}")
            if ln.loss_pct is not None and not 0 <= ln.loss_pct <= 100:
                raise TopologyError(f"{lw}: loss must be in 0..100 %, got {ln.loss_pct}")
            if ln.backend not in LINK_BACKENDS:
                raise TopologyError(f"{lw}: backend must be one of {', '.join(b for b in LINK_BACKENDS if b)}, "
                                    f"got {ln.backend!r}")
        degree: dict[str, int] = {}
        for ln in self.links:
            degree[ln.a] = degree.get(ln.a, 0) + 1
            degree[ln.b] = degree.get(ln.b, 0) + 1
        for h in self.hosts:
            n = degree.get(h, 0)
            if n != 1:
                raise TopologyError(f"{where}: host {h!r} has {n} links; a host needs exactly one")
        sg = self.graph().subgraph(self.switches)
        if not nx.is_connected(sg):
            raise TopologyError(f"{where}: the switches do not form one connected network")
        return self


def attach_hosts(name: str, switch_graph: nx.Graph, hosts_per_switch: int = 1,
                 source: str = "", labels=None, positions=None,
                 edge_params=None) -> Topology:
    """Turn a graph of switches (any node ids) into a Topology with ``sN``
    names (in sorted node order) and ``hosts_per_switch`` hosts on each switch.

    ``edge_params(u, v, data) -> dict`` may give Link fields (bw_mbit, delay_ms,
    loss_pct) for a switch-switch edge.
    """
    if hosts_per_switch < 0:
        raise TopologyError(f"hosts_per_switch must be >= 0, got {hosts_per_switch}")
    order = sorted(switch_graph.nodes, key=lambda n: (str(type(n)), n))
    sname = {n: f"s{i + 1}" for i, n in enumerate(order)}
    switches = [sname[n] for n in order]
    links: list[Link] = []
    for u, v, d in sorted(switch_graph.edges(data=True),
                          key=lambda e: (order.index(e[0]), order.index(e[1]))):
        if u == v:
            continue
        params = edge_params(u, v, d) if edge_params else {}
        links.append(Link(sname[u], sname[v], **params))
    hosts: list[str] = []
    k = 0
    for s in switches:
        for _ in range(hosts_per_switch):
            k += 1
            hosts.append(f"h{k}")
            links.append(Link(f"h{k}", s))
    lab = {sname[n]: str(v) for n, v in (labels or {}).items() if n in sname}
    pos = {sname[n]: tuple(v) for n, v in (positions or {}).items() if n in sname}
    return Topology(name=name, switches=switches, hosts=hosts, links=links,
                    labels=lab, positions=pos, source=source)
