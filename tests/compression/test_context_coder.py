"""coder=context: positions coded against a reference both sides know (compression.positions)."""

import hashlib

import numpy as np
import pytest
import torch

import compression
from compression import PayloadError, UpdateError
from compression.positions import _encode_context, _encode_grid, context_classes, decode_positions, encode_positions
from compression.wire import Reader
from tests.compression.test_robustness import check_every_resealed_corruption, check_every_truncation

SPEC = "prune=topk,keep=0.05,quant=ternary,ef=true,coder=context"


def test_classes_of_a_hand_worked_grid():
    # 3 x 4 view, reference {1, 6}: rows 0 and 1 and columns 1 and 2 are touched
    assert context_classes(np.array([1, 6]), 12, rows=3).tolist() == [2, 0, 1, 2,
                                                                       2, 1, 0, 2,
                                                                       4, 3, 3, 4]


def test_hand_coded_section():
    # kept {1, 2, 5, 6, 9} of the grid above: class 0 ranks 0, 1 (slots 1, 6); class 1 ranks 0, 1
    # (slots 2, 5 of its domain 2, 5); class 3 rank 0 (slot 9 of 9, 10). Every gap is 0, so r = 0
    # and each quotient is one terminating 1 bit: 11111 -> 0xF8.
    digest = hashlib.blake2b((12).to_bytes(8, "little") + np.array([1, 6], "<i8").tobytes(), digest_size=4).digest()
    want = bytes([3]) + digest + bytes([2, 2, 0, 1]) + bytes([0, 0, 0]) + (1).to_bytes(4, "little") + bytes([0xF8])
    got = _encode_context(np.array([1, 2, 5, 6, 9]), 12, np.array([1, 6]), rows=3)
    assert got == want
    assert decode_positions(Reader(got), 12, 5, "context", np.array([1, 6]), rows=3).tolist() == [1, 2, 5, 6, 9]
    with pytest.raises(PayloadError, match="another reference"):
        decode_positions(Reader(got), 12, 5, "context", np.array([1, 7]), rows=3)


def _update(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(100, 120, generator=g), "v": torch.randn(2000, generator=g), "b": torch.randn(3, generator=g)}


def _reference_around(update, share=0.6, seed=1):
    """A reference holding ``share`` of each tensor's top 5 % plus as many other positions."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, t in update.items():
        flat = t.reshape(-1).abs().numpy()
        k = int(np.ceil(0.05 * flat.size))
        top = np.argsort(-flat)[:k]
        picked = rng.choice(top, int(share * k), replace=False)
        others = rng.choice(np.setdiff1d(np.arange(flat.size), top), int(share * k), replace=False)
        out[name] = np.sort(np.concatenate([picked, others])).astype(np.int64)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_decodes_to_what_golomb_decodes_and_is_smaller_when_the_reference_predicts(seed):
    u = _update(seed)
    ref = _reference_around(u, seed=seed)
    ctx = compression.encode(u, SPEC, reference=ref)
    gol = compression.encode(u, SPEC.replace("context", "golomb"))
    out = compression.decode(ctx, reference=ref)
    assert all(torch.equal(out[k], v) for k, v in compression.decode(gol).items())
    assert len(ctx) < len(gol)


def test_error_feedback_invariant_holds_with_context():
    u, ref = _update(3), _reference_around(_update(3))
    payload, residual, _ = compression.encode_with_feedback(u, None, SPEC, reference=ref)
    decoded = compression.decode(payload, reference=ref)
    for k in u:
        assert torch.allclose(decoded[k] + residual[k], u[k], atol=1e-6)


@pytest.mark.parametrize("reference", [{}, {"w": np.arange(12000)}, {"w": np.array([0]), "v": np.array([1999])}])
def test_empty_full_and_tiny_references_round_trip(reference):
    u = _update(4)
    p = compression.encode(u, SPEC, reference=reference)
    out = compression.decode(p, reference=reference)
    want = compression.decode(compression.encode(u, SPEC.replace("context", "golomb")))
    assert all(torch.equal(out[k], want[k]) for k in u)


def test_refusals():
    u = _update(5)
    ref = _reference_around(u)
    p = compression.encode(u, SPEC, reference=ref)
    with pytest.raises(PayloadError, match="must be given the reference"):
        compression.decode(p)
    with pytest.raises(PayloadError, match="another reference"):
        compression.decode(p, reference={**ref, "w": ref["w"][1:]})
    with pytest.raises(UpdateError, match="needs the reference"):
        compression.encode(u, SPEC)
    for bad in (np.array([5, 3]), np.array([2, 2]), np.array([-1]), np.array([12000]), np.array([0.5])):
        with pytest.raises(UpdateError, match="sorted unique integer"):
            compression.encode(u, SPEC, reference={"w": bad})


def test_every_truncation_and_corruption_is_refused_or_decodes_to_the_same_shapes():
    u = _update(6)
    ref = _reference_around(u)
    p = compression.encode(u, SPEC, reference=ref)
    check_every_truncation(p)
    check_every_resealed_corruption(p, {k: tuple(v.shape) for k, v in u.items()}, reference=ref)


def test_structured_pruning_ignores_the_reference():
    u = _update(7)
    spec = "prune=structured,keep=0.25,quant=ternary,coder=context"
    with_ref = compression.encode(u, spec, reference=_reference_around(u))
    assert with_ref == compression.encode(u, spec, reference={})


def test_union_support():
    a = {"w": torch.tensor([[0.0, 1.0], [0.0, 0.0]]), "v": torch.zeros(3)}
    b = {"w": torch.tensor([[0.0, -2.0], [3.0, 0.0]]), "v": torch.tensor([0.0, 0.0, 1.0])}
    assert {k: v.tolist() for k, v in compression.support(b).items()} == {"w": [1, 2], "v": [2]}
    got = compression.union_support([compression.support(a), compression.support(b)])
    assert {k: v.tolist() for k, v in got.items()} == {"w": [1, 2], "v": [2]}
    assert compression.union_support([]) == {}


# ------------------------------------------------------------------ coder=grid

def test_hand_coded_grid_section():
    # 4 x 8 view, positions {9, 12, 25, 28}: rows 1 and 3, columns 1 and 4, all four cells of their
    # 2 x 2 grid. Each part is smallest as a bitmap (tag 0): rows 0101 -> 0x50, columns 01001000 ->
    # 0x48, grid 1111 -> 0xF0. The 15-byte grid section loses to the plain 5-byte bitmap, which the
    # encoder keeps.
    got = encode_positions(np.array([9, 12, 25, 28]), 32, "grid", rows=4)
    plain = encode_positions(np.array([9, 12, 25, 28]), 32, "golomb")
    want = bytes([4]) + (2).to_bytes(4, "little") + (2).to_bytes(4, "little") \
        + bytes([0, 0b0101_0000]) + bytes([0, 0b0100_1000]) + bytes([0, 0b1111_0000])
    assert _encode_grid(np.array([9, 12, 25, 28]), 32, 4) == want
    assert got == plain  # 5 bytes of bitmap beat the 15-byte grid here
    assert decode_positions(Reader(want), 32, 4, "grid", rows=4).tolist() == [9, 12, 25, 28]


def test_grid_is_chosen_when_positions_fill_few_rows_and_columns_and_round_trips():
    rng = np.random.default_rng(0)
    rows, cols = 200, 300
    live_r, live_c = np.sort(rng.choice(rows, 30, replace=False)), np.sort(rng.choice(cols, 40, replace=False))
    cells = (live_r[:, None] * cols + live_c[None, :]).ravel()
    idx = np.sort(rng.choice(cells, 400, replace=False)).astype(np.int64)
    got = encode_positions(idx, rows * cols, "grid", rows=rows)
    assert got[0] == 4 and len(got) < len(encode_positions(idx, rows * cols, "golomb"))
    assert decode_positions(Reader(got), rows * cols, idx.size, "grid", rows=rows).tolist() == idx.tolist()
    with pytest.raises(PayloadError, match="not allowed"):
        decode_positions(Reader(got), rows * cols, idx.size, "golomb", rows=rows)


def test_a_grid_that_names_an_empty_row_is_refused():
    body = bytes([4]) + (2).to_bytes(4, "little") + (1).to_bytes(4, "little") \
        + bytes([0, 0b0101_0000]) + bytes([0, 0b0100_0000]) + bytes([0, 0b1000_0000])
    with pytest.raises(PayloadError):  # rows 1 and 3 named, only row 1 used
        decode_positions(Reader(body), 32, 1, "grid", rows=4)


GRID = "prune=topk,keep=0.02,quant=ternary,coder=grid"


def _grid_update(seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(120, 200, generator=g) * (torch.rand(120, 1, generator=g) < 0.3) \
        * (torch.rand(1, 200, generator=g) < 0.4)
    return {"w": w, "v": torch.randn(1000, generator=g), "b": torch.randn(5, generator=g)}


def test_grid_payload_decodes_like_golomb_and_is_smaller():
    u = _grid_update()
    grid, gol = compression.encode(u, GRID), compression.encode(u, GRID.replace("grid", "golomb"))
    assert len(grid) < len(gol)
    out, want = compression.decode(grid), compression.decode(gol)
    assert all(torch.equal(out[k], want[k]) for k in u)


def test_every_truncation_and_corruption_of_a_grid_payload_is_refused_or_decodes_to_the_same_shapes():
    p = compression.encode(_grid_update(1), GRID)
    check_every_truncation(p)
    shapes = {"w": (120, 200), "v": (1000,), "b": (5,)}
    check_every_resealed_corruption(p, shapes, expected=shapes)
