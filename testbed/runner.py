"""Run an experiment: spec -> controller (DCC) -> network -> nodes -> results.

Every stage is a context manager stopped in ``finally`` (Ctrl-C and SIGTERM
included), and everything started carries the run id (DAITN_RUN), so a run
leaves nothing behind however it ends.
"""
from __future__ import annotations

import json
import os
import platform
import secrets
import signal
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from pathlib import Path

import yaml

from testbed import report, results
from testbed.progress import Progress
from testbed.api import TOKEN_FILE, ApiClient, ApiError
from testbed.capabilities import probe
from testbed.controller import REPO_ROOT, ControllerProcess, free_port
from testbed.network import (EmulatedNetwork, NetworkError, emulation_lock, fabric_of, host_ip,
                             link_backends, plan_ports)
from testbed.spec import Spec, check_data, load_spec
from testbed.wait import wait_for
from topologies.model import Topology


KEY_FILE = "auth.key"  # the run's HMAC-SHA256 key (0600): nodes and DCC sign every message


class RunError(RuntimeError):
    """The run could not complete; the message says where to look."""


def new_run_id() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


@contextmanager
def sigterm_as_interrupt():
    """Let SIGTERM and SIGINT unwind like Ctrl-C so every ``finally`` clean-up
    runs. SIGINT is set explicitly: a process started in the background by a
    non-interactive shell inherits SIGINT as ignored, and a run must still stop."""
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    old_term = signal.signal(signal.SIGTERM, handler)
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)


@contextmanager
def captures(net: EmulatedNetwork, intfs: list[str], pcap_dir: Path, run_id: str):
    """tcpdump on each requested interface, in the namespace that owns it."""
    procs = []
    peer = {}
    for a, ap, b, bp in plan_ports(net.topo):
        peer[f"{a}-eth{ap}"], peer[f"{b}-eth{bp}"] = f"{b}-eth{bp}", f"{a}-eth{ap}"
    try:
        for intf in intfs:
            node = intf.split("-eth")[0]
            # named by both ends of the link, e.g. s1-eth1~s2-eth3.pcap
            path = pcap_dir / f"{intf}~{peer[intf]}.pcap"
            # full snap length: `daitn trace` reassembles model transfers from TCP
            cmd = ["tcpdump", "-i", intf, "-w", str(path), "-U", "-Z", "root"]
            if node.startswith("h"):
                p = net.host(node).popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            else:
                p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     env=dict(os.environ, DAITN_RUN=run_id))
            procs.append((intf, p))
        for intf, p in procs:
            wait_for(lambda: (pcap_dir / f"{intf}~{peer[intf]}.pcap").exists() or p.poll() is not None,
                     10, f"tcpdump to start on {intf}")
            if p.poll() is not None:
                raise RunError(f"tcpdump on {intf} exited: {p.stderr.read().decode(errors='replace')}")
        yield
    finally:
        for _, p in procs:
            if p.poll() is None:
                p.terminate()
        for _, p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()


@contextmanager
def node_processes(run_dir: Path, conf: dict, run_id: str):
    """The node launcher (one parent, one forked child per host)."""
    path = run_dir / "nodes.json"
    path.write_text(json.dumps(conf, indent=1))
    env = dict(os.environ, DAITN_RUN=run_id,
               PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log = open(run_dir / "logs" / "nodes.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "nodes.launcher", str(path)], env=env,
                            stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO_ROOT),
                            start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # The node processes share the launcher's process group. If the launcher
        # died before its children (e.g. signalled while still forking them), they
        # are orphans now: end whatever is left of the group and wait for it.
        _end_group(proc.pid)
        log.close()


def _end_group(pgid: int, timeout: float = 10.0):
    def gone():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        live = [p for p in os.listdir("/proc") if p.isdigit() and _pgid_state(int(p), pgid)]
        return not live

    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return
    try:
        wait_for(gone, timeout, f"node processes of group {pgid} to exit")
    except TimeoutError:
        pass  # reported by `daitn clean` / the leftovers check, not hidden


def _pgid_state(pid: int, pgid: int) -> bool:
    """True if ``pid`` is a live (not zombie) member of process group ``pgid``."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return int(fields[2]) == pgid and fields[0] not in ("Z", "X")


def knowledge_timeout(nodes: int) -> float:
    """Seconds to wait for every node's first knowledge report: 120, plus 0.5 s a node
    beyond 100 (forking and starting 200 nodes on 2 cores takes tens of seconds)."""
    return 120.0 + 0.5 * max(0, nodes - 100)


def node_config(spec: Spec, topo: Topology, run_dir: Path, pids: dict[str, int], dims: dict) -> dict:
    return {
        "run_dir": str(run_dir), "seed": spec.seed,
        "hosts": {h: {"pid": pids[h], "ip": host_ip(h), "roles": roles}
                  for h, roles in sorted(spec.nodes.items(), key=lambda kv: int(kv[0][1:]))},
        "data": spec.data.model_dump(), "model": spec.model.model_dump(),
        "training": spec.training.model_dump(), "tasks": [t.model_dump() for t in spec.tasks],
        "mpvu": spec.hosts_with("mpvu")[0], "data_nodes": spec.hosts_with("data"),
        "key_file": str(run_dir / KEY_FILE),
        "host_options": {h: o.model_dump() for h, o in spec.hosts.items()},
        "knowledge": spec.knowledge.model_dump(), "inference": spec.inference.model_dump(),
        "workloads": [w.model_dump() for w in spec.workloads], "dims": dims,
        "compute_nodes": spec.hosts_with("compute"),
        "serve_s": spec.serve_s,
        "mode": spec.mode, "modes": spec.modes.model_dump(),  # AATS and the baselines (nodes/modes.py)
        "late": sorted({e.node for e in spec.timeline if e.kind == "join_node"}),
    }


def _query_sources(spec: Spec, model: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for w in spec.workloads:
        if w.model == model:
            out[w.client] = out.get(w.client, 0.0) + w.rate_qps
    return out


def dcc_config(spec: Spec, topo: Topology, token_path: Path, dims: dict | None = None) -> dict:
    """What the DCC is told besides the fabric: roles and host options, the links
    as configured (capacities: OVS cannot report HTB-shaped rates), knowledge
    timing, and where its northbound API listens."""
    links = [{"a": a, "a_port": None if a.startswith("h") else ap, "b": b,
              "b_port": None if b.startswith("h") else bp, "bw": ln.bw_mbit, "delay": ln.delay_ms}
             for ln, (a, ap, b, bp) in zip(topo.links, plan_ports(topo))]
    return {"roles": spec.nodes, "hosts": {h: o.model_dump() for h, o in spec.hosts.items()},
            "links": links, "knowledge": spec.knowledge.model_dump(),
            "policy": spec.controller.policy, "reserve_mbps": spec.controller.reserve_mbps, "seed": spec.seed,
            "local_epochs": spec.training.local_epochs, "rollback_drop": spec.controller.rollback_drop,
            "max_local_epochs": spec.training.max_local_epochs, "plan_inputs": spec.controller.plan_inputs,
            # tasks submitted through the API get ids after these; queries must fit the model's input
            "task_ids": [t.id for t in spec.tasks], "features": (dims or {}).get("in_features"),
            # replica placement (tasks[].replicas): k and the query sources of the model's workloads
            "placement": {str(t.id): {"k": t.replicas, "candidates": spec.hosts_with("inference"),
                                      "sources": _query_sources(spec, t.id)}
                          for t in spec.tasks if t.replicas},
            "api": {"port": free_port(), "token_file": str(token_path)}}


class Timeline:
    """Applies the spec's timeline events at their time after the clients start."""

    def __init__(self, spec: Spec, net: EmulatedNetwork, api: ApiClient, run_dir: Path, say, ev, ctl=None):
        self.pending = sorted(spec.timeline, key=lambda e: e.at_s)
        self.net, self.api, self.run_dir, self.say, self.ev = net, api, run_dir, say, ev
        self.roles = spec.nodes
        self.ctl = ctl
        self.paused: dict[int, float] = {}  # pid -> when to resume it
        self.t0: float | None = None
        # WiFi stations (ns-3): followed from the start, so the DCC knows their links'
        # capacities before the clients ask for a plan
        self.wifi = WifiMonitor(spec, net, api, say, ev) if net.wifi_status() else None
        if self.wifi:
            self.wifi.poll()

    def start(self):
        self.t0 = time.time()

    def poll(self):
        while self.t0 is not None and self.pending and time.time() - self.t0 >= self.pending[0].at_s:
            self.apply(self.pending.pop(0))
        for pid, until in list(self.paused.items()):
            if time.time() >= until:
                self._resume(pid)
        if self.wifi:   # the WiFi stations: samples, and their links' capacities to the DCC
            self.wifi.poll()

    def _resume(self, pid: int):
        node = next((n for n, p in json.loads((self.run_dir / "node-pids.json").read_text()).items()
                     if p == pid), str(pid))
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        self.paused.pop(pid, None)
        self.say(f"timeline: node {node} resumed (SIGCONT)")
        self.ev("node_resumed", node=node, pid=pid)

    def close(self):
        """Never leave a node stopped (the run ends, or fails, while it is paused)."""
        for pid in list(self.paused):
            self._resume(pid)
        if self.wifi:
            self.wifi.poll()

    def apply(self, e):
        if e.kind == "set_link":
            a, b = e.link
            ln = self.net.set_link(a, b, bw=e.bw, loss=e.loss, delay=e.delay)
            self.say(f"timeline: link {a}-{b} now {ln.bw_mbit} Mbit/s, {ln.loss_pct or 0}% loss, "
                     f"{ln.delay_ms or 0} ms delay")
            self.ev("link_changed", link=[a, b], bw=ln.bw_mbit, loss=ln.loss_pct, delay=ln.delay_ms, at_s=e.at_s)
            if e.bw is not None:
                try:  # OAM: the DCC learns the configured capacity; utilisation it measures
                    self.api.set_link_capacity(a, b, ln.bw_mbit)
                except ApiError as err:
                    raise RunError(f"could not tell the DCC about link {a}-{b}: {err}") from None
        elif e.kind in ("link_down", "link_up"):
            a, b = e.link
            up, t = e.kind == "link_up", time.time()
            self.net.set_link_state(a, b, up)
            self.say(f"timeline: link {a}-{b} {'up' if up else 'down'}")
            self.ev("link_state_changed", link=[a, b], up=up, at_s=e.at_s, t=t)  # t: when it was cut
        elif e.kind == "join_node":
            (self.run_dir / "joined").mkdir(exist_ok=True)
            (self.run_dir / "joined" / e.node).touch()
            self.say(f"timeline: node {e.node} joins")
            self.ev("node_joins", node=e.node, at_s=e.at_s)
        elif e.kind == "drift":
            # the node reads its control file (nodes.roles.DataNode.control) within ~0.5 s
            ctl = self.run_dir / "control" / f"{e.node}.jsonl"
            ctl.parent.mkdir(exist_ok=True)
            cmd = {"kind": "drift", "labels": list(e.labels), "fraction": e.fraction, "at_s": e.at_s}
            with open(ctl, "a") as f:
                f.write(json.dumps(cmd) + "\n")
            self.say(f"timeline: data at {e.node} drifts to labels {e.labels} ({e.fraction:.0%} of its samples)")
            self.ev("drift_requested", node=e.node, labels=list(e.labels), fraction=e.fraction, at_s=e.at_s)
        elif e.kind in ("move_station", "set_velocity"):
            if e.kind == "move_station":
                got = self.net.move_station(e.station, e.to, e.speed or 0.0)
                self.say(f"timeline: station {e.station} moves from {got['from'][:2]} to {got['to'][:2]} m"
                         + (f" at {e.speed:g} m/s (arrives in {got['eta_s']:.1f} s)" if e.speed else ""))
                self.ev("station_moving", station=e.station, **{"from": got["from"]}, to=got["to"], speed=e.speed or 0.0,
                        eta_s=got["eta_s"], at_s=e.at_s, t_sim_s=got["t_sim_s"])
            else:
                got = self.net.set_velocity(e.station, e.velocity)
                self.say(f"timeline: station {e.station} at {got['position'][:2]} m now moves at "
                         f"{got['velocity'][:2]} m/s")
                self.ev("station_velocity", station=e.station, position=got["position"], velocity=got["velocity"],
                        at_s=e.at_s, t_sim_s=got["t_sim_s"])
            if self.wifi:
                self.wifi.poll()
        elif e.kind == "restart_controller":
            self.ev("controller_killed", at_s=e.at_s, down_s=e.for_s or 0.0)
            self.say(f"timeline: the DCC is killed (SIGKILL) and restarted after {e.for_s or 0:g} s")
            gone = self.ctl.crash_and_restart(e.for_s or 0.0)
            self.say(f"timeline: the DCC listens again after {gone:.1f} s; it rebuilds its state from the "
                     f"switches and the nodes' reports and requests")
            self.ev("controller_restarted", seconds_down=round(gone, 3))
        elif e.kind == "pause_node":
            pid = json.loads((self.run_dir / "node-pids.json").read_text())[e.node]
            os.kill(pid, signal.SIGSTOP)
            self.paused[pid] = time.time() + e.for_s
            self.say(f"timeline: node {e.node} paused for {e.for_s:g} s (SIGSTOP: no reports, no work)")
            self.ev("node_paused", node=e.node, pid=pid, for_s=e.for_s, at_s=e.at_s)
        elif e.kind == "crash_node" and e.task is not None:
            try:  # the node the model is at (or on its way to), as the DCC tracks it
                t = self.api.get("tasks").get(str(e.task)) or {}
            except ApiError as err:
                t = {"error": str(err)}
            node = t.get("heading")
            roles = self.roles.get(node, [])
            if not t.get("active") or node is None or not ({"data", "compute"} & set(roles)):
                why = t.get("error") or (f"task {e.task} is not travelling (heading {node!r}, "
                                         f"active {t.get('active')})")
                self.say(f"timeline: no holder of task {e.task} to crash: {why}")
                self.ev("crash_skipped", task=e.task, reason=why, at_s=e.at_s)
            else:
                self.apply(e.model_copy(update={"task": None, "node": node}))
        elif e.kind == "crash_node":
            pids = json.loads((self.run_dir / "node-pids.json").read_text())
            (self.run_dir / "crashed").mkdir(exist_ok=True)
            (self.run_dir / "crashed" / e.node).touch()
            try:
                os.kill(pids[e.node], signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.say(f"timeline: node {e.node} crashed (SIGKILL to pid {pids[e.node]})")
            self.ev("node_crashed", node=e.node, pid=pids[e.node], at_s=e.at_s)


class WifiMonitor:
    """Follows the WiFi stations in ns-3's status lines: records each station's position,
    channel and throughput (``wifi_station`` events, one per status line) and tells the
    DCC each station link's capacity (POST /v1/links) when the rate the channel model
    gives at the station's position changes (``wifi_capacity`` events).

    Why the channel model's rate: it is what the AP would pick for the station now (the
    Ideal manager's choice at the SNR the station's position gives), known at once and
    whether or not traffic flows, as a real AP knows each station's current bitrate. The
    DCC cannot see it: OVS reports the AP's tap as a 10 Gbit/s port. The capacity told is
    :func:`testbed.ns3link.wifi.capacity_mbps` of that rate (air-time model of 1500-byte
    frames), and a station out of reach gets OUT_OF_REACH_MBPS."""

    def __init__(self, spec: Spec, net: EmulatedNetwork, api: ApiClient, say, ev):
        from testbed.ns3link.wifi import station_segments
        self.net, self.api, self.say, self.ev = net, api, say, ev
        self.segments = station_segments(net.topo)
        tell = {seg.name or f"wifi{i + 1}": seg.tell_dcc for i, seg in enumerate(spec.wifi)}
        self.tell = {h: tell.get(seg.name, True) for h, seg in self.segments.items()}
        self.last_t = None
        self.prev: dict[str, dict] = {}
        self.told: dict[str, float] = {}
        self.stats: dict[str, dict] = {}

    def poll(self):
        from testbed.ns3link.wifi import capacity_mbps
        stations = self.net.wifi_status()
        t = next(iter(stations.values()), {}).get("unix_s")
        if t is None or t == self.last_t:
            return
        self.last_t = t
        for host, st in sorted(stations.items()):
            seg = self.segments[host]
            prev = self.prev.get(host)
            rates = {}
            for way in ("up", "down"):
                if prev and st["unix_s"] > prev["unix_s"]:
                    rates[way] = round((st[way]["bytes_out"] - prev[way]["bytes_out"]) * 8
                                       / (st["unix_s"] - prev["unix_s"]) / 1e6, 3)
                else:
                    rates[way] = None
            self.prev[host] = st
            sample = {"station": host, "segment": st["segment"], "t_sim_s": st["t_sim_s"],
                      "position": st["position"], "velocity": st["velocity"], "distance_m": st["distance_m"],
                      "rx_dbm": st["rx_dbm"], "snr_db": st["snr_db"], "model_rate_mbps": st["model_rate_mbps"],
                      "associated": st["associated"], "up_rate_mbps": st["up_rate_mbps"],
                      "down_rate_mbps": st["down_rate_mbps"], "up_mbps": rates["up"], "down_mbps": rates["down"]}
            self.ev("wifi_station", **sample)
            agg = self.stats.setdefault(host, {"segment": st["segment"], "samples": 0, "start_position": st["position"],
                                               "min_distance_m": st["distance_m"], "max_distance_m": st["distance_m"],
                                               "max_model_rate_mbps": st["model_rate_mbps"],
                                               "min_model_rate_mbps": st["model_rate_mbps"], "max_up_mbps": 0.0,
                                               "max_down_mbps": 0.0, "capacity_told": []})
            agg["samples"] += 1
            agg["end_position"] = st["position"]
            agg["min_distance_m"] = min(agg["min_distance_m"], st["distance_m"])
            agg["max_distance_m"] = max(agg["max_distance_m"], st["distance_m"])
            agg["min_model_rate_mbps"] = min(agg["min_model_rate_mbps"], st["model_rate_mbps"])
            agg["max_model_rate_mbps"] = max(agg["max_model_rate_mbps"], st["model_rate_mbps"])
            for way in ("up", "down"):
                agg[f"max_{way}_mbps"] = max(agg[f"max_{way}_mbps"], rates[way] or 0.0)
            agg["assocs"], agg["deassocs"] = st["assocs"], st["deassocs"]
            rate = st["model_rate_mbps"]
            if self.tell[host] and self.told.get(host) != rate:
                cap = round(capacity_mbps(rate, seg.standard), 3)
                try:
                    self.api.set_link_capacity(host, seg.ap_switch, cap)
                except ApiError as err:
                    raise RunError(f"could not tell the DCC about WiFi link {host}-{seg.ap_switch}: {err}") from None
                first = host not in self.told
                self.told[host] = rate
                agg["capacity_told"].append({"t_sim_s": st["t_sim_s"], "phy_mbps": rate, "capacity_mbps": cap})
                self.ev("wifi_capacity", station=host, link=[host, seg.ap_switch], phy_mbps=rate, capacity_mbps=cap,
                        distance_m=st["distance_m"], snr_db=st["snr_db"], t_sim_s=st["t_sim_s"], first=first)
                if not first:
                    self.say(f"wifi: {host} at {st['distance_m']:.0f} m from the AP: "
                             + (f"{rate:g} Mbit/s PHY" if rate else "out of reach")
                             + f"; DCC told link {host}-{seg.ap_switch} carries {cap:g} Mbit/s")

    def summary(self) -> dict:
        return self.stats


def _check_ns3(net: EmulatedNetwork):
    """Fail the run if the ns-3 link process died or fell behind real time."""
    err = net.ns3_failure()
    if err is not None:
        raise RunError(f"the ns-3 links failed, so this run's results are not valid: {err}") from None


def manifest(spec: Spec, topo: Topology, run_id: str, caps, spec_path: str) -> dict:
    import importlib.metadata as md

    def ver(pkg):
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    return {
        "run_id": run_id, "spec": spec_path, "name": spec.name, "seed": spec.seed,
        "started": datetime.now(timezone.utc).isoformat(),
        "machine": {"hostname": platform.node(), "kernel": platform.release(),
                    "python": platform.python_version(), "cpus": os.cpu_count()},
        "versions": {p: ver(p) for p in ("torch", "os-ken", "scapy", "topohub", "networkx", "numpy",
                                         "scikit-learn", "mininet")},
        "capabilities": caps.to_dict(),
        # which backend emulated each link (links.backend and per-link `backend`, resolved)
        "links": [{"a": ln.a, "b": ln.b, "backend": be, "bw": ln.bw_mbit, "delay": ln.delay_ms,
                   "loss": ln.loss_pct}
                  for ln, be in zip(topo.links, link_backends(topo, spec.links.backend, caps.netem))],
    }


def run(spec_path: str, out: str | None = None, overrides: list[str] | None = None,
        quiet: bool = False) -> Path:
    spec, topo = load_spec(spec_path, overrides)  # SpecError before anything starts
    dims = check_data(spec, spec_path)  # bad data (files, partition) fails here too
    say = Progress(quiet)
    if spec.cluster is not None:  # Mininet cluster mode: placed and checked, not run yet (testbed/cluster.py)
        from testbed.cluster import plan_cluster, refuse_run
        refuse_run(plan_cluster(spec, topo), say)
    caps = probe()
    run_id = new_run_id()
    # One run at a time on a machine (names are shared); then refuse what cannot
    # be emulated (delay without netem, taken names) before anything, even the
    # run directory, is created.
    with emulation_lock(say):
        EmulatedNetwork(topo, run_id, caps, 0, backend=spec.links.backend).preflight()
        return _run_locked(spec, topo, spec_path, caps, run_id, out, say, dims)


def _run_locked(spec, topo, spec_path, caps, run_id, out, say, dims) -> Path:
    run_dir = Path(out) if out else REPO_ROOT / "runs" / f"{spec.name}-{run_id}"
    if run_dir.exists() and any(run_dir.iterdir()):
        raise RunError(f"output directory {run_dir} is not empty; choose another --out")
    for sub in ("pcaps", "flows", "logs", "plots", "events", "results"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    (run_dir / "spec.resolved.yaml").write_text(
        yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    key_path = run_dir / KEY_FILE
    key_path.touch(mode=0o600)
    key_path.write_bytes(secrets.token_bytes(32))
    man = manifest(spec, topo, run_id, caps, str(spec_path))
    (run_dir / "manifest.json").write_text(json.dumps(man, indent=1))
    os.environ["DAITN_RUN"] = run_id  # Mininet host shells inherit the tag
    runner_events = []

    def ev(kind, **data):
        runner_events.append({"t": time.time(), "src": "testbed", "kind": kind, **data})

    say(f"run {run_id}: {spec.name} on {topo.name} ({len(topo.switches)} switches, "
        f"{len(topo.hosts)} hosts), {caps.datapath}space OVS -> {run_dir}")
    token_path = run_dir / TOKEN_FILE
    token_path.touch(mode=0o600)
    token_path.write_text(secrets.token_hex(16))
    fabric = fabric_of(topo, extra=dcc_config(spec, topo, token_path, dims))
    net_info = {"hosts": len(topo.hosts), "switches": len(topo.switches), "links": len(topo.links),
                "datapath": caps.datapath}
    try:
        with sigterm_as_interrupt(), ExitStack() as stack:
            ctl = stack.enter_context(ControllerProcess(run_dir, fabric, run_id,
                                                        lldp_interval=spec.controller.lldp_interval_s,
                                                        key_file=key_path))
            t0 = time.time()
            net = stack.enter_context(EmulatedNetwork(topo, run_id, caps, ctl.port, log=say,
                                                      backend=spec.links.backend, run_dir=run_dir))
            net_info["setup_seconds"] = round(time.time() - t0, 3)
            ev("network_up", seconds=net_info["setup_seconds"])
            say(f"network up in {net_info['setup_seconds']:.1f} s; waiting for the DCC to learn the topology")
            t1 = time.time()
            st = ctl.wait_converged(spec.controller.converge_timeout_s)
            net_info["convergence_seconds"] = round(time.time() - t1, 3)
            ev("dcc_converged", seconds=net_info["convergence_seconds"], links=st["links_discovered"])
            say(f"DCC converged in {net_info['convergence_seconds']:.1f} s: {st['links_discovered']} "
                f"directed links, {st['flows_installed']} flows installed")
            stack.enter_context(captures(net, spec.capture, run_dir / "pcaps", run_id))
            conf = node_config(spec, topo, run_dir, net.host_pids(), dims)
            nodes = stack.enter_context(node_processes(run_dir, conf, run_id))
            reporting = set(spec.nodes) - {e.node for e in spec.timeline if e.kind == "join_node"}

            def known():
                if nodes.poll() is not None:
                    raise RunError(f"node processes exited early; see {run_dir/'logs'}")
                if not ctl.alive():
                    raise RunError(f"the controller died; see {ctl.log_path}")
                _check_ns3(net)
                return reporting <= set(ctl.state().get("knowledge", {}))

            # every 0.5 s: each poll parses the DCC's state file, ~1 MB at 200 hosts
            wait_for(known, knowledge_timeout(len(reporting)), "knowledge reports from every node at the DCC",
                     interval=0.5, last=lambda: sorted(ctl.state().get("knowledge", {})))
            say(f"DCC has knowledge reports from all {len(reporting)} nodes; clients start")
            api = ApiClient.for_run(run_dir)
            timeline = Timeline(spec, net, api, run_dir, say, ev, ctl=ctl)
            stack.callback(timeline.close)  # unwinds before the nodes stop: no node left paused
            ev("clients_go")
            (run_dir / ".go").touch()
            timeline.start()
            # serving (serve_s > 0) ends when the clients have been idle that long; tasks
            # submitted meanwhile bring their own deadlines, so no overall bound then
            deadline = (time.time() + max(t.deadline_s for t in spec.tasks) + 90 if not spec.serve_s
                        else float("inf"))
            if spec.serve_s:
                say(f"serving: submit tasks and queries with `daitn submit {run_dir} ...`; the run ends "
                    f"{spec.serve_s:g} s after the clients' last work (Ctrl-C ends it at once)")
            watcher = results.EventWatcher(run_dir, say)
            say.start_live()  # a live table of the tasks on a terminal (testbed/progress.py)
            last_maps, maps_due = None, 0.0
            while nodes.poll() is None:
                watcher.poll()
                timeline.poll()
                if time.time() >= maps_due:  # the maps as last seen while the nodes ran
                    maps_due = time.time() + 1.0
                    try:
                        last_maps = api.get("maps")
                    except ApiError as err:
                        say(f"DRRT/QRRT not readable: {err}")
                if not ctl.alive():
                    raise RunError(f"the controller died; see {ctl.log_path}")
                _check_ns3(net)
                if time.time() > deadline:
                    raise RunError("tasks did not finish within their deadline + 90 s; see logs/")
                time.sleep(0.2)
            watcher.poll()
            say.stop_live()
            ev("nodes_finished", returncode=nodes.returncode)
            if timeline.pending:  # the work ended first: say so, never drop them silently
                left = [f"{e.kind} at {e.at_s:g} s" for e in timeline.pending]
                say(f"timeline: {len(left)} event(s) never applied - the nodes finished first: {', '.join(left)}")
                ev("timeline_not_applied", events=[e.model_dump() for e in timeline.pending])
            if last_maps is not None:
                (run_dir / "maps.json").write_text(json.dumps(last_maps, indent=1, sort_keys=True))
            if nodes.returncode != 0:
                say(f"node launcher exited with {nodes.returncode}; see {run_dir/'logs'}/nodes.log")
            results.dump_flows(topo.switches, run_dir / "flows")
            st_end = ctl.state()
            net_info["flows_installed_by_dcc"] = st_end.get("flows_installed")
            net_info["flows_deleted_by_dcc"] = st_end.get("flows_deleted")
            net_info["flows_current_by_dcc"] = st_end.get("flows_current")
            if timeline.wifi:
                timeline.wifi.poll()
                net_info["wifi"] = timeline.wifi.summary()
            if net.ns3 is not None:
                net.ns3.stop()      # its lag verdict covers the whole run, to the last frame
                _check_ns3(net)
                rep = net.ns3.report
                if rep is not None:
                    net_info["ns3_max_lag_ms"] = round(rep.max_ms, 3)
            errs = ctl.logged_exceptions()
            if errs:
                ev("controller_errors", lines=errs[:20])
    except KeyboardInterrupt:
        say.stop_live()
        say("interrupted: everything this run started has been stopped")
        raise
    finally:
        say.stop_live()
        (run_dir / ".go").unlink(missing_ok=True)
        os.environ.pop("DAITN_RUN", None)
        results.write_events(run_dir, runner_events)
    summary = results.summarize(run_dir, spec, net_info)
    results.plot(run_dir)
    if (run_dir / "maps.json").exists():
        from testbed.mapsview import draw_maps, load_snapshot
        draw_maps(load_snapshot(run_dir / "maps.json"), topo, run_dir / "plots" / "maps.png",
                  title=f"{spec.name}: DRRT/QRRT at the end of the run")
    report.after_run(run_dir, say)  # RUN/report/report.md; never fails a finished run
    for t in summary["tasks"]:
        say(f"task {t['id']}: {'reached' if t['reached'] else 'missed'} target {t['target_accuracy']} "
            f"(final {'-' if t['final_accuracy'] is None else format(t['final_accuracy'], '.4f')}) after {t['hops']} hops via {' -> '.join(t['itinerary'])}; "
            f"{t['model_bytes_sent']} model bytes sent, end: {t['end_reason']}")
    say(f"results in {run_dir}")
    return run_dir


__all__ = ["run", "RunError", "NetworkError"]
