"""psycopg 3 through the gateway's transaction pooling: several threads, server-side prepared
statements from the first execution (prepare_threshold=0), a small prepared-statement cache so
psycopg evicts (Close / DEALLOCATE), transactions and executemany. Prints "ok <rows>"."""
import os
import sys
import threading

import psycopg

DSN = os.environ["SPG_TEST_DSN"]
WORKERS = 8
ROWS = 40


def worker(n, errors):
    try:
        with psycopg.connect(DSN, prepare_threshold=0) as conn:
            conn.prepared_max = 4
            conn.execute(f"SET application_name = 'psycopg-{n}'")
            for i in range(ROWS):
                with conn.transaction():
                    conn.execute(
                        "INSERT INTO psy_items (worker, i, v) VALUES (%s, %s, %s)",
                        (n, i, f"w{n}-{i}"),
                    )
                # Several distinct statements, more than the cache holds: evictions.
                for k in range(6):
                    got = conn.execute(f"SELECT %s::int + {k}", (i,)).fetchone()[0]
                    assert got == i + k, (got, i, k)
            conn.cursor().executemany(
                "INSERT INTO psy_items (worker, i, v) VALUES (%s, %s, %s)",
                [(n, ROWS + j, "many") for j in range(10)],
            )
            total = conn.execute(
                "SELECT count(*), sum(i) FROM psy_items WHERE worker = %s", (n,)
            ).fetchone()
            expect = (ROWS + 10, sum(range(ROWS + 10)))
            assert tuple(total) == expect, (total, expect)
            name = conn.execute("SHOW application_name").fetchone()[0]
            assert name == f"psycopg-{n}", name
    except Exception as e:  # noqa: BLE001
        errors.append(f"worker {n}: {e!r}")


def main():
    with psycopg.connect(DSN) as conn:
        conn.execute("DROP TABLE IF EXISTS psy_items")
        conn.execute("CREATE TABLE psy_items (worker int, i int, v text)")
    errors = []
    threads = [threading.Thread(target=worker, args=(n, errors)) for n in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        print("\n".join(errors), file=sys.stderr)
        sys.exit(1)
    with psycopg.connect(DSN) as conn:
        rows = conn.execute("SELECT count(*) FROM psy_items").fetchone()[0]
    # A notification the client sent itself carries the pid it was given (BackendKeyData),
    # as on a direct connection, so it can tell its own notifications apart.
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute("LISTEN own_channel")
        conn.execute("NOTIFY own_channel, 'mine'")
        note = next(conn.notifies(timeout=10))
        assert note.payload == "mine", note
        assert note.pid == conn.info.backend_pid, (note.pid, conn.info.backend_pid)
    print(f"ok {rows}")


main()
