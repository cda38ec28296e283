"""fedsqueeze.netsim: hand-computed times, deadlines, over-selection, availability, traces, profile sets."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from fedsqueeze import netsim
from fedsqueeze.netsim import (
    PROFILE_SETS,
    ClientProfile,
    ClientTiming,
    ProfileSet,
    ProfileSetError,
    ReplayError,
    TraceError,
    available_partitions,
    client_timing,
    close_round,
    compute_seconds,
    draw_profiles,
    is_available,
    load_trace,
    register_profile_set,
    replay_rounds,
    resolve_profiles,
    train_flops_per_example,
    transfer_seconds,
)

HEADER = "client_id,down_mbps,up_mbps,rtt_ms,compute_factor,availability\n"


def prof(down_mbps=8.0, up_mbps=2.0, rtt_ms=100.0, cf=1.0, avail=1.0) -> ClientProfile:
    return ClientProfile(down_mbps * 1e6, up_mbps * 1e6, rtt_ms / 1000, cf, avail)


def timing(pid: int, arrival: float) -> ClientTiming:
    return ClientTiming(pid, 0.0, arrival, 0.0)


# --- times from bytes and bandwidths -------------------------------------------------------------


def test_transfer_seconds_is_one_rtt_plus_bits_over_bandwidth():
    assert transfer_seconds(1_000_000, 8e6, 0.05) == pytest.approx(1.05)  # 8 Mbit at 8 Mbit/s + 50 ms
    assert transfer_seconds(0, 1e6, 0.1) == pytest.approx(0.1)  # an empty message still costs a round trip
    assert transfer_seconds(125_000, 1e6, 0.0) == pytest.approx(1.0)


@pytest.mark.parametrize("args", [(-1, 1e6, 0.0), (1.5, 1e6, 0.0), (10, 0.0, 0.0), (10, 1e6, -0.1),
                                  (10, float("nan"), 0.0), (10, 1e6, float("inf"))])
def test_transfer_seconds_rejects_bad_input(args):
    with pytest.raises(ValueError):
        transfer_seconds(*args)


def test_client_timing_sums_download_compute_upload():
    p = prof(down_mbps=8, up_mbps=2, rtt_ms=100)
    t = client_timing(3, p, down_bytes=2_000_000, up_bytes=500_000, compute_s=3.0)
    # download 0.1 + 16 Mbit / 8 Mbit/s = 2.1; upload 0.1 + 4 Mbit / 2 Mbit/s = 2.1
    assert (t.pid, t.download_s, t.compute_s, t.upload_s) == (3, pytest.approx(2.1), 3.0, pytest.approx(2.1))
    assert t.arrival_s == pytest.approx(7.2)


def test_compute_seconds_scales_with_work_and_compute_factor():
    # 600 examples x 5 epochs x 1 MFLOP = 3 GFLOP on a device half as fast as a 1 GFLOP/s reference
    assert compute_seconds(600, 5, 1e6, prof(cf=0.5), 1e9) == pytest.approx(6.0)
    assert compute_seconds(600, 5, 1e6, prof(cf=2.0), 1e9) == pytest.approx(1.5)
    with pytest.raises(ValueError):
        compute_seconds(600, 5, 1e6, prof(), 0.0)


def test_train_flops_of_mcmahan_cnn_by_hand_and_by_torch_counter():
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from fedsqueeze.models import build_model

    model = build_model("mcmahan-cnn")
    macs = 28 * 28 * 32 * (5 * 5 * 1) + 14 * 14 * 64 * (5 * 5 * 32) + 3136 * 512 + 512 * 10
    assert train_flops_per_example(model, (1, 28, 28)) == 3 * 2 * macs == 73_638_912
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 1, 28, 28))
    assert train_flops_per_example(model, (1, 28, 28)) == 3 * counter.get_total_flops()
    assert train_flops_per_example(build_model("mlp-2nn"), (1, 28, 28)) == 6 * (784 * 200 + 200 * 200 + 200 * 10)
    assert model.training  # the count does not leave the model in eval mode
    assert netsim.HOST_1THREAD_TRAIN_FLOPS == pytest.approx(6000 * 73_638_912 / 6.26)


# --- closing a round: deadline, over-selection, ties ------------------------------------------------


def test_deadline_drops_exactly_the_late_clients():
    ts = [timing(0, 5.0), timing(1, 12.0), timing(2, 8.0), timing(3, 10.0), timing(4, 10.5)]
    rc = close_round(ts, target_k=0, deadline_s=10.0)
    assert rc.kept == (0, 2, 3)  # arrival order; 10.0 is exactly at the deadline: in time
    assert rc.stragglers == (4, 1)
    assert rc.overselected == ()
    assert rc.round_s == 10.0  # the server waited for the late ones until the deadline


def test_over_selection_keeps_the_first_k():
    ts = [timing(0, 5.0), timing(1, 3.0), timing(2, 9.0), timing(3, 4.0)]
    rc = close_round(ts, target_k=2)
    assert rc.kept == (1, 3) and rc.overselected == (0, 2) and rc.stragglers == ()
    assert rc.round_s == 4.0  # closes at the K-th arrival


def test_over_selection_with_deadline_closes_at_kth_when_k_arrive_in_time():
    ts = [timing(0, 1.0), timing(1, 2.0), timing(2, 3.0), timing(3, 7.0)]
    rc = close_round(ts, target_k=2, deadline_s=6.0)
    assert rc.kept == (0, 1) and rc.overselected == (2,) and rc.stragglers == (3,)
    assert rc.round_s == 2.0


def test_fewer_than_k_all_in_time_closes_at_last_arrival():
    rc = close_round([timing(0, 1.0), timing(1, 4.0), timing(2, 2.5)], target_k=5, deadline_s=10.0)
    assert rc.kept == (0, 2, 1) and rc.round_s == 4.0


def test_fewer_than_k_with_late_clients_closes_at_deadline():
    rc = close_round([timing(0, 1.0), timing(1, 14.0)], target_k=2, deadline_s=10.0)
    assert rc.kept == (0,) and rc.stragglers == (1,) and rc.round_s == 10.0


def test_no_deadline_no_k_waits_for_everyone():
    rc = close_round([timing(5, 1.0), timing(2, 9.5), timing(7, 3.0)])
    assert rc.kept == (5, 7, 2) and rc.round_s == 9.5 and not rc.stragglers and not rc.overselected
    assert close_round([]) == netsim.RoundClose((), (), (), 0.0)


def test_ties_broken_by_pid_whatever_the_input_order():
    ts = [timing(4, 5.0), timing(2, 5.0), timing(9, 1.0), timing(7, 5.0)]
    for order in (ts, ts[::-1], [ts[1], ts[3], ts[0], ts[2]]):
        rc = close_round(order, target_k=2)
        assert rc.kept == (9, 2) and rc.overselected == (4, 7)


def test_close_round_rejects_bad_arguments():
    with pytest.raises(ValueError, match="duplicate"):
        close_round([timing(1, 1.0), timing(1, 2.0)])
    with pytest.raises(ValueError):
        close_round([timing(1, 1.0)], target_k=-1)
    with pytest.raises(ValueError):
        close_round([timing(1, 1.0)], deadline_s=-1.0)


# --- availability ------------------------------------------------------------------------------------


def test_unavailable_clients_and_independence_from_other_clients():
    always, never = prof(avail=1.0), prof(avail=1e-12)
    assert all(is_available(always, 0, r, 3) for r in range(200))
    assert not any(is_available(never, 0, r, 3) for r in range(200))
    profiles = [prof(avail=0.5) for _ in range(40)]
    full = available_partitions(profiles, seed=7, round_=3)
    subset = available_partitions(profiles, seed=7, round_=3, partition_ids=range(10, 20))
    assert subset == [p for p in full if 10 <= p < 20]  # asking about fewer clients changes nothing
    assert available_partitions(profiles[:20], seed=7, round_=3) == [p for p in full if p < 20]
    assert available_partitions(profiles, seed=8, round_=3) != full  # the seed matters
    with pytest.raises(ValueError, match="no profile"):
        available_partitions(profiles, 0, 1, partition_ids=[40])


def test_availability_rate_matches_probability():
    p = prof(avail=0.3)
    rate = sum(is_available(p, 1, r, 5) for r in range(10_000)) / 10_000
    assert abs(rate - 0.3) < 0.02


# --- profile draws, determinism, registry ------------------------------------------------------------


def test_draws_are_deterministic_and_independent_of_federation_size():
    a, b = draw_profiles("mobile-4g", 50, seed=3), draw_profiles("mobile-4g", 50, seed=3)
    assert a == b
    assert draw_profiles("mobile-4g", 10, seed=3) == a[:10]
    assert draw_profiles("mobile-4g", 50, seed=4) != a
    assert draw_profiles("mobile-3g", 50, seed=3) != a


@pytest.mark.parametrize("name", ["mobile-4g", "mobile-3g", "home-broadband"])
def test_profile_set_statistics_match_documented_medians(name):
    ps = PROFILE_SETS[name]
    draws = draw_profiles(name, 10_000, seed=0)
    assert statistics.median(p.down_bps for p in draws) / 1e6 == pytest.approx(ps.down_median_mbps, rel=0.05)
    assert statistics.median(p.up_bps for p in draws) / 1e6 == pytest.approx(ps.up_median_mbps, rel=0.05)
    assert statistics.median(p.rtt_s for p in draws) * 1000 == pytest.approx(ps.rtt_median_ms, rel=0.05)
    assert statistics.median(p.compute_factor for p in draws) == pytest.approx(1.0, rel=0.05)
    assert float(np.std(np.log([p.down_bps for p in draws]))) == pytest.approx(ps.bandwidth_sigma, rel=0.05)
    assert float(np.std(np.log([p.rtt_s for p in draws]))) == pytest.approx(ps.rtt_sigma, rel=0.05)
    lo, hi = ps.availability_range
    assert all(lo <= p.availability <= hi for p in draws)
    assert statistics.mean(p.availability for p in draws) == pytest.approx((lo + hi) / 2, abs=0.01)
    assert ps.source and "assumption" in ps.source  # every set says which parameters are assumed


def test_documented_set_parameters():
    assert PROFILE_SETS["mobile-4g"].down_median_mbps == 16.6
    assert PROFILE_SETS["mobile-4g"].up_median_mbps == pytest.approx(16.6 * 11.22 / 35.96)
    assert (PROFILE_SETS["mobile-3g"].down_median_mbps, PROFILE_SETS["mobile-3g"].up_median_mbps) == (1.0, 0.155)
    assert (PROFILE_SETS["home-broadband"].down_median_mbps, PROFILE_SETS["home-broadband"].up_median_mbps) == (
        85.73, 45.74)
    assert PROFILE_SETS["home-broadband"].bandwidth_sigma == pytest.approx(math.log(200 / 3) / 4)


def test_registry_is_read_at_lookup_time():
    ps = ProfileSet(name="test-lan", description="d", source="s", reference_flops=1e9, down_median_mbps=100,
                    up_median_mbps=100, bandwidth_sigma=0.0, rtt_median_ms=1.0, rtt_sigma=0.0,
                    compute_sigma=0.0)
    register_profile_set(ps)
    try:
        got = resolve_profiles("test-lan", 3, seed=0)
        assert got == [ClientProfile(100e6, 100e6, 0.001, 1.0, 1.0)] * 3
        with pytest.raises(ProfileSetError, match="already registered"):
            register_profile_set(ps)
        register_profile_set(ps, replace_existing=True)
    finally:
        del PROFILE_SETS["test-lan"]


def test_invalid_profile_set_and_profile_rejected():
    with pytest.raises(ProfileSetError, match="down_median_mbps"):
        ProfileSet(name="x", description="", source="", reference_flops=1e9, down_median_mbps=0,
                   up_median_mbps=1, bandwidth_sigma=0, rtt_median_ms=1, rtt_sigma=0, compute_sigma=0)
    with pytest.raises(ProfileSetError, match="availability_range"):
        ProfileSet(name="x", description="", source="", reference_flops=1e9, down_median_mbps=1,
                   up_median_mbps=1, bandwidth_sigma=0, rtt_median_ms=1, rtt_sigma=0, compute_sigma=0,
                   availability_range=(0.0, 1.0))
    with pytest.raises(ValueError, match="availability"):
        ClientProfile(1e6, 1e6, 0.0, 1.0, 1.5)
    with pytest.raises(ValueError, match="up_bps"):
        ClientProfile(1e6, 0.0, 0.0, 1.0, 1.0)


def test_reference_flops_per_spec():
    assert netsim.reference_flops("mobile-4g") == 5e9
    assert netsim.reference_flops("home-broadband") == netsim.HOST_1THREAD_TRAIN_FLOPS
    assert netsim.reference_flops("trace:/any.csv") == netsim.HOST_1THREAD_TRAIN_FLOPS
    assert netsim.reference_flops("mobile-3g", override=2e9) == 2e9
    for bad in (("",), ("nope",), ("mobile-4g", 0.0), ("mobile-4g", float("nan"))):
        with pytest.raises(ProfileSetError):
            netsim.reference_flops(*bad)


def test_resolve_profiles_specs(tmp_path):
    assert resolve_profiles("", 10, 0) is None
    with pytest.raises(ProfileSetError) as err:
        resolve_profiles("mobile-5g", 10, 0)
    for name in ("home-broadband", "mobile-3g", "mobile-4g"):
        assert name in str(err.value)
    base = resolve_profiles("home-broadband", 4, 1)
    doubled = resolve_profiles("home-broadband", 4, 1, bandwidth_scale=2.0)
    assert [d.down_bps for d in doubled] == [2 * b.down_bps for b in base]
    assert [d.up_bps for d in doubled] == [2 * b.up_bps for b in base]
    assert [d.rtt_s for d in doubled] == [b.rtt_s for b in base]
    trace = tmp_path / "t.csv"
    trace.write_text(HEADER + "0,8,2,100,1,1\n1,16,4,50,0.5,0.9\n")
    got = resolve_profiles(f"trace:{trace}", 2, seed=123, bandwidth_scale=0.5)
    assert got == [ClientProfile(4e6, 1e6, 0.1, 1.0, 1.0), ClientProfile(8e6, 2e6, 0.05, 0.5, 0.9)]
    with pytest.raises(ProfileSetError, match="needs a path"):
        resolve_profiles("trace:", 2, 0)


# --- traces ----------------------------------------------------------------------------------------


def test_trace_parsed(tmp_path):
    path = tmp_path / "trace.csv"
    path.write_text(HEADER + "1, 16, 4, 50, 0.5, 0.9\n0,8,2,100,1,1\n2,1,1,1,1,1\n\n")
    got = load_trace(path, 2)  # id 2 is beyond the federation: ignored
    assert got == [ClientProfile(8e6, 2e6, 0.1, 1.0, 1.0), ClientProfile(16e6, 4e6, 0.05, 0.5, 0.9)]


@pytest.mark.parametrize("body,line,column,needle", [
    ("client_id,down_mbps,up_mbps,rtt_ms,compute_factor\n0,1,1,1,1\n", 1, None, "header"),
    ("client_id,up_mbps,down_mbps,rtt_ms,compute_factor,availability\n0,1,1,1,1,1\n1,1,1,1,1,1\n", 1, None,
     "header"),
    (HEADER + "0,1,1,1,1,1\n1,1,1,1,1\n", 3, None, "5 fields"),
    (HEADER + "0,1,1,1,1,1\n1,fast,1,1,1,1\n", 3, "down_mbps", "not a number"),
    (HEADER + "0,1,1,1,1,1\n1,1,nan,1,1,1\n", 3, "up_mbps", "not finite"),
    (HEADER + "0,1,1,inf,1,1\n1,1,1,1,1,1\n", 2, "rtt_ms", "not finite"),
    (HEADER + "0,-5,1,1,1,1\n1,1,1,1,1,1\n", 2, "down_mbps", "out of range"),
    (HEADER + "0,1,0,1,1,1\n1,1,1,1,1,1\n", 2, "up_mbps", "out of range"),
    (HEADER + "0,1,1,-1,1,1\n1,1,1,1,1,1\n", 2, "rtt_ms", "out of range"),
    (HEADER + "0,1,1,1,0,1\n1,1,1,1,1,1\n", 2, "compute_factor", "out of range"),
    (HEADER + "0,1,1,1,1,0\n1,1,1,1,1,1\n", 2, "availability", "out of range"),
    (HEADER + "0,1,1,1,1,1.2\n1,1,1,1,1,1\n", 2, "availability", "out of range"),
    (HEADER + "0,1,1,1,1,1\n0,1,1,1,1,1\n", 3, "client_id", "duplicate id 0 (first on line 2)"),
    (HEADER + "0,1,1,1,1,1\n-1,1,1,1,1,1\n", 3, "client_id", "negative"),
    (HEADER + "0,1,1,1,1,1\n1.5,1,1,1,1,1\n", 3, "client_id", "not an integer"),
    (HEADER + "0,1,1,1,1,1\n2,1,1,1,1,1\n", None, "client_id", "1 of client ids 0..1 missing: 1"),
    ("", 1, None, "empty file"),
])
def test_trace_rejected_with_file_line_column(tmp_path, body, line, column, needle):
    path = tmp_path / "bad.csv"
    path.write_text(body)
    with pytest.raises(TraceError) as err:
        load_trace(path, 2)
    e = err.value
    assert (e.line, e.column) == (line, column)
    assert needle in str(e) and str(path) in str(e)
    if line is not None:
        assert f"line {line}" in str(e)
    assert isinstance(e, ValueError)


def test_trace_missing_file(tmp_path):
    with pytest.raises(TraceError, match="cannot read"):
        load_trace(tmp_path / "absent.csv", 2)


# --- offline replay ----------------------------------------------------------------------------------


def _row(rnd, pid, down, up, train_s=1.0, status="ok", n=100, epochs=2):
    return {"round": str(rnd), "partition_id": str(pid), "node_id": str(1000 + pid), "status": status,
            "num_examples": str(n), "local_epochs": str(epochs), "downlink_bytes": str(down),
            "uplink_bytes": str(up), "downlink_payload_bytes": str(down - 10),
            "uplink_payload_bytes": str(max(up - 10, 0)), "train_s": str(train_s)}


def test_replay_hand_computed():
    profiles = [prof(8, 8, 100, cf=1.0), prof(8, 2, 0, cf=0.5)]
    rows = [
        _row(1, 0, 1_000_000, 1_000_000), _row(1, 1, 1_000_000, 1_000_000),
        _row(2, 1, 0, 250_000), _row(2, 0, 0, 0, status="timeout"),  # no reply: does not hold the round
    ]
    # FLOP mode: 100 examples x 2 epochs x 1e6 FLOP / 1e8 FLOP/s = 2 s on pid 0, 4 s on pid 1 (cf 0.5)
    got = replay_rounds(rows, profiles, compute="flops", flops_per_example=1e6, reference_flops=1e8)
    # round 1: pid0 = (0.1 + 1) + 2 + (0.1 + 1) = 4.2; pid1 = 1 + 4 + 4 = 9.0 -> 9.0
    # round 2: pid1 = 0 + 4 + 1 = 5.0
    assert [(r.round, r.replied, r.no_reply) for r in got] == [(1, 2, 0), (2, 1, 1)]
    assert [r.sim_round_s for r in got] == [pytest.approx(9.0), pytest.approx(5.0)]
    assert got[-1].cum_sim_s == pytest.approx(14.0)
    measured = replay_rounds(rows, profiles, compute="measured")  # train_s 1.0 / cf
    assert [r.sim_round_s for r in measured] == [pytest.approx(max(1.1 + 1 + 1.1, 1 + 2 + 4)), pytest.approx(3.0)]
    again = replay_rounds(rows, profiles, compute="flops", flops_per_example=1e6, reference_flops=1e8)
    assert again == got


def test_replay_refuses_deadline_and_over_selection():
    rows, profiles = [_row(1, 0, 10, 10)], [prof()]
    for cfg in ({"round-deadline": 30.0}, {"over-selection": 0.3}, {"over-selection": 1.3}):
        with pytest.raises(ReplayError, match="cannot be recomputed"):
            replay_rounds(rows, profiles, compute="measured", run_config=cfg)
    for cfg in ({"round-deadline": 0.0, "over-selection": 0.0}, {"over-selection": 1.0}, {"round-timeout": 5}):
        replay_rounds(rows, profiles, compute="measured", run_config=cfg)
    for status in ("straggler", "overselected"):
        with pytest.raises(ReplayError, match=status):
            replay_rounds([_row(1, 0, 10, 10, status=status)], profiles, compute="measured")


def test_replay_rejects_malformed_rows():
    with pytest.raises(ReplayError, match="no profile"):
        replay_rounds([_row(1, 3, 10, 10)], [prof()], compute="measured")
    with pytest.raises(ReplayError, match="uplink_bytes"):
        replay_rounds([{**_row(1, 0, 10, 10), "uplink_bytes": "x"}], [prof()], compute="measured")
    with pytest.raises(ReplayError, match="twice"):
        replay_rounds([_row(1, 0, 10, 10), _row(1, 0, 10, 10)], [prof()], compute="measured")
    with pytest.raises(ReplayError, match="flops_per_example"):
        replay_rounds([_row(1, 0, 10, 10)], [prof()], compute="flops")
