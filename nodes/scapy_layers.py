"""The DA-ITN common header as a scapy layer, for captures, traces and tests.

Mirrors :mod:`nodes.protocol` field for field (the node runtime uses the
struct-based fast path; a unit test proves both agree byte for byte).
"""
from __future__ import annotations

from scapy.fields import (ByteEnumField, ByteField, IntField, ShortField,
                          StrFixedLenField)
from scapy.layers.inet import UDP
from scapy.packet import Packet, Raw, bind_layers

from nodes.protocol import DCC_UDP_PORT, HEADER_LEN, MAGIC, VERSION, MsgType


class DAITN(Packet):
    name = "DA-ITN"
    fields_desc = [
        StrFixedLenField("magic", MAGIC, 2),
        ByteField("version", VERSION),
        ByteEnumField("type", MsgType.KNOWLEDGE_REPORT, {m.value: m.name for m in MsgType}),
        ByteField("flags", 0),
        ByteField("hdrlen", HEADER_LEN),
        ShortField("reserved", 0),
        IntField("task_id", 0),
        IntField("seq", 0),
        IntField("length", None),
    ]

    def post_build(self, pkt: bytes, pay: bytes) -> bytes:
        if self.length is None:
            pkt = pkt[:16] + len(pay).to_bytes(4, "big") + pkt[20:]
        return pkt + pay

    def extract_padding(self, s: bytes):
        n = self.length or 0
        return s[:n], s[n:]


bind_layers(UDP, DAITN, dport=DCC_UDP_PORT)
bind_layers(UDP, DAITN, sport=DCC_UDP_PORT)
bind_layers(DAITN, Raw)
# TCP streams (model transfers, port NODE_TCP_PORT) carry messages back to back
# across segments, so they are not bound here: a per-segment binding would
# mis-decode every segment that does not start a message. Reassemble the
# stream first (scapy's TCPSession) and decode with DAITN(bytes).
