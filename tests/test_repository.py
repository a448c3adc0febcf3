"""Promises the repository makes about itself: the README's commands are the ones CI runs."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    setup = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return [line.strip() for line in setup.splitlines() if line.startswith("    ") and line.strip()]


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    commands = _readme_commands()
    assert len(commands) == 2, commands
    install_and_run, install_and_test = commands
    assert "pytest" in install_and_test and "pytest" not in install_and_run
    # .ci/run runs it as two lines, the install and then the tests, so that the long tests can start in between
    # on the installed venv.
    install, test = install_and_test.rsplit(" && ", 1)
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert install in ci and test in ci and ci.index(install) < ci.index(test)


def test_requirements_are_pinned():
    for name in ["requirements.txt", "requirements-gpu.txt", "requirements-test.txt"]:
        for line in (ROOT / name).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[0-9][\w.]*", line), f"{name}: {line!r} is not pinned"


def test_every_test_the_docs_name_exists():
    """docs/ cite tests by name as the evidence for a behaviour (docs/reliability.md's table): each cited test
    function or test file must exist."""
    defined = set()
    for path in (ROOT / "tests").glob("*.py"):
        defined.add(path.stem)
        defined.update(re.findall(r"^def (test_\w+)", path.read_text(), flags=re.M))
    cited = {(doc.name, name) for doc in (ROOT / "docs").glob("*.md")
             for name in re.findall(r"\b(test_\w+)(?![\w*])", doc.read_text())}
    missing = sorted(f"{doc}: {name}" for doc, name in cited if name not in defined)
    assert not missing, missing
