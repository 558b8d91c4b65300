// Captures what real BullMQ workers write, as taskscope's decoding fixtures.
// Usage: node capture.js <redis-url of an empty, private Redis> <out-dir>
// (tests/node/capture.sh starts that Redis and writes into
// broker-adapters/tests/fixtures/bullmq/).
// Writes `<case>.json`: {"stream": "<prefix>:<queue>:events", "events": [[id, [field, value, ...]], ...],
// "jobs": {"<id>": {field: value}}} with the events stream and every job hash left at the end.
'use strict';
const { spawn } = require('child_process');
const fs = require('fs');
const path = require('path');
const IORedis = require('ioredis');
const { Queue, FlowProducer } = require('bullmq');

const [url, outDir] = process.argv.slice(2);
const u = new URL(url);
const connection = { host: u.hostname, port: Number(u.port || 6379) };
const redis = new IORedis(connection);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function startWorker(queue, prefix, env = {}) {
  const child = spawn(process.execPath, [path.join(__dirname, 'worker.js'), url, queue, prefix], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  return new Promise((resolve) => {
    child.stdout.on('data', (d) => {
      if (String(d).includes('ready')) resolve(child);
    });
  });
}

async function until(what, check, ms = 15000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await check()) return;
    await sleep(50);
  }
  throw new Error(`timed out waiting for ${what}`);
}

async function dump(name, prefix, queue) {
  const stream = `${prefix}:${queue}:events`;
  const events = await redis.xrange(stream, '-', '+');
  const jobs = {};
  const keys = await redis.keys(`${prefix}:${queue}:*`);
  for (const key of keys.sort()) {
    const id = key.slice(prefix.length + queue.length + 2);
    if ((await redis.type(key)) !== 'hash' || id === 'meta' || id.includes(':')) continue;
    jobs[id] = await redis.hgetall(key);
  }
  const meta = await redis.hgetall(`${prefix}:${queue}:meta`);
  fs.writeFileSync(path.join(outDir, `${name}.json`), JSON.stringify({ stream, meta, events, jobs }, null, 1) + '\n');
}

const finished = (queue, id) => async () => {
  const job = await queue.getJob(id);
  return !job || Boolean(job.finishedOn);
};

async function main() {
  fs.mkdirSync(outDir, { recursive: true });
  await redis.flushdb();

  // One queue through every ordinary life: success, failure, retry with backoff, delayed,
  // priority, removeOnComplete, a flow.
  const q1 = new Queue('q1', { connection });
  const w1 = await startWorker('q1', 'bull', { WORKER_NAME: 'w1' });
  const ok = await q1.add('add', { x: 2, y: 3 });
  const fail = await q1.add('fail', { why: 'x' });
  const flaky = await q1.add('flaky', {}, { attempts: 2, backoff: { type: 'fixed', delay: 200 } });
  const retryNow = await q1.add('flaky', {}, { attempts: 3 });
  const delayed = await q1.add('add', { x: 1, y: 1 }, { delay: 500 });
  const prio = await q1.add('add', { x: 5, y: 5 }, { priority: 3 });
  const removed = await q1.add('add', { x: 7, y: 7 }, { removeOnComplete: true });
  const flow = new FlowProducer({ connection });
  const tree = await flow.add({ name: 'add', queueName: 'q1', data: { x: 10, y: 1 }, children: [{ name: 'add', queueName: 'q1', data: { x: 1, y: 2 } }] });
  await flow.close();
  for (const id of [ok.id, fail.id, flaky.id, retryNow.id, delayed.id, prio.id, tree.job.id]) {
    await until(`job ${id}`, finished(q1, id));
  }
  await until('removed job', async () => !(await redis.exists(`bull:q1:${removed.id}`)));
  w1.kill('SIGTERM');
  await dump('lifecycles', 'bull', 'q1');
  await q1.close();

  // A stalled job: its worker is SIGKILLed mid-job, another one finds it stalled and runs it.
  const q2 = new Queue('stall', { connection, prefix: 'shop' });
  const quick = { LOCK_MS: '1000', STALLED_MS: '500' };
  const doomed = await startWorker('stall', 'shop', { ...quick, WORKER_NAME: 'doomed' });
  const job = await q2.add('sleep', { ms: 1500 });
  await until('active', async () => (await redis.lrange('shop:stall:active', 0, -1)).includes(job.id));
  doomed.kill('SIGKILL');
  const rescuer = await startWorker('stall', 'shop', { ...quick, WORKER_NAME: 'rescuer' });
  await until('rescued', finished(q2, job.id), 20000);
  rescuer.kill('SIGTERM');
  await dump('stalled_custom_prefix', 'shop', 'stall');
  await q2.close();

  // A trimmed events stream (maxLenEvents 10): the oldest events are gone.
  const q3 = new Queue('trim', { connection, streams: { events: { maxLen: 10 } } });
  const w3 = await startWorker('trim', 'bull', { WORKER_NAME: 'w3' });
  const many = [];
  for (let i = 0; i < 30; i++) many.push(await q3.add('add', { x: i, y: 1 }));
  await until('trim done', finished(q3, many[many.length - 1].id));
  w3.kill('SIGTERM');
  await dump('trimmed', 'bull', 'trim');
  await q3.close();
  redis.disconnect();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
