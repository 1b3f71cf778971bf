// A proxyless gRPC client (grpc-js with grpc-js-xds) for Vane's xDS tests.
//
// Calls /vane.test.Echo/Who on TARGET (e.g. xds:///web, resolved through the
// xDS server named in the file GRPC_XDS_BOOTSTRAP points to) every
// INTERVAL_MS milliseconds until killed, and prints one line per call:
// "ok <backend name>" or "error <status code name> <details>". Requests and
// replies are raw bytes, so no generated code is needed. The packages come
// from NODE_PATH (installed by `cargo xtask test`).
'use strict';

const grpc = require('@grpc/grpc-js');
require('@grpc/grpc-js-xds').register();

const METHOD = '/vane.test.Echo/Who';
const target = process.argv[2];
const interval = process.argv[3] ? Number(process.argv[3]) : 50;
const client = new grpc.Client(target, grpc.credentials.createInsecure());
const raw = (b) => b;

function call() {
  const deadline = new Date(Date.now() + 5000);
  client.makeUnaryRequest(METHOD, raw, raw, Buffer.alloc(0), { deadline }, (err, reply) => {
    if (err) {
      const details = String(err.details || '').replace(/\n/g, ' ');
      console.log(`error ${grpc.status[err.code]} ${details}`);
    } else {
      console.log(`ok ${reply.toString()}`);
    }
    setTimeout(call, interval);
  });
}

console.log('client started');
call();
