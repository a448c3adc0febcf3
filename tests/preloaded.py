"""Python processes for the tests' command lines, forked from a server that has already imported TensorFlow.

`python train.py ...` as a subprocess spends several CPU-seconds importing TensorFlow and Keras before it parses
its first flag; CI starts about a hundred such processes. These are forked instead from the standard library's
forkserver (`multiprocessing`), which imports TensorFlow once per test worker and runs no TensorFlow op, so each
child starts with the modules loaded and nothing else of TensorFlow's state (no context, no thread pool). A child
is still a process of its own: it runs the script as `__main__` with its own argv, environment, working directory,
stdout and stderr (file descriptors 1 and 2), exit code and signals, as `subprocess` would show them.

What a child cannot show is what happens before TensorFlow's import: environment variables read at import time
take the server's values, and the import's own log lines go to the server. Tests of that (the import order, the
start-up log) run a real `sys.executable`; so do the processes other programs start (horovodrun, Slurm, bash).
"""

import atexit
import gc
import io
import multiprocessing
import os
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SERVER = multiprocessing.get_context("forkserver")
_SERVER.set_forkserver_preload(["tensorflow", "keras"])


def _exit_code(stop: SystemExit) -> int:
    """The exit code the interpreter gives `raise SystemExit(code)`, printing a message code as it does."""
    if stop.code is None or isinstance(stop.code, int):
        return stop.code or 0
    print(stop.code, file=sys.stderr)
    return 1


def _main(args, cwd, env, out_path, err_path, new_session):
    """The child: `python <args>` in cwd with env, fds 1 and 2 on the given files (one file for both when the
    paths are equal), in a session of its own if asked; never returns."""
    # The imported modules' objects live as long as the child: out of the collector's sight, its full collections
    # scan only what the child makes (a fresh process scans them all, several times per training).
    gc.freeze()
    if new_session:
        os.setsid()
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    file = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(file, 1)
    if err_path != out_path:
        os.close(file)
        file = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(file, 2)
    os.close(file)
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True)
    code = 0
    try:
        if args[0] == "-c":
            sys.argv = ["-c", *args[2:]]
            sys.path[0] = ""
            exec(compile(args[1], "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
        elif args[0] == "-m":
            sys.argv = [args[1], *args[2:]]
            sys.path[0] = cwd
            runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(args)
            sys.path[0] = os.path.dirname(os.path.abspath(args[0]))
            runpy.run_path(args[0], run_name="__main__")
    except SystemExit as stop:
        code = _exit_code(stop)
    except BaseException:  # as the interpreter does with an uncaught exception: the traceback, exit 1
        traceback.print_exc()
        code = 1
    # What the interpreter does at exit: wait for non-daemon threads, run atexit, flush.
    try:
        threading._shutdown()
        atexit._run_exitfuncs()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class Process:
    """The part of subprocess.Popen the tests use, for a forked child: text mode, stdout and stderr captured
    (`communicate` returns them), or both written to the file `output` (then `communicate` returns that file's
    text and None, as Popen does with stderr=STDOUT); `new_session` is Popen's start_new_session."""

    def __init__(self, args, cwd=REPO, env=None, output=None, new_session=False):
        self._files = None if output else tempfile.mkdtemp(prefix="preloaded-")
        self._out = str(output) if output else os.path.join(self._files, "stdout")
        self._err = self._out if output else os.path.join(self._files, "stderr")
        env = dict(os.environ if env is None else env)
        self._child = _SERVER.Process(target=_main, args=([str(a) for a in args], str(cwd), env, self._out, self._err,
                                                          new_session))
        self._child.start()
        self.pid = self._child.pid
        self.args = args
        self.returncode = None
        self._output = None

    def poll(self):
        self.returncode = self._child.exitcode
        return self.returncode

    def wait(self, timeout=None):
        """The exit code; once the child has exited, what it wrote is read and its capture files removed."""
        self._child.join(timeout)
        if self.poll() is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        if self._output is None:
            with open(self._out) as out:
                self._output = out.read(), None
            if self._files:
                with open(self._err) as err:
                    self._output = self._output[0], err.read()
                shutil.rmtree(self._files)
        return self.returncode

    def communicate(self, timeout=None):
        self.wait(timeout)
        return self._output

    def send_signal(self, sig):
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self):
        self.send_signal(signal.SIGTERM)

    def kill(self):
        self.send_signal(signal.SIGKILL)


def run(args, cwd=REPO, env=None, timeout=None):
    """subprocess.run([sys.executable, *args], capture_output=True, text=True, ...) on a forked child; a child
    past its timeout is killed and TimeoutExpired raised, as subprocess.run does."""
    proc = Process(args, cwd=cwd, env=env)
    try:
        out, err = proc.communicate(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    return subprocess.CompletedProcess(args, proc.returncode, out, err)
