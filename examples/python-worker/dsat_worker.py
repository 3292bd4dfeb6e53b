"""dsat worker runtime for Python: the reference for writing a worker in another language.

A worker serves one stage of a pipeline. It

1. registers itself in etcd under a lease (``Registration``), so that routers find it;
2. serves ``dsat.v1.WorkerService.Process``: each router opens one bidirectional stream,
   sends assignments and cancels down it, and reads transitions and load reports back;
3. runs every assignment inside the FSM wrapper (``Worker``): RUNNING, then exactly one of
   SUCCEEDED, FAILED, TIMED_OUT or CANCELLED, with the stage's timeout enforced here, and
   any progress the handler reports (RUNNING -> RUNNING) in between;
4. when the OTEL_* variables ask for traces (``start_tracing``), makes a span per attempt,
   ``run <stage>``, a child of the task's ``traceparent``, with each transition as an event.

Its behaviour matches the TypeScript runtime (sdk/src/worker/worker.ts); the protocol is
written down in docs/worker-protocol.md. It needs only Debian's python3-grpcio and
python3-protobuf and the stubs that scripts/ensure-python.sh generates into gen/; spans go
out over OTLP/HTTP through otlp_tracing.py beside it.

    from dsat_worker import Worker, route_to, start_tracing

    def shout(payload, ctx):
        return {"v": payload.json()["v"] * 10}

    tracing = start_tracing()  # reads OTEL_*; does nothing when they ask for no traces
    worker = Worker(stage="shout", handler=shout, etcd="127.0.0.1:2379", concurrency=4)
    worker.start()
    ...
    worker.drain()
    tracing.shutdown()         # exports the spans still buffered
"""

from __future__ import annotations

import base64
import functools
import heapq
import itertools
import json
import logging
import os
import platform
import random
import re
import socket
import struct
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

# The stubs live in gen/ beside this file (scripts/ensure-python.sh writes them), and
# standard_services.py beside it.
_HERE = os.path.dirname(os.path.abspath(__file__))
for _dir in (_HERE, os.path.join(_HERE, "gen")):
    if _dir not in sys.path:
        sys.path.insert(0, _dir)

import grpc  # noqa: E402
from google.protobuf import json_format  # noqa: E402
from google.protobuf.timestamp_pb2 import Timestamp  # noqa: E402

import otlp_tracing  # noqa: E402
from dsat.v1 import member_pb2, task_pb2, worker_pb2, worker_pb2_grpc  # noqa: E402
from standard_services import NOT_SERVING, SERVING, HealthService, ReflectionService  # noqa: E402

__all__ = [
    "PROTOCOL_VERSION",
    "Payload",
    "Registration",
    "Routed",
    "StageError",
    "TaskContext",
    "Worker",
    "advertised_address",
    "encode_output",
    "first_external_ipv4",
    "is_compatible",
    "parse_version",
    "route_to",
    "start_tracing",
]

# ---------------------------------------------------------------------------- versions

#: The dsat protocol version this worker speaks (sdk/src/version.ts DSAT_VERSION).
PROTOCOL_VERSION = "0.1.0"

# X.Y.Z: X and Y decimal numbers without leading zeros, Z one character of [a-z0-9]
# (optional, default "0"). Only X.Y decides compatibility.
_VERSION_RE = re.compile(r"^(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})(?:\.([a-z0-9]))?$")


def parse_version(text: str) -> tuple[int, int, str]:
    """Parses "X.Y" or "X.Y.Z" into (X, Y, Z); raises ValueError that says what is wrong."""
    m = _VERSION_RE.match(text.strip())
    if not m:
        raise ValueError(
            f'invalid version "{text}": expected X.Y.Z with X and Y numbers without leading zeros '
            'and Z a single character of [a-z0-9] (for example "1.4.0" or "1.4.b")'
        )
    return int(m.group(1)), int(m.group(2)), m.group(3) or "0"


def is_compatible(a: str, b: str) -> bool:
    """True when two versions can talk: the same X and Y. Invalid versions never are."""
    try:
        return parse_version(a)[:2] == parse_version(b)[:2]
    except ValueError:
        return False


# ---------------------------------------------------------------------------- logging

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR,
           "silent": logging.CRITICAL + 10}


class _JsonLines(logging.Formatter):
    """One JSON object per line, like the TypeScript logger, so that tools read both alike."""

    def format(self, record: logging.LogRecord) -> str:
        rec = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": {"WARNING": "warn"}.get(record.levelname, record.levelname.lower()),
            "msg": record.getMessage(),
        }
        rec.update(getattr(record, "fields", {}))
        return json.dumps(rec, default=str)


def _make_logger() -> logging.Logger:
    log = logging.getLogger("dsat.worker")
    if not log.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(_JsonLines())
        log.addHandler(h)
        log.propagate = False
        log.setLevel(_LEVELS.get(os.environ.get("DSAT_LOG_LEVEL", "warn").lower(), logging.WARNING))
    return log


# ---------------------------------------------------------------------------- payloads


class Payload:
    """The bytes of a stage's input, with ways to read them."""

    __slots__ = ("bytes",)

    def __init__(self, data: bytes) -> None:
        self.bytes = data

    def text(self) -> str:
        """The bytes as UTF-8 text."""
        return self.bytes.decode("utf-8")

    def json(self) -> Any:
        """The bytes as JSON; None for an empty payload. Raises ValueError on bad JSON."""
        return json.loads(self.bytes) if self.bytes else None

    def __repr__(self) -> str:
        return f"Payload({self.bytes!r})"


@dataclass(frozen=True)
class Routed:
    """A handler's output sent to a named port: the pipeline edges that follow that port take it."""

    port: str
    value: Any


def route_to(port: str, value: Any) -> Routed:
    """Sends ``value`` out on ``port`` instead of the default port."""
    return Routed(port, value)


def encode_output(value: Any) -> tuple[bytes, str]:
    """Turns what a handler returned into (output bytes, port).

    bytes go as they are, None as no bytes, anything else (a str too) as compact JSON (the
    same bytes as JavaScript's JSON.stringify for the same value, non-ASCII unescaped), as
    the TypeScript runtime does, so that the next stage can always read its input as JSON.
    Raises TypeError for a value JSON cannot hold.
    """
    port = ""
    if isinstance(value, Routed):
        port, value = value.port, value.value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value), port
    if value is None:
        return b"", port
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8"), port


class StageError(Exception):
    """An error a handler raises to choose the TaskError code (a gRPC code name) and whether
    a retry can cure it. Any other exception is code "UNKNOWN", retryable."""

    def __init__(self, code: str, message: str, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable if retryable is not None else code not in _NEVER_RETRYABLE


# Codes that say the input or the setup is wrong: running the same task again cannot help.
_NEVER_RETRYABLE = frozenset({"INVALID_ARGUMENT", "FAILED_PRECONDITION"})


def _task_error(exc: BaseException) -> task_pb2.TaskError:
    """The TaskError of a handler's exception: its gRPC code where it has one, else UNKNOWN."""
    code = "UNKNOWN"
    if isinstance(exc, StageError):
        return task_pb2.TaskError(code=exc.code, message=str(exc), retryable=exc.retryable)
    if isinstance(exc, grpc.RpcError) and callable(getattr(exc, "code", None)):
        code = exc.code().name  # a call to another gRPC service failed: keep its code
        details = exc.details() if callable(getattr(exc, "details", None)) else ""
        return task_pb2.TaskError(code=code, message=details or str(exc), retryable=code not in _NEVER_RETRYABLE)
    if isinstance(exc, TimeoutError):
        code = "DEADLINE_EXCEEDED"
    return task_pb2.TaskError(code=code, message=str(exc) or type(exc).__name__, retryable=True)


# ---------------------------------------------------------------------------- context


@dataclass
class TaskContext:
    """What a handler is told about the task it runs."""

    task_id: str
    pipeline: str
    stage: str
    #: Attempt number at this stage, from 1.
    attempt: int
    #: The task's headers; the W3C trace context is "traceparent"/"tracestate".
    headers: dict[str, str]
    #: Set on timeout, cancel, or when the router's stream closes. A handler that runs long
    #: waits on it (``ctx.cancelled.wait(seconds)``) or checks ``is_set()`` between steps.
    cancelled: threading.Event
    #: When this attempt must end, as time.time() seconds (the stage timeout or the task
    #: deadline, the earlier).
    deadline: float
    worker_id: str
    #: Why ``cancelled`` was set (empty until then).
    cancel_reason: str = ""
    #: The W3C traceparent to pass on to whatever the handler calls: this attempt's span when
    #: the worker traces, else the task's own header ("" when it has none).
    traceparent: str = ""
    _report: Callable[[str], None] | None = field(default=None, repr=False, compare=False)

    def remaining(self) -> float:
        """Seconds left before the deadline (0 when passed)."""
        return max(0.0, self.deadline - time.time())

    def progress(self, detail: str) -> None:
        """Reports progress of this attempt: a RUNNING -> RUNNING transition with ``detail``
        (cut to 1,024 characters), which StatusService keeps (the latest one per attempt) and
        Watch streams. Sent at most every 100 ms; what comes faster is coalesced into the
        latest, and dropped when the attempt ends first. Does nothing once it has ended."""
        if self._report is not None:
            self._report(detail)


Handler = Callable[[Payload, TaskContext], Any]

# ---------------------------------------------------------------------------- etcd


class _EtcdGateway:
    """The few calls a worker needs, over etcd's JSON gateway (etcd 3.4+: /v3/...).

    Only the standard library: int64 fields travel as JSON strings, keys and values as base64.
    """

    def __init__(self, endpoints: str, timeout_s: float = 3.0) -> None:
        self.endpoints = [e.strip() for e in endpoints.split(",") if e.strip()]
        if not self.endpoints:
            raise ValueError("no etcd endpoint given (--etcd host:port)")
        self.timeout_s = timeout_s

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POSTs to each endpoint in turn until one answers; raises the last error."""
        last: Exception | None = None
        data = json.dumps(body).encode()
        for ep in self.endpoints:
            url = ep if ep.startswith("http") else f"http://{ep}"
            req = urllib.request.Request(f"{url}{path}", data=data, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as res:
                    out = json.loads(res.read() or b"{}")
            except urllib.error.HTTPError as e:  # etcd answered with an error: no other endpoint helps
                try:
                    msg = json.loads(e.read()).get("message", str(e))
                except ValueError:
                    msg = str(e)
                raise EtcdError(f"etcd {path}: {msg}") from e
            except (OSError, ValueError) as e:  # could not reach this endpoint: try the next
                last = e
                continue
            if "error" in out:  # a streaming endpoint (keepalive) reports errors in the body
                raise EtcdError(f"etcd {path}: {out.get('message') or out['error']}")
            return out
        raise EtcdUnavailable(f"etcd cannot be reached at {','.join(self.endpoints)} ({last}); "
                              "check --etcd / DSAT_ETCD and that etcd is running")

    def grant(self, ttl_s: int) -> str:
        return str(self.call("/v3/lease/grant", {"TTL": ttl_s})["ID"])

    def put(self, key: str, value: str, lease: str) -> None:
        b64 = lambda s: base64.b64encode(s.encode()).decode()  # noqa: E731
        self.call("/v3/kv/put", {"key": b64(key), "value": b64(value), "lease": lease})

    def keepalive(self, lease: str) -> int:
        """Renews a lease once; the TTL left, 0 when the lease is gone."""
        out = self.call("/v3/lease/keepalive", {"ID": lease})
        return int(out.get("result", {}).get("TTL", 0))

    def revoke(self, lease: str) -> None:
        self.call("/v3/lease/revoke", {"ID": lease})


class EtcdError(Exception):
    """etcd answered, with an error."""


class EtcdUnavailable(EtcdError):
    """etcd could not be reached."""


class Registration:
    """A member's record in etcd under a lease with keep-alive.

    The key is ``<prefix>members/worker/<id>`` and the value the protobuf JSON of the Member.
    A keep-alive goes every TTL/3; when etcd says the lease is gone (TTL 0, or an error such
    as "lease not found"), it registers again under a new lease, with backoff, until it
    succeeds or is closed. close() revokes the lease, which deletes the record at once.
    """

    def __init__(self, etcd: _EtcdGateway, key: str, value: str, ttl_s: int, log: logging.Logger) -> None:
        self.key = key
        self._etcd = etcd
        self._value = value
        self._ttl_s = max(1, int(ttl_s))
        self._log = log
        self._lease: str | None = None
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._keep_alive, name="dsat-lease", daemon=True)

    def start(self) -> None:
        """Registers once (raises when etcd cannot be reached), then keeps the lease alive."""
        self._register()
        self._thread.start()

    def _register(self) -> None:
        lease = self._etcd.grant(self._ttl_s)
        try:
            self._etcd.put(self.key, self._value, lease)
        except Exception:
            self._try_revoke(lease)
            raise
        self._lease = lease
        self._log.info("registered", extra={"fields": {"key": self.key, "lease": lease}})

    def _keep_alive(self) -> None:
        interval = self._ttl_s / 3
        while not self._closed.wait(interval):
            lease = self._lease
            try:
                ttl = self._etcd.keepalive(lease) if lease else 0
            except EtcdUnavailable as e:
                # etcd is away: the lease may still live; try again at the next tick.
                self._log.warning("lease keep-alive failed", extra={"fields": {"error": str(e)}})
                continue
            except EtcdError:
                ttl = 0
            if ttl > 0 or self._closed.is_set():
                continue
            self._log.warning("lease lost; registering again", extra={"fields": {"lease": lease}})
            self._reregister()

    def _reregister(self) -> None:
        delay = 0.1
        while not self._closed.is_set():
            try:
                self._register()
                return
            except EtcdError as e:
                self._log.warning("registering again failed", extra={"fields": {"error": str(e)}})
                self._closed.wait(delay)
                delay = min(delay * 2, 2.0)

    def close(self) -> None:
        """Leaves the mesh at once: revokes the lease (the record goes with it)."""
        if self._closed.is_set():
            return
        self._closed.set()
        lease, self._lease = self._lease, None
        if lease:
            self._try_revoke(lease)

    def _try_revoke(self, lease: str) -> None:
        try:
            self._etcd.revoke(lease)
        except EtcdError as e:  # it lapses by itself within its TTL
            self._log.warning("lease revoke failed", extra={"fields": {"error": str(e)}})


# ---------------------------------------------------------------------------- timers


class _Timers:
    """One thread that runs callbacks at given monotonic times: a stage timeout per attempt
    without a thread per attempt."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, list[Any]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        threading.Thread(target=self._loop, name="dsat-timers", daemon=True).start()

    def at(self, when: float, fn: Callable[[], None]) -> list[Any]:
        """Runs fn at time.monotonic() == when; the handle given back cancels it."""
        entry = [fn]
        with self._cond:
            heapq.heappush(self._heap, (when, next(self._seq), entry))
            self._cond.notify()
        return entry

    @staticmethod
    def cancel(handle: list[Any]) -> None:
        handle[0] = None

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._cond.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
                if self._stopped:
                    return
                _, _, entry = heapq.heappop(self._heap)
            fn = entry[0]
            if fn is not None:
                try:
                    fn()
                except Exception:  # a timer must never kill the thread that runs all of them
                    _make_logger().exception("timer callback failed")


# ---------------------------------------------------------------------------- addresses

#: Hosts that mean "every interface": never an address to dial.
_WILDCARD_HOSTS = ("0.0.0.0", "::", "")
#: An --advertise value taken as it is: "[ipv6]:port" or "host:port" (sdk/src/server/serve.ts).
_HOST_PORT_RE = re.compile(r"\[.*\]:[0-9]+|[^:]+:[0-9]+")
#: The brackets an IPv6 --advertise value without a port may have (put back once, with the port).
_BRACKETS_RE = re.compile(r"^\[|\]\Z")
#: Linux ioctl requests and interface flags (<linux/sockios.h>, <net/if.h>).
_SIOCGIFFLAGS, _SIOCGIFADDR = 0x8913, 0x8915
_IFF_UP, _IFF_LOOPBACK, _IFF_RUNNING = 0x1, 0x8, 0x40


def first_external_ipv4() -> str | None:
    """This machine's first non-internal IPv4 address, as Node's ``os.networkInterfaces()``
    lists them for the TypeScript servers, or None when it has none.

    On Linux it asks the kernel, for each interface in index order (``socket.if_nameindex``),
    for its flags (ioctl SIOCGIFFLAGS) and its IPv4 address (ioctl SIOCGIFADDR), on a UDP
    socket that is never bound, connected or sent on; it skips interfaces that are not up and
    running and loopback ones (what Node calls internal), as Node does. It needs no network,
    no route and no DNS, and sees the interfaces of the network namespace it runs in (only
    ``lo`` in an empty one: None). Elsewhere it takes the first IPv4 address the host name
    resolves to (``getaddrinfo``) outside 127.0.0.0/8.
    """
    if sys.platform.startswith("linux"):
        import fcntl  # noqa: PLC0415 - Unix only

        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for _, name in socket.if_nameindex():
                    req = struct.pack("256s", name.encode()[:15])  # struct ifreq, name first
                    try:
                        flags = struct.unpack_from("H", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, req), 16)[0]
                        if flags & _IFF_LOOPBACK or flags & (_IFF_UP | _IFF_RUNNING) != _IFF_UP | _IFF_RUNNING:
                            continue
                        # ifr_addr, a sockaddr_in at offset 16: family, port, then the address.
                        return socket.inet_ntoa(fcntl.ioctl(s.fileno(), _SIOCGIFADDR, req)[20:24])
                    except OSError:
                        continue  # gone since it was listed, or no IPv4 address (EADDRNOTAVAIL)
        except OSError:
            return None
        return None
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
    except OSError:
        return None
    return next((str(i[4][0]) for i in infos if not str(i[4][0]).startswith("127.")), None)


def advertised_address(
    host: str,
    port: int,
    advertise: str = "",
    first_ipv4: Callable[[], str | None] = first_external_ipv4,
) -> str:
    """The host:port that a server listening on ``host``:``port`` tells others to dial, by the
    rules of the TypeScript servers (sdk/src/server/serve.ts ``advertisedAddress``):
    ``advertise`` when given ("host", with ``port``, or "host:port" as it is), else ``host``,
    else for a wildcard host (0.0.0.0, ::, "") the machine's first non-internal IPv4 address
    (``first_ipv4()``; 127.0.0.1 when there is none). An IPv6 host is put in brackets."""
    a = advertise.strip()
    if a:
        if _HOST_PORT_RE.fullmatch(a):
            return a
        if ":" in a:
            return f"[{_BRACKETS_RE.sub('', a)}]:{port}"
        return f"{a}:{port}"
    chosen = host
    if host in _WILDCARD_HOSTS:
        chosen = first_ipv4() or "127.0.0.1"
    return f"[{chosen}]:{port}" if ":" in chosen else f"{chosen}:{port}"


def bind_target(host: str, port: int) -> str:
    """What the server binds for ``host``:``port``, by the rules of the TypeScript servers
    (sdk/src/server/serve.ts ``bindTarget``): an empty host is every interface (0.0.0.0, as
    ``advertised_address`` reads it too), an IPv6 host is put in brackets."""
    h = "0.0.0.0" if host.strip() == "" else host
    return f"[{h}]:{port}" if ":" in h and not h.startswith("[") else f"{h}:{port}"


# ---------------------------------------------------------------------------- worker

# The FSM states a worker reports (dsat.v1.State).
DISPATCHED = task_pb2.STATE_DISPATCHED
RUNNING = task_pb2.STATE_RUNNING
SUCCEEDED = task_pb2.STATE_SUCCEEDED
FAILED = task_pb2.STATE_FAILED
TIMED_OUT = task_pb2.STATE_TIMED_OUT
CANCELLED = task_pb2.STATE_CANCELLED

#: Progress of one attempt goes at most this often (seconds); faster calls keep only the latest.
_PROGRESS_INTERVAL_S = 0.1
#: Longest progress detail sent, in characters.
_MAX_PROGRESS_DETAIL = 1024


def _now() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


def _ns(ts: Timestamp) -> int:
    return ts.seconds * 1_000_000_000 + ts.nanos


def _state_name(state: int) -> str:
    """"RUNNING" for STATE_RUNNING: the name the TypeScript side gives a state."""
    return task_pb2.State.Name(state).removeprefix("STATE_")


# ---------------------------------------------------------------------------- tracing


def start_tracing(service_name: str = "dsat-worker") -> otlp_tracing.Tracing:
    """Starts tracing when the OTEL_* variables ask for it, by the rules of the TypeScript
    processes (otlp_tracing.tracing_configured): each attempt's span then goes over OTLP/HTTP,
    with service.name from OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES, else
    ``service_name``. Call it before Worker.start, and ``shutdown()`` what it returns after
    drain() or close(), so that the spans still buffered leave. Starts nothing when off."""
    return otlp_tracing.start_tracing(service_name, PROTOCOL_VERSION, log=_make_logger())


class _AttemptSpan:
    """The span of one attempt, ``run <stage>`` (CONSUMER), as the TypeScript worker makes it
    (sdk/src/telemetry/spans.ts AttemptSpan): a child of the context in the task's
    traceparent header (the router's dispatch span, or the client's), with each transition
    this worker makes as an event named after the state it enters, at the transition's time,
    and at the end dsat.state, the error, and status ERROR for anything but SUCCEEDED."""

    __slots__ = ("span",)

    def __init__(self, tracer: otlp_tracing.Tracer, a: worker_pb2.Assignment, worker_id: str, start_ns: int) -> None:
        task = a.task
        parent = otlp_tracing.parse_traceparent(task.headers.get("traceparent"), task.headers.get("tracestate"))
        self.span = tracer.start_span(
            f"run {a.stage}",
            kind=otlp_tracing.SPAN_KIND_CONSUMER,
            parent=parent,
            attributes={
                "dsat.task.id": task.id,
                "dsat.pipeline": task.pipeline,
                "dsat.stage": a.stage,
                "dsat.attempt": a.attempt,
                "dsat.worker.id": worker_id,
            },
            start_ns=start_ns,
        )

    def transition(self, t: task_pb2.Transition) -> None:
        """Records a transition this worker made."""
        state = _state_name(t.to)
        # The span carries the task, stage, attempt and worker: the event says what is new.
        attrs: dict[str, Any] = {"dsat.state": state}
        if t.port:
            attrs["dsat.port"] = t.port
        if t.HasField("error"):
            attrs["dsat.error.code"] = t.error.code
            attrs["dsat.error.message"] = t.error.message
        self.span.add_event(state, attrs, _ns(t.time))

    def end(self, t: task_pb2.Transition) -> None:
        """Records the transition that ends the attempt, and ends the span."""
        self.transition(t)
        state = _state_name(t.to)
        self.span.set_attribute("dsat.state", state)
        if t.HasField("error"):
            self.span.set_attribute("dsat.error.code", t.error.code)
            self.span.set_attribute("dsat.error.message", t.error.message)
        if t.to != SUCCEEDED:
            self.span.set_error(f"{t.error.code}: {t.error.message}" if t.HasField("error") else state)
        self.span.end(_ns(t.time))


class _RouterLink:
    """The Process stream from one router. Transitions queue here and go up in batches:
    whatever piled up while the stream was busy leaves in one ProcessResponse, with the load."""

    def __init__(self, router_id: str, load: Callable[[], member_pb2.Load], max_bytes: int) -> None:
        self.router_id = router_id
        self._load = load
        self._max_bytes = max_bytes
        self._pending: list[task_pb2.Transition] = []
        self._cond = threading.Condition()
        self.closed = False

    def send(self, t: task_pb2.Transition) -> None:
        with self._cond:
            if self.closed:
                return
            self._pending.append(t)
            self._cond.notify()

    def close(self) -> None:
        """Ends the stream once what is queued has gone."""
        with self._cond:
            self.closed = True
            self._cond.notify()

    def responses(self, hello: member_pb2.Member) -> Iterator[worker_pb2.ProcessResponse]:
        """What the server writes: hello and load first, then batches until closed."""
        yield worker_pb2.ProcessResponse(hello=hello, load=self._load())
        while True:
            with self._cond:
                while not self._pending and not self.closed:
                    self._cond.wait()
                batch, self._pending = self._pending, []
                closed = self.closed
            # A batch goes in as many messages as it takes to keep each under the router's
            # message limit (two outputs of 3 MiB do not fit in one).
            start, size = 0, 0
            for i, t in enumerate(batch):
                n = t.ByteSize() + 16
                if i > start and size + n > self._max_bytes - 1024:
                    yield worker_pb2.ProcessResponse(transitions=batch[start:i], load=self._load())
                    start, size = i, 0
                size += n
            if start < len(batch):
                yield worker_pb2.ProcessResponse(transitions=batch[start:], load=self._load())
            if closed:
                return


@dataclass(eq=False)
class _Attempt:
    """One attempt of one task at this worker's stage, while it runs."""

    #: The stream it came on, its task, stage and attempt: a router cancels only what it gave,
    #: and two routers that give the same attempt (one took the task over from the other,
    #: whose run it could not know) get two runs, each answered on its own stream.
    key: tuple[_RouterLink, str, str, int]
    assignment: worker_pb2.Assignment
    link: _RouterLink
    ctx: TaskContext
    started: float = field(default_factory=time.monotonic)
    done: bool = False
    timer: list[Any] | None = None
    #: None when the worker does not trace.
    span: _AttemptSpan | None = None
    #: Held while a progress or the end is sent, so that no progress goes after the end.
    lock: threading.Lock = field(default_factory=threading.Lock)
    progress_at: float = float("-inf")
    #: The latest progress not sent yet, waiting for progress_timer.
    progress_detail: str | None = None
    progress_timer: list[Any] | None = None


class Worker(worker_pb2_grpc.WorkerServiceServicer):
    """A worker: a WorkerService server whose every task runs inside the FSM wrapper, and its
    registration in etcd.

    Arguments (defaults as in the TypeScript runtime):
      stage: the stage served. handler: ``handler(payload: Payload, ctx: TaskContext)``.
      concurrency: handlers run at once (default 1). etcd: "host:port[,host:port]" (default
      $DSAT_ETCD, else 127.0.0.1:2379). host/port: where to listen (default 127.0.0.1, 0 = any
      free port). advertise: the address registered in etcd for routers to dial, "host" (with
      the port bound) or "host:port" as it is (a port mapped elsewhere, as in a container);
      default "": ``host``, or for a wildcard host (0.0.0.0, ::) this machine's first
      non-internal IPv4 address, 127.0.0.1 when it has none (``advertised_address``).
      lease_ttl_s: lease TTL in seconds (default 5). prefix: etcd key prefix (default
      "/dsat/v1/"). id: member id (default "<stage>-<host>-<pid>-<4 hex>").
      default_timeout_ms: an attempt's timeout when the router sends none (default 30000).
      protocol_version: announced version (default PROTOCOL_VERSION; change it only to test
      refusals). drain_timeout_s: how long drain waits for running tasks (default 30).
      max_output_bytes: the largest output a handler may return; a larger one makes the
      attempt FAILED with RESOURCE_EXHAUSTED (default 4 MiB, the router's payload limit).
    """

    def __init__(
        self,
        stage: str,
        handler: Handler,
        *,
        concurrency: int = 1,
        etcd: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        advertise: str = "",
        lease_ttl_s: int = 5,
        prefix: str = "/dsat/v1/",
        id: str | None = None,  # noqa: A002 - the member's id, as the protocol names it
        default_timeout_ms: int = 30_000,
        protocol_version: str = PROTOCOL_VERSION,
        drain_timeout_s: float = 30.0,
        max_output_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        if not stage:
            raise ValueError("Worker: stage is required")
        if not callable(handler):
            raise ValueError("Worker: handler must be callable")
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"Worker: concurrency must be a whole number >= 1, not {concurrency}")
        parse_version(protocol_version)
        self.stage = stage
        self.handler = handler
        self.concurrency = concurrency
        self.protocol_version = protocol_version
        self.default_timeout_ms = default_timeout_ms
        self.drain_timeout_s = drain_timeout_s
        self.id = id or f"{stage}-{socket.gethostname()}-{os.getpid()}-{random.getrandbits(16):04x}"
        self.address = ""
        self._host, self._port, self._advertise = host, port, advertise
        self._prefix = prefix if prefix.endswith("/") else prefix + "/"
        self._etcd = _EtcdGateway(etcd or os.environ.get("DSAT_ETCD") or "127.0.0.1:2379")
        self._lease_ttl_s = lease_ttl_s
        self._max_output_bytes = max_output_bytes
        # Room for one output at its limit plus the rest of the message, as the TypeScript
        # servers and clients allow (sdk/src/transport.ts MAX_MESSAGE_BYTES).
        self._max_message_bytes = max_output_bytes + 64 * 1024
        self._log = _make_logger()

        self._lock = threading.Lock()  # guards _running, _links, _draining, _avg_run_ms
        self._running: dict[tuple[_RouterLink, str, str, int], _Attempt] = {}
        self._links: set[_RouterLink] = set()
        self._draining = False
        self._avg_run_ms = 0.0
        self._idle = threading.Condition(self._lock)  # notified when _running empties
        # At most `concurrency` handlers at once; the router never sends more than the
        # capacity we announce, so the queue in front of the pool stays short.
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="dsat-handler")
        self._timers = _Timers()
        self._server: grpc.Server | None = None
        self._health = HealthService(["dsat.v1.WorkerService"])
        self._registration: Registration | None = None
        self._member: member_pb2.Member | None = None
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Serves, then registers. Raises when the port is taken or etcd cannot be reached."""
        # One server thread per open Process stream (one per router) plus one reader each;
        # 32 routers at once is far more than a satellite has.
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=32, thread_name_prefix="dsat-grpc"),
            options=[
                ("grpc.max_receive_message_length", self._max_message_bytes),
                ("grpc.max_send_message_length", self._max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
        )
        worker_pb2_grpc.add_WorkerServiceServicer_to_server(self, self._server)
        # Health and reflection, as on every dsat server (grpcurl, probes).
        self._health.add_to_server(self._server)
        ReflectionService(["dsat.v1.WorkerService", "grpc.health.v1.Health",
                           "grpc.reflection.v1.ServerReflection"]).add_to_server(self._server)
        target = bind_target(self._host, self._port)
        bind_host = target[: target.rindex(":")]
        bound = self._server.add_insecure_port(target)
        if bound == 0:
            raise OSError(f"cannot listen on {bind_host}:{self._port}")
        self._server.start()
        # What routers dial, never a wildcard such as 0.0.0.0 (advertised_address).
        self.address = advertised_address(self._host, bound, self._advertise)
        started = _now()
        self._member = member_pb2.Member(
            id=self.id,
            kind=member_pb2.MEMBER_KIND_WORKER,
            address=self.address,
            version=self.protocol_version,
            stage=self.stage,
            capacity=self.concurrency,
            started_at=started,
            pid=os.getpid(),
            host=socket.gethostname(),
            runtime=f"python/{platform.python_version()}",
        )
        value = json.dumps(json_format.MessageToDict(self._member), separators=(",", ":"))
        key = f"{self._prefix}members/worker/{self.id}"
        self._registration = Registration(self._etcd, key, value, self._lease_ttl_s, self._log)
        try:
            self._registration.start()
        except Exception:
            self._server.stop(0)
            raise
        self._health.set_all(SERVING)
        self._log.info("worker serving", extra={"fields": {"member": self.id, "address": self.address,
                                                           "listen": f"{bind_host}:{bound}"}})

    @property
    def in_flight(self) -> int:
        return len(self._running)

    def drain(self) -> None:
        """Leaves the mesh (no new task comes), waits for running tasks up to drain_timeout_s,
        then closes: what SIGTERM does."""
        with self._lock:
            if self._closed:
                return
            self._draining = True
        # Leave first (health, then etcd): routers see the record go and send nothing new; the
        # streams stay open so that what runs can still report.
        self._health.set_all(NOT_SERVING)
        if self._registration:
            self._registration.close()
        deadline = time.monotonic() + self.drain_timeout_s
        with self._idle:
            while self._running and time.monotonic() < deadline:
                self._idle.wait(deadline - time.monotonic())
        self.close()

    def close(self) -> None:
        """Closes at once: running tasks are cancelled and their results dropped."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._draining = True
            links = list(self._links)
            dropped = list(self._running.values())
            for a in dropped:
                a.done = True
            self._running.clear()
        self._health.set_all(NOT_SERVING)
        for a in dropped:
            self._abandon(a, f"worker {self.id} closed")
        if self._registration:
            self._registration.close()
        # Ending each stream after its queue has gone lets routers read every last transition.
        for link in links:
            link.close()
        if self._server:
            self._server.stop(grace=2).wait()
        self._timers.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ Process

    def _load(self) -> member_pb2.Load:
        return member_pb2.Load(in_flight=len(self._running), capacity=self.concurrency, avg_run_ms=self._avg_run_ms)

    def Process(self, request_iterator, context):  # noqa: N802 - the RPC's name
        """One router's stream: checks its version, says hello, then reads assignments and
        cancels on a thread of its own while this generator writes what goes up."""
        md = dict(context.invocation_metadata())
        router_version = str(md.get("dsat-version", ""))
        router_id = str(md.get("dsat-router-id", "") or "a router")
        if router_version and not is_compatible(router_version, self.protocol_version):
            self._log.warning("refused a router of another version",
                              extra={"fields": {"router": router_id, "routerVersion": router_version}})
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"router {router_id} runs dsat {router_version} but worker {self.id} runs "
                f"{self.protocol_version}: their X.Y must match",
            )
        link = _RouterLink(router_id, self._load, self._max_message_bytes)
        with self._lock:
            draining = self._draining
            if not draining:
                self._links.add(link)
        if draining:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"worker {self.id} is draining and takes no new stream")

        def on_end(why: str) -> None:
            # The router closed the stream or went away: stop what still runs for it; nobody
            # would read the results (the router gives those attempts to another worker).
            with self._lock:
                self._links.discard(link)
                mine = [a for a in self._running.values() if a.link is link]
                for a in mine:
                    a.done = True  # a result that comes now is dropped by _finish
                    del self._running[a.key]
                if not self._running:
                    self._idle.notify_all()
            for a in mine:
                self._abandon(a, why)
            link.close()

        # Called when the RPC ends for any reason, so that the writer below never waits forever.
        context.add_callback(lambda: on_end(f"router {router_id} went away"))

        def read() -> None:
            try:
                for req in request_iterator:
                    for a in req.assignments:
                        if not self._draining:  # draining: no new task (the router knows: we left etcd)
                            self._accept(a, link)
                    for c in req.cancels:
                        self._cancel(c, link)
                why = f"router {router_id} closed its stream"
            except Exception as e:  # the stream broke
                why = f"the stream from router {router_id} broke ({e})"
            on_end(why)

        threading.Thread(target=read, name=f"dsat-read-{router_id}", daemon=True).start()
        yield from link.responses(self._member)

    # ------------------------------------------------------------------ the FSM wrapper

    def _transition(self, a: worker_pb2.Assignment, frm: int, to: int, **extra: Any) -> task_pb2.Transition:
        return task_pb2.Transition(
            task_id=a.task.id, stage=a.stage, attempt=a.attempt, time=_now(),
            member_id=self.id, worker_id=self.id, **{"from": frm}, to=to, **extra,
        )

    def _accept(self, a: worker_pb2.Assignment, link: _RouterLink) -> None:
        """Starts one attempt: RUNNING now, the timeout armed, the handler queued on the pool."""
        if not a.HasField("task"):
            return
        task = a.task
        key = (link, task.id, a.stage, a.attempt)
        if a.stage != self.stage:
            link.send(self._transition(a, DISPATCHED, FAILED, error=task_pb2.TaskError(
                code="FAILED_PRECONDITION",
                message=f'worker {self.id} serves stage "{self.stage}", not "{a.stage}"',
                retryable=True,
            )))
            return
        timeout_ms = (a.timeout.seconds * 1000 + a.timeout.nanos / 1e6) if a.HasField("timeout") \
            else self.default_timeout_ms
        deadline = time.time() + timeout_ms / 1000
        by_deadline = False
        if task.HasField("deadline"):
            d = task.deadline.seconds + task.deadline.nanos / 1e9
            if d < deadline:
                deadline, by_deadline = d, True
        ctx = TaskContext(
            task_id=task.id, pipeline=task.pipeline, stage=a.stage, attempt=a.attempt,
            headers=dict(task.headers), cancelled=threading.Event(), deadline=deadline, worker_id=self.id,
            traceparent=task.headers.get("traceparent", ""),
        )
        attempt = _Attempt(key=key, assignment=a, link=link, ctx=ctx)
        ctx._report = functools.partial(self._progress, attempt)
        with self._lock:
            if key in self._running:
                return  # the same assignment twice on one stream: it runs once
            self._running[key] = attempt
        running = self._transition(a, DISPATCHED, RUNNING)
        tracer = otlp_tracing.active_tracer()  # None when tracing is off: then no span is made
        if tracer is not None:
            attempt.span = _AttemptSpan(tracer, a, self.id, _ns(running.time))
            attempt.span.transition(running)
            ctx.traceparent = attempt.span.span.context.traceparent()
        link.send(running)

        if by_deadline:
            message = f'task {task.id} passed its deadline at stage "{a.stage}"'
        else:
            message = f'stage "{a.stage}" ran over its timeout of {_fmt_ms(timeout_ms)} ms (attempt {a.attempt})'

        def overrun() -> None:
            # A late result of this attempt is dropped: _finish runs once per attempt.
            error = task_pb2.TaskError(code="DEADLINE_EXCEEDED", message=message, retryable=not by_deadline)
            if self._finish(attempt, TIMED_OUT, error=error):
                self._signal(attempt, message)

        attempt.timer = self._timers.at(time.monotonic() + max(0.0, deadline - time.time()), overrun)
        self._pool.submit(self._call, attempt)

    def _call(self, attempt: _Attempt) -> None:
        """Runs the handler on a pool thread and reports how it ended."""
        if attempt.done:
            return  # timed out or cancelled while it waited for a free thread
        a = attempt.assignment
        try:
            result = self.handler(Payload(a.task.payload), attempt.ctx)
            output, port = encode_output(result)
        except Exception as e:  # noqa: BLE001 - any error of a handler is the attempt's failure
            self._finish(attempt, FAILED, error=_task_error(e))
            return
        if len(output) > self._max_output_bytes:
            # Sent anyway, it would break the stream and every attempt would break it again.
            self._finish(attempt, FAILED, error=task_pb2.TaskError(
                code="RESOURCE_EXHAUSTED", retryable=False,
                message=f'stage "{a.stage}" output {len(output)} bytes, over the limit of {self._max_output_bytes} bytes',
            ))
            return
        self._finish(attempt, SUCCEEDED, output=output, port=port)

    def _finish(self, attempt: _Attempt, to: int, **extra: Any) -> bool:
        """Ends an attempt with its one terminal transition; False when it had ended already."""
        with attempt.lock:
            with self._lock:
                if attempt.done:
                    return False
                attempt.done = True
                if self._running.get(attempt.key) is attempt:
                    del self._running[attempt.key]
                ms = (time.monotonic() - attempt.started) * 1000
                self._avg_run_ms = ms if self._avg_run_ms == 0 else self._avg_run_ms * 0.9 + ms * 0.1
                if not self._running:
                    self._idle.notify_all()
            if attempt.timer:
                _Timers.cancel(attempt.timer)
            if attempt.progress_timer:
                _Timers.cancel(attempt.progress_timer)  # a progress still waiting is dropped
            end = self._transition(attempt.assignment, RUNNING, to, **extra)
            if attempt.span is not None:
                attempt.span.end(end)
            attempt.link.send(end)
        return True

    def _progress(self, attempt: _Attempt, detail: str) -> None:
        """ctx.progress: RUNNING -> RUNNING with the detail, now when the last one went at
        least 100 ms ago, else once those 100 ms have passed, with the latest detail by then."""
        with attempt.lock:
            if attempt.done:
                return
            attempt.progress_detail = str(detail)[:_MAX_PROGRESS_DETAIL]
            if attempt.progress_timer is not None:
                return  # one is due already: it takes this detail
            wait = attempt.progress_at + _PROGRESS_INTERVAL_S - time.monotonic()
            if wait <= 0:
                self._send_progress(attempt)
            else:
                due = functools.partial(self._progress_due, attempt)
                attempt.progress_timer = self._timers.at(time.monotonic() + wait, due)

    def _progress_due(self, attempt: _Attempt) -> None:
        with attempt.lock:
            self._send_progress(attempt)

    def _send_progress(self, attempt: _Attempt) -> None:
        """Sends the waiting progress of an attempt; the caller holds attempt.lock."""
        attempt.progress_timer = None
        if attempt.done or attempt.progress_detail is None:
            return
        t = self._transition(attempt.assignment, RUNNING, RUNNING, detail=attempt.progress_detail)
        attempt.progress_detail = None
        attempt.progress_at = time.monotonic()
        if attempt.span is not None:
            attempt.span.transition(t)
        attempt.link.send(t)

    def _cancel(self, c: worker_pb2.Cancel, link: _RouterLink) -> None:
        attempt = self._running.get((link, c.task_id, c.stage, c.attempt))
        if attempt is None:
            return
        message = c.reason or "cancelled"
        if self._finish(attempt, CANCELLED, error=task_pb2.TaskError(code="CANCELLED", message=message)):
            self._signal(attempt, message)

    def _abandon(self, attempt: _Attempt, why: str) -> None:
        """Stops an attempt whose result nobody will read: no transition is sent."""
        attempt.done = True
        if attempt.timer:
            _Timers.cancel(attempt.timer)
        if attempt.progress_timer:
            _Timers.cancel(attempt.progress_timer)
        self._signal(attempt, why)

    @staticmethod
    def _signal(attempt: _Attempt, why: str) -> None:
        attempt.ctx.cancel_reason = why
        attempt.ctx.cancelled.set()


def _fmt_ms(ms: float) -> str:
    """Milliseconds as JavaScript prints them: 500, not 500.0."""
    return str(int(ms)) if float(ms).is_integer() else repr(ms)
