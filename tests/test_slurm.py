"""A real one-node Slurm cluster (munged + slurmctld + slurmd, started by scripts/ci_start_slurm.sh) running
scripts/slurm/run_B0_multinode.sub with 2 tasks: MultiWorkerMirroredStrategy from Slurm's environment, and the
requeue of a preempted (exit 75) job.

Needs root (and apt-get, the first time). Elsewhere the tests skip with the reason; with
EFFICIENTNET_REQUIRE_SLURM=1 (CI) they fail instead, so a broken cluster start is never silently skipped.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from loops.parallel import slurm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START = os.path.join(REPO, "scripts", "ci_start_slurm.sh")
SUB = os.path.join(REPO, "scripts", "slurm", "run_B0_multinode.sub")

pytestmark = [pytest.mark.slow, pytest.mark.long]


def _unavailable(reason):
    if os.environ.get("EFFICIENTNET_REQUIRE_SLURM") == "1":
        pytest.fail(f"Slurm is required here (EFFICIENTNET_REQUIRE_SLURM=1) but: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory):
    """Environment with SLURM_CONF of a running cluster; stops the daemons afterwards if it started them."""
    if os.geteuid() != 0:
        _unavailable("starting munged/slurmctld/slurmd needs root (run scripts/ci_start_slurm.sh as root)")
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        _unavailable("slurm-wlm is not installed and there is no apt-get to install it")
    t0 = time.time()
    proc = subprocess.run([START], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        _unavailable(f"scripts/ci_start_slurm.sh exited {proc.returncode}: {(proc.stdout + proc.stderr)[-2000:]}")
    print(f"Slurm ready in {time.time() - t0:.1f} s: {proc.stdout.strip()}")
    conf = re.search(r"^export SLURM_CONF=(\S+)$", proc.stdout, re.M).group(1)
    # PYTHON: the jobs run this interpreter (the one with TensorFlow), not <repo>/.venv or python3, which a git
    # worktree or a venv elsewhere does not have.
    env = {**os.environ, "SLURM_CONF": conf, "TF_CPP_MIN_LOG_LEVEL": "2", "REPO_DIR": REPO, "PYTHON": sys.executable}
    for name in list(env):   # a developer's shell inside an allocation must not leak into the test jobs
        if name.startswith(("SLURM_", "SBATCH_", "SRUN_")) and name != "SLURM_CONF":
            env.pop(name)
    yield env
    if "already up" not in proc.stdout:
        subprocess.run([START, "--stop"], capture_output=True, timeout=60)


def _sbatch(env, out, *args, timeout=900):
    """sbatch --wait: returns (exit code, the job's output); the exit code is the job's (sbatch man page).

    sbatch --wait returns once the job has finished; a requeued job is pending again, not finished, so sbatch
    keeps waiting through its later runs.
    """
    proc = subprocess.Popen(["sbatch", "--wait", "--parsable", "-N", "1", "--ntasks-per-node=2", "--time=15",
                             "-o", str(out), *args, SUB], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    job_id = proc.stdout.readline().strip().split(";")[0]
    assert job_id.isdigit(), job_id + proc.stderr.read()
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        subprocess.run(["scancel", job_id], env=env)
        proc.kill()
        raise
    text = out.read_text() if out.exists() else ""
    return proc.returncode, text + err


def test_sbatch_runs_the_b0_recipe_on_two_workers_with_multiworker_mirrored_strategy(slurm_env, tmp_path):
    model_dir = tmp_path / "model"
    # The recipe's flags with B0 at quarter width and one block per stage: the Slurm launch, the cluster
    # resolution and the two-worker training and evaluation are the same, without two workers tracing full B0.
    env = {**slurm_env, "SMOKE": "1", "MODEL_DIR": str(model_dir),
           "EXTRA_ARGS": "--steps_per_epoch 3 --mparams depth_coefficient=0.1,width_coefficient=0.25"}
    t0 = time.time()
    rc, log = _sbatch(env, tmp_path / "job.out")
    print(f"2-worker sbatch job: {time.time() - t0:.1f} s")
    assert rc == 0, log[-5000:]
    # Each task resolved the same 2-worker cluster from Slurm's environment and knew its own index.
    workers = re.findall(r"loops\.parallel\.slurm: worker (\d) of 2: (\[.*\])", log)
    assert sorted(w for w, _ in workers) == ["0", "1"], log[-5000:]
    assert workers[0][1] == workers[1][1]
    assert "multinode: training finished" in log
    # The chief wrote the checkpoint and the summary; the throughput per replica shows 2 replicas in sync.
    assert (model_dir / "checkpoint").is_file() and list(model_dir.glob("ckpt-3.index")), os.listdir(model_dir)
    summary = json.loads((model_dir / "summary.json").read_text())
    assert summary["steps"] == 3
    replicas = summary["avg_exp_per_second_training"] / summary["avg_exp_per_second_training_per_GPU"]
    assert replicas == pytest.approx(2.0), summary


PREEMPTED_PROBE = """
import json, os, sys
restart = os.environ.get("SLURM_RESTART_COUNT", "0")
with open(os.path.join(os.environ["PROBE_DIR"], f"run{restart}-rank{os.environ['SLURM_PROCID']}.json"), "w") as f:
    json.dump({"tf_config": json.loads(os.environ["TF_CONFIG"]), "argv": sys.argv[1:]}, f)
# First run: what training does on SIGUSR1/SIGTERM after saving its checkpoint. After the requeue: done.
sys.exit(75 if restart == "0" else 0)
"""


def test_step_exiting_75_requeues_the_job_which_then_finishes(slurm_env, tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(PREEMPTED_PROBE)
    env = {**slurm_env, "SMOKE": "1", "MODEL_DIR": str(tmp_path / "model"), "TRAIN_ENTRY": str(probe),
           "PROBE_DIR": str(tmp_path)}
    # Slurm starts a requeued job again only once the old run's launch credential has expired (cred_expire + 1 s:
    # 11 s on the cluster of scripts/ci_start_slurm.sh, 121 s by default). The test leaves that delay alone: a
    # requeued job forced to start within the second of its requeue is refused by slurmd (credential revoked)
    # and fails (docs/slurm.md).
    t0 = time.time()
    rc, log = _sbatch(env, tmp_path / "job.out")
    print(f"preempted + requeued job: {time.time() - t0:.1f} s")
    assert rc == 0, log[-5000:]
    assert re.search(r"training was preempted \(exit 75\).*requeueing job", log), log[-5000:]
    assert re.search(r"multinode: job \d+ \(restart 1\)", log), log[-5000:]
    assert "multinode: training finished" in log
    written = sorted(p.name for p in tmp_path.glob("run*-rank*.json"))
    assert written == ["run0-rank0.json", "run0-rank1.json", "run1-rank0.json", "run1-rank1.json"], written
    rank1 = json.loads((tmp_path / "run1-rank1.json").read_text())
    assert rank1["tf_config"]["task"] == {"type": "worker", "index": 1}
    assert len(rank1["tf_config"]["cluster"]["worker"]) == 2
    assert "--model_dir" in rank1["argv"] and str(tmp_path / "model") in rank1["argv"]


ENGINE_PROBE = """
import json, os, sys
sys.path.insert(0, os.getcwd())
from loops.parallel.distribution import create_engine
engine = create_engine()
print(json.dumps({"rank": int(os.environ["SLURM_PROCID"]), "engine": engine.name, "replicas": engine.num_replicas,
                  "chief": engine.is_chief, "task": json.loads(os.environ["TF_CONFIG"])["task"]}), flush=True)
"""


def test_plain_srun_builds_the_multiworker_engine_from_slurm(slurm_env, tmp_path):
    """`srun -n 2 python train.py`, without the loops.parallel.slurm wrapper: create_engine reads Slurm's
    environment."""
    probe = tmp_path / "engine_probe.py"
    probe.write_text(ENGINE_PROBE)
    env = {k: v for k, v in slurm_env.items() if k != "TF_CONFIG"}
    proc = subprocess.run(["srun", "-N", "1", "-n", "2", "--time=5", sys.executable, str(probe)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    tasks = sorted((json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")),
                   key=lambda t: t["rank"])
    assert [t["rank"] for t in tasks] == [0, 1], proc.stdout + proc.stderr[-3000:]
    for t in tasks:
        assert t["engine"] == "multi_worker_mirrored" and t["replicas"] == 2
        assert t["task"] == {"type": "worker", "index": t["rank"]}
    assert [t["chief"] for t in tasks] == [True, False]
    assert len(re.findall(r"loops\.parallel\.slurm: worker \d of 2", proc.stderr)) == 2


def test_resolver_outside_srun_is_none_and_cpu_nodes_skip_nvidia_smi(monkeypatch):
    """No Slurm cluster needed: the decisions create_engine relies on, from Slurm's variables."""
    # The resolver writes os.environ["CUDA_VISIBLE_DEVICES"] itself: setting it through monkeypatch first makes
    # monkeypatch restore it (to absent) afterwards, so later tests do not inherit GPUs 4-7.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    for name in list(os.environ):
        if name.startswith("SLURM_") or name in ("CUDA_VISIBLE_DEVICES", slurm.GPUS_PER_NODE_ENV):
            monkeypatch.delenv(name)
    assert slurm.slurm_cluster_resolver_or_none() is None
    # A 2-node x 2-task step on CPU nodes (nvidia-smi absent from PATH).
    monkeypatch.setenv("PATH", "/nonexistent")
    for name, value in {"SLURM_STEP_ID": "0", "SLURM_PROCID": "3", "SLURM_STEP_NUM_TASKS": "4", "SLURM_NTASKS": "4",
                        "SLURM_STEP_NODELIST": "node[07-08]", "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
                        "SLURM_JOB_ID": "1234"}.items():
        monkeypatch.setenv(name, value)
    resolver = slurm.slurm_cluster_resolver_or_none()
    assert resolver.get_task_info() == ("worker", 3)
    base = 20000 + 32 * 234
    assert resolver.cluster_spec().as_dict() == {
        "worker": [f"node07:{base}", f"node07:{base + 1}", f"node08:{base}", f"node08:{base + 1}"]}
    assert resolver.num_accelerators() == {}
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    # GPU nodes: 8 GPUs on each node, 2 tasks per node -> task 3 (second on its node) gets GPUs 4-7.
    monkeypatch.setenv("SLURM_GPUS_ON_NODE", "8")
    resolver = slurm.slurm_cluster_resolver_or_none()
    assert resolver.num_accelerators() == {"GPU": 4}
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "4,5,6,7"
