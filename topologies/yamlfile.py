"""Custom topologies from YAML files (switches, hosts, links with bw/delay/loss).

Format (``name``, ``hosts``, ``labels`` and ``positions`` are optional)::

    name: mytopo
    switches: [s1, s2]
    hosts: [h1, h2]
    links:
      - {a: h1, b: s1}
      - {a: s1, b: s2, bw: 10, delay: 5, loss: 1}   # bw Mbit/s, delay ms, loss %
      - {a: s2, b: s3, delay: 10, backend: ns3}      # emulated by ns-3 (or tc); default: links.backend
    labels: {s1: Berlin}
    positions: {s1: [13.4, 52.5]}
"""
from __future__ import annotations

from pathlib import Path

import yaml

from .model import Link, Topology, TopologyError

TOP_KEYS = {"name", "switches", "hosts", "links", "labels", "positions"}
LINK_KEYS = {"a": "a", "b": "b", "bw": "bw_mbit", "delay": "delay_ms", "loss": "loss_pct",
             "backend": "backend"}


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def load_yaml(path) -> Topology:
    """Read and validate a topology file; errors name the file and the culprit."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as e:
        raise TopologyError(f"{path}: cannot read topology file ({e.strerror})") from e
    except yaml.YAMLError as e:
        raise TopologyError(f"{path}: not valid YAML: {e}") from e

    def fail(msg: str):
        raise TopologyError(f"{path}: {msg}")

    if not isinstance(doc, dict):
        fail("expected a mapping with keys switches, hosts, links")
    for key in doc:
        if key not in TOP_KEYS:
            fail(f"unknown key {key!r} (allowed: {', '.join(sorted(TOP_KEYS))})")
    for key in ("switches", "links"):
        if key not in doc:
            fail(f"missing key {key!r}")
    name = doc.get("name", path.stem)
    if not isinstance(name, str):
        fail(f"'name' must be a string, got {name!r}")
    nodes = {}
    for key in ("switches", "hosts"):
        val = doc.get(key) or []
        if not isinstance(val, list) or not all(isinstance(x, str) for x in val):
            fail(f"{key!r} must be a list of names, got {val!r}")
        nodes[key] = val
    if not isinstance(doc["links"], list):
        fail(f"'links' must be a list, got {doc['links']!r}")
    links = []
    for i, ln in enumerate(doc["links"]):
        if not isinstance(ln, dict):
            fail(f"link {i} must be a mapping like {{a: s1, b: s2}}, got {ln!r}")
        for key in ln:
            if key not in LINK_KEYS:
                fail(f"link {i}: unknown key {key!r} (allowed: {', '.join(LINK_KEYS)})")
        for key in ("a", "b"):
            if not isinstance(ln.get(key), str):
                fail(f"link {i} field {key!r} must be a node name, got {ln.get(key)!r}")
        for key in ("bw", "delay", "loss"):
            if key in ln and not _number(ln[key]):
                fail(f"link {i} field {key!r} must be a number, got {ln[key]!r}")
        if "backend" in ln and ln["backend"] not in ("tc", "ns3"):
            fail(f"link {i} field 'backend' must be tc or ns3, got {ln['backend']!r}")
        links.append(Link(**{LINK_KEYS[k]: v if k in ("a", "b", "backend") else float(v)
                             for k, v in ln.items()}))
    labels = doc.get("labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        fail(f"'labels' must map node names to strings, got {labels!r}")
    positions = doc.get("positions") or {}
    if not isinstance(positions, dict) or not all(
            isinstance(p, list) and len(p) == 2 and all(map(_number, p)) for p in positions.values()):
        fail(f"'positions' must map node names to [x, y], got {positions!r}")
    known = set(nodes["switches"]) | set(nodes["hosts"])
    for key, mapping in (("labels", labels), ("positions", positions)):
        for node in mapping:
            if node not in known:
                fail(f"{key!r} names unknown node {node!r}")
    topo = Topology(name=name, switches=nodes["switches"], hosts=nodes["hosts"], links=links,
                    labels=dict(labels), source=str(path),
                    positions={k: (float(p[0]), float(p[1])) for k, p in positions.items()})
    try:
        return topo.validate()
    except TopologyError as e:
        raise TopologyError(f"{path}: {e}") from e
