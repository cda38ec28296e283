"""Malformed payloads: every truncation / single-byte corruption, and targeted attacks."""

import numpy as np
import pytest
import torch

import compression
from compression import PayloadError
from compression.wire import seal

SMALL_SHAPES = {"w": (16, 20), "v": (300,), "b": (3,), "s": ()}


def make_update(shapes, seed=0, scale=0.01):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * scale * (1 + i) for i, (k, s) in enumerate(shapes.items())}

SWEEP_SPECS = list(compression.PRESET_SPECS) + [
    "quant=uniform,bits=3,mode=affine,granularity=block,block=7,entropy=huffman,min-numel=0",
    "prune=topk,keep=0.2,quant=qsgd,bits=4,coder=elias,min-numel=0",
    "prune=threshold,threshold=0.01,quant=ternary,granularity=channel,min-numel=0",
    "prune=topk,keep=0.3,quant=sign,zstd=true,min-numel=0",
    "prune=randk,keep=0.5,scope=layer,quant=bf16,coder=bitmap,min-numel=0",
    "prune=structured,keep=0.5,quant=uniform,bits=8,granularity=channel,min-numel=0",
]


def _payloads():
    u = make_update(SMALL_SHAPES, seed=1)
    return [(s, compression.encode(u, s)) for s in SWEEP_SPECS]


PAYLOADS = _payloads()


def _resealed(p: bytes) -> bytes:
    return seal(p[:-4])


def _check_result(out):
    assert isinstance(out, dict)
    for v in out.values():
        assert v.dtype == torch.float32 and torch.isfinite(v).all()


def check_every_truncation(payload: bytes) -> None:
    """Every prefix (bare, and re-sealed with a valid CRC) and one extra byte raise PayloadError."""
    for n in range(len(payload)):
        with pytest.raises(PayloadError):
            compression.decode(payload[:n])
        # Also with a valid CRC, so the structural checks are exercised.
        if n >= 8:
            with pytest.raises(PayloadError):
                compression.decode(seal(payload[:n - 4]))
    with pytest.raises(PayloadError):
        compression.decode(payload + b"\x00")
    with pytest.raises(PayloadError):
        compression.decode(seal(payload[:-4] + b"\x00"))


def check_every_single_byte_corruption(payload: bytes) -> None:
    """Each byte xor 0x01/0x80/0xFF, CRC kept and recomputed: PayloadError or finite float32 tensors."""
    shapes = {k: tuple(v.shape) for k, v in compression.decode(payload).items()}
    body = bytearray(payload[:-4])
    for i in range(len(payload)):
        for x in (0x01, 0x80, 0xFF):
            bad = bytearray(payload)
            bad[i] ^= x
            try:
                out = compression.decode(bytes(bad))
            except PayloadError:
                pass
            else:  # only possible if the CRC itself were fooled
                _check_result(out)
                assert {k: tuple(v.shape) for k, v in out.items()} == shapes
            if i < len(body):  # hostile sender: recompute the CRC
                b2 = bytearray(body)
                b2[i] ^= x
                try:
                    out = compression.decode(seal(bytes(b2)), max_numel=10_000)
                except PayloadError:
                    continue
                _check_result(out)


def check_every_resealed_corruption(payload: bytes, shapes: dict[str, tuple[int, ...]], **decode_kwargs) -> None:
    """Each body byte xor 0xFF with a recomputed CRC (a hostile sender): PayloadError, or finite
    tensors of exactly ``shapes``. ``decode_kwargs`` go to :func:`compression.decode`."""
    for i in range(len(payload) - 4):
        body = bytearray(payload[:-4])
        body[i] ^= 0xFF
        try:
            out = compression.decode(seal(bytes(body)), **decode_kwargs)
        except PayloadError:
            continue
        assert {k: tuple(v.shape) for k, v in out.items()} == shapes
        _check_result(out)


@pytest.mark.parametrize("spec, payload", PAYLOADS, ids=[s for s, _ in PAYLOADS])
def test_every_truncation_raises(spec, payload):
    check_every_truncation(payload)


@pytest.mark.parametrize("spec, payload", PAYLOADS, ids=[s for s, _ in PAYLOADS])
def test_every_single_byte_corruption(spec, payload):
    check_every_single_byte_corruption(payload)


def _raw_payload(values, shape=None):
    t = torch.tensor(values, dtype=torch.float32)
    return compression.encode({"w": t.reshape(shape) if shape else t}, "fp32")


def test_targeted_rejections():
    p = _raw_payload([1.0, 2.0])
    body = bytearray(p[:-4])
    for mutate, msg in [
        (lambda b: b.__setitem__(0, ord("X")), "magic"),
        (lambda b: b.__setitem__(4, 2), "version"),
        (lambda b: b.__setitem__(5, 1), "flags"),
    ]:
        b = bytearray(body)
        mutate(b)
        with pytest.raises(PayloadError, match=msg):
            compression.decode(seal(bytes(b)))
    # NaN in a raw float32 value.
    nan = bytes(body[:-4]) + np.array([np.nan], "<f4").tobytes()
    with pytest.raises(PayloadError, match="NaN"):
        compression.decode(seal(nan))
    with pytest.raises(PayloadError, match="CRC"):
        compression.decode(p[:-1] + bytes([p[-1] ^ 1]))
    with pytest.raises(PayloadError):
        compression.decode("not bytes")


def test_absurd_shape_rejected_before_allocation():
    spec = b"prune=none,quant=none"
    hdr = b"FSQZ\x01\x00" + len(spec).to_bytes(2, "little") + spec + (1).to_bytes(4, "little")
    hdr += b"\x01w\x00\x03" + b"".join((60000).to_bytes(4, "little") for _ in range(3))
    with pytest.raises(PayloadError, match="elements"):
        compression.decode(seal(hdr))
    big = b"FSQZ\x01\x00" + len(spec).to_bytes(2, "little") + spec + (1).to_bytes(4, "little")
    big += b"\x01w\x00\x01" + (100).to_bytes(4, "little")
    with pytest.raises(PayloadError, match="max_numel"):
        compression.decode(seal(big), max_numel=99)
    many = b"FSQZ\x01\x00" + len(spec).to_bytes(2, "little") + spec + (10 ** 9).to_bytes(4, "little")
    with pytest.raises(PayloadError, match="count"):
        compression.decode(seal(many))


def test_non_canonical_or_unknown_spec_rejected():
    p = _raw_payload([1.0])
    body = p[:-4].replace(b"prune=none,quant=none", b"quant=none,prune=none")
    with pytest.raises(PayloadError, match="canonical"):
        compression.decode(seal(body))
    body = p[:-4].replace(b"prune=none,quant=none", b"prune=nope,quant=none")
    with pytest.raises(PayloadError, match="spec"):
        compression.decode(seal(body))


def test_index_out_of_range_rejected():
    u = {"w": torch.arange(1.0, 301.0)}
    p = compression.encode(u, "prune=topk,keep=0.01,coder=bitmap")
    # The 300-slot bitmap has 4 padding bits; setting one would be a position >= 300.
    body = bytearray(p[:-4])
    sec_start = len(body) - (3 * 4 + 38)  # 3 values f32 + bitmap (38 bytes)
    body[sec_start + 37] |= 0x01
    with pytest.raises(PayloadError):
        compression.decode(seal(bytes(body)))


def test_expected_names_and_shapes():
    p = _raw_payload([1.0, 2.0, 3.0, 4.0], (2, 2))
    assert compression.decode(p, expected={"w": (2, 2)})["w"].shape == (2, 2)
    with pytest.raises(PayloadError):
        compression.decode(p, expected={"w": (4,)})
    with pytest.raises(PayloadError):
        compression.decode(p, expected={"w": (2, 2), "b": (2,)})


def test_nan_scale_rejected():
    u = {"w": torch.linspace(-1, 1, 300)}
    p = compression.encode(u, "quant=uniform,bits=8")
    body = bytearray(p[:-4])
    # DENSE section: layout byte then the f32 scale, right after the section length.
    i = body.index(bytes([1]) + np.array([1 / 127], "<f4").tobytes())
    body[i + 1:i + 5] = np.array([np.inf], "<f4").tobytes()
    with pytest.raises(PayloadError, match="non-finite"):
        compression.decode(seal(bytes(body)))


def test_zstd_bomb_rejected():
    import zstandard
    u = {"w": torch.zeros(300)}
    p = compression.encode(u, "zstd=true,quant=fp16")
    body = p[:-4]
    start = body.index(b"\x28\xb5\x2f\xfd")  # zstd magic
    bomb = zstandard.ZstdCompressor().compress(b"\x00" * 10_000_000)
    with pytest.raises(PayloadError, match="zstd"):
        compression.decode(seal(body[:start] + bomb))


def test_huge_dense_header_with_tiny_body_is_cheap(monkeypatch):
    """40 M declared values, 4 body bytes: refused before any per-value work or allocation."""
    import tracemalloc

    import compression.codec as codec

    def must_not_run(*_a, **_k):
        raise AssertionError("per-value decoding started for a body that cannot hold the values")

    monkeypatch.setattr(codec, "make_groups", must_not_run)
    monkeypatch.setattr(codec, "decode_values", must_not_run)
    spec = b"prune=none,quant=uniform,granularity=channel"
    hdr = b"FSQZ\x01\x00" + len(spec).to_bytes(2, "little") + spec + (1).to_bytes(4, "little")
    hdr += b"\x01w\x00\x02" + (10_000).to_bytes(4, "little") + (4_000).to_bytes(4, "little")
    body = (5).to_bytes(4, "little") + b"\x01" + b"\x00" * 4
    tracemalloc.start()  # numpy reports its buffers to tracemalloc
    try:
        with pytest.raises(PayloadError, match="cannot hold"):
            compression.decode(seal(hdr + body), max_numel=10 ** 8)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # one float32 per declared value would be 160 MB
