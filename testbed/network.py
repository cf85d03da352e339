"""The emulated network: a Topology built as Mininet hosts on Open vSwitch.

Switches are fail-secure OVS bridges (nothing forwards without the DCC) on the
kernel datapath when the kernel has the openvswitch module, else userspace
(netdev) - decided by :mod:`testbed.capabilities`, never guessed. Every bridge
carries ``external_ids:daitn-run=<run id>`` so clean-up removes only ours.
Port numbers are assigned explicitly (link order) and exported as a
:class:`controllers.fabric.Fabric` for the DCC to cross-check discovery.

Each link has a backend (:func:`link_backends`): ``tc`` links are Mininet veth
pairs shaped by HTB (:mod:`testbed.shaping`); ``ns3`` links are not made in
Mininet at all: each end is a tap from one :class:`testbed.ns3link.Ns3Links`
process (host end: moved into the host's namespace as ``hN-eth0``; switch end:
``sN-ethP`` in the root namespace, added to the bridge as OpenFlow port P), so
names and port numbers are the same whichever backend carries a link.

WiFi segments (a :class:`testbed.ns3link.wifi.WirelessTopology`): the links of a
segment's stations to its access point's switch are ``wifi`` links, carried by
the same ns-3 process: one tap per station as the host's ``hN-eth0`` and one tap
for the access point, ``sN-ethP``, the one OpenFlow port P all the segment's
stations share (:func:`plan_ports`). While running, ns-3 links change with
:meth:`EmulatedNetwork.set_link` (rate, delay, loss) and stations move with
:meth:`EmulatedNetwork.move_station` / :meth:`EmulatedNetwork.set_velocity`.
"""
from __future__ import annotations

import dataclasses

import fcntl
import ipaddress
import os
import re
import subprocess
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path

from controllers.fabric import Fabric, HostPort
from testbed.capabilities import Capabilities
from testbed.ns3link.wifi import segments as wifi_segments
from testbed.ns3link.wifi import station_segments
from testbed.shaping import egress_commands
from testbed.wait import wait_for
from topologies.model import Topology, dpid_of, is_host, is_switch

RUN_TAG = "daitn-run"
WIFI_RT_PRIORITY = 10   # SCHED_FIFO priority of the ns-3 process when it runs a WiFi segment


class NetworkError(RuntimeError):
    """The network could not be built; the message says what to do."""


LOCK_PATH = "/run/daitn-emulation.lock"
_lock_depth = 0


@contextmanager
def emulation_lock(log=print):
    """Hold the machine-wide emulation lock (re-entrant within a process).

    Runs share Mininet's names (s1, h1-eth0) and so cannot overlap: a second
    run waits here, saying so, until the first has stopped and cleaned up.
    """
    global _lock_depth
    if _lock_depth:
        _lock_depth += 1
        try:
            yield
        finally:
            _lock_depth -= 1
        return
    fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another testbed run holds {LOCK_PATH}; waiting for it to finish")
            fcntl.flock(fd, fcntl.LOCK_EX)
        _lock_depth = 1
        try:
            yield
        finally:
            _lock_depth = 0
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def host_ip(host: str) -> str:
    return str(ipaddress.IPv4Address(0x0A000000 + int(host[1:])))


def host_mac(host: str) -> str:
    n = int(host[1:])
    return "00:00:00:%02x:%02x:%02x" % ((n >> 16) & 255, (n >> 8) & 255, n & 255)


def _sh(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True)


def existing_bridges() -> set[str]:
    r = _sh(["ovs-vsctl", "--timeout=5", "list-br"])
    return set(r.stdout.split()) if r.returncode == 0 else set()


def plan_ports(topo: Topology) -> list[tuple[str, int, str, int]]:
    """(a, a_port, b, b_port) for every link; host side is port 0 (hN-eth0).

    Switch ports are numbered in link order. The station links of a WiFi segment
    all get the port of its access point (numbered where the first of them comes)."""
    stations = station_segments(topo)
    nxt: dict[str, int] = {}
    ap_port: dict[str, int] = {}
    out = []
    for ln in topo.links:
        ports = []
        for end, other in ((ln.a, ln.b), (ln.b, ln.a)):
            if is_host(end):
                ports.append(0)
                continue
            seg = stations.get(other)
            if seg is not None and seg.ap_switch == end:
                if seg.name not in ap_port:
                    nxt[end] = nxt.get(end, 0) + 1
                    ap_port[seg.name] = nxt[end]
                ports.append(ap_port[seg.name])
            else:
                nxt[end] = nxt.get(end, 0) + 1
                ports.append(nxt[end])
        out.append((ln.a, ports[0], ln.b, ports[1]))
    return out


def ap_ports(topo: Topology) -> dict[str, tuple[str, int]]:
    """WiFi segment name -> (switch, port) of its access point."""
    out = {}
    stations = station_segments(topo)
    for a, ap, b, bp in plan_ports(topo):
        for host, sw, port in ((a, b, bp), (b, a, ap)):
            seg = stations.get(host)
            if seg is not None and seg.ap_switch == sw:
                out.setdefault(seg.name, (sw, port))
    return out


def link_backends(topo: Topology, default: str, netem: bool) -> list[str]:
    """The backend ("tc", "ns3" or "wifi") of every link, in link order.

    A station's link to its access point is ``wifi`` (ns-3 carries it, whatever the
    default). Otherwise a link's own ``backend`` wins, else ``default``; ``auto``
    means ns3 for a link that asks for delay on a kernel without netem (tc cannot
    delay there), tc otherwise. Whether the chosen backend can run here is
    :meth:`EmulatedNetwork.preflight`'s business, not this function's.
    """
    if default not in ("auto", "tc", "ns3"):
        raise ValueError(f"links.backend must be auto, tc or ns3, got {default!r}")
    stations = station_segments(topo)
    out = []
    for ln in topo.links:
        host = ln.a if is_host(ln.a) else ln.b if is_host(ln.b) else None
        seg = stations.get(host)
        if seg is not None and seg.ap_switch in (ln.a, ln.b):
            out.append("wifi")
            continue
        b = ln.backend or default
        if b == "auto":
            b = "ns3" if ln.delay_ms and not netem else "tc"
        out.append(b)
    return out


def ns3_available() -> tuple[bool, str]:
    """(usable, why): the ns3 link backend needs its library compiled against the wheel."""
    from testbed.ns3link import build
    try:
        lib = build.library_path()
    except build.BuildError as e:
        return False, str(e)
    if not lib.exists():
        return False, (f"the ns3link library is not built ({lib} missing): run `sudo make setup` "
                       f"or `python -m testbed.ns3link.build`")
    return True, f"library {lib}"


def fabric_of(topo: Topology, extra: dict | None = None) -> Fabric:
    """The fabric the DCC should find: dpids, switch-link ports, host attachment."""
    ports = plan_ports(topo)
    links = [p for p in ports if is_switch(p[0]) and is_switch(p[2])]
    hosts = {}
    for a, ap, b, bp in ports:
        if is_host(a) or is_host(b):
            h, s, sp = (a, b, bp) if is_host(a) else (b, a, ap)
            hosts[h] = HostPort(h, host_ip(h), host_mac(h), s, sp)
    return Fabric({s: dpid_of(s) for s in topo.switches}, links, hosts, extra or {})


class EmulatedNetwork:
    """Context manager: builds and starts the network, always stops it."""

    def __init__(self, topo: Topology, run_id: str, caps: Capabilities, controller_port: int,
                 log=print, backend: str = "auto", run_dir: str | Path | None = None,
                 ns3_max_lag_ms: float | None = None):
        self.topo = topo
        self.run_id = run_id
        self.caps = caps
        self.controller_port = controller_port
        self.log = log
        self.backend = backend
        self.backends = link_backends(topo, backend, caps.netem)
        # ns-3 writes its config, status, log and pcaps here (a run's directory)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.ns3_max_lag_ms = ns3_max_lag_ms
        self.ns3 = None
        self.net = None

    def link_table(self) -> list[dict]:
        """Every link as emulated: ends, backend and parameters (for manifest.json)."""
        return [{"a": ln.a, "b": ln.b, "backend": be, "bw": ln.bw_mbit, "delay": ln.delay_ms,
                 "loss": ln.loss_pct} for ln, be in zip(self.topo.links, self.backends)]

    def preflight(self):
        """Refuse, before creating anything, what this machine cannot emulate faithfully."""
        if not self.caps.ovs_running:
            raise NetworkError("Open vSwitch is not running: run `sudo make setup` (starts ovs-ctl)")
        for ln, be in zip(self.topo.links, self.backends):
            if be in ("ns3", "wifi"):
                continue
            if ln.delay_ms and not self.caps.netem:
                raise NetworkError(
                    f"link {ln.a}-{ln.b} asks for delay {ln.delay_ms} ms on the tc backend but this "
                    f"kernel has no sch_netem, so tc cannot delay it. Let ns-3 emulate it (`--set "
                    f"links.backend=auto`, the default, or `backend: ns3` on the link), remove the "
                    f"delay (`--set links.delay=0 --set links.override=true` replaces every link's "
                    f"delay, e.g. topohub's propagation delays) or run in the Vagrant VM, whose "
                    f"kernel has netem")
            if ln.loss_pct and not (self.caps.netem or self.caps.bpf_loss):
                raise NetworkError(f"link {ln.a}-{ln.b} asks for loss but neither netem nor "
                                   f"cls_bpf is available")
        if "ns3" in self.backends or "wifi" in self.backends:
            ok, why = ns3_available()
            if not ok:
                ns3_links = [f"{ln.a}-{ln.b}" for ln, be in zip(self.topo.links, self.backends)
                             if be in ("ns3", "wifi")]
                raise NetworkError(f"links {ns3_links[:5]} use the ns3 backend (WiFi segments included), "
                                   f"which is not usable here: {why}")
        taken = existing_bridges() & set(self.topo.switches)
        if taken:
            raise NetworkError(
                f"bridges {sorted(taken)} already exist; they may be another run's or someone "
                f"else's. Run `daitn clean` to remove testbed leftovers (it keeps foreign bridges)")
        for name in self.topo.hosts + self.topo.switches:
            if _sh(["ip", "link", "show", f"{name}-eth0" if is_host(name) else f"{name}-eth1"]).returncode == 0:
                raise NetworkError(f"interface of {name} already exists in the root namespace; "
                                   f"run `daitn clean`")

    def __enter__(self) -> "EmulatedNetwork":
        self._stack = ExitStack()
        self._stack.enter_context(emulation_lock(self.log))
        try:
            self.preflight()
        except BaseException:
            self._stack.close()
            raise
        try:
            self._build()
        except NetworkError:
            self.stop()
            raise
        except Exception as e:  # Mininet raises bare Exceptions
            self.stop()
            raise NetworkError(f"building the network failed: {e}; if a previous run left "
                               f"interfaces behind, run `daitn clean`") from e
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def _build(self):
        from mininet.link import Link
        from mininet.log import setLogLevel
        from mininet.net import Mininet
        from mininet.node import OVSSwitch, RemoteController

        setLogLevel("error")
        run_id = self.run_id

        class TaggedOVSSwitch(OVSSwitch):
            def bridgeOpts(self):
                return super().bridgeOpts() + f" external_ids:{RUN_TAG}={run_id}"

            def start(self, controllers):
                # Bridges start without a controller; it is attached once every
                # port is open (see _attach_controller): os-ken's topology app
                # loses ports that appear during the OpenFlow handshake.
                super().start([])

        switch = partial(TaggedOVSSwitch, datapath=self.caps.datapath, failMode="secure",
                         protocols="OpenFlow13")
        net = Mininet(topo=None, build=False, switch=switch, controller=None, link=Link,
                      autoSetMacs=False, waitConnected=False)
        self.net = net
        net.addController(RemoteController("c0", ip="127.0.0.1", port=self.controller_port))
        for s in self.topo.switches:
            net.addSwitch(s, dpid="%016x" % dpid_of(s))
        for h in self.topo.hosts:
            net.addHost(h, ip=f"{host_ip(h)}/8", mac=host_mac(h))
        for (a, ap, b, bp), be in zip(plan_ports(self.topo), self.backends):
            if be in ("ns3", "wifi"):
                continue    # made by _start_ns3: taps, ns-3 in between
            net.addLink(a, b, port1=ap, port2=bp)
            for node, port in ((a, ap), (b, bp)):
                if is_switch(node):
                    # Tag at once: until its bridge exists, the alias is how
                    # `daitn clean` knows this veth is ours.
                    _sh(["ip", "link", "set", "dev", self.intf_name(node, port),
                         "alias", f"{RUN_TAG}={run_id}"])
        net.build()
        for h in net.hosts:
            # No IPv6 chatter (router solicitations) on an IPv4 fabric.
            h.cmd("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1")
            if self.caps.datapath == "user" and h.defaultIntf():
                # Userspace datapath + veth: TCP breaks unless TX checksum offload is off.
                h.cmd(f"ethtool -K {h.defaultIntf()} tx off")
        for sw in net.switches:
            for intf in sw.intfList():
                if intf.name != "lo":
                    # The root namespace's kernel would otherwise send IPv6 router
                    # solicitations out of switch ports into the fabric.
                    _sh(["sysctl", "-qw", f"net.ipv6.conf.{intf.name}.disable_ipv6=1"])
        net.start()
        # Shape only after net.start(): adding a port to a bridge makes OVS reset
        # its qdisc (it owns QoS on its ports), which wiped shaping done before.
        self._shape()
        self._start_ns3()
        self._attach_controller()

    def _start_ns3(self):
        """Start the run's one ns-3 process with a tap per end of every ns3 link,
        and plug the switch ends into their bridges as the planned port numbers."""
        from testbed.ns3link import DEFAULT_MAX_LAG_MS, LinkSpec, Ns3Links, TapEnd

        from testbed.ns3link import StationSpec, WifiSpec

        plan = [(ln, ports) for ln, ports, be in zip(self.topo.links, plan_ports(self.topo), self.backends)
                if be == "ns3"]
        segs = wifi_segments(self.topo)
        if not plan and not segs:
            return
        if self.run_dir is None:
            raise NetworkError("ns3 links need a run directory for ns-3's config, log and pcaps "
                               "(EmulatedNetwork(..., run_dir=))")

        def end(node: str, port: int) -> TapEnd:
            if is_host(node):
                h = self.net.get(node)
                return TapEnd(self.intf_name(node, port), netns=h.pid, mac=host_mac(node),
                              addrs=(f"{host_ip(node)}/8",))
            return TapEnd(self.intf_name(node, port))

        specs = [LinkSpec(f"{a}-{b}", a=end(a, ap), b=end(b, bp), rate_mbps=ln.bw_mbit,
                          delay_ms=ln.delay_ms or 0.0, loss_pct=ln.loss_pct or 0.0)
                 for ln, (a, ap, b, bp) in plan]
        aps = ap_ports(self.topo)
        wifi = [WifiSpec(seg.name, ap=end(*aps[seg.name]),
                         stations=tuple(StationSpec(st.host, end(st.host, 0), st.position, st.velocity)
                                        for st in seg.stations),
                         ap_position=seg.ap_position, standard=seg.standard, rate_manager=seg.rate_manager,
                         tx_power_dbm=seg.tx_power_dbm, path_loss_exponent=seg.path_loss_exponent,
                         reference_loss_db=seg.reference_loss_db, rx_sensitivity_dbm=seg.rx_sensitivity_dbm)
                for seg in segs]
        lag = self.ns3_max_lag_ms if self.ns3_max_lag_ms is not None else DEFAULT_MAX_LAG_MS
        # A WLAN costs ns-3 far more per frame than a link (every frame reaches every
        # radio, MAC ACKs, beacons): on a busy 2-core machine it fell 51 ms behind while
        # torch trained beside it. SCHED_FIFO keeps it on time (bench_ns3.py: the lag's
        # tail ~10x shorter); RLIMIT_RTTIME (sim.py) stops it cleanly should it spin.
        rt = WIFI_RT_PRIORITY if segs else 0
        self.ns3 = Ns3Links(specs, self.run_dir, self.run_id, max_lag_ms=lag, wifi=wifi, rt_priority=rt)
        self.ns3.start()
        what = [f"{len(specs)} link(s) ({', '.join(s.name for s in specs)})"] if specs else []
        what += [f"WiFi {seg.name} (AP on {aps[seg.name][0]} port {aps[seg.name][1]}, stations "
                 f"{', '.join(seg.hosts)})" for seg in segs]
        self.log(f"ns-3 runs {' and '.join(what)}, pid {self.ns3.pid}, started in {self.ns3.startup_s:.2f} s")
        ends = [(node, port) for ln, (a, ap, b, bp) in plan for node, port in ((a, ap), (b, bp))]
        ends += [aps[seg.name] for seg in segs] + [(h, 0) for seg in segs for h in seg.hosts]
        args = ["ovs-vsctl"]
        for node, port in ends:
            intf = self.intf_name(node, port)
            if is_switch(node):
                _sh(["ip", "link", "set", "dev", intf, "alias", f"{RUN_TAG}={self.run_id}"])
                _sh(["sysctl", "-qw", f"net.ipv6.conf.{intf}.disable_ipv6=1"])
                args += ["--", "add-port", node, intf, "--", "set", "Interface", intf,
                         f"ofport_request={port}"]
                cmd = ["ethtool", "-K", intf, "tx", "off"]
            else:
                cmd = ["nsenter", f"--net=/proc/{self.net.get(node).pid}/ns/net", "--",
                       "ethtool", "-K", intf, "tx", "off"]
            if self.caps.datapath == "user":
                # As for veths: no TX checksum offload towards the userspace datapath.
                r = _sh(cmd)
                if r.returncode:
                    raise NetworkError(f"`{' '.join(cmd)}` failed: {r.stderr.strip()}")
        r = _sh(args)
        if r.returncode:
            raise NetworkError(f"could not add the ns-3 taps to their bridges: {r.stderr.strip()}")

    def ns3_failure(self):
        """The ns-3 link process's failure (died, or fell behind real time), else None."""
        return self.ns3.failure if self.ns3 is not None else None

    def _attach_controller(self, timeout: float = 30.0):
        """Wait until every bridge shows all its ports, then point it at the DCC."""
        want = {s: set() for s in self.topo.switches}
        for a, ap, b, bp in plan_ports(self.topo):
            for n, p in ((a, ap), (b, bp)):
                if is_switch(n):
                    want[n].add(p)

        def missing() -> dict:
            out = {}
            for s, ports in want.items():
                r = _sh(["ovs-ofctl", "-O", "OpenFlow13", "show", s])
                # A port counts once its link is up: a port that turns LIVE during
                # the OpenFlow handshake is never sent LLDP by os-ken.
                have = {int(num) for num, state in
                        re.findall(r"^ (\d+)\(.*?\n(?:\s+\S.*\n)*?\s+state:\s+(\S+)", r.stdout, re.M)
                        if state == "LIVE"}
                if ports - have:
                    out[s] = sorted(ports - have)
            return out

        wait_for(lambda: not missing(), timeout, "every switch port open and LIVE in Open vSwitch",
                 last=missing)
        target = f"tcp:127.0.0.1:{self.controller_port}"
        args = ["ovs-vsctl"]
        for i, s in enumerate(self.topo.switches):
            # reconnect within 1 s of a controller restart (OVS backs off to 8 s by default);
            # fail mode stays secure, so the flows keep forwarding while the DCC is away
            args += ["--", f"--id=@c{i}", "create", "Controller", f"target=\"{target}\"", "max_backoff=1000",
                     "--", "set", "Bridge", s, f"controller=@c{i}"]
        r = _sh(args)
        if r.returncode:
            raise NetworkError(f"could not attach switches to the DCC at {target}: {r.stderr}")

    def intf_name(self, node: str, port: int) -> str:
        return f"{node}-eth{port}"

    def _shape(self):
        for ln, ports, be in zip(self.topo.links, plan_ports(self.topo), self.backends):
            if be == "tc":      # ns-3 shapes its own links
                self._shape_link(ln, ports)

    def _shape_link(self, ln, ports, drop_loss_filter: bool = False, reshape: bool = False):
        a, ap, b, bp = ports
        for node, port in ((a, ap), (b, bp)):
            intf = self.intf_name(node, port)
            cmds = egress_commands(intf, ln.bw_mbit, ln.loss_pct, ln.delay_ms, self.caps.netem)
            if reshape:  # the HTB root exists: `qdisc replace` of it is refused; change its class
                cmds = [c for c in cmds if not c.startswith(f"tc qdisc replace dev {intf} root ")]
            if drop_loss_filter:  # loss went back to 0: the old BPF filter must go
                cmds.insert(0, f"tc filter del dev {intf} parent 1: prio 1 2>/dev/null; true")
            for c in cmds:
                out = self.net.get(node).cmd(c + " 2>&1; echo rc=$?").strip()
                if not out.endswith("rc=0"):
                    raise NetworkError(f"shaping {intf} failed: `{c}` said: {out}")

    def set_link(self, a: str, b: str, bw: float | None = None, loss: float | None = None,
                 delay: float | None = None):
        """Change a running link's bandwidth, loss and/or (ns3 links only) one-way delay,
        both directions; returns the link as now configured. tc links cannot change
        their delay here (netem-less kernels); WiFi links change by moving the station."""
        plan = plan_ports(self.topo)
        for i, (ln, ports) in enumerate(zip(self.topo.links, plan)):
            if {ln.a, ln.b} == {a, b}:
                if self.backends[i] == "wifi":
                    raise NetworkError(f"link {a}-{b} is a WiFi station's link: its rate follows the "
                                       f"station's position; move the station instead (timeline "
                                       f"move_station / set_velocity)")
                new = dataclasses.replace(ln, bw_mbit=bw if bw is not None else ln.bw_mbit,
                                          loss_pct=loss if loss is not None else ln.loss_pct,
                                          delay_ms=delay if delay is not None else ln.delay_ms)
                if self.backends[i] == "ns3":
                    from testbed.ns3link import ConfigError, Ns3LinkError
                    try:   # the LinkSpec is named after the link's ends in topology order
                        self.ns3.set_link(f"{ln.a}-{ln.b}", rate_mbps=bw, delay_ms=delay, loss_pct=loss)
                    except (ConfigError, Ns3LinkError) as e:
                        raise NetworkError(f"changing ns-3 link {a}-{b} failed: {e}") from None
                    links = list(self.topo.links)
                    links[i] = new
                    self.topo = dataclasses.replace(self.topo, links=links)
                    return new
                if delay is not None and delay != (ln.delay_ms or 0):
                    raise NetworkError(f"link {a}-{b} is a tc link, whose delay cannot change while "
                                       f"running; give it `backend: ns3` (in the topology) to change its delay")
                shaped = bool(ln.bw_mbit or ln.loss_pct or ln.delay_ms)
                self._shape_link(new, ports, drop_loss_filter=bool(ln.loss_pct) and not new.loss_pct,
                                 reshape=shaped)
                links = list(self.topo.links)
                links[i] = new
                self.topo = dataclasses.replace(self.topo, links=links)
                return new
        raise NetworkError(f"no link between {a} and {b}")

    def set_link_state(self, a: str, b: str, up: bool):
        """Take a running link down or bring it back: both ends' interfaces
        administratively down/up (veth pair or ns-3 tap alike), so the switch
        reports the port's state change to the DCC (OpenFlow PORT_STATUS) as a
        real cable cut would. Returns the link."""
        for ln, (na, ap, nb, bp) in zip(self.topo.links, plan_ports(self.topo)):
            if {ln.a, ln.b} == {a, b}:
                for node, port in ((na, ap), (nb, bp)):
                    intf = self.intf_name(node, port)
                    out = self.net.get(node).cmd(f"ip link set dev {intf} {'up' if up else 'down'} 2>&1; "
                                                 f"echo rc=$?").strip()
                    if not out.endswith("rc=0"):
                        raise NetworkError(f"setting {intf} {'up' if up else 'down'} failed: {out}")
                return ln
        raise NetworkError(f"no link between {a} and {b}")

    def move_station(self, host: str, to, speed: float = 0.0) -> dict:
        """Move WiFi station ``host`` to ``to`` (m) at ``speed`` m/s (0: at once); returns
        ns-3's ``applied`` line (``eta_s``: seconds until it arrives)."""
        return self._mobility(host, lambda: self.ns3.move_station(host, to, speed))

    def set_velocity(self, host: str, velocity) -> dict:
        """Give WiFi station ``host`` a constant velocity (m/s; zero stops it)."""
        return self._mobility(host, lambda: self.ns3.set_velocity(host, velocity))

    def _mobility(self, host: str, call) -> dict:
        if host not in station_segments(self.topo) or self.ns3 is None:
            raise NetworkError(f"{host} is not a WiFi station of this network (stations: "
                               f"{sorted(station_segments(self.topo))})")
        from testbed.ns3link import ConfigError, Ns3LinkError
        try:
            return call()
        except (ConfigError, Ns3LinkError) as e:
            raise NetworkError(f"moving station {host} failed: {e}") from None

    def wifi_status(self) -> dict[str, dict]:
        """Every WiFi station's latest state from ns-3 (see Ns3Links.wifi_status); {} if none."""
        return self.ns3.wifi_status() if self.ns3 is not None and wifi_segments(self.topo) else {}

    def host(self, name: str):
        return self.net.get(name)

    def host_pids(self) -> dict[str, int]:
        return {h.name: h.pid for h in self.net.hosts}

    def stop(self):
        try:
            self._stop()
        finally:
            stack = getattr(self, "_stack", None)
            if stack is not None:
                self._stack = None
                stack.close()

    def _stop(self):
        if self.ns3 is not None:
            # First: its taps vanish with it, before their bridges and namespaces go.
            self.ns3.stop()
        if self.net is None:
            return
        net, self.net = self.net, None
        try:
            net.stop()
        finally:
            # Mininet's RemoteController.stop() does nothing, so its node's shell
            # (tagged with DAITN_RUN) would outlive the network in this process.
            for c in net.controllers:
                c.terminate()
            # Mininet's stop removes bridges it started; make sure of ours even
            # if start failed half-way.
            for br in existing_bridges() & set(self.topo.switches):
                ext = _sh(["ovs-vsctl", "br-get-external-id", br, RUN_TAG]).stdout.strip()
                if ext == self.run_id:
                    _sh(["ovs-vsctl", "--if-exists", "del-br", br])
