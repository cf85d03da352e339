"""Sender side of bench/bench_transport.py: runs in h1's namespace, sends one model.

``--mode daitn`` (default): :func:`nodes.transport.send_model` with a real 32-byte key
(read from ``--key-file``), unchanged library code. The endpoint is a thin subclass
that only notes *when* the first chunk goes on the wire (after its seal, just before
its ``sendall``) and when the ACK has been read, and snapshots the socket's
TCP_INFO at that moment - no behaviour changes.

``--mode raw``: the same bytes as one plain ``sendall`` on a bare TCP socket (an
8-byte length first) and a 1-byte application ACK back: what Python + TCP do
without the DA-ITN framing, HMAC and digest, timed the same way.

Knobs for the investigation (all default to the library's behaviour): ``--chunk``
(send_model's chunk size), ``--sndbuf`` (SO_SNDBUF set on the connection right
after connect, by wrapping socket.create_connection in this process only), ``--cc``
(TCP_CONGESTION for the connection, same way).

Prints one JSON object on stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nodes import transport  # noqa: E402
from nodes.transport import Endpoint, send_model  # noqa: E402
from nodes.wire import Message, MsgType, Tlv  # noqa: E402
from nodes import wire  # noqa: E402

# struct tcp_info (linux/tcp.h) fields we report, by byte offset.
_TCPI_U32 = {"rto_us": 8, "snd_mss": 16, "unacked": 24, "lost": 32, "retrans": 36,
             "rtt_us": 68, "rttvar_us": 72, "snd_ssthresh": 76, "snd_cwnd": 80,
             "total_retrans": 100, "segs_out": 136, "min_rtt_us": 148, "data_segs_out": 156}
_TCPI_U64 = {"pacing_rate_Bps": 104, "bytes_acked": 120, "delivery_rate_Bps": 160,
             "busy_time_us": 168, "rwnd_limited_us": 176, "sndbuf_limited_us": 184,
             "bytes_sent": 200, "bytes_retrans": 208}


def tcp_info(sock: socket.socket) -> dict:
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 232)
    except OSError as e:
        return {"error": str(e)}
    out = {"ca_state": raw[1]}
    for k, off in _TCPI_U32.items():
        if off + 4 <= len(raw):
            out[k] = struct.unpack_from("I", raw, off)[0]
    for k, off in _TCPI_U64.items():
        if off + 8 <= len(raw):
            out[k] = struct.unpack_from("Q", raw, off)[0]
    return out


def sock_opts(sock: socket.socket) -> dict:
    cc = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).split(b"\0")[0].decode()
    return {"sndbuf": sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF), "cc": cc}


class TimedEndpoint(Endpoint):
    """Endpoint that records the first data write and the reply read (times, TCP_INFO)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.t_first = None
        self.t_reply = None
        self.info = {}
        self.opts = {}

    def write(self, sock, msg):
        data = self.seal(msg)
        if self.t_first is None:
            self.t_first = time.perf_counter()
        sock.sendall(data)
        return len(data)

    def read(self, sock):
        m = super().read(sock)
        self.t_reply = time.perf_counter()
        self.info = tcp_info(sock)
        self.opts = sock_opts(sock)  # SO_SNDBUF as autotuning left it
        return m


def tune(s: socket.socket, sndbuf: int | None, cc: str | None):
    if sndbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    if cc:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode())


def wrap_create_connection(sndbuf: int | None, cc: str | None):
    if not sndbuf and not cc:
        return
    orig = socket.create_connection

    def create_connection(*a, **kw):
        s = orig(*a, **kw)
        tune(s, sndbuf, cc)
        return s
    transport.socket.create_connection = create_connection  # same module object: this process only


def run_daitn(args, state: bytes, key: bytes) -> dict:
    wrap_create_connection(args.sndbuf, args.cc)
    ep = TimedEndpoint(1, key)
    first = Message(MsgType.MODEL_CHUNK, task_id=1, model_id=1, model_version=1, dst=2,
                    tlvs={Tlv.TARGET_ACCURACY: 0.9, Tlv.TRANSPORT: 12})
    cpu0, w0 = time.process_time(), time.perf_counter()
    sent = send_model(ep, args.ip, first, state, port=args.port, chunk=args.chunk, timeout=300)
    w1, cpu1 = time.perf_counter(), time.process_time()
    if sent.reply.type != MsgType.ACK or sent.reply.body.next_offset != len(state):
        raise SystemExit(f"unexpected reply {sent.reply}")
    return {"seconds": ep.t_reply - ep.t_first, "call_seconds": w1 - w0,
            "wire_bytes": sent.bytes, "attempts": sent.attempts, "cpu_s": cpu1 - cpu0,
            "tcp": ep.info, **ep.opts}


def run_raw(args, state: bytes) -> dict:
    cpu0, w0 = time.process_time(), time.perf_counter()
    with socket.create_connection((args.ip, args.port), timeout=300) as s:
        tune(s, args.sndbuf, args.cc)
        head = struct.pack("!Q", len(state))
        t0 = time.perf_counter()
        s.sendall(head)
        s.sendall(state)
        ack = s.recv(1)
        t1 = time.perf_counter()
        info = tcp_info(s)
        opts = sock_opts(s)
    w1, cpu1 = time.perf_counter(), time.process_time()
    if ack != b"K":
        raise SystemExit(f"raw receiver answered {ack!r}")
    return {"seconds": t1 - t0, "call_seconds": w1 - w0, "wire_bytes": len(state) + 8,
            "attempts": 1, "cpu_s": cpu1 - cpu0, "tcp": info, **opts}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ip", required=True)
    ap.add_argument("--port", type=int, default=wire.NODE_TCP_PORT)
    ap.add_argument("--size", type=int, required=True, help="model state bytes")
    ap.add_argument("--key-file", help="32-byte HMAC key (daitn mode)")
    ap.add_argument("--mode", choices=("daitn", "raw"), default="daitn")
    ap.add_argument("--chunk", type=int, default=transport.CHUNK_BYTES)
    ap.add_argument("--sndbuf", type=int, default=0)
    ap.add_argument("--cc", help="TCP congestion control for this connection (default: the namespace's)")
    args = ap.parse_args()
    state = os.urandom(args.size)
    if args.mode == "daitn":
        key = Path(args.key_file).read_bytes()
        if len(key) != 32:
            raise SystemExit(f"key file holds {len(key)} bytes, want 32")
        out = run_daitn(args, state, key)
    else:
        out = run_raw(args, state)
    out.update(mode=args.mode, size=args.size, chunk=args.chunk if args.mode == "daitn" else None)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
