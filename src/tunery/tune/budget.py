"""Time rules of a study, as plain functions of the time now (a clock the caller gives), so they
are tested with a controllable clock, never with wall time.

- A study's deadline is an instant (seconds since the epoch) that every worker, on any machine,
  reads from the study.
- A trial trains until the deadline (less the study's wrap-up) minus the time its final evaluation,
  report and save need, as measured on earlier trials (train/callbacks.py `Deadline`, checked at every
  optimizer step); it then ends at its best checkpoint.
- No new trial starts when the time left cannot fit the shortest useful trial seen so far (up to
  its first evaluation, plus its final evaluation).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tunery.errors import ConfigError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")


def parse_duration(text: str | float | int) -> float:
    """Seconds in '30m', '1h30m', '90s', '2h' or a bare number of seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        raw = str(text).strip().lower()
        parts = _DURATION.findall(raw)
        if not raw or "".join(n + u for n, u in parts) != raw.replace(" ", ""):
            raise ConfigError(f"budget {text!r} is not a duration; write e.g. 30m, 1h30m, 90s or 2h")
        seconds = sum(float(n) * _UNITS[u or "s"] for n, u in parts)
    if seconds <= 0:
        raise ConfigError(f"budget {text!r} must be longer than 0 seconds, e.g. 30m")
    return seconds


@dataclass(frozen=True)
class StudyState:
    """What a worker needs to know to decide its next move (study.py `study_state` reads it)."""

    waiting: int  # trials queued (enqueued, or retries of failed ones)
    running: int  # trials in progress on any worker
    done: int  # trials finished: complete, pruned or failed for good
    cap: int | None  # --trials: the most trials the study finishes
    deadline: float | None  # --budget: when the study ends
    min_trial_s: float | None  # the shortest useful trial so far (None: none finished yet)


def next_move(s: StudyState, now: float) -> str:
    """'run' (start a trial), 'wait' (trials elsewhere may still fail and be retried) or 'done'."""
    if s.deadline is not None and now + (s.min_trial_s or 0.0) >= s.deadline:
        return "done"  # the time left cannot fit a trial
    if s.cap is None:
        return "run" if s.deadline is not None else "done"
    if s.waiting:
        return "run"
    return "wait" if s.running else "done"


# Seconds kept at the end of a study for its wrap-up (the best run kept, the others' weights dropped,
# study.html): trials end this much before the deadline.
WRAP_UP_S = 10.0
# Seconds kept at the end of a trial for its final evaluation, report and save, before any trial has
# measured it; then 1.25 times the longest measured.
FINISH_RESERVE_S = 20.0


def finish_reserve(measured: list[float]) -> float:
    """Seconds a trial keeps for what follows its training (besides its evaluation passes, which the
    Deadline callback adds as it measures them)."""
    return max(FINISH_RESERVE_S, 1.25 * max(measured)) if measured else FINISH_RESERVE_S


def time_left(deadline: float | None, now: float) -> float | None:
    return None if deadline is None else max(0.0, deadline - now)
