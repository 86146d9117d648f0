"""A small OTLP/gRPC receiver for the telemetry tests: the collector's trace and metrics
services (from `opentelemetry-proto`) on grpcio, listening on 127.0.0.1, keeping what arrives.

    r = OtlpReceiver(); r.start(); ... r.spans(trace_id) ... r.metric_names() ...; r.stop()
"""
import threading
import time
from concurrent import futures

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, owner):
        self.owner = owner

    def Export(self, request, context):
        with self.owner.lock:
            for rs in request.resource_spans:
                service = next((a.value.string_value for a in rs.resource.attributes if a.key == "service.name"), None)
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        self.owner.received_spans.append((service, s))
        return trace_service_pb2.ExportTraceServiceResponse()


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, owner):
        self.owner = owner

    def Export(self, request, context):
        with self.owner.lock:
            for rm in request.resource_metrics:
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        self.owner.received_metrics.append(m)
        return metrics_service_pb2.ExportMetricsServiceResponse()


class OtlpReceiver:
    def __init__(self):
        self.lock = threading.Lock()
        self.received_spans = []
        self.received_metrics = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Traces(self), self.server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_Metrics(self), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        if not self.port:
            raise RuntimeError("the OTLP receiver cannot listen on 127.0.0.1")

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        self.server.start()
        return self

    def stop(self):
        self.server.stop(grace=None)

    def spans(self, trace_id=None):
        """(service.name, span) pairs received so far, of one trace (bytes) if given."""
        with self.lock:
            return [(svc, s) for svc, s in self.received_spans if trace_id is None or s.trace_id == trace_id]

    def metric_names(self):
        with self.lock:
            return {m.name for m in self.received_metrics}

    def wait(self, predicate, timeout=30, what="telemetry"):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if predicate():
                return
            time.sleep(0.1)
        raise AssertionError(f"{what} did not arrive within {timeout} s")
