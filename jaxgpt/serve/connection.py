"""Uvicorn's HTTP/1.1 connection, with a deadline for each request's headers.

Uvicorn times out idle keep-alive connections, but not a client that sends its request headers
a byte at a time, or stops halfway ("slowloris"): such a connection stayed open for good, and
kept a SIGTERM waiting. Here the headers of each request must all have arrived within the client
timeout of the connection opening or of the previous response ending; otherwise the server
answers 408 (if part of a request came) and hangs up. The body's deadline is the app's
(`app.read_body`), where a slow body gets a 408 in OpenAI's error shape.

h11 is the parser (uvicorn's own, and its choice when httptools is not installed); the hooks
below are methods of uvicorn's H11Protocol.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol

_MESSAGE = b"request headers not received in time; the connection is closed\n"
REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(_MESSAGE), _MESSAGE)
)


def with_header_deadline(seconds: float) -> type[H11Protocol]:
    """An H11Protocol class (uvicorn.Config's `http`) that closes slow connections."""

    class DeadlineProtocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            self._arm()  # first: a pipelined request may be parsed (and disarm) right away
            super().on_response_complete()

        def handle_events(self) -> None:
            cycle = self.cycle
            super().handle_events()
            if self.cycle is not cycle:  # a request's headers are complete
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            # An idle keep-alive connection is just closed: a 408 there could be read as the
            # answer to a request the client is sending at that moment.
            if self.conn.trailing_data[0]:
                self.transport.write(REQUEST_TIMEOUT)
            self.transport.close()

    return DeadlineProtocol
