"""A TCP proxy between a server under test and its PostgreSQL: it counts the transactions the
server ends, and it can take the database away (refuse new connections, cut the open ones) and
give it back, as a database outage or a network partition would look to the server."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator

import psycopg


class DatabaseProxy:
    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)  # a host starting with "/" is the directory of a Unix socket, as in libpq
        self.transactions = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def cut(self) -> None:
        """The database goes away: new connections are refused (nothing listens on the port) and
        every open one is reset."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def restore(self) -> None:
        """The database is back, on the same address."""
        await self.start()

    async def close(self) -> None:
        await self.cut()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        host, port = self._target
        if host.startswith("/"):  # the embedded PostgreSQL listens on a Unix socket only
            server_reader, server_writer = await asyncio.open_unix_connection(f"{host}/.s.PGSQL.{port}")
        else:
            server_reader, server_writer = await asyncio.open_connection(host, port)
        self._writers.update((client_writer, server_writer))
        for task in (
            asyncio.ensure_future(self._pipe(client_reader, server_writer)),
            asyncio.ensure_future(self._replies(server_reader, client_writer)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()
        self._writers.discard(writer)

    async def _replies(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The backend's messages: a type byte and a length. Every ReadyForQuery that says "idle"
        ends a transaction, except the first, which follows the login."""
        logged_in = False
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                header = await reader.readexactly(5)
                kind, length = header[:1], struct.unpack("!I", header[1:])[0]
                body = await reader.readexactly(length - 4)
                writer.write(header + body)
                await writer.drain()
                if kind == b"Z" and body == b"I":
                    if logged_in:
                        self.transactions += 1
                    logged_in = True
        writer.close()
        self._writers.discard(writer)


@contextlib.asynccontextmanager
async def proxied(url: str) -> AsyncIterator[tuple[DatabaseProxy, str]]:
    """A proxy to the database of `url`, and the URL that goes through it (no TLS, so the proxy
    can read the replies)."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    proxy = DatabaseProxy(str(info.get("host") or "127.0.0.1"), int(info.get("port") or 5432))
    port = await proxy.start()
    info.update(host="127.0.0.1", port=str(port), sslmode="disable", gssencmode="disable")
    try:
        yield proxy, psycopg.conninfo.make_conninfo(**info)  # type: ignore[arg-type]
    finally:
        await proxy.close()
