"""Unit tests for testbed.mapsview: drawing DCC maps snapshots over a topology, loading them."""
import json
from dataclasses import replace

import pytest

from controllers.maps import LinkInfo, NetworkMaps
from testbed.mapsview import draw_maps, load_snapshot
from topologies import by_name

PNG = b"\x89PNG\r\n\x1a\n"


def links_of(topo):
    """LinkInfo for a topology, numbering each switch's ports in link order (as Mininet does)."""
    next_port: dict[str, int] = {}

    def port(n):
        if not n.startswith("s"):
            return None
        next_port[n] = next_port.get(n, 0) + 1
        return next_port[n]

    return [LinkInfo(ln.a, port(ln.a), ln.b, port(ln.b), ln.bw_mbit, ln.delay_ms) for ln in topo.links]


def full_snapshot(topo):
    m = NetworkMaps(report_interval_s=1.0)
    infos = links_of(topo)
    m.set_links(infos)
    m.node_report("h1", 9.0, roles=["data", "mpvu"], samples=600, label_hist=[100, 0, 300, 200])
    m.node_report("h2", 9.5, roles=["compute", "client"], capacity=4.0, load=0.5)
    m.node_report("h3", 9.0, roles=["inference"], models=[1, 2])
    m.node_report("h4", 5.0, roles=["data"], samples=50, label_hist=[50])  # down by t=10
    for i in infos:
        end = (i.a, i.a_port) if i.a_port is not None else (i.b, i.b_port)
        m.port_stats(*end, 9.0, rx_bytes=0, tx_bytes=0)
        m.port_stats(*end, 10.0, rx_bytes=1_000_000, tx_bytes=4_000_000)
    m.link_state("s1", "s2", False, 10.0, cause="test")
    m.tick(10.0)
    return m.snapshot(10.0)


def test_draw_full_snapshot_writes_png(tmp_path):
    topo = by_name("linear:n=4").with_link_values(bw_mbit=100)
    topo.links[-1] = replace(topo.links[-1], bw_mbit=10.0)  # mixed widths
    snap = full_snapshot(topo)
    out = draw_maps(json.loads(json.dumps(snap)), topo, tmp_path / "maps.png", title="four in a row")
    assert out == tmp_path / "maps.png"
    data = out.read_bytes()
    assert data.startswith(PNG) and len(data) > 10_000


@pytest.mark.parametrize("snap", [
    {},
    {"t": 1.0, "drrt": {}, "qrrt": {}, "nodes": {}},
    {"t": 2.0, "nodes": {"h2": {"roles": ["data"], "status": "fresh"}},
     "drrt": {"knowledge": {"h2": {"samples": 10, "label_hist": [0, 10]}},
              "resources": {"links": [{"a": "s1", "b": "s2", "up": False},  # partial row
                                      {"a": "s9", "b": "h9", "up": True}]}}},  # not in the topology
], ids=["empty", "no-entries", "partial"])
def test_draw_partial_snapshot(tmp_path, snap):
    topo = by_name("ring:n=3")
    out = draw_maps(snap, topo, tmp_path / "sub" / "p.png")
    assert out.read_bytes().startswith(PNG)


def test_draw_topology_with_positions(tmp_path):
    topo = by_name("tree:depth=2,fanout=2")
    topo.positions = {s: (float(i), float(i % 2)) for i, s in enumerate(topo.switches)}
    out = draw_maps(full_snapshot(topo), topo, tmp_path / "geo.png")
    assert out.stat().st_size > 0


def test_load_snapshot_plain_or_inside_a_state_file(tmp_path):
    snap = {"t": 1.0, "drrt": {}, "qrrt": {}, "nodes": {}}
    (tmp_path / "a.json").write_text(json.dumps(snap))
    (tmp_path / "state.json").write_text(json.dumps({"pid": 1, "maps": snap}))
    (tmp_path / "other.json").write_text(json.dumps({"pid": 1}))
    assert load_snapshot(tmp_path / "a.json") == snap
    assert load_snapshot(str(tmp_path / "state.json")) == snap
    (tmp_path / "empty.json").write_text("{}")
    assert load_snapshot(tmp_path / "empty.json") == {}  # a DCC with no maps yet
    with pytest.raises(ValueError, match="no maps snapshot.*found: pid"):
        load_snapshot(tmp_path / "other.json")
    with pytest.raises(ValueError, match="does not exist"):
        load_snapshot(tmp_path / "missing.json")
