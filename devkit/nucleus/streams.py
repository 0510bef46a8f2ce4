"""Per-connection objects of the emulated IPC server: an open connection, its operation streams, a reply.

A :class:`Connection` writes event-stream RPC messages (``wire``) to one client; a :class:`Stream` is an
operation stream the emulator pushes events to (a subscription); a :class:`Reply` is what an operation
handler answers (a response, and optionally the stream it opens).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from devkit.nucleus.wire import (
    CONTENT_TYPE,
    JSON,
    SERVICE_MODEL_TYPE,
    Header,
    MessageFlag,
    MessageType,
    rpc_message,
)

NS = "aws.greengrass#"

ErrorBody = Callable[[str, str, dict[str, Any]], dict[str, Any]]


def default_error_body(shape: str, message: str, fields: dict[str, Any]) -> dict[str, Any]:
    return {"message": message, **fields}


@dataclass
class Reply:
    model: str
    body: dict[str, Any]
    stream: Stream | None = None


class Stream:
    """An open operation stream to which the emulator pushes events."""

    def __init__(
        self,
        conn: Connection,
        stream_id: int,
        kind: str,
        event_model: str,
        *,
        topic_filter: str = "",
        receive_all: bool = True,
        component: str = "",
        key_path: tuple[str, ...] = (),
    ) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.kind = kind
        self.event_model = event_model
        self.topic_filter = topic_filter
        self.receive_all = receive_all
        self.component = component
        self.key_path = key_path

    def push(self, body: dict[str, Any]) -> None:
        self.conn.send_app(self.stream_id, self.event_model, body, terminate=False)


class Connection:
    def __init__(self, writer: asyncio.StreamWriter, error_body: ErrorBody | None = None) -> None:
        self.writer = writer
        #: how this nucleus writes an error's payload (see ``flavours.FlavourRules.error_body``)
        self.error_body = error_body or default_error_body
        self.component: str | None = None
        self.streams: dict[int, Stream] = {}
        self.last_stream_id = 0
        self.closing = False
        self.closed = False
        #: refused at CONNECT: let the client hang up first, so it sees the refusal rather than a closed socket
        self.linger = False

    def send(self, data: bytes) -> None:
        if not self.closed:
            self.writer.write(data)

    def send_app(self, stream_id: int, model: str, body: dict[str, Any], *, terminate: bool) -> None:
        headers = [Header.string(CONTENT_TYPE, JSON), Header.string(SERVICE_MODEL_TYPE, model)]
        self.send(
            rpc_message(
                MessageType.APPLICATION_MESSAGE,
                stream_id,
                flags=MessageFlag.TERMINATE_STREAM if terminate else MessageFlag.NONE,
                headers=headers,
                payload=json.dumps(body, separators=(",", ":")).encode(),
            )
        )

    def send_error(self, stream_id: int, shape: str, message: str, fields: Mapping[str, Any]) -> None:
        headers = [Header.string(CONTENT_TYPE, JSON), Header.string(SERVICE_MODEL_TYPE, NS + shape)]
        body = self.error_body(shape, message, dict(fields))
        self.send(
            rpc_message(
                MessageType.APPLICATION_ERROR,
                stream_id,
                flags=MessageFlag.TERMINATE_STREAM,
                headers=headers,
                payload=json.dumps(body, separators=(",", ":")).encode(),
            )
        )

    def protocol_error(self, message: str) -> None:
        self.send(
            rpc_message(
                MessageType.PROTOCOL_ERROR,
                0,
                headers=[Header.string(CONTENT_TYPE, JSON)],
                payload=json.dumps({"message": message}).encode(),
            )
        )
        self.closing = True
