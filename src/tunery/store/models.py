"""The model registry: named, numbered versions of runs (``sentiment@3``) and movable aliases
(``sentiment:prod``). Registering is safe under concurrency: the unique (name, version) pair
makes a loser of the race retry with the next number."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKeyConstraint, String, Text, UniqueConstraint, delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from tunery.errors import RunError
from tunery.store.base import Base, check_name, did_you_mean, listing, now, to_dict
from tunery.store.db import Database

__all__ = ["REF_FORMS", "ModelAliasRow", "ModelRegistry", "ModelVersion", "ModelVersionRow"]

REF_FORMS = "refs look like 'name' (latest version), 'name@3' or 'name:prod'"
_REGISTER_RETRIES = 20


class ModelVersionRow(Base):
    __tablename__ = "model_versions"
    # The unique pair is what makes concurrent registration safe: a loser of the race retries.
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[int]
    run_path: Mapped[str] = mapped_column(Text)
    run_name: Mapped[str | None] = mapped_column(String(255))
    metrics: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]


class ModelAliasRow(Base):
    __tablename__ = "model_aliases"
    __table_args__ = (
        UniqueConstraint("name", "alias"),
        ForeignKeyConstraint(
            ["name", "version"], ["model_versions.name", "model_versions.version"]
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    alias: Mapped[str] = mapped_column(String(128))
    version: Mapped[int]
    updated_at: Mapped[datetime]



@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    run_path: str
    run_name: str | None
    aliases: list[str]
    metrics: dict[str, Any]
    created_at: datetime

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: timestamps as ISO-8601 UTC strings, plus ``ref``."""
        return {**to_dict(self), "ref": self.ref}

    @classmethod
    def _from_row(cls, row: ModelVersionRow, aliases: list[str]) -> ModelVersion:
        return cls(
            name=row.name,
            version=row.version,
            run_path=row.run_path,
            run_name=row.run_name,
            aliases=sorted(aliases),
            metrics=dict(row.metrics or {}),
            created_at=row.created_at,
        )


class ModelRegistry(Database):
    """The model registry part of `tunery.store.Store`."""

    def register_model(
        self,
        name: str,
        *,
        run_path: str,
        run_name: str | None = None,
        alias: str | None = None,
        metrics: dict[str, Any] | None = None,
        refuse_duplicate: bool = False,
    ) -> ModelVersion:
        """Add the next version of model ``name`` (1 for a new name), optionally aliased.

        ``refuse_duplicate=True``: raise RunError when this run (same path, or same run name) is
        already a version of ``name``, instead of registering it again as a new version."""
        check_name(name, "model name")
        if alias is not None:
            check_name(alias, "alias")
        for attempt in range(_REGISTER_RETRIES):
            try:
                with self._session(write=True) as s:
                    if refuse_duplicate:
                        same = self._same_run(s, name, str(run_path), run_name)
                        if same:
                            refs = ", ".join(f"{name}@{v}" for v in same)
                            raise RunError(
                                f"run {run_name or run_path} is already registered as {refs}; use that "
                                f"version (tunery models alias {name} ALIAS {same[-1]}), or pass --again to "
                                "register it once more as a new version"
                            )
                    latest = s.scalar(
                        select(func.max(ModelVersionRow.version)).where(ModelVersionRow.name == name)
                    )
                    row = ModelVersionRow(
                        name=name, version=(latest or 0) + 1, run_path=str(run_path),
                        run_name=run_name, metrics=dict(metrics or {}), created_at=now(),
                    )  # fmt: skip
                    s.add(row)
                    s.flush()  # a concurrent writer with the same version fails here
                    if alias is not None:
                        self._put_alias(s, name, alias, row.version)
                    return ModelVersion._from_row(row, [alias] if alias else [])
            except IntegrityError:
                # Lost the race for this version number (not on SQLite: BEGIN IMMEDIATE serialises).
                time.sleep(random.uniform(0, 0.005 * (attempt + 1)))
        raise RunError(
            f"could not register a new version of model {name!r} in {self._where} after "
            f"{_REGISTER_RETRIES} attempts: too many concurrent registrations, try again"
        )

    @staticmethod
    def _same_run(s: Session, name: str, run_path: str, run_name: str | None) -> list[int]:
        """Versions of ``name`` that hold this run (same path, or same run name)."""
        same = ModelVersionRow.run_path == run_path
        if run_name:
            same = same | (ModelVersionRow.run_name == run_name)
        return list(
            s.scalars(
                select(ModelVersionRow.version)
                .where(ModelVersionRow.name == name, same)
                .order_by(ModelVersionRow.version)
            )
        )

    def versions_of_run(self, run_path: str, run_name: str | None = None) -> list[ModelVersion]:
        """Every registered version (of any model) that holds this run."""
        same = ModelVersionRow.run_path == str(run_path)
        if run_name:
            same = same | (ModelVersionRow.run_name == run_name)
        query = select(ModelVersionRow).where(same).order_by(ModelVersionRow.name, ModelVersionRow.version)
        with self._session() as s:
            rows = s.scalars(query).all()
            aliases = self._aliases(s, sorted({r.name for r in rows}))
            return [ModelVersion._from_row(r, aliases.get(r.name, {}).get(r.version, [])) for r in rows]

    def delete_model(self, ref: str) -> list[ModelVersion]:
        """Remove ``name@N`` (that version) or ``name`` (every version), with the aliases that
        point at what is removed; returns the removed versions. The run directories stay."""
        if ":" in ref:
            name, _, alias = ref.partition(":")
            raise RunError(
                f"{ref!r} is an alias: delete the version it points to ({name}@N, see tunery models list "
                f"{name}), or move the alias with tunery models alias {name} {alias} VERSION"
            )
        name, _, text = ref.partition("@")
        with self._session(write=True) as s:
            versions = self._versions(s, name)
            if text:
                if not text.isdigit() or int(text) not in versions:
                    raise RunError(
                        f"model {name!r} has no version {text} in {self._where}; versions: "
                        f"{listing([str(v) for v in versions])}"
                    )
                versions = [int(text)]
            aliases = self._aliases(s, [name]).get(name, {})
            rows = s.scalars(
                select(ModelVersionRow).where(
                    ModelVersionRow.name == name, ModelVersionRow.version.in_(versions)
                )
            ).all()
            removed = [ModelVersion._from_row(r, aliases.get(r.version, [])) for r in rows]
            s.execute(
                delete(ModelAliasRow).where(
                    ModelAliasRow.name == name, ModelAliasRow.version.in_(versions)
                )
            )
            s.flush()  # the aliases reference the versions
            s.execute(
                delete(ModelVersionRow).where(
                    ModelVersionRow.name == name, ModelVersionRow.version.in_(versions)
                )
            )
        return sorted(removed, key=lambda v: v.version)

    def relocate_model(
        self, ref: str, run_path: str, *, run_name: str | None = None
    ) -> ModelVersion:
        """Point the version ``ref`` resolves to at ``run_path`` (its run was moved there); the
        aliases and metrics stay. Checking the directory is the caller's part."""
        version = self.resolve_model(ref)
        with self._session(write=True) as s:
            row = s.scalars(
                select(ModelVersionRow)
                .where(
                    ModelVersionRow.name == version.name, ModelVersionRow.version == version.version
                )
                .with_for_update()
            ).one_or_none()
            if row is None:
                raise RunError(f"{version.ref} was deleted meanwhile; register the run again")
            row.run_path = str(run_path)
            if run_name is not None:
                row.run_name = run_name
            return ModelVersion._from_row(row, version.aliases)

    def set_alias(self, name: str, alias: str, version: int) -> None:
        """Point ``name:alias`` at ``version``, moving the alias if it pointed elsewhere."""
        check_name(alias, "alias")
        for _ in range(2):  # second pass: the same alias was created concurrently
            try:
                with self._session(write=True) as s:
                    versions = self._versions(s, name)
                    if version not in versions:
                        raise RunError(
                            f"model {name!r} has no version {version!r} in {self._where}; versions: "
                            f"{listing([str(v) for v in versions])}"
                        )
                    self._put_alias(s, name, alias, version)
                    return
            except IntegrityError:
                continue
        raise RunError(f"could not set alias {name}:{alias}: it was being changed concurrently")

    def resolve_model(self, ref: str) -> ModelVersion:
        """``name`` (latest version), ``name@2`` (that version) or ``name:prod`` (an alias)."""
        with self._session() as s:
            if "@" in ref:
                name, _, text = ref.partition("@")
                self._versions(s, name)
                if not text.isdigit() or int(text) < 1:
                    raise RunError(
                        f"version {text!r} in {ref!r} is not a positive integer; {REF_FORMS}"
                    )
                row = s.scalars(
                    select(ModelVersionRow).where(
                        ModelVersionRow.name == name, ModelVersionRow.version == int(text)
                    )
                ).one_or_none()
                if row is None:
                    versions = [str(v) for v in self._versions(s, name)]
                    raise RunError(
                        f"model {name!r} has no version {text} in {self._where}; versions: "
                        f"{listing(versions)} (use {name}@{versions[-1]} or {name} for the latest)"
                    )
            elif ":" in ref:
                name, _, alias = ref.partition(":")
                self._versions(s, name)
                version = s.scalar(
                    select(ModelAliasRow.version).where(
                        ModelAliasRow.name == name, ModelAliasRow.alias == alias
                    )
                )
                if version is None:
                    aliases = self._aliases(s, [name])
                    known = sorted(
                        f"{a} -> {v}" for v, names in aliases.get(name, {}).items() for a in names
                    )
                    have = (
                        f"aliases: {listing(known)}"
                        + did_you_mean(alias, [k.split(" -> ")[0] for k in known])
                        if known
                        else "it has no aliases yet (set one with Store.set_alias)"
                    )
                    raise RunError(f"model {name!r} has no alias {alias!r} in {self._where}; {have}")
                row = s.scalars(
                    select(ModelVersionRow).where(
                        ModelVersionRow.name == name, ModelVersionRow.version == version
                    )
                ).one()
            else:
                name = ref
                self._versions(s, name)
                row = s.scalars(
                    select(ModelVersionRow)
                    .where(ModelVersionRow.name == name)
                    .order_by(ModelVersionRow.version.desc())
                    .limit(1)
                ).one()
            aliases = self._aliases(s, [row.name]).get(row.name, {}).get(row.version, [])
            return ModelVersion._from_row(row, aliases)

    def list_models(self, name: str | None = None) -> list[ModelVersion]:
        """Every model version (or those of ``name``), by name then version."""
        query = select(ModelVersionRow).order_by(ModelVersionRow.name, ModelVersionRow.version)
        if name is not None:
            query = query.where(ModelVersionRow.name == name)
        with self._session() as s:
            rows = s.scalars(query).all()
            aliases = self._aliases(s, sorted({r.name for r in rows}))
            return [
                ModelVersion._from_row(r, aliases.get(r.name, {}).get(r.version, [])) for r in rows
            ]

    def _versions(self, s: Session, name: str) -> list[int]:
        """The versions of ``name``, ascending; RunError naming what exists if there are none."""
        check_name(name, "model name")
        versions = list(
            s.scalars(
                select(ModelVersionRow.version)
                .where(ModelVersionRow.name == name)
                .order_by(ModelVersionRow.version)
            )
        )
        if versions:
            return versions
        known = list(s.scalars(select(ModelVersionRow.name).distinct().order_by(ModelVersionRow.name)))
        if not known:
            raise RunError(
                f"model {name!r} is not registered: no models are registered in {self._where} yet"
            )
        hint = did_you_mean(name, known) or f"; registered models: {listing(known)}"
        raise RunError(f"model {name!r} is not registered in {self._where}{hint}")

    @staticmethod
    def _aliases(s: Session, names: list[str]) -> dict[str, dict[int, list[str]]]:
        """name -> version -> aliases."""
        out: dict[str, dict[int, list[str]]] = {}
        if not names:
            return out
        rows = s.execute(
            select(ModelAliasRow.name, ModelAliasRow.version, ModelAliasRow.alias).where(
                ModelAliasRow.name.in_(names)
            )
        )
        for name, version, alias in rows:
            out.setdefault(name, {}).setdefault(version, []).append(alias)
        return out

    @staticmethod
    def _put_alias(s: Session, name: str, alias: str, version: int) -> None:
        row = s.scalars(
            select(ModelAliasRow)
            .where(ModelAliasRow.name == name, ModelAliasRow.alias == alias)
            .with_for_update()
        ).one_or_none()
        if row is None:
            s.add(ModelAliasRow(name=name, alias=alias, version=version, updated_at=now()))
        else:
            row.version, row.updated_at = version, now()
        s.flush()

