"""A real gRPC server (grpcio) for weir's end-to-end tests.

Service weir.test.Echo, raw bytes in and out (generic handlers, no codegen):
  Say(bytes) -> b"echo:" + bytes, with trailing metadata x-served-by: python
  Count(bytes n) -> n messages b"0".."n-1" (server streaming)
  Secret(bytes) -> b"secret" (what a policy should keep clients from)

usage: grpc_server.py HOST:PORT
"""
import sys
from concurrent import futures

import grpc


def say(request, context):
    context.set_trailing_metadata((("x-served-by", "python"),))
    return b"echo:" + request


def count(request, context):
    for i in range(int(request or b"0")):
        yield str(i).encode()
    context.set_trailing_metadata((("x-count", request.decode() or "0"),))


def secret(request, context):
    return b"secret"


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handlers = {
        "Say": grpc.unary_unary_rpc_method_handler(say),
        "Count": grpc.unary_stream_rpc_method_handler(count),
        "Secret": grpc.unary_unary_rpc_method_handler(secret),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("weir.test.Echo", handlers),))
    server.add_insecure_port(sys.argv[1])
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    main()
