"""Fuzzing of the untrusted edge: ``compression.decode`` and ``server.replies.screen_reply``.

Contract under test:

* ``compression.decode(bytes)`` either returns finite float32 tensors with the
  declared (or expected) names and shapes, or raises ``PayloadError``. Nothing
  else, ever, and never a hang.
* ``screen_reply(reply_message, ...)`` returns ``Accepted`` (finite update with
  the model's exact names and shapes, sane ``num-examples``) or ``Rejected``.
  It never raises and never hangs.

Inputs come from valid payloads of several pipelines (the presets fp32, q8,
stc, fedzip-like, structured-50pct, sign-ef plus a few more stage
combinations: zstd, huffman, elias/bitmap coders, block granularity, qsgd,
random-k, threshold, fp16/bf16), mutated by truncation, extension, bit
flips, byte/u32 overwrites, insertions, deletions, header/body splices, spec
swaps, forged tensor tables and NaN/Inf injection. Most mutants are re-sealed
(CRC recomputed) so that the structural checks behind the CRC are reached.
Reply messages additionally get wrong Array dtype/stype/shape, extra or
missing arrays and records, records of the wrong kind, absurd or mistyped
``num-examples``, error replies, and optionally a round trip through
Flower's wire objects (deflate/inflate) as the SuperLink would deliver them.

Two engines: seeded explicit loops (exact, quotable counts; 10,000+ inputs
together) and hypothesis (shrinking, different distribution). Every outcome
is tallied in ``TALLY``; ``test_zz_report`` prints the totals (shown without
``-s``) and, when the whole module ran, asserts the 10,000-input floor.
Set ``FEDSQUEEZE_FUZZ_REPORT=path.json`` to also write them to a file.

Each input runs under a hard per-input deadline (``SIGALRM``); a breach is a
``hang`` outcome and fails the test.
"""

from __future__ import annotations

import collections
import contextlib
import json
import math
import os
import signal
import struct
import time
import traceback

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import compression
from compression import wire
from fedsqueeze.models import initial_state
from fedsqueeze.protocol.messages import METRICS, UPDATE, payloads_record
from server.replies import Accepted, Rejected, screen_reply

# ----------------------------------------------------------------------------- budget

N_DECODE = int(os.environ.get("FEDSQUEEZE_FUZZ_DECODE", 6000))   # seeded decode inputs
N_REPLY = int(os.environ.get("FEDSQUEEZE_FUZZ_REPLY", 4000))     # seeded reply messages
N_HYP = int(os.environ.get("FEDSQUEEZE_FUZZ_HYPOTHESIS", 600))   # examples per hypothesis test
MIN_TOTAL = 10_000
DEADLINE_S = 5.0          # hard per-input deadline (generous: the machine is shared and niced)
SEED = 20_260_001

#: outcome tallies: TALLY[engine][outcome] = count
TALLY: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
SLOWEST: dict[str, float] = collections.defaultdict(float)

# ----------------------------------------------------------------------------- fixtures

PIPELINES = {
    "fp32": "fp32",
    "q8": "q8",
    "stc": "stc",
    "fedzip-like": "fedzip-like",
    "structured-50pct": "structured-50pct",
    "sign-ef": "sign-ef",
    "fp16": "fp16",
    "bf16": "bf16",
    "randk-1pct": "randk-1pct",
    "q4-block-zstd": "quant=uniform,bits=4,granularity=block,block=64,zstd=true",
    "qsgd-huffman": "quant=qsgd,bits=4,entropy=huffman",
    "topk-elias-affine": "prune=topk,keep=0.05,quant=uniform,bits=3,mode=affine,coder=elias",
    "threshold-bitmap": "prune=threshold,threshold=0.01,coder=bitmap",
    "structured-kmeans": "prune=structured,keep=0.25,quant=kmeans,clusters=4",
}

SHAPES = {k: tuple(v.shape) for k, v in initial_state("seed-cnn", 0).items()}
NUM_PARAMS = sum(math.prod(s) for s in SHAPES.values())
MAX_PAYLOAD = 4 * NUM_PARAMS * 2 + 65_536   # generous; the server uses server.replies.payload_bound
MAX_EXAMPLES = 60_000
MARKER = 0.123456789  # a unique float written into a raw tensor so NaN can be planted at its offset


def _update(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {k: torch.randn(s, generator=g) * 0.01 for k, s in SHAPES.items()}
    out["conv1.bias"][3] = MARKER  # 16 elements < min-numel: always a RAW section
    return out


def _header_len(payload: bytes) -> int:
    r = wire.Reader(wire.unseal(payload))
    wire.read_header(r, 1 << 40)
    return r._pos


@pytest.fixture(scope="module")
def corpus() -> dict[str, tuple[compression.PipelineSpec, bytes, int]]:
    """name -> (spec, valid payload, header length)."""
    out = {}
    for i, (name, text) in enumerate(PIPELINES.items()):
        spec = compression.parse_spec(text)
        payload = compression.encode(_update(i), spec, round=1 + i % 3, seed=i)
        assert compression.decode(payload, expected=SHAPES).keys() == SHAPES.keys()
        out[name] = (spec, payload, _header_len(payload))
    return out


# ----------------------------------------------------------------------------- deadline


class Hang(BaseException):
    """Raised by the alarm; a BaseException so no ``except Exception`` in the code under test eats it."""


@contextlib.contextmanager
def deadline(seconds: float):
    def _alarm(signum, frame):
        raise Hang(f"input took longer than {seconds} s")

    # pytest-timeout (signal method) also uses SIGALRM/ITIMER_REAL: save its handler and
    # remaining time, and give them back afterwards so the per-test timeout still holds.
    old = signal.signal(signal.SIGALRM, _alarm)
    outer, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    t0 = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        if outer > 0:
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - t0), 0.001))


# ----------------------------------------------------------------------------- mutations

INTERESTING_U8 = (0x00, 0x01, 0x02, 0x07, 0x08, 0x7F, 0x80, 0xFE, 0xFF)
INTERESTING_U32 = (0, 1, 2, 255, 256, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF)
NONFINITE = (struct.pack("<f", float("nan")), struct.pack("<f", float("inf")), struct.pack("<f", float("-inf")),
             b"\xff\xff\xff\xff")

MUTATIONS = ("valid", "random", "random-header", "truncate", "extend", "bitflip", "byteset", "u32set", "delete",
             "insert", "splice", "respec", "forge", "nan", "unsealed-bitflip", "empty-like")


def _body(p: bytes) -> bytes:
    return p[:-4]


def _forge_header(rng: np.random.Generator, spec_text: str) -> bytes:
    """A header with a random (often hostile) tensor table."""
    w = wire.Writer()
    w.raw(wire.MAGIC)
    w.u8(wire.FORMAT_VERSION)
    w.u8(0 if rng.random() < 0.9 else int(rng.integers(1, 256)))
    s = spec_text.encode()
    w.u16(len(s))
    w.raw(s)
    count = int(rng.choice([0, 1, 2, 6, int(rng.integers(0, 10)), 0xFFFF, 0xFFFFFFFF]))
    w.u32(count)
    real = list(SHAPES.items())
    for i in range(min(count, 8)):
        if rng.random() < 0.5 and i < len(real):
            name, shape = real[i]
            if rng.random() < 0.5:  # perturb one dimension
                shape = list(shape)
                if shape:
                    shape[int(rng.integers(len(shape)))] = int(rng.choice(INTERESTING_U32))
                shape = tuple(shape)
            nb = name.encode()
        else:
            nb = bytes(rng.integers(0, 256, size=int(rng.integers(0, 12)), dtype=np.uint8))
            shape = tuple(int(rng.choice([0, 1, 3, 16, 1568, int(rng.integers(0, 1 << 32))]))
                          for _ in range(int(rng.integers(0, 10))))
        w.u8(len(nb))
        w.raw(nb)
        w.u8(int(rng.choice([0, 1, 2, 3, 4, 255])))
        w.u8(len(shape) if rng.random() < 0.9 else int(rng.integers(0, 256)))
        for d in shape:
            w.u32(d)
    return w.getvalue()


def mutate(rng: np.random.Generator, corpus, name: str) -> tuple[str, bytes]:
    """One mutant of the ``name`` pipeline's valid payload; returns (mutation kind, bytes)."""
    spec, payload, hlen = corpus[name]
    kind = MUTATIONS[int(rng.integers(len(MUTATIONS)))]
    body = bytearray(_body(payload))
    n = len(body)
    if kind == "valid":
        return kind, payload
    if kind == "random":
        return kind, rng.bytes(int(rng.integers(0, 4096)))
    if kind == "random-header":  # correct magic/version, then noise; sealed
        return kind, wire.seal(wire.MAGIC + bytes([1, 0]) + rng.bytes(int(rng.integers(0, 2048))))
    if kind == "empty-like":
        return kind, [b"", b"\x00" * 8, wire.seal(b""), wire.seal(wire.MAGIC), wire.seal(wire.MAGIC + b"\x01\x00")][
            int(rng.integers(5))]
    if kind == "truncate":
        cut = int(rng.integers(0, n))
        return kind, (wire.seal(bytes(body[:cut])) if rng.random() < 0.85 else payload[:cut])
    if kind == "extend":
        return kind, wire.seal(bytes(body) + rng.bytes(int(rng.integers(1, 64))))
    if kind in ("bitflip", "unsealed-bitflip"):
        lo = 0 if rng.random() < 0.3 else hlen  # mostly the body, sometimes anywhere
        for _ in range(int(rng.integers(1, 17))):
            i = int(rng.integers(lo, n)) if n > lo else 0
            if n:
                body[i] ^= 1 << int(rng.integers(8))
        return kind, (wire.seal(bytes(body)) if kind == "bitflip" else bytes(body) + payload[-4:])
    if kind == "byteset":
        for _ in range(int(rng.integers(1, 5))):
            if n:
                body[int(rng.integers(n))] = INTERESTING_U8[int(rng.integers(len(INTERESTING_U8)))]
        return kind, wire.seal(bytes(body))
    if kind == "u32set":
        if n >= 4:
            i = int(rng.integers(0, n - 3))
            v = int(rng.choice(INTERESTING_U32 + (n, n - i, int(rng.integers(0, 1 << 32)))))
            body[i:i + 4] = (v & 0xFFFFFFFF).to_bytes(4, "little")
        return kind, wire.seal(bytes(body))
    if kind == "delete":
        i = int(rng.integers(0, max(n, 1)))
        return kind, wire.seal(bytes(body[:i] + body[i + int(rng.integers(1, 33)):]))
    if kind == "insert":
        i = int(rng.integers(0, max(n, 1)))
        return kind, wire.seal(bytes(body[:i]) + rng.bytes(int(rng.integers(1, 33))) + bytes(body[i:]))
    if kind == "splice":  # this header, another pipeline's body (or vice versa)
        other = list(corpus)[int(rng.integers(len(corpus)))]
        _, op, ohlen = corpus[other]
        if rng.random() < 0.5:
            return kind, wire.seal(bytes(body[:hlen]) + _body(op)[ohlen:])
        return kind, wire.seal(_body(op)[:ohlen] + bytes(body[hlen:]))
    if kind == "respec":  # swap the spec string in the header for another canonical spec
        other = compression.parse_spec(list(PIPELINES.values())[int(rng.integers(len(PIPELINES)))]).to_string()
        old = spec.to_string().encode()
        new = other.encode()
        start = 4 + 2 + 2
        assert bytes(body[start:start + len(old)]) == old
        return kind, wire.seal(bytes(body[:start - 2]) + len(new).to_bytes(2, "little") + new
                               + bytes(body[start + len(old):]))
    if kind == "forge":
        hdr = _forge_header(rng, spec.to_string())
        rest = bytes(body[hlen:]) if rng.random() < 0.6 else rng.bytes(int(rng.integers(0, 512)))
        return kind, wire.seal(hdr + rest)
    if kind == "nan":  # plant NaN/Inf where the marker float sits (raw section), or at a random aligned offset
        mark = struct.pack("<f", MARKER)
        i = bytes(body).find(mark)
        if i < 0:
            i = hlen + 4 * int(rng.integers(0, max((n - hlen) // 4, 1)))
        body[i:i + 4] = NONFINITE[int(rng.integers(len(NONFINITE)))]
        return kind, wire.seal(bytes(body[:n]))
    raise AssertionError(kind)


# ----------------------------------------------------------------------------- oracles


def check_decode(payload: bytes, expected: dict | None, max_numel: int) -> str:
    """Run decode under the deadline; return the outcome label (raises on a contract breach)."""
    try:
        with deadline(DEADLINE_S):
            out = compression.decode(payload, expected=expected, max_numel=max_numel)
    except compression.PayloadError:
        return "PayloadError"
    if expected is not None:
        assert {k: tuple(v.shape) for k, v in out.items()} == expected
    for k, v in out.items():
        assert v.dtype == torch.float32 and bool(torch.isfinite(v).all()), k
    return "decoded finite same-shape"


def check_screen(msg, spec, max_norm: float) -> str:
    with deadline(DEADLINE_S):
        res = screen_reply(msg, spec, SHAPES, max_payload_bytes=MAX_PAYLOAD, max_examples=MAX_EXAMPLES,
                           max_update_norm=max_norm)
    if isinstance(res, Accepted):
        assert {k: tuple(v.shape) for k, v in res.update.items()} == SHAPES
        assert all(v.dtype == torch.float32 and bool(torch.isfinite(v).all()) for v in res.update.values())
        assert isinstance(res.num_examples, int) and 0 < res.num_examples <= MAX_EXAMPLES
        assert 0 < res.payload_bytes <= MAX_PAYLOAD
        return "Accepted"
    assert isinstance(res, Rejected), type(res)
    assert res.tag in {"crash", "protocol", "size", "pipeline", "payload", "examples", "norm"}, res.tag
    return f"Rejected:{res.tag}"


def _record(engine: str, label: str, seconds: float) -> None:
    TALLY[engine][label] += 1
    SLOWEST[engine] = max(SLOWEST[engine], seconds)


def _run(engine: str, fn, *args) -> str:
    """Apply an oracle, converting any contract breach into an 'other' outcome (re-raised by the caller)."""
    t = time.perf_counter()
    try:
        label = fn(*args)
    except Hang:
        label = "hang"
    except Exception:  # noqa: BLE001 - anything else is a finding
        label = "other"
        TALLY[engine + ":errors"][traceback.format_exc(limit=3).strip().splitlines()[-1][:200]] += 1
    _record(engine, label, time.perf_counter() - t)
    return label


# ----------------------------------------------------------------------------- reply messages




REPLY_MUTATIONS = ("valid", "payload", "payload", "payload", "array-dtype", "array-stype", "array-shape",
                   "array-data", "array-numpy", "two-arrays", "no-arrays", "missing-update", "missing-metrics",
                   "metrics-as-config", "update-as-config", "update-as-metrics", "empty", "examples", "loss",
                   "error", "other-pipeline", "oversize", "extra-records")
EXAMPLES = (None, 0, -1, 1, 600, MAX_EXAMPLES, MAX_EXAMPLES + 1, 2 ** 62, -(2 ** 63), 1.5, 600.0,
            float("nan"), float("inf"), [600], [1.0, 2.0], [])


def _roundtrip(msg):
    """Deflate the message into Flower's wire objects and inflate it back (what the SuperLink delivers)."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
    from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

    contents = {oid: obj.deflate() for oid, obj in get_all_nested_objects(msg).items()}
    return inflate_object_from_contents(msg.object_id, contents)


def build_reply(rng: np.random.Generator, corpus, instruction, name: str, kind: str | None = None):
    """A (possibly hostile) train reply to ``instruction`` for pipeline ``name``; returns (kind, msg, spec)."""
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.app.error import Error

    spec, payload, _ = corpus[name]
    kind = kind or REPLY_MUTATIONS[int(rng.integers(len(REPLY_MUTATIONS)))]
    p = payload
    metrics = {"num-examples": 600, "train-loss": 0.3, "rel-distortion": 0.1}
    update = payloads_record([p], ["payload"])
    records = {}
    if kind == "payload":
        p = mutate(rng, corpus, name)[1]
        update = payloads_record([p], ["payload"])
    elif kind == "array-dtype":
        update = ArrayRecord({"payload": Array(dtype=str(rng.choice(["float32", "int8", "uint16", "", "uint8 ",
                                                                      "UINT8", "bool"])),
                                               shape=(len(p),), stype="raw", data=p)})
    elif kind == "array-stype":
        update = ArrayRecord({"payload": Array(dtype="uint8", shape=(len(p),),
                                               stype=str(rng.choice(["numpy.ndarray", "torch", "", "RAW"])), data=p)})
    elif kind == "array-shape":
        shape = [(len(p) + 1,), (len(p) - 1,), (len(p), 1), (), (1, len(p)), (-len(p),), (0,)][int(rng.integers(7))]
        update = ArrayRecord({"payload": Array(dtype="uint8", shape=shape, stype="raw", data=p)})
    elif kind == "array-data":  # shape claims the real length, data differs
        cut = int(rng.integers(0, len(p)))
        update = ArrayRecord({"payload": Array(dtype="uint8", shape=(len(p),), stype="raw",
                                               data=p[:cut] if rng.random() < 0.5 else p + rng.bytes(3))})
    elif kind == "array-numpy":
        arr = np.frombuffer(p, dtype=np.uint8) if rng.random() < 0.5 else np.frombuffer(
            p[:len(p) // 4 * 4], dtype=np.float32)
        update = ArrayRecord({"payload": Array(arr)})
    elif kind == "two-arrays":
        update = payloads_record([p, p], ["payload", "extra"])
    elif kind == "no-arrays":
        update = ArrayRecord()
    elif kind == "other-pipeline":
        other = list(corpus)[int(rng.integers(len(corpus)))]
        update = payloads_record([corpus[other][1]], ["payload"])
    elif kind == "oversize":
        update = payloads_record([wire.seal(_body(p) + bytes(MAX_PAYLOAD))], ["payload"])
    elif kind == "examples":
        v = EXAMPLES[int(rng.integers(len(EXAMPLES)))]
        if v is None:
            del metrics["num-examples"]
        else:
            metrics["num-examples"] = v
    elif kind == "loss":
        for key in ("train-loss", "rel-distortion"):
            choice = int(rng.integers(5))
            if choice == 0:
                del metrics[key]
            else:
                metrics[key] = [float("nan"), float("inf"), [1.0, 2.0], -(2 ** 62)][choice - 1]
    elif kind == "error":
        reason = rng.bytes(int(rng.integers(0, 600))).decode("latin-1")
        return kind, Message(Error(code=int(rng.integers(-5, 10)), reason=reason), reply_to=instruction), spec
    if kind == "missing-update":
        update = None
    if kind == "update-as-config":
        records[UPDATE] = ConfigRecord({"payload": p})
        update = None
    if kind == "update-as-metrics":
        records[UPDATE] = MetricRecord({"payload": list(np.frombuffer(p[:64], np.uint8).astype(int).tolist())})
        update = None
    if update is not None:
        records[UPDATE] = update
    if kind == "missing-metrics":
        pass
    elif kind == "metrics-as-config":
        records[METRICS] = ConfigRecord({"num-examples": 600, "train-loss": "0.3"})
    else:
        records[METRICS] = MetricRecord(metrics)
    if kind == "extra-records":
        records["junk"] = ConfigRecord({"x": rng.bytes(16)})
        records["model"] = payloads_record([p])
    if kind == "empty":
        records = {}
    msg = Message(RecordDict(records), reply_to=instruction)
    if rng.random() < 0.25:
        with contextlib.suppress(Exception):  # a message the wire format cannot carry never reaches the server
            msg = _roundtrip(msg)
    return kind, msg, spec


# ----------------------------------------------------------------------------- seeded loops


def _fail_report(engine: str, bad: list) -> str:
    errs = TALLY.get(engine + ":errors", {})
    return f"{len(bad)} contract breaches, first: {bad[:5]}; errors: {dict(errs)}"


def test_decode_seeded_fuzz(corpus):
    """N_DECODE mutated payloads: PayloadError or finite tensors of the right shapes, nothing else."""
    rng = np.random.default_rng(SEED)
    names = list(corpus)
    bad = []
    for i in range(N_DECODE):
        name = names[i % len(names)]
        kind, payload = mutate(rng, corpus, name)
        if rng.random() < 0.75:
            expected, max_numel = SHAPES, 50_000_000                 # what the server does
        else:
            expected, max_numel = None, 4 * NUM_PARAMS               # deeper parsing of forged tables
        label = _run("decode-seeded", check_decode, payload, expected, max_numel)
        TALLY["decode-seeded:by-mutation"][f"{kind}:{label}"] += 1
        if label in ("other", "hang"):
            bad.append((i, name, kind, label))
    assert not bad, _fail_report("decode-seeded", bad)
    t = TALLY["decode-seeded"]
    assert t["decoded finite same-shape"] > 0 and t["PayloadError"] > N_DECODE // 2


def test_screen_reply_seeded_fuzz(corpus, instruction):
    """N_REPLY hostile reply Messages: Accepted or Rejected, nothing else; valid replies are accepted."""
    rng = np.random.default_rng(SEED + 1)
    names = list(corpus)
    bad = []
    for i in range(N_REPLY):
        name = names[i % len(names)]
        kind, msg, spec = build_reply(rng, corpus, instruction, name)
        max_norm = float(rng.choice([0.0, 0.0, 0.0, 1e-3, 100.0]))
        label = _run("screen-seeded", check_screen, msg, spec, max_norm)
        TALLY["screen-seeded:by-mutation"][f"{kind}:{label}"] += 1
        if label in ("other", "hang") or (kind == "valid" and max_norm != 1e-3 and label != "Accepted"):
            bad.append((i, name, kind, label))
    assert not bad, _fail_report("screen-seeded", bad)
    t = TALLY["screen-seeded"]
    assert t["Accepted"] > 0 and sum(v for k, v in t.items() if k.startswith("Rejected:")) > N_REPLY // 2


# ----------------------------------------------------------------------------- hypothesis

HYP = settings(max_examples=N_HYP, deadline=None, database=None, derandomize=True, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.function_scoped_fixture])


@HYP
@given(data=st.binary(max_size=4096), expected=st.booleans())
def test_decode_hypothesis_arbitrary_bytes(data, expected):
    """Arbitrary bytes, bare and re-sealed with a valid CRC."""
    for payload in (data, wire.seal(data), wire.seal(wire.MAGIC + b"\x01\x00" + data)):
        label = _run("decode-hypothesis", check_decode, payload, SHAPES if expected else None, 4 * NUM_PARAMS)
        assert label in ("PayloadError", "decoded finite same-shape"), (label, dict(TALLY["decode-hypothesis:errors"]))


@HYP
@given(name=st.sampled_from(sorted(PIPELINES)),
       edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255),
                                st.sampled_from(["set", "xor", "insert", "delete"])), min_size=1, max_size=8),
       cut=st.none() | st.floats(0, 1),
       reseal=st.booleans())
def test_decode_hypothesis_edits(corpus, name, edits, cut, reseal):
    """Byte edits at relative positions of a valid payload of each pipeline (re-sealed or not)."""
    spec, payload, hlen = corpus[name]
    body = bytearray(_body(payload))
    for pos, val, op in edits:
        i = int(pos * len(body))
        if op == "set":
            body[i] = val
        elif op == "xor":
            body[i] ^= val or 1
        elif op == "insert":
            body[i:i] = bytes([val])
        elif len(body) > 1:
            del body[i]
    if cut is not None:
        body = body[:int(cut * len(body))]
    out = wire.seal(bytes(body)) if reseal else bytes(body) + payload[-4:]
    label = _run("decode-hypothesis", check_decode, out, SHAPES, 50_000_000)
    assert label in ("PayloadError", "decoded finite same-shape"), (label, dict(TALLY["decode-hypothesis:errors"]))


@HYP
@given(name=st.sampled_from(sorted(PIPELINES)), kind=st.sampled_from(REPLY_MUTATIONS), seed=st.integers(0, 2 ** 32 - 1),
       max_norm=st.sampled_from([0.0, 1e-3, 100.0]))
def test_screen_reply_hypothesis(corpus, instruction, name, kind, seed, max_norm):
    """Each reply mutation kind on each pipeline, with hypothesis choosing the seed of the details."""
    kind, msg, spec = build_reply(np.random.default_rng(seed), corpus, instruction, name, kind)
    label = _run("screen-hypothesis", check_screen, msg, spec, max_norm)
    assert label.startswith(("Accepted", "Rejected:")), (label, dict(TALLY["screen-hypothesis:errors"]))
    if kind == "valid" and max_norm != 1e-3:
        assert label == "Accepted"


# ----------------------------------------------------------------------------- report


def test_zz_report(capsys):
    """Print the tallies; with the whole module run, assert >= 10,000 inputs and 0 contract breaches."""
    engines = [e for e in TALLY if ":" not in e]
    total = sum(sum(TALLY[e].values()) for e in engines)
    lines = [f"fuzz: {total} inputs"]
    agg = collections.Counter()
    for e in sorted(engines):
        agg.update(TALLY[e])
        lines.append(f"  {e}: {sum(TALLY[e].values())} inputs, slowest {SLOWEST[e] * 1e3:.1f} ms: "
                     + ", ".join(f"{k} {v}" for k, v in sorted(TALLY[e].items())))
    decode_n = sum(v for e in engines if e.startswith("decode") for v in TALLY[e].values())
    lines.append(f"  decode: {decode_n} inputs, outcomes: "
                 f"{sum(TALLY[e]['PayloadError'] for e in engines if e.startswith('decode'))} PayloadError, "
                 f"{sum(TALLY[e]['decoded finite same-shape'] for e in engines if e.startswith('decode'))} "
                 f"decoded finite same-shape, "
                 f"{sum(TALLY[e]['other'] + TALLY[e]['hang'] for e in engines if e.startswith('decode'))} other")
    screen_n = total - decode_n
    rejected = sum(v for e in engines if e.startswith("screen") for k, v in TALLY[e].items()
                   if k.startswith("Rejected:"))
    lines.append(f"  screen_reply: {screen_n} inputs, outcomes: "
                 f"{sum(TALLY[e]['Accepted'] for e in engines if e.startswith('screen'))} Accepted, "
                 f"{rejected} Rejected, "
                 f"{sum(TALLY[e]['other'] + TALLY[e]['hang'] for e in engines if e.startswith('screen'))} other")
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    if os.environ.get("FEDSQUEEZE_FUZZ_REPORT"):
        with open(os.environ["FEDSQUEEZE_FUZZ_REPORT"], "w") as fh:
            json.dump({"total": total, "tally": {k: dict(v) for k, v in TALLY.items()},
                       "slowest_s": dict(SLOWEST)}, fh, indent=1, sort_keys=True)
    assert agg["other"] == 0 and agg["hang"] == 0
    full = {"decode-seeded", "screen-seeded", "decode-hypothesis", "screen-hypothesis"} <= set(engines)
    if full:
        assert total >= MIN_TOTAL, f"only {total} fuzz inputs ran"
