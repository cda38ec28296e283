"""Keep-fraction schedules over federated rounds (iterative pruning).

``constant`` keeps the target fraction from round 1.  ``warmup`` follows Deep
Gradient Compression (Lin et al., 2018): the kept fraction decays
exponentially from ``warmup_start`` in round 1 to the target in round
``warmup_rounds`` and stays there (geometric interpolation, so the target is
hit exactly).  With start 0.25, target 0.001 and 5 rounds this gives
25 % -> 6.3 % -> 1.6 % -> 0.40 % -> 0.1 %, i.e. DGC's 25 % -> 6.25 % ->
1.5625 % -> 0.39 % -> 0.1 % up to the last step's rounding.
"""

from __future__ import annotations

__all__ = ["keep_fraction"]


def keep_fraction(target: float, round: int, schedule: str = "constant", *,
                  warmup_rounds: int = 5, warmup_start: float = 0.25) -> float:
    """Fraction of values to keep in ``round`` (1-based).

    Parameters
    ----------
    target : float
        Target keep fraction in (0, 1].
    round : int
        Federated round, starting at 1 (rounds <= 1 use the first value).
    schedule : {"constant", "warmup"}
    warmup_rounds : int
        Round at which the target is reached (``1`` means no warm-up).
    warmup_start : float
        Keep fraction in round 1; if it is not above ``target`` the schedule
        is constant, because warm-up must never prune harder than the target.

    Returns
    -------
    float
    """
    if schedule == "constant" or warmup_start <= target or warmup_rounds <= 1:
        return target
    if schedule != "warmup":
        raise ValueError(f"unknown schedule {schedule!r}")
    r = min(max(int(round), 1), warmup_rounds)
    t = (r - 1) / (warmup_rounds - 1)
    # Geometric interpolation; the last round returns target exactly.
    return target if r == warmup_rounds else warmup_start * (target / warmup_start) ** t
