"""The HTTP/1.1 connection handling of ``tunery serve``: uvicorn's h11 protocol, with limits.

Why h11 and not httptools (which ``uvicorn[standard]`` would pick, being faster): httptools (llhttp)
has no limit on the size of the request line and headers, so uvicorn keeps appending whatever a
client sends before the blank line: one connection sending an endless header grows the server
without bound, and a 10 MB ``Authorization`` header reaches the app. h11 refuses a request head
larger than ``max_incomplete_event_size`` (uvicorn's ``h11_max_incomplete_event_size``, set here to
``limits.max_header_bytes``) as soon as that much has arrived, so a connection costs at most that
much memory before it is answered and closed. Parsing in Python costs some microseconds per request,
small next to a model's forward pass.

What this class adds to uvicorn's ``H11Protocol``:

- every error found below the app (a request head too large, a bad header byte, a malformed
  request line) is answered with the API's JSON error shape, ``{"error": {"code", "message"}}``,
  with the status h11 suggests (431 for a head too large, else 400), instead of uvicorn's plain text;
- a header timeout: a connection must deliver its request head within
  ``connections.header_timeout_seconds`` of connecting (or of the first byte of its next request),
  however slowly it trickles, else it gets 408 (if it sent anything) and is closed; uvicorn only
  times out idle kept-alive connections, and a trickle of bytes resets even that;
- a bound on open connections per process, ``connections.max_connections``: a new connection past
  it closes the connection that has waited longest for its request head (a slow or idle client),
  else itself, so slow clients cannot keep well-behaved ones out or exhaust file descriptors.
  (uvicorn's ``limit_concurrency`` is not used: it answers 503 to a request arriving past the limit
  and counts slow connections as much as busy ones, so a few hundred slow clients would turn every
  well-behaved request away, and idle sockets that never send a request would still hold their
  file descriptors.)

Body read timeouts and the header count are checked in the app's ASGI edge (see app.py).
"""

from __future__ import annotations

import functools
import json
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from tunery.serve.settings import ServeConfig

log = logging.getLogger(__name__)

# After answering an error before the request was read to its end: how long, and how many more
# bytes, to read and drop before closing (see Protocol._close_after_error)
LINGER_SECONDS, LINGER_BYTES = 2.0, 1024 * 1024


def error_response(status: int, code: str, message: str) -> bytes:
    """A complete HTTP/1.1 response with the JSON error body, closing the connection."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    reason = {400: "Bad Request", 408: "Request Timeout", 431: "Request Header Fields Too Large",
              503: "Service Unavailable"}.get(status, "Error")
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
    return head.encode("ascii") + body


class _Connection(h11.Connection):
    """h11's connection, remembering the protocol error it raised (uvicorn's handler drops it)."""

    error: h11.RemoteProtocolError | None = None

    def next_event(self):
        try:
            return super().next_event()
        except h11.RemoteProtocolError as e:
            self.error = e
            raise


class Protocol(H11Protocol):
    """uvicorn's h11 protocol with JSON errors, a header timeout and a connection bound (see the module)."""

    _last_shed_log = float("-inf")

    def __init__(self, *args, header_timeout: float, max_connections: int, max_header_bytes: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.conn = _Connection(h11.SERVER, max_header_bytes)
        self.header_timeout, self.max_connections = header_timeout, max_connections
        self.max_header_bytes = max_header_bytes
        self._head_timer = None
        self._waiting_since = self.loop.time()
        self._discard: int | None = None  # bytes still to drop after an error answer; None: not lingering

    # -- waiting for a request head -------------------------------------------------------------

    def _awaiting_head(self) -> bool:
        return self.conn.their_state is h11.IDLE and not self.transport.is_closing()

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._awaiting_head():
            return
        if self.conn.trailing_data[0]:  # part of a head arrived, too slowly
            log.debug("closing a connection from %s: no complete request head within %g s",
                      self.client, self.header_timeout)
            self._close_after_error(error_response(408, "header_timeout", (
                f"the request headers did not arrive within connections.header_timeout_seconds="
                f"{self.header_timeout:g}; send the whole request head at once")))
        else:
            self.transport.close()

    def _close_after_error(self, response: bytes) -> None:
        """Send ``response``, then close without destroying it: a socket closed with unread input
        sends a TCP reset, and a client still sending (the rest of a huge header) may lose the
        answer to it. So: write, half-close (FIN), drop what still arrives for a moment (at most
        LINGER_BYTES, nothing kept), then close, as nginx's lingering close does."""
        self._disarm()
        if self.transport.is_closing():
            return
        self.transport.write(response)
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self._discard = LINGER_BYTES
        self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._waiting_since = self.loop.time()
        self._arm()
        if len(self.connections) > self.max_connections:
            self._shed()

    def _shed(self) -> None:
        """Past max_connections: close whoever has waited longest for a request head (else this one)."""
        waiting = [c for c in self.connections if isinstance(c, Protocol) and c is not self and c._awaiting_head()]
        victim = min(waiting, key=lambda c: c._waiting_since, default=self)
        now = self.loop.time()
        if now - Protocol._last_shed_log > 10:  # at most one line per 10 s: a flood must not flood the log
            Protocol._last_shed_log = now
            log.warning("%d connections open (connections.max_connections=%d): closing the ones that have waited "
                        "longest for a request", len(self.connections), self.max_connections)
        victim._disarm()
        victim.transport.close()
        self.connections.discard(victim)

    def data_received(self, data: bytes) -> None:
        if self._discard is not None:  # lingering after an error answer: drop it
            self._discard -= len(data)
            if self._discard <= 0:
                self.transport.close()
            return
        if self._awaiting_head():
            self._arm()
        super().data_received(data)
        if not self._awaiting_head():
            self._disarm()

    def on_response_complete(self) -> None:
        self._waiting_since = self.loop.time()
        super().on_response_complete()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    # -- errors below the app -------------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        error = self.conn.error
        status = getattr(error, "error_status_hint", 400) if error is not None else 400
        if status == 431:
            code, message = "header_too_large", (
                f"the request line and headers are larger than limits.max_header_bytes={self.max_header_bytes} "
                "bytes; send shorter headers and URLs (texts go in the JSON body)")
        else:
            status, detail = 400, str(error or msg)[:200]
            code, message = "invalid_http", (
                f"the request is not valid HTTP/1.1 ({detail}); check the request line and the header "
                "names and values (printable ASCII, no control bytes)")
        log.debug("rejected a request from %s: %s %s", self.client, status, code)
        if self.cycle is not None and not self.cycle.response_complete:  # the app sees a disconnect
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):  # no part of another response was sent
            self._close_after_error(error_response(status, code, message))
        else:
            self._disarm()
            self.transport.close()


def protocol_for(config: ServeConfig) -> functools.partial:
    """The protocol class uvicorn should use (``uvicorn.run(http=...)``), bound to ``config``'s limits.

    A partial of a module-level class with plain arguments: it pickles, so ``--workers N`` (spawned
    processes) get the same."""
    return functools.partial(
        Protocol, header_timeout=config.connections.header_timeout_seconds,
        max_connections=config.connections.connection_limit(), max_header_bytes=config.limits.max_header_bytes,
    )  # fmt: skip
