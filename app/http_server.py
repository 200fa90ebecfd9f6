"""The HTTP server that ``hydra-serve`` runs: uvicorn with its httptools parser, with the
request head bounded.

uvicorn's httptools protocol (the fast parser, what ``uvicorn[standard]`` picks by default)
reads a request head without any limit: a request line or header fields of any size are
buffered whole and then routed (200 MB of headers grew the server by 190 MiB and were
answered 200). ``BoundedHttpToolsProtocol`` refuses them while they arrive:

- a request target (path and query) over ``max_url_bytes``: 414, checked as each piece of
  it is parsed;
- header fields whose names and values together exceed ``max_header_bytes``, or more than
  ``max_headers`` of them: 431, checked as each field completes;
- and, since the parser holds a field until it completes (one field of 200 MB would be held
  whole), the bytes read while a head is incomplete are counted too: beyond what a head
  within the limits can hold (``HttpLimits.head_bytes``) it is refused with 431 before the
  next read. The server holds at most that plus one read of any request head.

A refusal is answered in the service's error format (``{"error": ...}`` under /v2, with a
``code`` elsewhere) with ``Connection: close``; then the server stops writing, reads and drops
what the client still sends for up to ``LINGER_S`` seconds or ``LINGER_BYTES`` bytes (so that a
client still sending its headers reads the answer rather than a reset), and closes. Each
refusal is counted as ``hydra_http_requests_total{route="unmatched", method, status}`` and
logged as a request line, through the hook the application leaves in its lifespan state
(``REFUSAL_HOOK``, app/main.py).

h11 (uvicorn's other parser) bounds a head with ``h11_max_incomplete_event_size`` but answers
every refusal 400, and it costs more CPU per request; hydra-serve does not use it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from app.api.error_responses import error_body
from app.errors import HeadersTooLarge, ServiceError, UrlTooLong
from app.settings import Settings

logger = logging.getLogger("app.access")  # refusals are request lines of the access log

# The application's lifespan state holds, under this key, a callable (method, status) that
# counts a request refused before it reached the application.
REFUSAL_HOOK = "hydra.count_refusal"
RefusalHook = Callable[[str, int], None]

LINGER_S = 2.0
LINGER_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class HttpLimits:
    max_url_bytes: int
    max_header_bytes: int
    max_headers: int

    @classmethod
    def of(cls, settings: Settings) -> HttpLimits:
        return cls(settings.max_url_bytes, settings.max_header_bytes, settings.max_headers)

    @property
    def head_bytes(self) -> int:
        """The most bytes a head within the limits takes on the wire: the target, names and
        values, ``": "`` and CRLF per field, and room for the method, version and final CRLF."""
        return self.max_url_bytes + self.max_header_bytes + 4 * self.max_headers + 64


_base = HttpToolsProtocol  # its per-request callbacks called directly: cheaper than super()


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the request head bounded (see the module's text)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: HttpLimits,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        self._in_head = True  # from the end of a message (or the start) to the end of a head
        self._clean_chunk = True  # no head ended while the current read was parsed
        self._head_read = 0  # bytes of this head, counted by whole reads within it
        self._field_bytes = 0  # names and values of this head's fields so far
        self._refusal: ServiceError | None = None  # raised in a parser callback
        self._dropped = -1  # >= 0 once refused: bytes read and dropped since
        self._linger: asyncio.TimerHandle | None = None

    # -- reading -------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._dropped >= 0:  # refused: read and drop until the client or the timer closes
            self._dropped += len(data)
            if self._dropped > LINGER_BYTES:
                self.transport.close()
            return
        self._clean_chunk = self._in_head
        _base.data_received(self, data)
        if self._clean_chunk and self._in_head and self._dropped < 0 and self.parser is not None:
            self._head_read += len(data)
            if self._head_read > self.limits.head_bytes:
                self._refuse(HeadersTooLarge(
                    f"request head over the limit: at most {self.limits.max_header_bytes} bytes "
                    f"of header fields expected (HYDRA_MAX_HEADER_BYTES), got more than "
                    f"{self._head_read} bytes without the end of the header fields"
                ))

    def on_message_begin(self) -> None:
        _base.on_message_begin(self)
        self._in_head = True
        self._head_read = 0
        self._field_bytes = 0

    def on_url(self, url: bytes) -> None:
        if len(self.url) + len(url) > self.limits.max_url_bytes:
            self.url = (self.url + url)[:100]  # enough to answer in the path's protocol shape
            self._refuse_in_parser(UrlTooLong(
                f"request target over the limit: at most {self.limits.max_url_bytes} bytes "
                f"expected (HYDRA_MAX_URL_BYTES), got more than that"
            ))
        _base.on_url(self, url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self.headers) >= self.limits.max_headers:
            self._refuse_in_parser(HeadersTooLarge(
                f"too many request header fields: at most {self.limits.max_headers} expected "
                f"(HYDRA_MAX_HEADERS), got more than that"
            ))
        self._field_bytes += len(name) + len(value)
        if self._field_bytes > self.limits.max_header_bytes:
            self._refuse_in_parser(HeadersTooLarge(
                f"request header fields over the limit: at most {self.limits.max_header_bytes} "
                f"bytes of names and values expected (HYDRA_MAX_HEADER_BYTES), got "
                f"{self._field_bytes} so far"
            ))
        _base.on_header(self, name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._clean_chunk = False
        _base.on_headers_complete(self)

    def on_message_complete(self) -> None:
        _base.on_message_complete(self)
        self._in_head = True

    # -- refusing ------------------------------------------------------------------------

    def _refuse_in_parser(self, error: ServiceError) -> None:
        """Stop the parser: httptools turns the exception into a parser error, and uvicorn
        answers a parser error with ``send_400_response``, which answers this instead."""
        self._refusal = error
        raise error

    def send_400_response(self, msg: str) -> None:
        refusal, self._refusal = self._refusal, None
        if refusal is None:
            super().send_400_response(msg)
        else:
            self._refuse(refusal)

    def _method(self) -> str:
        try:
            return str(self.parser.get_method().decode("ascii"))
        except Exception:  # nothing parsed yet
            return "unknown"

    def _refuse(self, error: ServiceError) -> None:
        method = self._method()
        url: bytes = getattr(self, "url", b"")
        hook: RefusalHook | None = self.app_state.get(REFUSAL_HOOK)
        if hook is not None:
            hook(method, error.status)
        logger.info(
            "%s %s %d refused: %s", method, "unmatched", error.status, error.message,
            extra={"event": "request", "method": method, "route": "unmatched",
                   "status": error.status, "refused": error.code},
        )
        self._dropped = 0  # from now on, what the client sends is dropped unread
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined head (or a chunked body's trailer fields) while a request is still
            # being answered: an answer now would cut into that one's. Close.
            self.transport.close()
            return
        body = orjson.dumps(error_body(url[:100].decode("latin-1"), error.code, error.message))
        head = [STATUS_LINE[error.status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: ", str(len(body)).encode("ascii"), b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self._linger = self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        super().connection_lost(exc)


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """What ``hydra-serve`` passes to ``uvicorn.run`` (besides the app and workers)."""
    return {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,
        "access_log": False,
        "timeout_graceful_shutdown": max(1, int(settings.request_timeout_s) + 1),
        # A partial (a module-level class and a frozen dataclass) pickles, so the worker
        # processes of HYDRA_WORKERS > 1 get the same protocol.
        "http": functools.partial(BoundedHttpToolsProtocol, limits=HttpLimits.of(settings)),
    }
