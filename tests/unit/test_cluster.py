"""Cluster mode planning (testbed/cluster.py): placement as Mininet's cluster edition places,
tunnels, refusals, the commands and Mininet objects a run would use. No root, nothing started."""
import shlex
import subprocess
import warnings
from pathlib import Path

import pytest
import yaml

from testbed import cluster
from testbed.spec import ClusterSpec, SpecError, load_spec
from topologies import generators

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # Debian's cluster.py imports distutils
    from mininet.examples import cluster as mn_cluster


def test_switch_bins_are_mininets():
    for n_sw in (1, 2, 3, 7, 21):
        for servers in (["a"], ["a", "b"], ["a", "b", "c"], ["x", "y", "z", "w", "v"]):
            switches = [f"s{i}" for i in range(1, n_sw + 1)]
            assert cluster.switch_bins(switches, servers) == mn_cluster.SwitchBinPlacer.bin(switches, servers)


@pytest.mark.parametrize("topo", [generators.tree(2, 3), generators.fattree(4), generators.linear(5, 2)],
                         ids=lambda t: t.name)
def test_switch_placement_is_mininets_switch_bin_placer(topo):
    servers = ["localhost", "srv2", "srv3"]
    ours = cluster.place(topo, servers, "switch")
    theirs = mn_cluster.SwitchBinPlacer(servers=servers, nodes=topo.hosts + topo.switches, hosts=topo.hosts,
                                        switches=topo.switches, links=[(ln.a, ln.b) for ln in topo.links])
    assert ours == {n: theirs.place(n) for n in topo.hosts + topo.switches}
    # hosts sit with their switch: no host link crosses servers
    for ln in topo.links:
        if ln.a.startswith("h") or ln.b.startswith("h"):
            assert ours[ln.a] == ours[ln.b]


def test_round_robin_is_mininets_in_mininets_node_order():
    topo = generators.tree(2, 3)
    servers = ["localhost", "srv2"]
    ours = cluster.place(topo, servers, "round_robin")
    rr = mn_cluster.RoundRobinPlacer(servers=servers)
    nodes = sorted(topo.hosts + topo.switches, key=cluster.natural)
    assert ours == {n: rr.place(n) for n in nodes}
    assert {ours["h1"], ours["h2"]} == set(servers)


def test_random_placement_is_seeded():
    topo = generators.fattree(4)
    servers = ["localhost", "a", "b"]
    one = cluster.place(topo, servers, "random", seed=3)
    assert one == cluster.place(topo, servers, "random", seed=3)  # a replay places alike
    assert one != cluster.place(topo, servers, "random", seed=4)
    assert set(one.values()) == set(servers) and set(one) == set(topo.hosts + topo.switches)


def test_plan_lists_a_tunnel_for_every_link_across_servers(tmp_path):
    spec, topo = _load(tmp_path, {"servers": ["localhost", "srv2"], "placement": "round_robin"})
    plan = cluster.plan_cluster(spec, topo)
    crossing = [ln for ln in topo.links if plan.server_of(ln.a) != plan.server_of(ln.b)]
    assert len(plan.tunnels) == len(crossing) > 0
    assert [t.key for t in plan.tunnels] == list(range(1, len(crossing) + 1))  # unique GRE keys
    for t in plan.tunnels:
        assert t.a_server != t.b_server and t.a_server == plan.server_of(t.a)
    # interface names are the testbed's (hN-eth0, sN-ethP), whichever server holds them
    assert all(i.split("-eth")[0] in topo.hosts + topo.switches for t in plan.tunnels for i in t.interfaces)


def test_one_local_server_needs_no_tunnel_and_no_ssh(tmp_path):
    spec, topo = _load(tmp_path, {"servers": ["localhost"]})
    plan = cluster.plan_cluster(spec, topo)
    assert plan.tunnels == [] and plan.preflight_commands() == []
    assert plan.launcher_command("localhost", "/r/nodes.json", "/repo", "/repo/.venv/bin/python")[0] == "env"


def test_commands_are_mininets_ssh_with_arguments_kept_whole(tmp_path):
    spec, topo = _load(tmp_path, {"servers": ["localhost", "10.0.0.2"], "ssh_user": "mn"})
    plan = cluster.plan_cluster(spec, topo)
    checks = plan.preflight_commands()
    assert {what for s, what, _ in checks if s == "10.0.0.2"} >= {
        "ssh without a password and sudo without a password", "Mininet (mnexec) installed",
        "Open vSwitch running", "kernel GRE (gretap) for tunnels"}
    cmd = next(c for s, what, c in checks if s == "10.0.0.2" and "gretap" in what)
    # Mininet's ssh options (BatchMode: never ask for a password), then user@server and sudo -n
    assert cmd[:6] == cluster.SSH_BASE == mn_cluster.RemoteMixin.sshbase[:6]
    at = cmd.index("mn@10.0.0.2")
    assert cmd[at + 1:at + 3] == ["sudo", "-n"]
    # the remote shell re-splits the line: the probe survives as one argument of sh -c
    remote = shlex.split(" ".join(cmd[at + 1:]))
    assert remote[2:4] == ["sh", "-c"] and "&&" in remote[4]
    launch = plan.launcher_command("10.0.0.2", "/runs/x/nodes-10.0.0.2.json", "/opt/daitn", "/opt/daitn/.venv/bin/python")
    assert shlex.split(" ".join(launch[launch.index("mn@10.0.0.2") + 1:]))[2:] == [
        "env", "PYTHONPATH=/opt/daitn", "/opt/daitn/.venv/bin/python", "-m", "nodes.launcher",
        "/runs/x/nodes-10.0.0.2.json"]


def test_mininet_objects_and_parameters(tmp_path):
    spec, topo = _load(tmp_path, {"servers": ["localhost", "srv2"], "ssh_user": "mn", "tunnel": "gre"})
    plan = cluster.plan_cluster(spec, topo)
    host_cls, switch_cls, link_cls = plan.mininet_classes()
    assert (host_cls, switch_cls, link_cls) == (mn_cluster.RemoteHost, mn_cluster.RemoteOVSSwitch,
                                                mn_cluster.RemoteGRELink)
    remote = next(n for n in topo.hosts if plan.is_remote(n))
    local = next(n for n in topo.hosts if not plan.is_remote(n))
    assert plan.node_params(remote) == {"server": "srv2", "user": "mn", "controlPath": True}
    assert plan.node_params(local) == {"server": "localhost", "user": "mn"}
    ssh_plan = cluster.plan_cluster(*_load(tmp_path / "b", {"servers": ["localhost", "srv2"], "tunnel": "ssh"}))
    assert ssh_plan.mininet_classes()[2] is mn_cluster.RemoteSSHLink


def test_preflight_reports_each_failed_check_with_its_command(tmp_path):
    spec, topo = _load(tmp_path, {"servers": ["localhost", "srv2"]})
    plan = cluster.plan_cluster(spec, topo)
    ran = []

    def fake(cmd, **kw):
        ran.append(cmd)
        rc = 255 if "srv2" in cmd else 0
        return subprocess.CompletedProcess(cmd, rc, "", "")

    problems = cluster.preflight(plan, run=fake)
    assert len(ran) == len(plan.preflight_commands())
    assert problems and all(p.startswith("srv2: ") and "command: ssh" in p for p in problems)
    assert "could not log in" in problems[0]
    with pytest.raises(cluster.ClusterError, match="failed the preflight(.|\n)*Nothing was started"):
        cluster.refuse_run(plan, say=lambda *_: None, run=fake)
    ok = lambda cmd, **kw: subprocess.CompletedProcess(cmd, 0, "", "")  # noqa: E731
    assert cluster.preflight(plan, run=ok) == []
    with pytest.raises(cluster.ClusterError, match="passed the preflight, but a run across servers is not supported"):
        cluster.refuse_run(plan, say=lambda *_: None, run=ok)


def test_spec_refuses_what_cannot_cross_servers(tmp_path):
    base = {"servers": ["localhost", "srv2"], "placement": "switch"}
    with pytest.raises(SpecError, match="capture.0: h9-eth0 is on server 'srv2'"):
        _load(tmp_path / "a", base, capture=["h9-eth0"])
    _load(tmp_path / "b", base, capture=["h1-eth0"])  # a local host's interface is fine
    with pytest.raises(SpecError, match="cluster: link .* is emulated by ns-3"):
        _load(tmp_path / "c", base, links={"backend": "ns3"})
    with pytest.raises(SpecError, match="cluster.servers: servers \\['srv2'\\] are listed twice"):
        _load(tmp_path / "d", {"servers": ["srv2", "srv2"]})
    with pytest.raises(SpecError, match="cluster.servers"):
        _load(tmp_path / "e", {"servers": []})
    with pytest.raises(SpecError, match="cluster.placement"):
        _load(tmp_path / "f", {"servers": ["a"], "placement": "diagonal"})
    with pytest.raises(SpecError, match="cluster.ssh_user"):
        _load(tmp_path / "g", {"servers": ["a"], "ssh_user": "x; rm -rf /"})
    with pytest.raises(SpecError, match="cluster.oops"):
        _load(tmp_path / "h", {"servers": ["a"], "oops": 1})


def _load(tmp: Path, cluster_section: dict, **extra):
    tmp.mkdir(parents=True, exist_ok=True)
    spec = {"name": "cl", "seed": 7, "topology": {"generator": "tree", "params": {"depth": 2, "fanout": 3}},
            "nodes": {"h1": ["client"], "h2": ["data"], "h4": ["data"], "h9": ["mpvu"]},
            "tasks": [{"id": 1, "client": "h1", "target_accuracy": 0.8, "deadline_s": 60}],
            "cluster": cluster_section, **extra}
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return load_spec(path)
