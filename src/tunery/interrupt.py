"""SIGTERM handled as Ctrl-C is: raised where the process is, as `Terminated` (a KeyboardInterrupt),
so that whatever runs is recorded as interrupted and can be resumed; and passed on to the child
processes a command started (tune's trial processes), which would otherwise run on, orphaned."""

from __future__ import annotations

import signal


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
