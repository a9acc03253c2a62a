"""A real gRPC client (grpcio): makes one call and prints the outcome as JSON.

usage: grpc_client.py HOST:PORT unary METHOD PAYLOAD
       grpc_client.py HOST:PORT stream METHOD PAYLOAD
"""
import json
import sys

import grpc


def main():
    target, kind, method, payload = sys.argv[1:5]
    channel = grpc.insecure_channel(target)
    path = "/weir.test.Echo/" + method
    out = {}
    try:
        if kind == "unary":
            call = channel.unary_unary(path)
            response, info = call.with_call(payload.encode(), timeout=10)
            out["responses"] = [response.decode()]
        else:
            call = channel.unary_stream(path)(payload.encode(), timeout=10)
            out["responses"] = [r.decode() for r in call]
            info = call
        out["code"] = info.code().name
        out["trailers"] = {k: v for k, v in (info.trailing_metadata() or ())}
    except grpc.RpcError as e:
        out["code"] = e.code().name
        out["details"] = e.details()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
