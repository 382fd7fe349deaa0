"""Run a function in a child process, so that a crash of native code is one failed test, not a dead suite."""

from __future__ import annotations

import multiprocessing
import traceback
from collections.abc import Callable
from typing import Any


def _child(conn: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        conn.send(("ok", fn(*args)))
    except BaseException:
        conn.send(("error", traceback.format_exc()))


def run_isolated(fn: Callable[..., Any], *args: Any, timeout: float = 120.0) -> Any:
    """fn(*args) in a fresh child process; returns its result, re-raises its exception, fails on a crash."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, fn, args))
    proc.start()
    child.close()
    if not parent.poll(timeout):
        proc.kill()
        proc.join()
        raise AssertionError(f"isolated call of {fn.__name__} gave no result within {timeout}s "
                             f"(exit code {proc.exitcode})")
    try:
        status, value = parent.recv()
    except EOFError:
        proc.join()
        raise AssertionError(f"isolated call of {fn.__name__} crashed the child process "
                             f"(exit code {proc.exitcode})") from None
    proc.join()
    if status == "error":
        raise AssertionError(f"isolated call of {fn.__name__} raised:\n{value}")
    return value
