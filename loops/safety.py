"""What keeps a long run from losing work: preemption signals, the model_dir lock, bad-step accounting.

Exit codes of train.py: 0 done; 75 (EX_TEMPFAIL) stopped by SIGTERM/SIGUSR1 after writing a checkpoint,
so a scheduler should requeue it; 1 an error (the message names the cause); 2 bad flags.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import socket
import sys
import time

EXIT_PREEMPTED = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    """Turns SIGTERM/SIGUSR1 (Slurm's warning before preemption or time-out) into a flag the loop checks
    after every step, so the step in flight finishes and a checkpoint is written before exiting."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous = {}

    def __enter__(self):
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, exc_type, *exc):
        # Stopped with the checkpoint written: a later signal (horovodrun ending the other ranks once one has
        # exited, a scheduler's reminder) must not turn exit code 75 into a death by signal while Python and
        # TensorFlow shut down. Ignored, not handled: Python resets its own handlers to the default as it
        # finalizes, but leaves an ignored signal ignored.
        restore = {sig: signal.SIG_IGN for sig in STOP_SIGNALS} if exc_type is Preempted else self._previous
        for sig, handler in restore.items():
            signal.signal(sig, handler)

    def _handle(self, signum, _frame):
        if self.signal_name is not None:
            print(f"Received {signal.Signals(signum).name} again: already stopping.", flush=True)
            return
        self.signal_name = signal.Signals(signum).name
        print(f"Received {self.signal_name}: finishing the current step, then checkpointing and exiting "
              f"with code {EXIT_PREEMPTED}.", flush=True)

    @property
    def requested(self) -> bool:
        return self.signal_name is not None


class Preempted(SystemExit):
    def __init__(self, checkpoint: str):
        super().__init__(EXIT_PREEMPTED)
        self.checkpoint = checkpoint

    def exit_now(self):
        """Ends the process with 75 at once, skipping Python's, TensorFlow's and Horovod's teardown. Raised, the
        checkpoint is complete on every process (they met after it), but a launcher may be waiting: horovodrun
        kills every other rank 5 s after the first one exits, and a loaded machine tears TensorFlow down slower."""
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_PREEMPTED)


class NonFiniteLoss(RuntimeError):
    pass


class CheckpointWriteError(RuntimeError):
    pass


class ModelDirInUse(RuntimeError):
    pass


# Failures whose message says everything a user needs: train.py prints them without a traceback.
RUN_ERRORS = (NonFiniteLoss, CheckpointWriteError, ModelDirInUse, FileNotFoundError, ValueError)


class ModelDirLock:
    """An exclusive flock on model_dir/train.lock: the kernel drops it when the holder dies, however it
    dies, so a killed run never leaves the directory locked; the file only says who holds it."""

    def __init__(self, model_dir: str):
        self.path = os.path.join(model_dir, "train.lock")
        self._fd = None

    def acquire(self):
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise CheckpointWriteError(f"--model_dir {os.path.dirname(self.path)} is not writable: {e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = os.read(fd, 4096).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ModelDirInUse(f"--model_dir {os.path.dirname(self.path)} is in use by another training run "
                               f"({holder}); wait for it to finish or choose another --model_dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
        self._fd = fd
        return self

    def release(self):
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
