"""Mininet cluster mode: plan a run's network over several servers, check them, name the commands.

A spec's ``cluster:`` section (:class:`testbed.spec.ClusterSpec`) spreads the emulated
hosts and switches over servers, as Mininet's cluster edition
(``mininet.examples.cluster``, shipped by Debian's mininet 2.3.0) does: every node
runs on a server (``RemoteHost`` / ``RemoteOVSSwitch``, reached by ssh with
passwordless sudo), a link between two servers is a tunnel (``RemoteGRELink``: kernel
gretap; ``RemoteSSHLink``: Ethernet over ``ssh -w``), and the switches reach the DCC
over the servers' own network.

This module is pure planning (no root, nothing started): :func:`plan_cluster`
places every node (``switch``: Mininet's SwitchBinPlacer - switches in even bins,
hosts with their switch; ``round_robin``; ``random``, seeded by the spec's seed so a
replay places alike), lists the tunnels with their GRE keys, refuses what cannot
cross servers (ns-3 and WiFi links, captures on remote nodes), and gives the Mininet
classes and per-node parameters, the ssh commands of the preflight and the command
that would start a server's node launcher. :func:`preflight` runs those checks.

What a run across servers still lacks (README, Cluster mode): the node processes of
a host on another server must be started by a launcher on that server - the
launcher enters a host's namespace by its PID (``setns``), which only works on the
machine that runs the host - with the run directory at the same path on every
server. Until that exists, ``daitn run`` of a cluster spec runs the preflight and
stops with exit 3 before anything is built (:func:`refuse_run`).

Errors: :class:`ClusterError` (a :class:`testbed.network.NetworkError`) names the
spec field (``field``) and what to do.
"""
from __future__ import annotations

import random
import re
import shlex
import subprocess
from dataclasses import dataclass, field

from testbed.network import NetworkError, link_backends, plan_ports
from topologies.model import Topology, is_host, is_switch

LOCAL = "localhost"
PLACEMENTS = ("switch", "round_robin", "random")
# what Mininet's RemoteMixin and MininetCluster.precheck run (mininet/examples/cluster.py)
SSH_BASE = ["ssh", "-q", "-o", "BatchMode=yes", "-o", "ForwardAgent=yes"]
SSH_TIMEOUT_S = 10


class ClusterError(NetworkError):
    """The cluster section cannot be carried out: ``field`` is the spec field, str() says why and what to do."""

    def __init__(self, field: str, reason: str):
        self.field = field
        super().__init__(reason)


def natural(name: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


@dataclass(frozen=True)
class Tunnel:
    """A link whose ends are on different servers: carried by a GRE (or ssh) tunnel."""
    a: str
    a_port: int
    a_server: str
    b: str
    b_port: int
    b_server: str
    key: int  # GRE key, unique per tunnel (Mininet's RemoteGRELink numbers them the same way)

    @property
    def interfaces(self) -> tuple[str, str]:
        return f"{self.a}-eth{self.a_port}", f"{self.b}-eth{self.b_port}"


@dataclass
class ClusterPlan:
    servers: list[str]
    placement: dict[str, str]          # node (host or switch) -> server
    how: str                           # placement algorithm
    tunnel: str                        # gre | ssh
    user: str | None = None            # ssh user; None: Mininet's findUser() at run time
    controller_ip: str | None = None
    tunnels: list[Tunnel] = field(default_factory=list)

    def server_of(self, node: str) -> str:
        return self.placement[node]

    def is_remote(self, node: str) -> bool:
        return self.placement[node] != LOCAL

    def nodes_on(self, server: str) -> list[str]:
        return sorted((n for n, s in self.placement.items() if s == server), key=natural)

    def remote_servers(self) -> list[str]:
        return [s for s in self.servers if s != LOCAL]

    # ---- what Mininet is given ----------------------------------------------------------
    def node_params(self, node: str) -> dict:
        """Keyword arguments of Mininet's addHost/addSwitch for ``node`` (RemoteMixin's)."""
        p = {"server": self.placement[node]}
        if self.user:
            p["user"] = self.user
        if self.is_remote(node):
            # one multiplexed ssh connection per server, as MininetCluster sets up
            p["controlPath"] = True
        return p

    def mininet_classes(self):
        """(host class, switch class, link class) from mininet.examples.cluster."""
        from mininet.examples.cluster import RemoteGRELink, RemoteHost, RemoteOVSSwitch, RemoteSSHLink
        return RemoteHost, RemoteOVSSwitch, RemoteGRELink if self.tunnel == "gre" else RemoteSSHLink

    # ---- commands ---------------------------------------------------------------------------
    def dest(self, server: str) -> str:
        return f"{self.user}@{server}" if self.user else server

    def ssh(self, server: str, *cmd: str) -> list[str]:
        """``cmd`` run as root on ``server`` over ssh (no password asked: BatchMode, sudo -n)."""
        # ssh joins its arguments into one line for the remote shell: quote each
        return [*SSH_BASE, "-o", f"ConnectTimeout={SSH_TIMEOUT_S}", "-n", self.dest(server), "sudo", "-n",
                *(shlex.quote(c) for c in cmd)]

    def preflight_commands(self) -> list[tuple[str, str, list[str]]]:
        """(server, what is checked, command) for every remote server; each must exit 0."""
        out = []
        for s in self.remote_servers():
            out += [(s, "ssh without a password and sudo without a password", self.ssh(s, "true")),
                    (s, "Mininet (mnexec) installed", self.ssh(s, "mnexec", "-v")),
                    (s, "Open vSwitch running", self.ssh(s, "ovs-vsctl", "--timeout=5", "show"))]
            if self.tunnel == "gre":
                probe = ("ip link add daitngre0 type gretap local 127.0.0.1 remote 127.0.0.2 key 1 "
                         "&& ip link del daitngre0")
                out.append((s, "kernel GRE (gretap) for tunnels", self.ssh(s, "sh", "-c", probe)))
            else:
                out.append((s, "tun/tap device for ssh tunnels", self.ssh(s, "test", "-c", "/dev/net/tun")))
        if self.tunnel == "gre" and self.tunnels and LOCAL in self.servers:
            out.append((LOCAL, "kernel GRE (gretap) for tunnels",
                        ["sh", "-c", "ip link add daitngre0 type gretap local 127.0.0.1 remote 127.0.0.2 "
                                     "key 1 && ip link del daitngre0"]))
        return out

    def launcher_command(self, server: str, conf_path: str, repo_dir: str, python: str) -> list[str]:
        """What would start ``server``'s node launcher (its hosts only in ``conf_path``)."""
        cmd = ["env", f"PYTHONPATH={repo_dir}", python, "-m", "nodes.launcher", conf_path]
        return cmd if server == LOCAL else self.ssh(server, *cmd)

    def summary(self) -> str:
        per = ", ".join(f"{s}: {len([n for n in self.nodes_on(s) if is_switch(n)])} switches, "
                        f"{len([n for n in self.nodes_on(s) if is_host(n)])} hosts" for s in self.servers)
        return f"cluster ({self.how} placement, {self.tunnel} tunnels): {per}; {len(self.tunnels)} tunnel(s)"

    def to_dict(self) -> dict:
        return {"servers": self.servers, "placement": self.how, "tunnel": self.tunnel, "user": self.user,
                "nodes": dict(sorted(self.placement.items(), key=lambda kv: natural(kv[0]))),
                "tunnels": [t.__dict__ for t in self.tunnels]}


def switch_bins(switches: list[str], servers: list[str]) -> dict[str, str]:
    """Mininet's SwitchBinPlacer.bin (written out so that checking a spec needs no Mininet;
    tests/unit/test_cluster.py holds it to Mininet's): len/servers switches each, the
    remainder one each to the first servers, in order."""
    size = {s: len(switches) // len(servers) for s in servers}
    for s in servers[: len(switches) % len(servers)]:
        size[s] += 1
    tickets = [s for s in servers for _ in range(size[s])]
    return dict(zip(switches, tickets))


def place(topo: Topology, servers: list[str], how: str, seed: int = 0) -> dict[str, str]:
    """Server of every node of ``topo``."""
    if how not in PLACEMENTS:
        raise ClusterError("cluster.placement", f"unknown placement {how!r}; one of {', '.join(PLACEMENTS)}")
    nodes = sorted([*topo.hosts, *topo.switches], key=natural)  # Mininet's Topo.nodes() order
    if how == "round_robin":
        return {n: servers[i % len(servers)] for i, n in enumerate(nodes)}
    if how == "random":
        rng = random.Random(seed)
        return {n: rng.choice(servers) for n in nodes}
    # switch: Mininet's SwitchBinPlacer - switches in even, contiguous bins in topology
    # order, every host where its switch is
    out = switch_bins(list(topo.switches), list(servers))
    for ln in topo.links:
        for h, s in ((ln.a, ln.b), (ln.b, ln.a)):
            if is_host(h) and is_switch(s):
                out[h] = out[s]
    lonely = [h for h in topo.hosts if h not in out]
    if lonely:
        raise ClusterError("cluster.placement", f"hosts {lonely[:5]} have no switch to be placed with; "
                                                f"use round_robin or random")
    return out


def plan_cluster(spec, topo: Topology) -> ClusterPlan:
    """Place ``topo`` on the servers of ``spec.cluster``; refuse what cannot cross servers."""
    c = spec.cluster
    servers = [s.strip() or LOCAL for s in c.servers]
    dup = sorted({s for s in servers if servers.count(s) > 1})
    if dup:
        raise ClusterError("cluster.servers", f"servers {dup} are listed twice")
    for s in servers:
        if not re.fullmatch(r"[A-Za-z0-9_.:-]+", s):
            raise ClusterError("cluster.servers", f"{s!r} is not a host name or address")
    if c.ssh_user is not None and not re.fullmatch(r"[a-z_][a-z0-9_.-]*\$?", c.ssh_user):
        raise ClusterError("cluster.ssh_user", f"{c.ssh_user!r} is not a user name")
    placement = place(topo, servers, c.placement, spec.seed)
    plan = ClusterPlan(servers=servers, placement=placement, how=c.placement, tunnel=c.tunnel,
                       user=c.ssh_user, controller_ip=c.controller_ip)
    # ns-3 links and WiFi are taps of one local ns-3 process: they cannot reach another server
    # (auto resolves with netem assumed present: the servers' own kernels decide about delay)
    for ln, be in zip(topo.links, link_backends(topo, spec.links.backend, True)):
        if be in ("ns3", "wifi") and (plan.is_remote(ln.a) or plan.is_remote(ln.b)):
            raise ClusterError("cluster", f"link {ln.a}-{ln.b} is emulated by ns-3 ({be}), whose taps live on "
                                          f"this machine, but an end is on server {plan.server_of(ln.b if plan.is_remote(ln.b) else ln.a)!r}; "
                                          f"use links.backend tc, or place both ends on localhost")
    key = 0
    for a, ap, b, bp in plan_ports(topo):
        if placement[a] != placement[b]:
            key += 1
            plan.tunnels.append(Tunnel(a, ap, placement[a], b, bp, placement[b], key))
    for i, intf in enumerate(spec.capture):
        node = intf.split("-eth")[0]
        if plan.is_remote(node):
            raise ClusterError(f"capture.{i}", f"{intf} is on server {placement[node]!r}; captures are taken "
                                               f"on this machine only: capture an interface of a node on localhost")
    return plan


def preflight(plan: ClusterPlan, run=subprocess.run) -> list[str]:
    """Run the preflight commands; returns what failed, as sentences (empty: all passed)."""
    problems = []
    for server, what, cmd in plan.preflight_commands():
        try:
            r = run(cmd, capture_output=True, text=True, timeout=SSH_TIMEOUT_S + 5)
            ok, detail = r.returncode == 0, (r.stderr or r.stdout or "").strip().splitlines()[-1:] or [""]
            if r.returncode == 255 and cmd[0] == "ssh":
                detail = ["ssh could not log in (no server, no sshd, or it asks for a password)"]
            detail = f"exit {r.returncode}: {detail[0]}" if not ok else ""
        except (OSError, subprocess.TimeoutExpired) as e:
            ok, detail = False, f"{type(e).__name__}: {e}"
        if not ok:
            problems.append(f"{server}: {what} - failed ({detail}); command: {' '.join(cmd)}")
    return problems


def refuse_run(plan: ClusterPlan, say=print, run=subprocess.run):
    """Say where the nodes would go, check the servers, and stop: running across servers
    is not supported yet (see the module docstring). Raises ClusterError (exit 3)."""
    say(plan.summary())
    problems = preflight(plan, run)
    why = ("a run across servers is not supported yet: the node launcher enters each host's "
           "network namespace by its PID, which works only on the machine that runs the host, so "
           "hosts on other servers would need a launcher of their own there (README, Cluster mode). "
           "Nothing was started.")
    if problems:
        raise ClusterError("cluster", "the servers failed the preflight:\n  " + "\n  ".join(problems) + "\n" + why)
    raise ClusterError("cluster", "the servers passed the preflight, but " + why)


__all__ = ["ClusterError", "ClusterPlan", "Tunnel", "place", "plan_cluster", "preflight", "refuse_run"]
