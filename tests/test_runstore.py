"""The SQLite run history on its own: pins and eviction, owners kept apart, rename/delete, expiry, restart."""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import replace

from clipviz.config import TUTORIAL, ClipSpec
from clipviz.records import EpochRecord, RunResult
from clipviz.runstore import RunStore


def _result(label: str = "value:5", epochs: int = 2) -> RunResult:
    spec = replace(TUTORIAL, clip=ClipSpec.parse(label))
    recs = [
        EpochRecord(0, label, e, 1.0 / e, 2.0 / e, [1.0], [1.0], {"w": 1.0}, 0.5, 0.1) for e in range(1, epochs + 1)
    ]
    return RunResult(spec, recs)


def test_pins_and_evicts_oldest_unpinned(tmp_path):
    store = RunStore(tmp_path / "h.db", "a" * 32, cap=3)
    ids, evicted = store.add([_result("value:1"), _result("value:2")], status="done")
    assert ids == [1, 2] and not evicted
    store.pin(1)
    _, evicted = store.add([_result("norm:1"), _result("norm:2")], status="stopped")
    assert [s.id for s in evicted] == [2]  # the oldest unpinned, not the pinned #1
    assert store.ids() == [1, 3, 4] and store.latest_job_ids() == [3, 4]
    assert [s.job_id for s in store.get()] == [1, 2, 2]
    store.set_pinned({1, 3, 4})
    ids, evicted = store.add([_result("agc:0.01")], status="done")
    assert [s.id for s in evicted] == [5] and ids == []  # all pinned: the new unpinned run goes
    assert store.remove_unpinned() == 0 and len(store) == 3
    store.set_pinned(set())
    assert store.remove_unpinned() == 3 and len(store) == 0
    assert store.add([RunResult(TUTORIAL, [])], "stopped") == ([], [])  # nothing trained: nothing stored


def test_owners_never_see_or_delete_each_others_runs(tmp_path):
    a = RunStore(tmp_path / "h.db", "a" * 32)
    b = RunStore(tmp_path / "h.db", "b" * 32)
    (ia,), _ = a.add([_result("value:1")], "done")
    (ib,), _ = b.add([_result("norm:1")], "done")
    assert a.ids() == [ia] and b.ids() == [ib]
    assert [s.num for s in a.get()] == [1] and [s.num for s in b.get()] == [1]  # numbers count per browser
    assert b.get([ia]) == [] and b.delete({ia}) == 0
    b.pin(ia)
    b.rename(ia, name="mine now")
    b.set_pinned({ia})
    assert a.get()[0].pinned is False and a.get()[0].name == ""
    assert a.delete({ia}) == 1 and a.ids() == [] and b.ids() == [ib]


def test_a_restart_reads_back_names_notes_pins_and_records(tmp_path):
    path, owner = tmp_path / "h.db", "c" * 32
    first = RunStore(path, owner)
    (rid,), _ = first.add([_result("value:5", epochs=3)], "done", preset="tutorial")
    first.rename(rid, name="my run", note="clips at ±5")
    first.pin(rid)
    again = RunStore(path, owner)  # a new process would open the file the same way
    (s,) = again.get()
    assert (s.name, s.note, s.pinned, s.preset, s.status, s.label) == (
        "my run",
        "clips at ±5",
        True,
        "tutorial",
        "done",
        "my run",
    )
    assert [r.train_loss for r in s.result.records] == [1.0, 0.5, 1 / 3]


def test_expiry_spares_pinned_runs_but_not_forgotten_browsers(tmp_path):
    path = tmp_path / "h.db"
    old = RunStore(path, "d" * 32, ttl_days=1)
    (keep, drop), _ = old.add([_result("value:1"), _result("value:2")], "done")
    old.pin(keep)
    gone = RunStore(path, "e" * 32, ttl_days=1)
    gone.set_pinned(set(gone.add([_result("norm:1")], "done")[0]))  # pinned, but its browser never came back
    with sqlite3.connect(path) as db:  # age everything by two days
        db.execute("UPDATE runs SET created = created - 2 * 86400")
        db.execute("UPDATE owners SET last_seen = last_seen - 2 * 86400 WHERE owner = ?", ("e" * 32,))
    again = RunStore(path, "d" * 32, ttl_days=1)
    assert again.ids() == [keep]
    assert RunStore(path, "e" * 32, ttl_days=1).ids() == []
    assert time.time() - again.get()[0].created > 86400


def test_storing_the_same_job_twice_stores_it_once(tmp_path):
    store = RunStore(tmp_path / "h.db", "f" * 32)
    first, _ = store.add([_result("value:1"), _result("norm:1")], "done", job=4, job_key="4:17")
    again, _ = store.add([_result("value:1"), _result("norm:1")], "done", job=4, job_key="4:17")
    assert again == first and len(store) == 2 and [s.job_id for s in store.get()] == [4, 4]


def test_a_history_file_from_before_job_keys_is_upgraded_and_keeps_its_runs(tmp_path):
    # the runs table as the first release wrote it (no job_key column): opening it crashed the app's first line
    path, owner = tmp_path / "old.db", "e" * 32
    store = RunStore(path, owner)
    store.add([_result("value:1")], "done")
    with sqlite3.connect(path) as raw:
        raw.execute("DROP INDEX runs_job_key")
        raw.execute("ALTER TABLE runs DROP COLUMN job_key")
        assert "job_key" not in {r[1] for r in raw.execute("PRAGMA table_info(runs)")}
    reopened = RunStore(path, owner)
    assert [s.result.label for s in reopened.get()] == ["value:1"]
    first, _ = reopened.add([_result("norm:1")], "done", job_key="2:1")
    again, _ = reopened.add([_result("norm:1")], "done", job_key="2:1")
    assert again == first and len(reopened) == 2


def test_reads_do_not_queue_behind_a_writer(tmp_path):
    # every session's polls read the history several times a second: they must not wait for the write lock
    path, owner = tmp_path / "h.db", "d" * 32
    store = RunStore(path, owner)
    store.add([_result("value:1")], "done")
    writer = sqlite3.connect(path, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")  # holds the write lock, as another session's store.add does
        writer.execute("UPDATE runs SET note = 'not committed'")
        seen: list = []
        reader = threading.Thread(target=lambda: seen.append((store.ids(), store.get(), len(store))))
        reader.start()
        reader.join(5.0)  # a deadline on the read finishing (a read taking the write lock waits 15 s, then fails)
        assert seen, "a read waited for the writer's lock"
        ids, runs, n = seen[0]
        assert n == 1 and [r.id for r in runs] == ids and runs[0].note == ""  # the last committed snapshot
    finally:
        writer.execute("ROLLBACK")
        writer.close()
