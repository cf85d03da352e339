"""The DA-ITN v3 wire format (docs/protocol.md) as scapy layers, for captures, traces and tests.

Mirrors :mod:`nodes.wire` field for field (the node runtime and the controller
use that struct-only fast path; a hypothesis test proves both agree byte for
byte on random messages of every type).

Layering of one message::

    DAITN                  fixed header + ``tlvs`` (a list of DAITNTLV* packets, PADs included)
    / DAITN<Body>          one payload layer per message type, chosen by ``type``
    / DAITNAuth            the trailer (u64 nonce, 32-byte tag), only when flags has AUTH

The trailer is a layer of its own, placed after the payload layer: ``DAITN``
splits what follows its header by ``length`` (payload) and, when AUTH is set,
the next 40 bytes (trailer), so a captured message dissects with no Raw or
Padding left over. Building computes ``hdr_len`` (adding 0-3 PAD bytes),
``length`` and every TLV ``len`` when they are None; the HMAC tag needs the
run key, which is not on the wire, so :func:`sign` fills it.

TCP streams carry messages back to back across segments, so DAITN is not bound
to TCP port 7000; reassemble the stream and split it with :func:`dissect_stream`.
"""
from __future__ import annotations

import hmac
import struct

from scapy.fields import (ByteEnumField, ByteField, FieldLenField, FieldListField,
                          FlagsField, IEEEFloatField, IntField, LongField, PacketListField,
                          ShortField, StrField, StrFixedLenField, StrLenField, XByteField,
                          XStrFixedLenField)
from scapy.layers.inet import UDP
from scapy.packet import Packet, Raw, bind_layers

from nodes import wire
from nodes.wire import (AUTH, DCC_UDP_PORT, HEADER_LEN, MAGIC, TRAILER_LEN, VERSION, AckStatus,
                        EndReason, MsgType, Privacy, Tlv)

_FLAG_NAMES = ["AUTH", "LAST", "REPLY"]
_TLV_NAMES = {t.value: t.name for t in Tlv}
_ROLE_NAMES = ["data", "mpvu", "client", "compute", "inference"]


def _name(nid) -> str:
    try:
        return wire.node_name(nid)
    except (ValueError, TypeError):
        return str(nid)


class NodeIdField(ShortField):
    """A 16-bit node id, shown as its host name (h12, dcc, broadcast)."""

    def i2repr(self, pkt, x):
        return f"{x} (unspecified)" if x == 0 else f"{x} ({_name(x)})"


class AccuracyField(ShortField):
    """u16 accuracy × 10000 on the wire, a float in 0..1 in the packet (0.85 <-> 8500)."""

    def i2m(self, pkt, x):
        return 0 if x is None else round(x * 10000)

    def m2i(self, pkt, x):
        return x / 10000

    def any2i(self, pkt, x):
        return x

    def i2repr(self, pkt, x):
        return repr(x)


# --- TLVs ------------------------------------------------------------------------

class DAITNTLV(Packet):
    """Base of the TLV classes: picks the class from the type byte (and falls back to
    DAITNTLVRaw when the type is unknown or the length is wrong for the type)."""
    name = "DA-ITN TLV"
    fields_desc = [ByteEnumField("type", 0, _TLV_NAMES), ByteField("len", None)]
    _fixed_len: int | None = None      # value length of fixed-size TLVs

    @classmethod
    def dispatch_hook(cls, _pkt=None, *args, **kargs):
        if _pkt:
            t = _pkt[0]
            if t == 0:
                return DAITNPad
            sub = _TLV_CLASSES.get(t)
            if sub is None or len(_pkt) < 2:
                return DAITNTLVRaw
            n = _pkt[1]
            if sub._fixed_len is not None and n != sub._fixed_len:
                return DAITNTLVRaw
            if sub is DAITNTLVItinerary and (n < 4 or n % 2):
                return DAITNTLVRaw
            return sub
        return cls

    def post_build(self, pkt: bytes, pay: bytes) -> bytes:
        if self.len is None and len(pkt) >= 2:
            pkt = pkt[:1] + bytes((len(pkt) - 2,)) + pkt[2:]
        return pkt + pay

    def extract_padding(self, s: bytes):
        return b"", s


class DAITNPad(DAITNTLV):
    name = "DA-ITN PAD"
    fields_desc = [ByteEnumField("type", 0, {0: "PAD"})]

    def post_build(self, pkt: bytes, pay: bytes) -> bytes:
        return pkt + pay


class DAITNTLVRaw(DAITNTLV):
    """A TLV this layer cannot read (unknown type, or a length wrong for its type)."""
    name = "DA-ITN TLV (undecoded)"
    fields_desc = [ByteEnumField("type", 0, _TLV_NAMES),
                   FieldLenField("len", None, length_of="value", fmt="B"),
                   StrLenField("value", b"", length_from=lambda p: p.len)]


def _tlv(name: str, t: Tlv, fields: list, fixed: int | None):
    cls = type(name, (DAITNTLV,), {
        "name": f"DA-ITN TLV {t.name}",
        "fields_desc": [ByteEnumField("type", int(t), _TLV_NAMES),
                        ByteField("len", None)] + fields,
        "_fixed_len": fixed,
    })
    return cls


DAITNTLVTargetAccuracy = _tlv("DAITNTLVTargetAccuracy", Tlv.TARGET_ACCURACY,
                              [AccuracyField("accuracy", 0)], 2)
DAITNTLVDeadline = _tlv("DAITNTLVDeadline", Tlv.DEADLINE, [LongField("deadline_ms", 0)], 8)
DAITNTLVMaxLatency = _tlv("DAITNTLVMaxLatency", Tlv.MAX_LATENCY,
                          [IntField("max_latency_ms", 0)], 4)
DAITNTLVMinAccuracy = _tlv("DAITNTLVMinAccuracy", Tlv.MIN_ACCURACY,
                           [AccuracyField("accuracy", 0)], 2)
DAITNTLVPrivacyLevel = _tlv("DAITNTLVPrivacyLevel", Tlv.PRIVACY_LEVEL,
                            [ByteEnumField("level", 0, {p.value: p.name.lower()
                                                        for p in Privacy})], 1)
DAITNTLVRequiredLabels = _tlv("DAITNTLVRequiredLabels", Tlv.REQUIRED_LABELS,
                              [FieldListField("labels", [], ByteField("label", 0),
                                              length_from=lambda p: p.len)], None)
DAITNTLVMaxHops = _tlv("DAITNTLVMaxHops", Tlv.MAX_HOPS, [ByteField("max_hops", 0)], 1)
DAITNTLVByteBudget = _tlv("DAITNTLVByteBudget", Tlv.BYTE_BUDGET, [LongField("byte_budget", 0)], 8)
DAITNTLVEpochs = _tlv("DAITNTLVEpochs", Tlv.EPOCHS, [ByteField("epochs", 0)], 1)
DAITNTLVItinerary = _tlv("DAITNTLVItinerary", Tlv.ITINERARY, [
    ByteField("ptr", 0), ByteField("lap", 0), ByteField("max_laps", 1), XByteField("reserved", 0),
    FieldListField("segments", [], NodeIdField("segment", 0),
                   length_from=lambda p: p.len - 4)], None)
DAITNTLVModelDigest = _tlv("DAITNTLVModelDigest", Tlv.MODEL_DIGEST,
                           [XStrFixedLenField("digest", b"\0" * 32, 32)], 32)
DAITNTLVChunk = _tlv("DAITNTLVChunk", Tlv.CHUNK,
                     [LongField("offset", 0), LongField("total", 0)], 16)
DAITNTLVTransport = _tlv("DAITNTLVTransport", Tlv.TRANSPORT,
                         [ByteField("dscp", 0), XByteField("reserved", 0),
                          ShortField("reserved2", 0)], 4)
DAITNTLVParties = _tlv("DAITNTLVParties", Tlv.PARTIES,
                       [NodeIdField("client", 0), NodeIdField("mpvu", 0)], 4)
DAITNTLVEndReason = _tlv("DAITNTLVEndReason", Tlv.END_REASON,
                         [ByteEnumField("reason", 1, {e.value: e.name.lower()
                                                      for e in EndReason})], 1)
DAITNTLVAccuracy = _tlv("DAITNTLVAccuracy", Tlv.ACCURACY, [AccuracyField("accuracy", 0)], 2)

_TLV_CLASSES: dict[int, type] = {
    cls.fields_desc[0].default: cls for cls in (
        DAITNTLVTargetAccuracy, DAITNTLVDeadline, DAITNTLVMaxLatency, DAITNTLVMinAccuracy,
        DAITNTLVPrivacyLevel, DAITNTLVRequiredLabels, DAITNTLVMaxHops, DAITNTLVByteBudget, DAITNTLVEpochs,
        DAITNTLVItinerary, DAITNTLVModelDigest, DAITNTLVChunk, DAITNTLVTransport,
        DAITNTLVParties, DAITNTLVEndReason, DAITNTLVAccuracy)}
# TLV class by Tlv, for building: TLV_CLASSES[Tlv.CHUNK](offset=0, total=10)
TLV_CLASSES: dict[Tlv, type] = {Tlv(k): v for k, v in _TLV_CLASSES.items()}


# --- common header ---------------------------------------------------------------

class DAITN(Packet):
    """Fixed 36-byte header and TLVs. ``hdr_len`` (words) and ``length`` (payload bytes)
    are filled in when None; the TLV area is padded with PADs to a word boundary."""
    name = "DA-ITN"
    fields_desc = [
        StrFixedLenField("magic", MAGIC, 2),
        ByteField("version", VERSION),
        ByteEnumField("type", MsgType.KNOWLEDGE_REPORT, {m.value: m.name for m in MsgType}),
        FlagsField("flags", 0, 8, _FLAG_NAMES),
        ByteField("hdr_len", None),
        ByteField("hop_count", 0),
        ByteField("hop_limit", 0),
        IntField("task_id", 0),
        IntField("model_id", 0),
        IntField("model_version", 0),
        NodeIdField("src", 0),
        NodeIdField("dst", 0),
        IntField("seq", 0),
        IntField("ack", 0),
        IntField("length", None),
        PacketListField("tlvs", [], DAITNTLV,
                        length_from=lambda p: max(0, (p.hdr_len or 0) * 4 - HEADER_LEN)),
    ]

    def post_build(self, pkt: bytes, pay: bytes) -> bytes:
        if self.hdr_len is None:
            pkt += b"\0" * (-len(pkt) % 4)          # PADs to the word boundary
            if len(pkt) > 255 * 4:
                raise ValueError(f"DA-ITN header of {len(pkt)} bytes exceeds 1020 "
                                 f"(hdr_len is a u8 count of words)")
            pkt = pkt[:5] + bytes((len(pkt) // 4,)) + pkt[6:]
        if self.length is None:
            n = len(pay) - (TRAILER_LEN if isinstance(self.lastlayer(), DAITNAuth) else 0)
            pkt = pkt[:32] + struct.pack("!I", max(n, 0)) + pkt[36:]
        return pkt + pay

    def extract_padding(self, s: bytes):
        n = (self.length or 0) + (TRAILER_LEN if self.flags & AUTH else 0)
        return s[:n], s[n:]

    def do_dissect_payload(self, s: bytes) -> None:
        # s = payload + trailer (extract_padding already cut anything after them)
        n = self.length or 0
        body, trailer = s[:n], s[n:]
        cls = self.guess_payload_class(body)
        if body or cls in _EMPTY_OK:
            try:
                p = cls(body, _internal=1, _underlayer=self)
            except Exception:       # as scapy's own do_dissect_payload: show, don't raise
                p = Raw(body, _internal=1, _underlayer=self)
            self.add_payload(p)
        if trailer:
            last = self.lastlayer()
            try:
                t = DAITNAuth(trailer, _internal=1, _underlayer=last)
            except Exception:
                t = Raw(trailer, _internal=1, _underlayer=last)
            self.add_payload(t)

    def mysummary(self) -> str:
        return self.sprintf(f"DA-ITN %type% {_name(self.src)} > {_name(self.dst)} "
                            f"task=%task_id% seq=%seq%")


class DAITNAuth(Packet):
    """Authentication trailer: nonce and HMAC-SHA256(key, header ‖ payload ‖ nonce)."""
    name = "DA-ITN auth trailer"
    fields_desc = [LongField("nonce", 0), XStrFixedLenField("tag", b"\0" * 32, 32)]

    def extract_padding(self, s: bytes):
        return b"", s


# --- payloads, one per message type ----------------------------------------------

class _Body(Packet):
    def extract_padding(self, s: bytes):
        # leftover bytes inside ``length`` are a malformed payload: keep them visible as Raw
        return s, b""


class DAITNKnowledgeReport(_Body):
    """36 fixed bytes, every field at its natural alignment, then the two u32 lists whose
    counts sit in the first word."""
    name = "DA-ITN KNOWLEDGE_REPORT"
    fields_desc = [FlagsField("roles", 0, 8, _ROLE_NAMES),
                   FieldLenField("n", None, count_of="label_hist", fmt="B"),
                   FieldLenField("n_models", None, count_of="models", fmt="B"),
                   XByteField("reserved", 0),
                   IntField("samples", 0), IntField("verification_samples", 0),
                   IntField("report_seq", 0), IntField("queue_len", 0),
                   IEEEFloatField("capacity", 0.0), IEEEFloatField("load", 0.0),
                   IEEEFloatField("service_ms", 0.0), IEEEFloatField("noise_epsilon", 0.0),
                   FieldListField("label_hist", [], IntField("count", 0),
                                  count_from=lambda p: p.n),
                   FieldListField("models", [], IntField("model_id", 0),
                                  count_from=lambda p: p.n_models)]


class DAITNTrainRequest(_Body):
    name = "DA-ITN TRAIN_REQUEST"
    fields_desc = [LongField("model_bytes", 0)]


class DAITNReason(Packet):
    name = "DA-ITN reason"
    fields_desc = [FieldLenField("len", None, length_of="text", fmt="H"),
                   StrLenField("text", b"", length_from=lambda p: p.len)]

    def extract_padding(self, s: bytes):
        return b"", s


class DAITNFeasibility(_Body):
    name = "DA-ITN FEASIBILITY"
    fields_desc = [ByteField("feasible", 0), IEEEFloatField("est_seconds", 0.0),
                   LongField("est_bytes", 0),
                   FieldLenField("n", None, count_of="reasons", fmt="B"),
                   PacketListField("reasons", [], DAITNReason, count_from=lambda p: p.n)]


class DAITNItinerary(_Body):
    name = "DA-ITN ITINERARY"
    fields_desc = [FieldLenField("policy_len", None, length_of="policy", fmt="B"),
                   StrLenField("policy", b"", length_from=lambda p: p.policy_len)]


class _ModelData(_Body):
    # the payload is exactly the model bytes: DAITN hands over ``length`` bytes
    fields_desc = [StrField("data", b"")]


class DAITNModelChunk(_ModelData):
    name = "DA-ITN MODEL_CHUNK"


class DAITNAck(_Body):
    name = "DA-ITN ACK"
    fields_desc = [LongField("next_offset", 0),
                   ByteEnumField("status", 0, {s.value: s.name.lower() for s in AckStatus})]


class DAITNEvalRequest(_ModelData):
    name = "DA-ITN EVAL_REQUEST"


class DAITNEvalVerdict(_Body):
    name = "DA-ITN EVAL_VERDICT"
    fields_desc = [IEEEFloatField("accuracy", 0.0), IEEEFloatField("loss", 0.0),
                   IntField("samples", 0),
                   FieldLenField("n", None, count_of="per_class", fmt="B"),
                   FieldListField("per_class", [], IEEEFloatField("acc", 0.0),
                                  count_from=lambda p: p.n)]


class DAITNTaskResult(_ModelData):
    name = "DA-ITN TASK_RESULT"


class DAITNDataShard(_ModelData):
    name = "DA-ITN DATA_SHARD"


class DAITNInferenceQuery(_Body):
    name = "DA-ITN INFERENCE_QUERY"
    fields_desc = [FieldLenField("n", None, count_of="features", fmt="H"),
                   FieldListField("features", [], IEEEFloatField("x", 0.0),
                                  count_from=lambda p: p.n)]


class DAITNInferenceResult(_Body):
    name = "DA-ITN INFERENCE_RESULT"
    fields_desc = [ByteField("label", 0), IEEEFloatField("confidence", 0.0),
                   IEEEFloatField("service_ms", 0.0)]


class DAITNError(_Body):
    name = "DA-ITN ERROR"
    fields_desc = [ShortField("code", 0),
                   FieldLenField("len", None, length_of="text", fmt="H"),
                   StrLenField("text", b"", length_from=lambda p: p.len)]


# Payload layer by message type.
BODY_LAYERS: dict[MsgType, type] = {
    MsgType.KNOWLEDGE_REPORT: DAITNKnowledgeReport,
    MsgType.TRAIN_REQUEST: DAITNTrainRequest,
    MsgType.FEASIBILITY: DAITNFeasibility,
    MsgType.ITINERARY: DAITNItinerary,
    MsgType.MODEL_CHUNK: DAITNModelChunk,
    MsgType.ACK: DAITNAck,
    MsgType.EVAL_REQUEST: DAITNEvalRequest,
    MsgType.EVAL_VERDICT: DAITNEvalVerdict,
    MsgType.TASK_RESULT: DAITNTaskResult,
    MsgType.INFERENCE_QUERY: DAITNInferenceQuery,
    MsgType.INFERENCE_RESULT: DAITNInferenceResult,
    MsgType.ERROR: DAITNError,
    MsgType.DATA_SHARD: DAITNDataShard,
}
# An empty model payload (the resume probe) is still a model layer, with data=b"".
_EMPTY_OK = (DAITNModelChunk, DAITNEvalRequest, DAITNTaskResult, DAITNDataShard)


# --- signing and streams ---------------------------------------------------------

def sign(pkt: Packet, key: bytes, nonce: int | None = None) -> Packet:
    """Set AUTH on the DAITN layer of ``pkt``, make sure it ends with a DAITNAuth trailer
    (``nonce`` if given), and fill in its HMAC-SHA256 tag. Returns ``pkt``."""
    d = pkt[DAITN]
    d.flags = int(d.flags) | AUTH
    trailer = d.getlayer(DAITNAuth)
    if trailer is None:
        trailer = DAITNAuth(nonce=nonce or 0)
        d.add_payload(trailer)
    elif nonce is not None:
        trailer.nonce = nonce
    trailer.tag = b"\0" * 32
    raw = bytes(d)
    trailer.tag = hmac.digest(key, raw[:-32], "sha256")
    return pkt


def verify(pkt: Packet, key: bytes) -> bool:
    """True if the DAITN layer of ``pkt`` carries AUTH and a tag that verifies under ``key``."""
    d = pkt[DAITN]
    if not d.flags & AUTH or DAITNAuth not in d:
        return False
    raw = bytes(d)
    return hmac.compare_digest(hmac.digest(key, raw[:-32], "sha256"), raw[-32:])


def dissect_stream(data: bytes) -> list[DAITN]:
    """Split a reassembled TCP stream (port 7000) into its back-to-back messages; an
    incomplete tail raises wire.WireError saying how many bytes are missing."""
    out = []
    i = 0
    while i < len(data):
        if len(data) - i < HEADER_LEN:
            raise wire.WireError(f"stream ends with {len(data) - i} bytes, less than a header")
        n = wire.peek_length(data[i:i + HEADER_LEN])
        if i + n > len(data):
            raise wire.WireError(f"stream ends {i + n - len(data)} bytes short of the message "
                                 f"at offset {i}")
        out.append(DAITN(data[i:i + n]))
        i += n
    return out


for _t, _cls in BODY_LAYERS.items():
    bind_layers(DAITN, _cls, type=int(_t))
bind_layers(UDP, DAITN, dport=DCC_UDP_PORT)
bind_layers(UDP, DAITN, sport=DCC_UDP_PORT)
# TCP (NODE_TCP_PORT) deliberately unbound: see dissect_stream.
