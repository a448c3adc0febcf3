"""The GPU Dockerfile, checked without building it (no GPU and no Docker engine here): what it COPYs exists and
is not excluded by .dockerignore, it installs the project's own GPU requirements and builds Horovod with NCCL
through the project's script, and its paths are the ones the recipes and Slurm scripts assume."""

import fnmatch
import pathlib
import re
import shlex

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _instructions():
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    out = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _ignored(path: str) -> bool:
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    parts = path.split("/")
    for pattern in patterns:
        pattern = pattern.rstrip("/")
        if pattern.startswith("**/"):
            if any(fnmatch.fnmatch(part, pattern[3:]) for part in parts):
                return True
        elif any(fnmatch.fnmatch("/".join(parts[:i + 1]), pattern) for i in range(len(parts))):
            return True
    return False


def test_every_copy_source_exists_and_is_in_the_build_context():
    copies = [shlex.split(args) for word, args in _instructions() if word == "COPY"]
    assert copies, "the Dockerfile copies nothing"
    for args in copies:
        assert not any(a.startswith("--from") for a in args)
        for src in args[:-1]:
            if src == ".":
                continue
            assert (ROOT / src).exists(), f"COPY {src}: no such file in the repository"
            assert not _ignored(src), f"COPY {src}: excluded by .dockerignore"
    # The whole tree is copied last, so the recipes and entry points are in the image; never the venv or .git.
    assert copies[-1] == [".", "."]
    assert _ignored(".venv/bin/python") and _ignored(".git/HEAD") and _ignored("loops/__pycache__/x.pyc")
    assert not _ignored("scripts/recipes/common.sh") and not _ignored("train.py")


def test_installs_the_projects_gpu_requirements_and_horovod_with_nccl_by_its_script():
    runs = [args for word, args in _instructions() if word == "RUN"]
    pip = [r for r in runs if "pip install" in r]
    assert len(pip) == 1 and "-r requirements-gpu.txt" in pip[0], pip
    # requirements-gpu.txt is the CUDA variant of the same pins; constraints.txt pins the CPU wheel (README).
    assert "constraints.txt" not in pip[0]
    assert "tensorflow[and-cuda]==" in (ROOT / "requirements-gpu.txt").read_text()
    horovod = [r for r in runs if "install_horovod.sh" in r]
    assert len(horovod) == 1, runs
    assert "HOROVOD_GPU_OPERATIONS=NCCL" in horovod[0] and "scripts/install_horovod.sh" in horovod[0]
    # The script installs into the interpreter it is given; it must be the image's venv that the pins went into.
    env = dict(kv.split("=", 1) for word, args in _instructions() if word == "ENV" for kv in shlex.split(args)
               if "=" in kv)
    python = re.search(r"PYTHON=(\S+)", horovod[0]).group(1)
    assert python == env["PYTHON"] == env["VIRTUAL_ENV"] + "/bin/python"
    assert env["PATH"].startswith(env["VIRTUAL_ENV"] + "/bin:")
    # The NCCL build needs NCCL's headers and the CUDA compiler, which the Dockerfile installs.
    apt = " ".join(r for r in runs if "apt-get install" in r)
    assert "libnccl-dev" in apt and "cuda-nvcc-" in apt


def test_base_image_is_a_tensorflow_gpu_image_of_the_pinned_release():
    base = next(args for word, args in _instructions() if word == "ARG" and args.startswith("BASE_IMAGE="))
    pinned = re.search(r"tensorflow\[and-cuda\]==(\S+)", (ROOT / "requirements-gpu.txt").read_text()).group(1)
    assert base == f"BASE_IMAGE=tensorflow/tensorflow:{pinned}-gpu"
    assert ("FROM", "${BASE_IMAGE}") in _instructions()


def test_paths_match_the_recipes_and_the_slurm_container_defaults():
    workdir = [args for word, args in _instructions() if word == "WORKDIR"]
    assert workdir == ["/workspace/efficientnet"]
    multinode = (ROOT / "scripts" / "slurm" / "multinode.sh").read_text()
    assert "CONTAINER_WORKDIR:-/workspace/efficientnet" in multinode
    env = " ".join(args for word, args in _instructions() if word == "ENV")
    # The recipes read DATA_DIR/OUTPUT_DIR; docs/docker.md mounts ImageNet at /data and results at /results.
    assert "DATA_DIR=/data" in env and "OUTPUT_DIR=/results" in env
    docs = (ROOT / "docs" / "docker.md").read_text()
    assert ":/data" in docs and ":/results" in docs and "docker build" in docs
