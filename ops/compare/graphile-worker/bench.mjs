// graphile-worker measured as `chronicle bench tasks` measures Chronicle, on the same
// PostgreSQL: a throw-away database, a worker with concurrency 8 running a no-op task, and
// 8 producers each adding one job per transaction as fast as they can. Prints one line:
//   graphile-worker: <jobs>/s add_to_start_p50=<ms> add_to_start_p99=<ms>
// Usage: node bench.mjs [--jobs N] [--concurrency C] [--producers P] [--url postgres://…]
import { randomBytes } from "node:crypto";
import { parseArgs } from "node:util";
import pg from "pg";
import { run, makeWorkerUtils, Logger } from "graphile-worker";

const { values } = parseArgs({
  options: {
    jobs: { type: "string", default: "10000" },
    concurrency: { type: "string", default: "8" },
    producers: { type: "string", default: "8" },
    url: { type: "string", default: process.env.CHRONICLE_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres" },
  },
});
const jobs = Number(values.jobs);
const concurrency = Number(values.concurrency);
const producers = Number(values.producers);
if (![jobs, concurrency, producers].every((n) => Number.isInteger(n) && n > 0)) {
  console.error("--jobs, --concurrency and --producers must be positive integers");
  process.exit(2);
}

const admin = new URL(values.url);
const name = `graphile_bench_${randomBytes(6).toString("hex")}`;
const adminClient = new pg.Client({ connectionString: admin.toString() });
await adminClient.connect();
await adminClient.query(`CREATE DATABASE ${name}`);
const url = new URL(admin);
url.pathname = `/${name}`;
const pool = new pg.Pool({ connectionString: url.toString(), max: producers + concurrency + 4 });
// Dropping the database at the end ends the worker's idle connections: not an error here.
pool.on("error", () => {});

const now = () => performance.timeOrigin + performance.now();
const latencies = new Float64Array(jobs);
let started = 0;
let completed = 0;
let firstAdd = 0;
let lastDone = 0;
let resolveAll;
const allDone = new Promise((resolve) => (resolveAll = resolve));

try {
  const utils = await makeWorkerUtils({ pgPool: pool });
  await utils.migrate();
  const runner = await run({
    pgPool: pool,
    concurrency,
    noHandleSignals: true,
    pollInterval: 1000,
    logger: new Logger(() => () => {}),
    taskList: {
      noop: async (payload) => {
        latencies[started++] = now() - payload.t;
        // The job's work is nothing; it is complete when this returns.
        queueMicrotask(() => {
          completed += 1;
          lastDone = now();
          if (completed >= jobs) resolveAll();
        });
      },
    },
  });
  let next = 0;
  firstAdd = now();
  const produce = async () => {
    const client = await pool.connect();
    try {
      while (next < jobs) {
        next += 1;
        await client.query("BEGIN");
        await client.query("SELECT graphile_worker.add_job('noop', json_build_object('t', $1::float8))", [now()]);
        await client.query("COMMIT");
      }
    } finally {
      client.release();
    }
  };
  await Promise.all(Array.from({ length: producers }, produce));
  const addedAt = now();
  await allDone;
  await runner.stop();
  await utils.release();
  const sorted = Array.from(latencies.subarray(0, started)).sort((a, b) => a - b);
  const at = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  const seconds = (lastDone - firstAdd) / 1000;
  console.error(
    `(${jobs} jobs, ${producers} producers, worker concurrency ${concurrency}; adds took ${((addedAt - firstAdd) / 1000).toFixed(2)} s, all done after ${seconds.toFixed(2)} s)`,
  );
  console.log(
    `graphile-worker: ${(jobs / seconds).toFixed(0)} jobs/s add_to_start_p50=${at(0.5).toFixed(2)} add_to_start_p99=${at(0.99).toFixed(2)}`,
  );
} finally {
  await pool.end();
  await adminClient.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  await adminClient.end();
}
