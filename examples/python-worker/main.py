#!/usr/bin/python3
"""Runs one Python worker process for one stage:

    /usr/bin/python3 examples/python-worker/main.py --etcd 127.0.0.1:2379 --stage shout \\
        --handler stages:shout --concurrency 4

It prints one line `ready {"kind":"worker","id":…,"address":…,"pid":…,"tracing":…}` on stdout
once it serves, drains on SIGTERM (leaves etcd, lets running tasks finish, exits 0), closes at
once on SIGINT, exporting the spans it still buffers either way, and exits 1 with a message on
stderr when it cannot start. Flags fall back on the same environment variables as the
TypeScript services (DSAT_ETCD, DSAT_STAGE, …); the OTEL_* variables turn tracing on as they
do for them (service name "dsat-worker" unless OTEL_SERVICE_NAME says otherwise).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # dsat_worker, stages, and gen/ beside them

from dsat_worker import PROTOCOL_VERSION, Worker, start_tracing  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(description="dsat worker (Python reference runtime)")
    p.add_argument("--etcd", default=env("DSAT_ETCD", "127.0.0.1:2379"), help="etcd endpoints host:port[,host:port]")
    p.add_argument("--stage", default=env("DSAT_STAGE", ""), help="the stage served (required)")
    p.add_argument("--handler", default=env("DSAT_HANDLER", ""),
                   help="module:function, the module found beside main.py or on PYTHONPATH (required)")
    p.add_argument("--concurrency", type=int, default=int(env("DSAT_CONCURRENCY", "1")), help="tasks at once")
    p.add_argument("--lease-ttl", type=int, default=int(env("DSAT_LEASE_TTL", "5")), help="lease TTL, seconds")
    p.add_argument("--host", default=env("DSAT_HOST", "127.0.0.1"), help="interface to listen on")
    p.add_argument("--advertise", default=env("DSAT_ADVERTISE", ""),
                   help='the address registered for routers to dial: "host" (with the port bound) or "host:port"; '
                        "default: the --host, or for 0.0.0.0 or :: this machine's first non-internal IPv4 address "
                        "(127.0.0.1 when it has none)")
    p.add_argument("--port", type=int, default=int(env("DSAT_PORT", "0")), help="port; 0 picks a free one")
    p.add_argument("--prefix", default=env("DSAT_PREFIX", "/dsat/v1/"), help="etcd key prefix")
    p.add_argument("--id", default=None, help="member id (default <stage>-<host>-<pid>-<hex>)")
    p.add_argument("--drain-timeout", type=float, default=30.0, help="seconds SIGTERM waits for running tasks")
    p.add_argument("--protocol-version", default=PROTOCOL_VERSION, help="announced version (to test refusals)")
    args = p.parse_args(argv)
    if not args.stage or not args.handler:
        p.error("--stage and --handler are required")
    return args


def load_handler(spec: str):
    module_name, _, fn_name = spec.partition(":")
    if not module_name or not fn_name:
        raise ValueError(f'--handler must be "module:function", not "{spec}"')
    fn = getattr(importlib.import_module(module_name), fn_name, None)
    if not callable(fn):
        raise ValueError(f'module "{module_name}" has no function "{fn_name}"')
    return fn


def main(argv: list[str]) -> None:
    # SIGTERM and SIGINT are blocked in every thread (threads inherit the mask of the one that
    # starts them) and taken by sigwait below, so no handler ever runs inside a lock.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    args = parse_args(argv)
    # Before the worker, so that its first attempt has a tracer; a no-op when OTEL_* ask for no traces.
    tracing = start_tracing("dsat-worker")
    try:
        worker = Worker(
            stage=args.stage,
            handler=load_handler(args.handler),
            concurrency=args.concurrency,
            etcd=args.etcd,
            host=args.host,
            port=args.port,
            advertise=args.advertise,
            lease_ttl_s=args.lease_ttl,
            prefix=args.prefix,
            id=args.id,
            protocol_version=args.protocol_version,
            drain_timeout_s=args.drain_timeout,
        )
        worker.start()
    except Exception as e:  # noqa: BLE001 - any reason not to start is said in one line
        sys.stderr.write(f"dsat worker: {e}\n")
        sys.stderr.flush()
        tracing.shutdown(1.0)
        os._exit(1)
    ready = {"kind": "worker", "id": worker.id, "address": worker.address, "pid": os.getpid(),
             "tracing": tracing.tracing}
    sys.stdout.write(f"ready {json.dumps(ready, separators=(',', ':'))}\n")
    sys.stdout.flush()

    sig = signal.sigwait({signal.SIGTERM, signal.SIGINT})
    if sig == signal.SIGTERM:
        worker.drain()
    else:
        worker.close()
    # The spans of what just ended are still buffered: export them before going (at most 10 s).
    tracing.shutdown(10.0)
    sys.stdout.flush()
    sys.stderr.flush()
    # os._exit: a handler that ignores its cancel event must not keep the process alive.
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
