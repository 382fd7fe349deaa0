// Produce and subscribe through a kafka-mesh sidecar from Node, with @grpc/grpc-js and the API loaded from
// proto/kafkamesh/v1/mesh.proto at run time by @grpc/proto-loader (no generated code).
//
//   node examples/node/mesh.js --target 127.0.0.1:7420 --topic orders --count 5 [--group G]
//
// Produces --count records (values node-<run>-<i>) and one record with an invalid topic name in one batch, prints
// each per-record error, then subscribes to --topic from the earliest offset, prints every record it reads as one
// JSON line ({"cluster", "topic", "partition", "offset", "key", "value"}), acks it and grants the credit back, and
// ends the stream (so the sidecar commits what was acked) once it has read every record it produced.
'use strict';

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO = path.join(__dirname, '..', '..', 'proto', 'kafkamesh', 'v1', 'mesh.proto');
const definition = protoLoader.loadSync(PROTO, {
  keepCase: true,  // field names as the .proto writes them: batch_id, not batchId
  longs: String,   // uint64 and int64 (batch_id, offset, credit bytes) do not fit a JavaScript number
  enums: String,   // error codes and start positions by name
  defaults: true,  // unset scalars read as their zero value (offset 0, partition 0)
  oneofs: true,    // `kind` names which member of a oneof is set
});
const mesh = grpc.loadPackageDefinition(definition).kafkamesh.v1;

function args() {
  const out = {target: '127.0.0.1:7420', topic: 'orders', count: 5, group: `node-example-${process.pid}`};
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) {
    const name = argv[i].replace(/^--/, '');
    if (!(name in out) || argv[i + 1] === undefined) {
      console.error(`usage: node mesh.js [--target ADDR] [--topic T] [--count N] [--group G] (bad: ${argv[i]})`);
      process.exit(2);
    }
    out[name] = name === 'count' ? Number(argv[i + 1]) : argv[i + 1];
  }
  return out;
}

function produce(client, topic, values) {
  return new Promise((resolve, reject) => {
    const call = client.Produce();
    const records = values.map((v, i) => ({topic, key: Buffer.from(`k${i}`), value: Buffer.from(v)}));
    records.push({topic: 'not a topic', value: Buffer.from('refused')});   // fails alone: INVALID_TOPIC
    let answer = null;
    call.on('data', (response) => { answer = response; });
    call.on('error', reject);
    call.on('end', () => resolve(answer));
    call.write({batch_id: '1', records});
    call.end();
  });
}

function subscribe(client, group, topic, expected) {
  return new Promise((resolve, reject) => {
    const call = client.Subscribe();
    const seen = new Set();
    call.on('data', (response) => {
      if (response.kind === 'event') {
        console.error(`event ${JSON.stringify(response.event)}`);
        return;
      }
      const ranges = [];
      let count = 0;
      let bytes = 0;
      for (const p of response.records.partitions) {
        for (const r of p.records) {
          const value = r.value ? r.value.toString() : null;
          console.log(JSON.stringify({cluster: p.cluster, topic: p.topic, partition: p.partition, offset: r.offset,
            key: r.key ? r.key.toString() : null, value}));
          seen.add(value);
          count += 1;
          // Credit is counted in serialized response bytes, which this loader does not expose: grant back an
          // upper bound of what the records took. The record credit, granted back exactly, bounds the stream.
          bytes += (r.key ? r.key.length : 0) + (r.value ? r.value.length : 0) + 64;
        }
        const offsets = p.records.map((r) => BigInt(r.offset));
        ranges.push({cluster: p.cluster, topic: p.topic, partition: p.partition,
          first_offset: offsets[0].toString(), last_offset: offsets[offsets.length - 1].toString()});
      }
      call.write({acks: {ranges}, credit: {records: count, bytes: String(bytes)}});
      if (expected.every((v) => seen.has(v))) {
        call.end();           // the sidecar commits what was acked, then ends the call
      }
    });
    call.on('error', reject);
    call.on('end', () => resolve(seen));
    call.write({subscription: {group, topics: [topic], start: 'START_POSITION_EARLIEST',
      credit: {records: 1000, bytes: String(4 << 20)}}});
  });
}

async function main() {
  const opt = args();
  const client = new mesh.Mesh(opt.target, grpc.credentials.createInsecure());
  const values = Array.from({length: opt.count}, (_, i) => `node-${process.pid}-${i}`);
  const answer = await produce(client, opt.topic, values);
  console.error(`produced: ${answer.ok_count} ok, mapping revision ${answer.mapping_revision}`);
  for (const e of answer.errors) {
    console.error(`record ${e.index}: ${e.code}: ${e.message}`);
  }
  if (answer.ok_count !== values.length) {
    console.error('not every record was written');
    process.exit(1);
  }
  await subscribe(client, opt.group, opt.topic, values);
  client.close();
}

main().catch((e) => {
  console.error(`error: ${e.message}`);
  process.exit(1);
});
