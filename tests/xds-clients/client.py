"""A proxyless gRPC client (grpcio) for Vane's xDS tests.

Calls /vane.test.Echo/Who on TARGET (e.g. xds:///web, resolved through the
xDS server named in the file GRPC_XDS_BOOTSTRAP points to) every INTERVAL_MS
milliseconds until killed, and prints one line per call:
"ok <backend name>" or "error <status code name> <details>".
Requests and replies are raw bytes, so no generated code is needed.
"""

import sys
import time

import grpc

METHOD = "/vane.test.Echo/Who"


def main() -> None:
    target = sys.argv[1]
    interval = int(sys.argv[2]) / 1000.0 if len(sys.argv) > 2 else 0.05
    channel = grpc.insecure_channel(target)
    who = channel.unary_unary(METHOD)
    print("client started", flush=True)
    while True:
        try:
            reply = who(b"", timeout=5)
            print("ok", reply.decode(), flush=True)
        except grpc.RpcError as e:
            details = (e.details() or "").replace("\n", " ")
            print("error", e.code().name, details, flush=True)
        time.sleep(interval)


if __name__ == "__main__":
    main()
