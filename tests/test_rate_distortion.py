"""The rate-distortion atlas: rows derivable from real payloads, captures reproducible, committed table consistent."""

from pathlib import Path

import torch

import compression
from benchmarks.rate_distortion import __main__ as cli
from benchmarks.rate_distortion import atlas
from benchmarks.rate_distortion.capture import CaptureSpec, capture
from fedsqueeze.models import initial_state

HERE = Path(__file__).resolve().parent.parent / "benchmarks" / "rate_distortion"
TINY = CaptureSpec(model="seed-cnn", rounds=(1, 2), num_clients=10, fraction=0.1, local_epochs=1, batch_size=20)


def test_tiny_capture_is_reproducible_and_rows_are_measured_from_payloads(tmp_path):
    torch.set_num_threads(1)
    a, b = capture(TINY), capture(TINY)
    assert sorted(a) == [1, 2]
    for r in a:
        assert all(torch.equal(a[r][k], b[r][k]) for k in a[r])  # reproducible from the seed
    assert not all(torch.equal(a[1][k], a[2][k]) for k in a[1])   # two different rounds
    settings = [s for s in atlas.SETTINGS if s.label in ("keep=0.01", "unbiased", "bits=2", "rank=2", "1 bit")]
    updates = {("iid", r): u for r, u in a.items()}
    rows = atlas.evaluate(updates, settings)
    assert len(rows) == 2 * len(settings)
    for row in rows:
        upd = updates[(row.partition, row.round)]
        payload = compression.encode(upd, row.spec, round=row.round, seed=0)
        dec = compression.decode(payload)
        err = sum(float((upd[k].double() - dec[k].double()).pow(2).sum()) for k in upd)
        ref = sum(float(upd[k].double().pow(2).sum()) for k in upd)
        assert row.payload_bytes == len(payload) and row.bits_per_coord == 8 * len(payload) / row.num_params
        assert abs(row.nmse - err / ref) <= 1e-6 * max(1.0, err / ref)
    atlas.write_csv(rows, tmp_path / "table.csv")
    back = atlas.read_csv(tmp_path / "table.csv")
    assert [(r.family, r.label, r.payload_bytes) for r in back] == [(r.family, r.label, r.payload_bytes) for r in rows]
    cli.render(tmp_path)
    assert (tmp_path / "atlas.png").stat().st_size > 0 and "At about 1 bit" in (tmp_path / "table.md").read_text()


def test_committed_table_is_consistent_and_the_markdown_derives_from_it():
    rows = atlas.read_csv(HERE / "table.csv")
    n = sum(v.numel() for v in initial_state("mcmahan-cnn", 0).values())
    assert {r.num_params for r in rows} == {n}
    keys = {(r.partition, r.round) for r in rows}
    assert len(keys) == 6  # early, middle, late x IID, 2 shards
    assert len(rows) == len(keys) * len(atlas.SETTINGS)
    for r in rows:
        assert abs(r.bits_per_coord - 8 * r.payload_bytes / n) < 1e-5
        assert r.spec == str(compression.parse_spec(r.spec)) and r.nmse >= 0
    assert (HERE / "table.md").read_text() == cli.markdown(rows)
