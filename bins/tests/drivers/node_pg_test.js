// node-postgres through the gateway's transaction pooling: named queries (prepared once per
// connection under the client's name), transactions, several clients interleaved.
// Prints "ok <rows>".
const { Client } = require("pg");

const config = {
  host: process.env.SPG_TEST_HOST,
  port: Number(process.env.SPG_TEST_PORT),
  user: process.env.SPG_TEST_USER,
  password: process.env.SPG_TEST_PASSWORD,
  database: process.env.SPG_TEST_DB,
  ssl: { rejectUnauthorized: false },
};
const WORKERS = 8;
const ROWS = 40;

async function worker(n) {
  const c = new Client(config);
  await c.connect();
  try {
    for (let i = 0; i < ROWS; i++) {
      await c.query("BEGIN");
      await c.query({
        name: "insert-item",
        text: "INSERT INTO node_items (worker, i) VALUES ($1, $2)",
        values: [n, i],
      });
      await c.query("COMMIT");
      const r = await c.query({
        name: "get-double",
        text: "SELECT $1::int * 2 AS d",
        values: [i],
      });
      if (r.rows[0].d !== i * 2) throw new Error(`double(${i}) = ${r.rows[0].d}`);
    }
    const r = await c.query({
      name: "count-mine",
      text: "SELECT count(*)::int AS n, sum(i)::int AS s FROM node_items WHERE worker = $1",
      values: [n],
    });
    const expect = (ROWS * (ROWS - 1)) / 2;
    if (r.rows[0].n !== ROWS || r.rows[0].s !== expect) {
      throw new Error(`worker ${n}: ${JSON.stringify(r.rows[0])}`);
    }
  } finally {
    await c.end();
  }
}

(async () => {
  const c = new Client(config);
  await c.connect();
  await c.query("DROP TABLE IF EXISTS node_items");
  await c.query("CREATE TABLE node_items (worker int, i int)");
  await Promise.all([...Array(WORKERS).keys()].map(worker));
  const r = await c.query("SELECT count(*)::int AS n FROM node_items");
  await c.end();
  console.log(`ok ${r.rows[0].n}`);
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
