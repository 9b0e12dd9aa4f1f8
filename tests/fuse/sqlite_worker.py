"""The two processes of the sqlite soak (tests/fuse/test_sqlite_soak.py), stdlib only.

Run as ``python sqlite_worker.py writer DB N SEED`` or ``python sqlite_worker.py reader DB``.
They are separate processes on purpose: the failure being hunted involved two
processes sharing the database through POSIX locks and, in WAL mode, a
MAP_SHARED mapping of the -shm file.  Each prints one JSON line when done.

Every writer transaction keeps an invariant the reader checks in each snapshot:
``totals`` holds the row count and the sum of ``t.v``.
"""

from __future__ import annotations

import json
import os
import random
import select
import sqlite3
import sys
import time

SCHEMA = (
    "CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER NOT NULL, payload BLOB NOT NULL)",
    "CREATE TABLE totals (k INTEGER PRIMARY KEY, n INTEGER NOT NULL, s INTEGER NOT NULL)",
    "INSERT INTO totals VALUES (0, 0, 0)",
)
_PAUSE_S = 0.05  # the reader queries every 50 ms
_QUICK_CHECK_EVERY = 10


def is_busy(exc: sqlite3.Error) -> bool:
    """SQLITE_BUSY and its extended codes (BUSY_RECOVERY, BUSY_SNAPSHOT, ...)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return bool(code & 0xFF == sqlite3.SQLITE_BUSY)
    return "database is locked" in str(exc)


def describe(exc: sqlite3.Error) -> str:
    return f"{type(exc).__name__}: {exc} ({getattr(exc, 'sqlite_errorname', '?')})"


def writer(db: str, n: int, seed: int) -> None:
    """``n`` small transactions, each an insert and an update, each committed on its own."""
    rnd = random.Random(seed)
    con = sqlite3.connect(db, timeout=30, isolation_level=None)
    busy = 0
    total_n = total_s = 0
    i = 0
    while i < n:
        v = rnd.randrange(1000)
        payload = rnd.randbytes(rnd.randrange(40, 400))
        bump = rnd.randrange(1, i + 1) if i else 0  # an earlier row changes too (0: none yet)
        try:
            con.execute("BEGIN IMMEDIATE")
            con.execute("INSERT INTO t (id, v, payload) VALUES (?, ?, ?)", (i + 1, v, payload))
            if bump:
                con.execute("UPDATE t SET v = v + 1 WHERE id = ?", (bump,))
            con.execute("UPDATE totals SET n = n + 1, s = s + ? WHERE k = 0", (v + (1 if bump else 0),))
            con.execute("COMMIT")
        except sqlite3.Error as exc:
            if con.in_transaction:
                con.execute("ROLLBACK")
            if not is_busy(exc):
                print(json.dumps({"error": describe(exc), "done": i}), flush=True)
                sys.exit(1)
            busy += 1
            continue
        total_n += 1
        total_s += v + (1 if bump else 0)
        i += 1
    con.close()
    print(json.dumps({"n": total_n, "s": total_s, "busy": busy}), flush=True)


def reader(db: str) -> None:
    """Query every 50 ms until stdin closes; any error but SQLITE_BUSY is a failure.

    Each query is a new connection, as a ``sqlite3`` command run every 50 ms would be:
    every one opens the database (and the -wal and -shm files) again while the
    writer commits, which is what exposed issue 13's defect 5.
    """
    queries = busy = last_n = 0
    failures: list[str] = []
    started = time.monotonic()
    while True:
        # The pause doubles as the stop signal: the test closes our stdin when the writer is done.
        if select.select([sys.stdin], [], [], _PAUSE_S)[0] and not os.read(sys.stdin.fileno(), 1):
            break
        con: sqlite3.Connection | None = None
        try:
            # A short busy timeout: SQLITE_BUSY comes back to us and is retried here.
            con = sqlite3.connect(db, timeout=0.1, isolation_level=None)
            con.execute("BEGIN")  # the SELECTs read one snapshot
            count, total = con.execute("SELECT count(*), coalesce(sum(v), 0) FROM t").fetchone()
            totals = con.execute("SELECT n, s FROM totals").fetchall()
            check = "ok"
            if queries % _QUICK_CHECK_EVERY == 0:
                check = con.execute("PRAGMA quick_check").fetchone()[0]
            con.execute("COMMIT")
        except sqlite3.Error as exc:
            if is_busy(exc):
                busy += 1
            else:
                failures.append(f"query {queries}: {describe(exc)}")
                queries += 1
            continue
        finally:
            if con is not None:
                con.close()
        queries += 1
        if totals != [(count, total)]:
            failures.append(f"query {queries}: rows ({count}, {total}) but totals {totals}")
        if count < last_n:
            failures.append(f"query {queries}: {count} rows after {last_n}")
        if check != "ok":
            failures.append(f"query {queries}: quick_check: {check}")
        last_n = count
    out = {"queries": queries, "busy": busy, "last_n": last_n, "failures": failures[:50]}
    out["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(out), flush=True)


def main() -> None:
    role = sys.argv[1]
    if role == "writer":
        writer(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif role == "reader":
        reader(sys.argv[2])
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main()
