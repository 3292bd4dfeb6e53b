"""The two standard gRPC services every dsat server has, so that grpcurl and probes work on a
Python worker as on the TypeScript ones: grpc.health.v1.Health and grpc.reflection.v1
ServerReflection. Debian ships neither grpcio-health-checking nor grpcio-reflection, so both
are written here on the stubs that scripts/ensure-python.sh generates from proto/grpc/.
"""

from __future__ import annotations

import threading
from typing import Iterable, Iterator

import grpc
from google.protobuf import descriptor_pool

from grpc_std import health_pb2, reflection_pb2

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class HealthService:
    """grpc.health.v1.Health: the server as a whole is service "", each service is listed
    under its full name; Watch streams every change."""

    def __init__(self, services: Iterable[str]) -> None:
        self._status = {name: NOT_SERVING for name in ["", *services]}
        self._changed = threading.Condition()

    def set_all(self, status: int) -> None:
        """Sets every service, and the server as a whole, to SERVING or NOT_SERVING."""
        with self._changed:
            for name in self._status:
                self._status[name] = status
            self._changed.notify_all()

    def add_to_server(self, server: grpc.Server) -> None:
        req, res = health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
            "Check": grpc.unary_unary_rpc_method_handler(
                self._check, req.FromString, res.SerializeToString),
            "List": grpc.unary_unary_rpc_method_handler(
                self._list, health_pb2.HealthListRequest.FromString, health_pb2.HealthListResponse.SerializeToString),
            "Watch": grpc.unary_stream_rpc_method_handler(
                self._watch, req.FromString, res.SerializeToString),
        }),))

    def _check(self, request, context):
        status = self._status.get(request.service)
        if status is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f'unknown service "{request.service}"')
        return health_pb2.HealthCheckResponse(status=status)

    def _list(self, request, context):
        return health_pb2.HealthListResponse(
            statuses={k: health_pb2.HealthCheckResponse(status=v) for k, v in self._status.items()})

    def _watch(self, request, context) -> Iterator[health_pb2.HealthCheckResponse]:
        ended = threading.Event()

        def on_end() -> None:
            ended.set()
            with self._changed:
                self._changed.notify_all()

        context.add_callback(on_end)
        last = None
        while not ended.is_set():
            with self._changed:
                status = self._status.get(request.service, SERVICE_UNKNOWN)
                if status == last:
                    self._changed.wait()
                    continue
            last = status
            yield health_pb2.HealthCheckResponse(status=status)


class ReflectionService:
    """grpc.reflection.v1.ServerReflection over the default descriptor pool, where the
    generated modules registered their files: enough for `grpcurl list` and `describe`."""

    def __init__(self, services: Iterable[str]) -> None:
        self._services = sorted(services)
        self._pool = descriptor_pool.Default()

    def add_to_server(self, server: grpc.Server) -> None:
        req, res = reflection_pb2.ServerReflectionRequest, reflection_pb2.ServerReflectionResponse
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("grpc.reflection.v1.ServerReflection", {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                self._info, req.FromString, res.SerializeToString),
        }),))

    def _info(self, requests, context) -> Iterator[reflection_pb2.ServerReflectionResponse]:
        for r in requests:
            out = reflection_pb2.ServerReflectionResponse(valid_host=r.host, original_request=r)
            kind = r.WhichOneof("message_request")
            try:
                if kind == "list_services":
                    out.list_services_response.service.extend(
                        reflection_pb2.ServiceResponse(name=n) for n in self._services)
                elif kind == "file_by_filename":
                    self._files(out, self._pool.FindFileByName(r.file_by_filename))
                elif kind == "file_containing_symbol":
                    self._files(out, self._pool.FindFileContainingSymbol(r.file_containing_symbol))
                else:
                    out.error_response.error_code = grpc.StatusCode.UNIMPLEMENTED.value[0]
                    out.error_response.error_message = f"{kind} is not supported"
            except KeyError as e:
                out.error_response.error_code = grpc.StatusCode.NOT_FOUND.value[0]
                out.error_response.error_message = f"not found: {e}"
            yield out

    @staticmethod
    def _files(out, fd) -> None:
        """The file and every file it imports, each once, as serialized FileDescriptorProtos."""
        seen, todo = set(), [fd]
        while todo:
            f = todo.pop()
            if f.name in seen:
                continue
            seen.add(f.name)
            out.file_descriptor_response.file_descriptor_proto.append(f.serialized_pb)
            todo.extend(f.dependencies)
