"""The Python half of the native event stream's ``__anext__`` (API.md §2.4).

The native stream waits for the next event (polled on the loop's thread) and settles
the wait with the event's dict; this coroutine then runs the ``event_hooks`` on the loop
thread, in order, before the event is yielded (a hook exception propagates). Async tool
handlers of the run may arrive through the same wait; they are started on this loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

__all__ = ["next_event", "resolve", "run_handler"]


async def next_event(
    pending: Awaitable[Any], hooks: Sequence[Callable[[dict[str, Any]], Any]], stream: Any
) -> dict[str, Any]:
    """The next event dict of a stream, after the hooks have seen it.

    The wait may instead resolve to async tool calls handed to this consumer (native
    ``Handed``): their handlers start here, as tasks of this loop, and the wait goes on.
    """
    item = await pending
    while item.__class__ is not dict:
        event = item.start()
        if event is not None:
            item = event
            break
        item = await stream._wait_next()
    for hook in hooks:
        hook(item)
    event_dict: dict[str, Any] = item
    return event_dict


def resolve(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    """Settles a native awaitable on its loop (unless it was cancelled meanwhile)."""
    if future.done():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


async def run_handler(handler: Awaitable[Any], finish: Any) -> None:
    """Runs an async tool handler handed to this loop and gives its outcome to ``finish``
    (native) as soon as it has one."""
    try:
        value = await handler
    except Exception as error:
        finish.fail(error)
        return
    except BaseException as error:
        # Cancelled, or the process is being interrupted: the host learns why, and the
        # task still ends that way.
        finish.fail(error)
        raise
    finish.succeed(value)
