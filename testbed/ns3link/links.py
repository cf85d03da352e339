"""Ns3Links: one ns-3 process simulating all of an experiment's ns-3 links and WiFi
segments, started, watched, changed while running and always stopped.

The testbed side of the ``ns3`` link backend. It opens a tap per link end,
puts each where its end belongs (a namespace, or the root namespace to become
an Open vSwitch port), writes the resolved config into the run directory,
starts ``python -m testbed.ns3link.sim`` with the taps' descriptors, and waits
until the simulator runs. A watcher thread follows the process's status lines
(real-time lag, frames, drops) and notices if it dies. On exit the process is
stopped (SIGTERM; SIGKILL after ``stop_timeout``) and the run fails if the
simulator fell behind real time by more than ``max_lag_ms`` or died.

Files, under ``run_dir``: ``ns3/config.json`` (what ran), ``ns3/status.jsonl``
(status lines), ``logs/ns3.log`` (the process's output), ``pcaps/ns3-LINK-a.pcap``
and ``-b.pcap`` (ns-3's own captures at each tap: Ethernet, Unix timestamps;
frames A sent towards B appear in ``-a`` before the link and in ``-b`` after it);
for a WiFi segment ``pcaps/ns3-SEG-ap.pcap`` and ``pcaps/ns3-SEG-HOST.pcap`` per station.

WiFi segments (:class:`WifiSpec`): the AP's tap and one tap per station; start-up
waits until every station has associated. Status lines then carry, per station,
position, velocity, distance, the channel model's rx power, SNR and rate, the PHY
rates the rate manager used last in each direction, and frame counters.

While running, :meth:`Ns3Links.set_link`, :meth:`Ns3Links.move_station` and
:meth:`Ns3Links.set_velocity` send a command to the process (a JSON line on its
stdin) and return once the simulator has applied it (its ``applied`` status line).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from testbed.ns3link.config import (ConfigError, LinkSpec, SimConfig, SimEnd, SimLink, SimStation, SimWifi,
                                    WifiSpec, _vector, check_links, default_ap_mac)
from testbed.ns3link.taps import TapError, check_place, open_tap, place
from testbed.wait import WaitTimeout, wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]


def _natural(name: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]

RUN_ENV = "DAITN_RUN"              # == testbed.clean.RUN_ENV: clean finds the process by it
DEFAULT_MAX_LAG_MS = 50.0
EXIT_LAG = 3                       # == sim.EXIT_LAG (not imported: sim is the child's module)


class Ns3LinkError(RuntimeError):
    """The ns-3 link process failed. Subclasses:

    * :class:`Ns3StartError` - it did not start (the message holds its log's tail);
    * :class:`Ns3DiedError` - it exited while the run needed it;
    * :class:`Ns3LagError` - it fell behind real time by more than ``max_lag_ms``.

    Bad link specs raise :class:`testbed.ns3link.ConfigError` (a ValueError) and
    taps that cannot be made :class:`testbed.ns3link.TapError`, before anything starts.
    """


class Ns3StartError(Ns3LinkError):
    pass


class Ns3DiedError(Ns3LinkError):
    pass


class Ns3LagError(Ns3LinkError):
    pass


@dataclass(frozen=True)
class LagReport:
    """How late the simulator ran against the wall clock (ms). ``tick``: a
    watch event every ``lag_sample_ms``; ``packet``: every frame written into a
    tap, late by how much after its ideal delivery time."""
    tick: dict
    packet: dict
    limit_ms: float
    exceeded: bool
    detail: str = ""

    @property
    def max_ms(self) -> float:
        return max(self.tick.get("max_ms", 0.0), self.packet.get("max_ms", 0.0))


class Ns3Links:
    """Context manager running ``links`` (list of :class:`LinkSpec`) in one ns-3 process.

    ``run_id`` tags the process (``DAITN_RUN``) for ``testbed.clean``. ``max_lag_ms``:
    fail the run when ns-3 falls further behind real time (0: never; still
    measured). ``pcap``: write ns-3's captures. ``rt_priority``: run ns-3's
    threads SCHED_FIFO at this priority (0: normal scheduling); on a loaded
    machine this cuts the lag's tail ~10x (bench/bench_ns3.py), at the price of
    preempting everything else when busy (bounded by RLIMIT_RTTIME, see sim.py).
    ``wifi``: WiFi segments (:class:`WifiSpec`) run by the same process;
    ``assoc_timeout``: how long start-up waits for every station to associate.
    Attributes once started:
    ``startup_s`` (spawn to running, as the testbed sees it; stations associated), ``startup`` (the
    process's own breakdown), ``pcaps``; after stop: ``report`` (:class:`LagReport`),
    ``final`` (last status line) and ``returncode``.
    """

    def __init__(self, links: list[LinkSpec], run_dir: str | Path, run_id: str, *, seed: int = 1,
                 max_lag_ms: float = DEFAULT_MAX_LAG_MS, lag_sample_ms: float = 10.0,
                 status_every_s: float = 1.0, pcap: bool = True, rt_priority: int = 0,
                 startup_timeout: float = 60.0, stop_timeout: float = 10.0, python: str = sys.executable,
                 wifi: list[WifiSpec] = (), assoc_timeout: float = 15.0, command_timeout: float = 10.0):
        self.links = list(links)
        self.wifi = list(wifi)
        self.assoc_timeout = assoc_timeout
        self.command_timeout = command_timeout
        self._next_id = 0
        self._cmd_lock = threading.Lock()
        self.run_dir = Path(run_dir)
        self.run_id = run_id
        self.seed = seed
        self.max_lag_ms = max_lag_ms
        self.lag_sample_ms = lag_sample_ms
        self.status_every_s = status_every_s
        self.pcap = pcap
        if not 0 <= rt_priority <= 99:
            raise ValueError(f"rt_priority must be within 0..99 (SCHED_FIFO), got {rt_priority}")
        self.rt_priority = rt_priority
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.python = python
        self.config_path = self.run_dir / "ns3" / "config.json"
        self.status_path = self.run_dir / "ns3" / "status.jsonl"
        self.log_path = self.run_dir / "logs" / "ns3.log"
        self.pcap_dir = self.run_dir / "pcaps"
        self.pcaps: list[Path] = []
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None
        self.startup: dict = {}
        self.report: LagReport | None = None
        self.final: dict = {}
        self.returncode: int | None = None
        self._lines: list[dict] = []
        self._offset = 0
        self._lock = threading.Lock()
        self._failure: Ns3LinkError | None = None
        self._stopping = False
        self._watcher: threading.Thread | None = None
        self._log = None

    # --- life cycle ------------------------------------------------------------

    def __enter__(self) -> "Ns3Links":
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb):
        self.stop()
        failure = self._failure
        if failure is not None:
            if exc is None:
                raise failure
            exc.add_note(f"ns-3 links also failed: {failure}")
        return False

    def start(self):
        if not self.run_id:
            raise ValueError("Ns3Links needs a run id (it tags the ns-3 process for clean-up)")
        check_links(self.links, self.wifi)
        for link in self.links:
            check_place(link.a, f"link {link.name!r} end a")
            check_place(link.b, f"link {link.name!r} end b")
        for seg in self.wifi:
            check_place(seg.ap, f"wifi {seg.name!r} ap")
            for st in seg.stations:
                check_place(st.end, f"wifi {seg.name!r} station {st.host!r}")
        for d in (self.config_path.parent, self.log_path.parent, self.pcap_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.status_path.unlink(missing_ok=True)
        token = uuid.uuid4().hex[:6]
        fds: list[int] = []
        sim_links = []
        try:
            # Taps are made in the root namespace under a unique temporary name and
            # renamed where they land: the final names may exist here (h1-eth0...).
            for i, link in enumerate(self.links):
                ends = {}
                for side, end in (("a", link.a), ("b", link.b)):
                    tmp = end.ifname if end.netns is None else f"n3{token}{i:03x}{side}"
                    fd = open_tap(tmp)
                    fds.append(fd)
                    place(tmp, end)
                    pcap = self.pcap_dir / f"ns3-{link.name}-{side}.pcap" if self.pcap else None
                    if pcap:
                        self.pcaps.append(pcap)
                    ends[side] = SimEnd(fd=fd, mtu=end.mtu, pcap=str(pcap) if pcap else "")
                sim_links.append(SimLink(name=link.name, a=ends["a"], b=ends["b"],
                                         rate_bps=(link.rate_mbps or 0) * 1e6, delay_ms=link.delay_ms,
                                         loss_pct=link.loss_pct, queue_packets=link.queue_packets))
            sim_wifi = []
            for k, seg in enumerate(self.wifi):
                def tap(end, i, label):
                    tmp = end.ifname if end.netns is None else f"n3{token}w{k:02x}{i:02x}"
                    fd = open_tap(tmp)
                    fds.append(fd)
                    place(tmp, end)
                    pcap = self.pcap_dir / f"ns3-{seg.name}-{label}.pcap" if self.pcap else None
                    if pcap:
                        self.pcaps.append(pcap)
                    return SimEnd(fd=fd, mtu=end.mtu, pcap=str(pcap) if pcap else "")
                ap = tap(seg.ap, 255, "ap")
                stations = tuple(SimStation(host=st.host, mac=st.end.mac, end=tap(st.end, j, st.host),
                                            position=_vector(st.position, "position"),
                                            velocity=_vector(st.velocity, "velocity"))
                                 for j, st in enumerate(seg.stations))
                sim_wifi.append(SimWifi(name=seg.name, ap=ap, ap_mac=seg.ap_mac or default_ap_mac(k),
                                        stations=stations, ap_position=_vector(seg.ap_position, "ap_position"),
                                        standard=seg.standard, rate_manager=seg.rate_manager,
                                        tx_power_dbm=seg.tx_power_dbm, path_loss_exponent=seg.path_loss_exponent,
                                        reference_loss_db=seg.reference_loss(),
                                        rx_sensitivity_dbm=seg.rx_sensitivity_dbm))
            cfg = SimConfig(run_id=self.run_id, status_path=str(self.status_path), links=tuple(sim_links),
                            seed=self.seed, max_lag_ms=self.max_lag_ms, lag_sample_ms=self.lag_sample_ms,
                            status_every_s=self.status_every_s, rt_priority=self.rt_priority,
                            wifi=tuple(sim_wifi))
            self.config_path.write_text(cfg.to_json())
            self._write_specs()
            env = dict(os.environ, **{RUN_ENV: self.run_id}, NS3LINK_PARENT_PID=str(os.getpid()),
                       PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
            self._log = open(self.log_path, "ab")
            t0 = time.monotonic()
            self.proc = subprocess.Popen([self.python, "-m", "testbed.ns3link.sim", str(self.config_path)],
                                         pass_fds=fds, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.PIPE, cwd=str(REPO_ROOT), start_new_session=True)
        except BaseException:
            if self._log is not None:
                self._log.close()
                self._log = None
            raise
        finally:
            # The child holds its own copies now; ours go, so the taps live and
            # die with the ns-3 process (and vanish at once if we got no further).
            for fd in fds:
                os.close(fd)
        try:
            wait_for(self._running, self.startup_timeout, "the ns-3 process to run its links",
                     interval=0.02, last=self._last_event)
            if self.wifi:
                wait_for(lambda: self._alive() and not self._unassociated(), self.assoc_timeout,
                         "every WiFi station to associate with its access point", interval=0.02,
                         last=self._association_detail)
        except WaitTimeout as e:
            self.stop()
            raise Ns3StartError(f"{e}; see {self.log_path}:\n{self._log_tail()}") from None
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - t0
        self._watcher = threading.Thread(target=self._watch, name="ns3link-watch", daemon=True)
        self._watcher.start()

    def _write_specs(self):
        """The specs as asked for (namespaces, addresses), next to the sim config."""
        specs = [dataclasses.asdict(link) for link in self.links]
        (self.config_path.parent / "links.json").write_text(json.dumps(specs, indent=1))

    def stop(self):
        """Stop the process (idempotent); fills ``report``, ``final``, ``returncode``."""
        self._stopping = True
        if self.proc is not None and self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
                    self._fail(Ns3DiedError(f"the ns-3 process ignored SIGTERM for {self.stop_timeout} s "
                                            f"and was killed; see {self.log_path}"))
            self.returncode = self.proc.returncode
            self.proc = None
        if self._watcher is not None:
            self._watcher.join(timeout=5)
            self._watcher = None
        self._read_status()
        if self.returncode == EXIT_LAG:
            self._fail(Ns3LagError(self._lag_message()))
        elif self.returncode not in (None, 0, -signal.SIGKILL) and self._failure is None:
            self._fail(Ns3DiedError(f"the ns-3 process exited with code {self.returncode}; see "
                                    f"{self.log_path}:\n{self._log_tail()}"))
        stopped = [ln for ln in self._lines if ln.get("event") in ("stopped", "status", "running")]
        if stopped:
            self.final = stopped[-1]
            self.report = LagReport(tick=self.final.get("tick_lag", {}), packet=self.final.get("packet_lag", {}),
                                    limit_ms=self.max_lag_ms,
                                    exceeded=self.final.get("reason") == "lag_exceeded",
                                    detail=self.final.get("detail", ""))
        if self._log is not None:
            self._log.close()
            self._log = None

    # --- watching ----------------------------------------------------------------

    def _read_status(self) -> list[dict]:
        """New complete status lines (appended to ``self._lines``)."""
        new = []
        with self._lock:
            try:
                with open(self.status_path, "rb") as f:
                    f.seek(self._offset)
                    data = f.read()
            except FileNotFoundError:
                return new
            end = data.rfind(b"\n") + 1
            self._offset += end
            for raw in data[:end].splitlines():
                try:
                    new.append(json.loads(raw))
                except ValueError:
                    new.append({"event": "unparsable", "line": raw.decode(errors="replace")})
            self._lines += new
        for ln in new:
            if ln.get("event") == "starting":
                self.startup = ln.get("startup", {})
        return new

    def _running(self) -> bool:
        self._read_status()
        if any(ln.get("event") == "running" for ln in self._lines):
            return True
        if self.proc.poll() is not None:
            raise Ns3StartError(f"the ns-3 process exited with code {self.proc.returncode} before running; "
                                f"see {self.log_path}:\n{self._log_tail()}")
        return False

    def _alive(self) -> bool:
        self._read_status()
        if self.proc.poll() is not None:
            raise Ns3StartError(f"the ns-3 process exited with code {self.proc.returncode} while its WiFi "
                                f"stations associated; see {self.log_path}:\n{self._log_tail()}")
        return True

    def _unassociated(self) -> list[str]:
        """Stations that have not associated yet (or lost their association since)."""
        state: dict[str, bool] = {st.host: False for seg in self.wifi for st in seg.stations}
        with self._lock:
            for ln in self._lines:
                if ln.get("event") in ("assoc", "deassoc"):
                    state[ln["station"]] = ln["event"] == "assoc"
        return sorted((h for h, ok in state.items() if not ok), key=_natural)

    def _association_detail(self) -> str:
        stations = self.wifi_status()
        out = []
        for h in self._unassociated():
            st = stations.get(h, {})
            if st:
                out.append(f"{h} not associated at {st.get('distance_m', 0):.1f} m from the AP (channel model: "
                           f"{st.get('rx_dbm', 0):.1f} dBm, SNR {st.get('snr_db', 0):.1f} dB, rate "
                           f"{st.get('model_rate_mbps', 0)} Mbit/s; 0 means out of reach: move it closer)")
            else:
                out.append(f"{h} not associated")
        return "; ".join(out) or self._last_event()

    def _last_event(self) -> str:
        return self._lines[-1].get("event", "?") if self._lines else "no status line yet"

    def _watch(self):
        while not self._stopping:
            self._read_status()
            proc = self.proc
            if proc is None:
                return
            code = proc.poll()
            if code is not None:
                if not self._stopping:
                    self._read_status()
                    if code == EXIT_LAG:
                        self._fail(Ns3LagError(self._lag_message()))
                    else:
                        self._fail(Ns3DiedError(f"the ns-3 process exited with code {code} while the run "
                                                f"needed it; see {self.log_path}:\n{self._log_tail()}"))
                return
            time.sleep(0.2)   # polling a file and a pid: nothing to wait on

    def _fail(self, err: Ns3LinkError):
        if self._failure is None:
            self._failure = err

    def _lag_message(self) -> str:
        last = next((ln for ln in reversed(self._lines) if ln.get("event") == "stopped"), {})
        detail = last.get("detail") or "ns-3 fell behind real time"
        return (f"{detail}: the emulated links no longer had their configured delay and rate, so this "
                f"run's results are not valid. Reduce the traffic, the number of ns-3 links or the load "
                f"on this machine, or raise max_lag_ms. Lag figures: {self.status_path}; log: {self.log_path}")

    def _log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""

    # --- for the testbed ---------------------------------------------------------

    def status(self) -> dict:
        """The latest periodic status line (lag, per-link frames and drops, WiFi stations)."""
        self._read_status()
        with self._lock:
            return next((dict(ln) for ln in reversed(self._lines) if "links" in ln), {})

    @property
    def failure(self) -> Ns3LinkError | None:
        """The failure seen so far (died, or fell behind real time), else None."""
        return self._failure

    def check(self):
        """Raise :attr:`failure`, if any."""
        if self._failure is not None:
            raise self._failure

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def wifi_status(self) -> dict[str, dict]:
        """Every station's latest state by host (position, velocity, distance_m, rx_dbm,
        snr_db, model_rate_mbps, associated, up/down rates and counters, segment)."""
        st = self.status() if self.proc else self.final
        out = {}
        for seg, info in st.get("wifi", {}).items():
            for host, sta in info.get("stations", {}).items():
                out[host] = dict(sta, segment=seg, t_sim_s=st.get("t_sim_s"), unix_s=st.get("unix_s"))
        return out

    def lines(self, event: str | None = None) -> list[dict]:
        """Status lines so far (those of one ``event`` kind, if given)."""
        self._read_status()
        with self._lock:
            return [dict(ln) for ln in self._lines if event is None or ln.get("event") == event]

    # --- changes while running ----------------------------------------------------

    def set_link(self, name: str, rate_mbps: float | None = None, delay_ms: float | None = None,
                 loss_pct: float | None = None) -> dict:
        """Change link ``name``'s rate (0: unlimited), one-way delay and/or loss, in both
        directions, from now on (frames already on the wire keep their delay).
        Returns the simulator's ``applied`` line."""
        link = next((ln for ln in self.links if ln.name == name), None)
        if link is None:
            raise ConfigError(f"no ns-3 link {name!r} (links: {[ln.name for ln in self.links]})")
        if rate_mbps is None and delay_ms is None and loss_pct is None:
            raise ConfigError(f"link {name!r}: nothing to change (rate_mbps, delay_ms, loss_pct)")
        for key, v, hi in (("rate_mbps", rate_mbps, 100_000), ("delay_ms", delay_ms, 60_000),
                           ("loss_pct", loss_pct, 100)):
            if v is not None and not 0 <= v <= hi:
                raise ConfigError(f"link {name!r}: {key} must be within 0..{hi}, got {v}")
        return self._command({"op": "set_link", "link": name, "rate_mbps": rate_mbps, "delay_ms": delay_ms,
                              "loss_pct": loss_pct})

    def move_station(self, host: str, to, speed: float = 0.0) -> dict:
        """Move station ``host`` to ``to`` ([x, y] or [x, y, z], m): at once (speed 0) or in a
        straight line at ``speed`` m/s, stopping there. Returns the ``applied`` line (its
        ``eta_s`` says when it arrives)."""
        self._station(host)
        if not speed >= 0:
            raise ConfigError(f"station {host!r}: speed must be >= 0 m/s, got {speed}")
        return self._command({"op": "move", "station": host, "to": list(_vector(to, f"station {host!r}: to")),
                              "speed": float(speed)})

    def set_velocity(self, host: str, velocity) -> dict:
        """Give station ``host`` a constant velocity ([vx, vy(, vz)], m/s; zero stops it)."""
        self._station(host)
        return self._command({"op": "velocity", "station": host,
                              "velocity": list(_vector(velocity, f"station {host!r}: velocity"))})

    def _station(self, host: str):
        hosts = [st.host for seg in self.wifi for st in seg.stations]
        if host not in hosts:
            raise ConfigError(f"no WiFi station {host!r} (stations: {hosts})")

    def _command(self, cmd: dict) -> dict:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            raise Ns3DiedError(f"cannot send {cmd['op']}: the ns-3 process is not running; see {self.log_path}")
        with self._cmd_lock:
            self._next_id += 1
            cid = self._next_id
            try:
                proc.stdin.write((json.dumps({"id": cid, **cmd}) + "\n").encode())
                proc.stdin.flush()
            except (BrokenPipeError, OSError) as e:
                raise Ns3DiedError(f"cannot send {cmd['op']} to the ns-3 process: {e}; see {self.log_path}") from None

        def answer():
            self._read_status()
            if proc.poll() is not None:
                raise Ns3DiedError(f"the ns-3 process exited before applying {cmd}; see {self.log_path}")
            with self._lock:
                return next((ln for ln in self._lines if ln.get("id") == cid
                             and ln.get("event") in ("applied", "rejected")), None)

        got = wait_for(answer, self.command_timeout, f"the ns-3 process to apply command {cid} ({cmd['op']})",
                       interval=0.01, last=self._last_event)
        if got["event"] == "rejected":
            raise ConfigError(f"the ns-3 process rejected {cmd}: {got.get('reason')}")
        return got

    def counters(self, link: str) -> dict:
        """Frames and drops per direction of ``link`` so far (``a_to_b``, ``b_to_a``)."""
        st = self.status() if self.proc else self.final
        return st.get("links", {}).get(link, {})


__all__ = ["Ns3Links", "LagReport", "Ns3LinkError", "Ns3StartError", "Ns3DiedError", "Ns3LagError",
           "TapError", "DEFAULT_MAX_LAG_MS"]
