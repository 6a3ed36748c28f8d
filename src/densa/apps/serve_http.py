"""uvicorn's httptools protocol with a bound on each request's head: its time and its size.

uvicorn waits for a request's head (request line + headers) as long as the client likes and takes a
header of any size. `HeadGuard` answers 408 to a head that has not arrived within HEAD_TIMEOUT seconds
of its first byte and 431 to one over MAX_HEAD bytes, then closes the connection (a new connection
that sends nothing for HEAD_TIMEOUT seconds is closed without an answer; between requests on a
kept-alive one, uvicorn's keep-alive timeout applies); protocol-level errors get densa's JSON
shape. `densa serve` passes it to uvicorn as http="densa.apps.serve_http:HeadGuard" (a name, so that
worker processes can import it). Subclass it to change the bounds.
"""

from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

HEAD_TIMEOUT = 10.0  # seconds for a request's head to arrive
MAX_HEAD = 64 << 10  # bytes of request line + headers


class HeadGuard(HttpToolsProtocol):
    head_timeout: float = HEAD_TIMEOUT  # from the head's first byte
    idle_timeout: float = HEAD_TIMEOUT  # from a new connection's start to its first byte
    max_head: int = MAX_HEAD

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.in_head = True  # from a request's first byte (or the connection's start) to its last header
        self.head_started = False  # a byte of this head has arrived
        self.head_raw = 0  # bytes of reads that began and ended inside this head (<= its size)
        self.head_parsed = 0  # bytes of its request line and complete headers
        self.head_timer = self.loop.call_later(self.idle_timeout, self.head_too_slow)

    def connection_lost(self, exc) -> None:
        self.stop_head_timer()
        super().connection_lost(exc)

    def stop_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        began_in_head = self.in_head
        if self.in_head and not self.head_started:  # a new connection's first byte: the head's clock starts
            self.stop_head_timer()
            self.head_started = True
        super().data_received(data)  # the parser's callbacks below run in here
        if not self.in_head or self.transport.is_closing():
            return
        if self.head_timer is None:  # the next request on a kept-alive connection
            self.head_timer = self.loop.call_later(self.head_timeout, self.head_too_slow)
        if began_in_head:
            self.head_raw += len(data)
        if max(self.head_raw, self.head_parsed) > self.max_head:
            self.refuse(431, "head_too_large", self.too_large())

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.in_head, self.head_started = True, True
        self.head_raw = self.head_parsed = 0

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self.head_parsed += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self.head_parsed += len(name) + len(value) + 4

    def on_headers_complete(self) -> None:
        self.stop_head_timer()
        self.in_head = False
        if self.transport.is_closing():  # a request pipelined behind a refused one
            return
        if self.head_parsed > self.max_head:
            self.refuse(431, "head_too_large", self.too_large())
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self.transport.is_closing():  # closing: the head was refused, no request cycle runs
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self.transport.is_closing():
            super().on_message_complete()

    def too_large(self) -> str:
        return f"request line and headers over {self.max_head:,} bytes"

    def head_too_slow(self) -> None:
        self.head_timer = None
        if self.transport.is_closing():
            return
        if not self.head_started:
            self.transport.close()  # a connection that never sent a byte gets no answer
            return
        self.refuse(408, "timeout", f"the request's headers did not arrive within {self.head_timeout:g} s")

    def refuse(self, status: int, code: str, detail: str) -> None:
        self.stop_head_timer()
        self.logger.warning("Request refused (%d): %s.", status, detail)
        self.write_problem(status, code, detail)

    def send_400_response(self, msg: str) -> None:  # uvicorn's answer to a malformed request
        self.write_problem(400, "bad_request", msg.rstrip("."))

    def write_problem(self, status: int, code: str, detail: str) -> None:
        """densa's {"error", "detail"} JSON answer, written on the socket, which is then closed."""
        body = json.dumps({"error": code, "detail": detail}).encode()
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head.append(name + b": " + value + b"\r\n")
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body))
        head.append(b"connection: close\r\n\r\n")
        self.transport.write(b"".join(head) + body)
        self.transport.close()
