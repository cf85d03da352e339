"""Parametric topology generators (linear, tree, ring, fat tree, Waxman) returning Topology."""
from __future__ import annotations

import math

import networkx as nx

from .model import Link, Topology, TopologyError, attach_hosts


def _int(param: str, value, lo: int) -> int:
    # bool is an int subclass; "True" switches would be a silent surprise
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise TopologyError(f"{param} must be an integer >= {lo}, got {value!r}")
    return value


def _real(param: str, value, ok, allowed: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
        raise TopologyError(f"{param} must be a number {allowed}, got {value!r}")
    return float(value)


def linear(n: int, hosts_per_switch: int = 1) -> Topology:
    """A chain s1 - s2 - ... - sn (Mininet LinearTopo)."""
    _int("n", n, 1)
    _int("hosts_per_switch", hosts_per_switch, 0)
    return attach_hosts(f"linear-{n}", nx.path_graph(n), hosts_per_switch,
                        source=f"generator:linear(n={n}, hosts_per_switch={hosts_per_switch})")


def ring(n: int, hosts_per_switch: int = 1) -> Topology:
    """A cycle of n switches (n >= 3: fewer would need a self-loop or a double link)."""
    _int("n", n, 3)
    _int("hosts_per_switch", hosts_per_switch, 0)
    return attach_hosts(f"ring-{n}", nx.cycle_graph(n), hosts_per_switch,
                        source=f"generator:ring(n={n}, hosts_per_switch={hosts_per_switch})")


def tree(depth: int, fanout: int, hosts_per_switch: int | None = None) -> Topology:
    """Mininet TreeTopo: a switch tree of ``depth`` levels, ``fanout`` children per
    switch; hosts only on leaf switches, ``fanout`` each unless ``hosts_per_switch``
    is given. Switches and hosts are numbered depth-first, as Mininet does."""
    _int("depth", depth, 1)
    _int("fanout", fanout, 1)
    per_leaf = fanout if hosts_per_switch is None else _int("hosts_per_switch", hosts_per_switch, 0)
    switches: list[str] = []
    hosts: list[str] = []
    links: list[Link] = []

    def add(level: int) -> str:
        s = f"s{len(switches) + 1}"
        switches.append(s)
        if level == depth:
            for _ in range(per_leaf):
                h = f"h{len(hosts) + 1}"
                hosts.append(h)
                links.append(Link(h, s))
        else:
            for _ in range(fanout):
                links.append(Link(s, add(level + 1)))
        return s

    add(1)
    return Topology(name=f"tree-{depth}x{fanout}", switches=switches, hosts=hosts, links=links,
                    source=f"generator:tree(depth={depth}, fanout={fanout}, "
                           f"hosts_per_switch={per_leaf})")


def fattree(k: int) -> Topology:
    """k-ary fat tree: (k/2)^2 core switches; k pods of k/2 aggregation and k/2 edge
    switches; k/2 hosts per edge switch. Numbering: core, then pod by pod (agg, edge)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 2 or k % 2:
        raise TopologyError(f"k must be an even integer >= 2, got {k!r}")
    half = k // 2
    switches: list[str] = []
    labels: dict[str, str] = {}

    def new(label: str) -> str:
        s = f"s{len(switches) + 1}"
        switches.append(s)
        labels[s] = label
        return s

    core = [new(f"core{i}") for i in range(half * half)]
    links: list[Link] = []
    hosts: list[str] = []
    for p in range(k):
        aggs = [new(f"pod{p}-agg{j}") for j in range(half)]
        edges = [new(f"pod{p}-edge{j}") for j in range(half)]
        # aggregation switch j reaches core group j, so every pod reaches every core once
        for j, a in enumerate(aggs):
            links += [Link(a, c) for c in core[j * half:(j + 1) * half]]
        links += [Link(e, a) for e in edges for a in aggs]
        for e in edges:
            for _ in range(half):
                h = f"h{len(hosts) + 1}"
                hosts.append(h)
                links.append(Link(h, e))
    return Topology(name=f"fattree-{k}", switches=switches, hosts=hosts, links=links,
                    labels=labels, source=f"generator:fattree(k={k})")


def waxman(n: int, alpha: float = 0.4, beta: float = 0.2, seed: int = 0,
           hosts_per_switch: int = 1) -> Topology:
    """Waxman random graph in the unit square: edge probability beta*exp(-d/(alpha*L)).
    Disconnected pieces are joined by their closest node pair, so the same seed
    always gives the same connected network. Positions are kept."""
    _int("n", n, 1)
    _real("alpha", alpha, lambda x: x > 0, "> 0")
    _real("beta", beta, lambda x: 0 < x <= 1, "in (0, 1]")
    _int("seed", seed, 0)
    _int("hosts_per_switch", hosts_per_switch, 0)
    g = nx.waxman_graph(n, beta=beta, alpha=alpha, seed=seed)
    pos = nx.get_node_attributes(g, "pos")
    comps = sorted((sorted(c) for c in nx.connected_components(g)), key=lambda c: c[0])
    main = set(comps[0])
    for comp in comps[1:]:
        u, v = min(((u, v) for u in sorted(main) for v in comp),
                   key=lambda e: (math.dist(pos[e[0]], pos[e[1]]), e))
        g.add_edge(u, v)
        main |= set(comp)
    return attach_hosts(f"waxman-{n}-s{seed}", g, hosts_per_switch,
                        source=f"generator:waxman(n={n}, alpha={alpha}, beta={beta}, "
                               f"seed={seed}, hosts_per_switch={hosts_per_switch})",
                        positions=pos)


GENERATORS = {"linear": linear, "ring": ring, "tree": tree, "fattree": fattree, "waxman": waxman}
