"""The build registry: one row per build, local or cloud, in artifacts/registry.sqlite3.

state saves every record to its build.json (the portable copy) and then here, so `history`,
`show` and `diff` read one table instead of walking the artifact tree. The registry is only an
index: `rebuild` makes it again from the build.json files, and a registry that cannot be
written never fails a build (a warning, once).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from pydantic import ValidationError

from imageforge import log
from imageforge.config.configerrors import suggest
from imageforge.errors import ConfigError, ImageforgeError
from imageforge.records.record import RECORD, BuildRecord, artifacts_root, load

FILENAME = "registry.sqlite3"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_SECONDS = 15
# The record's scalar fields, one column each; the whole record is the `record` JSON column.
COLUMNS = (
    "id",
    "flavor",
    "cloud",
    "status",
    "git_commit",
    "template_hash",
    "content_hash",
    "packer_version",
    "qemu_version",
    "accelerator",
    "started_at",
    "finished_at",
    "error",
)
# Migration n takes a registry from user_version n to n + 1; append, never edit.
MIGRATIONS = (
    """
    CREATE TABLE IF NOT EXISTS builds (
        id TEXT PRIMARY KEY,
        flavor TEXT NOT NULL,
        cloud TEXT NOT NULL,
        status TEXT NOT NULL,
        git_commit TEXT NOT NULL,
        template_hash TEXT NOT NULL,
        content_hash TEXT NOT NULL,
        packer_version TEXT NOT NULL,
        qemu_version TEXT NOT NULL,
        accelerator TEXT NOT NULL,
        started_at TEXT NOT NULL,
        finished_at TEXT NOT NULL,
        error TEXT NOT NULL,
        directory TEXT NOT NULL,   -- relative to the registry's directory (artifacts/)
        record TEXT NOT NULL       -- the whole build.json
    );
    CREATE INDEX IF NOT EXISTS builds_by_cell ON builds (flavor, cloud, started_at);
    """,
)
_warned: set[Path] = set()


def path(project_root: Path) -> Path:
    return artifacts_root(project_root) / FILENAME


@contextlib.contextmanager
def connect(db: Path) -> Iterator[sqlite3.Connection]:
    """A connection to an up-to-date registry (created or migrated first), closed on exit.

    WAL lets readers and a writer work at once; writers wait for each other (busy timeout).
    """
    db.parent.mkdir(parents=True, exist_ok=True)
    try:
        connection = sqlite3.connect(db, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
        try:
            connection.execute("PRAGMA journal_mode = WAL")
            _migrate(connection, db)
            yield connection
        finally:
            connection.close()
    except sqlite3.Error as exc:
        raise ImageforgeError(
            f"{db}: {exc}", hint="delete the file: it is rebuilt from the build.json files"
        ) from None


def _migrate(connection: sqlite3.Connection, db: Path) -> None:
    """Bring the schema to SCHEMA_VERSION in one transaction (two processes: one does it)."""
    if _version(connection) == SCHEMA_VERSION:
        return
    connection.execute("BEGIN IMMEDIATE")
    try:
        version = _version(connection)  # again, now that this process holds the write lock
        if version > SCHEMA_VERSION:
            raise ImageforgeError(
                f"{db}: registry schema {version} is newer than this imageforge's "
                f"({SCHEMA_VERSION})",
                hint="upgrade imageforge, or delete the file: it is rebuilt from build.json",
            )
        for script in MIGRATIONS[version:]:
            for statement in filter(str.strip, script.split(";")):
                connection.execute(statement)
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise


def _version(connection: sqlite3.Connection) -> int:
    return int(connection.execute("PRAGMA user_version").fetchone()[0])


def _upsert(connection: sqlite3.Connection, db: Path, record: BuildRecord) -> None:
    names = (*COLUMNS, "directory", "record")
    values = [getattr(record, name) for name in COLUMNS]
    directory = record.directory.absolute()
    with contextlib.suppress(ValueError):  # outside the artifact tree: kept absolute
        directory = directory.relative_to(db.parent.absolute())
    values += [str(directory), record.model_dump_json()]
    updates = ", ".join(f"{n} = excluded.{n}" for n in names[1:])
    connection.execute(
        f"INSERT INTO builds ({', '.join(names)}) VALUES ({', '.join('?' * len(names))}) "
        f"ON CONFLICT (id) DO UPDATE SET {updates}",
        values,
    )


def saved(record: BuildRecord) -> None:
    """state._save's hook: index the record just written; warn once if that cannot be done.

    The registry lives in the artifact root (the parent of the record's flavor directory). A
    registry that does not exist yet is made from every build.json there, this one included.
    """
    artifacts = record.directory.absolute().parent.parent
    db = artifacts / FILENAME
    try:
        if not db.exists():
            _index(artifacts, db)
            return
        with connect(db) as connection:
            _upsert(connection, db, record)
    except (OSError, ImageforgeError) as exc:
        if db not in _warned:
            _warned.add(db)
            log.warn(f"{db}: the build registry was not updated ({exc}); build.json is kept")


def rebuild(project_root: Path) -> int:
    """Index every build.json of the project (invalid records are skipped with a warning);
    returns how many were indexed. Rows of builds whose directory is gone are kept."""
    artifacts = artifacts_root(project_root)
    return _index(artifacts, artifacts / FILENAME)


def _index(artifacts: Path, db: Path) -> int:
    records = []
    for found in sorted(artifacts.glob(f"*/*/{RECORD}")):
        try:
            records.append(load(found.parent))
        except ImageforgeError as exc:
            log.warn(f"skipped: {exc}")
    with connect(db) as connection:
        connection.execute("BEGIN IMMEDIATE")
        for record in records:
            _upsert(connection, db, record)
        connection.execute("COMMIT")
    return len(records)


def ensure(project_root: Path) -> Path:
    """The registry's path, rebuilt from the build.json files first if it is missing."""
    db = path(project_root)
    if not db.exists():
        count = rebuild(project_root)
        log.info(f"indexed {count} build record(s) into {db}")
    return db


def builds(
    project_root: Path,
    *,
    flavor: str | None = None,
    cloud: str | None = None,
    limit: int | None = None,
) -> list[BuildRecord]:
    """Records from the registry, newest first, optionally of one flavor and/or cloud."""
    where: list[str] = []
    args: list[object] = []
    for column, value in (("flavor", flavor), ("cloud", cloud)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    query = "SELECT id, directory, record FROM builds"
    query += f" WHERE {' AND '.join(where)}" if where else ""
    query += " ORDER BY started_at DESC, id DESC"
    if limit is not None:
        query += " LIMIT ?"
        args.append(limit)
    return _rows(project_root, query, args)


def get(project_root: Path, build_id: str) -> BuildRecord | None:
    """One build by id, or None."""
    found = _rows(project_root, "SELECT id, directory, record FROM builds WHERE id = ?", [build_id])
    return found[0] if found else None


def find(project_root: Path, build_id: str) -> BuildRecord:
    """A build by id, whatever its flavor and cloud, as its directory holds it now; an unknown
    id is one line with the nearest ones. The one way to find a build by id."""
    indexed = get(project_root, build_id)
    if indexed is not None and (indexed.directory / RECORD).is_file():
        return load(indexed.directory)
    known = values(project_root, "id")
    raise ConfigError(
        f"no build {build_id!r} in {artifacts_root(project_root)} (recent: "
        f"{', '.join(known[-5:]) or 'none'}; see `invoke history`){suggest(build_id, known)}"
    )


def values(project_root: Path, column: str) -> list[str]:
    """The distinct values of a column (ids, flavors, clouds), for suggestions."""
    if column not in COLUMNS:
        raise ValueError(f"not a registry column: {column}")
    db = ensure(project_root)
    with connect(db) as connection:
        rows = connection.execute(f"SELECT DISTINCT {column} FROM builds ORDER BY {column}")
        return [row[0] for row in rows]


def _rows(project_root: Path, query: str, args: list[object]) -> list[BuildRecord]:
    db = ensure(project_root)
    found = []
    with connect(db) as connection:
        for build_id, directory, text in connection.execute(query, args):
            try:
                record = BuildRecord.model_validate_json(text, strict=True)
            except ValidationError:
                log.warn(f"{db}: the row of build {build_id} does not validate; skipped")
                continue
            record._directory = db.parent / directory  # an absolute directory stays as it is
            found.append(record)
    return found
