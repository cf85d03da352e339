"""PNG of the DCC's maps (a :mod:`controllers.maps` snapshot) drawn over the topology.

Reading the picture:

- Switches are dark squares. Hosts are circles coloured by role: data green, MPVU purple,
  inference blue, compute orange, client red; a host that has not reported is white.
  A host with several roles is drawn as concentric rings, outermost = its first role in
  the order data, mpvu, inference, compute, client (so a data+MPVU node is a green ring
  around a purple core).
- Circle area grows with the training samples the host holds (sqrt scale, relative to the
  largest holder); the label gives the name, samples, the three most held labels
  (``top 3,7,1``) and, for inference nodes, the models served.
- Down or expired hosts are grey with a black cross; stale ones are drawn faded.
- Links are coloured by utilisation of their busier direction (colour bar; grey: not
  measured yet); width grows with log capacity (thin: unknown); down links are dashed.

Only the snapshot dict is read, never a live controller, so plots can be made from a
finished run directory. Missing nodes or links (not yet reported) are drawn as unknown.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from topologies.draw import MAX_LABELS, _layout
from topologies.model import Topology

__all__ = ["draw_maps", "load_snapshot", "ROLE_COLOURS"]

ROLE_ORDER = ("data", "mpvu", "inference", "compute", "client")
ROLE_COLOURS = {"data": "tab:green", "mpvu": "tab:purple", "inference": "tab:blue",
                "compute": "tab:orange", "client": "tab:red"}
SWITCH_COLOUR = "0.3"
DOWN_COLOUR = "0.72"
UNMEASURED_COLOUR = "0.75"
UTIL_CMAP = "plasma"
BASE_SIZE, SAMPLES_SIZE = 80.0, 350.0  # scatter area, pt^2


def load_snapshot(path: str | Path) -> dict:
    """A maps snapshot from a JSON file: the snapshot itself (``{}`` allowed: no maps yet), or
    a DCC state file holding it under ``"maps"``. Raises ValueError naming the file."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise ValueError(f"maps snapshot {str(p)!r} does not exist") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"maps snapshot {str(p)!r} is not JSON: {e}") from None
    if data == {} or isinstance(data, dict) and "drrt" in data:
        return data  # {}: a DCC that had no maps yet; draw_maps shows everything unknown
    if isinstance(data, dict) and isinstance(data.get("maps"), dict) and "drrt" in data["maps"]:
        return data["maps"]
    keys = ", ".join(sorted(data)) if isinstance(data, dict) else type(data).__name__
    raise ValueError(f"{str(p)!r} holds no maps snapshot (no 'drrt' key, nor 'maps' with one); "
                     f"found: {keys}")


def _top_labels(hist: list, n: int = 3) -> list[int]:
    held = sorted((c, -i) for i, c in enumerate(hist or []) if c and c > 0)
    return [-i for _, i in reversed(held[-n:])]


def _util(row: dict) -> float | None:
    vals = [(row.get(d) or {}).get("utilisation") for d in ("a_to_b", "b_to_a")]
    vals = [v for v in vals if v is not None]
    return max(vals) if vals else None


def _width(cap: float | None, max_cap: float) -> float:
    if not cap or max_cap <= 0:
        return 0.8
    return 1.2 + 3.3 * math.log1p(cap) / math.log1p(max_cap)


def draw_maps(snapshot: dict, topo: Topology, path: str | Path, title: str = "",
              overlay=None) -> Path:
    """Write a PNG of ``snapshot`` over ``topo`` to ``path`` and return the path.

    ``overlay(ax, pos)``, if given, draws on top before the PNG is written (``pos``: node ->
    (x, y) as drawn); `daitn compare` and `daitn report` draw a model's route with it."""
    path = Path(path)
    snapshot = snapshot or {}
    drrt, qrrt = snapshot.get("drrt") or {}, snapshot.get("qrrt") or {}
    nodes = snapshot.get("nodes") or {}
    knowledge = drrt.get("knowledge") or {}
    models = qrrt.get("knowledge") or {}
    rows = {frozenset((r["a"], r["b"])): r
            for r in (drrt.get("resources") or {}).get("links") or [] if "a" in r and "b" in r}
    pos = _layout(topo)

    fig = Figure(figsize=(11, 8.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps[UTIL_CMAP]
    norm = Normalize(0.0, 1.0)

    # ---- links: configured ones, plus any the DCC found that the topology lacks
    segs = {True: [], False: []}
    style = {True: ([], []), False: ([], [])}  # up? -> (colours, widths)
    caps = [r.get("capacity_mbps") for r in rows.values()] + [ln.bw_mbit for ln in topo.links]
    max_cap = max([c for c in caps if c] or [0.0])
    pairs = [(ln.a, ln.b, ln.bw_mbit) for ln in topo.links]
    known = {frozenset(p[:2]) for p in pairs}
    pairs += [(r["a"], r["b"], None) for k, r in rows.items() if k not in known]
    for a, b, bw in pairs:
        if a not in pos or b not in pos:
            continue
        row = rows.get(frozenset((a, b)))
        cap = row.get("capacity_mbps") if row else bw
        up = row.get("up", True) if row else True
        u = _util(row) if row else None
        colour = DOWN_COLOUR if not up else (UNMEASURED_COLOUR if u is None else cmap(norm(min(u, 1.0))))
        segs[up].append((pos[a], pos[b]))
        style[up][0].append(colour)
        style[up][1].append(_width(cap, max_cap))
    for up in (True, False):
        if segs[up]:
            ax.add_collection(LineCollection(segs[up], colors=style[up][0], linewidths=style[up][1],
                                             linestyles="solid" if up else (0, (4, 3)), zorder=1))

    # ---- nodes
    ax.scatter([pos[s][0] for s in topo.switches], [pos[s][1] for s in topo.switches],
               marker="s", s=70, color=SWITCH_COLOUR, edgecolors="white", linewidths=0.5, zorder=2)
    max_samples = max([k.get("samples") or 0 for k in knowledge.values()] or [0])
    label_hosts = len(topo.hosts) <= MAX_LABELS
    for h in topo.hosts:
        info = nodes.get(h) or {}
        k = knowledge.get(h) or {}
        status = info.get("status")
        roles = [r for r in ROLE_ORDER if r in (info.get("roles") or k.get("roles") or [])]
        samples = k.get("samples") or 0
        size = BASE_SIZE + (SAMPLES_SIZE * math.sqrt(samples / max_samples) if max_samples else 0.0)
        x, y = pos[h]
        gone = status in ("down", "expired")
        alpha = 0.45 if status == "stale" else 1.0
        if not roles:
            ax.scatter([x], [y], s=size, color="white", edgecolors="0.4", linewidths=0.8, zorder=3)
        for i, role in enumerate(roles):  # outer to inner: ring widths shrink evenly
            frac = (len(roles) - i) / len(roles)
            ax.scatter([x], [y], s=size * frac * frac, alpha=alpha, zorder=3 + i,
                       color=DOWN_COLOUR if gone else ROLE_COLOURS[role],
                       edgecolors="white" if i else "0.2", linewidths=0.6)
        if gone:
            ax.scatter([x], [y], marker="x", s=size * 0.6, color="black", linewidths=1.5, zorder=9)
        if label_hosts:
            text = [h]
            if samples:
                text.append(f"{samples} smp")
            top = _top_labels(k.get("label_hist"))
            if top:
                text.append("top " + ",".join(map(str, top)))
            served = (models.get(h) or {}).get("models")
            if served:
                text.append("m " + ",".join(map(str, served)))
            if status in ("stale", "down", "expired"):
                text.append(f"({status})")
            ax.annotate("\n".join(text), (x, y), fontsize=6.5, xytext=(5, 4),
                        textcoords="offset points", zorder=10)
    if len(topo.switches) + len(topo.hosts) <= MAX_LABELS:
        for s in topo.switches:
            ax.annotate(s, pos[s], fontsize=7, color=SWITCH_COLOUR, xytext=(-4, -10),
                        textcoords="offset points", zorder=10)

    # ---- colour bar, legend, title
    sm = ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=ax, shrink=0.6, pad=0.02, extend="max",
                 label="link utilisation, busier direction (grey: not measured)")
    handles = [Line2D([], [], ls="", marker="o", ms=8, mfc=ROLE_COLOURS[r], mec="0.2", label=r)
               for r in ROLE_ORDER]
    handles += [
        Line2D([], [], ls="", marker="s", ms=7, mfc=SWITCH_COLOUR, mec="white", label="switch"),
        Line2D([], [], ls="", marker="o", ms=8, mfc="white", mec="0.4", label="not reported"),
        Line2D([], [], ls="", marker="X", ms=9, mfc="black", mec=DOWN_COLOUR, label="down / expired"),
        (Line2D([], [], ls="", marker="o", ms=11, mfc=ROLE_COLOURS["data"], mec="0.2"),
         Line2D([], [], ls="", marker="o", ms=5.5, mfc=ROLE_COLOURS["mpvu"], mec="white")),
        Line2D([], [], color="0.3", lw=3, label="link width: log capacity"),
        Line2D([], [], color=DOWN_COLOUR, lw=1.5, ls=(0, (4, 3)), label="link down"),
    ]
    labels = [h.get_label() for h in handles[:-3]] + [
        "several roles: rings, outer = first of " + ", ".join(ROLE_ORDER)] + [
        h.get_label() for h in handles[-2:]]
    ax.legend(handles=handles, labels=labels, loc="upper center", bbox_to_anchor=(0.5, -0.01),
              ncol=3, fontsize=7.5, frameon=False)
    statuses = [n.get("status") for n in nodes.values()]
    reach = drrt.get("reachability") or {}
    counts = "  ".join(f"{s} {statuses.count(s)}" for s in ("fresh", "stale", "down", "expired")
                       if statuses.count(s))
    t = snapshot.get("t")
    sub = (f"{len(nodes)} nodes reported ({counts or 'none'}); links up {reach.get('up_links', '?')}, "
           f"down {len(reach.get('down_links') or [])}")
    head = title or f"{topo.name}: DCC maps (DRRT/QRRT)" + (f" at t={t:.1f} s" if t is not None else "")
    ax.set_title(f"{head}\n{sub}", fontsize=10)
    if overlay is not None:
        overlay(ax, pos)
    ax.autoscale()
    ax.margins(0.08)
    ax.set_aspect("equal" if topo.positions else "auto", adjustable="datalim")
    ax.axis("off")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight")
    return path
