"""DA-ITN wire format v3 (docs/protocol.md): the struct-only fast path, no scapy.

One message = 36-byte fixed header, TLVs (padded to a 4-byte boundary), a typed
payload, and an optional authentication trailer (u64 nonce + HMAC-SHA256 tag).
:mod:`nodes.scapy_layers` declares the same format as scapy layers for
captures; a property test proves both produce and read the same bytes.

Public surface::

    Message, the body dataclasses (KnowledgeReport, TrainRequest, Feasibility,
    ItineraryBody, Ack, EvalVerdict, InferenceQuery, InferenceResult, Error),
    the TLV value types (Itinerary, Chunk, Parties)
    encode(msg, key=None, nonce=None) -> bytes
    decode(data, key=None) -> Message               one whole message (a UDP datagram)
    peek_length(header) -> int                       total length from the first 36 bytes
    read_message(sock, key=None) -> Message | None   TCP stream; None on clean EOF
    write_message(sock, msg, key=None, nonce=None) -> int
    ReplayWindow().check_and_update(src, nonce) -> bool
    node_id("h12") -> 12, node_name(12) -> "h12"

Exceptions::

    ValueError
     └── WireError        malformed message, or a value that does not fit its field
          └── AuthError   bad tag, or no trailer although the receiver holds a key
    ConnectionError       (read_message) the peer closed in the middle of a message

Speed matters (the controller decodes every punted packet in Python), so
headers and bodies are packed by precompiled ``struct.Struct`` objects, enum
lookups are tuple indexing, and field-by-field diagnosis only runs after a
pack has already failed.
"""
from __future__ import annotations

import enum
import hashlib
import hmac
import re
import socket
import struct
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Union

__all__ = [
    "MAGIC", "VERSION", "HEADER_LEN", "MIN_HDR_WORDS", "MAX_HDR_WORDS", "MAX_TLV_BYTES",
    "TRAILER_LEN", "TAG_LEN", "MAX_PAYLOAD", "AUTH", "LAST", "REPLY",
    "DCC_NODE", "BROADCAST", "UNSPECIFIED", "DCC_IP", "DCC_MAC", "DCC_UDP_PORT", "NODE_TCP_PORT",
    "MsgType", "Tlv", "Role", "Privacy", "EndReason", "AckStatus",
    "WireError", "AuthError",
    "Itinerary", "Chunk", "Parties",
    "KnowledgeReport", "TrainRequest", "Feasibility", "ItineraryBody", "Ack", "EvalVerdict",
    "InferenceQuery", "InferenceResult", "Error", "Message", "BODY_TYPES",
    "encode", "decode", "peek_length", "read_message", "write_message",
    "ReplayWindow", "node_id", "node_name",
]

# --- constants -------------------------------------------------------------------

MAGIC = b"DA"
_MAGIC_U16 = 0x4441
VERSION = 3                     # 3: KNOWLEDGE_REPORT carries load, capacity, models (docs)
HEADER_LEN = 36                 # fixed part, bytes
MIN_HDR_WORDS = HEADER_LEN // 4  # 9
MAX_HDR_WORDS = 255              # hdr_len is a u8 count of 4-byte words
MAX_TLV_BYTES = MAX_HDR_WORDS * 4 - HEADER_LEN  # 984
TAG_LEN = 32
TRAILER_LEN = 8 + TAG_LEN        # u64 nonce + HMAC-SHA256
# Stream readers refuse a length above this before allocating (as v1 did).
MAX_PAYLOAD = 512 * 1024 * 1024

# flags
AUTH = 0x01
LAST = 0x02
REPLY = 0x04

# node ids
UNSPECIFIED = 0
DCC_NODE = 0xFFFE
BROADCAST = 0xFFFF

# where messages go
DCC_IP = "10.255.255.254"
DCC_MAC = "02:dc:c0:00:00:01"
DCC_UDP_PORT = 7070
NODE_TCP_PORT = 7000


class MsgType(enum.IntEnum):
    KNOWLEDGE_REPORT = 1
    TRAIN_REQUEST = 2
    FEASIBILITY = 3
    ITINERARY = 4
    MODEL_CHUNK = 5
    ACK = 6
    EVAL_REQUEST = 7
    EVAL_VERDICT = 8
    TASK_RESULT = 9
    INFERENCE_QUERY = 10
    INFERENCE_RESULT = 11
    ERROR = 12
    DATA_SHARD = 13              # raw training samples to a trusted compute node (spec must allow)


class Tlv(enum.IntEnum):
    PAD = 0
    TARGET_ACCURACY = 1
    DEADLINE = 2
    MAX_LATENCY = 3
    MIN_ACCURACY = 4
    PRIVACY_LEVEL = 5
    REQUIRED_LABELS = 6
    MAX_HOPS = 7
    BYTE_BUDGET = 8
    EPOCHS = 9                   # local epochs the next stop trains (the DCC's plan chooses them)
    ITINERARY = 16
    MODEL_DIGEST = 17
    CHUNK = 18
    TRANSPORT = 19
    PARTIES = 20
    END_REASON = 21
    ACCURACY = 22


class Role(enum.IntFlag):
    """Roles a node offers (KNOWLEDGE_REPORT.roles bitmap)."""
    DATA = 1
    MPVU = 2
    CLIENT = 4
    COMPUTE = 8
    INFERENCE = 16


class Privacy(enum.IntEnum):
    PUBLIC = 0
    TRUSTED = 1
    LOCAL = 2


class EndReason(enum.IntEnum):
    TARGET_REACHED = 1
    DEADLINE = 2
    MAX_LAPS = 3
    INFEASIBLE = 4
    ERROR = 5
    ROLLED_BACK = 6              # the DCC rolled the task back to an earlier verified version: discard this model


class AckStatus(enum.IntEnum):
    OK = 0
    DIGEST_MISMATCH = 1
    REFUSED = 2


class WireError(ValueError):
    """A message is malformed or a value does not fit its field; the text says which and why."""


class AuthError(WireError):
    """The authentication trailer is missing, or its tag does not verify."""


# --- node ids --------------------------------------------------------------------

_HOST_RE = re.compile(r"h([1-9][0-9]{0,4})\Z")


def node_id(name: str) -> int:
    """Map a Mininet host name to its 16-bit node id: ``"h12" -> 12``, ``"dcc" -> 0xFFFE``."""
    if name == "dcc":
        return DCC_NODE
    m = _HOST_RE.match(name) if isinstance(name, str) else None
    if m is None or int(m.group(1)) >= DCC_NODE:
        raise WireError(f"node name {name!r} is not 'dcc' or a host h1..h{DCC_NODE - 1}")
    return int(m.group(1))


def node_name(nid: int) -> str:
    """Map a node id back to its name: ``12 -> "h12"``, ``0xFFFE -> "dcc"``,
    ``0xFFFF -> "broadcast"``."""
    if nid == DCC_NODE:
        return "dcc"
    if nid == BROADCAST:
        return "broadcast"
    if not isinstance(nid, int) or not 1 <= nid < DCC_NODE:
        raise WireError(f"node id {nid!r} names no node (hosts are 1..{DCC_NODE - 1}; "
                        f"0 means unspecified)")
    return f"h{nid}"


# --- TLV value types -------------------------------------------------------------

@dataclass(slots=True)
class Itinerary:
    """Segment list of the nodes an AI object visits (as IPv6 segment routing)."""
    ptr: int = 0                 # index of the current segment
    lap: int = 0
    max_laps: int = 1
    segments: list[int] = field(default_factory=list)


class Chunk(NamedTuple):
    offset: int                  # where this chunk's bytes sit in the model state
    total: int                   # bytes of the whole model state


class Parties(NamedTuple):
    client: int
    mpvu: int


# --- payload (body) types --------------------------------------------------------

@dataclass(slots=True)
class KnowledgeReport:
    """What a node advertises to the DCC, periodically; doubles as the node's heartbeat."""
    roles: int = 0               # Role bitmap
    samples: int = 0
    verification_samples: int = 0
    label_hist: list[int] = field(default_factory=list)  # noisy counts if noise_epsilon > 0
    capacity: float = 0.0        # f32: declared relative compute speed, 0 = no compute
    load: float = 0.0            # f32: busy fraction of the last report interval (may be > 1)
    queue_len: int = 0           # work waiting: models to train, queries queued
    service_ms: float = 0.0      # f32: recent mean inference service time, 0 = none yet
    noise_epsilon: float = 0.0   # f32: epsilon of the Laplace noise on label_hist, 0 = exact
    report_seq: int = 0          # +1 per report from this node: the DCC spots missed heartbeats
    models: list[int] = field(default_factory=list)  # model ids an inference server hosts


@dataclass(slots=True)
class TrainRequest:
    model_bytes: int = 0


@dataclass(slots=True)
class Feasibility:
    feasible: bool = False
    est_seconds: float = 0.0     # f32 on the wire
    est_bytes: int = 0
    reasons: list[str] = field(default_factory=list)


@dataclass(slots=True)
class ItineraryBody:
    policy: str = ""


@dataclass(slots=True)
class Ack:
    next_offset: int = 0
    status: int = AckStatus.OK


@dataclass(slots=True)
class EvalVerdict:
    accuracy: float = 0.0        # f32
    loss: float = 0.0            # f32
    samples: int = 0
    per_class: list[float | None] = field(default_factory=list)  # None <-> NaN on the wire


@dataclass(slots=True)
class InferenceQuery:
    features: list[float] = field(default_factory=list)  # f32 each


@dataclass(slots=True)
class InferenceResult:
    label: int = 0
    confidence: float = 0.0      # f32
    service_ms: float = 0.0      # f32


@dataclass(slots=True)
class Error:
    code: int = 0
    text: str = ""


Body = Union[KnowledgeReport, TrainRequest, Feasibility, ItineraryBody, bytes, Ack, EvalVerdict,
             InferenceQuery, InferenceResult, Error]

# Which body each message type carries (bytes: the raw model state at CHUNK.offset).
BODY_TYPES: dict[MsgType, type] = {
    MsgType.KNOWLEDGE_REPORT: KnowledgeReport,
    MsgType.TRAIN_REQUEST: TrainRequest,
    MsgType.FEASIBILITY: Feasibility,
    MsgType.ITINERARY: ItineraryBody,
    MsgType.MODEL_CHUNK: bytes,
    MsgType.ACK: Ack,
    MsgType.EVAL_REQUEST: bytes,
    MsgType.EVAL_VERDICT: EvalVerdict,
    MsgType.TASK_RESULT: bytes,
    MsgType.INFERENCE_QUERY: InferenceQuery,
    MsgType.INFERENCE_RESULT: InferenceResult,
    MsgType.ERROR: Error,
    MsgType.DATA_SHARD: bytes,
}


@dataclass(slots=True)
class Message:
    """One DA-ITN message: header fields, decoded TLVs, typed body, and the nonce if AUTH."""
    type: MsgType
    flags: int = 0
    hop_count: int = 0
    hop_limit: int = 0
    task_id: int = 0
    model_id: int = 0
    model_version: int = 0
    src: int = 0
    dst: int = 0
    seq: int = 0
    ack: int = 0
    tlvs: dict[Tlv, Any] = field(default_factory=dict)
    body: Body | None = None
    nonce: int | None = None     # set by decode when the AUTH trailer is present

    def require(self, tlv: Tlv) -> Any:
        """Return the value of ``tlv``, or raise WireError saying this message lacks it."""
        try:
            return self.tlvs[tlv]
        except KeyError:
            raise WireError(f"{MsgType(self.type).name} message lacks TLV "
                            f"{Tlv(tlv).name}") from None


# --- precompiled structs ---------------------------------------------------------

# magic, version, type, flags, hdr_len, hop_count, hop_limit, task_id, model_id,
# model_version, src, dst, seq, ack, length
_HDR = struct.Struct("!HBBBBBBIIIHHIII")
assert _HDR.size == HEADER_LEN
_HDR_FIELDS = ("magic", "version", "type", "flags", "hdr_len", "hop_count", "hop_limit",
               "task_id", "model_id", "model_version", "src", "dst", "seq", "ack", "length")
_HDR_FMTS = ("H", "B", "B", "B", "B", "B", "B", "I", "I", "I", "H", "H", "I", "I", "I")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
# KNOWLEDGE_REPORT: roles, n, n_models, reserved (x: sent as 0, skipped on receipt), samples,
# verification_samples, report_seq, queue_len, capacity, load, service_ms, noise_epsilon;
# then n + n_models u32s (label_hist, models), indexed by n + n_models
_KR_FIXED = 36
_KR_N = [struct.Struct(f"!BBBxIIIIffff{k}I") for k in range(511)]
_KR_FLOATS = ("capacity", "load", "service_ms", "noise_epsilon")
_INF = float("inf")
_EV_N = [struct.Struct(f"!ffIB{n}f") for n in range(256)]
_F32_N: dict[int, struct.Struct] = {}
_FEAS = struct.Struct("!BfQB")
_ACK = struct.Struct("!QB")
_IRES = struct.Struct("!Bff")
_ERRH = struct.Struct("!HH")
# TLVs, type and len included
_T_U8 = struct.Struct("!BBB")
_T_U16 = struct.Struct("!BBH")
_T_U32 = struct.Struct("!BBI")
_T_U64 = struct.Struct("!BBQ")
_T_ITIN = struct.Struct("!BBBBBB")   # type, len, ptr, lap, max_laps, reserved
_T_CHUNK = struct.Struct("!BBQQ")
_T_TRANSPORT = struct.Struct("!BBBBH")
_T_PARTIES = struct.Struct("!BBHH")
_ITIN_HEAD = struct.Struct("!BBB")
_U16_N = [struct.Struct(f"!{n}H") for n in range(126)]
_PADS = (b"", b"\0", b"\0\0", b"\0\0\0")
_NAN32 = struct.unpack("!f", b"\x7f\xc0\x00\x00")[0]

_MSGTYPES: tuple = tuple(MsgType(i) if i in MsgType._value2member_map_ else None
                         for i in range(256))
_TLVS: tuple = tuple(Tlv(i) if i in Tlv._value2member_map_ and i else None for i in range(256))
_ROLES = tuple(Role(i) for i in range(256))
_PRIVACY = tuple(Privacy)
_END = (None,) + tuple(EndReason)
_ACKST = tuple(AckStatus)


def _f32s(n: int) -> struct.Struct:
    s = _F32_N.get(n)
    if s is None:
        s = _F32_N[n] = struct.Struct(f"!{n}f")
    return s


def _utf8(d, a: int, e: int, what: str) -> str:
    try:
        return str(d[a:e], "utf-8")
    except UnicodeDecodeError as exc:
        raise WireError(f"{what} is not UTF-8: {exc.reason} at byte {exc.start}") from None


# --- field diagnosis (slow path: only after a pack failed) ------------------------

_RANGES = {"B": (0, 0xFF), "H": (0, 0xFFFF), "I": (0, 0xFFFFFFFF), "Q": (0, 2**64 - 1)}


def _check_int(where: str, name: str, value: Any, fmt: str) -> None:
    lo, hi = _RANGES[fmt]
    what = f"{where}.{name}" if name else where
    if isinstance(value, bool) or not isinstance(value, int):
        raise WireError(f"{what} must be an int, got {type(value).__name__} {value!r}")
    if not lo <= value <= hi:
        raise WireError(f"{what} = {value} does not fit u{struct.calcsize(fmt) * 8} "
                        f"({lo}..{hi})")


def _check_f32(where: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise WireError(f"{where}.{name} must be a float, got {type(value).__name__} {value!r}")
    try:
        struct.pack("!f", value)
    except OverflowError:
        raise WireError(f"{where}.{name} = {value!r} is too large for binary32") from None


def _diagnose(where: str, spec: list[tuple[str, str, Any]]) -> None:
    """Raise WireError naming the first (name, fmt, value) that does not fit; fmt 'f' is f32."""
    for name, fmt, value in spec:
        if fmt == "f":
            _check_f32(where, name, value)
        else:
            _check_int(where, name, value, fmt)


_PACK_ERRORS = (struct.error, OverflowError, TypeError, ValueError, AttributeError)


def _unfit(where: str, exc: Exception) -> WireError:
    # _diagnose found no single culprit (e.g. a value of an odd type): keep the struct text
    return WireError(f"{where} does not fit the wire format: {exc}")


# --- TLV codecs ------------------------------------------------------------------
# encoder: value -> bytes of the whole TLV; decoder: (buf, value_offset, value_len) -> value

def _fixed_point(v: Any, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
        raise WireError(f"TLV {name} = {v!r}: an accuracy must be a number in 0..1")
    return round(v * 10000)


def _enc_acc(t: Tlv) -> Callable[[Any], bytes]:
    def enc(v: Any) -> bytes:
        return _T_U16.pack(t, 2, _fixed_point(v, t.name))
    return enc


def _dec_acc(t: Tlv) -> Callable:
    def dec(d, i: int, n: int) -> float:
        _want_len(t, n, 2)
        v = _U16.unpack_from(d, i)[0]
        if v > 10000:
            raise WireError(f"TLV {t.name} = {v}/10000 is above 1.0")
        return v / 10000
    return dec


def _want_len(t: Tlv, n: int, want: int) -> None:
    if n != want:
        raise WireError(f"TLV {t.name} has length {n}, must be {want}")


def _enc_int(t: Tlv, st: struct.Struct, fmt: str) -> Callable[[Any], bytes]:
    size = st.size - 2

    def enc(v: Any) -> bytes:
        try:
            if isinstance(v, bool):
                raise TypeError
            return st.pack(t, size, v)
        except _PACK_ERRORS as exc:
            _check_int(f"TLV {t.name}", "", v, fmt)
            raise _unfit(f"TLV {t.name}", exc)
    return enc


def _dec_int(t: Tlv, st: struct.Struct) -> Callable:
    size = st.size

    def dec(d, i: int, n: int) -> int:
        _want_len(t, n, size)
        return st.unpack_from(d, i)[0]
    return dec


def _enc_enum(t: Tlv, allowed: tuple) -> Callable[[Any], bytes]:
    def enc(v: Any) -> bytes:
        if isinstance(v, bool) or not isinstance(v, int) or v not in allowed:
            raise WireError(f"TLV {t.name} = {v!r} is not one of {[int(a) for a in allowed]}")
        return _T_U8.pack(t, 1, v)
    return enc


def _dec_enum(t: Tlv, table: tuple) -> Callable:
    def dec(d, i: int, n: int):
        _want_len(t, n, 1)
        v = d[i]
        r = table[v] if v < len(table) else None
        if r is None:
            raise WireError(f"TLV {t.name} = {v} is not one of "
                            f"{[int(a) for a in table if a is not None]}")
        return r
    return dec


def _enc_labels(v: Any) -> bytes:
    if isinstance(v, (int, str)):
        raise WireError(f"TLV REQUIRED_LABELS = {v!r}: give a list of label ids")
    try:
        labels = bytes(v)
    except (TypeError, ValueError):
        raise WireError(f"TLV REQUIRED_LABELS = {v!r}: labels must be ints 0..255") from None
    if len(labels) > 255:
        raise WireError(f"TLV REQUIRED_LABELS has {len(labels)} labels, at most 255 fit")
    return bytes((Tlv.REQUIRED_LABELS, len(labels))) + labels


def _dec_labels(d, i: int, n: int) -> list[int]:
    return list(d[i:i + n])


def _enc_itinerary(v: Any) -> bytes:
    try:
        segs = v.segments
        n = len(segs)
        if n > 125:
            raise WireError(f"TLV ITINERARY has {n} segments, at most 125 fit")
        return (_T_ITIN.pack(Tlv.ITINERARY, 4 + 2 * n, v.ptr, v.lap, v.max_laps, 0)
                + _U16_N[n].pack(*segs))
    except WireError:
        raise
    except _PACK_ERRORS as exc:
        if not isinstance(v, Itinerary):
            raise WireError(f"TLV ITINERARY must be an Itinerary, got {type(v).__name__}") from None
        _diagnose("TLV ITINERARY", [("ptr", "B", v.ptr), ("lap", "B", v.lap),
                                    ("max_laps", "B", v.max_laps)]
                  + [(f"segments[{k}]", "H", s) for k, s in enumerate(v.segments)])
        raise _unfit("TLV ITINERARY", exc)


def _dec_itinerary(d, i: int, n: int) -> Itinerary:
    if n < 4 or n % 2:
        raise WireError(f"TLV ITINERARY has length {n}, must be 4 + 2 × segments")
    ptr, lap, max_laps = _ITIN_HEAD.unpack_from(d, i)   # the reserved byte is ignored
    k = (n - 4) // 2
    return Itinerary(ptr, lap, max_laps, list(_U16_N[k].unpack_from(d, i + 4)))


def _enc_digest(v: Any) -> bytes:
    if not isinstance(v, (bytes, bytearray, memoryview)) or len(v) != 32:
        raise WireError(f"TLV MODEL_DIGEST must be 32 bytes (SHA-256), got {v!r:.80}")
    return b"\x11\x20" + bytes(v)


def _dec_digest(d, i: int, n: int) -> bytes:
    _want_len(Tlv.MODEL_DIGEST, n, 32)
    return bytes(d[i:i + 32])


def _enc_chunk(v: Any) -> bytes:
    try:
        offset, total = v
        return _T_CHUNK.pack(Tlv.CHUNK, 16, offset, total)
    except _PACK_ERRORS as exc:
        if not isinstance(v, tuple) or len(v) != 2:
            raise WireError(f"TLV CHUNK must be (offset, total), got {v!r}") from None
        _diagnose("TLV CHUNK", [("offset", "Q", v[0]), ("total", "Q", v[1])])
        raise _unfit("TLV CHUNK", exc)


def _dec_chunk(d, i: int, n: int) -> Chunk:
    _want_len(Tlv.CHUNK, n, 16)
    return Chunk(*_T_CHUNK.unpack_from(d, i - 2)[2:])


def _enc_transport(v: Any) -> bytes:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 63:
        raise WireError(f"TLV TRANSPORT dscp = {v!r}: a DSCP is an int 0..63")
    return _T_TRANSPORT.pack(Tlv.TRANSPORT, 4, v, 0, 0)


def _dec_transport(d, i: int, n: int) -> int:
    _want_len(Tlv.TRANSPORT, n, 4)
    v = d[i]          # the reserved u8 and u16 are ignored
    if v > 63:
        raise WireError(f"TLV TRANSPORT dscp = {v}: a DSCP is 0..63")
    return v


def _enc_parties(v: Any) -> bytes:
    try:
        client, mpvu = v
        return _T_PARTIES.pack(Tlv.PARTIES, 4, client, mpvu)
    except _PACK_ERRORS as exc:
        if not isinstance(v, tuple) or len(v) != 2:
            raise WireError(f"TLV PARTIES must be (client, mpvu), got {v!r}") from None
        _diagnose("TLV PARTIES", [("client", "H", v[0]), ("mpvu", "H", v[1])])
        raise _unfit("TLV PARTIES", exc)


def _dec_parties(d, i: int, n: int) -> Parties:
    _want_len(Tlv.PARTIES, n, 4)
    return Parties(*_T_PARTIES.unpack_from(d, i - 2)[2:])


_TLV_ENC: dict[int, Callable[[Any], bytes]] = {
    Tlv.TARGET_ACCURACY: _enc_acc(Tlv.TARGET_ACCURACY),
    Tlv.DEADLINE: _enc_int(Tlv.DEADLINE, _T_U64, "Q"),
    Tlv.MAX_LATENCY: _enc_int(Tlv.MAX_LATENCY, _T_U32, "I"),
    Tlv.MIN_ACCURACY: _enc_acc(Tlv.MIN_ACCURACY),
    Tlv.PRIVACY_LEVEL: _enc_enum(Tlv.PRIVACY_LEVEL, _PRIVACY),
    Tlv.REQUIRED_LABELS: _enc_labels,
    Tlv.MAX_HOPS: _enc_int(Tlv.MAX_HOPS, _T_U8, "B"),
    Tlv.BYTE_BUDGET: _enc_int(Tlv.BYTE_BUDGET, _T_U64, "Q"),
    Tlv.EPOCHS: _enc_int(Tlv.EPOCHS, _T_U8, "B"),
    Tlv.ITINERARY: _enc_itinerary,
    Tlv.MODEL_DIGEST: _enc_digest,
    Tlv.CHUNK: _enc_chunk,
    Tlv.TRANSPORT: _enc_transport,
    Tlv.PARTIES: _enc_parties,
    Tlv.END_REASON: _enc_enum(Tlv.END_REASON, tuple(EndReason)),
    Tlv.ACCURACY: _enc_acc(Tlv.ACCURACY),
}

_TLV_DEC_MAP: dict[int, Callable] = {
    Tlv.TARGET_ACCURACY: _dec_acc(Tlv.TARGET_ACCURACY),
    Tlv.DEADLINE: _dec_int(Tlv.DEADLINE, _U64),
    Tlv.MAX_LATENCY: _dec_int(Tlv.MAX_LATENCY, _U32),
    Tlv.MIN_ACCURACY: _dec_acc(Tlv.MIN_ACCURACY),
    Tlv.PRIVACY_LEVEL: _dec_enum(Tlv.PRIVACY_LEVEL, _PRIVACY),
    Tlv.REQUIRED_LABELS: _dec_labels,
    Tlv.MAX_HOPS: _dec_int(Tlv.MAX_HOPS, struct.Struct("!B")),
    Tlv.BYTE_BUDGET: _dec_int(Tlv.BYTE_BUDGET, _U64),
    Tlv.EPOCHS: _dec_int(Tlv.EPOCHS, struct.Struct("!B")),
    Tlv.ITINERARY: _dec_itinerary,
    Tlv.MODEL_DIGEST: _dec_digest,
    Tlv.CHUNK: _dec_chunk,
    Tlv.TRANSPORT: _dec_transport,
    Tlv.PARTIES: _dec_parties,
    Tlv.END_REASON: _dec_enum(Tlv.END_REASON, _END),
    Tlv.ACCURACY: _dec_acc(Tlv.ACCURACY),
}
_TLV_DEC = tuple(_TLV_DEC_MAP.get(i) for i in range(256))


def _encode_tlvs(tlvs: dict) -> bytes:
    try:
        return b"".join([_TLV_ENC[t](tlvs[t]) for t in sorted(tlvs)])
    except KeyError:
        bad = next(t for t in tlvs if t not in _TLV_ENC)
        raise WireError(f"TLV key {bad!r} is not a known Tlv (PAD is added by encode, "
                        f"not given)") from None
    except TypeError:
        raise WireError(f"TLV keys must be Tlv values, got {list(tlvs)!r}") from None


def _decode_tlvs(d, end: int) -> dict:
    """Decode TLVs from byte 36 up to ``end`` (= hdr_len × 4)."""
    tlvs = {}
    i = HEADER_LEN
    last = 0
    while i < end:
        t = d[i]
        if t == 0:
            if end - i > 3:
                raise WireError(f"PAD at offset {i}: {end - i} bytes of padding, at most 3 "
                                f"(PADs only fill the TLV area to a 4-byte boundary)")
            for j in range(i + 1, end):
                if d[j]:
                    raise WireError(f"TLV type {d[j]} at offset {j} follows a PAD (PADs only "
                                    f"end the TLV area)")
            break
        dec = _TLV_DEC[t]
        if i + 2 > end or dec is None or t <= last or i + 2 + d[i + 1] > end:
            raise _tlv_error(d, i, end, last)
        n = d[i + 1]
        tlvs[_TLVS[t]] = dec(d, i + 2, n)
        last = t
        i += 2 + n
    return tlvs


def _tlv_error(d, i: int, end: int, last: int) -> WireError:
    t = d[i]
    if _TLV_DEC[t] is None:
        return WireError(f"unknown TLV type {t} at offset {i}")
    name = _TLVS[t].name
    if i + 2 > end:
        return WireError(f"TLV {name} at offset {i}: its length byte lies past the header "
                         f"(hdr_len ends at {end})")
    if t <= last:
        what = "repeated" if t == last else f"out of order (after {_TLVS[last].name})"
        return WireError(f"TLV {name} at offset {i} is {what}; TLVs appear once each, "
                         f"in ascending type order")
    return WireError(f"TLV {name} at offset {i}: value of {d[i + 1]} bytes overruns the header "
                     f"(hdr_len ends at {end})")


# --- body codecs -----------------------------------------------------------------
# encoder: body -> payload bytes; decoder: (buf, start, end) -> body

def _short(what: str, have: int, need: int, detail: str = "") -> WireError:
    return WireError(f"{what} payload is {have} bytes, shorter than the {need} its type "
                     f"requires{detail}")


def _exact(what: str, have: int, need: int, detail: str = "") -> None:
    if have < need:
        raise _short(what, have, need, detail)
    if have > need:
        raise WireError(f"{what} payload has {have - need} trailing bytes after its "
                        f"{need}-byte body{detail}")


def _kr_range_error(values) -> WireError | None:
    """Name the first KNOWLEDGE_REPORT float that is NaN, infinite or negative (None if none):
    each is a rate, a time or an epsilon, and a NaN would poison the DCC's comparisons."""
    for name, v in zip(_KR_FLOATS, values):
        if not 0.0 <= v < _INF:
            return WireError(f"KNOWLEDGE_REPORT.{name} = {v!r} must be finite and >= 0")
    return None


def _enc_kr(b: KnowledgeReport) -> bytes:
    hist, models = b.label_hist, b.models
    try:
        n, m = len(hist), len(models)
    except TypeError:
        raise WireError(f"KNOWLEDGE_REPORT.label_hist and .models must be lists of ints, got "
                        f"{type(hist).__name__} and {type(models).__name__}") from None
    if n > 255 or m > 255:
        what, k = ("label_hist", n) if n > 255 else ("models", m)
        raise WireError(f"KNOWLEDGE_REPORT.{what} has {k} entries, at most 255 fit")
    try:
        cap, load, svc, eps = b.capacity, b.load, b.service_ms, b.noise_epsilon
        # as in _dec_kr; a Python float too large for the sum is diagnosed as too large for f32
        if not (cap + load + svc + eps < _INF and cap >= 0.0 and load >= 0.0 and svc >= 0.0
                and eps >= 0.0):
            raise ValueError("a float out of range")
        return _KR_N[n + m].pack(b.roles, n, m, b.samples, b.verification_samples, b.report_seq,
                                 b.queue_len, cap, load, svc, eps, *hist, *models)
    except _PACK_ERRORS as exc:
        _diagnose("KNOWLEDGE_REPORT", [
            ("roles", "B", b.roles), ("samples", "I", b.samples),
            ("verification_samples", "I", b.verification_samples),
            ("report_seq", "I", b.report_seq), ("queue_len", "I", b.queue_len)]
            + [(name, "f", getattr(b, name)) for name in _KR_FLOATS]
            + [(f"label_hist[{k}]", "I", v) for k, v in enumerate(hist)]
            + [(f"models[{k}]", "I", v) for k, v in enumerate(models)])
        raise _kr_range_error([getattr(b, name) for name in _KR_FLOATS]) or _unfit(
            "KNOWLEDGE_REPORT", exc)


def _dec_kr(d, a: int, e: int) -> KnowledgeReport:
    if e - a < _KR_FIXED:
        raise _short("KNOWLEDGE_REPORT", e - a, _KR_FIXED)
    n = d[a + 1]
    m = d[a + 2]
    if e - a != _KR_FIXED + 4 * (n + m):      # the check inline: reports are the DCC's hot path
        _exact("KNOWLEDGE_REPORT", e - a, _KR_FIXED + 4 * (n + m),
               f" (label_hist n = {n}, n_models = {m})")
    v = _KR_N[n + m].unpack_from(d, a)
    cap, load, svc, eps = v[7:11]
    # The sum is NaN or inf when any value is (four f32s cannot overflow it); then one
    # compare each for the sign: cheaper than four chained range checks.
    if not (cap + load + svc + eps < _INF and cap >= 0.0 and load >= 0.0 and svc >= 0.0
            and eps >= 0.0):
        raise _kr_range_error(v[7:11])
    k = 11 + n
    return KnowledgeReport(_ROLES[v[0]], v[3], v[4], list(v[11:k]), cap, load, v[6], svc, eps,
                           v[5], list(v[k:]))


def _enc_tr(b: TrainRequest) -> bytes:
    try:
        return _U64.pack(b.model_bytes)
    except _PACK_ERRORS as exc:
        _diagnose("TRAIN_REQUEST", [("model_bytes", "Q", b.model_bytes)])
        raise _unfit("TRAIN_REQUEST", exc)


def _dec_tr(d, a: int, e: int) -> TrainRequest:
    _exact("TRAIN_REQUEST", e - a, 8)
    return TrainRequest(_U64.unpack_from(d, a)[0])


def _enc_feas(b: Feasibility) -> bytes:
    reasons = b.reasons
    if b.feasible not in (0, 1) or not isinstance(b.feasible, int):
        raise WireError(f"FEASIBILITY.feasible = {b.feasible!r}, must be a bool")
    if len(reasons) > 255:
        raise WireError(f"FEASIBILITY has {len(reasons)} reasons, at most 255 fit")
    try:
        parts = [_FEAS.pack(b.feasible, b.est_seconds, b.est_bytes, len(reasons))]
    except _PACK_ERRORS as exc:
        _diagnose("FEASIBILITY", [("est_seconds", "f", b.est_seconds),
                                  ("est_bytes", "Q", b.est_bytes)])
        raise _unfit("FEASIBILITY", exc)
    for k, r in enumerate(reasons):
        if not isinstance(r, str):
            raise WireError(f"FEASIBILITY.reasons[{k}] must be a str, got {type(r).__name__}")
        t = r.encode()
        if len(t) > 0xFFFF:
            raise WireError(f"FEASIBILITY.reasons[{k}] is {len(t)} UTF-8 bytes, at most 65535")
        parts.append(_U16.pack(len(t)))
        parts.append(t)
    return b"".join(parts)


def _dec_feas(d, a: int, e: int) -> Feasibility:
    if e - a < 14:
        raise _short("FEASIBILITY", e - a, 14)
    feasible, est_s, est_b, n = _FEAS.unpack_from(d, a)
    if feasible > 1:
        raise WireError(f"FEASIBILITY.feasible = {feasible}, must be 0 or 1")
    reasons = []
    i = a + 14
    for k in range(n):
        if i + 2 > e:
            raise _short("FEASIBILITY", e - a, i + 2 - a, f" (length of reasons[{k}] of {n})")
        ln = _U16.unpack_from(d, i)[0]
        i += 2
        if i + ln > e:
            raise _short("FEASIBILITY", e - a, i + ln - a, f" (reasons[{k}] of {ln} bytes)")
        reasons.append(_utf8(d, i, i + ln, f"FEASIBILITY.reasons[{k}]"))
        i += ln
    if i != e:
        raise WireError(f"FEASIBILITY payload has {e - i} trailing bytes after its {n} reasons")
    return Feasibility(bool(feasible), est_s, est_b, reasons)


def _enc_itin_body(b: ItineraryBody) -> bytes:
    if not isinstance(b.policy, str):
        raise WireError(f"ITINERARY.policy must be a str, got {type(b.policy).__name__}")
    p = b.policy.encode()
    if len(p) > 255:
        raise WireError(f"ITINERARY.policy is {len(p)} UTF-8 bytes, at most 255 fit")
    return bytes((len(p),)) + p


def _dec_itin_body(d, a: int, e: int) -> ItineraryBody:
    if e - a < 1:
        raise _short("ITINERARY", 0, 1)
    n = d[a]
    _exact("ITINERARY", e - a, 1 + n, f" (policy_len = {n})")
    return ItineraryBody(_utf8(d, a + 1, e, "ITINERARY.policy"))


def _enc_raw(b: Any) -> bytes:
    if isinstance(b, bytes):
        return b
    if isinstance(b, (bytearray, memoryview)):
        return bytes(b)
    raise TypeError


def _dec_raw(d, a: int, e: int) -> bytes:
    return bytes(d[a:e])


def _enc_ack(b: Ack) -> bytes:
    if isinstance(b.status, bool) or not isinstance(b.status, int) or b.status not in _ACKST:
        raise WireError(f"ACK.status = {b.status!r} is not one of {[int(s) for s in _ACKST]}")
    try:
        return _ACK.pack(b.next_offset, b.status)
    except _PACK_ERRORS as exc:
        _diagnose("ACK", [("next_offset", "Q", b.next_offset)])
        raise _unfit("ACK", exc)


def _dec_ack(d, a: int, e: int) -> Ack:
    _exact("ACK", e - a, 9)
    off, st = _ACK.unpack_from(d, a)
    if st >= len(_ACKST):
        raise WireError(f"ACK.status = {st} is not one of {[int(s) for s in _ACKST]}")
    return Ack(off, _ACKST[st])


def _enc_ev(b: EvalVerdict) -> bytes:
    pc = [_NAN32 if v is None else v for v in b.per_class]
    try:
        return _EV_N[len(pc)].pack(b.accuracy, b.loss, b.samples, len(pc), *pc)
    except IndexError:
        raise WireError(f"EVAL_VERDICT.per_class has {len(pc)} classes, at most 255 fit") from None
    except _PACK_ERRORS as exc:
        _diagnose("EVAL_VERDICT", [("accuracy", "f", b.accuracy), ("loss", "f", b.loss),
                                   ("samples", "I", b.samples)]
                  + [(f"per_class[{k}]", "f", v) for k, v in enumerate(pc)])
        raise _unfit("EVAL_VERDICT", exc)


def _dec_ev(d, a: int, e: int) -> EvalVerdict:
    if e - a < 13:
        raise _short("EVAL_VERDICT", e - a, 13)
    n = d[a + 12]
    _exact("EVAL_VERDICT", e - a, 13 + 4 * n, f" (per_class n = {n})")
    v = _EV_N[n].unpack_from(d, a)
    return EvalVerdict(v[0], v[1], v[2], [None if x != x else x for x in v[4:]])


def _enc_iq(b: InferenceQuery) -> bytes:
    f = b.features
    n = len(f)
    if n > 0xFFFF:
        raise WireError(f"INFERENCE_QUERY has {n} features, at most 65535 fit")
    try:
        return _U16.pack(n) + _f32s(n).pack(*f)
    except _PACK_ERRORS as exc:
        _diagnose("INFERENCE_QUERY", [(f"features[{k}]", "f", v) for k, v in enumerate(f)])
        raise _unfit("INFERENCE_QUERY", exc)


def _dec_iq(d, a: int, e: int) -> InferenceQuery:
    if e - a < 2:
        raise _short("INFERENCE_QUERY", e - a, 2)
    n = _U16.unpack_from(d, a)[0]
    _exact("INFERENCE_QUERY", e - a, 2 + 4 * n, f" (features n = {n})")
    return InferenceQuery(list(_f32s(n).unpack_from(d, a + 2)))


def _enc_ires(b: InferenceResult) -> bytes:
    try:
        return _IRES.pack(b.label, b.confidence, b.service_ms)
    except _PACK_ERRORS as exc:
        _diagnose("INFERENCE_RESULT", [("label", "B", b.label), ("confidence", "f", b.confidence),
                                       ("service_ms", "f", b.service_ms)])
        raise _unfit("INFERENCE_RESULT", exc)


def _dec_ires(d, a: int, e: int) -> InferenceResult:
    _exact("INFERENCE_RESULT", e - a, 9)
    return InferenceResult(*_IRES.unpack_from(d, a))


def _enc_err(b: Error) -> bytes:
    if not isinstance(b.text, str):
        raise WireError(f"ERROR.text must be a str, got {type(b.text).__name__}")
    t = b.text.encode()
    if len(t) > 0xFFFF:
        raise WireError(f"ERROR.text is {len(t)} UTF-8 bytes, at most 65535 fit")
    try:
        return _ERRH.pack(b.code, len(t)) + t
    except _PACK_ERRORS as exc:
        _diagnose("ERROR", [("code", "H", b.code)])
        raise _unfit("ERROR", exc)


def _dec_err(d, a: int, e: int) -> Error:
    if e - a < 4:
        raise _short("ERROR", e - a, 4)
    code, n = _ERRH.unpack_from(d, a)
    _exact("ERROR", e - a, 4 + n, f" (text len = {n})")
    return Error(code, _utf8(d, a + 4, e, "ERROR.text"))


_BODY_ENC: dict[int, Callable[[Any], bytes]] = {
    MsgType.KNOWLEDGE_REPORT: _enc_kr, MsgType.TRAIN_REQUEST: _enc_tr,
    MsgType.FEASIBILITY: _enc_feas, MsgType.ITINERARY: _enc_itin_body,
    MsgType.MODEL_CHUNK: _enc_raw, MsgType.ACK: _enc_ack, MsgType.EVAL_REQUEST: _enc_raw,
    MsgType.EVAL_VERDICT: _enc_ev, MsgType.TASK_RESULT: _enc_raw,
    MsgType.INFERENCE_QUERY: _enc_iq, MsgType.INFERENCE_RESULT: _enc_ires,
    MsgType.ERROR: _enc_err, MsgType.DATA_SHARD: _enc_raw,
}
_BODY_DEC = tuple({
    MsgType.KNOWLEDGE_REPORT: _dec_kr, MsgType.TRAIN_REQUEST: _dec_tr,
    MsgType.FEASIBILITY: _dec_feas, MsgType.ITINERARY: _dec_itin_body,
    MsgType.MODEL_CHUNK: _dec_raw, MsgType.ACK: _dec_ack, MsgType.EVAL_REQUEST: _dec_raw,
    MsgType.EVAL_VERDICT: _dec_ev, MsgType.TASK_RESULT: _dec_raw,
    MsgType.INFERENCE_QUERY: _dec_iq, MsgType.INFERENCE_RESULT: _dec_ires,
    MsgType.ERROR: _dec_err, MsgType.DATA_SHARD: _dec_raw,
}.get(i) for i in range(256))
_BODY_CLS = tuple(BODY_TYPES.get(i) for i in range(256))


# --- HMAC -----------------------------------------------------------------------
# hmac.digest re-derives the key pads on every call, which OpenSSL 3 makes slow for
# small messages; caching the keyed inner/outer SHA-256 states per key (RFC 2104) and
# copying them halves the cost of signing and verifying a control message.
_HMAC_STATES: dict[bytes, tuple] = {}
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


def _hmac_sha256(key: bytes, data) -> bytes:
    if type(key) is not bytes:
        key = bytes(key)                  # bytearray/memoryview keys: hashable copy
    st = _HMAC_STATES.get(key)
    if st is None:
        k = (hashlib.sha256(key).digest() if len(key) > 64 else key).ljust(64, b"\0")
        st = (hashlib.sha256(k.translate(_IPAD)), hashlib.sha256(k.translate(_OPAD)))
        if len(_HMAC_STATES) >= 16:      # a run has one key; bound the cache anyway
            _HMAC_STATES.clear()
        _HMAC_STATES[key] = st
    inner = st[0].copy()
    inner.update(data)
    outer = st[1].copy()
    outer.update(inner.digest())
    return outer.digest()


# --- encode / decode -------------------------------------------------------------

def encode(msg: Message, key: bytes | None = None, nonce: int | None = None) -> bytes:
    """Serialise ``msg``; with ``key``, set AUTH and append nonce + HMAC-SHA256 tag.

    ``nonce`` defaults to ``msg.nonce``; one of them is required with a key.
    Raises WireError naming the field when a value does not fit the format.
    """
    typ = msg.type
    enc = _BODY_ENC.get(typ)
    if enc is None:
        raise WireError(f"Message.type {typ!r} is not a MsgType")
    body = msg.body
    cls = _BODY_CLS[typ]
    if cls is bytes:
        try:
            payload = _enc_raw(body)
        except TypeError:
            raise WireError(f"{MsgType(typ).name} body must be bytes (the model state), got "
                            f"{type(body).__name__}") from None
    elif type(body) is not cls:
        raise WireError(f"{MsgType(typ).name} body must be a {cls.__name__}, got "
                        f"{type(body).__name__}")
    else:
        payload = enc(body)
    flags = msg.flags
    if key is not None:
        flags |= AUTH
        if nonce is None:
            nonce = msg.nonce
            if nonce is None:
                raise WireError("encode with a key needs a nonce (argument or Message.nonce)")
    elif flags & AUTH:
        raise WireError("Message.flags has AUTH set but no key was given to sign it")
    tlvs = msg.tlvs
    if tlvs:
        # No overflow check: every TLV once at its largest is 624 bytes < MAX_TLV_BYTES.
        tb = _encode_tlvs(tlvs)
        pad = -len(tb) & 3
        words = (HEADER_LEN + len(tb) + pad) >> 2
    else:
        tb = b""
        pad = 0
        words = MIN_HDR_WORDS
    try:
        head = _HDR.pack(_MAGIC_U16, VERSION, typ, flags, words, msg.hop_count, msg.hop_limit,
                         msg.task_id, msg.model_id, msg.model_version, msg.src, msg.dst,
                         msg.seq, msg.ack, len(payload))
    except _PACK_ERRORS as exc:
        _diagnose("Message", [(n, f, getattr(msg, n)) for n, f in zip(_HDR_FIELDS, _HDR_FMTS)
                              if n not in ("magic", "version", "type", "hdr_len", "length")])
        raise _unfit("Message", exc)
    if key is None:
        return b"".join((head, tb, _PADS[pad], payload)) if tb else head + payload
    try:
        signed = b"".join((head, tb, _PADS[pad], payload, _U64.pack(nonce)))
    except _PACK_ERRORS as exc:
        _check_int("encode", "nonce", nonce, "Q")
        raise _unfit("encode nonce", exc)
    return signed + _hmac_sha256(key, signed)


def _header_error(d) -> WireError | None:
    """Explain why the first 36 bytes are not a v3 header, or None if they are."""
    if d[0] != 0x44 or d[1] != 0x41:
        return WireError(f"bad magic {bytes(d[0:2])!r}, expected {MAGIC!r}")
    if d[2] != VERSION:
        return WireError(f"unsupported version {d[2]}, this node speaks {VERSION}")
    if _MSGTYPES[d[3]] is None:
        return WireError(f"unknown message type {d[3]}")
    if d[5] < MIN_HDR_WORDS:
        return WireError(f"hdr_len {d[5]} words is below the minimum {MIN_HDR_WORDS} "
                         f"(the 36-byte fixed header)")
    return None


def peek_length(header: bytes | bytearray | memoryview, max_payload: int = MAX_PAYLOAD) -> int:
    """Total length of the message whose first 36 bytes are ``header`` (header + TLVs +
    payload + trailer); validates magic, version, type, hdr_len and the length limit."""
    if len(header) < HEADER_LEN:
        raise WireError(f"header needs {HEADER_LEN} bytes, got {len(header)}")
    err = _header_error(header)
    if err is not None:
        raise err
    length = _U32.unpack_from(header, 32)[0]
    if length > max_payload:
        raise WireError(f"length {length} exceeds the {max_payload}-byte payload limit")
    return header[5] * 4 + length + (TRAILER_LEN if header[4] & AUTH else 0)


def decode(data: bytes | bytearray | memoryview, key: bytes | None = None) -> Message:
    """Decode exactly one whole message (e.g. a UDP datagram).

    With ``key``, the message must carry the AUTH trailer and its tag must verify
    (else AuthError); without a key a trailer is parsed (``Message.nonce``) but
    not verified. Replay checks are the caller's (see ReplayWindow).
    """
    if type(data) is memoryview and data.format != "B":
        data = data.cast("B")
    n = len(data)
    if n < HEADER_LEN:
        raise WireError(f"message needs at least {HEADER_LEN} header bytes, got {n}")
    (magic, ver, typ, flags, words, hop_count, hop_limit, task, mid, mver, src, dst, seq, ack,
     length) = _HDR.unpack_from(data)
    mtype = _MSGTYPES[typ]
    if magic != _MAGIC_U16 or ver != VERSION or mtype is None or words < MIN_HDR_WORDS:
        raise _header_error(data)
    hlen = words << 2
    end = hlen + length
    total = end + TRAILER_LEN if flags & AUTH else end
    if total != n:
        if hlen > n:
            raise WireError(f"hdr_len {words} words ({hlen} bytes) runs past the "
                            f"{n}-byte message")
        if total > n:
            raise WireError(f"length says {length} payload bytes"
                            f"{' + 40-byte AUTH trailer' if flags & AUTH else ''}, "
                            f"only {n - hlen} bytes follow the header")
        raise WireError(f"{n - total} trailing bytes after the message (length {length}"
                        f"{', AUTH trailer' if flags & AUTH else ''})")
    nonce = None
    if flags & AUTH:
        if key is not None:
            tag = _hmac_sha256(key, data[:end + 8])
            if not hmac.compare_digest(tag, data[end + 8:total]):
                raise AuthError(f"bad HMAC tag on {mtype.name} from node {src} "
                                f"(wrong key, or the message was altered)")
        nonce = _U64.unpack_from(data, end)[0]
    elif key is not None:
        raise AuthError(f"unauthenticated {mtype.name} from node {src} refused: a key is "
                        f"set, so every message must carry the AUTH trailer")
    tlvs = _decode_tlvs(data, hlen) if hlen > HEADER_LEN else {}
    body = _BODY_DEC[typ](data, hlen, end)
    return Message(mtype, flags, hop_count, hop_limit, task, mid, mver, src, dst, seq, ack,
                   tlvs, body, nonce)


# --- TCP streams -----------------------------------------------------------------

def _recv_into(sock: socket.socket, view: memoryview, got: int, what: str) -> None:
    n = len(view)
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise ConnectionError(f"peer closed after {got} of {n} bytes of {what}")
        got += k


def read_message(sock: socket.socket, key: bytes | None = None,
                 max_payload: int = MAX_PAYLOAD) -> Message | None:
    """Read one message from a stream socket: fixed header, then the rest of the header,
    payload and trailer. Returns None if the peer closed cleanly between messages;
    raises ConnectionError if it closed inside one, WireError if the bytes are malformed."""
    head = bytearray(HEADER_LEN)
    view = memoryview(head)
    k = sock.recv_into(view, HEADER_LEN)
    if k == 0:
        return None
    _recv_into(sock, view, k, "a message header")
    total = peek_length(head, max_payload)
    buf = bytearray(total)
    buf[:HEADER_LEN] = head
    _recv_into(sock, memoryview(buf), HEADER_LEN, f"a {total}-byte message")
    return decode(buf, key)


def write_message(sock: socket.socket, msg: Message, key: bytes | None = None,
                  nonce: int | None = None) -> int:
    """Encode ``msg`` and send it whole on a stream socket; return the bytes written."""
    data = encode(msg, key, nonce)
    sock.sendall(data)
    return len(data)


# --- anti-replay -----------------------------------------------------------------

class ReplayWindow:
    """Per-source anti-replay (as IPsec): the highest nonce seen and a 64-bit bitmap of
    the nonces just below it. Call after the tag has verified."""

    SIZE = 64
    _MASK = (1 << SIZE) - 1

    def __init__(self) -> None:
        # src -> [highest, bitmap]; bit i set = nonce (highest - i) was accepted
        self._state: dict[int, list[int]] = {}
        self.accepted = 0
        self.replayed = 0
        self.too_old = 0

    def check_and_update(self, src: int, nonce: int) -> bool:
        """True (and remember it) if ``nonce`` is new for ``src``; False for a replay or a
        nonce older than the window, counted in ``replayed`` / ``too_old``."""
        st = self._state.get(src)
        if st is None:
            self._state[src] = [nonce, 1]
            self.accepted += 1
            return True
        highest, bitmap = st
        if nonce > highest:
            shift = nonce - highest
            st[1] = ((bitmap << shift) | 1) & self._MASK if shift < self.SIZE else 1
            st[0] = nonce
            self.accepted += 1
            return True
        diff = highest - nonce
        if diff >= self.SIZE:
            self.too_old += 1
            return False
        bit = 1 << diff
        if bitmap & bit:
            self.replayed += 1
            return False
        st[1] = bitmap | bit
        self.accepted += 1
        return True

    def highest(self, src: int) -> int | None:
        """The highest nonce accepted from ``src`` (None if none yet)."""
        st = self._state.get(src)
        return st[0] if st else None
