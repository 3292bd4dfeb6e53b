"""Traces for the Python worker: spans exported over OTLP/HTTP (protobuf), written by hand.

Debian ships no OpenTelemetry SDK for Python, so this module does the little a worker needs,
configured by the same standard OTEL_* variables and the same rules as the TypeScript
processes (sdk/src/telemetry/telemetry.ts):

- ``tracing_configured``: on when OTEL_TRACES_EXPORTER names an exporter other than "none",
  or when it is unset and an OTLP endpoint is set; never when OTEL_SDK_DISABLED=true;
- W3C trace context (``parse_traceparent``), a sampler (OTEL_TRACES_SAMPLER, _ARG), spans
  with attributes, events and status;
- a batch exporter thread that encodes ``ExportTraceServiceRequest`` with the stubs that
  scripts/ensure-python.sh generates from proto/opentelemetry/ and POSTs it with urllib.

Only the exporter "otlp" over "http/protobuf" exists here; anything else is said in a warning
and tracing stays off. The stubs are imported only once tracing is on.
"""

from __future__ import annotations

import gzip
import logging
import os
import platform
import random
import re
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Mapping

_HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.join(_HERE, "gen") not in sys.path:
    sys.path.insert(0, os.path.join(_HERE, "gen"))

__all__ = [
    "SPAN_KIND_CONSUMER",
    "Sampler",
    "Span",
    "SpanContext",
    "Tracer",
    "Tracing",
    "active_tracer",
    "parse_traceparent",
    "shutdown_tracing",
    "start_tracing",
    "tracing_configured",
]

# opentelemetry.proto.trace.v1.Span.SpanKind and Status.StatusCode, as numbers: the hot path
# never needs the generated classes.
SPAN_KIND_INTERNAL = 1
SPAN_KIND_SERVER = 2
SPAN_KIND_CLIENT = 3
SPAN_KIND_PRODUCER = 4
SPAN_KIND_CONSUMER = 5
STATUS_ERROR = 2

# Span.flags: the W3C trace flags in the low byte, then whether the parent's remoteness is
# known (0x100) and whether it is remote (0x200).
_FLAG_HAS_IS_REMOTE = 0x100
_FLAG_IS_REMOTE = 0x200

# ---------------------------------------------------------------------------- configuration


def _exporter_names(env: Mapping[str, str]) -> list[str]:
    return [s.strip().lower() for s in env.get("OTEL_TRACES_EXPORTER", "").split(",") if s.strip()]


def tracing_configured(env: Mapping[str, str] = os.environ) -> bool:
    """True when the OTEL_* variables ask for traces: OTEL_TRACES_EXPORTER names an exporter
    other than "none", or it is unset and OTEL_EXPORTER_OTLP_ENDPOINT or
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set; never when OTEL_SDK_DISABLED is true. Unlike
    the OpenTelemetry default, tracing is off when nothing is set."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = _exporter_names(env)
    if exporters:
        return "none" not in exporters
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
                or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip())


def _key_values(text: str, what: str, log: logging.Logger) -> dict[str, str]:
    """"k=v,k2=v2" with percent-encoded values (OTEL_RESOURCE_ATTRIBUTES, …_HEADERS)."""
    out: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            log.warning(f"ignoring {item.strip()!r} in {what}: expected key=value")
            continue
        out[key.strip()] = urllib.parse.unquote(value.strip())
    return out


def _env_number(env: Mapping[str, str], name: str, default: float, log: logging.Logger, *, minimum: float = 0) -> float:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not v >= minimum:  # also false for NaN
        log.warning(f"{name}={text!r} is not a number >= {minimum:g}; using {default:g}")
        return default
    return v


# ---------------------------------------------------------------------------- trace context

_TRACEPARENT_RE = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")


class SpanContext:
    """What identifies a span across processes: trace id (32 hex), span id (16 hex), W3C
    trace flags (bit 0: sampled), trace state, and whether it came from another process."""

    __slots__ = ("trace_id", "span_id", "flags", "trace_state", "remote")

    def __init__(self, trace_id: str, span_id: str, flags: int = 0, trace_state: str = "", remote: bool = False) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.flags = flags
        self.trace_state = trace_state
        self.remote = remote

    @property
    def sampled(self) -> bool:
        return bool(self.flags & 1)

    def traceparent(self) -> str:
        """The W3C traceparent header (version 00) that names this span."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags & 0xFF:02x}"

    def __repr__(self) -> str:
        return f"SpanContext({self.traceparent()!r}, trace_state={self.trace_state!r}, remote={self.remote})"


def parse_traceparent(traceparent: str | None, tracestate: str | None = None) -> SpanContext | None:
    """The remote span context a W3C ``traceparent`` (and ``tracestate``) names; None when
    the header is absent or malformed (as sdk/src/telemetry/trace-context.ts reads it)."""
    if not traceparent:
        return None
    m = _TRACEPARENT_RE.match(traceparent.strip())
    if not m:
        return None
    version, trace_id, span_id, flags, rest = m.groups()
    # Version ff is invalid; version 00 has exactly four fields; later versions may add more.
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return SpanContext(trace_id, span_id, int(flags, 16), (tracestate or "").strip(), remote=True)


def _random_id(nbytes: int) -> str:
    while True:
        v = random.getrandbits(nbytes * 8)
        if v:  # all zeros is the invalid id
            return f"{v:0{nbytes * 2}x}"


# ---------------------------------------------------------------------------- sampling

_ROOT_SAMPLERS = ("always_on", "always_off", "traceidratio")
_SAMPLERS = (*_ROOT_SAMPLERS, *(f"parentbased_{s}" for s in _ROOT_SAMPLERS))


class Sampler:
    """OTEL_TRACES_SAMPLER's always_on, always_off, traceidratio and parentbased_* (the
    default: parentbased_always_on). A parent-based sampler follows the parent's sampled flag
    and asks its root sampler only for a span without a parent; traceidratio samples a trace
    when the low 64 bits of its id are under ratio·2^64, as the OpenTelemetry SDKs do."""

    def __init__(self, name: str = "parentbased_always_on", ratio: float = 1.0) -> None:
        if name not in _SAMPLERS:
            raise ValueError(f"unknown sampler {name!r}: expected one of {', '.join(_SAMPLERS)}")
        self.name = name
        self._parent_based = name.startswith("parentbased_")
        self._root = name.removeprefix("parentbased_")
        self._bound = round(min(1.0, max(0.0, ratio)) * 2**64)

    def should_sample(self, trace_id: str, parent: SpanContext | None) -> bool:
        if parent is not None and self._parent_based:
            return parent.sampled
        if self._root == "always_on":
            return True
        if self._root == "always_off":
            return False
        return int(trace_id[16:], 16) < self._bound

    @classmethod
    def from_env(cls, env: Mapping[str, str], log: logging.Logger) -> Sampler:
        name = env.get("OTEL_TRACES_SAMPLER", "").strip().lower() or "parentbased_always_on"
        if name not in _SAMPLERS:
            log.warning(f"OTEL_TRACES_SAMPLER={name!r} is not a sampler this worker has "
                        f"({', '.join(_SAMPLERS)}); using parentbased_always_on")
            return cls()
        ratio = 1.0
        arg = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
        if name.endswith("traceidratio") and arg:
            try:
                ratio = float(arg)
            except ValueError:
                ratio = float("nan")
            if not 0.0 <= ratio <= 1.0:
                log.warning(f"OTEL_TRACES_SAMPLER_ARG={arg!r} is not a ratio in [0, 1]; using 1")
                ratio = 1.0
        return cls(name, ratio)


# ---------------------------------------------------------------------------- spans


class Span:
    """A span, from its start to its end. A span the sampler left out is not ``recording``:
    it has a context to pass on, and its other methods do nothing. Once ended, nothing more
    is recorded; the end hands it to the exporter."""

    __slots__ = ("name", "kind", "context", "parent", "recording", "start_ns", "end_ns", "attributes",
                 "events", "status_code", "status_message", "_exporter", "_lock")

    def __init__(self, name: str, kind: int, context: SpanContext, parent: SpanContext | None,
                 attributes: dict[str, Any], start_ns: int, exporter: BatchExporter | None) -> None:
        self.name = name
        self.kind = kind
        self.context = context
        self.parent = parent
        self.recording = exporter is not None
        self.start_ns = start_ns
        self.end_ns = 0
        self.attributes = attributes
        self.events: list[tuple[str, int, dict[str, Any]]] = []
        self.status_code = 0
        self.status_message = ""
        self._exporter = exporter
        # Events and the end may come from different threads (the handler's, the timers').
        self._lock = threading.Lock()

    def set_attribute(self, key: str, value: Any) -> None:
        with self._lock:
            if self.recording:
                self.attributes[key] = value

    def add_event(self, name: str, attributes: dict[str, Any], time_ns: int | None = None) -> None:
        with self._lock:
            if self.recording:
                self.events.append((name, time.time_ns() if time_ns is None else time_ns, attributes))

    def set_error(self, message: str) -> None:
        """Status ERROR with a message."""
        with self._lock:
            if self.recording:
                self.status_code, self.status_message = STATUS_ERROR, message

    def end(self, time_ns: int | None = None) -> None:
        with self._lock:
            if not self.recording:
                return
            self.recording = False
            self.end_ns = max(self.start_ns, time.time_ns() if time_ns is None else time_ns)
        if self._exporter is not None:
            self._exporter.add(self)


class Tracer:
    """Starts spans: ids, sampling, and the exporter their end goes to."""

    def __init__(self, sampler: Sampler, exporter: BatchExporter) -> None:
        self._sampler = sampler
        self._exporter = exporter

    def start_span(self, name: str, *, kind: int = SPAN_KIND_INTERNAL, parent: SpanContext | None = None,
                   attributes: dict[str, Any] | None = None, start_ns: int | None = None) -> Span:
        """A span, child of ``parent`` (same trace, its trace state kept) or the root of a new
        trace; recording when the sampler takes it."""
        trace_id = parent.trace_id if parent is not None else _random_id(16)
        sampled = self._sampler.should_sample(trace_id, parent)
        context = SpanContext(trace_id, _random_id(8), 1 if sampled else 0,
                              parent.trace_state if parent is not None else "")
        return Span(name, kind, context, parent, dict(attributes or {}),
                    time.time_ns() if start_ns is None else start_ns, self._exporter if sampled else None)


# ---------------------------------------------------------------------------- export


class BatchExporter:
    """Ended spans queue here; one thread sends them in batches of at most ``batch_size``,
    every ``delay_s`` or as soon as a batch is full, as one ExportTraceServiceRequest POSTed
    to ``endpoint`` (application/x-protobuf). The queue is bounded: when it is full, spans are
    dropped and counted. A failed export drops its batch; nothing here ever raises into the
    worker, and a run of failures is logged once."""

    def __init__(self, *, endpoint: str, resource: dict[str, Any], scope: tuple[str, str], headers: dict[str, str],
                 timeout_s: float, compress: bool, max_queue: int, batch_size: int, delay_s: float,
                 log: logging.Logger) -> None:
        # Imported here, once tracing is on: a worker that does not trace never loads them.
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        self._pb = trace_service_pb2
        self.endpoint = endpoint
        self._resource = resource
        self._scope = scope
        self._headers = {**headers, "Content-Type": "application/x-protobuf"}
        if compress:
            self._headers["Content-Encoding"] = "gzip"
        self._compress = compress
        self._timeout_s = timeout_s
        self._max_queue = max_queue
        self._batch_size = min(batch_size, max_queue)
        self._delay_s = delay_s
        self._log = log
        self._queue: list[Span] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._failing = False
        #: Spans dropped because the queue was full, and because their export failed.
        self.dropped = 0
        self.failed = 0
        self.exported = 0
        self._thread = threading.Thread(target=self._loop, name="dsat-otlp-export", daemon=True)
        self._thread.start()

    def add(self, span: Span) -> None:
        with self._cond:
            if self._stopping:
                return
            if len(self._queue) >= self._max_queue:
                self.dropped += 1
                if self.dropped == 1:
                    self._log.warning(
                        f"span queue full ({self._max_queue} spans, OTEL_BSP_MAX_QUEUE_SIZE): dropping new spans "
                        "until the exporter catches up (counted, said again at exit)",
                        extra={"fields": {"endpoint": self.endpoint}})
                return
            self._queue.append(span)
            if len(self._queue) >= self._batch_size:
                self._cond.notify()

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Exports what is queued, then stops; waits at most ``timeout_s``."""
        with self._cond:
            if self._stopping:
                return
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout_s)
        with self._cond:
            left = len(self._queue)
        if left or self.dropped or self.failed:
            self._log.warning("spans not exported", extra={"fields": {
                "endpoint": self.endpoint, "queueFull": self.dropped, "exportFailed": self.failed,
                "leftAtExit": left}})

    def _loop(self) -> None:
        while True:
            with self._cond:
                deadline = time.monotonic() + self._delay_s
                while not self._stopping and len(self._queue) < self._batch_size:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                batch = self._queue[:self._batch_size]
                del self._queue[:self._batch_size]
                last = self._stopping and not self._queue
            if batch:
                self._export(batch)
            if last:
                return

    def _export(self, batch: list[Span]) -> None:
        try:
            body = self._encode(batch)
            if self._compress:
                body = gzip.compress(body)
            req = urllib.request.Request(self.endpoint, data=body, headers=self._headers, method="POST")
            with urllib.request.urlopen(req, timeout=self._timeout_s) as res:
                answer = self._pb.ExportTraceServiceResponse.FromString(res.read())
        except Exception as e:  # noqa: BLE001 - whatever goes wrong, the worker goes on
            self.failed += len(batch)
            if not self._failing:
                self._failing = True
                why = f"HTTP {e.code} {e.reason}" if isinstance(e, urllib.error.HTTPError) else str(e) or type(e).__name__
                self._log.warning("exporting spans failed; dropping them until an export succeeds",
                                  extra={"fields": {"endpoint": self.endpoint, "error": why, "spans": len(batch)}})
            return
        self.exported += len(batch)
        if self._failing:
            self._failing = False
            self._log.warning("exporting spans works again",
                              extra={"fields": {"endpoint": self.endpoint, "failedSoFar": self.failed}})
        rejected = answer.partial_success.rejected_spans
        if rejected:
            self._log.warning("the trace receiver rejected spans", extra={"fields": {
                "endpoint": self.endpoint, "rejected": rejected, "error": answer.partial_success.error_message}})

    def _encode(self, batch: list[Span]) -> bytes:
        req = self._pb.ExportTraceServiceRequest()
        rs = req.resource_spans.add()
        _set_attributes(rs.resource.attributes, self._resource)
        ss = rs.scope_spans.add()
        ss.scope.name, ss.scope.version = self._scope
        for sp in batch:
            s = ss.spans.add()
            s.trace_id = bytes.fromhex(sp.context.trace_id)
            s.span_id = bytes.fromhex(sp.context.span_id)
            s.trace_state = sp.context.trace_state
            s.flags = (sp.context.flags & 0xFF) | _FLAG_HAS_IS_REMOTE
            if sp.parent is not None:
                s.parent_span_id = bytes.fromhex(sp.parent.span_id)
                if sp.parent.remote:
                    s.flags |= _FLAG_IS_REMOTE
            s.name = sp.name
            s.kind = sp.kind
            s.start_time_unix_nano = sp.start_ns
            s.end_time_unix_nano = sp.end_ns
            _set_attributes(s.attributes, sp.attributes)
            for name, at, attrs in sp.events:
                e = s.events.add()
                e.name, e.time_unix_nano = name, at
                _set_attributes(e.attributes, attrs)
            if sp.status_code:
                s.status.code = sp.status_code
                s.status.message = sp.status_message
        return req.SerializeToString()


def _set_attributes(kvs: Any, attrs: dict[str, Any]) -> None:
    for key, v in attrs.items():
        kv = kvs.add()
        kv.key = key
        if isinstance(v, bool):  # before int: a bool is an int in Python
            kv.value.bool_value = v
        elif isinstance(v, int):
            kv.value.int_value = v
        elif isinstance(v, float):
            kv.value.double_value = v
        else:
            kv.value.string_value = str(v)


# ---------------------------------------------------------------------------- start, stop


class Tracing:
    """Tracing as ``start_tracing`` started it."""

    def __init__(self, tracer: Tracer | None = None, exporter: BatchExporter | None = None) -> None:
        self.tracer = tracer
        self._exporter = exporter

    @property
    def tracing(self) -> bool:
        """True when spans are recorded and exported."""
        return self.tracer is not None

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Exports what is buffered and stops (waits at most ``timeout_s``)."""
        global _tracer
        if self is _active:
            _tracer = None
        if self._exporter is not None:
            self._exporter.shutdown(timeout_s)


_OFF = Tracing()
_lock = threading.Lock()
_active: Tracing | None = None
#: The tracer of the worker's spans while tracing runs; None when it is off.
_tracer: Tracer | None = None


def active_tracer() -> Tracer | None:
    """The tracer of the worker's spans, or None when tracing is off: the one check on hot paths."""
    return _tracer


def start_tracing(service_name: str = "dsat", version: str = "", *, log: logging.Logger | None = None,
                  env: Mapping[str, str] | None = None) -> Tracing:
    """Starts tracing when the OTEL_* variables ask for it (``tracing_configured``): spans
    of ``active_tracer()`` go to OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else
    OTEL_EXPORTER_OTLP_ENDPOINT + "/v1/traces" (default http://localhost:4318/v1/traces),
    with service.name from OTEL_SERVICE_NAME, else OTEL_RESOURCE_ATTRIBUTES, else
    ``service_name``. When tracing is off, or asked of an exporter or protocol this module
    does not have (said in a warning), it starts nothing. Calling it again returns the same
    tracing."""
    global _active, _tracer
    env = os.environ if env is None else env
    log = log or logging.getLogger("dsat.worker")
    with _lock:
        if _active is not None:
            return _active
        tracing = _start(service_name, version, log, env)
        _active, _tracer = tracing, tracing.tracer
        return tracing


def shutdown_tracing(timeout_s: float = 10.0) -> None:
    """Stops what ``start_tracing`` started, exporting what is buffered first."""
    if _active is not None:
        _active.shutdown(timeout_s)


def _start(service_name: str, version: str, log: logging.Logger, env: Mapping[str, str]) -> Tracing:
    if not tracing_configured(env):
        return _OFF
    exporters = _exporter_names(env)
    if exporters and "otlp" not in exporters:
        log.warning(f"OTEL_TRACES_EXPORTER={','.join(exporters)} names no exporter this worker has "
                    "(it exports over OTLP/HTTP only: OTEL_TRACES_EXPORTER=otlp); tracing stays off")
        return _OFF
    if any(e != "otlp" for e in exporters):
        log.warning(f"OTEL_TRACES_EXPORTER={','.join(exporters)}: this worker exports over OTLP only; "
                    "ignoring the others")
    protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "").strip()
                or env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "").strip() or "http/protobuf")
    if protocol != "http/protobuf":
        log.warning(f"OTLP protocol {protocol!r} (OTEL_EXPORTER_OTLP_PROTOCOL) is not one this worker has "
                    "(it sends http/protobuf only); tracing stays off")
        return _OFF
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    if not endpoint:
        base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or "http://localhost:4318"
        endpoint = base.rstrip("/") + "/v1/traces"
    if not endpoint.startswith(("http://", "https://")):
        log.warning(f"OTLP endpoint {endpoint!r} is not an http:// or https:// URL; tracing stays off")
        return _OFF
    compression = (env.get("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "").strip().lower()
                   or env.get("OTEL_EXPORTER_OTLP_COMPRESSION", "").strip().lower() or "none")
    if compression not in ("gzip", "none"):
        log.warning(f"OTLP compression {compression!r} is not gzip or none; sending uncompressed")
    headers = {**_key_values(env.get("OTEL_EXPORTER_OTLP_HEADERS", ""), "OTEL_EXPORTER_OTLP_HEADERS", log),
               **_key_values(env.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS", ""), "OTEL_EXPORTER_OTLP_TRACES_HEADERS", log)}
    timeout_name = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT" if env.get("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "").strip() \
        else "OTEL_EXPORTER_OTLP_TIMEOUT"
    resource: dict[str, Any] = {
        "service.name": service_name,
        "telemetry.sdk.language": "python",
        "host.name": socket.gethostname(),
        "process.pid": os.getpid(),
        "process.runtime.name": platform.python_implementation().lower(),
        "process.runtime.version": platform.python_version(),
    }
    resource.update(_key_values(env.get("OTEL_RESOURCE_ATTRIBUTES", ""), "OTEL_RESOURCE_ATTRIBUTES", log))
    if env.get("OTEL_SERVICE_NAME", "").strip():
        resource["service.name"] = env["OTEL_SERVICE_NAME"].strip()
    try:
        exporter = BatchExporter(
            endpoint=endpoint,
            resource=resource,
            scope=("dsat", version),
            headers=headers,
            compress=compression == "gzip",
            timeout_s=_env_number(env, timeout_name, 10_000, log, minimum=1) / 1000,
            max_queue=int(_env_number(env, "OTEL_BSP_MAX_QUEUE_SIZE", 2048, log, minimum=1)),
            batch_size=int(_env_number(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512, log, minimum=1)),
            # 1 s rather than the specification's 5 s: a worker's spans reach the receiver soon.
            delay_s=_env_number(env, "OTEL_BSP_SCHEDULE_DELAY", 1000, log) / 1000,
            log=log,
        )
    except ImportError as e:
        log.warning(f"tracing is on (OTEL_* variables) but the OTLP stubs are missing ({e}): "
                    "run scripts/ensure-python.sh; tracing stays off")
        return _OFF
    log.info("tracing", extra={"fields": {"endpoint": endpoint, "service": resource["service.name"]}})
    return Tracing(Tracer(Sampler.from_env(env, log), exporter), exporter)
