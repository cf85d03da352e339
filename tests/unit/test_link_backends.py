"""Which backend emulates each link: links.backend (auto|tc|ns3) and a link's own `backend`."""
import pytest

from testbed.network import link_backends
from topologies.model import Link, Topology, TopologyError
from topologies.yamlfile import load_yaml


def topo(*links):
    return Topology(name="t", switches=["s1", "s2"], hosts=["h1", "h2"],
                    links=[Link("h1", "s1"), *links, Link("h2", "s2")])


def test_auto_uses_ns3_only_for_delay_without_netem():
    t = topo(Link("s1", "s2", bw_mbit=10, delay_ms=5))
    assert link_backends(t, "auto", netem=False) == ["tc", "ns3", "tc"]
    assert link_backends(t, "auto", netem=True) == ["tc", "tc", "tc"]


def test_default_and_per_link_override():
    t = topo(Link("s1", "s2", delay_ms=5, backend="tc"))
    assert link_backends(t, "auto", netem=False) == ["tc", "tc", "tc"]
    assert link_backends(t, "ns3", netem=False) == ["ns3", "tc", "ns3"]
    with pytest.raises(ValueError, match="links.backend"):
        link_backends(t, "netem", netem=False)


def test_yaml_backend_field(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text("switches: [s1, s2]\nhosts: [h1, h2]\nlinks:\n - {a: h1, b: s1}\n"
                 " - {a: s1, b: s2, delay: 10, backend: ns3}\n - {a: h2, b: s2}\n")
    assert [ln.backend for ln in load_yaml(p).links] == [None, "ns3", None]
    p.write_text(p.read_text().replace("backend: ns3", "backend: netem"))
    with pytest.raises(TopologyError, match=r"t.yaml: link 1 field 'backend' must be tc or ns3"):
        load_yaml(p)


def test_validate_rejects_unknown_backend():
    with pytest.raises(TopologyError, match="backend must be one of tc, ns3"):
        topo(Link("s1", "s2", backend="x")).validate()
