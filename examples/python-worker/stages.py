"""Example handlers for the Python reference worker; test/python-worker.test.ts runs them.

A handler takes (payload, ctx): payload.bytes / .text() / .json() is the stage's input, ctx a
dsat_worker.TaskContext. What it returns is the stage's output (see dsat_worker.encode_output);
what it raises makes the attempt FAILED with the exception's message.
"""

from __future__ import annotations

from typing import Any

from dsat_worker import Payload, TaskContext


def shout(payload: Payload, ctx: TaskContext) -> dict[str, Any]:
    """Stage "shout": {"v": n, "path": [...]} -> {"v": n * 10, "path": [..., this worker]}."""
    t = payload.json()
    return {"v": t["v"] * 10, "path": [*t["path"], ctx.worker_id]}


def explode(payload: Payload, ctx: TaskContext) -> None:
    """Always fails, with a message that says which input."""
    raise ValueError(f"python boom on {payload.text()}")


def dawdle(payload: Payload, ctx: TaskContext) -> str:
    """Runs for 60 s unless cancelled first (a timeout, a cancel, the router leaving)."""
    ctx.cancelled.wait(60)
    return "late"


def hold(payload: Payload, ctx: TaskContext) -> dict[str, Any]:
    """Holds the task for a while, then says who held it. The payload is the time in ms, as a
    number or as {"ms": n} like the TypeScript fixture (default 300)."""
    v = payload.json()
    ms = v.get("ms", 300) if isinstance(v, dict) else (300 if v is None else v)
    if ctx.cancelled.wait(ms / 1000):
        raise RuntimeError(f"cancelled: {ctx.cancel_reason}")
    return {"held": ms, "by": ctx.worker_id}


def progress3(payload: Payload, ctx: TaskContext) -> bytes:
    """Reports progress "1/3", "2/3", "3/3", each after 300 ms of work, then returns its input
    as it is. A payload {"ms": n} sets the time (as the TypeScript fixture `progress` takes it)."""
    try:
        v = payload.json()
    except ValueError:  # any input will do: it goes out as it came
        v = None
    ms = v.get("ms", 300) if isinstance(v, dict) else 300
    for i in range(1, 4):
        if ctx.cancelled.wait(ms / 1000):
            raise RuntimeError(f"cancelled: {ctx.cancel_reason}")
        ctx.progress(f"{i}/3")
    return payload.bytes


def progress_burst(payload: Payload, ctx: TaskContext) -> None:
    """Reports "1" to "100" at once (the first goes, the rest are coalesced into "100", sent
    100 ms later), then after 300 ms "last" and at once "dropped", and returns: "dropped" is
    still waiting for its 100 ms when the attempt ends, so it never goes."""
    for i in range(1, 101):
        ctx.progress(str(i))
    if ctx.cancelled.wait(0.3):
        raise RuntimeError(f"cancelled: {ctx.cancel_reason}")
    ctx.progress("last")
    ctx.progress("dropped")
