"""ns-3 WiFi segments: TCP throughput against distance, and start-up time of the ns-3 process.

One WiFi segment (802.11a, Ideal rate control, log-distance loss with exponent 3)
between network namespaces of our own (``dwifi-<id>-ap`` holds the access point's
tap, ``dwifi-<id>-sN`` the stations'; all removed at the end). For each distance
the station is moved there through the running process's control channel
(:meth:`testbed.ns3link.Ns3Links.move_station`) and iperf3 measures TCP goodput
from the station to the AP side and back; the line also gives the rate the
channel model predicts there (model PHY rate, the capacity the runner would tell
the DCC) and the PHY rate the rate manager actually used.

Start-up: Ns3Links start as the testbed sees it (taps opened and placed, process
spawned, simulator running, every station associated), with 1 and 4 stations,
next to a point-to-point link for reference.

Prints one JSON line per measurement, then a summary. Needs root:
``sudo .venv/bin/python bench/bench_wifi.py [--repeat 3] [--seconds 3] [--sensitivity -90]``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from testbed.ns3link import LinkSpec, Ns3Links, StationSpec, TapEnd, WifiSpec  # noqa: E402
from testbed.ns3link.wifi import capacity_mbps  # noqa: E402
from testbed.wait import wait_for  # noqa: E402

AP_IP = "10.205.0.100"
PORT = 5202


def sta_ip(i: int) -> str:
    return f"10.205.0.{i + 1}"


def sh(ns: str, cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=timeout)


@contextmanager
def namespaces(names: list[str]):
    made = []
    try:
        for ns in names:
            subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
            made.append(ns)
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True, capture_output=True)
        yield names
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def segment(run: str, n: int, sensitivity: float, positions=None) -> WifiSpec:
    positions = positions or [(5.0 + 3 * i, 0.0) for i in range(n)]
    stations = tuple(StationSpec(f"s{i + 1}", TapEnd("eth0", netns=f"dwifi-{run}-s{i + 1}",
                                                       mac="00:00:00:00:00:%02x" % (i + 1),
                                                       addrs=(f"{sta_ip(i)}/24",)), position=positions[i])
                     for i in range(n))
    return WifiSpec("bench", ap=TapEnd("eth0", netns=f"dwifi-{run}-ap", mac="02:d5:00:00:00:01",
                                       addrs=(f"{AP_IP}/24",)),
                    stations=stations, rx_sensitivity_dbm=sensitivity)


def iperf(client_ns: str, server_ns: str, server_ip: str, seconds: float, reverse: bool) -> float | None:
    """TCP goodput (Mbit/s) client -> server (server -> client with reverse); None if no connection."""
    srv = subprocess.Popen(["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-p", str(PORT)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: f":{PORT}" in sh(server_ns, ["ss", "-Hltn", f"sport = :{PORT}"]).stdout, 10,
                 "iperf3 server listening")
        r = sh(client_ns, ["iperf3", "-c", server_ip, "-p", str(PORT), "-J", "-t", str(seconds),
                           "--connect-timeout", "3000", *(["-R"] if reverse else [])], timeout=seconds + 60)
    finally:
        if srv.poll() is None:
            srv.kill()
        srv.wait()
    try:
        j = json.loads(r.stdout)
    except ValueError:
        return None
    if "error" in j:
        return None
    return j["end"]["sum_received"]["bits_per_second"] / 1e6


def throughput_vs_distance(distances, seconds: float, sensitivity: float, out: list):
    run = uuid.uuid4().hex[:5]
    with namespaces([f"dwifi-{run}-ap", f"dwifi-{run}-s1"]) as (ns_ap, ns_sta), \
            tempfile.TemporaryDirectory() as tmp:
        with Ns3Links([], tmp, f"bw{run}", wifi=[segment(run, 1, sensitivity)], max_lag_ms=0, pcap=False) as sim:
            for d in distances:
                sim.move_station("s1", (d, 0.0))
                # let the rate manager see the new SNR (beacons every 102 ms) before measuring
                time.sleep(1.0)
                up = iperf(ns_sta, ns_ap, AP_IP, seconds, reverse=False)
                down = iperf(ns_sta, ns_ap, AP_IP, seconds, reverse=True)
                st = sim.wifi_status()["s1"]
                line = {"bench": "wifi_throughput", "sensitivity_dbm": sensitivity, "distance_m": d,
                        "rx_dbm": st["rx_dbm"], "snr_db": st["snr_db"], "model_phy_mbps": st["model_rate_mbps"],
                        "model_capacity_mbps": round(capacity_mbps(st["model_rate_mbps"]), 2),
                        "used_phy_up_mbps": st["up_rate_mbps"], "used_phy_down_mbps": st["down_rate_mbps"],
                        "tcp_up_mbps": None if up is None else round(up, 2),
                        "tcp_down_mbps": None if down is None else round(down, 2),
                        "associated": st["associated"]}
                print(json.dumps(line), flush=True)
                out.append(line)
            rep = sim.status()
        lag = sim.report
        line = {"bench": "wifi_lag", "tick_p99_ms": lag.tick.get("p99_ms"), "packet_p99_ms": lag.packet.get("p99_ms"),
                "max_ms": round(lag.max_ms, 2)}
        print(json.dumps(line), flush=True)
        out.append(line)
    return rep


def startup(n_stations: int, repeat: int, out: list):
    times = []
    for _ in range(repeat):
        run = uuid.uuid4().hex[:5]
        names = [f"dwifi-{run}-ap"] + [f"dwifi-{run}-s{i + 1}" for i in range(n_stations)]
        with namespaces(names), tempfile.TemporaryDirectory() as tmp:
            sim = Ns3Links([], tmp, f"bs{run}", wifi=[segment(run, n_stations, -82)], pcap=False)
            with sim:
                times.append({"ready_s": sim.startup_s, "process_s": sim.startup.get("total_s")})
    line = {"bench": "wifi_startup", "stations": n_stations, "repeat": repeat,
            "ready_s_median": round(statistics.median(t["ready_s"] for t in times), 3),
            "ready_s_max": round(max(t["ready_s"] for t in times), 3),
            "process_s_median": round(statistics.median(t["process_s"] for t in times), 3)}
    print(json.dumps(line), flush=True)
    out.append(line)


def startup_p2p(repeat: int, out: list):
    times = []
    for _ in range(repeat):
        run = uuid.uuid4().hex[:5]
        with namespaces([f"dwifi-{run}-a", f"dwifi-{run}-b"]) as (a, b), tempfile.TemporaryDirectory() as tmp:
            link = LinkSpec("l1", a=TapEnd("eth0", netns=a, addrs=("10.206.0.1/24",)),
                            b=TapEnd("eth0", netns=b, addrs=("10.206.0.2/24",)), rate_mbps=20, delay_ms=5)
            with Ns3Links([link], tmp, f"bp{run}", pcap=False) as sim:
                times.append(sim.startup_s)
    line = {"bench": "p2p_startup", "repeat": repeat, "ready_s_median": round(statistics.median(times), 3)}
    print(json.dumps(line), flush=True)
    out.append(line)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="start-ups per configuration")
    ap.add_argument("--seconds", type=float, default=3.0, help="iperf3 duration per direction and distance")
    ap.add_argument("--sensitivity", type=float, action="append",
                    help="receiver sensitivity(ies), dBm (default: -82 and -90)")
    ap.add_argument("--distances", type=str, default="5,15,25,35,45,55,65,75,85,95",
                    help="metres, comma-separated")
    args = ap.parse_args(argv)
    out: list[dict] = []
    startup(1, args.repeat, out)
    startup(4, args.repeat, out)
    startup_p2p(args.repeat, out)
    distances = [float(x) for x in args.distances.split(",")]
    for sens in args.sensitivity or [-82.0, -90.0]:
        throughput_vs_distance(distances, args.seconds, sens, out)
    print("\nsummary")
    for ln in out:
        if ln["bench"] == "wifi_startup":
            print(f"  start-up with {ln['stations']} station(s): ready in {ln['ready_s_median']:.2f} s median "
                  f"(max {ln['ready_s_max']:.2f} s; the ns-3 process's own part {ln['process_s_median']:.3f} s; "
                  f"the rest is taps and association)")
        elif ln["bench"] == "p2p_startup":
            print(f"  start-up of one point-to-point link, for reference: {ln['ready_s_median']:.2f} s median")
    print("  sens. dBm  distance m  rx dBm  SNR dB  model PHY  capacity  used PHY up/down  TCP up/down Mbit/s")
    for ln in out:
        if ln["bench"] == "wifi_throughput":
            fmt = lambda v: "-" if v is None else f"{v:.1f}"   # noqa: E731
            print(f"  {ln['sensitivity_dbm']:9.0f}  {ln['distance_m']:10.0f}  {ln['rx_dbm']:6.1f}  {ln['snr_db']:6.1f}"
                  f"  {ln['model_phy_mbps']:9.0f}  {ln['model_capacity_mbps']:8.1f}  "
                  f"{ln['used_phy_up_mbps']:7.0f}/{ln['used_phy_down_mbps']:<8.0f}  "
                  f"{fmt(ln['tcp_up_mbps'])}/{fmt(ln['tcp_down_mbps'])}")
        elif ln["bench"] == "wifi_lag":
            print(f"  real-time lag during that sweep: tick p99 {ln['tick_p99_ms']} ms, packet p99 "
                  f"{ln['packet_p99_ms']} ms, max {ln['max_ms']} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
