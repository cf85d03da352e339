"""Model-transfer goodput over a shaped bottleneck: nodes.transport.send_model vs TCP itself.

Topology h1 - s1 ==X== s2 - h2, the s1-s2 link shaped (HTB at each switch's
egress, loss by the BPF random drop; testbed/shaping.py). For each link setting
(default: 10, 50, 100 Mbit/s, and 50 Mbit/s with 1 % loss) one network is built
with its own run id and the DCC, and every size (5 MiB; also 20 MiB at 50 Mbit/s)
is measured ``--reps`` times, the kinds interleaved:

* ``daitn``: :func:`nodes.transport.send_model` (library code, unchanged) in h1's
  namespace, to a receiver in h2's namespace doing ``Endpoint.read`` ->
  ``ModelReceiver.on_chunk`` -> ``ack_for`` (bench/helpers/), both with the same
  random 32-byte HMAC key. Timed from the first chunk's first byte handed to the
  socket to the ACK read back (the SHA-256 of the state, done before, and the
  TCP handshake are not in it; ``call_s`` in the JSON includes them);
* ``raw``: the same bytes as one ``sendall`` on a plain socket, 1-byte app ACK:
  what Python + TCP get without the framing, HMAC and digest, timed alike;
* ``iperf3-n``: ``iperf3 -n <size>`` (same bytes from a cold connection);

plus, once per link, ``iperf3 -t`` (``--iperf-seconds``, first second omitted):
what TCP gets in steady state on that link.

goodput = state bytes x 8 / seconds; ``/link`` = goodput / configured rate;
``/iperf3`` = goodput / the median iperf3-n goodput for the same link and size;
``/steady`` = goodput / iperf3 -t; overhead = bytes written / state bytes.
``link`` is what actually left s1's shaped port during a daitn/raw transfer (HTB's
Sent bytes, all frames incl. headers and retransmissions, / seconds). With
1448-byte TCP segments in 1514-byte frames, goodput/link can be at most 95.6 %.
iperf3-n counts the bytes the server received by the end of the test (a little
less than the size: iperf3 ends when the client has handed its last byte to the
socket), so it is a rate, not a time to deliver everything.

Prints one JSON line per measurement as it finishes, then the table (medians of
the runs; ``runs`` lists each). Needs root and Open vSwitch; takes the machine-wide
emulation lock (waits for other runs):

    sudo .venv/bin/python bench/bench_transport.py [--reps 3] [--links 10,50,100,50:1]

Investigation knobs (defaults = the library's behaviour): ``--chunk`` (send_model's
chunk size), ``--sndbuf``/``--rcvbuf`` (SO_SNDBUF on the sender's connection /
SO_RCVBUF on the receiver), ``--cc`` (the senders' TCP congestion control, also
iperf3's), ``--htb-burst`` (re-set the bottleneck's HTB burst, bytes),
and the kind ``daitn-inc`` (``--kinds daitn,daitn-inc,raw``): send_model to
bench/helpers' IncrementalReceiver, ModelReceiver with the change this benchmark's
findings recommend (running SHA-256 per chunk, no final copy), to measure it
without touching the library. ``--chunk`` above 1 MiB fails by design: the
receiver refuses messages larger than ``Endpoint.MAX_MESSAGE`` (4 x CHUNK_BYTES).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controllers import fabric as fab  # noqa: E402
from testbed import clean  # noqa: E402
from testbed.capabilities import probe  # noqa: E402
from testbed.controller import ControllerProcess  # noqa: E402
from testbed.network import EmulatedNetwork, emulation_lock, existing_bridges, fabric_of  # noqa: E402
from testbed.shaping import htb_burst_bytes  # noqa: E402
from testbed.wait import WaitTimeout, wait_for  # noqa: E402
from topologies.model import Link, Topology  # noqa: E402

HELPERS = Path(__file__).resolve().parent / "helpers"
MIB = 1024 * 1024
IPERF_PORT = 5201
# kind -> (receiver port in h2, sender/receiver --mode, receiver extra args)
RECEIVERS = {"daitn": (7000, "daitn", []), "raw": (7001, "raw", []),
             "daitn-inc": (7002, "daitn", ["--incremental"])}
# The bottleneck's two shaped egress ports (the s1-s2 link is the first link, so
# it is port 1 on both switches; see testbed.network.plan_ports).
BOTTLENECK = ("s1-eth1", "s2-eth1")
FORWARD = "s1-eth1"  # h1 -> h2 data direction
MAX_GOODPUT_RATIO = 1448 / 1514  # TCP payload per Ethernet frame HTB counts (timestamps on)


# --- network ---------------------------------------------------------------

def topology(rate: float, loss: float) -> Topology:
    links = [Link("s1", "s2", bw_mbit=rate, loss_pct=loss or None), Link("h1", "s1"), Link("h2", "s2")]
    return Topology(name=f"bottleneck-{rate:g}M-{loss:g}pct", switches=["s1", "s2"],
                    hosts=["h1", "h2"], links=links, source="bench/bench_transport.py").validate()


def flow_counts(switches) -> dict:
    out = {}
    for s in switches:
        r = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-aggregate", s],
                           capture_output=True, text=True)
        m = re.search(r"flow_count=(\d+)", r.stdout)
        out[s] = int(m.group(1)) if m else None
    return out


def expected_flow_counts(topo: Topology) -> dict:
    fabric = fabric_of(topo)
    flows = set(fab.forwarding_flows(fabric, fabric.expected_links()))
    for dpid in fabric.switches.values():
        flows.update(fab.service_flows(dpid))
    return {s: sum(1 for f in flows if f.dpid == dpid) for s, dpid in fabric.switches.items()}


def htb_stats(intf: str) -> dict:
    """Sent bytes/packets and drops of the HTB root and its pfifo (root namespace)."""
    r = subprocess.run(["tc", "-s", "qdisc", "show", "dev", intf], capture_output=True, text=True)
    out = {}
    for kind, pat in (("htb", r"qdisc htb 1: root.*?Sent (\d+) bytes (\d+) pkt \(dropped (\d+), "
                              r"overlimits (\d+)"),
                      ("fifo", r"qdisc pfifo 10: parent.*?Sent (\d+) bytes (\d+) pkt \(dropped (\d+), "
                               r"overlimits (\d+)")):
        m = re.search(pat, r.stdout, re.S)
        if m:
            out[kind] = dict(zip(("bytes", "pkts", "dropped", "overlimits"), map(int, m.groups())))
    return out


def stats_delta(a: dict, b: dict) -> dict:
    return {k: {f: b[k][f] - a[k][f] for f in b[k]} for k in b if k in a}


def set_htb_burst(rate: float, burst: int):
    for intf in BOTTLENECK:
        r = subprocess.run(["tc", "class", "change", "dev", intf, "parent", "1:", "classid", "1:1",
                            "htb", "rate", f"{rate}mbit", "burst", str(burst)],
                           capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"tc class change on {intf} failed: {r.stderr.strip()}")


# --- processes in host namespaces ---------------------------------------------

def stop(p):
    if p is not None and p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def listening(host, port: int) -> bool:
    return f":{port}" in host.cmd(f"ss -Hltn 'sport = :{port}'")


def read_new_line(path: Path, seen: int, timeout: float) -> dict:
    """The JSON record the receiver appends after line ``seen``."""
    def line():
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            return None
        return lines[seen] if len(lines) > seen else None
    return json.loads(wait_for(line, timeout, f"the receiver's record in {path}", interval=0.05))


def sender(h1, h2, kind: str, size: int, key_file: Path, args, timeout: float) -> dict:
    port, mode, _ = RECEIVERS[kind]
    cmd = [sys.executable, str(HELPERS / "model_sender.py"), "--mode", mode, "--ip", h2.IP(),
           "--port", str(port), "--size", str(size), "--key-file", str(key_file)]
    if args.chunk:
        cmd += ["--chunk", str(args.chunk)]
    if args.sndbuf:
        cmd += ["--sndbuf", str(args.sndbuf)]
    if args.cc:
        cmd += ["--cc", args.cc]
    p = h1.popen(cmd, text=True)
    try:
        out, err = p.communicate(timeout=timeout)
    finally:
        stop(p)
    if p.returncode:
        last = " | ".join(err.strip().splitlines()[-2:])
        raise RuntimeError(f"{kind} sender failed ({p.returncode}): {last[-500:]}")
    return json.loads(out.strip().splitlines()[-1])


def iperf3(h1, h2, extra: list[str], timeout: float) -> dict:
    srv = h2.popen(["iperf3", "-s", "-1", "-J", "-p", str(IPERF_PORT)], text=True)
    cli = None
    try:
        wait_for(lambda: listening(h2, IPERF_PORT), 10, "iperf3 server listening on h2")
        cli = h1.popen(["iperf3", "-c", h2.IP(), "-p", str(IPERF_PORT), "-J", *extra], text=True)
        out, err = cli.communicate(timeout=timeout)
        srv.communicate(timeout=15)
    finally:
        stop(cli)
        stop(srv)
    j = json.loads(out)
    if "error" in j:
        raise RuntimeError(f"iperf3 failed: {j['error']}")
    return j


# --- measurements -----------------------------------------------------------

def measure_one(kind, size, rate, loss, rep, ctx) -> dict:
    h1, h2, args = ctx["h1"], ctx["h2"], ctx["args"]
    timeout = size * 8 / (rate * 1e6) * 20 + 60
    row = {"bench": "transport", "kind": kind, "rate_mbit": rate, "loss_pct": loss,
           "size": size, "rep": rep, "run": ctx["run_id"], "load1": round(os.getloadavg()[0], 2)}
    before = htb_stats(FORWARD)
    try:
        if kind in RECEIVERS:
            rec_path = ctx["rx_out"][kind]
            seen = len(rec_path.read_text().splitlines()) if rec_path.exists() else 0
            s = sender(h1, h2, kind, size, ctx["key_file"], args, timeout)
            rx = read_new_line(rec_path, seen, 30)
            if "error" in rx:
                raise RuntimeError(f"receiver: {rx['error']}")
            tcp = s["tcp"]
            row.update(seconds=s["seconds"], call_s=s["call_seconds"], wire_bytes=s["wire_bytes"],
                       attempts=s["attempts"], sender_cpu_s=s["cpu_s"], sndbuf=s["sndbuf"],
                       cc=s["cc"], retrans_segs=tcp.get("total_retrans"),
                       min_rtt_ms=tcp.get("min_rtt_us", 0) / 1e3, srtt_ms=tcp.get("rtt_us", 0) / 1e3,
                       cwnd=tcp.get("snd_cwnd"), busy_ms=tcp.get("busy_time_us", 0) / 1e3,
                       rwnd_limited_ms=tcp.get("rwnd_limited_us", 0) / 1e3,
                       sndbuf_limited_ms=tcp.get("sndbuf_limited_us", 0) / 1e3,
                       rx_first_to_ack_s=rx["first_to_ack_s"], rx_cpu_s=rx["cpu_s"],
                       rx_recv_wait_s=rx["recv_wait_s"], rx_last_chunk_s=rx.get("last_chunk_s"),
                       rcvbuf=rx["rcvbuf"], rx_dropped=rx.get("dropped"))
            if rx["state_bytes"] != size or rx["wire_bytes"] != s["wire_bytes"]:
                raise RuntimeError(f"receiver got {rx['state_bytes']} state / {rx['wire_bytes']} "
                                   f"wire bytes, sender sent {size} / {s['wire_bytes']}")
        elif kind == "iperf3-n":
            j = iperf3(h1, h2, ["-n", str(size), *(["-C", args.cc] if args.cc else [])], timeout)
            rcv, snt = j["end"]["sum_received"], j["end"]["sum_sent"]
            row.update(seconds=rcv["seconds"], wire_bytes=rcv["bytes"],
                       retrans_segs=snt.get("retransmits"), received_bytes=rcv["bytes"])
            size = rcv["bytes"]
        elif kind == "iperf3-t":
            j = iperf3(h1, h2, ["-t", str(args.iperf_seconds), "-O", "1",
                                *(["-C", args.cc] if args.cc else [])], args.iperf_seconds + 60)
            rcv, snt = j["end"]["sum_received"], j["end"]["sum_sent"]
            row.update(seconds=rcv["seconds"], wire_bytes=rcv["bytes"], size=rcv["bytes"],
                       retrans_segs=snt.get("retransmits"))
            size = rcv["bytes"]
        else:
            raise ValueError(kind)
    except Exception as e:  # one failed measurement is reported, the rest go on
        row["error"] = f"{type(e).__name__}: {e}"
        return row
    after = htb_stats(FORWARD)
    d = stats_delta(before, after)
    secs = row["seconds"]
    row.update(goodput_mbit=size * 8 / secs / 1e6, overhead=row["wire_bytes"] / size)
    row["ratio_link"] = row["goodput_mbit"] / rate
    if "htb" in d and kind in RECEIVERS:
        # frames that left the shaped port while this measurement ran (incl. iperf3's
        # control connection and the DCC's LLDP: a few hundred bytes)
        row["link_mbit"] = d["htb"]["bytes"] * 8 / secs / 1e6
        row["htb_dropped"] = d["htb"]["dropped"]
        row["fifo_dropped"] = d.get("fifo", {}).get("dropped")
    return row


def bench_link(rate: float, loss: float, sizes: list[int], caps, workdir: Path, args,
               emit) -> list[dict]:
    topo = topology(rate, loss)
    run_id = "bt" + uuid.uuid4().hex[:6]
    rows: list[dict] = []
    old_env = os.environ.get("DAITN_RUN")
    os.environ["DAITN_RUN"] = run_id   # Mininet's shells and our helpers inherit it
    rdir = workdir / run_id
    rdir.mkdir(parents=True)
    key_file = rdir / "auth.key"
    key_file.write_bytes(os.urandom(32))
    key_file.chmod(0o600)
    procs = []
    try:
        with emulation_lock(lambda m: print(f"# {m}", flush=True)):
            taken = lambda: sorted(existing_bridges() & set(topo.switches))  # noqa: E731
            wait_for(lambda: not taken(), 600, "bridges named like ours (a foreign run's) to go",
                     interval=1, last=taken)
            with ControllerProcess(rdir, fabric_of(topo), run_id, key_file=key_file) as ctl, \
                    EmulatedNetwork(topo, run_id, caps, ctl.port, log=lambda *_: None) as net:
                ctl.wait_converged(60)
                want = expected_flow_counts(topo)
                wait_for(lambda: flow_counts(topo.switches) == want, 60,
                         "every switch to hold the DCC's complete flow table")
                h1, h2 = net.host("h1"), net.host("h2")
                # Static neighbours: ARP over a lossy link would stall the first packets.
                for a, b in ((h1, h2), (h2, h1)):
                    a.cmd(f"ip neigh replace {b.IP()} lladdr {b.MAC()} dev {a.defaultIntf()} nud permanent")
                wait_for(lambda: " 0% packet loss" in h1.cmd(f"ping -c 1 -W 1 {h2.IP()}"), 30,
                         "h1 to reach h2")
                if args.htb_burst:
                    set_htb_burst(rate, args.htb_burst)
                sysctl = h1.cmd("sysctl -n net.ipv4.tcp_congestion_control net.ipv4.tcp_wmem "
                                "net.ipv4.tcp_rmem").split("\n")
                print(f"# link {rate:g} Mbit/s loss {loss:g} %: run {run_id}, HTB burst "
                      f"{args.htb_burst or htb_burst_bytes(rate)} B, h1 tcp cc/wmem/rmem "
                      f"{' | '.join(s.strip() for s in sysctl if s.strip())}", flush=True)
                kinds = [k for k in args.kinds.split(",") if k != "iperf3-t"]
                rx_out = {k: rdir / f"rx-{k}.jsonl" for k in kinds if k in RECEIVERS}
                for kind in rx_out:
                    port, mode, extra = RECEIVERS[kind]
                    cmd = [sys.executable, str(HELPERS / "model_receiver.py"), "--mode", mode,
                           "--port", str(port), "--key-file", str(key_file),
                           "--out", str(rx_out[kind]), *extra]
                    if args.rcvbuf:
                        cmd += ["--rcvbuf", str(args.rcvbuf)]
                    procs.append(h2.popen(cmd, text=True))
                    wait_for(lambda: listening(h2, port), 20, f"the {kind} receiver on h2:{port}",
                             last=lambda: procs[-1].poll())
                ctx = {"h1": h1, "h2": h2, "args": args, "run_id": run_id, "key_file": key_file,
                       "rx_out": rx_out}
                for rep in range(1, args.reps + 1):
                    for size in sizes:
                        for kind in kinds:
                            row = measure_one(kind, size, rate, loss, rep, ctx)
                            rows.append(row)
                            emit(row)
                if "iperf3-t" in args.kinds.split(",") and args.iperf_seconds:
                    row = measure_one("iperf3-t", 0, rate, loss, 1, ctx)
                    rows.append(row)
                    emit(row)
                for p in procs:
                    stop(p)
                for p in procs:
                    if p.returncode not in (0, -15):
                        print(f"# receiver exited {p.returncode}: {p.stderr.read()[-1000:]}",
                              flush=True)
                errors = ctl.logged_exceptions()
                if errors:
                    print(f"# the DCC logged {len(errors)} error(s): {errors[:3]}", flush=True)
    finally:
        for p in procs:
            stop(p)
        if old_env is None:
            os.environ.pop("DAITN_RUN", None)
        else:
            os.environ["DAITN_RUN"] = old_env
    try:
        wait_for(lambda: not any(clean.leftovers(run_id).values()), 10,
                 f"run {run_id} to leave nothing behind", interval=0.2,
                 last=lambda: {k: v for k, v in clean.leftovers(run_id).items() if v})
    except WaitTimeout as e:
        print(f"# LEFTOVERS: {e}", flush=True)
        rows.append({"bench": "transport", "kind": "leftovers", "rate_mbit": rate, "loss_pct": loss,
                     "size": 0, "rep": 0, "run": run_id, "error": str(e)})
    return rows


# --- report -----------------------------------------------------------------

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def table(rows: list[dict]) -> str:
    ok = [r for r in rows if "error" not in r]
    groups: dict[tuple, list[dict]] = {}
    for r in ok:
        groups.setdefault((r["rate_mbit"], r["loss_pct"], r["size"] if r["kind"] != "iperf3-t" else 0,
                           r["kind"]), []).append(r)
    iperf_n = {k[:3]: med([r["goodput_mbit"] for r in v]) for k, v in groups.items() if k[3] == "iperf3-n"}
    steady = {k[:2]: med([r["goodput_mbit"] for r in v]) for k, v in groups.items() if k[3] == "iperf3-t"}
    order = {"daitn": 0, "daitn-inc": 1, "raw": 2, "iperf3-n": 3, "iperf3-t": 4}
    keys = sorted(groups, key=lambda k: (k[1], k[0], k[2], order.get(k[3], 9)))
    head = ["rate Mbit/s", "loss %", "size", "kind", "n", "goodput Mbit/s", "/link", "/iperf3",
            "/steady", "overhead", "link Mbit/s", "retrans", "runs (goodput Mbit/s)"]
    cells = [head]
    for k in keys:
        v = groups[k]
        g = med([r["goodput_mbit"] for r in v])
        ref_n = iperf_n.get(k[:3])
        ref_t = steady.get(k[:2])
        size = "steady" if k[3] == "iperf3-t" else f"{k[2] / MIB:g} MiB"
        link = med([r.get("link_mbit") for r in v])
        rt = med([r.get("retrans_segs") for r in v])
        cells.append([f"{k[0]:g}", f"{k[1]:g}", size, k[3], str(len(v)), f"{g:.2f}",
                      f"{g / k[0]:.1%}",
                      f"{g / ref_n:.1%}" if ref_n and k[3] != "iperf3-t" else "-",
                      f"{g / ref_t:.1%}" if ref_t else "-",
                      f"{med([r['overhead'] for r in v]):.5f}" if k[3] in RECEIVERS else "-",
                      f"{link:.2f}" if link is not None else "-",
                      f"{rt:g}" if rt is not None else "-",
                      " ".join(f"{r['goodput_mbit']:.2f}" for r in v)])
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) if i < len(head) - 1 else c for i, (c, w) in enumerate(zip(row, widths)))
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    failed = [r for r in rows if "error" in r]
    for r in failed:
        lines.append(f"FAILED {r['kind']} {r['rate_mbit']:g} Mbit/s {r['loss_pct']:g} % "
                     f"{r['size']} B rep {r['rep']}: {' '.join(r['error'].split())[:300]}")
    return "\n".join(lines)


def parse_links(spec: str) -> list[tuple[float, float]]:
    out = []
    for item in spec.split(","):
        rate, _, loss = item.partition(":")
        out.append((float(rate), float(loss or 0)))
    return out


def sizes_for(rate: float, loss: float, args) -> list[int]:
    sizes = [int(float(s) * MIB) for s in args.sizes.split(",")]
    if rate == 50 and not loss and args.big:
        sizes.append(int(args.big * MIB))
    return sizes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--links", default="10,50,100,50:1",
                    help="rate[:loss%%] of the s1-s2 link, comma-separated (default 10,50,100,50:1)")
    ap.add_argument("--sizes", default="5", help="model sizes in MiB (default 5)")
    ap.add_argument("--big", type=float, default=20,
                    help="extra size in MiB for the lossless 50 Mbit/s link (0: none; default 20)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--kinds", default="daitn,raw,iperf3-n,iperf3-t",
                    help="what to measure (default daitn,raw,iperf3-n,iperf3-t; also daitn-inc: "
                         "send_model to helpers' IncrementalReceiver, the recommended change)")
    ap.add_argument("--iperf-seconds", type=float, default=10)
    ap.add_argument("--chunk", type=int, default=0, help="send_model chunk bytes (default: library's)")
    ap.add_argument("--sndbuf", type=int, default=0, help="SO_SNDBUF for the sender (default: autotune)")
    ap.add_argument("--rcvbuf", type=int, default=0, help="SO_RCVBUF for the receiver (default: autotune)")
    ap.add_argument("--cc", help="TCP congestion control of every sender (default: the "
                    "namespace's, net.ipv4.tcp_congestion_control)")
    ap.add_argument("--htb-burst", type=int, default=0, help="HTB burst bytes on the bottleneck "
                    "(default: testbed.shaping's)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_transport: needs root (it builds networks); try sudo", file=sys.stderr)
        return 1
    caps = probe()
    print(f"# datapath {caps.datapath}, Open vSwitch {caps.ovs_version}, {os.cpu_count()} cores, "
          f"loss by {'netem' if caps.netem else 'HTB + cls_bpf random drop'}", flush=True)
    rows: list[dict] = []

    def emit(row):
        print(json.dumps(row, sort_keys=True), flush=True)

    with tempfile.TemporaryDirectory(prefix="daitn-bench-transport-") as tmp:
        for rate, loss in parse_links(args.links):
            rows += bench_link(rate, loss, sizes_for(rate, loss, args), caps, Path(tmp), args, emit)
    print()
    print(table(rows))
    print(f"\n(/link: ideal TCP over HTB is {MAX_GOODPUT_RATIO:.1%}, 1448-byte segments in "
          f"1514-byte frames; /iperf3: vs iperf3 -n of the same size on the same link; "
          f"/steady: vs iperf3 -t)")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
