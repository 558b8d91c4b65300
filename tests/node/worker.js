// A real BullMQ worker for taskscope's tests and fixture capture.
// Usage: node worker.js <redis-url> <queue> [prefix]
// Env: WORKER_NAME (the Worker's `name`, its jobs' `pb`), LOCK_MS (lockDuration), STALLED_MS
//      (stalledInterval), CONCURRENCY, LIMIT_MAX and LIMIT_MS (the `limiter`: at most LIMIT_MAX
//      jobs per LIMIT_MS), TS_MARKER_DIR (a `sleep` job touches
//      `<prefix>:<queue>:<id>.started` there as it starts). Prints "ready" once connected.
// Jobs by name: `add` returns data.x + data.y; `fail` throws; `flaky` fails its first attempt;
// `sleep` sleeps data.ms then returns "slept"; anything else returns data.
'use strict';
const fs = require('fs');
const path = require('path');
const { Worker } = require('bullmq');

const [url, queue, prefix = 'bull'] = process.argv.slice(2);
if (!url || !queue) {
  console.error('usage: node worker.js <redis-url> <queue> [prefix]');
  process.exit(2);
}
const u = new URL(url);
const connection = { host: u.hostname, port: Number(u.port || 6379), db: Number((u.pathname || '/0').slice(1) || 0) };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const worker = new Worker(
  queue,
  async (job) => {
    switch (job.name) {
      case 'add':
        return job.data.x + job.data.y;
      case 'fail':
        throw new Error(`boom ${job.data.why || ''}`.trim());
      case 'flaky':
        if (job.attemptsMade < 1) throw new Error('flaky first attempt');
        return 'recovered';
      case 'sleep':
        if (process.env.TS_MARKER_DIR) {
          fs.writeFileSync(path.join(process.env.TS_MARKER_DIR, `${prefix}:${queue}:${job.id}.started`), '');
        }
        await sleep(job.data.ms || 1000);
        return 'slept';
      default:
        return job.data;
    }
  },
  {
    connection,
    prefix,
    name: process.env.WORKER_NAME || `w${process.pid}`,
    concurrency: Number(process.env.CONCURRENCY || 1),
    lockDuration: Number(process.env.LOCK_MS || 30000),
    stalledInterval: Number(process.env.STALLED_MS || 30000),
    limiter: process.env.LIMIT_MAX
      ? { max: Number(process.env.LIMIT_MAX), duration: Number(process.env.LIMIT_MS || 1000) }
      : undefined,
  },
);
let ready = false;
worker.on('ready', () => {
  ready = true;
  console.log('ready');
});
worker.on('error', (e) => {
  console.error('worker error', e.message);
  // Before it ever connected (no Redis, no ioredis): give up instead of retrying forever.
  if (!ready) process.exit(1);
});
const stop = async () => {
  // A close that hangs (a job still running) must not keep the process alive.
  setTimeout(() => process.exit(0), 3000).unref();
  await worker.close();
  process.exit(0);
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
