"""A gRPC echo server and client for Ferrule's end-to-end tests (real grpcio, no codegen).

Messages are raw bytes (no protobuf schema needed): the method handlers are registered with
generic handlers and no (de)serializers, which grpcio passes through unchanged.

  python3 echo.py server                 -> prints "port N", serves until killed
  python3 echo.py client TARGET AUTHORITY -> runs all four call types through TARGET with the
                                            given :authority, prints "ok" or raises
  python3 echo.py denied TARGET AUTHORITY -> expects PERMISSION_DENIED for a unary call,
                                            prints "denied" or raises
  python3 echo.py stream TARGET AUTHORITY SECONDS -> keeps one bidi stream open for SECONDS,
                                            one message every 50 ms, each echoed in order;
                                            prints "ok N" (N messages) or raises
"""
import time
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


def channel(target, authority):
    options = [("grpc.default_authority", authority), ("grpc.enable_http_proxy", 0)]
    ch = grpc.insecure_channel(target, options=options)
    grpc.channel_ready_future(ch).result(timeout=10)
    return ch


def denied(target, authority):
    with channel(target, authority) as ch:
        try:
            ch.unary_unary("/%s/Unary" % SERVICE)(b"hello", timeout=10)
            raise AssertionError("expected PERMISSION_DENIED")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.PERMISSION_DENIED, (e.code(), e.details())
    print("denied", flush=True)


def stream(target, authority, seconds):
    end = time.monotonic() + seconds
    sent = []

    def messages():
        i = 0
        while time.monotonic() < end:
            msg = b"s%d" % i
            sent.append(msg)
            yield msg
            i += 1
            time.sleep(0.05)

    with channel(target, authority) as ch:
        call = ch.stream_stream("/%s/Bidi" % SERVICE)(messages(), timeout=seconds + 30)
        got = 0
        for reply in call:
            assert reply == b"echo:" + sent[got], (reply, got)
            got += 1
        assert got == len(sent) and got > 0, (got, len(sent))
    print("ok %d" % got, flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve()
    elif sys.argv[1] == "denied":
        denied(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "stream":
        stream(sys.argv[2], sys.argv[3], float(sys.argv[4]))
    else:
        client(sys.argv[2], sys.argv[3])
