"""A gRPC backend (grpcio) for Vane's xDS tests: answers /vane.test.Echo/Who
with its own name (raw bytes, no generated code needed).

Usage: backend.py NAME. Listens on a free loopback port and prints
"xds-backend listening on 127.0.0.1:PORT" once it serves; runs until killed.
"""

import sys
import threading
from concurrent import futures

import grpc

METHOD = "/vane.test.Echo/Who"


class Who(grpc.GenericRpcHandler):
    def __init__(self, name: str) -> None:
        self.name = name.encode()

    def service(self, details):
        if details.method != METHOD:
            return None
        return grpc.unary_unary_rpc_method_handler(lambda _request, _context: self.name)


def main() -> None:
    name = sys.argv[1]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((Who(name),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"xds-backend listening on 127.0.0.1:{port}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
