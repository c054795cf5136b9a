"""The embedded sqlite MLflow store, created so that it is either absent or complete.

MLflow builds a new store's schema by running its migrations in place (about 5 s); a process
killed meanwhile leaves a half-built database that every later run fails on (``duplicate column
name``, ``table _alembic_tmp_… already exists``). Here the schema is built once per MLflow version
into a template under the cache directory (in a temporary file, then renamed), and a new store is
a copy of it, written beside the store's path and renamed into place. A database at that path
whose schema is not the template's and that holds no runs (a half-built store from an older
release) is rebuilt; one that holds runs is never touched: the error says to upgrade it.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import sqlite3
import tempfile
from pathlib import Path

TEMPLATE = "mlflow-{version}-schema.db"


class StoreError(RuntimeError):
    """The sqlite store cannot be used as it is; the message says what to do."""


def schema_version(db: Path) -> str | None:
    """The store's alembic revision; None for a database without a complete schema."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            tables = {
                r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            if "alembic_version" not in tables or any(t.startswith("_alembic_tmp") for t in tables):
                return None
            row = con.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.DatabaseError:
        return None
    return row[0] if row else None


def holds_runs(db: Path) -> bool:
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            return bool(con.execute("SELECT 1 FROM runs LIMIT 1").fetchone())
    except sqlite3.DatabaseError:
        return False


def schema_template(cache: Path) -> Path:
    """An empty store of this MLflow version's schema (built once, in about 5 s)."""
    import mlflow

    template = cache / TEMPLATE.format(version=mlflow.__version__)
    if schema_version(template):
        return template
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{template.name}.", dir=cache))
    try:
        built = work / "store.db"
        mlflow.MlflowClient(tracking_uri=f"sqlite:///{built}").search_experiments(max_results=1)
        built.replace(template)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return template


def ensure_sqlite_store(uri: str, cache: Path) -> None:
    """Make the sqlite store at ``uri`` exist with a complete schema (a no-op for other URIs),
    under a file lock: parallel first runs of a sweep race otherwise."""
    if not uri.startswith("sqlite:///"):
        return
    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.parent / f".{db.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        template = schema_template(cache)
        wanted = schema_version(template)
        if db.exists():
            found = schema_version(db)
            if found == wanted:
                return
            if holds_runs(db):
                raise StoreError(
                    f"MLflow store {db} holds runs but its schema is {found or 'incomplete'}, not "
                    f"{wanted}: upgrade it with `mlflow db upgrade sqlite:///{db}`"
                )
        fd, tmp = tempfile.mkstemp(prefix=f".{db.name}.", dir=db.parent)
        try:
            with open(fd, "wb") as out, open(template, "rb") as source:
                shutil.copyfileobj(source, out)
            Path(tmp).replace(db)  # a half-built or empty store is replaced whole
        finally:
            Path(tmp).unlink(missing_ok=True)
