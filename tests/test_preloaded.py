"""tests/preloaded.py: a forked child shows what `python <args>` as a subprocess shows (exit code, stdout,
stderr, argv, environment, working directory, signals), which the tests of our command lines rely on."""

import os
import signal
import subprocess
import sys
import time

import pytest

import preloaded

SNIPPETS = {
    "exit code and both streams": "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)",
    "SystemExit with a message": "raise SystemExit('stopped: bad flag')",
    "uncaught exception": "1 / 0",
    "argv, environment and directory": "import os, sys; print(sys.argv[1:], os.environ['PROBE'], os.getcwd())",
    "atexit handlers": "import atexit; atexit.register(print, 'at exit')",
}


@pytest.mark.parametrize("name", SNIPPETS)
def test_forked_child_shows_what_a_subprocess_shows(name, tmp_path):
    args = ["-c", SNIPPETS[name], "first", "second"]
    env = {**os.environ, "PROBE": "value"}
    forked = preloaded.run(args, cwd=tmp_path, env=env, timeout=60)
    real = subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    assert (forked.returncode, forked.stdout) == (real.returncode, real.stdout)
    # A traceback names the frames it passed through, which differ (the fork runs the code through runpy).
    assert forked.stderr.splitlines()[-1:] == real.stderr.splitlines()[-1:]


def test_script_and_module_get_their_argv(tmp_path):
    script = tmp_path / "script.py"
    script.write_text("import sys; print(sys.argv)")
    assert preloaded.run([script, "--flag"]).stdout.strip() == repr([str(script), "--flag"])
    (tmp_path / "probe_module.py").write_text("import sys; print(__name__, sys.argv[1:])")
    out = preloaded.run(["-m", "probe_module", "--flag"], cwd=tmp_path).stdout.strip()
    assert out == "__main__ ['--flag']"


def test_signals_reach_the_child_and_its_exit_code_says_so(tmp_path):
    ready = tmp_path / "ready"
    code = (f"import signal, sys, time, pathlib; signal.signal(signal.SIGTERM, lambda *_: sys.exit(75)); "
            f"pathlib.Path({str(ready)!r}).touch(); time.sleep(60)")
    for sig, expected in ((signal.SIGTERM, 75), (signal.SIGKILL, -signal.SIGKILL)):
        ready.unlink(missing_ok=True)
        proc = preloaded.Process(["-c", code], output=tmp_path / "log", new_session=True)
        while not ready.exists():
            assert proc.poll() is None, (tmp_path / "log").read_text()
            time.sleep(0.05)
        assert os.getsid(proc.pid) == proc.pid  # its own session, as start_new_session gives
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == expected


def test_timeout_kills_the_child_and_raises(tmp_path):
    pid_file = tmp_path / "pid"
    code = f"import os, pathlib, time; pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid())); time.sleep(60)"
    with pytest.raises(subprocess.TimeoutExpired):
        preloaded.run(["-c", code], timeout=5)
    with pytest.raises(ProcessLookupError):  # gone, not left running (nor a zombie: its parent reaped it)
        os.kill(int(pid_file.read_text()), 0)
