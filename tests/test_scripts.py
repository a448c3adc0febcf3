"""scripts/: the recipe layout, the reference's hyperparameters in every full-size command (DRY_RUN=1, no Python),
every full-size and smoke-mode command (SMOKE=1: demo data, 32 px, 2 steps, CPU) accepted by its entry point's
flag parser, and the smoke commands of every distinct code path run for real, asserting exit codes and the
files each leaves behind."""

import concurrent.futures
import functools
import json
import os
import pathlib
import re
import subprocess
import sys
import time

import pytest
from absl import flags as absl_flags

import preloaded
from conftest import TINY_MPARAMS
from flags import cli
from loops.config import EvalConfig, TrainConfig
from loops.serving.config import PredictConfig

ROOT = pathlib.Path(__file__).resolve().parent.parent
RECIPES = ROOT / "scripts" / "recipes"
MODELS = ("B0", "B4")
PRECISIONS = ("AMP", "TF32", "FP32")
GPUS = ("A100-80G", "V100-32G")
# The reference's batch per GPU (docs/recipes.md) and resolution.
BATCH = {("B0", "A100-80G"): 1024, ("B0", "V100-32G"): 512, ("B4", "A100-80G"): 160, ("B4", "V100-32G"): 64}
SIZE = {"B0": 224, "B4": 380}
PRECISION_FLAG = {"AMP": "amp_fp16", "TF32": "tf32", "FP32": "fp32"}


def _expected_recipes():
    out = []
    for m in MODELS:
        for p in PRECISIONS:
            for g in GPUS:
                out += [f"{m}/training/{p}/convergence_8x{g}.sh", f"{m}/training/{p}/train_benchmark_8x{g}.sh",
                        f"{m}/evaluation/evaluation_{p}_8x{g}.sh"]
            out.append(f"{m}/inference/inference_{p}.sh")
    return sorted(out)


ALL_RECIPES = _expected_recipes()
SHELL_FILES = sorted(str(p.relative_to(ROOT)) for p in [*RECIPES.rglob("*.sh"), *(ROOT / "scripts" / "slurm").iterdir(),
                                                         ROOT / "scripts" / "ci_start_slurm.sh"])


def _environment():
    # Without the caller's device choice: the launcher keeps an explicit CUDA_VISIBLE_DEVICES.
    return {**{k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}, "PYTHON": sys.executable}


def _run(rel, env=None, args=(), timeout=60):
    return subprocess.run(["bash", str(RECIPES / rel), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**_environment(), **(env or {})})


def _kind(rel):
    """(kind, model, precision, gpu) from a recipe's path."""
    m = re.fullmatch(r"(B\d)/(?:training/(\w+)/(convergence|train_benchmark)_8x([\w-]+)|evaluation/evaluation_(\w+)_8x"
                     r"([\w-]+)|inference/inference_(\w+))\.sh", rel)
    model = m.group(1)
    if m.group(3):
        return ("convergence" if m.group(3) == "convergence" else "benchmark"), model, m.group(2), m.group(4)
    if m.group(5):
        return "evaluation", model, m.group(5), m.group(6)
    return "inference", model, m.group(7), None


def test_layout_is_the_references_and_every_recipe_is_executable():
    actual = sorted(str(p.relative_to(RECIPES)) for p in RECIPES.rglob("*.sh") if p.name != "common.sh")
    assert actual == ALL_RECIPES
    for rel in ALL_RECIPES:
        assert os.access(RECIPES / rel, os.X_OK), rel
    for sub in ("run_B0_multinode.sub", "run_B4_multinode.sub"):
        assert os.access(ROOT / "scripts" / "slurm" / sub, os.X_OK)


@pytest.mark.parametrize("rel", SHELL_FILES)
def test_every_script_parses(rel):
    proc = subprocess.run(["bash", "-n", rel], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("rel", ALL_RECIPES)
def test_each_recipe_is_a_call_of_the_shared_launcher_naming_what_its_path_says(rel):
    kind, model, prec, gpu = _kind(rel)
    body = [line for line in (RECIPES / rel).read_text().splitlines() if line.strip() and not line.startswith("#")]
    main = {"convergence": f"recipe_main train {model} {prec} {gpu} convergence",
            "benchmark": f"recipe_main train {model} {prec} {gpu} benchmark",
            "evaluation": f"recipe_main eval {model} {prec} {gpu}",
            "inference": f"recipe_main infer {model} {prec}"}[kind]
    assert len(body) == 2 and body[0].startswith("source ") and body[0].endswith('common.sh"'), body
    assert body[1] == main + ' "$@"'


def _dry_run(rel, env=None, args=()):
    proc = _run(rel, {"DRY_RUN": "1", **(env or {})}, args)
    assert proc.returncode == 0, proc.stderr
    line = [text for text in proc.stderr.splitlines() if text.startswith("+ ")]
    assert len(line) == 1, proc.stderr
    return line[0][2:].split()


def _flag(cmd, name):
    assert cmd.count(name) >= 1, (name, cmd)
    return cmd[len(cmd) - 1 - cmd[::-1].index(name) + 1]   # the last occurrence wins in absl


@pytest.mark.parametrize("rel", ALL_RECIPES)
def test_full_size_command_has_the_references_hyperparameters(rel):
    kind, model, prec, gpu = _kind(rel)
    devices, *cmd = _dry_run(rel, {"OUTPUT_DIR": "/results"})
    # Training uses the 8 GPUs of the recipe's name (NUM_GPUS default); evaluation and inference one.
    assert devices == ("CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7" if kind in ("convergence", "benchmark")
                       else "CUDA_VISIBLE_DEVICES=0")
    assert cmd[0] == sys.executable
    assert _flag(cmd, "--precision") == PRECISION_FLAG[prec]
    if kind in ("convergence", "benchmark"):
        assert cmd[1] == "train.py"
        assert _flag(cmd, "--arch") == f"efficientnet-{model.lower()}"
        assert _flag(cmd, "--train_batch_size") == str(BATCH[model, gpu])
        assert _flag(cmd, "--train_img_size") == _flag(cmd, "--eval_img_size") == str(SIZE[model])
        assert _flag(cmd, "--data_dir") == "/data"
        assert "--use_xla" in cmd
        for name, value in [("--lr_init", "0.005"), ("--max_epochs", "500"), ("--warmup_epochs", "5"),
                            ("--optimizer", "rmsprop"), ("--lr_decay", "cosine"), ("--label_smoothing", "0.1"),
                            ("--moving_average_decay", "0.9999"), ("--weight_decay", "5e-6"),
                            ("--augmenter_name", "autoaugment")]:
            assert _flag(cmd, name) == value, name
        if model == "B4":
            assert _flag(cmd, "--mixup_alpha") == "0.2" and "--defer_img_mixing" in cmd
        else:
            assert "--mixup_alpha" not in cmd
        if kind == "convergence":
            assert _flag(cmd, "--mode") == "train_and_eval"
            assert _flag(cmd, "--model_dir") == f"/results/{model}/{prec}_8x{gpu}"
        else:
            assert _flag(cmd, "--mode") == "training_benchmark"
            assert _flag(cmd, "--benchmark_precisions") == PRECISION_FLAG[prec]
            assert _flag(cmd, "--benchmark_batch_sizes") == str(BATCH[model, gpu])
    elif kind == "evaluation":
        assert cmd[1] == "evaluate.py"
        # Evaluates the convergence recipe's model dir, both raw and EMA weights (the reference: raw only).
        assert _flag(cmd, "--ckpt") == f"/results/{model}/{prec}_8x{gpu}" and _flag(cmd, "--weights") == "both"
        assert _flag(cmd, "--eval_batch_size") == str(BATCH[model, gpu])
    else:
        assert cmd[1] == "predict.py"
        assert _flag(cmd, "--image_dir") == "/infer_data/images"
        assert _flag(cmd, "--ckpt") == f"/results/{model}/{prec}_8xA100-80G"


def test_environment_overrides_and_appended_flags():
    rel = "B0/training/AMP/convergence_8xA100-80G.sh"
    cmd = _dry_run(rel, {"DATA_DIR": "/imagenet", "MODEL_DIR": "/ckpt/b0", "NUM_GPUS": "2", "XLA": "0"},
                   ["--max_epochs", "350"])
    assert cmd[0] == "CUDA_VISIBLE_DEVICES=0,1"
    assert _flag(cmd, "--data_dir") == "/imagenet" and _flag(cmd, "--model_dir") == "/ckpt/b0"
    assert _flag(cmd, "--max_epochs") == "350" and "--use_xla" not in cmd
    # An explicit device choice is kept.
    assert _dry_run(rel, {"CUDA_VISIBLE_DEVICES": "3", "NUM_GPUS": "1"})[0] == "CUDA_VISIBLE_DEVICES=3"
    hvd = _dry_run(rel, {"ENGINE": "horovod", "NUM_GPUS": "4"})
    assert hvd[0].endswith("horovodrun") and hvd[1:6] == ["-np", "4", "-H", "localhost:4", "--gloo"]
    assert hvd[6] == sys.executable and hvd[7] == "train.py"
    for env, message in [({"NUM_GPUS": "eight"}, "NUM_GPUS must be a positive integer"),
                         ({"ENGINE": "mpi"}, "ENGINE must be tf_distribute or horovod")]:
        proc = _run(rel, {"DRY_RUN": "1", **env})
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_smoke_command_is_cpu_sized_fp32_without_xla():
    cmd = _dry_run("B4/training/AMP/convergence_8xA100-80G.sh", {"SMOKE": "1", "OUTPUT_DIR": "/o"})
    assert cmd[0] == sys.executable and "--data_dir" not in cmd and "--use_xla" not in cmd
    assert _flag(cmd, "--precision") == "fp32" and _flag(cmd, "--train_img_size") == "32"
    assert _flag(cmd, "--steps_per_epoch") == "2" and _flag(cmd, "--model_dir") == "/o/smoke/B4"
    # The recipe's model and augmentation are kept.
    assert _flag(cmd, "--arch") == "efficientnet-b4" and _flag(cmd, "--mixup_alpha") == "0.2"


# --- Every recipe, in smoke mode -------------------------------------------------------------------------------
# In smoke mode the precision and GPU type of a recipe only name its output files (smoke runs are fp32 on the CPU
# at one small batch), so the 42 recipes make 8 distinct commands, and every recipe is checked to be one of them
# but for those names. Every command is parsed by its entry point; the distinct code paths run for real.
_PER_RECIPE_NAME = re.compile(r"(?<=_)(AMP|TF32|FP32)(?=_8x|\.jsonl)|(?<=_8x)(A100-80G|V100-32G)")
CONFIGS = {"train.py": TrainConfig, "evaluate.py": EvalConfig, "predict.py": PredictConfig}


@functools.lru_cache(maxsize=None)
def _smoke_command(rel):
    return tuple(_dry_run(rel, {"SMOKE": "1", "OUTPUT_DIR": "/o"}))


def _generic(command):
    return [_PER_RECIPE_NAME.sub("*", word) for word in command]


def _smoke_files(out, rel):
    kind, model, prec, gpu = _kind(rel)
    base = out / "smoke" / model
    return {"convergence": [base / "checkpoint", base / "ckpt-2.index", base / "summary.json"],
            "benchmark": [base / f"train_benchmark_{prec}_8x{gpu}" / "training_benchmark.json"],
            "evaluation": [base / f"evaluation_{prec}_8x{gpu}.json"],
            "inference": [base / f"predictions_{prec}.jsonl"]}[kind]


def _representatives():
    """The first recipe (in ALL_RECIPES order) of each distinct smoke command, per model in run order:
    training first (later recipes evaluate and predict with its checkpoint)."""
    seen, picked = set(), []
    for kind in ("convergence", "benchmark", "evaluation", "inference"):
        for rel in ALL_RECIPES:
            key = tuple(_generic(_smoke_command(rel)))
            if _kind(rel)[0] == kind and key not in seen:
                seen.add(key)
                picked.append(rel)
    return picked


DISTINCT = _representatives()
# Run for real: both convergence recipes (B4's train step mixes images, B0's does not) and B4's benchmark,
# evaluation and inference recipes; B0's differ from those only in the model's name and flags that do not change
# their code path (test_b0_smoke_command_is_the_run_b4_one_but_for_the_model).
SMOKE_RUNS = [rel for rel in DISTINCT if _kind(rel)[0] == "convergence" or _kind(rel)[1] == "B4"]
# The training runs get the tests' tiny network appended (a recipe passes extra flags on, and the last wins;
# evaluation and inference rebuild it from run_spec.json): these runs check that the launcher and each recipe's
# flags start and finish every entry point, which does not depend on the network's size, while tracing the
# recipes' own B0 and B4 (32 blocks) would make each run several times slower. test_model.py checks those.
SMOKE_NETWORK = ("--mparams", TINY_MPARAMS)
# The one recipe run twice: the second run resumes the finished one, as a rerun after preemption does. Which
# model it trains does not change that code path.
RERUN = next(rel for rel in SMOKE_RUNS if _kind(rel)[0] == "convergence")


def _parse(command):
    """The config the command's entry point builds from its flags, every rule checked, without running it."""
    if command[0].startswith("CUDA_VISIBLE_DEVICES="):
        command = command[1:]
    script, *args = command[1:]
    values = absl_flags.FlagValues()
    cli.define(CONFIGS[script], values)
    values([script, *args])
    return cli.build(CONFIGS[script], values)


@pytest.mark.parametrize("rel", ALL_RECIPES)
def test_every_recipe_command_is_accepted_by_its_entry_point(rel):
    kind, model, _, _ = _kind(rel)
    for command in (_dry_run(rel, {"OUTPUT_DIR": "/results"}), _smoke_command(rel)):
        config = _parse(command)
        if kind in ("convergence", "benchmark"):
            assert config.variant == model.lower()


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """Runs SMOKE_RUNS, two at a time (2 cores): per model its convergence recipe (RERUN twice), then for B4
    its evaluation and inference recipes on that checkpoint; the benchmark fills the other slot. RERUN's first
    run and the inference recipe run through bash; the others run the command the recipe prints.
    -> (out dir, {rel: [(proc, seconds), ...]})."""
    out = tmp_path_factory.mktemp("recipes_smoke")
    env = {"SMOKE": "1", "OUTPUT_DIR": str(out), "TF_CPP_MIN_LOG_LEVEL": "2"}
    results = {}

    def run(rel):
        t0 = time.time()
        args = SMOKE_NETWORK if _kind(rel)[0] in ("convergence", "benchmark") else ()
        if (rel == RERUN and rel not in results) or _kind(rel)[0] == "inference":
            # Through bash: the launcher end to end, and the demo digits it writes for the inference recipes.
            proc = _run(rel, env, args, timeout=600)
        else:
            # The command the launcher prints (DRY_RUN=1), run by a process forked with TensorFlow loaded.
            python, *command = _dry_run(rel, env, args)
            assert python == sys.executable, python
            proc = preloaded.run(command, cwd=ROOT, env={**_environment(), **env}, timeout=600)
        results.setdefault(rel, []).append((proc, time.time() - t0))

    def chain(model):
        for kind in ("convergence", "evaluation", "inference"):
            for rel in SMOKE_RUNS:
                if rel.startswith(model) and _kind(rel)[0] == kind:
                    run(rel)
                    if rel == RERUN:
                        run(rel)

    benchmarks = [rel for rel in SMOKE_RUNS if _kind(rel)[0] == "benchmark"]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for f in [pool.submit(chain, m) for m in MODELS] + [pool.submit(run, rel) for rel in benchmarks]:
            f.result()
    return out, results


def test_the_42_recipes_make_8_distinct_smoke_commands():
    assert len(DISTINCT) == 8
    assert sorted(_kind(rel)[:2] for rel in DISTINCT) == sorted(
        (kind, model) for kind in ("benchmark", "convergence", "evaluation", "inference") for model in MODELS)


@pytest.mark.parametrize("rel", ALL_RECIPES)
def test_each_recipe_smoke_command_is_one_of_the_8_but_for_its_file_names(rel):
    command = _smoke_command(rel)
    runs = [r for r in DISTINCT if _generic(_smoke_command(r)) == _generic(command)]
    assert len(runs) == 1, (rel, runs)
    kind, model, prec, gpu = _kind(rel)
    # The names it differs by are its own, so recipes of one model never overwrite each other's results.
    named = [w for w in command if _PER_RECIPE_NAME.search(w)]
    expected = {"convergence": 0, "benchmark": 1, "evaluation": 1, "inference": 1}[kind]
    assert len(named) == expected, command
    assert all(prec in w and (gpu is None or gpu in w) for w in named), command


@pytest.mark.parametrize("kind", ["benchmark", "evaluation", "inference"])
def test_b0_smoke_command_is_the_run_b4_one_but_for_the_model(kind):
    """Evaluation and inference read the network from the model directory, so B0's commands name only another
    directory; the training benchmark also builds another --arch and leaves out B4's image mixing, which it
    does not apply (its step is built without mixing). B0's flags pass train.py's parser too
    (test_every_recipe_command_is_accepted_by_its_entry_point)."""
    b0, b4 = (next(rel for rel in DISTINCT if _kind(rel)[:2] == (kind, model)) for model in MODELS)
    assert b4 in SMOKE_RUNS and b0 not in SMOKE_RUNS
    b0_command = [word.replace("/smoke/B0", "/smoke/B4").replace("efficientnet-b0", "efficientnet-b4")
                  for word in _generic(_smoke_command(b0))]
    b4_command = _generic(_smoke_command(b4))
    if kind == "benchmark":
        mixing = b4_command.index("--mixup_alpha")
        assert b4_command[mixing:mixing + 3] == ["--mixup_alpha", "0.2", "--defer_img_mixing"], b4_command
        del b4_command[mixing:mixing + 3]
    assert b0_command == b4_command
    assert b0_command != _generic(_smoke_command(b0))  # the model's name was there to replace


@pytest.mark.slow
@pytest.mark.parametrize("rel", SMOKE_RUNS)
def test_smoke_command_runs_and_leaves_its_files(smoke_runs, rel):
    out, results = smoke_runs
    for proc, seconds in results[rel]:
        assert proc.returncode == 0, f"{rel} exited {proc.returncode} after {seconds:.0f} s:\n{proc.stderr[-4000:]}"
    for path in _smoke_files(out, rel):
        assert path.is_file(), f"{rel} did not leave {path}"
    kind, model, prec, gpu = _kind(rel)
    if kind == "convergence":
        assert len(results[rel]) == (2 if rel == RERUN else 1)
        # RERUN: the second run found the finished run and kept it (2 steps, not 4).
        assert json.loads((out / "smoke" / model / "summary.json").read_text())["steps"] == 2
    elif kind == "evaluation":
        report = json.loads(_smoke_files(out, rel)[0].read_text())
        assert "ema" in json.dumps(report) and "raw" in json.dumps(report), report
    elif kind == "inference":
        lines = _smoke_files(out, rel)[0].read_text().splitlines()
        assert len(lines) == 6, lines   # the six demo digits the smoke mode writes


def test_install_horovod_without_tensorflow_stops_with_one_line_naming_the_interpreter(tmp_path):
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", tmp_path / "venv"], check=True, timeout=60)
    python = str(tmp_path / "venv" / "bin" / "python")
    for args in ([], ["--wheel-only"]):
        out = subprocess.run(["bash", str(ROOT / "scripts" / "install_horovod.sh"), *args], capture_output=True,
                             text=True, timeout=60, env={**os.environ, "PYTHON": python})
        assert out.returncode == 1, args
        assert out.stderr.strip().splitlines() == [
            f"install_horovod.sh: ERROR: TensorFlow is not installed in {python}; install the requirements first "
            "(see README)"], out.stderr
