"""The end of an input pass: its tf.data iterator is destroyed on a thread of its own.

Destroying an autotuned tf.data iterator joins its autotuning thread, which sleeps for a period that doubles
while the iterator lives (up to a minute); in TensorFlow 2.21 the destruction waits out the rest of that sleep,
idle. Dropped on the caller's thread, that wait would hold back the next epoch or evaluation pass
(docs/input_pipeline.md)."""

from __future__ import annotations

import threading


class IteratorRelease:
    """Drops finished passes' iterators on threads of their own; `join` waits until all are destroyed."""

    def __init__(self):
        self._threads: list[threading.Thread] = []

    def drop(self, holder: list):
        """Empties `holder`, a list holding the iterator's only reference, on a new thread."""
        thread = threading.Thread(target=holder.clear, name="input-iterator-release")
        thread.start()
        self._threads.append(thread)

    def join(self):
        for thread in self._threads:
            thread.join()
        self._threads.clear()
