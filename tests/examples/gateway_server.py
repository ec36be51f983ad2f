"""A stand-in HTTP SMS gateway: `POST /messages` answers as scripted per recipient.

Each recipient has a script of statuses (429 comes with `Retry-After`); once it runs out,
or for a recipient without one, the message is accepted (200). A 429 pauses its sender
number for Retry-After seconds: any request from that number meanwhile is a violation.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

from aiohttp import web

from tests.examples.botapi_server import SLACK, BackgroundServer


@dataclass(frozen=True, slots=True)
class Delivery:
    """A request the gateway answered."""

    sender: str
    to: str
    text: str
    status: int
    at: float
    """time.monotonic() on arrival."""


class GatewayServer(BackgroundServer):
    """The gateway; `script[to]` lists the statuses the next requests for `to` get."""

    def __init__(self, token: str, script: dict[str, list[int]], retry_after: int = 1) -> None:
        app = web.Application()
        app.router.add_post("/messages", self._post)
        super().__init__(app)
        self.token, self.retry_after = token, retry_after
        self.script = {to: list(statuses) for to, statuses in script.items()}
        self.answered: list[Delivery] = []
        self.violations: list[Delivery] = []
        self._until: dict[str, float] = defaultdict(float)

    def accepted(self) -> dict[str, list[str]]:
        """Accepted texts per recipient, in arrival order."""
        with self.lock:
            by_to: dict[str, list[str]] = defaultdict(list)
            for answer in self.answered:
                if answer.status == 200:
                    by_to[answer.to].append(answer.text)
            return dict(by_to)

    def snapshot(self) -> tuple[list[Delivery], list[Delivery]]:
        """Copies of (answered, violations)."""
        with self.lock:
            return list(self.answered), list(self.violations)

    async def _post(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"error": "unauthorized"}, status=401)
        body = await request.json()
        with self.lock:
            return self._answer(str(body["from"]), str(body["to"]), str(body["text"]), time.monotonic())

    def _answer(self, sender: str, to: str, text: str, now: float) -> web.Response:
        """Called with the lock held."""
        script = self.script.get(to)
        if now < self._until[sender] - SLACK:  # asked to wait, and did not
            status = 429
            self.violations.append(Delivery(sender, to, text, status, now))
        else:
            status = script.pop(0) if script else 200
        self.answered.append(Delivery(sender, to, text, status, now))
        if status == 429:
            self._until[sender] = now + self.retry_after
            return web.json_response({"error": "slow down"}, status=429,
                                     headers={"Retry-After": str(self.retry_after)})
        if status != 200:
            return web.json_response({"error": f"status {status}"}, status=status)
        return web.json_response({"id": len(self.answered)})
