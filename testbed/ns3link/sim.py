"""The ns-3 process of an experiment: all its ns-3 links, in real time, until told to stop.

``python -m testbed.ns3link.sim CONFIG.json`` (started by :class:`testbed.ns3link.Ns3Links`,
which opened the taps and passes their descriptors). The per-packet work is C++
(ns3link.cc, compiled by build.py); this module loads it with ctypes, builds the
links and runs the real-time simulator. Progress goes to the config's status file as JSON lines
(``starting``, ``running``, ``status`` every ``status_every_s``, ``stopped``);
messages go to stdout (the run's ``logs/ns3.log``).

Commands: JSON lines on stdin change the running simulation (:class:`testbed.ns3link.Ns3Links`
writes them): ``{"id": N, "op": "set_link", "link": NAME, "rate_mbps": R, "delay_ms": D,
"loss_pct": L}`` (each parameter optional; a rate of 0: unlimited), ``{"id": N, "op": "move",
"station": HOST, "to": [x, y, z], "speed": S}`` (S m/s in a straight line; 0: at once) and
``{"id": N, "op": "velocity", "station": HOST, "velocity": [vx, vy, vz]}``. A reader thread
turns each into a call of the library, which schedules it into the simulator; the
simulator thread applies it and writes ``{"event": "applied", "id": N, ...}`` to the status
file, or ``{"event": "rejected", "id": N, "reason": ...}`` for a command that cannot apply.

Exit codes: 0 stopped by SIGTERM/SIGINT; 2 bad config or descriptors; 3 fell
behind real time by more than ``max_lag_ms``; 4 ran at real-time priority
without a pause for longer than RLIMIT_RTTIME allows; 1 anything else.
"""
from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys
import threading
import time

from testbed.ns3link.config import ConfigError, SimConfig, load_sim_config

EXIT_OK, EXIT_ERROR, EXIT_CONFIG, EXIT_LAG, EXIT_CPU = 0, 1, 2, 3, 4
# At real-time priority a thread that runs this long without blocking gets SIGXCPU
# (we stop cleanly), and SIGKILL at the hard limit: an overloaded or broken
# simulator must not keep a core of a shared machine from everyone else.
RTTIME_SOFT_US, RTTIME_HARD_US = 500_000, 2_000_000
PR_SET_PDEATHSIG = 1
PARENT_ENV = "NS3LINK_PARENT_PID"   # set by Ns3Links


def log(msg: str):
    print(f"{time.strftime('%H:%M:%S')} ns3link: {msg}", flush=True)


def _die_with_parent():
    """SIGTERM this process when the testbed process that started it dies, so a
    crashed run cannot leave a simulator (and its taps) behind. (The kernel ties
    this to the parent *thread*: start Ns3Links from a thread that outlives it.)"""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    parent = os.environ.get(PARENT_ENV)
    if parent and int(parent) != os.getppid():   # it died before prctl took effect
        log("the process that started ns-3 is gone; not starting")
        sys.exit(EXIT_ERROR)


def _check_fds(cfg: SimConfig):
    ends = [(f"link {ln.name!r} end {side}", getattr(ln, side)) for ln in cfg.links for side in ("a", "b")]
    for w in cfg.wifi:
        ends += [(f"wifi {w.name!r} ap", w.ap)] + [(f"wifi {w.name!r} station {st.host!r}", st.end)
                                                   for st in w.stations]
    for what, end in ends:
        try:
            os.fstat(end.fd)
        except OSError as e:
            raise ConfigError(f"{what}: descriptor {end.fd} is not open in the ns-3 process ({e}); "
                              "start it through Ns3Links, which opens the taps and passes them "
                              "(pass_fds)") from e


def _status(cfg: SimConfig, event: str, **fields):
    with open(cfg.status_path, "a") as f:
        f.write(json.dumps({"event": event, "unix_s": round(time.time(), 6), **fields}) + "\n")


def load_library():
    """The compiled ns-3 side (build.py), built now if set-up did not; (lib, info)."""
    from testbed.ns3link import build

    t0 = time.monotonic()
    path = build.library_path()
    built = False
    if not path.exists():
        log(f"{path} is missing (set-up builds it: {sys.executable} -m testbed.ns3link.build); "
            "building it now")
        build.build(log=log)
        built = True
    lib = ctypes.CDLL(str(path))
    lib.ns3link_setup.argtypes = [ctypes.c_uint32, ctypes.c_uint64]
    lib.ns3link_request_stop.argtypes = [ctypes.c_int]
    lib.ns3link_add_link.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_char_p,
                                     ctypes.c_int, ctypes.c_int, ctypes.c_char_p,
                                     ctypes.c_double, ctypes.c_double, ctypes.c_double, ctypes.c_uint32]
    lib.ns3link_run.argtypes = [ctypes.c_char_p, ctypes.c_double, ctypes.c_double, ctypes.c_double,
                                ctypes.c_char_p, ctypes.c_size_t]
    d, i, s, u64 = ctypes.c_double, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint64
    lib.ns3link_add_wifi.argtypes = [s, s, s, d, d, d, d, d, d, d, s, i, i, s, s, ctypes.c_size_t]
    lib.ns3link_add_station.argtypes = [i, s, s, i, i, s, d, d, d, d, d, d]
    lib.ns3link_set_link.argtypes = [i, d, d, d, u64]
    lib.ns3link_wifi_move.argtypes = [i, i, d, d, d, d, u64]
    lib.ns3link_wifi_velocity.argtypes = [i, i, d, d, d, u64]
    lib.ns3link_reject.argtypes = [u64, s]
    for name in ("ns3link_setup", "ns3link_install_signal_handlers", "ns3link_request_stop",
                 "ns3link_destroy"):
        getattr(lib, name).restype = None
    return lib, {"library": str(path), "built_now": built, "load_s": round(time.monotonic() - t0, 3)}


class CommandReader(threading.Thread):
    """Reads command lines from stdin and hands each to the library (module doc).

    ctypes releases the GIL during ``ns3link_run``, so this thread runs beside the
    simulator; the library only schedules the change, the simulator thread applies it."""

    def __init__(self, lib, links: dict[str, int], stations: dict[str, tuple[int, int]]):
        super().__init__(name="ns3link-commands", daemon=True)
        self.lib, self.links, self.stations = lib, links, stations

    def run(self):
        for raw in sys.stdin.buffer:
            try:
                cmd = json.loads(raw)
                cid = int(cmd.get("id", 0))
            except (ValueError, TypeError, AttributeError) as e:
                log(f"ignoring a command that is not a JSON object with an integer id: {raw[:200]!r} ({e})")
                continue
            try:
                code = self.apply(cmd, cid)
            except (KeyError, ValueError, TypeError) as e:
                why = f"bad command {cmd!r}: {e}"
                log(why)
                code = self.lib.ns3link_reject(cid, why.encode()[:400])
            if code == -1:
                log(f"command {cid} arrived while the simulator was not running; dropped")

    def apply(self, cmd: dict, cid: int) -> int:
        op = cmd.get("op")
        if op == "set_link":
            if cmd["link"] not in self.links:
                raise ValueError(f"no link {cmd['link']!r} (links: {sorted(self.links)})")
            def value(key, scale, lo, hi):
                v = cmd.get(key)
                if v is None:
                    return -1.0
                if not lo <= float(v) <= hi:
                    raise ValueError(f"{key} must be within {lo}..{hi}, got {v}")
                return float(v) * scale
            return self.lib.ns3link_set_link(self.links[cmd["link"]], value("rate_mbps", 1e6, 0, 100_000),
                                             value("delay_ms", 1e6, 0, 60_000), value("loss_pct", 0.01, 0, 100),
                                             cid)
        if op in ("move", "velocity"):
            if cmd["station"] not in self.stations:
                raise ValueError(f"no station {cmd['station']!r} (stations: {sorted(self.stations)})")
            seg, sta = self.stations[cmd["station"]]
            if op == "move":
                to = [float(c) for c in cmd["to"]] + [0.0] * (3 - len(cmd["to"]))
                speed = float(cmd.get("speed", 0.0))
                if len(to) != 3 or speed < 0:
                    raise ValueError("move needs to: [x, y(, z)] and speed >= 0")
                return self.lib.ns3link_wifi_move(seg, sta, *to, speed, cid)
            v = [float(c) for c in cmd["velocity"]] + [0.0] * (3 - len(cmd["velocity"]))
            if len(v) != 3:
                raise ValueError("velocity needs [vx, vy(, vz)]")
            return self.lib.ns3link_wifi_velocity(seg, sta, *v, cid)
        raise ValueError(f"unknown op {op!r} (set_link, move, velocity)")


def run(cfg: SimConfig, t_exec: float) -> int:
    """Build the links and run until stopped; return the exit code."""
    # Until ns3link's own handlers are installed, remember SIGTERM/SIGINT: a stop
    # asked for during start-up is acted on by the first tick, neither lost nor
    # killing the process half-built.
    pending = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda s, _f: pending.append(s))
    from testbed.ns3link.build import BuildError
    try:
        lib, info = load_library()
    except (BuildError, OSError) as e:
        log(f"cannot load the ns-3 side of the links: {e}")
        return EXIT_ERROR
    lib.ns3link_install_signal_handlers()
    if cfg.rt_priority:
        # Threads ns-3 starts later (the taps' readers) inherit the policy.
        resource.setrlimit(resource.RLIMIT_RTTIME, (RTTIME_SOFT_US, RTTIME_HARD_US))
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(cfg.rt_priority))
        info["rt_priority"] = cfg.rt_priority
    t_loaded = time.monotonic()
    lib.ns3link_setup(cfg.seed, cfg.run)
    for link in cfg.links:
        lib.ns3link_add_link(link.name.encode(), link.a.fd, link.a.mtu, link.a.pcap.encode(),
                             link.b.fd, link.b.mtu, link.b.pcap.encode(), float(link.rate_bps),
                             float(link.delay_ms) * 1e6, float(link.loss_pct) / 100.0, int(link.queue_packets))
        log(f"link {link.name}: rate {link.rate_bps / 1e6 if link.rate_bps else 'unlimited'} Mbit/s, "
            f"delay {link.delay_ms} ms, loss {link.loss_pct} %, queue {link.queue_packets} packets")
    stations = {}
    for k, w in enumerate(cfg.wifi):
        err = ctypes.create_string_buffer(256)
        seg = lib.ns3link_add_wifi(w.name.encode(), w.standard.encode(), w.rate_manager.encode(),
                                   float(w.tx_power_dbm), float(w.path_loss_exponent), float(w.reference_loss_db),
                                   float(w.rx_sensitivity_dbm), *map(float, w.ap_position), w.ap_mac.encode(), w.ap.fd, w.ap.mtu,
                                   w.ap.pcap.encode(), err, len(err))
        if seg < 0:
            log(f"wifi {w.name}: {err.value.decode(errors='replace')}")
            return EXIT_CONFIG
        for j, st in enumerate(w.stations):
            lib.ns3link_add_station(seg, st.host.encode(), st.mac.encode(), st.end.fd, st.end.mtu,
                                    st.end.pcap.encode(), *map(float, st.position), *map(float, st.velocity))
            stations[st.host] = (seg, j)
        log(f"wifi {w.name}: {w.standard}, {w.rate_manager} rate manager, log-distance loss (exponent "
            f"{w.path_loss_exponent}, {w.reference_loss_db} dB at 1 m), {w.tx_power_dbm} dBm, sensitivity "
            f"{w.rx_sensitivity_dbm} dBm; AP {w.ap_mac} at "
            f"{list(w.ap_position)}; stations " + ", ".join(f"{st.host} at {list(st.position)}"
                                                          for st in w.stations))
    commands = CommandReader(lib, {ln.name: k for k, ln in enumerate(cfg.links)}, stations)
    commands.start()
    t_built = time.monotonic()
    startup = {"to_loaded_s": round(t_loaded - t_exec, 3), "build_s": round(t_built - t_loaded, 3),
               "total_s": round(t_built - t_exec, 3), **info}
    _status(cfg, "starting", startup=startup, pid=os.getpid())
    log(f"start-up {startup['total_s']:.3f} s; running {len(cfg.links)} link(s), {len(cfg.wifi)} WiFi segment(s), "
        f"max lag {cfg.max_lag_ms or 'unlimited'} ms")
    if pending:
        log(f"signal {pending[0]} arrived during start-up: stopping at once")
        lib.ns3link_request_stop(int(pending[0]))
    detail = ctypes.create_string_buffer(512)
    code = lib.ns3link_run(cfg.status_path.encode(), float(cfg.lag_sample_ms), float(cfg.status_every_s),
                           float(cfg.max_lag_ms), detail, len(detail))
    lib.ns3link_destroy()      # closes the pcap files and the taps
    why = detail.value.decode(errors="replace")
    if code == EXIT_LAG:
        log(f"FAILED: {why}. This run's results do not reflect the configured links: the machine "
            "is too busy for this many links or this much traffic (lag figures: the status file)")
        return EXIT_LAG
    if code == EXIT_CPU:
        log(f"FAILED: {why}")
        return EXIT_CPU
    if code != EXIT_OK:
        log(f"simulator stopped unexpectedly: {why}")
        return EXIT_ERROR
    log("stopped")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    t_exec = time.monotonic()
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m testbed.ns3link.sim CONFIG.json", file=sys.stderr)
        return EXIT_CONFIG
    _die_with_parent()
    try:
        cfg = load_sim_config(argv[0])
        _check_fds(cfg)
    except ConfigError as e:
        log(f"bad configuration: {e}")
        return EXIT_CONFIG
    return run(cfg, t_exec)


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: ns-3's statics and Python's may be destroyed in
    # any order (seen crashing under cppyy); everything of ours is closed by now.
    os._exit(code)
