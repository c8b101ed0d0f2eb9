"""A one-thread prefetcher: the host assembles the next batches while the device steps."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

__all__ = ["Prefetcher"]


class Prefetcher:
    """Assemble the next batches on a background thread while the device steps.

    A plain thread and a bounded queue, not Grain: Grain would be one more
    dependency, and the data are already in-memory numpy arrays; all the host
    does per batch is a permutation slice and a few crops, so one thread is
    enough to overlap that with the (asynchronously dispatched) jitted step.
    Order is exactly the iterator's. Use as an iterator; :meth:`close` (or
    the end of iteration) stops the thread.
    """

    _END = object()

    def __init__(self, iterator: Iterator, size: int = 2):
        self._q: queue.Queue = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(iterator,), daemon=True)
        self._thread.start()

    def _run(self, iterator: Iterator) -> None:
        try:
            for item in iterator:
                while not self._stop.is_set():
                    try:
                        self._q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except BaseException as err:  # noqa: BLE001 - re-raised in the consumer's thread
            self._error = err
        self._q.put(self._END)

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self):
        item = self._q.get()
        if item is self._END:
            self._thread.join()
            if self._error is not None:
                raise self._error
            raise StopIteration
        return item

    def close(self) -> None:
        """Stop the background thread (pending batches are dropped)."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._q.get_nowait()
            except queue.Empty:
                self._thread.join(timeout=0.05)
