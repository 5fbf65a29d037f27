"""Run history that outlasts the page: one SQLite file (stdlib sqlite3), rows owned by one browser each.

`RunStore(path, owner)` sees and changes only `owner`'s rows: another browser's runs are invisible to it and
cannot be deleted through it. Run and job numbers count per owner (a fresh browser starts at #1, job 1).
At most `cap` runs per owner (the oldest unpinned go first); runs older than `ttl_days` are deleted unless
pinned, and an owner unseen for `ttl_days` loses everything. Records are stored as the documented results
JSON (clipviz.records.dumps) and parsed once per process (records never change once stored).
No streamlit here: the UI keeps one RunStore per session in st.session_state.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from .records import RunResult, dumps, loads

DB_NAME = "history.sqlite3"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- unique in the file
    owner TEXT NOT NULL,                   -- the browser that stored it
    num INTEGER NOT NULL,                  -- run number within the owner (#1, #2, ...)
    job INTEGER NOT NULL,                  -- job number within the owner: runs of one job compare fairly
    status TEXT NOT NULL,                  -- done, stopped, failed, replaced or imported
    pinned INTEGER NOT NULL DEFAULT 0,     -- pinned runs are never evicted nor expired
    name TEXT NOT NULL DEFAULT '',         -- the user's name for the run ('' = its label)
    note TEXT NOT NULL DEFAULT '',         -- the user's note
    preset TEXT NOT NULL DEFAULT '',       -- the preset the controls held when it trained ('' = custom)
    created REAL NOT NULL,                 -- unix time stored
    result TEXT NOT NULL,                  -- clipviz results JSON of this one run
    job_key TEXT                           -- the caller's id of the job: storing the same job twice is a no-op
);
CREATE TABLE IF NOT EXISTS owners (owner TEXT PRIMARY KEY, last_seen REAL NOT NULL);
"""
# columns added after a history file may have been written: (name, declaration). A file from before gets
# them by ALTER TABLE when opened (its runs kept; the new column is NULL there), then the indexes.
_ADDED_COLUMNS = (("job_key", "TEXT"),)
_INDEXES = """
CREATE INDEX IF NOT EXISTS runs_owner ON runs (owner, id);
CREATE INDEX IF NOT EXISTS runs_job_key ON runs (owner, job_key);
"""
_COLS = "id, num, job, status, pinned, name, note, preset, created"


def data_dir() -> Path:
    """CLIPVIZ_DATA_DIR, else ~/.local/share/clipviz (XDG_DATA_HOME when set)."""
    env = os.environ.get("CLIPVIZ_DATA_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "clipviz"


@dataclass
class StoredRun:
    """One stored run as the UI sees it."""

    id: int  # unique in the database file (the UI's handle)
    result: RunResult  # spec and records
    job_id: int  # job number within the owner
    status: str  # done, stopped, failed, replaced or imported
    pinned: bool = False  # never evicted nor expired
    num: int = 0  # run number within the owner: what the UI shows as #num
    name: str = ""  # the user's name for it ('' = the run's label)
    note: str = ""  # the user's note
    preset: str = ""  # preset the controls held when it trained
    created: float = 0.0  # unix time stored

    @property
    def label(self) -> str:
        return self.name or self.result.label


# parsed results, shared by every store of the process: (db path, id) -> RunResult; bounded
_PARSED: OrderedDict[tuple[str, int], RunResult] = OrderedDict()
_PARSED_MAX = 2000
_PARSED_LOCK = threading.Lock()


class RunStore:
    """One owner's runs in a SQLite file; every method is one short transaction (safe from any thread)."""

    def __init__(self, path: str | Path, owner: str, cap: int = 200, ttl_days: float = 30.0):
        self.path, self.owner, self.cap, self.ttl_days = str(path), owner, cap, ttl_days
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        raw = sqlite3.connect(self.path, timeout=15)
        try:
            raw.execute("PRAGMA journal_mode=WAL")  # readers never wait for a writer
            raw.executescript(_SCHEMA)
            _migrate(raw)
            raw.executescript(_INDEXES)
        finally:
            raw.close()
        with self._db() as db:
            self._expire(db)
            db.execute("INSERT OR REPLACE INTO owners VALUES (?, ?)", (owner, time.time()))

    def _db(self, write: bool = True) -> sqlite3.Connection:
        # a connection per operation: streamlit runs each rerun in its own thread. Reads take a deferred
        # transaction: in WAL mode it reads one snapshot without the write lock, so every session's polls
        # (several reads a second each) do not queue on it behind each other and behind the writers
        return _Tx(
            sqlite3.connect(self.path, timeout=15, isolation_level=None), "BEGIN IMMEDIATE" if write else "BEGIN"
        )

    def _expire(self, db) -> None:
        cutoff = time.time() - self.ttl_days * 86400
        db.execute("DELETE FROM runs WHERE created < ? AND pinned = 0", (cutoff,))
        gone = [r[0] for r in db.execute("SELECT owner FROM owners WHERE last_seen < ?", (cutoff,))]
        for owner in gone:
            db.execute("DELETE FROM runs WHERE owner = ?", (owner,))
            db.execute("DELETE FROM owners WHERE owner = ?", (owner,))

    # ---- writing ------------------------------------------------------------------------------------
    def add(
        self,
        results: list[RunResult],
        status: str,
        preset: str = "",
        job: int | None = None,
        job_key: str | None = None,
    ) -> tuple[list[int], list[StoredRun]]:
        """Store one job's runs (those with at least one epoch) as job number `job` (default: the next one);
        returns (their ids, evicted runs). A job_key already stored returns its runs' ids and stores nothing:
        a script run interrupted between storing a job and forgetting it must not store it twice."""
        results = [r for r in results if r.records]
        if not results:
            return [], []
        now, ids = time.time(), []
        with self._db() as db:
            if job_key is not None:
                done = [r[0] for r in db.execute(
                    "SELECT id FROM runs WHERE owner = ? AND job_key = ? ORDER BY id", (self.owner, job_key))]  # fmt: skip
                if done:
                    return done, []
            num, last = db.execute(
                "SELECT COALESCE(MAX(num), 0), COALESCE(MAX(job), 0) FROM runs WHERE owner = ?", (self.owner,)
            ).fetchone()
            job = last + 1 if job is None else job
            for i, res in enumerate(results, 1):
                cur = db.execute(
                    "INSERT INTO runs (owner, num, job, status, preset, created, result, job_key)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (self.owner, num + i, job, status, preset, now, dumps([res]), job_key),
                )
                ids.append(cur.lastrowid)
                _remember(self.path, cur.lastrowid, res)
            evicted = self._evict(db)
        return [i for i in ids if i not in {s.id for s in evicted}], evicted

    def _evict(self, db) -> list[StoredRun]:
        (n,) = db.execute("SELECT COUNT(*) FROM runs WHERE owner = ?", (self.owner,)).fetchone()
        if n <= self.cap:
            return []
        rows = db.execute(
            f"SELECT {_COLS}, result FROM runs WHERE owner = ? AND pinned = 0 ORDER BY id LIMIT ?",
            (self.owner, n - self.cap),
        ).fetchall()
        db.executemany("DELETE FROM runs WHERE id = ?", [(r[0],) for r in rows])
        return [self._run(r[:-1], r[-1]) for r in rows]

    def set_pinned(self, ids: set[int]) -> None:
        """Pin exactly these runs (of this owner)."""
        with self._db() as db:
            db.execute("UPDATE runs SET pinned = (id IN (SELECT value FROM json_each(?))) WHERE owner = ?",
                       (_json_ids(ids), self.owner))  # fmt: skip

    def pin(self, run_id: int, pinned: bool = True) -> None:
        with self._db() as db:
            db.execute("UPDATE runs SET pinned = ? WHERE id = ? AND owner = ?", (int(pinned), run_id, self.owner))

    def rename(self, run_id: int, name: str | None = None, note: str | None = None) -> None:
        """Set a run's name and/or note (None leaves it as it is)."""
        with self._db() as db:
            if name is not None:
                db.execute("UPDATE runs SET name = ? WHERE id = ? AND owner = ?", (name, run_id, self.owner))
            if note is not None:
                db.execute("UPDATE runs SET note = ? WHERE id = ? AND owner = ?", (note, run_id, self.owner))

    def delete(self, ids: set[int] | list[int]) -> int:
        """Delete these runs of this owner (another owner's ids are ignored); returns how many went."""
        with self._db() as db:
            cur = db.execute("DELETE FROM runs WHERE owner = ? AND id IN (SELECT value FROM json_each(?))",
                             (self.owner, _json_ids(ids)))  # fmt: skip
            return cur.rowcount

    def remove_unpinned(self) -> int:
        with self._db() as db:
            return db.execute("DELETE FROM runs WHERE owner = ? AND pinned = 0", (self.owner,)).rowcount

    # ---- reading ------------------------------------------------------------------------------------
    def ids(self) -> list[int]:
        """This owner's run ids, oldest first."""
        with self._db(write=False) as db:
            return [r[0] for r in db.execute("SELECT id FROM runs WHERE owner = ? ORDER BY id", (self.owner,))]

    def get(self, ids: list[int] | None = None) -> list[StoredRun]:
        """This owner's runs with these ids (all when None), oldest first."""
        with self._db(write=False) as db:
            rows = db.execute(f"SELECT {_COLS} FROM runs WHERE owner = ? ORDER BY id", (self.owner,)).fetchall()
            want = None if ids is None else set(ids)
            rows = [r for r in rows if want is None or r[0] in want]
            missing = [r[0] for r in rows if (self.path, r[0]) not in _PARSED]
            texts = dict(
                db.execute(
                    "SELECT id, result FROM runs WHERE owner = ? AND id IN (SELECT value FROM json_each(?))",
                    (self.owner, _json_ids(missing)),
                ).fetchall()
            )
        return [self._run(r, texts.get(r[0])) for r in rows]

    def next_job(self) -> int:
        """The number the owner's next job gets (one more than any stored)."""
        with self._db(write=False) as db:
            return db.execute("SELECT COALESCE(MAX(job), 0) + 1 FROM runs WHERE owner = ?", (self.owner,)).fetchone()[0]

    def latest_job_ids(self) -> list[int]:
        with self._db(write=False) as db:
            return [r[0] for r in db.execute(
                "SELECT id FROM runs WHERE owner = ? AND job = (SELECT MAX(job) FROM runs WHERE owner = ?) ORDER BY id",
                (self.owner, self.owner))]  # fmt: skip

    def __len__(self) -> int:
        with self._db(write=False) as db:
            return db.execute("SELECT COUNT(*) FROM runs WHERE owner = ?", (self.owner,)).fetchone()[0]

    def _run(self, row: tuple, text: str | None) -> StoredRun:
        rid, num, job, status, pinned, name, note, preset, created = row
        key = (self.path, rid)
        with _PARSED_LOCK:
            res = _PARSED.get(key)
        if res is None:
            res = loads(text)[0]
            _remember(self.path, rid, res)
        return StoredRun(rid, res, job, status, bool(pinned), num, name, note, preset, created)


def _migrate(raw: sqlite3.Connection) -> None:
    """Add the columns an older history file lacks, in one transaction (two servers may open it at once)."""
    raw.execute("BEGIN IMMEDIATE")
    try:
        have = {row[1] for row in raw.execute("PRAGMA table_info(runs)")}
        for name, decl in _ADDED_COLUMNS:
            if name not in have:
                raw.execute(f"ALTER TABLE runs ADD COLUMN {name} {decl}")
        raw.execute("COMMIT")
    except BaseException:
        raw.execute("ROLLBACK")
        raise


def _remember(path: str, rid: int, res: RunResult) -> None:
    with _PARSED_LOCK:
        _PARSED[(path, rid)] = res
        _PARSED.move_to_end((path, rid))
        while len(_PARSED) > _PARSED_MAX:
            _PARSED.popitem(last=False)


def _json_ids(ids) -> str:
    return "[" + ",".join(str(int(i)) for i in ids) + "]"


class _Tx:
    """`with store._db() as db`: one transaction (BEGIN IMMEDIATE, or BEGIN for reads ... COMMIT/ROLLBACK), then close."""

    def __init__(self, db: sqlite3.Connection, begin: str = "BEGIN IMMEDIATE"):
        self.db, self.begin = db, begin

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute(self.begin)
        return self.db

    def __exit__(self, exc_type, *_) -> None:
        try:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self.db.close()
