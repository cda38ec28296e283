"""Hand-computed expected outputs for every stage."""
import numpy as np
import pytest
import torch

import compression
from compression import bitpack, cast, cluster, entropy, positions, prune, quantize as q
from compression.errors import PayloadError
from compression.schedule import keep_fraction
from compression.wire import Reader


# ----------------------------------------------------------------- pruning

def test_kept_count():
    assert prune.kept_count(0.1, 1000) == 100
    assert prune.kept_count(0.01, 1663370) == 16634
    assert prune.kept_count(1e-9, 10) == 1
    assert prune.kept_count(0.5, 0) == 0


def test_topk_global_and_layer():
    a = np.array([0.1, -5.0, 0.3, 0.2], np.float32)
    b = np.array([4.0, -0.05, 3.0, -0.5], np.float32)
    g = prune.topk([a, b], 0.375)  # 3 of 8: -5, 4, 3
    assert g[0].index.tolist() == [1] and g[1].index.tolist() == [0, 2]
    lay = prune.topk([a, b], 0.5, scope="layer")  # 2 of each
    assert lay[0].index.tolist() == [1, 2] and lay[1].index.tolist() == [0, 2]


def _largest_reference(scores, k):
    """Top ``k`` by a stable sort: larger score first, lower index first among equals."""
    return np.sort(np.argsort(-scores.astype(np.float64), kind="stable")[:k])


@pytest.mark.parametrize("case", ["gaussian", "ties", "sample-misleads", "sample-too-low", "small"])
def test_largest_matches_a_stable_sort(case):
    rng = np.random.default_rng(7)
    n = 200_000
    if case == "gaussian":
        s = np.abs(rng.standard_normal(n)).astype(np.float32)
    elif case == "ties":  # the k-th value is shared by thousands: lowest indices must win
        s = rng.integers(0, 50, n).astype(np.float32)
    elif case == "sample-misleads":  # every sampled position holds a huge value: prefilter keeps < k
        s = rng.random(n).astype(np.float32)
        s[:: prune._SAMPLE_STRIDE] = 1e6
    elif case == "sample-too-low":  # sampled positions are all tiny: prefilter keeps everything
        s = rng.random(n).astype(np.float32) + 1.0
        s[:: prune._SAMPLE_STRIDE] = 0.0
    else:
        s = np.array([1.0, 3.0, 3.0, 2.0, 3.0], np.float32)
    for k in (1, 2, max(1, s.size // 100), s.size // 9, s.size - 1, s.size):
        got = prune._largest(s, k)
        assert got.dtype == np.int64
        assert np.array_equal(got, _largest_reference(s, k)), (case, k)


def test_threshold():
    a = np.array([0.1, -5.0, 0.3, 0.2], np.float32)
    assert prune.threshold([a], 0.2)[0].index.tolist() == [1, 2, 3]


def test_randk_seeded_and_rescale():
    a = np.arange(100, dtype=np.float32)
    s1 = prune.randk([a], 0.1, np.random.default_rng(3), rescale=True)[0]
    s2 = prune.randk([a], 0.1, np.random.default_rng(3), rescale=True)[0]
    assert s1.index.size == 10 and np.array_equal(s1.index, s2.index)
    assert np.all(np.diff(s1.index) > 0) and s1.scale == 10.0


def test_structured_l1_l2():
    a = np.array([[3, 0], [2, 2], [0, 1]], np.float32)  # L1: 3,4,1  L2: 3, 2.83, 1
    l1 = prune.structured([a.ravel()], [a.shape], 1 / 3, norm="l1")[0]
    l2 = prune.structured([a.ravel()], [a.shape], 1 / 3, norm="l2")[0]
    assert l1.index.tolist() == [1] and l2.index.tolist() == [0] and l1.unit == 2
    assert l1.elements().tolist() == [2, 3]
    assert prune.structured([np.ones(4, np.float32)], [(4,)], 0.5)[0] is None


def test_schedule_dgc_warmup():
    ks = [keep_fraction(0.001, r, "warmup", warmup_rounds=5, warmup_start=0.25) for r in range(1, 8)]
    ratio = (0.001 / 0.25) ** 0.25
    assert ks == pytest.approx([0.25, 0.25 * ratio, 0.25 * ratio ** 2, 0.25 * ratio ** 3, 0.001, 0.001, 0.001])
    assert ks[4] == 0.001 and ks[1] == pytest.approx(0.0625, rel=0.01)
    assert keep_fraction(0.5, 1, "warmup", warmup_rounds=5, warmup_start=0.25) == 0.5
    assert keep_fraction(0.01, 3) == 0.01


def test_schedule_through_encode():
    x = {"w": torch.arange(1, 1001, dtype=torch.float32)}
    spec = "prune=topk,keep=0.01,schedule=warmup,warmup-rounds=3,warmup-start=0.25,min-numel=0"
    nnz = [compression.encode_with_report(x, spec, round=r)[1].nnz for r in (1, 2, 3, 4)]
    assert nnz == [250, 50, 10, 10]


# ----------------------------------------------------------------- quantizers

def test_uniform_symmetric_2bit():
    x = np.array([-1.0, -0.4, 0.0, 0.3, 1.0], np.float32)
    g = q.Groups(1)
    p = q.choose_qparams(x, g, 2, True)
    assert p.scale.tolist() == [1.0]
    codes = q.quantize(x, p, g, 2, True)
    assert codes.tolist() == [0, 1, 1, 1, 2]
    assert q.dequantize(codes, p, g, 2, True).tolist() == [-1, 0, 0, 0, 1]


def test_uniform_affine_1_and_2bit():
    x = np.array([0.0, 1.0, 2.0, 3.0], np.float32)
    g = q.Groups(1)
    p = q.choose_qparams(x, g, 2, False)
    assert p.scale.tolist() == [1.0] and p.offset.tolist() == [0.0]
    assert q.quantize(x, p, g, 2, False).tolist() == [0, 1, 2, 3]
    x1 = np.array([0.0, 0.2, 0.8, 1.0], np.float32)
    p1 = q.choose_qparams(x1, g, 1, False)
    c1 = q.quantize(x1, p1, g, 1, False)
    assert c1.tolist() == [0, 0, 1, 1]
    assert q.dequantize(c1, p1, g, 1, False).tolist() == [0, 0, 1, 1]


def test_per_channel_and_block_groups():
    g = q.make_groups("channel", 0, 4, (2, 2), None)
    assert g.count == 2 and g.ids.tolist() == [0, 0, 1, 1]
    gs = q.make_groups("channel", 0, 2, (2, 2), np.array([1, 2]))
    assert gs.ids.tolist() == [0, 1]
    gb = q.make_groups("block", 2, 5, (5,), None)
    assert gb.count == 3 and gb.ids.tolist() == [0, 0, 1, 1, 2]
    x = np.array([1.0, -2.0, 0.5, 0.25], np.float32)
    p = q.choose_qparams(x, g, 8, True)
    np.testing.assert_allclose(p.scale, [2 / 127, 0.5 / 127], rtol=1e-7)


def test_qsgd_levels():
    x = np.array([3.0, -4.0], np.float32)  # norm 5, bits=2 -> s=1: |x|/5 = .6, .8
    norms, codes = q.qsgd_quantize(x, q.Groups(1), 2, np.random.default_rng(0))
    assert norms.tolist() == [5.0]
    assert codes[0] in (1, 2) and codes[1] in (0, 1)
    deq = q.qsgd_dequantize(np.array([2, 0], np.uint8), norms, q.Groups(1), 2)
    assert deq.tolist() == [5.0, -5.0]


def test_sign_and_ternary():
    x = np.array([1.0, -3.0, 2.0, 0.0], np.float32)
    s, c = q.sign_quantize(x, q.Groups(1))
    assert s.tolist() == [1.5] and c.tolist() == [1, 0, 1, 1]
    assert q.sign_dequantize(c, s, q.Groups(1)).tolist() == [1.5, -1.5, 1.5, 1.5]
    # STC: top-2 of [1,-3,2,0.5] -> {-3, 2}, mu = 2.5
    out = compression.decode(compression.encode({"w": torch.tensor([1.0, -3.0, 2.0, 0.5])},
                                                "prune=topk,keep=0.5,quant=ternary,min-numel=0"))
    assert out["w"].tolist() == [0.0, -2.5, 2.5, 0.0]


def test_casts():
    x = np.array([1.0009765625, 1.00390625, 1e5, -1e5], np.float32)
    h = cast.from_fp16(cast.to_fp16(x), 4)
    assert h.tolist() == [1.0009765625, 1.00390625, 65504.0, -65504.0]
    b = cast.from_bf16(cast.to_bf16(x), 4)
    assert b.tolist()[:2] == [1.0, 1.0]  # 1+2^-10 rounds down; 1+2^-8 is a tie -> even
    assert cast.from_bf16(cast.to_bf16(np.array([1.00390625], np.float32)), 1).tolist() == [1.0]
    assert cast.from_bf16(cast.to_bf16(np.array([3.0], np.float32)), 1).tolist() == [3.0]


def test_kmeans():
    x = np.array([0, 0, 0, 10, 10, 10, 20, 20], np.float32)
    c = cluster.kmeans_1d(x, 3)
    assert c.tolist() == [0, 10, 20]
    assert cluster.assign(np.array([1.0, 14.0, 16.0]), c).tolist() == [0, 1, 2]


# ----------------------------------------------------------------- coding

def test_bitpack_codes():
    assert bitpack.pack_codes(np.array([1, 2, 3]), 2) == bytes([0x6C])
    assert bitpack.unpack_codes(bytes([0x6C]), 3, 2).tolist() == [1, 2, 3]
    with pytest.raises(PayloadError):
        bitpack.unpack_codes(bytes([0x6D]), 3, 2)  # padding bit set
    with pytest.raises(PayloadError):
        bitpack.unpack_codes(bytes([0x6C, 0]), 3, 2)
    assert bitpack.pack_codes(np.array([1, 0, 1, 1, 0, 0, 0, 0, 1]), 1) == bytes([0xB0, 0x80])


def test_positions_rice_hand():
    idx = np.array([3, 4, 10])
    assert positions.rice_parameter(np.array([3, 0, 5])) == (1, 9)
    b = positions.encode_positions(idx, 100, "golomb")
    assert b == bytes([1, 1, 1, 0, 0, 0, 0x64, 0xA0])
    assert positions.decode_positions(Reader(b), 100, 3, "golomb").tolist() == [3, 4, 10]


def test_positions_elias_hand():
    b = positions.encode_positions(np.array([3, 4, 10]), 100, "elias")
    assert b == bytes([2, 1, 0, 0, 0, 0x32, 0x20])
    assert positions.decode_positions(Reader(b), 100, 3, "elias").tolist() == [3, 4, 10]


def test_positions_bitmap_when_dense():
    b = positions.encode_positions(np.array([1, 9]), 10, "golomb")
    assert b == bytes([0, 0x40, 0x40])
    b2 = positions.encode_positions(np.arange(0, 100, 2), 100, "golomb")
    assert b2[0] == positions.BITMAP
    assert positions.decode_positions(Reader(b2), 100, 50).tolist() == list(range(0, 100, 2))


def test_positions_reject_out_of_range():
    b = positions.encode_positions(np.array([3, 4, 10]), 100, "golomb")
    with pytest.raises(PayloadError):
        positions.decode_positions(Reader(b), 10, 3, "golomb")  # 10 not < 10
    with pytest.raises(PayloadError):
        positions.decode_positions(Reader(b), 100, 2, "golomb")  # count mismatch
    with pytest.raises(PayloadError):
        positions.decode_positions(Reader(b), 100, 3, "elias")  # tag not allowed


def test_huffman_hand():
    sym = np.array([0, 0, 0, 0, 1, 1, 2, 3])
    assert entropy.code_lengths(np.bincount(sym)).tolist() == [1, 2, 3, 3]
    assert entropy.canonical_codes(np.array([1, 2, 3, 3])).tolist() == [0, 2, 6, 7]
    b = entropy.encode_huffman(sym, 4)
    assert b == bytes([0x12, 0x33, 14, 0, 0, 0, 0x0A, 0xDC])
    assert entropy.decode_huffman(Reader(b), 8, 4).tolist() == sym.tolist()
    with pytest.raises(PayloadError):
        entropy.decode_huffman(Reader(b), 7, 4)
    with pytest.raises(PayloadError):  # over-subscribed lengths 1,1,1
        entropy.decode_huffman(Reader(bytes([0x11, 0x10, 1, 0, 0, 0, 0])), 1, 4)


def test_huffman_length_limit():
    freq = np.array([2 ** i for i in range(30)], np.int64)
    lengths = entropy.code_lengths(freq)
    assert lengths.max() <= entropy.MAX_CODE_BITS
    assert (2.0 ** -lengths.astype(float)).sum() <= 1.0


# ----------------------------------------------------------------- wire + EF

def test_wire_header_and_raw_layout():
    p = compression.encode({"a": torch.tensor([1.0, 2.0])}, "fp32")
    assert p[:4] == b"FSQZ" and p[4] == 1 and p[5] == 0
    spec = b"prune=none,quant=none"
    assert p[6:8] == len(spec).to_bytes(2, "little") and p[8:8 + len(spec)] == spec
    body = p[8 + len(spec):]
    assert body[:4] == (1).to_bytes(4, "little")
    assert body[4:12] == bytes([1]) + b"a" + bytes([0, 1]) + (2).to_bytes(4, "little")
    sec = body[12:-4]
    assert sec == (9).to_bytes(4, "little") + bytes([0]) + np.array([1, 2], "<f4").tobytes()
    assert compression.peek_spec(p) == compression.parse_spec("fp32")


def test_error_feedback_hand():
    u = {"w": torch.tensor([1.0, -3.0, 2.0, 0.5])}
    spec = "prune=topk,keep=0.5,quant=ternary,ef=true,min-numel=0"
    p, res, rep = compression.encode_with_feedback(u, None, spec)
    assert compression.decode(p)["w"].tolist() == [0.0, -2.5, 2.5, 0.0]
    assert res["w"].tolist() == [1.0, -0.5, -0.5, 0.5]
    p2, res2, _ = compression.encode_with_feedback(u, res, spec)
    # compensated = [2, -3.5, 1.5, 1.0]: top-2 {2, -3.5}, mu = 2.75
    assert compression.decode(p2)["w"].tolist() == [2.75, -2.75, 0.0, 0.0]
    assert res2["w"].tolist() == [-0.75, -0.75, 1.5, 1.0]
    assert u["w"].tolist() == [1.0, -3.0, 2.0, 0.5]  # not mutated
    assert compression.encode_with_feedback(u, res, "fp16")[1] is None


def test_report_fields():
    u = {"w": torch.tensor([3.0, 4.0, 0.0, 0.0])}
    p, rep = compression.encode_with_report(u, "prune=topk,keep=0.25,min-numel=0")
    assert rep.num_params == 4 and rep.dense_bytes == 16 and rep.payload_bytes == len(p)
    assert rep.nnz == 1 and rep.rel_distortion == pytest.approx(3 / 5)
    assert rep.bits_per_param == pytest.approx(8 * len(p) / 4)
    assert set(rep.as_dict()) >= {"dense_bytes", "payload_bytes", "bits_per_param", "nnz", "rel_distortion"}
    assert compression.encode_with_report({"w": torch.zeros(3)}, "stc")[1].rel_distortion == 0.0


def test_min_numel_raw_and_zstd():
    u = {"big": torch.linspace(-1, 1, 300), "small": torch.tensor([0.123456789])}
    out = compression.decode(compression.encode(u, "quant=uniform,bits=2,zstd=true"))
    assert out["small"].item() == np.float32(0.123456789)
    assert len(torch.unique(out["big"])) <= 3


def test_update_validation():
    with pytest.raises(compression.UpdateError, match="bad"):
        compression.encode({"bad": torch.tensor([float("nan")])}, "fp32")
    with pytest.raises(compression.UpdateError, match="dtype"):
        compression.encode({"i": torch.tensor([1, 2])}, "fp32")
    with pytest.raises(compression.UpdateError, match="name"):
        compression.encode({"a b": torch.zeros(1)}, "fp32")
