"""Where numbers go: the console, a JSON-lines log and TensorBoard, all written by the chief only."""

from __future__ import annotations

import json
import os
import time

import keras
import tensorflow as tf


class Reporter:
    def __init__(self, model_dir: str, enabled: bool):
        self.enabled = enabled
        self._writer = None
        self._log = None
        if enabled:
            tf.io.gfile.makedirs(model_dir)
            self._writer = tf.summary.create_file_writer(os.path.join(model_dir, "tensorboard"))
            self._log = open(os.path.join(model_dir, "log.jsonl"), "a", buffering=1)

    def record(self, kind: str, step: int, values: dict):
        """One line of log.jsonl and one TensorBoard scalar per numeric value."""
        if not self.enabled:
            return
        self._log.write(json.dumps({"kind": kind, "step": int(step), "time": time.time(), **values}) + "\n")
        with self._writer.as_default(step=int(step)):
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    tf.summary.scalar(f"{kind}/{key}", value)

    def say(self, text: str):
        if self.enabled:
            print(text, flush=True)

    def progress_bar(self, steps: int, title: str):
        if not self.enabled:
            return None
        print(title, flush=True)
        return keras.utils.Progbar(steps, stateful_metrics=["loss", "top1", "lr", "img/s"])

    def close(self):
        if self.enabled:
            self._writer.close()
            self._log.close()


def table(rows: dict, title: str | None = None) -> str:
    width = max(len(k) for k in rows)
    lines = [title] if title else []
    for key, value in rows.items():
        shown = f"{value:.6g}" if isinstance(value, float) else str(value)
        lines.append(f"  {key:<{width}}  {shown}")
    return "\n".join(lines)
