"""A gRPC echo server and client for Ferrule's end-to-end tests (real grpcio, no codegen).

Messages are raw bytes (no protobuf schema needed): the method handlers are registered with
generic handlers and no (de)serializers, which grpcio passes through unchanged.

  python3 echo.py server                 -> prints "port N", serves until killed
  python3 echo.py client TARGET AUTHORITY -> runs all four call types through TARGET with the
                                            given :authority, prints "ok" or raises
"""
import sys
from concurrent import futures

import grpc

SERVICE = "ferrule.test.Echo"


def unary(request, context):
    return b"unary:" + request


def server_stream(request, context):
    for i in range(3):
        yield b"part%d:" % i + request


def client_stream(request_iterator, context):
    return b"joined:" + b"|".join(request_iterator)


def bidi(request_iterator, context):
    for msg in request_iterator:
        yield b"echo:" + msg


def serve():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print("port %d" % port, flush=True)
    server.wait_for_termination()


def client(target, authority):
    options = [("grpc.default_authority", authority), ("grpc.enable_http_proxy", 0)]
    with grpc.insecure_channel(target, options=options) as ch:
        grpc.channel_ready_future(ch).result(timeout=10)
        m = lambda name: "/%s/%s" % (SERVICE, name)
        got = ch.unary_unary(m("Unary"))(b"hello", timeout=10)
        assert got == b"unary:hello", got
        got = list(ch.unary_stream(m("ServerStream"))(b"x", timeout=10))
        assert got == [b"part0:x", b"part1:x", b"part2:x"], got
        got = ch.stream_unary(m("ClientStream"))(iter([b"a", b"b", b"c"]), timeout=10)
        assert got == b"joined:a|b|c", got
        # Bidirectional: 100 messages, each answered in order over one stream.
        msgs = [b"m%d" % i for i in range(100)]
        got = list(ch.stream_stream(m("Bidi"))(iter(msgs), timeout=10))
        assert got == [b"echo:" + x for x in msgs], got[:3]
        # A status from the server travels back in trailers.
        try:
            ch.unary_unary("/%s/Missing" % SERVICE)(b"", timeout=10)
            raise AssertionError("expected UNIMPLEMENTED")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNIMPLEMENTED, e.code()
    print("ok", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve()
    else:
        client(sys.argv[2], sys.argv[3])
