"""Shared node runtime: events, DCC control channel, model transfers over TCP.

One ``NodeRuntime`` per emulated host. Roles (:mod:`nodes.roles`) use it to
talk: control messages go by UDP to the DCC service address (answered by the
controller with packet-outs); models move host to host over TCP, each message
acknowledged after its SHA-256 is checked, so a transfer either arrives whole
and verified or fails loudly.
"""
from __future__ import annotations

import json
import logging
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from nodes import protocol as proto
from nodes.model import state_digest

log = logging.getLogger("daitn.node")


class TransferError(RuntimeError):
    """A model transfer failed; the message says to whom and why."""


@dataclass
class NodeConfig:
    name: str
    ip: str
    roles: list[str]
    run_dir: Path
    seed: int
    hosts: dict[str, str]        # host name -> IP (the testbed's /etc/hosts)
    data: dict
    model: dict
    training: dict
    tasks: list[dict]
    mpvu: str
    data_nodes: list[str]
    report_interval_s: float = 2.0


class NodeRuntime:
    def __init__(self, cfg: NodeConfig):
        self.cfg = cfg
        self.name = cfg.name
        (cfg.run_dir / "events").mkdir(parents=True, exist_ok=True)
        self._events = open(cfg.run_dir / "events" / f"{cfg.name}.jsonl", "a", buffering=1)
        self._lock = threading.Lock()
        self.stopping = threading.Event()

    # ---- events (append-only JSON lines, one file per node) -----------------
    def event(self, kind: str, **data):
        rec = {"t": time.time(), "src": self.name, "kind": kind, **data}
        with self._lock:
            self._events.write(json.dumps(rec, sort_keys=True) + "\n")

    # ---- DCC control channel (UDP via the fabric, punted to the controller) --
    def dcc_send(self, msg: proto.Message):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(msg.encode(), (proto.DCC_IP, proto.DCC_UDP_PORT))

    def dcc_request(self, msg: proto.Message, expect: proto.MsgType, timeout: float = 1.0,
                    tries: int = 10) -> proto.Message:
        """Send a request to the DCC and wait for its answer, retransmitting
        (UDP may be lost on lossy links); the DCC answers idempotently."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            for attempt in range(1, tries + 1):
                s.sendto(msg.encode(), (proto.DCC_IP, proto.DCC_UDP_PORT))
                try:
                    while True:
                        data, _ = s.recvfrom(65535)
                        ans = proto.decode(data)
                        if ans.type == proto.MsgType.ERROR:
                            raise TransferError(f"DCC refused {msg.type.name}: {ans.body().get('error')}")
                        if ans.type == expect and ans.task_id == msg.task_id:
                            return ans
                except socket.timeout:
                    log.info("no answer from the DCC to %s (try %d/%d)", msg.type.name, attempt, tries)
        raise TransferError(f"the DCC at {proto.DCC_IP} did not answer {msg.type.name} after {tries} tries")

    def report_loop(self, knowledge):
        """Send knowledge reports periodically (``knowledge()`` -> dict)."""
        while not self.stopping.is_set():
            try:
                self.dcc_send(proto.Message.control(proto.MsgType.KNOWLEDGE_REPORT, knowledge()))
            except OSError as e:
                log.warning("knowledge report failed: %s", e)
            self.stopping.wait(self.cfg.report_interval_s)

    # ---- node-to-node messages over TCP -------------------------------------
    def send_model(self, to: str, msg: proto.Message, timeout: float = 120.0) -> proto.Message:
        """Send a model-bearing message to host ``to``; return its reply (ACK or verdict)."""
        ip = self.cfg.hosts[to]
        meta, state = msg.model_parts()
        t0 = time.time()
        try:
            with socket.create_connection((ip, proto.NODE_TCP_PORT), timeout=timeout) as s:
                s.settimeout(timeout)
                n = proto.send_msg(s, msg)
                reply = proto.recv_msg(s)
        except (OSError, ConnectionError, proto.ProtocolError) as e:
            self.event("transfer_failed", to=to, msg=msg.type.name, task=msg.task_id, error=str(e))
            raise TransferError(f"{self.name} -> {to} ({ip}): {msg.type.name} failed: {e}") from e
        if reply.type == proto.MsgType.ERROR:
            raise TransferError(f"{to} refused {msg.type.name}: {reply.body().get('error')}")
        self.event("transfer", task=msg.task_id, to=to, msg=msg.type.name, bytes=n,
                   state_bytes=len(state), seconds=time.time() - t0, sha256=meta.get("sha256"),
                   version=meta.get("version"))
        return reply

    def serve(self, handler):
        """Accept TCP connections; ``handler(msg, peer_ip) -> reply Message``.

        Connections are handled one at a time: a node trains one model at a
        time, and the sender waits for our reply anyway.
        """
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((self.cfg.ip, proto.NODE_TCP_PORT))
        srv.listen(16)
        srv.settimeout(0.5)
        while not self.stopping.is_set():
            try:
                conn, (peer, _port) = srv.accept()
            except socket.timeout:
                continue
            with conn:
                conn.settimeout(120)
                try:
                    msg = proto.recv_msg(conn)
                    if msg.type in (proto.MsgType.MODEL, proto.MsgType.EVAL_REQUEST,
                                    proto.MsgType.TASK_RESULT):
                        meta, state = msg.model_parts()
                        if state_digest(state) != meta.get("sha256"):
                            raise proto.ProtocolError(
                                f"SHA-256 mismatch on {msg.type.name} from {peer}: model state corrupted")
                    reply = handler(msg, peer, conn)
                except (proto.ProtocolError, ConnectionError, OSError) as e:
                    log.warning("dropped message from %s: %s", peer, e)
                    self.event("message_dropped", peer=peer, reason=str(e))
                    try:
                        proto.send_msg(conn, proto.Message.control(proto.MsgType.ERROR, {"error": str(e)}))
                    except OSError:
                        pass
                    continue
                if reply is not None:
                    try:
                        proto.send_msg(conn, reply)
                    except OSError as e:
                        log.warning("reply to %s failed: %s", peer, e)
        srv.close()
