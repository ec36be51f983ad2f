"""The HTTP gateway bot (examples/http_gateway.py) with Prometheus metrics served on `/metrics`.

postroom registers its metrics on the registry given to it, never on prometheus_client's
global one; this process serves that registry beside the bot.

Run: GATEWAY_URL=https://sms.example GATEWAY_TOKEN=... METRICS_PORT=9464 python examples/metrics_gateway.py
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, start_http_server

from examples.http_gateway import database, gateway
from supervisor import AsyncPostroom, Metrics


@contextlib.asynccontextmanager
async def gateway_with_metrics(database: str, base_url: str, token: str, *, port: int = 0,
                               per_account: bool = False, read_every: float = 5.0,
                               **options: Any) -> AsyncIterator[tuple[AsyncPostroom, int]]:
    """The bot, and `/metrics` on 127.0.0.1 (`port` 0: a free one); yields the bot and the port."""
    registry = CollectorRegistry()
    metrics = Metrics(registry, per_account=per_account, read_every=read_every)
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        async with gateway(database, base_url, token, metrics=metrics, **options) as room:
            yield room, server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def serve() -> None:
    """Send through the gateway and serve the metrics until SIGTERM or SIGINT."""
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stopping.set)
    async with gateway_with_metrics(database(), os.environ["GATEWAY_URL"], os.environ["GATEWAY_TOKEN"],
                                    port=int(os.environ.get("METRICS_PORT", "9464"))) as (_, port):
        print(f"serving metrics on http://127.0.0.1:{port}/metrics", flush=True)
        await stopping.wait()


if __name__ == "__main__":
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    asyncio.run(serve())
