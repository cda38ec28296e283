"""Simulated client networks and devices: time per round, deadlines, stragglers.

FedSqueeze counts every byte exactly; this module turns those bytes into
*simulated* seconds so that schemes can be compared by time to accuracy, not
only by bytes. Nothing here reads a clock: the same profiles, bytes and example
counts always give the same times and the same straggler decisions, whatever
the speed of the machine running the simulation.

The model (``docs/network.md`` has the derivation and the sources)::

    transfer_seconds(B, bps, rtt) = rtt + 8 * B / bps
    compute_seconds                = examples * epochs * flops_per_example
                                     / (reference_flops * compute_factor)
    arrival_s                      = download_s + compute_s + upload_s

and a round closes when the server has what it waits for (:func:`close_round`).

Profiles come from a named :class:`ProfileSet` (log-normal bandwidths fitted
to published medians, see :data:`PROFILE_SETS`) or from a measured trace CSV
(:func:`load_trace`). Pure Python and NumPy; torch is imported only by
:func:`train_flops_per_example`.
"""

from __future__ import annotations

import csv
import logging
import math
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch only for the FLOP counter; keep the module importable without it
    from torch import nn

__all__ = [
    "ClientProfile",
    "ProfileSet",
    "PROFILE_SETS",
    "register_profile_set",
    "get_profile_set",
    "draw_profiles",
    "load_trace",
    "resolve_profiles",
    "reference_flops",
    "HOST_1THREAD_TRAIN_FLOPS",
    "is_available",
    "available_partitions",
    "train_flops_per_example",
    "compute_seconds",
    "transfer_seconds",
    "ClientTiming",
    "client_timing",
    "RoundClose",
    "close_round",
    "ReplayRound",
    "replay_rounds",
    "TRACE_COLUMNS",
    "CLIENT_COLUMNS",
    "STATUS_OK",
    "STATUS_STRAGGLER",
    "STATUS_OVERSELECTED",
    "STATUS_UNAVAILABLE",
    "TraceError",
    "ProfileSetError",
    "ReplayError",
]

log = logging.getLogger(__name__)

#: Columns of a trace CSV, in this order (``docs/network.md``).
TRACE_COLUMNS = ("client_id", "down_mbps", "up_mbps", "rtt_ms", "compute_factor", "availability")

#: Columns of a run's ``clients.csv`` (one row per sampled client per round) that the replay reads.
CLIENT_COLUMNS = ("round", "partition_id", "node_id", "status", "num_examples", "local_epochs",
                  "downlink_bytes", "uplink_bytes", "downlink_payload_bytes", "uplink_payload_bytes",
                  "train_s")

STATUS_OK = "ok"
#: A reply that arrived after the round deadline (dropped from the aggregate).
STATUS_STRAGGLER = "straggler"
#: A reply that arrived in time but after the first K (dropped by over-selection).
STATUS_OVERSELECTED = "overselected"
#: A client sampled but unreachable in this round (per its profile's availability).
STATUS_UNAVAILABLE = "unavailable"

# Distinct stream tags so that the availability coin of (seed, round, pid) never
# coincides with the profile draw of (seed, pid).
_TAG_PROFILE = 0x50F11E
_TAG_AVAILABLE = 0xA7A11
_MBPS = 1e6


class TraceError(ValueError):
    """A malformed trace CSV; names the file, the line (1 = header) and the column."""

    def __init__(self, path: str | Path, line: int | None, column: str | None, problem: str):
        self.path, self.line, self.column, self.problem = str(path), line, column, problem
        where = str(path) + (f", line {line}" if line is not None else "") + (
            f", column {column!r}" if column is not None else "")
        super().__init__(f"{where}: {problem}")


class ProfileSetError(ValueError):
    """An unknown profile-set name, an invalid profile set or an invalid profile spec."""


class ReplayError(ValueError):
    """A run whose simulated time cannot be recomputed offline (or malformed client rows)."""


# ---------------------------------------------------------------------------------------------
# Profiles
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientProfile:
    """One client's link and device.

    Attributes
    ----------
    down_bps, up_bps
        Downlink and uplink bandwidth in bits per second (> 0).
    rtt_s
        Round-trip latency in seconds (>= 0), paid once per transfer.
    compute_factor
        Training speed relative to the profile set's reference device (> 0; 1.0 = reference,
        0.5 = twice as slow).
    availability
        Probability of being reachable in a round, in (0, 1].
    """

    down_bps: float
    up_bps: float
    rtt_s: float
    compute_factor: float
    availability: float

    def __post_init__(self) -> None:
        problems = _profile_problems(self.down_bps, self.up_bps, self.rtt_s, self.compute_factor,
                                     self.availability)
        if problems:
            raise ValueError("invalid ClientProfile: " + "; ".join(p for _, p in problems))

    def scaled(self, bandwidth_scale: float) -> ClientProfile:
        """The same client with both bandwidths multiplied by ``bandwidth_scale`` (> 0).

        Latency, compute and availability are unchanged: the sweep asks how the
        comparison moves with link capacity alone.
        """
        if not (_finite(bandwidth_scale) and bandwidth_scale > 0):
            raise ValueError(f"bandwidth_scale must be a finite number > 0, got {bandwidth_scale!r}")
        return replace(self, down_bps=self.down_bps * bandwidth_scale, up_bps=self.up_bps * bandwidth_scale)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float, np.floating, np.integer)) and not isinstance(x, bool) and math.isfinite(x)


def _profile_problems(down: Any, up: Any, rtt: Any, cf: Any, avail: Any) -> list[tuple[str, str]]:
    """(field, problem) pairs for invalid profile values; empty when all are valid."""
    out = []
    for name, value in (("down_bps", down), ("up_bps", up), ("compute_factor", cf)):
        if not (_finite(value) and value > 0):
            out.append((name, f"{name} must be a finite number > 0, got {value!r}"))
    if not (_finite(rtt) and rtt >= 0):
        out.append(("rtt_s", f"rtt_s must be a finite number >= 0, got {rtt!r}"))
    if not (_finite(avail) and 0 < avail <= 1):
        out.append(("availability", f"availability must be in (0, 1], got {avail!r}"))
    return out


@dataclass(frozen=True)
class ProfileSet:
    """A named distribution of client profiles, fitted to published measurements.

    Both bandwidths are log-normal and drawn from the *same* standard-normal
    quantile per client (a slow access link is slow in both directions); the
    round-trip time is an independent log-normal; the compute factor is
    log-normal with median 1 (the reference device); availability is uniform
    in ``availability_range``.

    Attributes
    ----------
    name, description
        Registry key and one line for reports.
    source
        Citation text: the measurements fitted, with their numbers, and which
        parameters are documented assumptions rather than measurements.
    reference_flops
        Training FLOP/s of the reference device (compute_factor = 1).
    down_median_mbps, up_median_mbps
        Median bandwidths in Mbit/s.
    bandwidth_sigma
        Log-normal sigma (natural log) of both bandwidths.
    rtt_median_ms, rtt_sigma
        Median round-trip time and its log-normal sigma.
    compute_sigma
        Log-normal sigma of the compute factor (median 1).
    availability_range
        ``(low, high)``, both in (0, 1]; each client's availability is uniform in it.
    """

    name: str
    description: str
    source: str
    reference_flops: float
    down_median_mbps: float
    up_median_mbps: float
    bandwidth_sigma: float
    rtt_median_ms: float
    rtt_sigma: float
    compute_sigma: float
    availability_range: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        bad = []
        if not (isinstance(self.name, str) and self.name.strip() and ":" not in self.name):
            bad.append(f"name must be a non-empty string without ':', got {self.name!r}")
        for attr in ("reference_flops", "down_median_mbps", "up_median_mbps", "rtt_median_ms"):
            v = getattr(self, attr)
            if not (_finite(v) and v > 0):
                bad.append(f"{attr} must be a finite number > 0, got {v!r}")
        for attr in ("bandwidth_sigma", "rtt_sigma", "compute_sigma"):
            v = getattr(self, attr)
            if not (_finite(v) and v >= 0):
                bad.append(f"{attr} must be a finite number >= 0, got {v!r}")
        lo, hi = self.availability_range
        if not (_finite(lo) and _finite(hi) and 0 < lo <= hi <= 1):
            bad.append(f"availability_range must satisfy 0 < low <= high <= 1, got {self.availability_range!r}")
        if bad:
            raise ProfileSetError(f"invalid profile set {self.name!r}: " + "; ".join(bad))

    def draw(self, pid: int, seed: int) -> ClientProfile:
        """Client ``pid``'s profile for ``seed`` (independent of how many clients exist)."""
        rng = np.random.default_rng([_TAG_PROFILE, _u32(self.name), _nonneg(seed, "seed"), _nonneg(pid, "pid")])
        z_bw, z_rtt, z_cf, u_av = rng.standard_normal(3).tolist() + [float(rng.random())]
        lo, hi = self.availability_range
        return ClientProfile(
            down_bps=self.down_median_mbps * _MBPS * math.exp(self.bandwidth_sigma * z_bw),
            up_bps=self.up_median_mbps * _MBPS * math.exp(self.bandwidth_sigma * z_bw),
            rtt_s=self.rtt_median_ms / 1000.0 * math.exp(self.rtt_sigma * z_rtt),
            compute_factor=math.exp(self.compute_sigma * z_cf),
            availability=lo + (hi - lo) * u_av,
        )


def _u32(text: str) -> int:
    """A stable 32-bit key of a string (``hash()`` is salted per process)."""
    return zlib.crc32(text.encode())


def _nonneg(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


# The host of benchmarks/README.md (2-core x86 CPU, torch 2.14 CPU) trained 6,000 McMahan-CNN
# examples (10 clients x 600, batch 10, 1 thread, one process) in 6.26 s (benchmarks/round.md,
# "floor, plain PyTorch, one process, 1 thread"). With the 73,638,912 training FLOPs per example
# counted by train_flops_per_example that is 6,000 * 73,638,912 / 6.26 = 70.6 GFLOP/s.
HOST_1THREAD_TRAIN_FLOPS = 6000 * 73_638_912 / 6.26

# Assumption, not a measurement: no phone was measured for this repository. Phone CPUs
# training with a mobile runtime sustain a small fraction of a desktop core's vectorised
# float32 throughput; 5 GFLOP/s (about 1/14 of the host above) is taken as the reference phone.
PHONE_TRAIN_FLOPS = 5e9

_BONAWITZ = ("Bonawitz et al., 'Towards Federated Learning at Scale: System Design', SysML 2019: "
             "devices drop out of a round after selection, so the server over-selects (the paper "
             "reports selecting 130 % of the target count and 6-10 % drop-outs; these two figures "
             "are quoted from the paper as remembered, the passage was not in the sources searched "
             "for this module - check them before relying on them)")

#: All registered profile sets by name (read at lookup time; extend with :func:`register_profile_set`).
PROFILE_SETS: dict[str, ProfileSet] = {}


def register_profile_set(profile_set: ProfileSet, *, replace_existing: bool = False) -> ProfileSet:
    """Add ``profile_set`` to :data:`PROFILE_SETS` and return it.

    Raises
    ------
    ProfileSetError
        If the name is taken and ``replace_existing`` is false, or the object is not a ProfileSet.
    """
    if not isinstance(profile_set, ProfileSet):
        raise ProfileSetError(f"expected a ProfileSet, got {type(profile_set).__name__}")
    if profile_set.name in PROFILE_SETS and not replace_existing:
        raise ProfileSetError(f"profile set {profile_set.name!r} is already registered "
                              "(pass replace_existing=True to replace it)")
    PROFILE_SETS[profile_set.name] = profile_set
    return profile_set


def get_profile_set(name: str) -> ProfileSet:
    """The registered profile set ``name``.

    Raises
    ------
    ProfileSetError
        If no set has that name; the message lists the registered names.
    """
    try:
        return PROFILE_SETS[name]
    except (KeyError, TypeError):
        raise ProfileSetError(f"unknown profile set {name!r}; registered: {sorted(PROFILE_SETS)} "
                              "(or 'trace:<path>')") from None


register_profile_set(ProfileSet(
    name="mobile-4g",
    description="phones on 4G/LTE mobile broadband",
    source=(
        "Download median 16.6 Mbit/s: OpenSignal, 'The State of LTE' (November 2017, data Jul-Oct 2017), "
        "global average 4G download 16.6 Mbit/s (16.2 Mbit/s six months earlier; fastest country Singapore "
        "46.6 Mbit/s; the November 2016 edition: global 17.4 Mbit/s, India 6.4 Mbit/s). OpenSignal "
        "publishes means; using the mean as the log-normal median is an assumption (it overstates the "
        "median of a right-skewed distribution). "
        "Upload median 5.2 Mbit/s = 16.6 / 3.2, the download/upload ratio of Ookla's Speedtest Global Index "
        "for mobile in September 2020 (35.96 / 11.22 Mbit/s); applying that ratio to 4G is an assumption. "
        "RTT median 45 ms, sigma 0.3: between Ookla's global mobile median latency (28 ms, November 2022; "
        "40 ms, September 2020) and OpenSignal's US 4G latencies (57-64.7 ms, 'State of Mobile Networks: "
        "USA', August 2017); sigma 0.3 puts 90 % of draws in 28-74 ms. Bandwidth sigma 0.8 is an "
        "assumption: the spread of country averages alone (6.4-46.6 Mbit/s read as +-2 sigma) gives 0.5, "
        "and users within a country vary more. Compute: reference phone 5 GFLOP/s and compute sigma 0.5 "
        "are assumptions (no device was measured); FedScale (Lai et al., ICML 2022) documents that client "
        "compute speeds differ by orders of magnitude but its trace is not reproduced here. Availability "
        "0.90-0.94 per round: " + _BONAWITZ + "."
    ),
    reference_flops=PHONE_TRAIN_FLOPS,
    down_median_mbps=16.6,
    up_median_mbps=16.6 / (35.96 / 11.22),
    bandwidth_sigma=0.8,
    rtt_median_ms=45.0,
    rtt_sigma=0.3,
    compute_sigma=0.5,
    availability_range=(0.90, 0.94),
))

register_profile_set(ProfileSet(
    name="mobile-3g",
    description="phones on slow 3G-class links",
    source=(
        "ARCchart (September 2009), millions of speed tests from its iPhone/BlackBerry/Android applet: 3G "
        "(UMTS) download averaged about 1 Mbit/s (iPhone and Android 1,025 kbit/s), upload 155 kbit/s "
        "(iPhone and Android), latency 336 ms on average with carriers and countries from 200 ms to over a "
        "second. OpenSignal's 'Global State of Mobile Networks' (August 2016) likewise states that 3G "
        "connections typically download at about 1 Mbit/s, and its State of LTE (Q1 2017) gives a 4.4 Mbit/s "
        "global 3G average (US carriers 2017: <1 to 4.6 Mbit/s), so 1.0 Mbit/s is the slow end of 3G. "
        "Medians set to those averages (assumption, as for mobile-4g): download 1.0 Mbit/s, upload "
        "0.155 Mbit/s, RTT 336 ms with sigma 0.45 (90 % of draws in 160-700 ms, roughly the 200 ms - 1 s "
        "carrier range). Bandwidth sigma 0.8 is an assumption (the US 3G carrier averages <1-4.6 Mbit/s "
        "span a factor of about 5). Compute as mobile-4g (assumptions). Availability 0.75-0.90: OpenSignal "
        "2016 found 3G-or-better signal available >= 75 % of the time in the vast majority of 95 countries "
        "(lower end), upper end from the drop-out rate below. " + _BONAWITZ + "."
    ),
    reference_flops=PHONE_TRAIN_FLOPS,
    down_median_mbps=1.0,
    up_median_mbps=0.155,
    bandwidth_sigma=0.8,
    rtt_median_ms=336.0,
    rtt_sigma=0.45,
    compute_sigma=0.5,
    availability_range=(0.75, 0.90),
))

register_profile_set(ProfileSet(
    name="home-broadband",
    description="laptops/desktops on fixed home broadband",
    source=(
        "Ookla Speedtest Global Index, September 2020, fixed broadband worldwide: download 85.73 Mbit/s, "
        "upload 45.74 Mbit/s, latency 21 ms (Ookla's November 2022 global fixed median latency: 10 ms); "
        "used as the medians (download, upload) and RTT median 15 ms with sigma 0.4 (90 % of draws in "
        "8-29 ms). Bandwidth sigma 1.05 = ln(200 / 3) / 4: the FCC's Eighth Measuring Broadband America "
        "Fixed Broadband Report (data September 2017) measured advertised tiers from 3 to 200 Mbit/s, read "
        "as +-2 sigma (for comparison the FCC's sixth report gives a 39 Mbit/s median download averaged "
        "across US ISPs in September 2015). Compute: the reference device is this repository's benchmark "
        "host, one thread: 6,000 McMahan-CNN training examples in 6.26 s (benchmarks/round.md), i.e. "
        f"{HOST_1THREAD_TRAIN_FLOPS / 1e9:.1f} GFLOP/s by the FLOP convention of train_flops_per_example "
        "(a measurement); compute sigma 0.5 is an assumption. Availability 0.90-0.94: " + _BONAWITZ + "."
    ),
    reference_flops=HOST_1THREAD_TRAIN_FLOPS,
    down_median_mbps=85.73,
    up_median_mbps=45.74,
    bandwidth_sigma=math.log(200 / 3) / 4,
    rtt_median_ms=15.0,
    rtt_sigma=0.4,
    compute_sigma=0.5,
    availability_range=(0.90, 0.94),
))


def draw_profiles(set_name: str, num_clients: int, seed: int) -> list[ClientProfile]:
    """Profiles of clients ``0 .. num_clients - 1`` from a registered set.

    Client ``i``'s profile depends only on (set, seed, i), so growing the
    federation does not change existing clients.

    Raises
    ------
    ProfileSetError
        Unknown set name (the message lists the registered names).
    ValueError
        Negative ``num_clients`` or ``seed``.
    """
    ps = get_profile_set(set_name)
    n = _nonneg(num_clients, "num_clients")
    _nonneg(seed, "seed")
    return [ps.draw(pid, seed) for pid in range(n)]


def load_trace(path: str | Path, num_clients: int) -> list[ClientProfile]:
    """Read a measured trace CSV: one row per client, columns :data:`TRACE_COLUMNS`.

    ``client_id`` values ``0 .. num_clients - 1`` must all be present exactly
    once; rows with larger ids are allowed (a trace may describe more clients
    than the federation has) and ignored. Bandwidths in Mbit/s, RTT in ms.

    Raises
    ------
    TraceError
        Missing file, wrong header, wrong number of fields, a value that is not a
        number, NaN/inf, out of range (bandwidth and compute <= 0, RTT < 0,
        availability outside (0, 1]), a duplicate or negative id, or missing ids.
        The message names the file, line (1 = header) and column.
    """
    path = Path(path)
    n = _nonneg(num_clients, "num_clients")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise TraceError(path, None, None, f"cannot read trace file: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise TraceError(path, None, None, "not a UTF-8 text file") from None
    rows = list(csv.reader(text.splitlines()))
    if not rows:
        raise TraceError(path, 1, None, f"empty file; expected header {','.join(TRACE_COLUMNS)}")
    header = [h.strip() for h in rows[0]]
    if tuple(header) != TRACE_COLUMNS:
        raise TraceError(path, 1, None, f"header is {','.join(header)!r}; expected {','.join(TRACE_COLUMNS)!r}")
    seen: dict[int, int] = {}
    profiles: dict[int, ClientProfile] = {}
    for lineno, fields in enumerate(rows[1:], start=2):
        if not fields or all(not f.strip() for f in fields):
            continue  # blank lines (e.g. a trailing newline) carry nothing
        if len(fields) != len(TRACE_COLUMNS):
            raise TraceError(path, lineno, None, f"{len(fields)} fields; expected {len(TRACE_COLUMNS)}")
        raw = dict(zip(TRACE_COLUMNS, (f.strip() for f in fields)))
        try:
            cid = int(raw["client_id"])
        except ValueError:
            raise TraceError(path, lineno, "client_id", f"{raw['client_id']!r} is not an integer") from None
        if cid < 0:
            raise TraceError(path, lineno, "client_id", f"negative id {cid}")
        if cid in seen:
            raise TraceError(path, lineno, "client_id", f"duplicate id {cid} (first on line {seen[cid]})")
        seen[cid] = lineno
        values = {}
        for col in TRACE_COLUMNS[1:]:
            try:
                v = float(raw[col])
            except ValueError:
                raise TraceError(path, lineno, col, f"{raw[col]!r} is not a number") from None
            if not math.isfinite(v):
                raise TraceError(path, lineno, col, f"{raw[col]!r} is not finite")
            values[col] = v
        fields_of = {"down_bps": "down_mbps", "up_bps": "up_mbps", "rtt_s": "rtt_ms",
                     "compute_factor": "compute_factor", "availability": "availability"}
        problems = _profile_problems(values["down_mbps"] * _MBPS, values["up_mbps"] * _MBPS,
                                     values["rtt_ms"] / 1000.0, values["compute_factor"], values["availability"])
        if problems:
            name, _ = problems[0]
            col = fields_of[name]
            rule = {"down_mbps": "> 0", "up_mbps": "> 0", "rtt_ms": ">= 0", "compute_factor": "> 0",
                    "availability": "in (0, 1]"}[col]
            raise TraceError(path, lineno, col, f"{raw[col]} is out of range; must be {rule}")
        if cid < n:
            profiles[cid] = ClientProfile(values["down_mbps"] * _MBPS, values["up_mbps"] * _MBPS,
                                          values["rtt_ms"] / 1000.0, values["compute_factor"],
                                          values["availability"])
    missing = [i for i in range(n) if i not in profiles]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise TraceError(path, None, "client_id", f"{len(missing)} of client ids 0..{n - 1} missing: {shown}")
    return [profiles[i] for i in range(n)]


def resolve_profiles(spec: str, num_clients: int, seed: int,
                     bandwidth_scale: float = 1.0) -> list[ClientProfile] | None:
    """Profiles for a run-config value.

    Parameters
    ----------
    spec
        ``""`` (network simulation off), a registered set name, or ``"trace:<path>"``.
    num_clients
        Number of partitions (profiles for ids ``0 .. num_clients - 1``).
    seed
        Draw seed (ignored for traces).
    bandwidth_scale
        Multiplies every client's up- and downlink bandwidth.

    Returns
    -------
    list of ClientProfile or None
        ``None`` when ``spec`` is empty.

    Raises
    ------
    ProfileSetError
        Unknown set name (lists the registered names) or an empty trace path.
    TraceError
        Malformed trace file.
    """
    if not isinstance(spec, str):
        raise ProfileSetError(f"network profile spec must be a string, got {type(spec).__name__}")
    spec = spec.strip()
    if not spec:
        return None
    if spec.startswith("trace:"):
        trace_path = spec[len("trace:"):].strip()
        if not trace_path:
            raise ProfileSetError("'trace:' needs a path, e.g. 'trace:/data/clients.csv'")
        profiles = load_trace(trace_path, num_clients)
    else:
        profiles = draw_profiles(spec, num_clients, seed)
    if bandwidth_scale != 1.0:
        profiles = [p.scaled(bandwidth_scale) for p in profiles]
    return profiles


def reference_flops(spec: str, override: float | None = None) -> float:
    """Training FLOP/s of the reference device (compute_factor = 1) for a profile spec.

    ``override`` if given; else the named set's :attr:`ProfileSet.reference_flops`; for
    ``trace:<path>`` specs the benchmark host, one thread (:data:`HOST_1THREAD_TRAIN_FLOPS`),
    so a trace's ``compute_factor`` is relative to that host unless overridden.

    Raises
    ------
    ProfileSetError
        Unknown set name, empty spec, or an override that is not a finite number > 0.
    """
    if override is not None:
        if not (_finite(override) and override > 0):
            raise ProfileSetError(f"reference FLOP/s must be a finite number > 0, got {override!r}")
        return float(override)
    spec = spec.strip() if isinstance(spec, str) else spec
    if not spec:
        raise ProfileSetError("network simulation is off (empty profile spec): no reference device")
    if isinstance(spec, str) and spec.startswith("trace:"):
        return HOST_1THREAD_TRAIN_FLOPS
    return get_profile_set(spec).reference_flops


# ---------------------------------------------------------------------------------------------
# Availability
# ---------------------------------------------------------------------------------------------


def is_available(profile: ClientProfile, seed: int, round_: int, partition_id: int) -> bool:
    """Whether the client is reachable in ``round_``.

    One uniform draw per (seed, round, partition) from its own seeded stream,
    compared with ``profile.availability``: the answer never depends on which
    or how many other clients exist or were asked first.
    """
    rng = np.random.default_rng([_TAG_AVAILABLE, _nonneg(seed, "seed"), _nonneg(round_, "round_"),
                                 _nonneg(partition_id, "partition_id")])
    return bool(rng.random() < profile.availability)


def available_partitions(profiles: Sequence[ClientProfile], seed: int, round_: int,
                         partition_ids: Iterable[int] | None = None) -> list[int]:
    """The partitions (of ``partition_ids``, default all) reachable in ``round_``, ascending."""
    pids = range(len(profiles)) if partition_ids is None else sorted(set(partition_ids))
    out = []
    for pid in pids:
        if not 0 <= pid < len(profiles):
            raise ValueError(f"partition id {pid} has no profile (profiles for 0..{len(profiles) - 1})")
        if is_available(profiles[pid], seed, round_, pid):
            out.append(pid)
    return out


# ---------------------------------------------------------------------------------------------
# Time
# ---------------------------------------------------------------------------------------------


def train_flops_per_example(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Training FLOPs per example: 3 x the forward FLOPs of the Conv2d and Linear layers.

    Convention: a multiply-accumulate is 2 FLOPs; the forward pass counts only
    the Conv2d and Linear layers (bias adds, activations, pooling and the loss
    are < 1 % for the repository's models and are left out); the backward pass
    costs twice the forward (gradients with respect to inputs and to weights),
    so training = 3 x forward. This matches ``torch.utils.flop_counter`` on the
    forward pass (tested) and is the usual 6 x params-per-MAC rule of thumb.

    Parameters
    ----------
    model
        Any ``torch.nn.Module``; it is run once on a zero batch of one example.
    input_shape
        One example's shape without the batch dimension, e.g. ``(1, 28, 28)``.
    """
    import torch
    from torch import nn

    macs = 0

    def conv_hook(mod: nn.Conv2d, _inp: Any, out: torch.Tensor) -> None:
        nonlocal macs
        kh, kw = mod.kernel_size
        macs += out[0].numel() * (mod.in_channels // mod.groups) * kh * kw

    def linear_hook(mod: nn.Linear, _inp: Any, out: torch.Tensor) -> None:
        nonlocal macs
        macs += out[0].numel() * mod.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    if not handles:
        raise ValueError("model has no Conv2d or Linear layer to count")
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1, *input_shape)))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return 3 * 2 * macs


def compute_seconds(num_examples: int, epochs: int, flops_per_example: float, profile: ClientProfile,
                    reference_flops: float) -> float:
    """Deterministic local-training time: ``examples * epochs * flops / (reference_flops * compute_factor)``."""
    if num_examples < 0 or epochs < 0:
        raise ValueError(f"num_examples and epochs must be >= 0, got {num_examples}, {epochs}")
    if not (_finite(flops_per_example) and flops_per_example >= 0):
        raise ValueError(f"flops_per_example must be a finite number >= 0, got {flops_per_example!r}")
    if not (_finite(reference_flops) and reference_flops > 0):
        raise ValueError(f"reference_flops must be a finite number > 0, got {reference_flops!r}")
    return num_examples * epochs * flops_per_example / (reference_flops * profile.compute_factor)


def transfer_seconds(num_bytes: int, bps: float, rtt_s: float) -> float:
    """Time to move ``num_bytes`` over a link: one round trip plus the serialisation time.

    ``rtt_s + 8 * num_bytes / bps``. The round trip stands for the request /
    acknowledgement exchange of one message on an established connection
    (connection setup, TCP slow start and loss are not modelled); it is paid
    even for an empty message.
    """
    if isinstance(num_bytes, bool) or not isinstance(num_bytes, (int, np.integer)) or num_bytes < 0:
        raise ValueError(f"num_bytes must be a non-negative integer, got {num_bytes!r}")
    if not (_finite(bps) and bps > 0):
        raise ValueError(f"bps must be a finite number > 0, got {bps!r}")
    if not (_finite(rtt_s) and rtt_s >= 0):
        raise ValueError(f"rtt_s must be a finite number >= 0, got {rtt_s!r}")
    return rtt_s + 8 * int(num_bytes) / bps


@dataclass(frozen=True)
class ClientTiming:
    """One sampled client's simulated round: download, train, upload.

    ``arrival_s`` is when its reply reaches the server, counted from the
    broadcast: ``download_s + compute_s + upload_s``.
    """

    pid: int
    download_s: float
    compute_s: float
    upload_s: float
    arrival_s: float = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "arrival_s", self.download_s + self.compute_s + self.upload_s)


def client_timing(pid: int, profile: ClientProfile, down_bytes: int, up_bytes: int,
                  compute_s: float) -> ClientTiming:
    """The :class:`ClientTiming` of a client that received ``down_bytes`` and sent ``up_bytes``."""
    if not (_finite(compute_s) and compute_s >= 0):
        raise ValueError(f"compute_s must be a finite number >= 0, got {compute_s!r}")
    return ClientTiming(pid, transfer_seconds(down_bytes, profile.down_bps, profile.rtt_s), float(compute_s),
                        transfer_seconds(up_bytes, profile.up_bps, profile.rtt_s))


@dataclass(frozen=True)
class RoundClose:
    """What the server keeps of a round, and when it closes it.

    Attributes
    ----------
    kept
        Partition ids aggregated, in arrival order (ties by pid).
    stragglers
        Partition ids whose replies arrived after the deadline, in arrival order.
    overselected
        Partition ids that arrived in time but after the first ``target_k``.
    round_s
        Simulated seconds from broadcast to close.
    """

    kept: tuple[int, ...]
    stragglers: tuple[int, ...]
    overselected: tuple[int, ...]
    round_s: float


def close_round(timings: Sequence[ClientTiming], target_k: int = 0, deadline_s: float = 0.0) -> RoundClose:
    """Decide which replies a round keeps and when it closes.

    Replies are ordered by ``(arrival_s, pid)`` so that ties never depend on
    the order of ``timings``. A reply arriving exactly at the deadline is in
    time. The server closes the round

    * at the ``target_k``-th in-time arrival, when that many arrive in time;
    * otherwise at the last arrival, when every reply is in time;
    * otherwise at the deadline (it waited for replies that came too late).

    Parameters
    ----------
    timings
        The sampled clients that reply (unavailable clients do not appear).
    target_k
        How many replies the server needs (over-selection samples more); 0 = all.
    deadline_s
        Simulated seconds after the broadcast; 0 = no deadline.
    """
    if isinstance(target_k, bool) or not isinstance(target_k, (int, np.integer)) or target_k < 0:
        raise ValueError(f"target_k must be a non-negative integer (0 = all), got {target_k!r}")
    if not (_finite(deadline_s) and deadline_s >= 0):
        raise ValueError(f"deadline_s must be a finite number >= 0 (0 = none), got {deadline_s!r}")
    pids = [t.pid for t in timings]
    if len(set(pids)) != len(pids):
        raise ValueError(f"duplicate partition ids in timings: {sorted(pids)}")
    order = sorted(timings, key=lambda t: (t.arrival_s, t.pid))
    if deadline_s > 0:
        in_time = [t for t in order if t.arrival_s <= deadline_s]
        late = [t for t in order if t.arrival_s > deadline_s]
    else:
        in_time, late = order, []
    k = target_k or len(in_time)
    kept, over = in_time[:k], in_time[k:]
    if not order:
        round_s = 0.0
    elif target_k and len(kept) == target_k:
        round_s = kept[-1].arrival_s
    elif not late:
        round_s = order[-1].arrival_s
    else:
        round_s = float(deadline_s)
    return RoundClose(tuple(t.pid for t in kept), tuple(t.pid for t in late), tuple(t.pid for t in over),
                      round_s)


# ---------------------------------------------------------------------------------------------
# Offline replay of a finished run
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayRound:
    """One round of a replayed run.

    Attributes
    ----------
    round
        Round number (as in ``metrics.csv``).
    sim_round_s, cum_sim_s
        Simulated seconds of this round and since the start of the run.
    replied
        Clients whose reply reached the server (any status other than a missing reply).
    no_reply
        Sampled clients with no reply at all (``uplink_bytes`` 0 and a failure
        status, e.g. a real timeout); they do not delay the simulated close.
    """

    round: int
    sim_round_s: float
    cum_sim_s: float
    replied: int
    no_reply: int


# Config keys after which a finished run cannot be replayed under other profiles: the set of
# aggregated clients depended on the simulated arrival order. Values meaning "off": 0 (a
# deadline or an extra fraction) and 1 (an over-selection factor).
_REPLAY_BLOCKING_PREFIXES = ("round-deadline", "over-select")


def _check_replayable(run_config: Mapping[str, Any] | None) -> None:
    for key, value in (run_config or {}).items():
        if not key.startswith(_REPLAY_BLOCKING_PREFIXES):
            continue
        try:
            off = float(value) in (0.0, 1.0)
        except (TypeError, ValueError):
            off = value in ("", None, False)
        if not off:
            raise ReplayError(
                f"run config has {key} = {value!r}: which clients were aggregated depended on the simulated "
                "arrival order of that run, so its time cannot be recomputed under other profiles or "
                "bandwidths; use its ledger's own sim_round_s / cum_sim_s")


def _int(row: Mapping[str, Any], col: str, where: str) -> int:
    try:
        return int(row[col])
    except KeyError:
        raise ReplayError(f"{where}: missing column {col!r}") from None
    except (TypeError, ValueError):
        raise ReplayError(f"{where}: column {col!r} = {row[col]!r} is not an integer") from None


def replay_rounds(rows: Iterable[Mapping[str, Any]], profiles: Sequence[ClientProfile], *,
                  compute: str = "flops", flops_per_example: float | None = None,
                  reference_flops: float | None = None,
                  run_config: Mapping[str, Any] | None = None) -> list[ReplayRound]:
    """Recompute each round's simulated time of a finished run from its ``clients.csv`` rows.

    Each round closes at its last reply (no deadline, no over-selection, every
    reply waited for), with every replying client timed by
    :func:`client_timing` from its exact ``downlink_bytes`` / ``uplink_bytes``
    (whole messages, framing included). Availability is not redrawn: the run's
    sampling already happened. Server-side evaluation and aggregation take no
    simulated time.

    Only valid for runs **without** a round deadline or over-selection: there
    the aggregated set itself depended on the simulated arrivals, and other
    profiles would have kept other clients (and trained another model).

    Parameters
    ----------
    rows
        ``clients.csv`` rows (:data:`CLIENT_COLUMNS`; values may be strings).
    profiles
        Profile of each partition id (already scaled, see :meth:`ClientProfile.scaled`).
    compute
        ``"flops"``: :func:`compute_seconds` from ``num_examples``,
        ``local_epochs``, ``flops_per_example`` and ``reference_flops``
        (deterministic). ``"measured"``: the row's measured ``train_s`` divided
        by the compute factor (the host is the reference device; not
        reproducible across machines).
    run_config
        The run's config (``summary.json`` ``config``), checked for a deadline
        or over-selection.

    Raises
    ------
    ReplayError
        Deadline or over-selection in ``run_config``, rows with status
        ``straggler`` / ``overselected``, a partition id without a profile,
        missing or malformed columns, or a bad ``compute`` mode.
    """
    _check_replayable(run_config)
    if compute not in ("flops", "measured"):
        raise ReplayError(f"compute must be 'flops' or 'measured', got {compute!r}")
    if compute == "flops" and (flops_per_example is None or reference_flops is None):
        raise ReplayError("compute='flops' needs flops_per_example and reference_flops")
    by_round: dict[int, list[ClientTiming]] = {}
    missing: dict[int, int] = {}
    for i, row in enumerate(rows, start=1):
        where = f"clients row {i}"
        rnd = _int(row, "round", where)
        pid = _int(row, "partition_id", where)
        status = str(row.get("status", "")).strip()
        if not status:
            raise ReplayError(f"{where}: empty status")
        if status in (STATUS_STRAGGLER, STATUS_OVERSELECTED):
            raise ReplayError(f"{where} (round {rnd}, partition {pid}) has status {status!r}: the run used a "
                              "deadline or over-selection and cannot be replayed")
        by_round.setdefault(rnd, [])
        missing.setdefault(rnd, 0)
        up, down = _int(row, "uplink_bytes", where), _int(row, "downlink_bytes", where)
        if status == STATUS_UNAVAILABLE or (status != STATUS_OK and up == 0):
            log.debug("replay: round %d partition %d (%s) sent no reply; it does not hold the round", rnd, pid,
                      status)
            missing[rnd] += 1
            continue
        if not 0 <= pid < len(profiles):
            raise ReplayError(f"{where}: partition {pid} has no profile (profiles for 0..{len(profiles) - 1})")
        prof = profiles[pid]
        if compute == "flops":
            comp = compute_seconds(_int(row, "num_examples", where), _int(row, "local_epochs", where),
                                   flops_per_example, prof, reference_flops)  # type: ignore[arg-type]
        else:
            try:
                comp = float(row["train_s"]) / prof.compute_factor
            except (KeyError, TypeError, ValueError):
                raise ReplayError(f"{where}: train_s = {row.get('train_s')!r} is not a number") from None
            if not (math.isfinite(comp) and comp >= 0):
                raise ReplayError(f"{where}: train_s = {row['train_s']!r} must be a finite number >= 0")
        if any(t.pid == pid for t in by_round[rnd]):
            raise ReplayError(f"{where}: partition {pid} appears twice in round {rnd}")
        by_round[rnd].append(client_timing(pid, prof, down, up, comp))
    out, cum = [], 0.0
    for rnd in sorted(by_round):
        closed = close_round(by_round[rnd])
        cum += closed.round_s
        out.append(ReplayRound(rnd, closed.round_s, cum, len(by_round[rnd]), missing[rnd]))
    return out
