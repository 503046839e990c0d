"""Runs: one row per training run (a tuning trial is a run too), its status, progress and
metrics. A run that is recorded as running on this host but whose process is gone is reported,
and stored, as interrupted."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, get_args

from sqlalchemy import CheckConstraint, String, Text, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from tunery.errors import RunError
from tunery.store.base import Base, did_you_mean, listing, now, to_dict
from tunery.store.db import Database

__all__ = ["FINAL_STATUSES", "RUN_STATUSES", "RunRecord", "RunRow", "RunStatus", "RunStore"]

log = logging.getLogger(__name__)

RunStatus = Literal["running", "completed", "failed", "interrupted", "pruned"]
RUN_STATUSES: tuple[str, ...] = get_args(RunStatus)
FINAL_STATUSES: tuple[str, ...] = ("completed", "failed", "interrupted", "pruned")  # pruned: a search stopped it


class RunRow(Base):
    __tablename__ = "runs"
    __table_args__ = (
        CheckConstraint(
            "status IN (" + ", ".join(f"'{s}'" for s in RUN_STATUSES) + ")", name="status"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    path: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), index=True)
    config: Mapped[dict[str, Any]]
    metrics: Mapped[dict[str, Any]]
    progress: Mapped[dict[str, Any]]
    error: Mapped[str | None] = mapped_column(Text)
    task: Mapped[str | None] = mapped_column(String(64))
    backbone: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]  # last write of any kind: a heartbeat for cross-host checks later
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int | None]
    attempts: Mapped[int] = mapped_column(default=1)
    study: Mapped[str | None] = mapped_column(String(255), index=True)  # the tuning study it is a trial of
    trial: Mapped[int | None]  # its trial number in that study



@dataclass(frozen=True)
class RunRecord:
    name: str
    path: str
    status: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    error: str | None
    task: str | None
    backbone: str | None
    started_at: datetime
    finished_at: datetime | None
    host: str
    pid: int | None
    attempts: int
    progress: dict[str, Any] = field(default_factory=dict)
    study: str | None = None
    trial: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: timestamps as ISO-8601 UTC strings."""
        return to_dict(self)

    @classmethod
    def _from_row(cls, row: RunRow) -> RunRecord:
        return cls(
            name=row.name,
            path=row.path,
            status=row.status,
            config=dict(row.config or {}),
            metrics=dict(row.metrics or {}),
            error=row.error,
            task=row.task,
            backbone=row.backbone,
            started_at=row.started_at,
            finished_at=row.finished_at,
            host=row.host,
            pid=row.pid,
            attempts=row.attempts,
            progress=dict(row.progress or {}),
            study=row.study,
            trial=row.trial,
        )


def _check_status(status: str) -> str:
    if status not in RUN_STATUSES:
        raise ValueError(
            f"status {status!r} is not one of {', '.join(RUN_STATUSES)}" + did_you_mean(status, list(RUN_STATUSES))
        )
    return status


def _pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine (a zombie counts as alive)."""
    if pid <= 0:
        return False
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows; assume alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True




class RunStore(Database):
    """The runs part of `tunery.store.Store`."""

    def start_run(
        self,
        *,
        name: str,
        path: str,
        config: dict[str, Any],
        task: str | None = None,
        backbone: str | None = None,
        pid: int | None = None,
        new: bool = False,
    ) -> RunRecord:
        """Record run ``name`` as running in this process (or ``pid``, e.g. a launched child).

        A name that exists and is not running is resumed: status back to running, the new pid and
        host, ``attempts`` + 1, ``started_at`` kept; path and config are replaced, task and backbone
        only when given. Raises RunError if the name is running in a live process, or, with
        ``new=True`` (a fresh run, never a resume), if the name is recorded at all.
        """
        if not name:
            raise RunError("run name is empty: give the run a name")
        pid = os.getpid() if pid is None else pid
        for _ in range(2):  # second pass: another process inserted the same name meanwhile
            try:
                with self._session(write=True) as s:
                    row = s.scalars(
                        select(RunRow).where(RunRow.name == name).with_for_update()
                    ).one_or_none()
                    stamp = now()
                    if row is None:
                        row = RunRow(
                            name=name, path=path, status="running", config=dict(config),
                            metrics={}, progress={}, error=None, task=task, backbone=backbone,
                            started_at=stamp, finished_at=None, updated_at=stamp,
                            host=self._host, pid=pid, attempts=1,
                        )  # fmt: skip
                        s.add(row)
                        s.flush()
                        return RunRecord._from_row(row)
                    if new:
                        raise RunError(
                            f"a run named {name!r} is already recorded ({row.status}, {row.path}, in "
                            f"{self._where}); choose another name (name: ... or --set name=...)"
                        )
                    if row.status == "running" and not self._is_stale(row):
                        raise RunError(
                            f"run {name!r} is already running (pid {row.pid} on host {row.host}, "
                            f"in {self._where}): wait for it, stop it, or choose another name; if that "
                            f"process is gone, record it with finish_run({name!r}, status='interrupted')"
                        )
                    row.status = "running"
                    row.path = path
                    row.config = dict(config)
                    row.task = task if task is not None else row.task
                    row.backbone = backbone if backbone is not None else row.backbone
                    row.host, row.pid = self._host, pid
                    row.finished_at, row.error = None, None
                    row.attempts += 1
                    row.updated_at = stamp
                    s.flush()
                    return RunRecord._from_row(row)
            except IntegrityError:
                continue
        raise RunError(f"could not record run {name!r} in {self._where}: it was being created concurrently")

    def finish_run(
        self,
        name: str,
        *,
        status: Literal["completed", "failed", "interrupted", "pruned"],
        metrics: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        """Mark a run finished. ``metrics`` replaces the stored metrics when given."""
        if status not in FINAL_STATUSES:
            raise ValueError(f"status {status!r} is not one of {', '.join(FINAL_STATUSES)}")
        with self._session(write=True) as s:
            row = self._run_row(s, name, lock=True)
            row.status = status
            row.finished_at = row.updated_at = now()
            row.error = error
            if metrics is not None:
                row.metrics = dict(metrics)

    def delete_run(self, name: str) -> None:
        """Forget run ``name`` (a fresh run that failed before it had anything to resume from)."""
        with self._session(write=True) as s:
            s.delete(self._run_row(s, name, lock=True))

    _UPDATABLE = ("path", "config", "metrics", "error", "task", "backbone", "progress", "study", "trial")
    _READ_ONLY = ("name", "started_at", "finished_at", "host", "pid", "attempts")

    def update_run(self, name: str, **fields: Any) -> None:
        """Update a run in place, typically its progress while it trains.

        ``path``, ``config``, ``metrics``, ``error``, ``task``, ``backbone``, ``study``, ``trial``
        replace those fields; ``status`` sets the status (a final one also sets ``finished_at``,
        "running" clears it); ``progress={...}`` and any other keyword (``step=120,
        best_metric=0.91``) are merged into ``progress``. Pid, host and start time change only
        through start_run.
        """
        blocked = sorted(set(fields) & set(self._READ_ONLY))
        if blocked:
            raise TypeError(
                f"update_run cannot set {', '.join(blocked)}: use start_run / finish_run for those"
            )
        status = fields.pop("status", None)
        if status is not None:
            _check_status(status)
        with self._session(write=True) as s:
            row = self._run_row(s, name, lock=True)
            if status is not None:
                row.status = status
                if status == "running":
                    row.finished_at = None
                elif row.finished_at is None:
                    row.finished_at = now()
            progress = dict(row.progress or {})
            progress.update(fields.pop("progress", None) or {})
            for key in self._UPDATABLE:
                if key in fields:
                    value = fields.pop(key)
                    setattr(row, key, dict(value) if isinstance(value, dict) else value)
            progress.update(fields)  # whatever is left is progress
            row.progress = progress
            row.updated_at = now()

    def get_run(self, name: str) -> RunRecord:
        """The run called ``name``; a dead 'running' run on this host comes back 'interrupted'."""
        with self._session() as s:
            row = self._run_row(s, name)
            stale = self._is_stale(row)
            record = RunRecord._from_row(row)
        if stale:
            self._mark_interrupted([(record.name, record.pid)])
            record = self.get_run(name)
        return record

    def list_runs(
        self, *, status: str | None = None, study: str | None = None, limit: int = 50
    ) -> list[RunRecord]:
        """Runs, newest first; only those with this ``status``, or of this tuning ``study``, when
        given. Dead 'running' runs on this host are reported (and stored) as 'interrupted' first,
        which is what a SIGKILLed run looks like."""
        if status is not None:
            _check_status(status)
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self._reap_stale()
        query = select(RunRow).order_by(RunRow.started_at.desc(), RunRow.id.desc()).limit(limit)
        if status is not None:
            query = query.where(RunRow.status == status)
        if study is not None:
            query = query.where(RunRow.study == study)
        with self._session() as s:
            return [RunRecord._from_row(row) for row in s.scalars(query)]

    def _run_row(self, s: Session, name: str, *, lock: bool = False) -> RunRow:
        query = select(RunRow).where(RunRow.name == name)
        row = s.scalars(query.with_for_update() if lock else query).one_or_none()
        if row is not None:
            return row
        known = list(s.scalars(select(RunRow.name).order_by(RunRow.started_at.desc())))
        if not known:
            raise RunError(f"run {name!r} not found: no runs are recorded in {self._where} yet")
        hint = did_you_mean(name, known) or f"; recent runs: {listing(known)}"
        raise RunError(f"run {name!r} not found in {self._where}{hint}")

    def _is_stale(self, row: RunRow) -> bool:
        """Recorded as running here, but its process is gone. Other hosts cannot be checked."""
        return (
            row.status == "running"
            and row.host == self._host
            and row.pid is not None
            and not _pid_alive(row.pid)
        )

    def _reap_stale(self) -> None:
        with self._session() as s:
            rows = s.scalars(
                select(RunRow).where(RunRow.status == "running", RunRow.host == self._host)
            ).all()
            dead = [(row.name, row.pid) for row in rows if self._is_stale(row)]
        if dead:
            self._mark_interrupted(dead)

    def _mark_interrupted(self, dead: list[tuple[str, int | None]]) -> None:
        log.info("marking runs whose process is gone as interrupted: %s", [n for n, _ in dead])
        stamp = now()
        with self._session(write=True) as s:
            for name, pid in dead:
                # Conditional on the same pid: a resume that raced us keeps its new process.
                s.execute(
                    update(RunRow)
                    .where(RunRow.name == name, RunRow.status == "running", RunRow.pid == pid)
                    .values(
                        status="interrupted",
                        finished_at=stamp,
                        updated_at=stamp,
                        error=f"process {pid} on host {self._host} ended without finishing the run "
                        "(killed or crashed)",
                    )
                )

