"""Shared node runtime: events, the DCC control channel, model transfers.

One ``NodeRuntime`` per node. Roles (:mod:`nodes.roles`) use it to talk;
how the bytes travel is its :class:`Transport`'s business, so the same role
code runs emulated or in-process:

- :class:`SocketTransport` (the default, emulated runs): control messages go
  by UDP to the DCC service address (the controller receives them as
  packet-ins and answers with packet-outs); models move host to host over TCP
  (:mod:`nodes.transport`).
- :class:`nodes.memnet.MemoryTransport`: an in-process network for tests.

Every message is a DA-ITN message (docs/protocol.md) signed with the run's
key; what fails to verify is dropped, counted and logged with its reason.
"""
from __future__ import annotations

import hashlib
import json
import logging
import socket
import threading
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from nodes import wire
from nodes.transport import (MODEL_TYPES, Endpoint, ModelReceiver, Sent, TransferError, ack_for,
                             send_model, set_dscp)
from nodes.wire import Message, MsgType, Tlv, WireError

log = logging.getLogger("daitn.node")

__all__ = ["NodeConfig", "NodeRuntime", "TransferError", "Transport", "DccChannel", "Inbox",
           "SocketTransport"]


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
    host_options: dict = field(default_factory=dict)   # spec hosts: host -> options
    knowledge: dict = field(default_factory=dict)      # spec knowledge: (noise, intervals)
    inference: dict = field(default_factory=dict)      # spec inference: (batching)
    workloads: list = field(default_factory=list)      # spec workloads: (query workloads)
    dims: dict | None = None     # model input/output sizes of the data set
    compute_nodes: list = field(default_factory=list)  # hosts with the role compute
    serve_s: float = 0.0         # clients: take API-submitted work until idle this long
    mode: str = "dcc"            # spec mode: dcc, or AATS / a baseline (nodes/modes.py)
    modes: dict = field(default_factory=dict)         # spec modes: options per mode


# ---- the transport interface -------------------------------------------------

class DccChannel(ABC):
    """A node's conversation with the DCC: sealed datagrams out, the DCC's answers
    to them back (a UDP socket's stand-in). Use as a context manager."""

    @abstractmethod
    def send(self, data: bytes) -> None:
        """Send one sealed message to the DCC (it may be lost)."""

    @abstractmethod
    def recv(self, timeout: float) -> bytes:
        """The next sealed answer from the DCC; TimeoutError if none within ``timeout`` s."""

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Transport(ABC):
    """How a node's messages travel: to the DCC, and models to and from peers.

    Implementations move bytes sealed and opened by the node's
    :class:`~nodes.transport.Endpoint`; what a node does with what arrives (and
    the ERROR-or-close policy) is the :class:`Inbox`'s, shared by all of them.
    """

    dcc_address: str = "?"  # where the DCC is, for messages to people

    @abstractmethod
    def dcc_channel(self) -> DccChannel:
        """Open a channel to the DCC."""

    @abstractmethod
    def send_model(self, ep: Endpoint, to: str, first: Message, state: bytes, *, dscp: int = 0,
                   deadline: float | None = None) -> Sent:
        """Send ``state`` as chunks of ``first`` to node ``to`` (resuming if the connection
        breaks); return the receiver's reply. TransferError if it cannot be delivered
        (by ``deadline``, a time.time(), if given)."""

    @abstractmethod
    def request(self, ep: Endpoint, to: str, msg: Message, timeout: float) -> Message:
        """Send one message to node ``to`` on a connection of its own and return the
        reply (an ERROR reply too); TransferError if none comes."""

    @abstractmethod
    def serve(self, ep: Endpoint, inbox: "Inbox", stopping: threading.Event, *,
              max_connections: int, idle_timeout_s: float) -> None:
        """Take peers' connections and feed their messages to ``inbox`` until ``stopping``."""

    def close(self) -> None:
        pass


class Inbox:
    """A node's side of its model connections: reassembles models, hands them to the
    roles and says what to answer. Transports feed it each message they read.

    ``on_model(first, state, peer)`` gets every complete, verified model and returns
    the reply (None: a plain ACK); ``on_control(msg, peer)`` other messages.
    """

    def __init__(self, rt: "NodeRuntime", on_model, on_control=None):
        self.rt = rt
        self.on_model = on_model
        self.on_control = on_control
        self.receiver = ModelReceiver()

    @contextmanager
    def connection(self):
        """Count a connection as being served while inside (see NodeRuntime.wait_idle)."""
        rt = self.rt
        with rt._idle:
            rt._active += 1
        try:
            yield
        finally:
            with rt._idle:
                rt._active -= 1
                rt._idle.notify_all()

    def take(self, m: Message, peer: str) -> Message | None:
        """The reply to ``m`` (None: nothing to answer yet); WireError to refuse it."""
        if m.type in MODEL_TYPES:
            reply, first, state = self.receiver.on_chunk(m)
            if first is not None:
                reply = self.on_model(first, state, peer) or ack_for(first)
            return reply
        if self.on_control is not None:
            return self.on_control(m, peer)
        raise WireError(f"{self.rt.name} takes no {MsgType(m.type).name} over TCP")

    def refuse(self, peer: str, e: WireError) -> Message:
        """Record a malformed or unauthenticated message; return the ERROR that says why."""
        log.warning("dropped message from %s: %s", peer, e)
        self.rt.event("message_dropped", peer=peer, reason=str(e), kind_of=type(e).__name__)
        return Message(MsgType.ERROR, flags=wire.REPLY, body=wire.Error(1, str(e)[:500]))

    def broken(self, peer: str, e: Exception) -> None:
        """Record a connection that broke or went silent (it is closed, not answered)."""
        log.warning("connection from %s ended: %s", peer, e)
        self.rt.event("message_dropped", peer=peer, reason=str(e), kind_of=type(e).__name__)


# ---- sockets: UDP to the DCC service address, TCP between hosts ---------------

class _UdpDccChannel(DccChannel):
    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, (wire.DCC_IP, wire.DCC_UDP_PORT))

    def recv(self, timeout: float) -> bytes:
        self.sock.settimeout(timeout)
        data, _ = self.sock.recvfrom(65535)  # socket.timeout is TimeoutError
        return data

    def close(self) -> None:
        self.sock.close()


class SocketTransport(Transport):
    """The emulated network: UDP to wire.DCC_IP (punted to the controller), TCP
    (:mod:`nodes.transport`) to peers at their IPs, one thread per connection."""

    dcc_address = wire.DCC_IP

    def __init__(self, ip: str, hosts: dict[str, str], port: int = wire.NODE_TCP_PORT):
        self.ip = ip          # where we listen
        self.hosts = hosts    # host name -> IP
        self.port = port      # every node's model port (another one only for loopback tests)

    def dcc_channel(self) -> DccChannel:
        return _UdpDccChannel()

    def send_model(self, ep, to, first, state, *, dscp=0, deadline=None) -> Sent:
        return send_model(ep, self.hosts[to], first, state, dscp=dscp, deadline=deadline,
                          port=self.port)

    def request(self, ep, to, msg, timeout) -> Message:
        ip = self.hosts[to]
        try:
            with socket.create_connection((ip, self.port), timeout=timeout) as s:
                set_dscp(s, msg.tlvs.get(Tlv.TRANSPORT, 0))
                s.settimeout(timeout)
                ep.write(s, msg)
                reply = ep.read(s)
        except (OSError, WireError) as e:
            raise TransferError(f"{MsgType(msg.type).name} to {to} ({ip}) failed: {e}") from e
        if reply is None:
            raise TransferError(f"{to} ({ip}) closed without answering {MsgType(msg.type).name}")
        return reply

    def serve(self, ep, inbox, stopping, *, max_connections, idle_timeout_s):
        slots = threading.BoundedSemaphore(max_connections)
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((self.ip, self.port))
        srv.listen(128)
        srv.settimeout(0.5)

        def handle(conn, peer):
            try:
                with inbox.connection(), conn:
                    conn.settimeout(idle_timeout_s)
                    self._serve_conn(conn, peer, ep, inbox)
            finally:
                slots.release()

        while not stopping.is_set():
            if not slots.acquire(timeout=0.5):
                continue
            try:
                conn, (peer, _port) = srv.accept()
            except socket.timeout:
                slots.release()
                continue
            threading.Thread(target=handle, args=(conn, peer), daemon=True, name=f"conn-{peer}").start()
        srv.close()

    @staticmethod
    def _serve_conn(conn, peer, ep, inbox):
        dscp_set = False
        while True:
            try:
                m = ep.read(conn)
                if m is None:
                    return
                if not dscp_set and Tlv.TRANSPORT in m.tlvs:
                    set_dscp(conn, m.tlvs[Tlv.TRANSPORT])  # our replies carry the task's mark too
                    dscp_set = True
                reply = inbox.take(m, peer)
            except WireError as e:  # malformed or unauthenticated: refuse, say why
                err = inbox.refuse(peer, e)
                try:
                    ep.write(conn, err)
                except OSError:
                    pass
                return
            except (ConnectionError, OSError) as e:
                # The connection broke or went silent (e.g. TCP backing off under
                # loss): just close it. An ERROR reply would read as a refusal;
                # closing lets the sender reconnect and resume.
                inbox.broken(peer, e)
                return
            if reply is not None:
                reply.dst = m.src
                try:
                    ep.write(conn, reply)
                except OSError as e:
                    log.warning("reply to %s failed: %s", peer, e)
                    return


# ---- the runtime roles use ---------------------------------------------------

class _Stopping(threading.Event):
    """``NodeRuntime.stopping``: setting it also wakes the report loop, so it ends at once."""

    def __init__(self, wake: threading.Event):
        super().__init__()
        self._wake = wake

    def set(self):
        super().set()
        self._wake.set()


class NodeRuntime:
    def __init__(self, cfg: NodeConfig, transport: Transport | None = None):
        self.cfg = cfg
        self.name = cfg.name
        self.node = wire.node_id(cfg.name)
        self.ep = Endpoint(self.node, cfg.key)
        self.transport = transport if transport is not None else SocketTransport(cfg.ip, cfg.hosts)
        (cfg.run_dir / "events").mkdir(parents=True, exist_ok=True)
        self._events = open(cfg.run_dir / "events" / f"{cfg.name}.jsonl", "a", buffering=1)
        self._lock = threading.Lock()
        self._wake_report = threading.Event()
        self.stopping = _Stopping(self._wake_report)
        self.reports_sent = 0              # knowledge reports handed to the transport
        self._active = 0                   # connections being served
        self._idle = threading.Condition()

    def close(self):
        """Stop the node's loops and close its event log (what run_node started is
        stopped by ``stopping``; this is for owners that start runtimes in-process)."""
        self.stopping.set()
        self.transport.close()
        with self._lock:
            self._events.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- events (append-only JSON lines, one file per node) -----------------
    def event(self, kind: str, **data):
        rec = {"t": time.time(), "src": self.name, "kind": kind, **data}
        with self._lock:
            if not self._events.closed:
                self._events.write(json.dumps(rec, sort_keys=True) + "\n")

    def ip_of(self, node: int) -> str:
        return self.cfg.hosts[wire.node_name(node)]

    # ---- DCC control channel -------------------------------------------------
    def dcc_send(self, msg: Message):
        msg.dst = wire.DCC_NODE
        with self.transport.dcc_channel() as ch:
            ch.send(self.ep.seal(msg))

    def dcc_request(self, msg: Message, done, timeout: float = 1.0, tries: int = 10) -> dict:
        """Send a request to the DCC until ``done(answers)`` holds, where answers maps
        MsgType -> the DCC's message for this task. Retransmits (datagrams may be
        lost); the DCC answers idempotently."""
        msg.dst = wire.DCC_NODE
        answers: dict[MsgType, Message] = {}
        with self.transport.dcc_channel() as ch:
            for attempt in range(1, tries + 1):
                ch.send(self.ep.seal(msg))
                try:
                    while not done(answers):
                        data = ch.recv(timeout)
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
                except TimeoutError:
                    log.info("no full answer from the DCC to %s (try %d/%d)", msg.type.name, attempt, tries)
        raise TransferError(f"the DCC at {self.transport.dcc_address} did not answer "
                            f"{msg.type.name} after {tries} tries")

    def report_loop(self, knowledge, on_answer=None):
        """Send knowledge reports (``knowledge()`` -> wire.KnowledgeReport) every
        ``report_interval_s`` (they double as heartbeats), and at once on report_now().

        With ``on_answer``, the reports go out on one channel kept open, and what
        the DCC sends back on it (work submitted through its API for this client:
        controllers/submissions.py) is passed to ``on_answer(message)`` as it comes."""
        ch = self.transport.dcc_channel() if on_answer is not None else None
        if ch is not None:
            threading.Thread(target=self._answers_loop, args=(ch, on_answer), daemon=True,
                             name="dcc-answers").start()
        try:
            while not self.stopping.is_set():
                self._wake_report.clear()  # before knowledge(): a change during the send reports again
                try:
                    body = knowledge()
                    if hasattr(body, "report_seq"):  # lets the DCC count missed heartbeats
                        body.report_seq = self.reports_sent + 1
                    msg = Message(MsgType.KNOWLEDGE_REPORT, body=body)
                    if ch is None:
                        self.dcc_send(msg)
                    else:
                        msg.dst = wire.DCC_NODE
                        ch.send(self.ep.seal(msg))
                    self.reports_sent += 1
                except (OSError, WireError) as e:  # a refused report must not end the heartbeats
                    log.warning("knowledge report failed: %s", e)
                    self.event("warning", text=f"knowledge report failed: {e}")
                self._wake_report.wait(self.cfg.report_interval_s)
        finally:
            if ch is not None:
                ch.close()

    def _answers_loop(self, ch: DccChannel, on_answer):
        while not self.stopping.is_set():
            try:
                data = ch.recv(0.5)
            except TimeoutError:
                continue
            except OSError:  # closed at the end
                return
            try:
                m = self.ep.open(data)
            except WireError as e:
                self.event("message_dropped", peer="dcc", reason=str(e))
                continue
            try:
                on_answer(m)
            except Exception as e:  # a bad hand-off must not end the heartbeats' reader
                log.exception("DCC answer to a report not taken")
                self.event("warning", text=f"DCC answer {m.type.name} not taken: {e}")

    def report_now(self):
        """Have the report loop send a knowledge report at once (our knowledge changed:
        a model hosted, a load jump). Calls before the next send coalesce into one."""
        self._wake_report.set()

    # ---- node-to-node model transfers ----------------------------------------
    def send_model(self, to: int, first: Message, state: bytes) -> Message:
        """Send a model-bearing message to node ``to``; return its reply."""
        first.dst = to
        dscp = first.tlvs.get(Tlv.TRANSPORT, 0)
        deadline = first.tlvs.get(Tlv.DEADLINE)
        t0 = time.time()
        try:
            sent = self.transport.send_model(
                self.ep, wire.node_name(to), first, state, dscp=dscp,
                deadline=None if deadline is None else deadline / 1000 + 60)
        except TransferError as e:
            self.event("transfer_failed", to=wire.node_name(to), msg=first.type.name,
                       task=first.task_id, error=str(e))
            raise
        self.event("transfer", task=first.task_id, to=wire.node_name(to), msg=first.type.name,
                   bytes=sent.bytes, state_bytes=len(state), seconds=time.time() - t0,
                   attempts=sent.attempts, resumed_from=sent.resumed_from, dscp=dscp,
                   # the digest the transfer carried (the transport puts it on a copy of
                   # ``first``, so reading first's TLV here always gave null)
                   sha256=hashlib.sha256(state).hexdigest(), version=first.model_version)
        return sent.reply

    def request(self, to: int, msg: Message, timeout: float = 30.0) -> Message:
        """Send a control message (e.g. INFERENCE_QUERY) to node ``to`` on a connection of
        its own; return its reply, an ERROR included. TransferError if none comes."""
        msg.dst = to
        return self.transport.request(self.ep, wire.node_name(to), msg, timeout)

    MAX_CONNECTIONS = 32   # concurrent peers; more wait in the listen backlog
    IDLE_TIMEOUT_S = 90.0  # a peer silent this long is dropped (TCP backoff under
                           # 5% loss reached ~30 s between segments)

    def serve(self, on_model, on_control=None):
        """Accept peers' connections and the messages on them, until ``stopping``.

        ``on_model(first, state, peer)`` gets every complete, verified model and
        returns the reply (None: a plain ACK). Over sockets each connection has its
        own thread (at most MAX_CONNECTIONS), so a slow or hostile peer cannot hold
        up others.
        """
        self.transport.serve(self.ep, Inbox(self, on_model, on_control), self.stopping,
                             max_connections=self.MAX_CONNECTIONS,
                             idle_timeout_s=self.IDLE_TIMEOUT_S)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no connection is being served (our last replies are out and
        the peers have closed), so stopping now loses nobody's transfer."""
        with self._idle:
            return self._idle.wait_for(lambda: self._active == 0, timeout)
