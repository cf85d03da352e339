"""ns-3 links: start-up time by loading method, and fidelity of delay, rate and loss with the lag.

Start-up (wall time of a fresh process until ns-3 can run our links; peak RSS):

* ``wheel_loader``: ``from ns import ns`` (the wheel's cppyy loader: every module);
* ``cppyy_parse``: cppyy with only the modules ns3link.cc needs (links and WiFi), parsing
  ns3link.cc and JIT-compiling it (no precompiled header);
* ``cppyy_pch``: the same with a cppyy precompiled header of the ns-3 headers
  ns3link.cc includes (built here first; its build time is reported);
* ``compiled``: what testbed.ns3link uses: ns3link.cc compiled once with g++
  (build.py; compile time reported), loaded with ctypes;
* ``ns3links_ready``: the whole Ns3Links start as the testbed sees it, with a
  real link: taps opened and placed, process spawned, simulator running.

Fidelity, over one ns-3 link between two namespaces of our own (``dns3-*``,
removed at the end): RTT with ping on 2 x 10 ms, TCP goodput with iperf3 on
20 Mbit/s, loss with 10000 numbered UDP datagrams and 2000 pings on 1 %, the
simulator's real-time lag (tick and per-packet) and its CPU use under load.

Prints one JSON line per measurement, then a summary. Needs root:
``sudo .venv/bin/python bench/bench_ns3.py [--repeat 3] [--skip-wheel-loader]``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from testbed.ns3link import LinkSpec, Ns3Links, TapEnd, build  # noqa: E402
from testbed.wait import wait_for  # noqa: E402

IP_A, IP_B = "10.204.0.1", "10.204.0.2"
MAC_A, MAC_B = "02:d4:00:00:00:01", "02:d4:00:00:00:02"

# Child programs timed from spawn to exit; each prints its peak RSS.
RSS = "import resource, json; print(json.dumps({'rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))"

WHEEL_LOADER = "from ns import ns\nns.Simulator.Now()\n" + RSS

CPPYY = r"""
import ctypes, os, sys
pch, src, inc, libs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(":")
if pch != "none":
    os.environ["CLING_STANDARD_PCH"] = pch
for lib in libs:                          # before cppyy: the PCH's static initialisers need them
    ctypes.CDLL(lib, ctypes.RTLD_GLOBAL)
import cppyy, cppyy.ll, libcppyy
libcppyy.AddSmartPtrType("Ptr")
cppyy.add_include_path(inc)
for d in %(defines)r:
    cppyy.cppdef("#define " + d)
cppyy.include(src)
g = cppyy.gbl
g.ns3link_setup(1, 1)
g.ns3link_add_link(b"x", -1, 1500, b"", -1, 1500, b"", 20e6, 10e6, 0.01, 100)   # JITs the link code
for f in ("ns3link_run", "ns3link_destroy", "ns3link_install_signal_handlers"):
    cppyy.ll.addressof(getattr(g, f))     # and the rest
""" % {"defines": list(build.DEFINES)} + RSS

COMPILED = r"""
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
lib.ns3link_setup.argtypes = [ctypes.c_uint32, ctypes.c_uint64]
lib.ns3link_setup(1, 1)
lib.ns3link_add_link.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                                 ctypes.c_int, ctypes.c_char_p, ctypes.c_double, ctypes.c_double,
                                 ctypes.c_double, ctypes.c_uint32]
lib.ns3link_add_link(b"x", -1, 1500, b"", -1, 1500, b"", 20e6, 10e6, 0.01, 100)
""" + RSS


def emit(row: dict):
    print(json.dumps(row), flush=True)


def timed(argv: list[str], env=None) -> dict:
    t0 = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    s = time.monotonic() - t0
    if r.returncode != 0:
        raise SystemExit(f"{argv[0]} {argv[1]} ... failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return {"s": round(s, 3), **json.loads(r.stdout.strip().splitlines()[-1])}


def build_pch(workdir: Path) -> tuple[Path, float]:
    """A cppyy PCH of cppyy's std headers plus the ns-3 headers ns3link.cc includes."""
    import cppyy_backend
    backend = Path(cppyy_backend.__file__).resolve().parent
    headers = re.findall(r'^#include "(ns3/[^"]+)"', build.SOURCE.read_text(), re.M)
    hdr = workdir / "ns3link-headers.h"
    hdr.write_text("".join(f"#define {d}\n" for d in build.DEFINES)
                   + "".join(f'#include "{h}"\n' for h in headers))
    pch = workdir / "ns3link.pch"
    env = dict(os.environ, EXTRA_CLING_ARGS=os.environ.get("EXTRA_CLING_ARGS", " -O2 -march=native"))
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, str(backend / "etc/dictpch/makepch.py"), str(pch),
                        f"-I{build.ns3_root() / 'include'}", str(hdr)],
                       cwd=backend, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"makepch failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return pch, time.monotonic() - t0


def startup(repeat: int, skip_wheel: bool) -> dict:
    out = {}
    libs = [str(build.lib_dir() / f"libns{build.md.version('ns3').split('.post')[0]}-{m}.so")
            for m in ("core", "stats", "network", "mobility", "propagation", "fd-net-device", "wifi")]
    with tempfile.TemporaryDirectory(prefix="bench-ns3-") as tmp:
        tmp = Path(tmp)
        lib = tmp / "libns3link.so"
        t0 = time.monotonic()
        subprocess.run(build.command(lib), check=True, capture_output=True)
        out["compile_s"] = round(time.monotonic() - t0, 2)
        pch, pch_s = build_pch(tmp)
        out["pch_build_s"] = round(pch_s, 2)
        out["pch_mb"] = round(pch.stat().st_size / 1e6, 1)
        emit({"what": "artefacts", **out})
        cases = {
            "cppyy_parse": [sys.executable, "-c", CPPYY, "none", str(build.SOURCE),
                            str(build.ns3_root() / "include"), ":".join(libs)],
            "cppyy_pch": [sys.executable, "-c", CPPYY, str(pch), str(build.SOURCE),
                          str(build.ns3_root() / "include"), ":".join(libs)],
            "compiled": [sys.executable, "-c", COMPILED, str(lib)],
        }
        if not skip_wheel:
            cases = {"wheel_loader": [sys.executable, "-c", WHEEL_LOADER], **cases}
        for name, argv in cases.items():
            runs = [timed(argv) for _ in range(1 if name == "wheel_loader" else repeat)]
            best = min(runs, key=lambda r: r["s"])
            out[name] = {"s": [r["s"] for r in runs], "rss_mb": round(best["rss_mb"])}
            emit({"what": "startup", "method": name, **out[name]})
    return out


# --- fidelity -----------------------------------------------------------------------

def sh(ns, cmd, timeout=180):
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=timeout)


@contextmanager
def pair(workdir: Path, run_id: str, rt_priority: int = 0, **link):
    token = uuid.uuid4().hex[:6]
    names = [f"dns3-{token}-a", f"dns3-{token}-b"]
    made = []
    try:
        for ns in names:
            subprocess.run(["ip", "netns", "add", ns], check=True)
            made.append(ns)
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        spec = LinkSpec("l1", a=TapEnd("eth0", netns=names[0], mac=MAC_A, addrs=(f"{IP_A}/24",)),
                        b=TapEnd("eth0", netns=names[1], mac=MAC_B, addrs=(f"{IP_B}/24",)), **link)
        with Ns3Links([spec], workdir, run_id, rt_priority=rt_priority) as sim:
            for ns, ip, mac in ((names[0], IP_B, MAC_B), (names[1], IP_A, MAC_A)):
                sh(ns, ["ip", "neigh", "replace", ip, "lladdr", mac, "dev", "eth0", "nud", "permanent"])
            yield sim, names[0], names[1]
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS")) / 1024


def ping(ns, n, interval):
    out = sh(ns, ["ping", "-n", "-c", str(n), "-i", str(interval), "-W", "2", IP_B]).stdout
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    return int(m.group(1)), int(m.group(2)), sorted(float(x) for x in re.findall(r"time=([\d.]+) ms", out))


def iperf3(ns_c, ns_s, args, duration):
    srv = subprocess.Popen(["ip", "netns", "exec", ns_s, "iperf3", "-s", "-1"], stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: ":5201" in sh(ns_s, ["ss", "-Hltn", "sport = :5201"]).stdout, 10, "iperf3 server")
        r = sh(ns_c, ["iperf3", "-c", IP_B, "-J", "-t", str(duration), *args])
        srv.wait(timeout=15)
    finally:
        if srv.poll() is None:
            srv.kill()
    return json.loads(r.stdout)


UDP_RX = """
import json, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind(("0.0.0.0", 5999)); print("ready", flush=True); seen = set(); s.settimeout(30)
try:
    while True:
        seen.add(int.from_bytes(s.recv(2048)[:4], "big")); s.settimeout(2)
except socket.timeout:
    pass
print(len(seen), flush=True)
"""
UDP_TX = """
import socket, sys, time
n, rate = int(sys.argv[2]), float(sys.argv[3]); s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
t0 = time.monotonic()
for i in range(n):
    late = t0 + i / rate - time.monotonic()
    if late > 0:
        time.sleep(late)
    s.sendto(i.to_bytes(4, "big") + bytes(996), (sys.argv[1], 5999))
"""


def delay_rate(workdir: Path, rt_priority: int) -> dict:
    """RTT, TCP goodput, the simulator's CPU and lag over 20 Mbit/s, 2 x 10 ms."""
    res = {"rt_priority": rt_priority}
    with pair(workdir, "bn3" + uuid.uuid4().hex[:5], rt_priority=rt_priority, rate_mbps=20,
              delay_ms=10) as (sim, a, b):
        res["ns3links_ready_s"] = round(sim.startup_s, 3)
        res["sim_startup"] = sim.startup
        sent, got, rtts = ping(a, 200, 0.02)
        res["rtt_ms"] = {"configured": 20.0, "sent": sent, "received": got, "min": rtts[0],
                         "median": rtts[len(rtts) // 2], "mean": round(sum(rtts) / len(rtts), 3),
                         "p95": rtts[int(0.95 * (len(rtts) - 1))], "max": rtts[-1]}
        emit({"what": "rtt", "rt_priority": rt_priority, **res["rtt_ms"]})
        c0, t0 = cpu_s(sim.pid), time.monotonic()
        j = iperf3(a, b, ["-O", "2"], 10)
        cpu = (cpu_s(sim.pid) - c0) / (time.monotonic() - t0)
        res["tcp"] = {"configured_mbps": 20.0,
                      "goodput_mbps": round(j["end"]["sum_received"]["bits_per_second"] / 1e6, 3),
                      "ideal_goodput_mbps": round(20 * 1448 / 1514, 3),
                      "retransmits": j["end"]["sum_sent"].get("retransmits"),
                      "sim_cpu_pct_of_one_core": round(100 * cpu, 1), "sim_rss_mb": round(rss_mb(sim.pid))}
        emit({"what": "tcp", "rt_priority": rt_priority, **res["tcp"]})
    res["lag"] = {"tick": sim.report.tick, "packet": sim.report.packet}
    emit({"what": "lag", "run": "rtt+tcp", "rt_priority": rt_priority, **res["lag"]})
    res["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return res


def fidelity(workdir: Path, rt_priorities: list[int]) -> dict:
    res = {"delay_rate": [delay_rate(workdir / f"delay-rate-{p}", p) for p in rt_priorities]}
    with pair(workdir / "loss", "bn3" + uuid.uuid4().hex[:5], rate_mbps=20, delay_ms=10,
              loss_pct=1.0) as (sim, a, b):
        rx = subprocess.Popen(["ip", "netns", "exec", b, sys.executable, "-c", UDP_RX], stdout=subprocess.PIPE,
                              text=True)
        assert rx.stdout.readline().strip() == "ready"
        n = 10000
        sh(a, [sys.executable, "-c", UDP_TX, IP_B, str(n), "2000"])
        got = int(rx.communicate(timeout=60)[0].split()[-1])
        sent, echoed, _ = ping(a, 2000, 0.01)
        rt = 1 - echoed / sent
        res["loss"] = {"configured_pct": 1.0, "udp_sent": n, "udp_lost": n - got,
                       "udp_loss_pct": round(100 * (n - got) / n, 3),
                       "ping_sent": sent, "ping_lost": sent - echoed, "ping_round_trip_pct": round(100 * rt, 3),
                       "ping_one_way_pct": round(100 * (1 - (1 - rt) ** 0.5), 3),
                       "ns3_counters": sim.counters("l1")}
        emit({"what": "loss", **res["loss"]})
    res["loss"]["lag"] = {"tick": sim.report.tick, "packet": sim.report.packet}
    emit({"what": "lag", "run": "loss", **res["loss"]["lag"]})
    return res


def summary(st: dict, fi: dict) -> str:
    lines = ["", "ns-3 start-up (fresh process until links can be built; best of runs, peak RSS):"]
    for k in ("wheel_loader", "cppyy_parse", "cppyy_pch", "compiled"):
        if k in st:
            lines.append(f"  {k:14s} {min(st[k]['s']):7.2f} s  {st[k]['rss_mb']:5d} MB   runs {st[k]['s']}")
    lines.append(f"  set-up artefacts: compile {st['compile_s']} s; cppyy PCH {st['pch_build_s']} s, {st['pch_mb']} MB")
    if not fi:
        return "\n".join(lines)
    lines.append("fidelity (targets: RTT 18-22 ms, TCP 18-22 Mbit/s, loss 0.5-1.5 %):")
    for dr in fi["delay_rate"]:
        r, t, lg = dr["rtt_ms"], dr["tcp"], dr["lag"]
        sched = f"SCHED_FIFO {dr['rt_priority']}" if dr["rt_priority"] else "normal scheduling"
        lines += [
            f"  [{sched}, load avg {dr['load_avg_1m']}] Ns3Links spawn -> running: {dr['ns3links_ready_s']} s",
            f"    RTT on 2 x 10 ms: median {r['median']} mean {r['mean']} p95 {r['p95']} max {r['max']} ms",
            f"    TCP on 20 Mbit/s: {t['goodput_mbps']} Mbit/s (ideal {t['ideal_goodput_mbps']}); ns-3 CPU "
            f"{t['sim_cpu_pct_of_one_core']} % of a core, RSS {t['sim_rss_mb']} MB",
            f"    lag: packet p50 {lg['packet'].get('p50_ms')} p99 {lg['packet'].get('p99_ms')} max "
            f"{lg['packet'].get('max_ms')} ms; tick p99 {lg['tick'].get('p99_ms')} max {lg['tick'].get('max_ms')} ms",
        ]
    lo = fi["loss"]
    lines += [f"  loss on 1 %: UDP {lo['udp_lost']}/{lo['udp_sent']} = {lo['udp_loss_pct']} % one way; ping "
              f"{lo['ping_lost']}/{lo['ping_sent']} = {lo['ping_round_trip_pct']} % round trip = "
              f"{lo['ping_one_way_pct']} % one way; lag max {lo['lag']['packet'].get('max_ms')} ms"]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="runs per start-up method (default 3)")
    ap.add_argument("--skip-wheel-loader", action="store_true", help="skip `from ns import ns` (~17 s, ~650 MB)")
    ap.add_argument("--startup-only", action="store_true", help="no fidelity part (no root needed)")
    ap.add_argument("--rt-priorities", default="0,10",
                    help="SCHED_FIFO priorities to compare for RTT/TCP/lag; 0 = normal (default 0,10)")
    ap.add_argument("--out", type=Path, help="also write all figures to this JSON file")
    args = ap.parse_args(argv)
    if not args.startup_only and os.geteuid() != 0:
        raise SystemExit("the fidelity part builds namespaces and taps: run as root (or --startup-only)")
    build.build(log=lambda *_: None)
    st = startup(args.repeat, args.skip_wheel_loader)
    fi = {}
    if not args.startup_only:
        with tempfile.TemporaryDirectory(prefix="bench-ns3-run-") as tmp:
            fi = fidelity(Path(tmp), [int(p) for p in args.rt_priorities.split(",")])
    print(summary(st, fi))
    if args.out:
        args.out.write_text(json.dumps({"startup": st, "fidelity": fi}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
