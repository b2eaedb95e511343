"""An OTLP/HTTP traces receiver for the trace tests, built on the OpenTelemetry project's
own protobuf definitions (PyPI `opentelemetry-proto`): it decodes every export as a
collector would and prints each span as one JSON line. The first line is the port.

Only POST /v1/traces with `application/x-protobuf` is accepted; anything else is answered
415 or 404, and a body that does not decode is answered 400 (and reported on stderr), so
a malformed export fails the test instead of passing unseen.
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2


def value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        if self.path != "/v1/traces":
            self.send_response(404)
            self.end_headers()
            return
        if self.headers.get("content-type") != "application/x-protobuf":
            self.send_response(415)
            self.end_headers()
            return
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        req = trace_service_pb2.ExportTraceServiceRequest()
        try:
            req.ParseFromString(body)
        except Exception as e:  # a broken export must be seen
            print(f"undecodable export: {e}", file=sys.stderr, flush=True)
            self.send_response(400)
            self.end_headers()
            return
        for rs in req.resource_spans:
            resource = {a.key: value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    print(
                        json.dumps(
                            {
                                "trace_id": s.trace_id.hex(),
                                "span_id": s.span_id.hex(),
                                "parent_span_id": s.parent_span_id.hex(),
                                "name": s.name,
                                "kind": s.kind,
                                "start": s.start_time_unix_nano,
                                "end": s.end_time_unix_nano,
                                "status": s.status.code,
                                "attributes": {a.key: value(a.value) for a in s.attributes},
                                "resource": resource,
                                "scope": ss.scope.name,
                                "authorization": self.headers.get("authorization"),
                            }
                        ),
                        flush=True,
                    )
        out = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
