"""SIGTERM handled as Ctrl-C is: raised where the process is, as `Terminated` (a KeyboardInterrupt),
so that whatever runs is recorded as interrupted and can be resumed; and passed on to the child
processes a command started (tune's trial processes), which would otherwise run on, orphaned."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so the run is recorded as interrupted."""


def sigterm_as_interrupt() -> None:
    """From now on, SIGTERM raises `Terminated` in the main thread (call it from the main thread)."""

    def handler(signum, frame):
        raise Terminated(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def signal_for(err: BaseException) -> int:
    """The signal that passes `err` on to a child process: SIGTERM for `Terminated`, else SIGINT."""
    return signal.SIGTERM if isinstance(err, Terminated) else signal.SIGINT


@contextmanager
def deferred():
    """SIGTERM and SIGINT that arrive inside the block are raised when it ends, not in its middle: a
    write to the study's database is not cut in half (an interrupt inside SQLAlchemy can leave the
    connection unusable, and the trial could then not be told it failed). Outside the main thread,
    where signals are not handled, the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: held.append(signum)) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if held:
            signal.raise_signal(held[0])  # to the handler the block interrupted (an outer `deferred` holds it again)
