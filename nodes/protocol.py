"""DA-ITN wire format (v1): a fixed common header followed by a typed payload.

Every AI message (knowledge report, training request, itinerary, model, MPVU
verdict, task result) starts with this 20-byte header, big-endian:

    0      2    3     4     5       6        8         12    16       20
    | 'DA' | ver| type| flags| hdrlen| reserved| task_id | seq | length |

``length`` is the payload length in bytes.  Control payloads are UTF-8 JSON.
A MODEL payload is ``u32 meta_len | meta JSON | model state bytes`` so that the
metadata (itinerary segment list + pointer, SHA-256, version) travels with the
model while the state stays opaque binary.  The same layout is declared as a
scapy layer in :mod:`nodes.scapy_layers` (for captures and tests); this module
is the fast path used by the node runtime and the controller (no scapy import).

Control messages ride UDP to the DCC service address and are punted to the
controller by a flow; node-to-node messages ride TCP.
"""
from __future__ import annotations

import enum
import json
import socket
import struct
from dataclasses import dataclass

MAGIC = b"DA"
VERSION = 1
HEADER = struct.Struct("!2sBBBBHIII")
HEADER_LEN = HEADER.size  # 20

# The DCC service address: nodes send control messages here; the controller
# answers ARP for it and receives its UDP traffic as packet-ins.
DCC_IP = "10.255.255.254"
DCC_MAC = "02:dc:c0:00:00:01"
DCC_UDP_PORT = 7070
NODE_TCP_PORT = 7000
MAX_PAYLOAD = 512 * 1024 * 1024  # refuse absurd lengths before allocating


class MsgType(enum.IntEnum):
    KNOWLEDGE_REPORT = 1
    TRAIN_REQUEST = 2
    ITINERARY = 3       # the DCC's answer to a training request (feasible or not)
    MODEL = 4           # model state moving to its next stop
    EVAL_REQUEST = 5    # model state sent to an MPVU for verification
    EVAL_VERDICT = 6
    TASK_RESULT = 7     # final model back to the client
    ACK = 8
    ERROR = 9


class ProtocolError(ValueError):
    """A message is malformed; the text says which field and why."""


@dataclass
class Message:
    type: MsgType
    task_id: int = 0
    seq: int = 0
    flags: int = 0
    payload: bytes = b""

    def encode(self) -> bytes:
        return HEADER.pack(MAGIC, VERSION, int(self.type), self.flags, HEADER_LEN, 0,
                           self.task_id, self.seq, len(self.payload)) + self.payload

    # JSON-bodied control messages
    @classmethod
    def control(cls, type: MsgType, body: dict, task_id: int = 0, seq: int = 0) -> "Message":
        return cls(type, task_id, seq, 0, json.dumps(body, sort_keys=True).encode())

    def body(self) -> dict:
        try:
            return json.loads(self.payload.decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ProtocolError(f"{self.type.name} payload is not JSON: {e}") from None

    # MODEL / EVAL_REQUEST / TASK_RESULT carry meta JSON + state bytes
    @classmethod
    def with_model(cls, type: MsgType, meta: dict, state: bytes, task_id: int = 0,
                   seq: int = 0) -> "Message":
        m = json.dumps(meta, sort_keys=True).encode()
        return cls(type, task_id, seq, 0, struct.pack("!I", len(m)) + m + state)

    def model_parts(self) -> tuple[dict, bytes]:
        if len(self.payload) < 4:
            raise ProtocolError(f"{self.type.name} payload too short for meta length")
        (n,) = struct.unpack_from("!I", self.payload)
        if 4 + n > len(self.payload):
            raise ProtocolError(f"{self.type.name} meta length {n} exceeds payload")
        try:
            meta = json.loads(self.payload[4:4 + n].decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ProtocolError(f"{self.type.name} meta is not JSON: {e}") from None
        return meta, self.payload[4 + n:]


def parse_header(data: bytes) -> tuple[MsgType, int, int, int, int]:
    """Return (type, flags, task_id, seq, payload_length) or raise ProtocolError."""
    if len(data) < HEADER_LEN:
        raise ProtocolError(f"header needs {HEADER_LEN} bytes, got {len(data)}")
    magic, ver, typ, flags, hlen, _res, task, seq, length = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r}, expected {MAGIC!r}")
    if ver != VERSION:
        raise ProtocolError(f"unsupported version {ver}, this node speaks {VERSION}")
    if hlen != HEADER_LEN:
        raise ProtocolError(f"header length {hlen}, expected {HEADER_LEN}")
    try:
        mtype = MsgType(typ)
    except ValueError:
        raise ProtocolError(f"unknown message type {typ}") from None
    if length > MAX_PAYLOAD:
        raise ProtocolError(f"payload length {length} exceeds limit {MAX_PAYLOAD}")
    return mtype, flags, task, seq, length


def decode(data: bytes) -> Message:
    """Decode one whole datagram (header + payload)."""
    mtype, flags, task, seq, length = parse_header(data)
    if len(data) != HEADER_LEN + length:
        raise ProtocolError(f"length field says {length} payload bytes, datagram has "
                            f"{len(data) - HEADER_LEN}")
    return Message(mtype, task, seq, flags, bytes(data[HEADER_LEN:]))


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise ConnectionError(f"peer closed after {got} of {n} bytes")
        got += k
    return bytes(buf)


def send_msg(sock: socket.socket, msg: Message) -> int:
    """Send one message on a stream socket; return bytes written."""
    data = msg.encode()
    sock.sendall(data)
    return len(data)


def recv_msg(sock: socket.socket) -> Message:
    """Read one message from a stream socket."""
    head = _recv_exact(sock, HEADER_LEN)
    mtype, flags, task, seq, length = parse_header(head)
    return Message(mtype, task, seq, flags, _recv_exact(sock, length) if length else b"")
