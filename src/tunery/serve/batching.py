"""Dynamic batching: concurrent requests to one model share forward passes.

Requests queue on the event loop. One worker per model takes the first waiting request, waits up
to ``max_wait_ms`` for more (or until ``max_batch_size`` texts are in hand), runs the model once on
the concatenated texts in a worker thread (the event loop keeps accepting requests meanwhile),
then hands each caller exactly its own slice of the results. While a batch runs, the next one fills.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

# (texts, pairs or None) -> (scores (N, C) or (N,), token counts (N,))
ScoreFn = Callable[[list[str], "list[str] | None"], "tuple[np.ndarray, np.ndarray]"]


@dataclass
class _Pending:
    texts: list[str]
    pairs: list[str] | None
    future: asyncio.Future = field(repr=False)


class Batcher:
    def __init__(
        self,
        score: ScoreFn,
        *,
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        executor: concurrent.futures.Executor | None = None,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self.score = score
        self.max_batch_size = max_batch_size
        self.max_wait_ms = max_wait_ms
        self.executor = executor
        self.on_batch = on_batch  # (texts in the batch, seconds) for metrics
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task | None = None
        self.queued_texts = 0

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._worker(), name="tunery-batcher")

    async def stop(self) -> None:
        """Finish what is queued, then stop."""
        if self._task is None:
            return
        assert self._queue is not None
        await self._queue.join()
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None

    async def submit(self, texts: list[str], pairs: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """This request's scores and token counts, in its own order."""
        if self._queue is None:
            raise RuntimeError("the batcher is not running")
        future = asyncio.get_running_loop().create_future()
        self.queued_texts += len(texts)
        await self._queue.put(_Pending(texts, pairs, future))
        return await future

    async def _worker(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            size = len(batch[0].texts)
            deadline = loop.time() + self.max_wait_ms / 1000
            while size < self.max_batch_size:
                timeout = deadline - loop.time()
                try:
                    item = self._queue.get_nowait() if timeout <= 0 else await asyncio.wait_for(self._queue.get(), timeout)
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    break
                batch.append(item)
                size += len(item.texts)
            await self._run(loop, batch)

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]) -> None:
        texts = [t for p in batch for t in p.texts]
        with_pairs = any(p.pairs is not None for p in batch)
        pairs = [t for p in batch for t in (p.pairs or [""] * len(p.texts))] if with_pairs else None
        self.queued_texts -= len(texts)
        started = time.perf_counter()
        try:
            scores, tokens = await loop.run_in_executor(self.executor, self.score, texts, pairs)
        except Exception as e:
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(e)
        else:
            if self.on_batch is not None:
                self.on_batch(len(texts), time.perf_counter() - started)
            offset = 0
            for p in batch:
                n = len(p.texts)
                if not p.future.done():  # the caller may have gone away
                    p.future.set_result((scores[offset : offset + n], tokens[offset : offset + n]))
                offset += n
        finally:
            for _ in batch:
                self._queue.task_done()
