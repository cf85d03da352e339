"""Codec throughput: messages/s of the v3 fast path (nodes/wire.py) and of the scapy layers.

Usage: .venv/bin/python bench/bench_codec.py [--seconds 0.3] [--repeat 3]

Prints a table, then one JSON line per figure:
{"bench": "codec", "kind": ..., "op": ..., "msgs_per_s": ..., "bytes": ..., "n": ...}
Each figure is the best of ``--repeat`` timed loops on one core (best, not mean: the
codec's cost is the floor; noise from the machine only ever adds time).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nodes import wire as W  # noqa: E402
from nodes.wire import Message, MsgType, Tlv  # noqa: E402

KEY = hashlib.sha256(b"bench").digest()


def kinds() -> dict[str, Message]:
    """Three typical messages: a control report, a model chunk header + 4 KiB, a request
    carrying six requirement TLVs."""
    state = bytes(range(256)) * 16
    return {
        "knowledge_report_10bins": Message(
            MsgType.KNOWLEDGE_REPORT, src=12, dst=W.DCC_NODE, seq=41,
            body=W.KnowledgeReport(W.Role.DATA | W.Role.MPVU | W.Role.COMPUTE, 6000, 1000,
                                   [600, 590, 610, 605, 598, 602, 599, 601, 597, 598],
                                   capacity=1.0, load=0.25, queue_len=1, noise_epsilon=1.0,
                                   report_seq=41)),
        "model_chunk_4KiB": Message(
            MsgType.MODEL_CHUNK, src=3, dst=4, task_id=7, model_id=1, model_version=5, seq=9,
            tlvs={Tlv.MODEL_DIGEST: hashlib.sha256(state).digest(),
                  Tlv.CHUNK: W.Chunk(262144, 1_048_576)},
            body=state),
        "train_request_6tlvs": Message(
            MsgType.TRAIN_REQUEST, src=1, dst=W.DCC_NODE, seq=2,
            tlvs={Tlv.TARGET_ACCURACY: 0.85, Tlv.DEADLINE: 1_764_000_000_000,
                  Tlv.PRIVACY_LEVEL: W.Privacy.TRUSTED, Tlv.REQUIRED_LABELS: [0, 3, 9],
                  Tlv.MAX_HOPS: 12, Tlv.BYTE_BUDGET: 5 * 2**30},
            body=W.TrainRequest(431_080)),
    }


def rate(fn, seconds: float, repeat: int) -> tuple[float, int]:
    """Best messages/s of ``fn`` over ``repeat`` loops sized to last about ``seconds``."""
    n = 1
    while True:                                  # size the loop
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t0
        if dt >= seconds / 4:
            break
        n *= 4
    n = max(1, int(n * seconds / dt))
    best = 0.0
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = max(best, n / (time.perf_counter() - t0))
    return best, n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=0.3, help="time per loop (default 0.3)")
    ap.add_argument("--repeat", type=int, default=3, help="loops per figure, best kept")
    args = ap.parse_args(argv)

    # scapy import is slow: keep it out of module load
    from nodes.scapy_layers import (DAITN, TLV_CLASSES, DAITNKnowledgeReport, DAITNModelChunk,
                                    DAITNTrainRequest)

    def scapy_of(m: Message):
        """Build the scapy packet of ``m`` from its field values (what wire.encode does)."""
        if m.type is MsgType.KNOWLEDGE_REPORT:
            b = m.body
            body = DAITNKnowledgeReport(roles=int(b.roles), samples=b.samples,
                                        verification_samples=b.verification_samples,
                                        label_hist=b.label_hist, capacity=b.capacity,
                                        load=b.load, queue_len=b.queue_len,
                                        service_ms=b.service_ms,
                                        noise_epsilon=b.noise_epsilon,
                                        report_seq=b.report_seq, models=b.models)
        elif m.type is MsgType.MODEL_CHUNK:
            body = DAITNModelChunk(data=m.body)
        else:
            body = DAITNTrainRequest(model_bytes=m.body.model_bytes)
        t = m.tlvs
        fields = {Tlv.TARGET_ACCURACY: "accuracy", Tlv.DEADLINE: "deadline_ms",
                  Tlv.PRIVACY_LEVEL: "level", Tlv.REQUIRED_LABELS: "labels",
                  Tlv.MAX_HOPS: "max_hops", Tlv.BYTE_BUDGET: "byte_budget",
                  Tlv.MODEL_DIGEST: "digest"}
        tlvs = []
        for k in sorted(t):
            if k is Tlv.CHUNK:
                tlvs.append(TLV_CLASSES[k](offset=t[k][0], total=t[k][1]))
            else:
                tlvs.append(TLV_CLASSES[k](**{fields[k]: t[k]}))
        return DAITN(src=m.src, dst=m.dst, seq=m.seq, task_id=m.task_id, model_id=m.model_id,
                     model_version=m.model_version, tlvs=tlvs) / body

    figures = []
    for kind, msg in kinds().items():
        plain = W.encode(msg)
        signed = W.encode(msg, KEY, 1)
        assert bytes(scapy_of(msg)) == plain, kind
        cases = [
            ("encode", len(plain), lambda: W.encode(msg)),
            ("decode", len(plain), lambda: W.decode(plain)),
            ("encode_auth", len(signed), lambda: W.encode(msg, KEY, 1)),
            ("decode_auth", len(signed), lambda: W.decode(signed, KEY)),
            ("scapy_build", len(plain), lambda: bytes(scapy_of(msg))),
            ("scapy_dissect", len(plain), lambda: DAITN(plain)),
        ]
        for op, size, fn in cases:
            r, n = rate(fn, args.seconds, args.repeat)
            figures.append({"bench": "codec", "kind": kind, "op": op, "msgs_per_s": round(r),
                            "bytes": size, "n": n})

    print(f"DA-ITN codec, python {platform.python_version()} on {platform.machine()}, "
          f"one core, best of {args.repeat}")
    print(f"{'message':<26}{'op':<15}{'bytes':>7}{'msgs/s':>12}{'µs/msg':>9}")
    for f in figures:
        print(f"{f['kind']:<26}{f['op']:<15}{f['bytes']:>7}{f['msgs_per_s']:>12,}"
              f"{1e6 / f['msgs_per_s']:>9.2f}")
    for f in figures:
        print(json.dumps(f))
    return 0


if __name__ == "__main__":
    sys.exit(main())
