"""Which chats have an answer in flight in this process: chat id → its generation.

The AI SDK resumes a chat's stream with ``GET /api/chat/{id}/stream`` (``resumeStream``,
after a reload or a dropped connection), and ``POST /api/chat/{id}/stop`` stops one.
Both find the chat's in-flight generation here: while a ``POST /api/chat`` streams, each
batch is also written to a journal, so a reader that comes later replays the answer
from its start and then follows it live, under the same message id.

This stands in for the shared generations service, and does less:

- a generation lives only as long as the request that started it: when that client
  leaves, the upstream is cancelled as for any request, and the readers that resumed it
  get an ``error`` chunk (the service will let it finish in the background);
- only this process knows it: with several instances, a resume or a stop that reaches
  another one finds nothing (204; ``stopped: false``).

What the routes use is ``generation`` (with ``Generation.tee`` as the stream's wrap),
``find`` and ``Generation.stop``: swapping in the service means providing those.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator

from sluice.dialects.ui_stream import STOPPED
from sluice.errors import SluiceError
from sluice.events import Batch, StreamError
from sluice.journal import Abandoned, Journal
from sluice.store import VirtualKey


class Generation:
    """One chat's answer in flight: the journal it is written to, and its stop."""

    __slots__ = (
        "_chats",
        "_task",
        "_waiting",
        "chat_id",
        "journal",
        "key_id",
        "message_id",
        "model",
        "stopped",
    )

    def __init__(
        self, chats: UIChats, chat_id: str, message_id: str, model: str, key_id: str | None
    ) -> None:
        self._chats = chats
        self.chat_id = chat_id
        self.message_id = message_id
        self.model = model
        self.key_id = key_id
        self.journal = Journal(message_id)
        self.stopped = False
        self._task: asyncio.Task[object] | None = None
        #: The request's task is waiting for the upstream's next batch (in ``tee``).
        self._waiting = False

    def visible_to(self, key: VirtualKey | None) -> bool:
        """A key finds only its own chats; the master key, and anyone while
        authentication is off, every chat."""
        return key is None or key.master or key.id == self.key_id

    async def tee(self, stream: AsyncGenerator[Batch, None]) -> AsyncGenerator[Batch, None]:
        """The request's event stream, each batch also written to the journal. The chat
        is findable from the first read (once the request got past the refusals that
        come at once) until the stream ends."""
        self._task = asyncio.current_task()
        self._chats._add(self)
        journal = self.journal
        try:
            async with contextlib.aclosing(stream):
                while not self.stopped:
                    self._waiting = True
                    try:
                        batch = await stream.__anext__()
                    except StopAsyncIteration:
                        break
                    except (asyncio.CancelledError, SluiceError):
                        if not self.stopped:
                            raise
                        self._uncancel()
                        break
                    finally:
                        self._waiting = False
                    journal.append(batch)
                    yield batch
            if self.stopped:
                final: Batch = [StreamError("the answer was stopped on request", code=STOPPED)]
                journal.append(final)
                journal.complete()
                yield final
            else:
                journal.complete()
        except SluiceError as exc:
            journal.fail(exc)
            raise
        finally:
            if journal.live:
                journal.fail(
                    Abandoned("the client that asked for this answer went away, so it was stopped")
                )
            self._chats._remove(self)

    def stop(self) -> None:
        """Stop the generation: at once when it waits for the upstream (the wait is
        cancelled, which cancels the upstream request as a client's leaving does), else
        before its next read. Its readers get an ``abort`` chunk."""
        if self.stopped:
            return
        self.stopped = True
        if self._waiting and self._task is not None:
            self._task.cancel()

    def _uncancel(self) -> None:
        # The cancellation was ours (``stop``); the request goes on to end its stream.
        task = self._task
        if task is not None and task.cancelling():
            task.uncancel()


class UIChats:
    """The in-process registry; one per gateway."""

    def __init__(self) -> None:
        self._active: dict[str, Generation] = {}

    def generation(
        self, chat_id: str, message_id: str, model: str, key_id: str | None
    ) -> Generation:
        """A generation for ``chat_id``, registered when its stream is first read (a
        newer one replaces an older one that is still running)."""
        return Generation(self, chat_id, message_id, model, key_id)

    def find(self, chat_id: str, key: VirtualKey | None) -> Generation | None:
        generation = self._active.get(chat_id)
        if generation is None or not generation.visible_to(key):
            return None
        return generation

    def _add(self, generation: Generation) -> None:
        self._active[generation.chat_id] = generation

    def _remove(self, generation: Generation) -> None:
        if self._active.get(generation.chat_id) is generation:
            del self._active[generation.chat_id]
