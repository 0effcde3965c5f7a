"""ASGI middleware that answers 413 to request bodies over a byte limit.

A ``Content-Length`` above the limit is refused before any byte is read; a body
without one (chunked transfer) is read up to the limit and refused as soon as it
goes past it. A body within the limit is handed on unchanged. The limit may depend
on the path (one per served model)::

    api.add_middleware(BodyLimit, limit_for=lambda path: 4 * 1024 * 1024)

The 413 answer is JSON in the ingress's error format, naming the limit::

    {"error": "request body too large",
     "violations": [{"index": null, "field": "body", "rule": "max_body_bytes",
                     "message": "body: 5000000 bytes is over the limit of 4194304 bytes (serving.max_body_bytes)"}]}

:func:`check_length` bounds single string fields the same way (a 422 naming the
field, the rule ``max_length`` and the setting): the routing ``key`` of a predict,
``who`` and ``why`` of an admin command.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def too_large_body(size: int | str, limit: int) -> bytes:
    """The JSON body of the 413 answer.

    >>> json.loads(too_large_body(2000, 1024))["violations"][0]["rule"]
    'max_body_bytes'
    """
    message = f"body: {size} bytes is over the limit of {limit} bytes (serving.max_body_bytes)"
    return json.dumps({"error": "request body too large", "violations": [
        {"index": None, "field": "body", "rule": "max_body_bytes", "message": message}]}).encode()


class BodyLimit:
    """Pure ASGI middleware; ``on_reject(path)`` is called for every 413 (for metrics)."""

    def __init__(self, app: Callable[..., Awaitable[None]], limit_for: Callable[[str], int],
                 on_reject: Callable[[str], None] | None = None) -> None:
        self.app = app
        self.limit_for = limit_for
        self.on_reject = on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("path", ""))
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._reject(scope, send, declared.decode(), limit)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, _replay([message], receive), send)
                return
            body = message.get("body", b"")
            size += len(body)
            if size > limit:
                await self._reject(scope, send, f"more than {limit}", limit)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        whole = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([whole], receive), send)

    async def _reject(self, scope: Scope, send: Send, size: str, limit: int) -> None:
        if self.on_reject is not None:
            self.on_reject(scope.get("path", ""))
        body = too_large_body(size, limit)
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A receive that gives ``messages`` first, then defers to the real one."""
    queue = list(messages)

    async def _receive() -> Message:
        if queue:
            return queue.pop(0)
        return await receive()

    return _receive


def check_length(field: str, value: str | None, limit: int, setting: str) -> dict | None:
    """The violation (``{"index", "field", "rule", "message"}``) of a string field over
    ``limit`` characters, else None. Bounds what one request may make the ingress
    store (a routing key is logged with every row) or put in the audit log.

    >>> check_length("key", "k" * 300, 256, "serving.max_key_chars")["message"]
    'key: 300 characters; at most 256 (serving.max_key_chars)'
    >>> check_length("key", None, 256, "serving.max_key_chars") is None
    True
    """
    if value is None or len(value) <= limit:
        return None
    return {"index": None, "field": field, "rule": "max_length",
            "message": f"{field}: {len(value)} characters; at most {limit} ({setting})"}
