"""Hooks into the training loop: subclass `Callback` and override the hooks you need.

Library code logs (`LoggingCallback`); `tunery train` and `TextClassifier.fit` show `RichProgress`.
"""

from __future__ import annotations

import logging

log = logging.getLogger("tunery.train")


class Callback:
    """The hooks the loop calls, each doing nothing here. `state` is the loop's TrainState (step,
    total_steps, epoch, best_metric, best_step, samples_seen, ...); `record` holds a logging step's
    figures (step, epoch, loss, lr, samples_per_s) or an evaluation's (the validation metrics, best).

    A callback ends training early by setting `stop_reason` (e.g. "deadline", "pruned") in a hook: the
    loop stops after that step or evaluation, and the run keeps its best checkpoint as usual."""

    stop_reason: str | None = None

    def on_train_begin(self, state, n_train: int) -> None: ...
    def on_step(self, state) -> None: ...
    def on_log(self, state, record: dict) -> None: ...
    def on_evaluate(self, state, record: dict) -> None: ...
    def on_train_end(self, state) -> None: ...


class LoggingCallback(Callback):
    def on_log(self, state, record: dict) -> None:
        log.info("step %d/%d loss %.4f lr %.2e %.0f samples/s%s", record["step"], state.total_steps,
                 record["loss"], record["lr"], record["samples_per_s"],
                 f" epsilon {record['epsilon']:.2f}" if "epsilon" in record else "")

    def on_evaluate(self, state, record: dict) -> None:
        log.info("eval at step %d: %s", state.step,
                 {k: round(v, 4) for k, v in record.items() if isinstance(v, float)})


class RichProgress(Callback):
    """A progress bar with loss, throughput and ETA."""

    def __init__(self, console=None) -> None:
        self.console = console
        self.progress = None
        self.task_id = None

    def on_train_begin(self, state, n_train: int) -> None:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"), console=self.console, transient=False,
        )
        self.progress.start()
        self.task_id = self.progress.add_task("train", total=state.total_steps, completed=state.step, info="")

    def on_step(self, state) -> None:
        self.progress.update(self.task_id, completed=state.step)

    def on_log(self, state, record: dict) -> None:
        passes = f" | {record['passes_per_step']} passes/step" if record.get("passes_per_step") else ""
        eps = f" | epsilon {record['epsilon']:.2f}" if "epsilon" in record else ""  # train.dp: spent so far
        self.progress.update(self.task_id,
                             info=f"loss {record['loss']:.4f} | {record['samples_per_s']:.0f} samples/s{passes}{eps}")

    def on_evaluate(self, state, record: dict) -> None:
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in record.items()
                            if isinstance(v, float) and k not in ("eval_seconds",))
        self.progress.console.print(f"step {state.step}: validation {metrics}" + (" (best)" if record.get("best") else ""))

    def on_train_end(self, state) -> None:
        self.close()

    def close(self) -> None:
        """Stop the bar (and its refresh thread); training that stops on an error or Ctrl-C never
        reaches on_train_end, so whoever added the bar closes it. Safe to call twice."""
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class Deadline(Callback):
    """Ends training in time for the final evaluation to finish by `deadline` (seconds on `clock`,
    time.time by default: a wall-clock instant that other processes and machines share).

    The time kept for what follows training is `reserve_s` plus `eval_factor` times the longest
    validation pass seen so far (the final evaluation scores validation and test, then writes the
    report). Checked at every optimizer step; the loop then stops at its best checkpoint."""

    def __init__(self, deadline: float, *, reserve_s: float = 0.0, eval_factor: float = 3.0, clock=None) -> None:
        import time

        self.deadline = deadline
        self.reserve_s = reserve_s
        self.eval_factor = eval_factor
        self.clock = clock or time.time
        self.eval_seconds = 0.0
        self.stop_reason = None

    def reserve(self) -> float:
        """Seconds kept back from training for the final evaluation."""
        return self.reserve_s + self.eval_factor * self.eval_seconds

    def on_evaluate(self, state, record: dict) -> None:
        self.eval_seconds = max(self.eval_seconds, float(record.get("eval_seconds") or 0.0))

    def on_step(self, state) -> None:
        if self.stop_reason is None and self.clock() + self.reserve() >= self.deadline:
            log.info("deadline: stopping at step %d of %d to leave %.0f s for the final evaluation",
                     state.step, state.total_steps, self.reserve())
            self.stop_reason = "deadline"
