"""examples/metrics_gateway.py: `/metrics` scraped over HTTP while messages flow, against the database."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from examples.metrics_gateway import gateway_with_metrics
from supervisor import AccountSettings, BackoffPolicy, Status, SupervisorSettings
from tests.examples.conftest import GATEWAY_TOKEN
from tests.examples.gateway_server import GatewayServer
from tests.examples.test_examples import until, until_final

pytestmark = pytest.mark.timeout(60)

SENDER_A, SENDER_B = "+15550101", "+15550102"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(http: httpx.AsyncClient) -> Samples:
    """Every sample of one scrape of `/metrics`, by name and sorted labels."""
    response = await http.get("/metrics")
    response.raise_for_status()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def postroom_names(registry: prometheus_client.CollectorRegistry) -> set[str]:
    return {s.name for family in registry.collect() for s in family.samples if s.name.startswith("postroom")}


def test_metrics_scraped_over_http_match_the_database(gateway_server: GatewayServer, sqlite_url: str) -> None:
    """While messages flow through the gateway (a 429 pause, a 400, 503s retried), `/metrics`
    answers; once they are final, its outcome counts and queue depth equal the database's, its
    retries and pauses what the gateway answered, and the global registry holds nothing of postroom's."""
    global_before = postroom_names(prometheus_client.REGISTRY)
    gateway_server.script.update({"+1700": [429], "+1400": [400], "+1503": [503], "+1599": [503, 503]})
    fast = SupervisorSettings(account=AccountSettings(backoff=BackoffPolicy(base=0.05, jitter=0.0)))

    async def scenario() -> tuple[Samples, Samples, dict[Status, int]]:
        async with gateway_with_metrics(sqlite_url, gateway_server.url, GATEWAY_TOKEN, read_every=0.0,
                                        settings=fast) as (room, port), \
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            ids = [await room.enqueue(phone=SENDER_A, user_id=to, text="x", max_attempts=2)
                   for to in ("+1700", "+1400", "+1503", "+1599")]
            ids += [await room.enqueue(phone=sender, user_id=f"+18{i:02}", text="y")
                    for i in range(20) for sender in (SENDER_A, SENDER_B)]
            cancelled = await room.enqueue(phone=SENDER_B, user_id="+1900", text="z",
                                           scheduled_at=datetime.now(UTC) + timedelta(hours=1))
            await room.cancel(cancelled)
            await until(lambda: any(d.status == 429 for d in gateway_server.snapshot()[0]))
            flowing = await scrape(http)  # the queue is still sending
            await until_final(room, ids)
            final = await scrape(http)
            return flowing, final, (await room.stats()).by_status

    flowing, final, in_database = asyncio.run(scenario())
    assert ("postroom_queue_messages", (("status", "pending"),)) in flowing
    for outcome in (Status.COMPLETED, Status.FAILED, Status.CANCELLED):
        assert final[("postroom_messages_total", (("outcome", outcome.value),))] == in_database[outcome]
    assert in_database[Status.FAILED] == 2 and in_database[Status.CANCELLED] == 1
    for status, count in in_database.items():
        assert final[("postroom_queue_messages", (("status", status.value),))] == count
    assert final[("postroom_queue_oldest_due_age_seconds", ())] == 0.0  # nothing left due
    assert final[("postroom_retries_total", ())] == 2  # +1503's first attempt, +1599's first
    assert final[("postroom_account_pauses_total", (("reason", "RateLimited"),))] == 1
    assert final[("postroom_send_duration_seconds_count", ())] == len(gateway_server.snapshot()[0])
    assert final[("postroom_enqueue_to_send_seconds_count", ())] >= in_database[Status.COMPLETED]
    commits = final[("postroom_commit_duration_seconds_count", ())]
    assert commits > 0 and final[("postroom_commit_batch_size_count", ())] == commits
    assert final[("postroom_accounts_parked", ())] == 0
    assert not any(name.startswith("postroom_node_") for name, _ in final)  # no nodes: no node gauges
    assert postroom_names(prometheus_client.REGISTRY) == global_before == set()

