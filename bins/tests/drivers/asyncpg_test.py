"""asyncpg through the gateway's transaction pooling: asyncpg names every statement it
prepares (its default statement cache) and introspects types with named statements too.
Many connections interleave on a few backends. Prints "ok <rows>"."""
import asyncio
import os
import ssl
import sys

import asyncpg

HOST = os.environ["SPG_TEST_HOST"]
PORT = int(os.environ["SPG_TEST_PORT"])
USER = os.environ["SPG_TEST_USER"]
PASSWORD = os.environ["SPG_TEST_PASSWORD"]
DB = os.environ["SPG_TEST_DB"]
WORKERS = 8
ROWS = 40


def tls():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def connect():
    return await asyncpg.connect(
        host=HOST, port=PORT, user=USER, password=PASSWORD, database=DB, ssl=tls()
    )


async def worker(n):
    conn = await connect()
    try:
        double = await conn.prepare("SELECT $1::int * 2")
        for i in range(ROWS):
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO apg_items (worker, i, tags) VALUES ($1, $2, $3)",
                    n, i, [f"w{n}", str(i)],
                )
            assert await double.fetchval(i) == i * 2
            rows = await conn.fetch(
                "SELECT i, tags FROM apg_items WHERE worker = $1 AND i = $2", n, i
            )
            assert len(rows) == 1 and rows[0]["tags"] == [f"w{n}", str(i)], rows
            await asyncio.sleep(0)
        await conn.executemany(
            "INSERT INTO apg_items (worker, i, tags) VALUES ($1, $2, $3)",
            [(n, ROWS + j, None) for j in range(10)],
        )
        count, total = await conn.fetchrow(
            "SELECT count(*), sum(i) FROM apg_items WHERE worker = $1", n
        )
        assert (count, total) == (ROWS + 10, sum(range(ROWS + 10))), (count, total)
    finally:
        await conn.close()


async def main():
    conn = await connect()
    await conn.execute("DROP TABLE IF EXISTS apg_items")
    await conn.execute("CREATE TABLE apg_items (worker int, i int, tags text[])")
    await conn.close()
    results = await asyncio.gather(*(worker(n) for n in range(WORKERS)), return_exceptions=True)
    errors = [f"worker {n}: {r!r}" for n, r in enumerate(results) if isinstance(r, BaseException)]
    if errors:
        print("\n".join(errors), file=sys.stderr)
        sys.exit(1)
    conn = await connect()
    rows = await conn.fetchval("SELECT count(*) FROM apg_items")
    await conn.close()
    print(f"ok {rows}")


asyncio.run(main())
