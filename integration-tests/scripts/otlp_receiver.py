"""A real OTLP receiver (gRPC and HTTP/protobuf) for the telemetry integration tests.

The tests need to see what the services actually export over the wire: which spans, with which parent,
attributes and status, which metrics, and which headers the exporter sent. No package registry ships a
working OpenTelemetry Collector we can start from a test, so this script is a minimal, independent
receiver built only on grpcio and the official OTLP protobuf definitions (opentelemetry-proto). It
answers every export with success and appends each span, metric and log record it receives to --out as
one JSON line, which the tests read back.

Usage:
    python3 otlp_receiver.py --out FILE [--grpc-port P] [--http-port Q] [--tls-cert CERT --tls-key KEY]

Port 0 picks an ephemeral port. Once everything is bound, one line is printed to stdout:
    {"ready": true, "grpc_port": <int or null>, "http_port": <int or null>}
"""

import argparse
import gzip
import http.server
import json
import math
import os
import signal
import ssl
import sys
import threading
from concurrent import futures
from typing import Any, Callable, NamedTuple, Optional

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

Record = dict[str, Any]


# --- AnyValue / attributes to plain JSON ----------------------------------------------------------------


def any_value(value: common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "int_value":
        return value.int_value
    if kind == "double_value":
        return finite(value.double_value)
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attributes(value.kvlist_value.values)
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return None


def finite(number: float) -> Any:
    """JSON has no NaN or infinity; those are written as the strings "nan", "inf", "-inf"."""
    return number if math.isfinite(number) else str(number)


def attributes(key_values: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in key_values}


def service_name(resource_attrs: dict[str, Any]) -> Any:
    return resource_attrs.get("service.name", "")


# --- Export requests to JSON records --------------------------------------------------------------------


def span_records(request: trace_pb.ExportTraceServiceRequest) -> list[Record]:
    records = []
    for resource_spans in request.resource_spans:
        resource = attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                records.append({
                    "signal": "span",
                    "service_name": service_name(resource),
                    "resource": resource,
                    "scope": scope_spans.scope.name,
                    "trace_id": span.trace_id.hex(),
                    "span_id": span.span_id.hex(),
                    "parent_span_id": span.parent_span_id.hex(),
                    "name": span.name,
                    "kind": trace_pb2.Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                    "attributes": attributes(span.attributes),
                    "status_code": trace_pb2.Status.StatusCode.Name(span.status.code).removeprefix("STATUS_CODE_"),
                    "status_message": span.status.message,
                    "start_unix_nano": span.start_time_unix_nano,
                    "end_unix_nano": span.end_time_unix_nano,
                })
    return records


def number_point(point: Any) -> Record:
    kind = point.WhichOneof("value")
    value = None if kind is None else getattr(point, kind)
    return {"attributes": attributes(point.attributes), "value": finite(value) if kind == "as_double" else value,
            "count": None, "sum": None, "bucket_counts": None, "explicit_bounds": None}


def present(message: Any, field: str) -> bool:
    """Whether an `optional` field was sent; fields without presence tracking always count as sent."""
    try:
        return message.HasField(field)
    except ValueError:
        return True


def distribution_point(point: Any, with_buckets: bool) -> Record:
    return {"attributes": attributes(point.attributes), "value": None, "count": point.count,
            "sum": finite(point.sum) if present(point, "sum") else None,
            "bucket_counts": list(point.bucket_counts) if with_buckets else None,
            "explicit_bounds": [finite(b) for b in point.explicit_bounds] if with_buckets else None}


def metric_points(metric: Any) -> tuple[str, Optional[bool], list[Record]]:
    kind = metric.WhichOneof("data")
    if kind == "sum":
        return "sum", metric.sum.is_monotonic, [number_point(p) for p in metric.sum.data_points]
    if kind == "gauge":
        return "gauge", None, [number_point(p) for p in metric.gauge.data_points]
    if kind == "histogram":
        return "histogram", None, [distribution_point(p, True) for p in metric.histogram.data_points]
    if kind == "exponential_histogram":
        points = metric.exponential_histogram.data_points
        return "exponential_histogram", None, [distribution_point(p, False) for p in points]
    if kind == "summary":
        return "summary", None, [distribution_point(p, False) for p in metric.summary.data_points]
    raise ValueError(f"metric {metric.name!r} has no data")


def metric_records(request: metrics_pb.ExportMetricsServiceRequest) -> list[Record]:
    records = []
    for resource_metrics in request.resource_metrics:
        resource = attributes(resource_metrics.resource.attributes)
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                kind, monotonic, points = metric_points(metric)
                records.append({"signal": "metric", "service_name": service_name(resource), "name": metric.name,
                                "unit": metric.unit, "description": metric.description, "type": kind,
                                "monotonic": monotonic, "points": points})
    return records


def log_records(request: logs_pb.ExportLogsServiceRequest) -> list[Record]:
    records = []
    for resource_logs in request.resource_logs:
        resource = attributes(resource_logs.resource.attributes)
        for scope_logs in resource_logs.scope_logs:
            for log in scope_logs.log_records:
                records.append({"signal": "log", "service_name": service_name(resource),
                                "body": any_value(log.body) if log.HasField("body") else None,
                                "severity_text": log.severity_text, "trace_id": log.trace_id.hex(),
                                "span_id": log.span_id.hex(), "attributes": attributes(log.attributes)})
    return records


class Signal(NamedTuple):
    request: Any  # Export*ServiceRequest class
    response: Any  # Export*ServiceResponse class
    grpc_service: str  # fully qualified gRPC service name
    records: Callable[[Any], list[Record]]


SIGNALS: dict[str, Signal] = {
    "/v1/traces": Signal(trace_pb.ExportTraceServiceRequest, trace_pb.ExportTraceServiceResponse,
                         trace_pb.DESCRIPTOR.services_by_name["TraceService"].full_name, span_records),
    "/v1/metrics": Signal(metrics_pb.ExportMetricsServiceRequest, metrics_pb.ExportMetricsServiceResponse,
                          metrics_pb.DESCRIPTOR.services_by_name["MetricsService"].full_name, metric_records),
    "/v1/logs": Signal(logs_pb.ExportLogsServiceRequest, logs_pb.ExportLogsServiceResponse,
                       logs_pb.DESCRIPTOR.services_by_name["LogsService"].full_name, log_records),
}


def decode(sig: Signal, body: bytes, transport: str, headers: dict[str, str]) -> list[Record]:
    """Parses one export request; raises on anything malformed."""
    request = sig.request()
    request.ParseFromString(body)
    records = sig.records(request)
    for record in records:
        record["transport"] = transport
        record["headers"] = headers
    return records


# --- Output file ----------------------------------------------------------------------------------------


class Sink:
    def __init__(self, path: str) -> None:
        self._file = open(path, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, records: list[Record]) -> None:
        if not records:
            return
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        with self._lock:
            self._file.write(text)
            self._file.flush()
            os.fsync(self._file.fileno())


def log_error(transport: str, what: str, err: BaseException) -> None:
    print(f"otlp_receiver: {transport} {what}: {type(err).__name__}: {err}", file=sys.stderr, flush=True)


# --- gRPC -----------------------------------------------------------------------------------------------


def grpc_handler(sig: Signal, sink: Sink) -> Callable[[bytes, grpc.ServicerContext], bytes]:
    """Takes the raw request bytes (no deserializer), so a malformed body becomes INVALID_ARGUMENT here."""
    def export(body: bytes, context: grpc.ServicerContext) -> bytes:
        headers: dict[str, str] = {}
        for key, value in context.invocation_metadata():
            if not key.lower().endswith("-bin"):
                headers[key.lower()] = value if isinstance(value, str) else value.decode("latin-1")
        try:
            records = decode(sig, body, "grpc", headers)
        except Exception as err:  # noqa: BLE001 -- any malformed request is the exporter's error
            log_error("grpc", f"bad {sig.grpc_service} request", err)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"cannot decode request: {err}")
        try:
            sink.write(records)
        except Exception as err:  # noqa: BLE001
            log_error("grpc", "write failed", err)
            context.abort(grpc.StatusCode.INTERNAL, f"cannot record request: {err}")
        return sig.response().SerializeToString()
    return export


def start_grpc(port: int, sink: Sink, tls: Optional[tuple[bytes, bytes]]) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    for sig in SIGNALS.values():
        handler = grpc.unary_unary_rpc_method_handler(grpc_handler(sig, sink))
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(sig.grpc_service, {"Export": handler}),))
    address = f"127.0.0.1:{port}"
    if tls:
        bound = server.add_secure_port(address, grpc.ssl_server_credentials([(tls[1], tls[0])]))
    else:
        bound = server.add_insecure_port(address)
    if bound == 0:
        raise RuntimeError(f"cannot bind gRPC to {address}")
    server.start()
    return server, bound


# --- HTTP -----------------------------------------------------------------------------------------------


class OtlpHttpHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30
    sink: Sink  # set on the subclass built by start_http

    def do_POST(self) -> None:  # noqa: N802 -- http.server's naming
        body = self._read_body()
        sig = SIGNALS.get(self.path.split("?", 1)[0])
        if sig is None:
            return self._reply(404, b"not found\n", "text/plain")
        if self.headers.get("Content-Type", "").split(";")[0].strip().lower() != "application/x-protobuf":
            return self._reply(415, b"only application/x-protobuf is supported\n", "text/plain")
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            encoding = self.headers.get("Content-Encoding", "identity").strip().lower()
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding != "identity":
                raise ValueError(f"unsupported Content-Encoding {encoding!r}")
            records = decode(sig, body, "http", headers)
        except Exception as err:  # noqa: BLE001 -- any malformed request is the exporter's error
            log_error("http", f"bad {self.path} request", err)
            return self._reply(400, f"cannot decode request: {err}\n".encode(), "text/plain")
        try:
            self.sink.write(records)
        except Exception as err:  # noqa: BLE001
            log_error("http", "write failed", err)
            return self._reply(500, f"cannot record request: {err}\n".encode(), "text/plain")
        self._reply(200, sig.response().SerializeToString(), "application/x-protobuf")

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline().strip():  # trailers
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 -- quiet: errors are logged above
        pass


class OtlpHttpServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    tls: Optional[ssl.SSLContext] = None

    def finish_request(self, request: Any, client_address: Any) -> None:
        # Runs on the connection's own thread, so a slow TLS handshake never blocks accept().
        if self.tls is not None:
            request.settimeout(OtlpHttpHandler.timeout)
            request = self.tls.wrap_socket(request, server_side=True)
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log_error("http", f"connection from {client_address}", sys.exc_info()[1] or Exception("unknown"))


def start_http(port: int, sink: Sink, tls: Optional[ssl.SSLContext]) -> OtlpHttpServer:
    handler = type("Handler", (OtlpHttpHandler,), {"sink": sink})
    server = OtlpHttpServer(("127.0.0.1", port), handler)
    server.tls = tls
    threading.Thread(target=server.serve_forever, name="otlp-http", daemon=True).start()
    return server


# --- Main -----------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Minimal OTLP receiver for integration tests.")
    parser.add_argument("--out", required=True, help="JSON-lines file to append received telemetry to")
    parser.add_argument("--grpc-port", type=int, help="OTLP/gRPC port on 127.0.0.1 (0: ephemeral)")
    parser.add_argument("--http-port", type=int, help="OTLP/HTTP port on 127.0.0.1 (0: ephemeral)")
    parser.add_argument("--tls-cert", help="PEM certificate (chain) for server-side TLS on both servers")
    parser.add_argument("--tls-key", help="PEM private key for --tls-cert")
    args = parser.parse_args()
    if args.grpc_port is None and args.http_port is None:
        parser.error("give at least one of --grpc-port and --http-port")
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    return args


def main() -> int:
    args = parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    sink = Sink(args.out)
    grpc_tls = http_tls = None
    if args.tls_cert:
        with open(args.tls_cert, "rb") as cert, open(args.tls_key, "rb") as key:
            grpc_tls = (cert.read(), key.read())
        http_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        http_tls.load_cert_chain(args.tls_cert, args.tls_key)

    grpc_server, grpc_port = start_grpc(args.grpc_port, sink, grpc_tls) if args.grpc_port is not None else (None, None)
    http_server = start_http(args.http_port, sink, http_tls) if args.http_port is not None else None
    http_port = http_server.server_address[1] if http_server else None
    print(json.dumps({"ready": True, "grpc_port": grpc_port, "http_port": http_port}), flush=True)

    while not stop.wait(1.0):
        pass
    if http_server:
        http_server.shutdown()
        http_server.server_close()
    if grpc_server:
        grpc_server.stop(grace=1.0).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
