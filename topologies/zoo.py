"""Every topology shipped (offline) by the ``topohub`` package, by topohub's own key.

Names are topohub keys ``group/name``:

* ``topozoo/<Name>`` - Internet Topology Zoo, e.g. ``topozoo/Abilene``, ``topozoo/Geant2012``
* ``sndlib/<name>`` - SNDlib, e.g. ``sndlib/abilene``, ``sndlib/geant``
* ``caida/<yyyy-mm>/<ASN>`` - CAIDA ITDK router-level maps, e.g. ``caida/2024-08/1103``
* ``backbone/<region>`` - submarine + terrestrial backbones, e.g. ``backbone/europe``
  (``_nosc`` variants leave out submarine-cable waypoints)
* ``gabriel/<nodes>/<seed>`` - synthetic planar Gabriel graphs, e.g. ``gabriel/25/0``

Link delay is propagation in fibre: great-circle distance between the node
coordinates (lon, lat) divided by a fraction of c. Gabriel graphs have planar
coordinates, read as km, so their delay uses the straight-line distance.
"""
from __future__ import annotations

import difflib
import functools
import importlib.resources
import math
import re

import networkx as nx
import topohub

from .model import Topology, TopologyError, attach_hosts

C_KM_PER_MS = 299_792.458 / 1000  # speed of light in vacuum
EARTH_RADIUS_KM = 6371.0


def _natural(key: str):
    # gabriel/25 before gabriel/100
    return [(0, int(t), "") if t.isdigit() else (1, 0, t.lower()) for t in re.split(r"(\d+)", key)]


@functools.lru_cache(maxsize=1)
def _names() -> tuple[str, ...]:
    found: list[str] = []

    def walk(d, prefix: str) -> None:
        for p in d.iterdir():
            if p.is_dir() and not p.name.startswith("_"):
                walk(p, f"{prefix}{p.name}/")
            elif p.name.endswith(".json"):
                found.append(prefix + p.name[:-5])

    walk(importlib.resources.files(topohub) / "data", "")
    return tuple(sorted(found, key=_natural))


def names() -> list[str]:
    """All topohub keys, naturally sorted (the directory scan is cached)."""
    return list(_names())


def suggest(name: str, candidates, n: int = 5) -> list[str]:
    """Up to ``n`` candidates close to ``name``: substring hits first, then difflib."""
    low = name.lower()
    by_low = {c.lower(): c for c in candidates}
    hits = [c for c in candidates if low and low in c.lower()]
    hits += [by_low[c] for c in difflib.get_close_matches(low, list(by_low), n=n, cutoff=0.5)]
    return list(dict.fromkeys(hits))[:n]


def haversine_km(p: tuple[float, float], q: tuple[float, float]) -> float:
    """Great-circle distance between two (lon, lat) points in degrees."""
    lon1, lat1, lon2, lat2 = map(math.radians, (*p, *q))
    h = (math.sin((lat2 - lat1) / 2) ** 2
         + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2)
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(min(1.0, h)))


def load(name: str, hosts_per_switch: int = 1, speed_of_light_fraction: float = 2 / 3) -> Topology:
    """Topology ``name`` with ``hosts_per_switch`` hosts per switch and per-link
    propagation delays (ms, 3 decimals); labels are city/router names if known."""
    if name not in _names():
        close = suggest(str(name), _names())
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise TopologyError(f"unknown zoo topology {name!r}.{hint} "
                            f"`daitn topo list` shows all {len(_names())}.")
    f = speed_of_light_fraction
    if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
        raise TopologyError(f"speed_of_light_fraction must be a number in (0, 1], got {f!r}")
    if isinstance(hosts_per_switch, bool) or not isinstance(hosts_per_switch, int):
        raise TopologyError(f"hosts_per_switch must be an integer >= 0, got {hosts_per_switch!r}")
    data = topohub.get(name)
    # topohub ids are ints in some groups and strings in others; file order gives s1..sN
    index = {node["id"]: i for i, node in enumerate(data["nodes"])}
    g = nx.Graph()  # a plain Graph also collapses any multi-edges
    labels, pos = {}, {}
    for node in data["nodes"]:
        i = index[node["id"]]
        g.add_node(i)
        if node.get("name"):
            labels[i] = node["name"]
        if node.get("pos"):
            pos[i] = (float(node["pos"][0]), float(node["pos"][1]))
    for e in data["edges"]:
        g.add_edge(index[e["source"]], index[e["target"]])
    distance = math.dist if name.startswith("gabriel/") else haversine_km

    def params(u, v, _data):
        if u not in pos or v not in pos:
            return {}
        return {"delay_ms": round(distance(pos[u], pos[v]) / (C_KM_PER_MS * f), 3)}

    return attach_hosts(name, g, hosts_per_switch, source=f"topohub:{name}",
                        labels=labels, positions=pos, edge_params=params)
