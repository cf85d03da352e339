"""Unit tests for the topologies package: generators, topohub zoo, YAML files, resolve, drawing."""
import networkx as nx
import pytest

from topologies import REPO_ROOT, TopologyError, by_name, list_all, resolve
from topologies import generators as gen
from topologies import zoo
from topologies.draw import describe, draw_png
from topologies.model import is_host, is_switch
from topologies.yamlfile import load_yaml


def counts(t):
    return len(t.switches), len(t.hosts), len(t.links)


def switch_graph(t):
    return t.graph().subgraph(t.switches)


# --- generators ---------------------------------------------------------------

def test_linear_counts_and_chain():
    t = gen.linear(4, hosts_per_switch=2).validate()
    assert counts(t) == (4, 8, 3 + 8)
    assert sorted(d for _, d in switch_graph(t).degree()) == [1, 1, 2, 2]
    assert t.source == "generator:linear(n=4, hosts_per_switch=2)"


def test_tree_is_mininet_treetopo():
    t = gen.tree(2, 2).validate()
    assert counts(t) == (3, 4, 6)
    # hosts only on leaves; root s1 carries none (depth-first numbering as in Mininet)
    assert {t.host_switch(h) for h in t.hosts} == {"s2", "s3"}
    assert [t.host_switch(h) for h in t.hosts] == ["s2", "s2", "s3", "s3"]
    assert counts(gen.tree(3, 3).validate()) == (13, 27, 12 + 27)
    assert counts(gen.tree(1, 4).validate()) == (1, 4, 4)


def test_ring_counts_and_degree():
    t = gen.ring(5).validate()
    assert counts(t) == (5, 5, 10)
    assert all(d == 2 for _, d in switch_graph(t).degree())


def test_fattree_k4():
    t = gen.fattree(4).validate()
    assert counts(t) == (20, 16, 48)
    sg = switch_graph(t)
    core = [s for s in t.switches if t.labels[s].startswith("core")]
    edge = [s for s in t.switches if "edge" in t.labels[s]]
    assert len(core) == 4 and len(edge) == 8
    assert all(sg.degree(c) == 4 for c in core)  # one link into every pod
    assert sorted({t.host_switch(h) for h in t.hosts}) == sorted(edge)
    assert t.source == "generator:fattree(k=4)"


def test_fattree_k6_counts():
    assert counts(gen.fattree(6)) == (45, 54, 54 * 3)


@pytest.mark.parametrize("k", [3, 0, -2, 4.0, "4", True])
def test_fattree_rejects_bad_k(k):
    with pytest.raises(TopologyError, match=r"k must be an even integer >= 2, got"):
        gen.fattree(k)


@pytest.mark.parametrize("call, param", [
    (lambda: gen.linear(0), "n"),
    (lambda: gen.ring(2), "n"),
    (lambda: gen.tree(0, 2), "depth"),
    (lambda: gen.tree(2, 0), "fanout"),
    (lambda: gen.linear(3, hosts_per_switch=-1), "hosts_per_switch"),
    (lambda: gen.waxman(5, alpha=0), "alpha"),
    (lambda: gen.waxman(5, beta=1.5), "beta"),
    (lambda: gen.waxman(5, seed=-1), "seed"),
])
def test_generator_errors_name_param_value_and_range(call, param):
    with pytest.raises(TopologyError) as e:
        call()
    msg = str(e.value)
    assert msg.startswith(f"{param} must be") and "got" in msg and (">" in msg or "in (" in msg)


def test_waxman_deterministic_and_connected():
    a, b = gen.waxman(40, seed=7), gen.waxman(40, seed=7)
    assert a.links == b.links and a.positions == b.positions
    assert a.links != gen.waxman(40, seed=8).links
    for seed in range(10):
        t = gen.waxman(30, alpha=0.05, beta=0.1, seed=seed).validate()  # sparse: needs joining
        assert nx.is_connected(switch_graph(t))
        assert len(t.positions) == 30


# --- zoo (topohub) -------------------------------------------------------------

def test_zoo_names_cover_all_groups():
    names = zoo.names()
    assert len(names) > 500
    for n in ("sndlib/abilene", "topozoo/Abilene", "topozoo/Geant2012", "sndlib/geant", "gabriel/25/0"):
        assert n in names
    assert {n.split("/")[0] for n in names} >= {"sndlib", "topozoo", "caida", "backbone", "gabriel"}


def test_zoo_abilene_delays_plausible():
    t = zoo.load("topozoo/Abilene").validate()
    assert counts(t) == (11, 11, 25)
    assert t.labels["s1"] == "New York"
    lon, lat = t.positions["s1"]
    assert -75 < lon < -73 and 40 < lat < 42
    delays = {frozenset((t.labels[ln.a], t.labels[ln.b])): ln.delay_ms for ln in t.switch_links()}
    assert all(0 < d < 20 for d in delays.values())
    # New York-Chicago is ~1150 km great circle: ~5.7 ms at 2/3 c
    assert delays[frozenset(("New York", "Chicago"))] == pytest.approx(5.73, abs=0.05)
    assert max(delays.values()) > 8  # long western links


def test_zoo_sndlib_abilene_and_geant_load():
    t = zoo.load("sndlib/abilene", hosts_per_switch=2).validate()
    assert len(t.switches) == 12 and len(t.hosts) == 24
    assert all(ln.delay_ms is not None and ln.delay_ms >= 0 for ln in t.switch_links())
    g = zoo.load("topozoo/Geant2012").validate()
    assert len(g.switches) == 37 and g.source == "topohub:topozoo/Geant2012"
    assert zoo.load("sndlib/geant").validate().switch_links()


def test_zoo_slower_light_means_longer_delay():
    fast = zoo.load("topozoo/Abilene", speed_of_light_fraction=1.0).switch_links()
    slow = zoo.load("topozoo/Abilene").switch_links()
    assert slow[0].delay_ms == pytest.approx(fast[0].delay_ms * 1.5, rel=1e-3)


def test_zoo_unknown_name_suggests():
    with pytest.raises(TopologyError) as e:
        zoo.load("abilene")
    msg = str(e.value)
    assert "sndlib/abilene" in msg and "topozoo/Abilene" in msg and "daitn topo list" in msg


def test_haversine_known_distance():
    # Paris - London ~ 344 km
    assert zoo.haversine_km((2.35, 48.86), (-0.13, 51.51)) == pytest.approx(344, abs=5)


# --- YAML ----------------------------------------------------------------------

def test_shipped_yaml_files():
    t = load_yaml(REPO_ROOT / "topologies/two_switch.yaml")
    assert counts(t) == (2, 2, 3) and t.name == "two_switch"
    (sl,) = t.switch_links()
    assert sl.bw_mbit == 10
    tri = load_yaml(REPO_ROOT / "topologies/triangle.yaml")
    assert counts(tri) == (3, 3, 6)
    assert nx.cycle_basis(switch_graph(tri))


def write(tmp_path, text):
    p = tmp_path / "t.yaml"
    p.write_text(text)
    return p


GOOD = "switches: [s1, s2]\nhosts: [h1]\nlinks:\n  - {a: h1, b: s1}\n"


def test_yaml_link_params(tmp_path):
    t = load_yaml(write(tmp_path, GOOD + "  - {a: s1, b: s2, bw: 5, delay: 2.5, loss: 1}\n"))
    ln = t.switch_links()[0]
    assert (ln.bw_mbit, ln.delay_ms, ln.loss_pct) == (5, 2.5, 1)
    assert t.name == "t"  # defaults to the file stem


def test_yaml_unknown_top_key(tmp_path):
    p = write(tmp_path, GOOD + "  - {a: s1, b: s2}\ncolour: red\n")
    with pytest.raises(TopologyError, match="colour") as e:
        load_yaml(p)
    assert str(p) in str(e.value)


def test_yaml_unknown_link_key(tmp_path):
    p = write(tmp_path, GOOD + "  - {a: s1, b: s2, bandwidth: 5}\n")
    with pytest.raises(TopologyError, match=r"link 1: unknown key 'bandwidth'") as e:
        load_yaml(p)
    assert str(p) in str(e.value)


def test_yaml_wrong_type_names_link_and_field(tmp_path):
    p = write(tmp_path, GOOD + "  - {a: s1, b: s2, delay: fast}\n")
    with pytest.raises(TopologyError, match=r"link 1 field 'delay' must be a number"):
        load_yaml(p)


def test_yaml_negative_bw(tmp_path):
    p = write(tmp_path, GOOD + "  - {a: s1, b: s2, bw: -5}\n")
    with pytest.raises(TopologyError, match=r"bw must be > 0") as e:
        load_yaml(p)
    assert str(p) in str(e.value)


def test_yaml_missing_file():
    with pytest.raises(TopologyError, match="cannot read"):
        load_yaml("/nonexistent/x.yaml")


# --- resolve / list_all / by_name ------------------------------------------------

def test_resolve_each_kind(tmp_path):
    assert counts(resolve({"generator": "fattree", "params": {"k": 4}})) == (20, 16, 48)
    assert len(resolve({"zoo": "sndlib/abilene", "hosts_per_switch": 1}).switches) == 12
    # relative to base_dir first, then the repo root
    assert resolve({"file": "topologies/two_switch.yaml"}, base_dir=tmp_path).name == "two_switch"
    write(tmp_path, GOOD + "  - {a: s1, b: s2}\n")
    assert resolve({"file": "t.yaml"}, base_dir=tmp_path).name == "t"


@pytest.mark.parametrize("ref, match", [
    ({}, "exactly one of generator, zoo, file"),
    ({"generator": "ring", "zoo": "sndlib/abilene"}, "exactly one"),
    ({"generator": "ring", "params": {"n": 3}, "colour": 1}, "colour"),
    ({"file": "topologies/two_switch.yaml", "params": {}}, "params"),
    ({"generator": "fatree"}, r"unknown generator 'fatree'.*fattree"),
    ({"generator": "fattree", "params": {"kk": 4}}, r"no parameter 'kk'"),
    ({"generator": "fattree", "params": {}}, r"needs parameter 'k'"),
    ({"generator": "fattree", "params": {"k": "four"}}, r"^k must be"),
    ({"zoo": "nope/nothing"}, "daitn topo list"),
    ({"file": "does/not/exist.yaml"}, "not found"),
])
def test_resolve_errors(ref, match):
    with pytest.raises(TopologyError, match=match):
        resolve(ref)


def test_list_all_kinds():
    items = list_all()
    kinds = {k for _, k in items}
    assert kinds == {"generator", "file", "zoo"}
    assert ("fattree", "generator") in items
    assert ("topologies/two_switch.yaml", "file") in items
    assert ("sndlib/abilene", "zoo") in items


def test_by_name_forms():
    assert counts(by_name("fattree:k=4")) == (20, 16, 48)
    assert counts(by_name("linear:n=3")) == (3, 3, 5)
    w = by_name("waxman:n=12, seed=3, alpha=0.5")
    assert w.source.startswith("generator:waxman(n=12, alpha=0.5")
    assert by_name("topozoo/Geant2012").name == "topozoo/Geant2012"
    assert by_name("topologies/triangle.yaml").name == "triangle"
    with pytest.raises(TopologyError, match="topozoo/Abilene"):
        by_name("Abilen")


# --- describe / draw ----------------------------------------------------------------

def test_describe_summary():
    text = describe(load_yaml(REPO_ROOT / "topologies/two_switch.yaml"))
    assert "two_switch" in text and "switches: 2  hosts: 2  links: 3" in text
    assert "min 1  mean 1.00  max 1" in text
    row = next(line for line in text.splitlines() if line.startswith("s1"))
    assert row.split() == ["s1", "s2", "10", "-", "-"]


@pytest.mark.parametrize("topo", [gen.fattree(4), zoo.load("topozoo/Abilene")], ids=["spring", "geo"])
def test_draw_png(tmp_path, topo):
    out = tmp_path / "t.png"
    draw_png(topo, out)
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000


def test_names_are_mininet_style():
    for t in (gen.fattree(2), gen.waxman(5), zoo.load("gabriel/25/0")):
        assert all(map(is_switch, t.switches)) and all(map(is_host, t.hosts))
