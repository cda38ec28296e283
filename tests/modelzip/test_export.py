"""Artifacts: reload reproduces results; int8 storage is really ~4x smaller."""

from __future__ import annotations

import pytest
import torch

from fedsqueeze.models import build_model
from fedsqueeze import modelzip as mz
from fedsqueeze.train import evaluate


@pytest.mark.slow  # PT2E export / int8 lowering: tens of seconds
def test_pruned_float_and_int8_artifacts_reload_identically(trained, tensors, tmp_path):
    x, _, xt, yt = tensors
    mz.prune_global_l1(trained, 0.5)
    int8 = mz.quantize_static_int8(trained, x[:1000])
    for name, model in (("pruned", trained), ("int8", int8)):
        path = mz.save_artifact(model, tmp_path / f"{name}.pt2")
        reloaded = mz.load_artifact(path)
        assert evaluate(reloaded, xt, yt)[1] == evaluate(model, xt, yt)[1]
        with torch.no_grad():
            torch.testing.assert_close(reloaded(xt[:100]), model(xt[:100]), rtol=0, atol=0)
            assert reloaded(xt[:1]).shape == (1, 10)  # batch dimension stayed dynamic
        assert mz.count_nonzero(reloaded) == mz.count_nonzero(model)


def test_int8_file_is_at_least_3_5x_smaller_for_mcmahan(tmp_path):
    torch.manual_seed(0)
    model = build_model("mcmahan-cnn").eval()
    calibration = torch.randn(64, 1, 28, 28)
    float_size = mz.file_size(mz.save_artifact(model, tmp_path / "f32.pt2"))
    int8_size = mz.file_size(mz.save_artifact(mz.quantize_static_int8(model, calibration), tmp_path / "int8.pt2"))
    assert float_size >= 4 * 1_663_370
    assert float_size / int8_size >= 3.5


@pytest.mark.slow  # PT2E export / int8 lowering: tens of seconds
def test_stage_report_measures_the_reloaded_artifact(trained, tensors, tmp_path):
    _, _, xt, yt = tensors
    report = mz.stage_report("float", trained, xt, yt, tmp_path / "s.pt2", repeats=3)
    assert report["accuracy"] == report["reloaded_accuracy"] == evaluate(trained, xt, yt)[1]
    assert report["nonzero_params"] == mz.count_nonzero(trained)
    assert report["size_bytes"] == (tmp_path / "s.pt2").stat().st_size
    assert report["latency_b64_ms"] > 0 and report["latency_b1_ms"] > 0
    assert "| float |" in mz.markdown_table([report])


def test_save_rejects_other_suffix(trained, tmp_path):
    with pytest.raises(ValueError):
        mz.save_artifact(trained, tmp_path / "model.pt")
