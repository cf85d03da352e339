"""Shared node runtime: events, the DCC control channel, model transfers.

One ``NodeRuntime`` per emulated host. Roles (:mod:`nodes.roles`) use it to
talk: control messages go by UDP to the DCC service address (the controller
receives them as packet-ins and answers with packet-outs); models move host
to host over TCP (:mod:`nodes.transport`). Every message is a DA-ITN v2
message (docs/protocol.md) signed with the run's key; what fails to verify
is dropped, counted and logged with its reason.
"""
from __future__ import annotations

import json
import logging
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from nodes import wire
from nodes.transport import (MODEL_TYPES, Endpoint, ModelReceiver, TransferError, ack_for,
                             send_model, set_dscp)
from nodes.wire import Message, MsgType, Tlv, WireError

log = logging.getLogger("daitn.node")

__all__ = ["NodeConfig", "NodeRuntime", "TransferError"]


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
    key: bytes | None = None     # the run's HMAC key (None: unauthenticated)
    report_interval_s: float = 2.0


class NodeRuntime:
    def __init__(self, cfg: NodeConfig):
        self.cfg = cfg
        self.name = cfg.name
        self.node = wire.node_id(cfg.name)
        self.ep = Endpoint(self.node, cfg.key)
        (cfg.run_dir / "events").mkdir(parents=True, exist_ok=True)
        self._events = open(cfg.run_dir / "events" / f"{cfg.name}.jsonl", "a", buffering=1)
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self._active = 0                   # TCP connections being served
        self._idle = threading.Condition()

    # ---- events (append-only JSON lines, one file per node) -----------------
    def event(self, kind: str, **data):
        rec = {"t": time.time(), "src": self.name, "kind": kind, **data}
        with self._lock:
            self._events.write(json.dumps(rec, sort_keys=True) + "\n")

    def ip_of(self, node: int) -> str:
        return self.cfg.hosts[wire.node_name(node)]

    # ---- DCC control channel (UDP via the fabric, punted to the controller) --
    def dcc_send(self, msg: Message):
        msg.dst = wire.DCC_NODE
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(self.ep.seal(msg), (wire.DCC_IP, wire.DCC_UDP_PORT))

    def dcc_request(self, msg: Message, done, timeout: float = 1.0, tries: int = 10) -> dict:
        """Send a request to the DCC until ``done(answers)`` holds, where answers maps
        MsgType -> the DCC's message for this task. Retransmits (UDP may be lost);
        the DCC answers idempotently."""
        msg.dst = wire.DCC_NODE
        answers: dict[MsgType, Message] = {}
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            for attempt in range(1, tries + 1):
                s.sendto(self.ep.seal(msg), (wire.DCC_IP, wire.DCC_UDP_PORT))
                try:
                    while not done(answers):
                        data, _ = s.recvfrom(65535)
                        try:
                            ans = self.ep.open(data)
                        except WireError as e:
                            self.event("message_dropped", peer="dcc", reason=str(e))
                            continue
                        if ans.type == MsgType.ERROR:
                            raise TransferError(f"DCC refused {msg.type.name}: {ans.body.text}")
                        if ans.task_id == msg.task_id:
                            answers[ans.type] = ans
                    return answers
                except socket.timeout:
                    log.info("no full answer from the DCC to %s (try %d/%d)", msg.type.name, attempt, tries)
        raise TransferError(f"the DCC at {wire.DCC_IP} did not answer {msg.type.name} after {tries} tries")

    def report_loop(self, knowledge):
        """Send knowledge reports (``knowledge()`` -> wire.KnowledgeReport) periodically."""
        while not self.stopping.is_set():
            try:
                self.dcc_send(Message(MsgType.KNOWLEDGE_REPORT, body=knowledge()))
            except OSError as e:
                log.warning("knowledge report failed: %s", e)
            self.stopping.wait(self.cfg.report_interval_s)

    # ---- node-to-node model transfers over TCP ------------------------------
    def send_model(self, to: int, first: Message, state: bytes) -> Message:
        """Send a model-bearing message to node ``to``; return its reply."""
        first.dst = to
        dscp = first.tlvs.get(Tlv.TRANSPORT, 0)
        deadline = first.tlvs.get(Tlv.DEADLINE)
        t0 = time.time()
        try:
            sent = send_model(self.ep, self.ip_of(to), first, state, dscp=dscp,
                              deadline=None if deadline is None else deadline / 1000 + 60)
        except TransferError as e:
            self.event("transfer_failed", to=wire.node_name(to), msg=first.type.name,
                       task=first.task_id, error=str(e))
            raise
        self.event("transfer", task=first.task_id, to=wire.node_name(to), msg=first.type.name,
                   bytes=sent.bytes, state_bytes=len(state), seconds=time.time() - t0,
                   attempts=sent.attempts, resumed_from=sent.resumed_from, dscp=dscp,
                   sha256=first.tlvs[Tlv.MODEL_DIGEST].hex() if Tlv.MODEL_DIGEST in first.tlvs
                   else None, version=first.model_version)
        return sent.reply

    MAX_CONNECTIONS = 32   # concurrent peers; more wait in the listen backlog
    IDLE_TIMEOUT_S = 90.0  # a peer silent this long is dropped (TCP backoff under
                           # 5% loss reached ~30 s between segments)

    def serve(self, on_model, on_control=None):
        """Accept TCP connections and the messages on them.

        ``on_model(first, state, peer)`` gets every complete, verified model and
        returns the reply (None: a plain ACK). Each connection has its own thread
        (at most MAX_CONNECTIONS), so a slow or hostile peer cannot hold up others.
        """
        receiver = ModelReceiver()
        slots = threading.BoundedSemaphore(self.MAX_CONNECTIONS)
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((self.cfg.ip, wire.NODE_TCP_PORT))
        srv.listen(128)
        srv.settimeout(0.5)

        def handle(conn, peer):
            with self._idle:
                self._active += 1
            try:
                with conn:
                    conn.settimeout(self.IDLE_TIMEOUT_S)
                    self._serve_conn(conn, peer, receiver, on_model, on_control)
            finally:
                slots.release()
                with self._idle:
                    self._active -= 1
                    self._idle.notify_all()

        while not self.stopping.is_set():
            if not slots.acquire(timeout=0.5):
                continue
            try:
                conn, (peer, _port) = srv.accept()
            except socket.timeout:
                slots.release()
                continue
            threading.Thread(target=handle, args=(conn, peer), daemon=True, name=f"conn-{peer}").start()
        srv.close()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no connection is being served (our last replies are out and
        the peers have closed), so stopping now loses nobody's transfer."""
        with self._idle:
            return self._idle.wait_for(lambda: self._active == 0, timeout)

    def _serve_conn(self, conn, peer, receiver, on_model, on_control):
        dscp_set = False
        while True:
            try:
                m = self.ep.read(conn)
                if m is None:
                    return
                if not dscp_set and Tlv.TRANSPORT in m.tlvs:
                    set_dscp(conn, m.tlvs[Tlv.TRANSPORT])  # our replies carry the task's mark too
                    dscp_set = True
                if m.type in MODEL_TYPES:
                    reply, first, state = receiver.on_chunk(m)
                    if first is not None:
                        reply = on_model(first, state, peer) or ack_for(first)
                elif on_control is not None:
                    reply = on_control(m, peer)
                else:
                    raise WireError(f"{self.name} takes no {MsgType(m.type).name} over TCP")
            except WireError as e:  # malformed or unauthenticated: refuse, say why
                log.warning("dropped message from %s: %s", peer, e)
                self.event("message_dropped", peer=peer, reason=str(e), kind_of=type(e).__name__)
                try:
                    self.ep.write(conn, Message(MsgType.ERROR, flags=wire.REPLY,
                                                body=wire.Error(1, str(e)[:500])))
                except OSError:
                    pass
                return
            except (ConnectionError, OSError) as e:
                # The connection broke or went silent (e.g. TCP backing off under
                # loss): just close it. An ERROR reply would read as a refusal;
                # closing lets the sender reconnect and resume.
                log.warning("connection from %s ended: %s", peer, e)
                self.event("message_dropped", peer=peer, reason=str(e), kind_of=type(e).__name__)
                return
            if reply is not None:
                reply.dst = m.src
                try:
                    self.ep.write(conn, reply)
                except OSError as e:
                    log.warning("reply to %s failed: %s", peer, e)
                    return
