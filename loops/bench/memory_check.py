"""Long-run host-memory check: a real train.py run, its resident set sampled throughout, peak RSS per epoch
and stage, and whether memory grows from epoch to epoch within a stage.

    python -m loops.bench.memory_check [--img_size 224] [--base_img_size 160] [--batch_size 32] [--n_stages 2]
        [--epochs_per_stage 4] [--steps_per_epoch 6] [--data_dir DIR] [-- more train.py flags]

train.py runs as a child process in train_and_eval mode with progressive resizing and an evaluation (raw and
EMA weights) after every epoch, so every per-epoch rebuild (train dataset, eval datasets, checkpoint) happens
as in a real run. Samples are attributed to phases by the records train.py appends to log.jsonl: an "epoch"
record ends that epoch's training, the "eval" record after it ends its evaluation. Without --data_dir the
embedded demo dataset is used (its images are resized to the requested size, so the model, optimizer and
shuffle buffer cost what they cost at that size). Growth within a stage compares the last epoch's peak with
the first one's; the first epoch of a stage pays for tracing, so a leak shows as later epochs above it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

MIB = 2**20
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _train_command(args, model_dir: str, extra: list[str]) -> list[str]:
    epochs = args.n_stages * args.epochs_per_stage
    cmd = [sys.executable, os.path.join(REPO, "train.py"),
           "--mode", "train_and_eval", "--model_dir", model_dir, "--arch", args.arch,
           "--train_img_size", str(args.img_size), "--eval_img_size", str(args.img_size),
           "--base_img_size", str(args.base_img_size), "--n_stages", str(args.n_stages),
           "--max_epochs", str(epochs), "--warmup_epochs", "1", "--steps_per_epoch", str(args.steps_per_epoch),
           "--train_batch_size", str(args.batch_size), "--eval_batch_size", str(args.eval_batch_size),
           "--epochs_between_evals", "1", "--save_checkpoint_freq", "1", "--log_steps", "1000000"]
    if args.data_dir:
        cmd += ["--data_dir", args.data_dir]
    return cmd + extra


class _Phases:
    """Peak RSS per phase: ("train", epoch) until log.jsonl says the epoch ended, then ("eval", epoch)."""

    def __init__(self, log_path: str):
        self.log_path = log_path
        self._offset = 0
        self.phase = ("train", 1)
        self.peaks: dict[tuple[str, int], int] = {}
        self.epoch_end_rss: dict[int, int] = {}
        self.stage_of: dict[int, tuple[int, int]] = {}  # epoch -> (stage, image size)

    def _advance(self, rss: int):
        if not os.path.exists(self.log_path):
            return
        with open(self.log_path) as f:
            f.seek(self._offset)
            while True:
                line = f.readline()
                if not line.endswith("\n"):  # a partly written line is read again next time
                    break
                self._offset = f.tell()
                record = json.loads(line)
                if record["kind"] == "epoch":
                    epoch = int(record["epoch"])
                    self.stage_of[epoch] = (int(record["stage"]), int(record["image_size"]))
                    self.epoch_end_rss[epoch] = rss
                    self.phase = ("eval", epoch)
                elif record["kind"] == "eval":
                    self.phase = ("train", int(record["epoch"]) + 1)

    def sample(self, rss: int):
        self._advance(rss)
        self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), rss)


def run(args, extra: list[str]) -> int:
    import psutil

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or os.path.join(tmp, "run")
        os.makedirs(model_dir, exist_ok=True)
        cmd = _train_command(args, model_dir, extra)
        print("command:", " ".join(cmd), flush=True)
        print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
        phases = _Phases(os.path.join(model_dir, "log.jsonl"))
        out_path = os.path.join(model_dir, "train_output.txt")
        start = time.time()
        with open(out_path, "w") as out:
            child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                     env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
            proc = psutil.Process(child.pid)
            overall = 0
            while child.poll() is None:
                try:
                    rss = proc.memory_info().rss
                except psutil.NoSuchProcess:
                    break
                overall = max(overall, rss)
                phases.sample(rss)
                time.sleep(args.interval)
            code = child.wait()
        seconds = time.time() - start
        if code != 0:
            with open(out_path) as f:
                print(f.read()[-4000:], file=sys.stderr)
            print(f"memory_check: train.py exited with code {code}", file=sys.stderr)
            return 1
        print(f"train.py finished in {seconds:.0f} s; load average after: {os.getloadavg()[0]:.2f}")
        return report(phases, overall, args.tolerance_mib)


def report(phases: _Phases, overall: int, tolerance_mib: float) -> int:
    epochs = sorted(phases.stage_of)
    print("\n| epoch | stage | image size | peak RSS training (MiB) | peak RSS evaluation (MiB) "
          "| RSS at epoch end (MiB) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for e in epochs:
        stage, size = phases.stage_of[e]
        print(f"| {e} | {stage} | {size} | {phases.peaks.get(('train', e), 0) / MIB:.0f} "
              f"| {phases.peaks.get(('eval', e), 0) / MIB:.0f} | {phases.epoch_end_rss[e] / MIB:.0f} |")
    print("\n| stage | image size | epochs | peak RSS (MiB) | growth first -> last epoch (MiB) |")
    print("|---:|---:|---:|---:|---:|")
    growths = []
    for stage in sorted({s for s, _ in phases.stage_of.values()}):
        mine = [e for e in epochs if phases.stage_of[e][0] == stage]
        peak = max(max(phases.peaks.get((k, e), 0) for k in ("train", "eval")) for e in mine)
        # Training peaks only: the evaluation after the stage's last epoch may already belong to the next one.
        growth = (phases.peaks[("train", mine[-1])] - phases.peaks[("train", mine[0])]) / MIB
        growths.append(growth)
        print(f"| {stage} | {phases.stage_of[mine[0]][1]} | {len(mine)} | {peak / MIB:.0f} | {growth:+.0f} |")
    print(f"\npeak RSS of the run: {overall / MIB:.0f} MiB")
    worst = max(growths)
    grew = worst > tolerance_mib
    print(f"verdict: {'GROWTH' if grew else 'no growth'}: largest within-stage growth {worst:+.0f} MiB "
          f"(tolerance {tolerance_mib:.0f} MiB)")
    return 2 if grew else 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="efficientnet-b0")
    p.add_argument("--img_size", type=int, default=224, help="last stage's training size, and the eval size")
    p.add_argument("--base_img_size", type=int, default=160, help="first stage's training size")
    p.add_argument("--n_stages", type=int, default=2)
    p.add_argument("--epochs_per_stage", type=int, default=4)
    p.add_argument("--steps_per_epoch", type=int, default=6)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--eval_batch_size", type=int, default=32)
    p.add_argument("--data_dir", default=None, help="default: the embedded demo dataset")
    p.add_argument("--model_dir", default=None, help="default: a temporary directory, removed afterwards")
    p.add_argument("--interval", type=float, default=0.05, help="seconds between RSS samples")
    p.add_argument("--tolerance_mib", type=float, default=64.0,
                   help="within-stage growth above this is reported as growth (exit code 2)")
    args = p.parse_args(own)
    if args.n_stages < 2 or args.epochs_per_stage < 2:
        p.error("a growth check needs --n_stages >= 2 and --epochs_per_stage >= 2")
    return run(args, extra)


if __name__ == "__main__":
    sys.exit(main())
