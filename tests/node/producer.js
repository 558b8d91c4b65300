// Adds BullMQ jobs (or a flow) and prints their ids as JSON, one line.
// Usage: node producer.js <redis-url> <queue> <prefix> <jobs-json>
// <jobs-json>: an array of {name, data, opts} (a job), or {flow: {name, data, children: [...]}}
// (a parent with children, through FlowProducer, every node in <queue>).
// Env: MAX_LEN_EVENTS sets the queue's `streams.events.maxLen`.
'use strict';
const { Queue, FlowProducer } = require('bullmq');

async function main() {
  const [url, queueName, prefix = 'bull', spec = '[]'] = process.argv.slice(2);
  const u = new URL(url);
  const connection = { host: u.hostname, port: Number(u.port || 6379), db: Number((u.pathname || '/0').slice(1) || 0) };
  const streams = process.env.MAX_LEN_EVENTS ? { events: { maxLen: Number(process.env.MAX_LEN_EVENTS) } } : undefined;
  const queue = new Queue(queueName, { connection, prefix, streams });
  const ids = [];
  for (const item of JSON.parse(spec)) {
    if (item.flow) {
      const flow = new FlowProducer({ connection, prefix });
      const withQueue = (n) => ({ ...n, queueName, children: (n.children || []).map(withQueue) });
      const tree = await flow.add(withQueue(item.flow));
      const walk = (t) => { ids.push(t.job.id); (t.children || []).forEach(walk); };
      walk(tree);
      await flow.close();
    } else if (item.scheduler) {
      const job = await queue.upsertJobScheduler(item.scheduler, item.repeat, { name: item.name, data: item.data });
      ids.push(job && job.id);
    } else {
      const job = await queue.add(item.name, item.data || {}, item.opts || {});
      ids.push(job.id);
    }
  }
  console.log(JSON.stringify(ids));
  await queue.close();
}
main().catch((e) => {
  console.error(e);
  process.exit(1);
});
