"""Text summary and PNG drawing of a Topology."""
from __future__ import annotations

import math
from statistics import mean

import networkx as nx
# Figure + Agg canvas directly: no pyplot, so no global backend/GUI state
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from .model import Topology

MAX_LABELS = 60


def _fmt(x) -> str:
    return "-" if x is None else f"{x:g}"


def describe(topo: Topology) -> str:
    """Name, source, counts, switch degrees and a table of links."""
    sg = topo.graph().subgraph(topo.switches)
    deg = [d for _, d in sg.degree()] or [0]
    lines = [
        f"name:     {topo.name}",
        f"source:   {topo.source or '-'}",
        f"switches: {len(topo.switches)}  hosts: {len(topo.hosts)}  links: {len(topo.links)} "
        f"({len(topo.switch_links())} switch-switch)",
        f"switch degree (switch-switch links): min {min(deg)}  mean {mean(deg):.2f}  max {max(deg)}",
        "",
    ]
    def node(n):
        return f"{n} ({topo.labels[n]})" if n in topo.labels else n
    rows = [(node(ln.a), node(ln.b), _fmt(ln.bw_mbit), _fmt(ln.delay_ms), _fmt(ln.loss_pct))
            for ln in topo.links]
    head = ("a", "b", "bw_Mbit/s", "delay_ms", "loss_%")
    width = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, width))).rstrip())
    return "\n".join(lines)


def _layout(topo: Topology) -> dict[str, tuple[float, float]]:
    if not all(s in topo.positions for s in topo.switches):
        return {n: tuple(p) for n, p in nx.spring_layout(topo.graph(), seed=0).items()}
    pos = {s: topo.positions[s] for s in topo.switches}
    xs, ys = zip(*pos.values())
    r = 0.03 * (max(max(xs) - min(xs), max(ys) - min(ys)) or 1.0)
    # hosts sit on a small circle around their switch (they have no coordinates of their own)
    around: dict[str, list[str]] = {}
    hosts = set(topo.hosts)
    for ln in topo.links:  # one pass; host_switch() per host is quadratic on big maps
        for h, s in ((ln.a, ln.b), (ln.b, ln.a)):
            if h in hosts:
                around.setdefault(s, []).append(h)
    for s, hs in around.items():
        for i, h in enumerate(hs):
            a = 2 * math.pi * i / len(hs) - math.pi / 2
            pos[h] = (pos[s][0] + r * math.cos(a), pos[s][1] + r * math.sin(a))
    return pos


def draw_png(topo: Topology, path) -> None:
    """Write a PNG of the topology: switches blue squares, hosts orange dots."""
    pos = _layout(topo)
    fig = Figure(figsize=(10, 8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.add_collection(LineCollection([(pos[ln.a], pos[ln.b]) for ln in topo.links],
                                     colors="0.6", linewidths=0.8, zorder=1))
    for nodes, style in ((topo.switches, dict(marker="s", color="tab:blue", s=60, label="switch")),
                         (topo.hosts, dict(marker="o", color="tab:orange", s=25, label="host"))):
        if nodes:
            ax.scatter([pos[n][0] for n in nodes], [pos[n][1] for n in nodes], zorder=2, **style)
    named = topo.switches + topo.hosts
    if len(named) > MAX_LABELS:
        named = topo.switches if len(topo.switches) <= MAX_LABELS else []
    for n in named:
        text = f"{n}\n{topo.labels[n]}" if n in topo.labels else n
        ax.annotate(text, pos[n], fontsize=7, xytext=(4, 4), textcoords="offset points", zorder=3)
    ax.set_title(f"{topo.name}  ({len(topo.switches)} switches, {len(topo.hosts)} hosts)")
    ax.legend(loc="best", fontsize=8)
    ax.autoscale()
    ax.set_aspect("equal" if topo.positions else "auto", adjustable="datalim")
    ax.axis("off")
    fig.savefig(path, format="png", bbox_inches="tight")
