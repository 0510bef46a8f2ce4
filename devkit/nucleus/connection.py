"""The IPC connection server: accepts Unix-socket clients, authenticates CONNECT, dispatches operations.

Protocol rules (event-stream RPC, see ``wire``): the first message must be CONNECT with ``:version``
0.1.0 and a known ``authToken`` (SVCUID); PING is echoed; an application message on a new, increasing
stream id names an ``operation`` that is looked up in ``_handlers``; errors travel as APPLICATION_ERROR
with the modeled error shape. Responses always precede the stream events their request causes.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import hmac
import json
import os

from devkit.nucleus.core import EmulatorCore, IpcError, log
from devkit.nucleus.streams import NS, Connection
from devkit.nucleus.wire import (
    OPERATION,
    RPC_VERSION,
    VERSION,
    Message,
    MessageDecoder,
    MessageFlag,
    MessageType,
    WireError,
    rpc_message,
)


async def _until_eof(reader: asyncio.StreamReader) -> None:
    while await reader.read(4096):
        pass


class ConnectionServer(EmulatorCore):
    """Listening, connections and dispatch (a mixin of NucleusEmulator)."""

    socket_path: str
    max_ipc_message_bytes: int | None
    oversized_frames: int
    max_frame_bytes: int
    _server: asyncio.AbstractServer | None

    async def _listen(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        self._server = await asyncio.start_unix_server(self._handle, path=self.socket_path)

    async def _shutdown(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()  # stop accepting first, then drop the connections (wait_closed waits for them)
        for conn in list(self._conns):
            self._drop(conn)
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)

    def _drop(self, conn: Connection) -> None:
        conn.closed = True
        for stream in conn.streams.values():
            self._track(stream, -1)
        conn.streams.clear()
        self._conns.discard(conn)
        with contextlib.suppress(Exception):
            conn.writer.close()

    # -- internals: connections -------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(writer, self.rules.error_body)
        self._conns.add(conn)
        decoder = MessageDecoder(self.max_ipc_message_bytes)
        try:
            while not conn.closing and not conn.closed:
                data = await reader.read(65536)
                if not data:
                    break
                try:
                    messages = decoder.feed(data)
                except WireError as exc:
                    log.warning("malformed event-stream data; closing the connection", extra={"error": str(exc)})
                    conn.protocol_error(str(exc))
                    messages = []
                if decoder.largest > self.max_frame_bytes:
                    with self._cond:
                        self.max_frame_bytes = decoder.largest
                for msg in messages:
                    self._dispatch(conn, msg)
                    if conn.closing:
                        break
                if decoder.oversized is not None and not conn.closing:
                    self._close_oversized(conn, decoder.oversized)
                await writer.drain()
            if conn.linger:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(_until_eof(reader), 2.0)
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                await writer.drain()
            self._drop(conn)

    def _close_oversized(self, conn: Connection, length: int) -> None:
        """A frame over ``max_ipc_message_bytes``: the connection is closed without an answer (lite's ggipcd:
        "EventStream packet does not fit in configured IPC buffer size.", ``ipc_server.c``)."""
        with self._cond:
            self.oversized_frames += 1
            self._cond.notify_all()
        log.warning(
            "IPC frame larger than the nucleus' buffer; closing the connection",
            extra={"component": conn.component, "bytes": length, "limit": self.max_ipc_message_bytes},
        )
        conn.closing = True

    def _dispatch(self, conn: Connection, msg: Message) -> None:
        mtype, sid = msg.message_type, msg.stream_id
        if mtype is None or sid is None:
            conn.protocol_error("message without :message-type or :stream-id")
            return
        if conn.component is None:
            if mtype != MessageType.CONNECT or sid != 0:
                conn.protocol_error("the first message must be CONNECT")
                return
            self._on_connect(conn, msg)
            return
        if mtype == MessageType.PING:
            echo = [h for h in msg.headers if not h.name.startswith(":")]
            conn.send(rpc_message(MessageType.PING_RESPONSE, 0, headers=echo, payload=msg.payload))
        elif mtype == MessageType.PING_RESPONSE:
            pass
        elif mtype in (MessageType.APPLICATION_MESSAGE, MessageType.APPLICATION_ERROR) and sid > 0:
            self._on_stream_message(conn, msg, sid)
        else:
            conn.protocol_error(f"unexpected message type {mtype} on stream {sid}")

    def _on_connect(self, conn: Connection, msg: Message) -> None:
        component = None
        if msg.get_str(VERSION) == RPC_VERSION:
            try:
                token = json.loads(msg.payload or b"{}").get("authToken")
            except (ValueError, AttributeError):
                token = None
            if isinstance(token, str):
                for known, name in self._tokens.items():
                    if hmac.compare_digest(known.encode(), token.encode()):
                        component = name
        if component is None:
            with self._cond:
                self.refused += 1
            log.warning("IPC connection refused: unknown auth token or wrong protocol version")
            if self.rules.name == "lite":  # ggipcd closes the socket without an answer (ipc_server.c)
                log.error("Client failed authentication: invalid svcuid.")
                conn.closing = True
                return
            conn.send(rpc_message(MessageType.CONNECT_ACK, 0, flags=MessageFlag.NONE))
            conn.closing = True
            conn.linger = True
            return
        conn.component = component
        with self._cond:  # counted before the ack is written: a client that sees the ack sees the count
            self.connects += 1
            self._cond.notify_all()
        conn.send(rpc_message(MessageType.CONNECT_ACK, 0, flags=MessageFlag.CONNECTION_ACCEPTED))
        log.info("IPC connection accepted", extra={"component": component})

    def _on_stream_message(self, conn: Connection, msg: Message, sid: int) -> None:
        if sid in conn.streams:
            if msg.flags & MessageFlag.TERMINATE_STREAM:
                self._track(conn.streams.pop(sid), -1)  # the client closed its subscription
            return
        if sid <= conn.last_stream_id:
            return  # a late message on a stream that is already closed
        conn.last_stream_id = sid
        if msg.flags & MessageFlag.TERMINATE_STREAM:
            return  # a request the client already gave up on (the nucleus ignores these too)
        operation = msg.get_str(OPERATION) or ""
        name = operation.removeprefix(NS)
        assert conn.component is not None
        with self._cond:
            self._operations.append((conn.component, name))
        handler = self._handlers.get(name) if operation.startswith(NS) else None
        if handler is not None and not self.rules.serves(name):
            log.warning("Unhandled operation requested: %s.", operation)  # lite's ggipcd: ipc_dispatch.c
            conn.send_error(sid, "ServiceError", "", {})
            return
        if handler is None:
            unsupported = f"{operation or '(no operation)'} is not supported by the emulator"
            conn.send_error(sid, "ServiceError", unsupported, {})
            return
        try:
            request = json.loads(msg.payload) if msg.payload else {}
            if not isinstance(request, dict):
                raise IpcError("InvalidArgumentsError", "the request must be a JSON object")
            reply = handler(conn, sid, request)
        except IpcError as exc:
            conn.send_error(sid, exc.shape, exc.message, exc.fields)
            return
        except (ValueError, binascii.Error) as exc:
            conn.send_error(sid, "InvalidArgumentsError", f"malformed request: {exc}", {})
            return
        except Exception as exc:  # a bug in the emulator: answer like the nucleus does, keep serving
            log.exception("emulator operation failed", extra={"operation": name})
            conn.send_error(sid, "ServiceError", f"{type(exc).__name__}: {exc}", {})
            return
        if reply.stream is not None:  # registered first (nothing can push to it before the response below)
            conn.streams[sid] = reply.stream
            self._track(reply.stream, +1)
        conn.send_app(sid, reply.model, reply.body, terminate=reply.stream is None)
