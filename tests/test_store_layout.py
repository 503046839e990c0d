"""The store's public transaction API, and the floors around it: the run directory module knows no
database, and nothing outside the store reaches into its private session."""

from __future__ import annotations

import ast
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import func, select

import tunery
from tunery.store import Store, TenantRow

SRC = Path(tunery.__file__).parent
AT = datetime(2026, 11, 17, tzinfo=timezone.utc)


def test_transaction_commits_and_read_sees_it(tmp_path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'tunery.db'}")
    with store.transaction() as s:
        s.add(TenantRow(name="acme", plan="free", created_at=AT))
    with store.read() as s:
        assert s.scalars(select(TenantRow.name)).all() == ["acme"]


def test_a_transaction_that_raises_leaves_nothing(tmp_path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'tunery.db'}")
    with pytest.raises(RuntimeError, match="midway"):
        with store.transaction() as s:
            s.add(TenantRow(name="acme", plan="free", created_at=AT))
            s.flush()
            raise RuntimeError("midway")
    with store.read() as s:
        assert s.scalar(select(func.count()).select_from(TenantRow)) == 0


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_the_run_directory_module_imports_nothing_of_the_store() -> None:
    assert not {m for m in _imports(SRC / "rundir.py") if m.startswith(("tunery.store", "tunery.refs", "sqlalchemy"))}
    code = "import sys, tunery.rundir; print(sorted(m for m in sys.modules if m.startswith(('tunery.store', 'sqlalchemy'))))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_nothing_outside_the_store_uses_its_private_session() -> None:
    users = sorted(str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
                   if "store" not in p.relative_to(SRC).parts[:1]
                   and any(isinstance(n, ast.Attribute) and n.attr in ("_session", "_engine", "_setup")
                           for n in ast.walk(ast.parse(p.read_text()))))
    assert users == []


def test_the_python_examples_in_docs_store_md_run() -> None:
    import re

    doc = (SRC.parents[1] / "docs" / "store.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", doc, re.S)
    namespace: dict = {}
    for block in blocks[:2]:  # the third drafts a revision into the source tree: not run here
        exec(block, namespace)  # noqa: S102
    assert namespace["names"] == ["acme"]
    assert namespace["store"].get_run("t3").status == "pruned"
