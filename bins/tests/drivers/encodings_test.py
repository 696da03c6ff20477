"""Client encodings other than UTF-8 through the gateway's transaction pooling.

psycopg 3 with client_encoding LATIN9, EUC_JP and SJIS (whose second bytes can be ASCII
backslashes): queries with non-ASCII text in literals and identifiers over the simple protocol
(ClientCursor) and the extended one (parameters, prepared statements), a session setting whose
value is non-ASCII text, COPY in and out, and the client_encoding ParameterStatus exactly as
PostgreSQL spells it. asyncpg with LATIN9 and EUC_JP (its server_settings; parameters only:
asyncpg sends query text as UTF-8 whatever the encoding, also to PostgreSQL directly). Several connections
run at once on a small pool, so each moves between backends. Prints "ok <checks>"."""
import asyncio
import os
import sys
import threading

import asyncpg
import psycopg

DSN = os.environ["SPG_TEST_DSN"]

TEXTS = {
    "LATIN9": "café € naïve Œuvre",
    "EUC_JP": "日本語のテキスト",
    "SJIS": "ソ能表 予定",  # 0x83 0x5C, 0x94 0x5C, 0x95 0x5C: backslash second bytes
}


def psycopg_worker(encoding, n, results, errors):
    text = TEXTS[encoding]
    table = f'"tablé_{encoding.lower()}_{n}"' if encoding == "LATIN9" else f'"表_{encoding.lower()}_{n}"'
    checks = 0
    try:
        # The client spells the encoding in lower case; PostgreSQL reports its own name.
        with psycopg.connect(DSN, client_encoding=encoding.lower()) as conn:
            conn.autocommit = True
            reported = conn.info.parameter_status("client_encoding")
            assert reported == encoding, (reported, encoding)
            cur = psycopg.ClientCursor(conn)
            cur.execute(f"DROP TABLE IF EXISTS {table}")
            cur.execute(f"CREATE TABLE {table} (id int, v text)")
            # Simple protocol: the text and a setting in the same query string; an E'' literal
            # whose characters end in backslash bytes must not hide the statement after it.
            cur.execute(
                f"INSERT INTO {table} VALUES (1, '{text}'); "
                f"SELECT E'{text}'; SET app.label = '{text}'"
            )
            for i in range(12):
                # Extended protocol, parameters and a prepared statement.
                conn.execute(f"INSERT INTO {table} VALUES (%s, %s)", (i + 2, f"{text} {i}"))
                got = conn.execute(
                    f"SELECT v FROM {table} WHERE id = %s", (i + 2,), prepare=True
                ).fetchone()[0]
                assert got == f"{text} {i}", (got, text)
                # (application_name would not do: PostgreSQL keeps it ASCII.)
                label = conn.execute("SHOW app.label").fetchone()[0]
                assert label == text, (label, text)
                one = cur.execute(f"SELECT v FROM {table} WHERE id = 1").fetchone()[0]
                assert one == text, (one, text)
                checks += 3
            # COPY in and out, as raw bytes in the client's encoding (psycopg's own row
            # formatting escapes backslash bytes, which in SJIS can be half a character).
            pyenc = {"LATIN9": "iso8859_15", "EUC_JP": "euc_jp", "SJIS": "shift_jis"}[encoding]
            lines = [f"{100 + i}\t{text} copy {i}\n" for i in range(20)]
            with conn.cursor().copy(f"COPY {table} (id, v) FROM STDIN") as copy:
                copy.write("".join(lines).encode(pyenc))
            out = bytearray()
            with conn.cursor().copy(
                f"COPY (SELECT id, v FROM {table} WHERE id >= 100 ORDER BY id) TO STDOUT"
            ) as copy:
                for data in copy:
                    out += data
            assert bytes(out).decode(pyenc) == "".join(lines), bytes(out)[:60]
            checks += 1
            cur.execute(f"DROP TABLE {table}")
        results.append(checks)
    except Exception as e:  # noqa: BLE001
        errors.append(f"psycopg {encoding} {n}: {e!r}")


async def asyncpg_client(encoding, n):
    text = TEXTS[encoding]
    conn = await asyncpg.connect(
        host=os.environ["SPG_TEST_HOST"],
        port=int(os.environ["SPG_TEST_PORT"]),
        user=os.environ["SPG_TEST_USER"],
        password=os.environ["SPG_TEST_PASSWORD"],
        database=os.environ["SPG_TEST_DB"],
        ssl="require",
        server_settings={"client_encoding": encoding},
    )
    try:
        assert conn.get_settings().client_encoding == encoding, conn.get_settings().client_encoding
        table = f"apg_{encoding.lower()}_{n}"
        await conn.execute(f"DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (v text)")
        checks = 0
        for i in range(10):
            await conn.execute(f"INSERT INTO {table} VALUES ($1)", f"{text} {i}")
            got = await conn.fetchval(f"SELECT v FROM {table} WHERE v = $1", f"{text} {i}")
            assert got == f"{text} {i}", got
            # Stored as the same characters (UTF-8 on the server). asyncpg itself sends query
            # text as UTF-8 whatever the encoding (also to PostgreSQL directly): only
            # parameters carry non-ASCII text here.
            n_bytes = await conn.fetchval("SELECT octet_length($1::text)", f"{text} {i}")
            assert n_bytes == len(f"{text} {i}".encode("utf-8")), n_bytes
            checks += 2
        await conn.execute(f"DROP TABLE {table}")
        return checks
    finally:
        await conn.close()


async def asyncpg_all():
    jobs = [asyncpg_client(enc, n) for enc in ("LATIN9", "EUC_JP") for n in range(2)]
    return sum(await asyncio.gather(*jobs))


def main():
    results, errors = [], []
    threads = [
        threading.Thread(target=psycopg_worker, args=(enc, n, results, errors))
        for enc in TEXTS
        for n in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        print("\n".join(errors), file=sys.stderr)
        sys.exit(1)
    total = sum(results) + asyncio.run(asyncpg_all())
    print(f"ok {total}")


main()
