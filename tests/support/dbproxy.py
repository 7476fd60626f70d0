"""A TCP proxy in front of PostgreSQL that a test can stop and start (the database "goes down")."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from sqlalchemy.engine import make_url

from tests.support.servers import free_port


class DatabaseProxy:
    """Forwards 127.0.0.1:<port> to the real server; stop() refuses and cuts every connection."""

    def __init__(self, target_host: str, target_port: int) -> None:
        # A host that is a directory is the server's unix-socket directory (embedded server).
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    def url_for(self, database_url: str) -> str:
        """`database_url` aimed at the proxy instead of the server."""
        parsed = make_url(database_url)
        query = {k: v for k, v in parsed.query.items() if k != "host"}
        parsed = parsed.set(host="127.0.0.1", port=self.port, query=query)
        return parsed.render_as_string(hide_password=False)

    async def start(self) -> None:
        """Accept connections (again)."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def stop(self) -> None:
        """Refuse new connections and terminate the open ones, as a stopped server would."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        up_writer: asyncio.StreamWriter | None = None
        try:
            host, port = self.target
            if host.startswith("/"):
                up_reader, up_writer = await asyncio.open_unix_connection(f"{host}/.s.PGSQL.{port}")
            else:
                up_reader, up_writer = await asyncio.open_connection(host, port)
            await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._pipes.discard(task)
            for w in (writer, up_writer):
                if w is not None:
                    w.transport.abort()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    with contextlib.suppress(OSError):
        writer.write_eof()


@contextlib.asynccontextmanager
async def database_proxy(database_url: str) -> AsyncIterator[DatabaseProxy]:
    """A started proxy to the server of `database_url`; stopped at the end."""
    parsed = make_url(database_url)
    socket_dir = parsed.query.get("host")
    host = socket_dir if isinstance(socket_dir, str) else parsed.host
    proxy = DatabaseProxy(host or "127.0.0.1", parsed.port or 5432)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()
