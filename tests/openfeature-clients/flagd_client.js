// An OpenFeature client with the flagd provider in in-process mode, for
// Vane's end-to-end tests: the Node twin of flagd_client.py, with the same
// command line and the same output (see there). It streams flag
// configurations from a flagd.sync.v1 FlagSyncService (Vane's control
// server), evaluates flags locally and prints one JSON object a line:
// {"event":"ready"}, {"event":"stale","message":...},
// {"event":"error","message":...},
// {"event":"configuration-changed","flags":[...]} and, after the first
// "ready", {"event":"values","values":[{flag,value,variant,reason,error}]}
// whenever a result changes (flags are evaluated every 100 ms). It exits on
// SIGTERM or when stdin closes.
//
// Usage: node flagd_client.js --host H --port P --selector GROUP
//            [--tls-ca FILE] [--grace-seconds N] [--deadline-ms N] --eval JSON
'use strict';

const fs = require('node:fs');
const { parseArgs } = require('node:util');
const { OpenFeature, ProviderEvents } = require('@openfeature/server-sdk');
const { FlagdProvider } = require('@openfeature/flagd-provider');

const TYPES = ['boolean', 'string', 'number', 'object'];

function fail(message) {
  process.stderr.write(`flagd_client.js: ${message}\n`);
  process.exit(2);
}

function emit(obj) {
  // A single write per line; stdout to a pipe is asynchronous in Node but
  // keeps the order of writes, and every line is handed over at once.
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function integerOption(values, name) {
  if (values[name] === undefined) {
    return undefined;
  }
  const n = Number(values[name]);
  if (!Number.isInteger(n) || n < 0) {
    fail(`--${name}: must be a non-negative integer, not ${JSON.stringify(values[name])}`);
  }
  return n;
}

function parse() {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        host: { type: 'string' },
        port: { type: 'string' },
        selector: { type: 'string' },
        'tls-ca': { type: 'string' },
        'grace-seconds': { type: 'string' },
        'deadline-ms': { type: 'string' },
        eval: { type: 'string' },
      },
    }));
  } catch (e) {
    fail(e.message);
  }
  for (const name of ['host', 'port', 'selector', 'eval']) {
    if (values[name] === undefined) {
      fail(`--${name}: missing`);
    }
  }
  const port = integerOption(values, 'port');
  // The provider would quietly fall back to the system's roots.
  if (values['tls-ca'] !== undefined && !fs.existsSync(values['tls-ca'])) {
    fail(`--tls-ca: no such file: ${values['tls-ca']}`);
  }
  let entries;
  try {
    entries = JSON.parse(values.eval);
  } catch (e) {
    fail(`--eval: not JSON: ${e.message}`);
  }
  if (!Array.isArray(entries)) {
    fail('--eval: must be a JSON list');
  }
  entries.forEach((entry, i) => {
    if (entry === null || typeof entry !== 'object' || typeof entry.flag !== 'string') {
      fail(`--eval[${i}].flag: must be a string`);
    }
    if (!TYPES.includes(entry.type)) {
      fail(`--eval[${i}].type: must be one of ${TYPES.join(', ')}`);
    }
    if (!('default' in entry)) {
      fail(`--eval[${i}].default: missing`);
    }
    const ctx = entry.context ?? {};
    if (ctx === null || typeof ctx !== 'object' || Array.isArray(ctx)) {
      fail(`--eval[${i}].context: must be an object`);
    }
  });
  return {
    host: values.host,
    port,
    selector: values.selector,
    tlsCa: values['tls-ca'],
    graceSeconds: integerOption(values, 'grace-seconds'),
    deadlineMs: integerOption(values, 'deadline-ms'),
    entries,
  };
}

async function evaluate(client, entry) {
  const ctx = entry.context ?? {};
  let details;
  switch (entry.type) {
    case 'boolean':
      details = await client.getBooleanDetails(entry.flag, entry.default, ctx);
      break;
    case 'string':
      details = await client.getStringDetails(entry.flag, entry.default, ctx);
      break;
    case 'number':
      details = await client.getNumberDetails(entry.flag, entry.default, ctx);
      break;
    default:
      details = await client.getObjectDetails(entry.flag, entry.default, ctx);
  }
  return {
    flag: entry.flag,
    value: details.value ?? null,
    variant: details.variant ?? null,
    reason: details.reason ?? null,
    error: details.errorCode ?? null,
  };
}

async function main() {
  const args = parse();
  const options = {
    host: args.host,
    port: args.port,
    selector: args.selector,
    resolverType: 'in-process',
    tls: args.tlsCa !== undefined,
  };
  if (args.tlsCa !== undefined) {
    options.certPath = args.tlsCa;
  }
  if (args.graceSeconds !== undefined) {
    options.retryGracePeriod = args.graceSeconds;
  }
  if (args.deadlineMs !== undefined) {
    options.deadlineMs = args.deadlineMs;
  }

  let ready = false;
  let stopping = false;
  let timer;
  const stop = async () => {
    if (stopping) {
      return;
    }
    stopping = true;
    clearTimeout(timer);
    await OpenFeature.close();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.stdin.on('end', stop);
  process.stdin.on('error', stop);
  process.stdin.resume();

  // Initialization runs in the background; READY arrives as an event.
  // Handlers go on after the provider: one added while the default no-op
  // provider is in place would see that provider's READY at once.
  OpenFeature.setProvider(new FlagdProvider(options));
  OpenFeature.addHandler(ProviderEvents.Ready, () => {
    emit({ event: 'ready' });
    ready = true;
  });
  OpenFeature.addHandler(ProviderEvents.Stale, (d) => {
    emit({ event: 'stale', message: d?.message ?? null });
  });
  OpenFeature.addHandler(ProviderEvents.Error, (d) => {
    emit({ event: 'error', message: d?.message ?? null });
  });
  OpenFeature.addHandler(ProviderEvents.ConfigurationChanged, (d) => {
    emit({ event: 'configuration-changed', flags: [...(d?.flagsChanged ?? [])].sort() });
  });
  const client = OpenFeature.getClient();

  let last;
  const tick = async () => {
    if (ready && !stopping) {
      const values = [];
      for (const entry of args.entries) {
        values.push(await evaluate(client, entry));
      }
      const line = JSON.stringify({ event: 'values', values });
      if (line !== last) {
        process.stdout.write(line + '\n');
        last = line;
      }
    }
    if (!stopping) {
      timer = setTimeout(tick, 100);
    }
  };
  tick();
}

main().catch((e) => fail(e?.stack ?? String(e)));
