"""A rogue host's traffic, run inside a Mininet host's network namespace.

Used by tests/emulation/test_ai_traffic.py as::

    nsenter -t PID_OF_HOST_SHELL -n python rogue.py inject PLAN.json OUT.json
    nsenter -t PID_OF_HOST_SHELL -n python rogue.py flood CORPUS.bin OUT.json \
        --dst 10.0.0.2 --threads 8 --stop STOP_FILE --max-seconds 120

``inject`` sends prepared messages (TCP to a node, UDP to the DCC service
address) and records what came back. ``flood`` opens one short TCP connection
per message of CORPUS (u32 length + bytes, back to back; cycled if needed),
sends it, half-closes and reads the node's answer until it closes; it stops
when STOP_FILE exists, after --max-seconds, or when the node has refused
connections for --gone-seconds after having accepted some (the run is over).
Progress is written to OUT.json (atomically) every half second and at the end:

* ``delivered``: connections on which the whole message was sent;
* ``send_failed``: connections the node reset while the message was still
  being sent (it refuses a bad header before reading the rest): the node did
  read the start of the message;
* ``answered``: connections on which the node's answer (an ERROR) arrived;
* ``connect_failed``: connections refused (node not listening yet or any more).

Standard library only (the messages are prepared by the test), so that it
starts at once inside the namespace.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import sys
import threading
import time
from pathlib import Path


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def _recv_all(s: socket.socket, limit: int = 1 << 20) -> bytes:
    out = bytearray()
    while len(out) < limit:
        try:
            b = s.recv(65536)
        except (ConnectionResetError, socket.timeout):
            break
        if not b:
            break
        out += b
    return bytes(out)


# --- inject -------------------------------------------------------------------

def _tcp_once(dst: str, port: int, data: bytes, deadline: float) -> dict:
    """Connect (retrying while refused: the node may not listen yet), send, half-close,
    read the answer until the peer closes."""
    tries = 0
    while True:
        tries += 1
        try:
            s = socket.create_connection((dst, port), timeout=5)
            break
        except OSError as e:
            if time.time() > deadline:
                return {"connected": False, "error": str(e), "tries": tries}
            time.sleep(0.1)
    with s:
        s.settimeout(10)
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError as e:
            return {"connected": True, "tries": tries, "error": str(e), "reply": _recv_all(s).hex()}
        return {"connected": True, "tries": tries, "reply": _recv_all(s).hex()}


def _udp_once(dst: str, port: int, data: bytes, wait: float = 2.0, tries: int = 3) -> dict:
    """Send until an answer arrives (at most ``tries`` times)."""
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(wait)
        for _ in range(tries):
            try:
                s.sendto(data, (dst, port))
                sent += 1
                r, _ = s.recvfrom(65535)
                return {"sent": sent, "replies": [r.hex()]}
            except socket.timeout:
                continue
            except OSError as e:       # e.g. the run is over and the interface gone
                return {"sent": sent, "replies": [], "error": str(e)}
    return {"sent": sent, "replies": []}


def inject(plan_path: str, out_path: str) -> int:
    plan = json.loads(Path(plan_path).read_text())
    deadline = time.time() + float(plan.get("connect_timeout_s", 60))
    results = {}
    for a in plan["actions"]:
        data = bytes.fromhex(a["data"])
        if a["proto"] == "tcp":
            results[a["name"]] = _tcp_once(a["dst"], a["port"], data, deadline)
        else:
            results[a["name"]] = _udp_once(a["dst"], a["port"], data)
    _write_json(Path(out_path), results)
    return 0


# --- flood --------------------------------------------------------------------

def _read_corpus(path: str) -> list[bytes]:
    raw = Path(path).read_bytes()
    out, i = [], 0
    while i < len(raw):
        (n,) = struct.unpack_from("!I", raw, i)
        out.append(raw[i + 4:i + 4 + n])
        i += 4 + n
    return out


class Flood:
    def __init__(self, corpus, dst, port, stop_file, max_seconds, gone_seconds, out_path):
        self.corpus = corpus
        self.dst, self.port = dst, port
        self.stop_file = Path(stop_file) if stop_file else None
        self.deadline = time.time() + max_seconds
        self.gone_seconds = gone_seconds
        self.out_path = Path(out_path)
        self.lock = threading.Lock()
        self.next = 0
        self.stats = {"attempted": 0, "delivered": 0, "answered": 0, "connect_failed": 0,
                      "send_failed": 0}
        self.t_first = None          # first delivered message
        self.t_last = None           # last delivered message
        self.last_ok = time.time()
        self.stopped_by = None
        self.done = threading.Event()

    def _stop_reason(self):
        if self.stop_file is not None and self.stop_file.exists():
            return "stop_file"
        if time.time() > self.deadline:
            return "max_seconds"
        if self.t_first is not None and time.time() - self.last_ok > self.gone_seconds:
            return "peer_gone"
        return None

    def worker(self):
        while not self.done.is_set():
            with self.lock:
                i = self.next
                self.next += 1
                self.stats["attempted"] += 1
            data = self.corpus[i % len(self.corpus)]
            try:
                s = socket.create_connection((self.dst, self.port), timeout=5)
            except OSError:
                with self.lock:
                    self.stats["connect_failed"] += 1
                time.sleep(0.05)
                continue
            with s:
                s.settimeout(10)
                try:
                    s.sendall(data)
                    s.shutdown(socket.SHUT_WR)
                except OSError:
                    with self.lock:
                        self.stats["send_failed"] += 1
                        self.last_ok = time.time()
                    continue
                now = time.time()
                with self.lock:
                    self.stats["delivered"] += 1
                    self.t_first = self.t_first or now
                    self.t_last = now
                    self.last_ok = now
                reply = _recv_all(s, 4096)
                if reply:
                    with self.lock:
                        self.stats["answered"] += 1

    def report(self, final=False):
        with self.lock:
            obj = dict(self.stats, t_first=self.t_first, t_last=self.t_last,
                       corpus=len(self.corpus), stopped_by=self.stopped_by, final=final)
        _write_json(self.out_path, obj)

    def run(self, threads: int) -> int:
        ts = [threading.Thread(target=self.worker, daemon=True) for _ in range(threads)]
        for t in ts:
            t.start()
        while True:
            self.report()
            why = self._stop_reason()
            if why:
                self.stopped_by = why
                break
            time.sleep(0.5)
        self.done.set()
        for t in ts:
            t.join(timeout=15)
        self.report(final=True)
        return 0


def _in_host_namespace() -> bool:
    """True unless this process shares the network namespace named by
    DAITN_TEST_NETNS (the test's own, i.e. the machine's). A helper started
    against a host whose ``mnexec`` had not yet unshared its namespace would
    otherwise talk from the machine's own network (seen in CI: a transparent
    proxy there answered h2's address with HTTP 400). pid 1's namespace is not
    a usable reference: /proc/1/ns is unreadable on some machines."""
    outside = os.environ.get("DAITN_TEST_NETNS")
    try:
        return outside is not None and os.readlink("/proc/self/ns/net") != outside
    except OSError:
        return False


def main(argv=None) -> int:
    if not _in_host_namespace():
        print("rogue.py: not inside an emulated host's network namespace "
              "(or DAITN_TEST_NETNS unset); start it with nsenter -t HOST_SHELL_PID -n and DAITN_TEST_NETNS set to the caller's namespace",
              file=sys.stderr)
        return 2
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("inject")
    a.add_argument("plan")
    a.add_argument("out")
    f = sub.add_parser("flood")
    f.add_argument("corpus")
    f.add_argument("out")
    f.add_argument("--dst", default="10.0.0.2")
    f.add_argument("--port", type=int, default=7000)
    f.add_argument("--threads", type=int, default=8)
    f.add_argument("--stop", default=None)
    f.add_argument("--max-seconds", type=float, default=120)
    f.add_argument("--gone-seconds", type=float, default=5)
    args = ap.parse_args(argv)
    if args.cmd == "inject":
        return inject(args.plan, args.out)
    corpus = _read_corpus(args.corpus)
    return Flood(corpus, args.dst, args.port, args.stop, args.max_seconds, args.gone_seconds,
                 args.out).run(args.threads)


if __name__ == "__main__":
    sys.exit(main())
