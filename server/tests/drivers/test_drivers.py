"""Sluice through real PostgreSQL drivers: psycopg 3 and asyncpg.

Usage: python3 test_drivers.py PORT. Each check asserts real results; the script prints
'N passed, N failed' and exits non-zero on any failure.
"""
import asyncio
import datetime as dt
import decimal
import sys
import traceback

import asyncpg
import psycopg

PORT = int(sys.argv[1])
DSN = f"host=127.0.0.1 port={PORT} user=sluice dbname=sluice"
CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


@check
def psycopg_types_and_parameters():
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE pv (id BIGINT PRIMARY KEY, url VARCHAR, ok BOOLEAN, price NUMERIC(8,2),"
            " ratio DOUBLE PRECISION, day DATE, at TIMESTAMP, atz TIMESTAMPTZ, span INTERVAL,"
            " raw BYTEA, doc JSONB)"
        )
        rows = [
            (1, "/", True, decimal.Decimal("9.99"), 0.5, dt.date(2026, 1, 2),
             dt.datetime(2026, 1, 2, 3, 4, 5, 123456), dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
             dt.timedelta(days=1, hours=2), b"\x00\xff", psycopg.types.json.Jsonb({"k": [1, 2]})),
            (2, "/cart", False, None, None, None, None, None, None, None, None),
        ]
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO pv VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", rows)
        for binary in (False, True):
            with conn.cursor(binary=binary) as cur:
                cur.execute("SELECT * FROM pv WHERE id = %s", (1,))
                got = cur.fetchone()
                assert got[0] == 1 and got[1] == "/" and got[2] is True, got
                assert got[3] == decimal.Decimal("9.99"), got[3]
                assert got[4] == 0.5 and got[5] == dt.date(2026, 1, 2), got
                assert got[6] == dt.datetime(2026, 1, 2, 3, 4, 5, 123456), got[6]
                assert got[7] == dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc), got[7]
                assert got[8] == dt.timedelta(days=1, hours=2), got[8]
                assert bytes(got[9]) == b"\x00\xff", got[9]
                assert got[10] == {"k": [1, 2]}, got[10]
                assert [d.name for d in cur.description][:3] == ["id", "url", "ok"]
                cur.execute("SELECT count(*), max(url) FROM pv WHERE ok = %s OR price IS NULL", (True,))
                assert cur.fetchone() == (2, "/cart")
                cur.execute("SELECT price + %s, %s FROM pv WHERE id = 1", (decimal.Decimal("0.01"), decimal.Decimal("1.10")))
                assert cur.fetchone() == (decimal.Decimal("10.00"), decimal.Decimal("1.10"))
                cur.execute("SELECT id FROM pv ORDER BY id LIMIT %s OFFSET %s", (1, 1))
                assert cur.fetchall() == [(2,)]


@check
def psycopg_transactions_and_errors():
    with psycopg.connect(DSN) as conn:  # not autocommit: psycopg sends BEGIN itself
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE tx (v INT)")
            cur.execute("INSERT INTO tx VALUES (1), (2)")
        conn.commit()
        try:
            conn.execute("SELECT * FROM no_such_table")
            raise AssertionError("expected an error")
        except psycopg.errors.UndefinedTable as e:
            assert e.sqlstate == "42P01"
        conn.rollback()
        assert conn.execute("SELECT sum(v) FROM tx").fetchone() == (3,)
        try:
            conn.execute("SELECT 1 / 0")
            raise AssertionError("expected an error")
        except psycopg.errors.DivisionByZero:
            pass
        conn.rollback()
        assert conn.execute("SELECT current_database(), version()").fetchone()[0] == "sluice"


@check
def asyncpg_prepared_statements_and_types():
    async def run():
        conn = await asyncpg.connect(host="127.0.0.1", port=PORT, user="sluice", database="sluice")
        try:
            await conn.execute("CREATE TABLE ev (id BIGINT PRIMARY KEY, name TEXT, n INT, at TIMESTAMP, amount NUMERIC(10,3))")
            await conn.executemany(
                "INSERT INTO ev VALUES ($1, $2, $3, $4, $5)",
                [(i, f"e{i}", i * 10, dt.datetime(2026, 5, 1, 0, 0, i), decimal.Decimal(i) / 4) for i in range(1, 6)],
            )
            assert await conn.fetchval("SELECT count(*) FROM ev") == 5
            rows = await conn.fetch("SELECT id, name, at, amount FROM ev WHERE n > $1 ORDER BY id", 25)
            assert [r["id"] for r in rows] == [3, 4, 5], rows
            assert rows[0]["name"] == "e3" and rows[0]["at"] == dt.datetime(2026, 5, 1, 0, 0, 3)
            assert rows[0]["amount"] == decimal.Decimal("0.750"), rows[0]["amount"]
            assert [r["id"] for r in await conn.fetch("SELECT id FROM ev ORDER BY id LIMIT $1 OFFSET $2", 2, 1)] == [2, 3]
            assert await conn.fetchval("SELECT $1::int + 1", 41) == 42
            assert await conn.fetchval("SELECT count(*) FROM ev WHERE at > $1::timestamp", dt.datetime(2026, 5, 1, 0, 0, 2)) == 3
            assert await conn.fetchval("SELECT sum(amount) + $1 FROM ev", decimal.Decimal("0.25")) == decimal.Decimal("4.000")
            await conn.execute("CREATE TABLE docs (id INT, doc JSONB)")
            await conn.execute("""INSERT INTO docs VALUES (1, '{"b":"x","a":[1,2]}')""")
            # asyncpg reads jsonb in binary and returns the server's text: PostgreSQL's layout.
            assert await conn.fetchval("SELECT doc FROM docs") == '{"a": [1, 2], "b": "x"}'
            stmt = await conn.prepare("SELECT name FROM ev WHERE id = $1")
            assert await stmt.fetchval(2) == "e2"
            assert await stmt.fetchval(4) == "e4"
            async with conn.transaction():
                await conn.execute("UPDATE ev SET name = 'changed' WHERE id = $1", 1)
            assert await conn.fetchval("SELECT name FROM ev WHERE id = 1") == "changed"
            try:
                await conn.fetch("SELECT missing FROM ev")
                raise AssertionError("expected an error")
            except asyncpg.exceptions.UndefinedColumnError:
                pass
            assert await conn.fetchval("SELECT 1 + 1") == 2
        finally:
            await conn.close()

    asyncio.run(run())


def main():
    passed = failed = 0
    for fn in CHECKS:
        try:
            fn()
            print(f"ok      {fn.__name__}")
            passed += 1
        except Exception:
            print(f"FAILED  {fn.__name__}")
            traceback.print_exc()
            failed += 1
    print(f"drivers: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
