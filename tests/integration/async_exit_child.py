"""A bot whose `async def` sender raises SystemExit and KeyboardInterrupt:
`python -m tests.integration.async_exit_child URL`.

Inside `asyncio.run()`, it starts an `AsyncPostroom`, enqueues "exit" (the sender raises
SystemExit), "interrupt" (KeyboardInterrupt) and an ordinary message on each of three
accounts, waits until none of them is `pending` or `processing`, enqueues one more
message and waits until it is `completed` (the loop still runs), stops the room and
prints one JSON line: each message's status, attempts and last error, by text. A loop
ended by the sender's exception prints nothing and exits non-zero.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OPEN = ("pending", "processing")
PLAN = [("+15550001", "exit"), ("+15550002", "interrupt"),
        ("+15550001", "after exit"), ("+15550002", "after interrupt"), ("+15550003", "other")]


async def send(message: object) -> None:
    text = getattr(message, "text", None)
    if text == "exit":
        raise SystemExit(3)
    if text == "interrupt":
        raise KeyboardInterrupt


async def settled(room: object, message_id: int) -> dict[str, object]:
    """The message once it is neither pending nor processing, polled from the loop."""
    for _ in range(3000):
        message = await room.get(message_id)  # type: ignore[attr-defined]
        if message.status.value not in OPEN:
            return {"status": message.status.value, "attempts": message.attempts,
                    "last_error": message.last_error}
        await asyncio.sleep(0.01)
    raise TimeoutError(f"message {message_id} still {message.status.value}")


async def main(url: str) -> dict[str, dict[str, object]]:
    from supervisor import AccountSettings, AsyncPostroom, FakeClock, SupervisorSettings

    # A fake clock: a retrying message is never due again here, so it stays `retrying`.
    settings = SupervisorSettings(account=AccountSettings(idle_timeout=None))
    room = await AsyncPostroom.start(url, send, settings=settings, clock=FakeClock())
    ids = {text: await room.enqueue(phone, "u", text, max_attempts=3) for phone, text in PLAN}
    seen = {text: await settled(room, message_id) for text, message_id in ids.items()}
    last = await room.enqueue("+15550002", "u", "last")
    seen["last"] = await settled(room, last)
    await room.stop()
    return seen


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    print(json.dumps(asyncio.run(main(sys.argv[1]))), flush=True)
