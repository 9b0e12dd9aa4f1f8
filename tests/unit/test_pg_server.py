"""The throwaway PostgreSQL server of tests/pg.py, through the pg_dsn fixture."""

from __future__ import annotations

import psycopg


def test_pg_dsn_schema_round_trip(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        search_path = conn.execute("SHOW search_path").fetchone()
        assert search_path is not None
        assert search_path[0].startswith("t_test_pg_dsn_schema_round_trip_")
        # current_schema() is NULL unless the schema on the path exists.
        schema = conn.execute("SELECT current_schema()").fetchone()
        assert schema == search_path

        conn.execute("CREATE TABLE kv (k text PRIMARY KEY, v bytea NOT NULL)")
        conn.execute("INSERT INTO kv VALUES (%s, %s)", ("key", b"\x00value\xff"))
        conn.commit()
        row = conn.execute("SELECT v FROM kv WHERE k = %s", ("key",)).fetchone()
        assert row == (b"\x00value\xff",)
        # Unqualified names resolved into the test's schema, not public.
        where = conn.execute("SELECT table_schema FROM information_schema.tables WHERE table_name = 'kv'")
        assert where.fetchall() == [search_path]
