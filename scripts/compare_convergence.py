"""Does a user's own small dataset learn as well with train.py as with Keras Applications + fit? One command
trains both on the same image folder with the same budget and recipe and prints both top-1s:

    .venv/bin/python scripts/compare_convergence.py --data_dir DIR [--img_size 32] [--batch_size 64] \
        [--epochs 10] [--warmup_epochs 1] [-- extra train.py flags]

DIR holds train/<class>/* and validation/<class>/* (scripts/small_image_datasets.py writes such folders).

Ours: train.py itself in a subprocess (--data_dir DIR --train_img_size/--eval_img_size S --train_batch_size B
--max_epochs E --warmup_epochs W, plus the flags after `--`), evaluated once at the end; its summary.json gives
the top-1 of the raw and of the EMA weights. Preprocessing is whatever train.py decides or is told.

Keras: `keras.applications.EfficientNetB0(weights=None)` on `keras.utils.image_dataset_from_directory` (the
whole image resized to S, no augmentation), compiled with the same optimizer (RMSprop rho 0.9, momentum 0.9,
epsilon 1e-3), the same learning-rate schedule object train.py builds (peak lr_init x B / 128, linear warmup,
cosine to 0), the same label smoothing (0.1), and fit for the same number of steps (train images // B per
epoch), then evaluated on the validation folder.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def train_ours(args, model_dir: str, extra: list[str]) -> dict:
    """train.py on the folder; returns its summary.json plus the wall time."""
    cmd = [sys.executable, os.path.join(REPO, "train.py"), "--data_dir", args.data_dir, "--model_dir", model_dir,
           "--train_img_size", str(args.img_size), "--eval_img_size", str(args.img_size),
           "--train_batch_size", str(args.batch_size), "--eval_batch_size", str(args.batch_size),
           "--max_epochs", str(args.epochs), "--warmup_epochs", str(args.warmup_epochs),
           "--lr_init", str(args.lr_init), "--seed", str(args.seed), "--epochs_between_evals", str(args.epochs),
           "--save_checkpoint_freq", str(args.epochs), *extra]
    print("ours:", " ".join(cmd[1:]), flush=True)
    start = time.time()
    proc = subprocess.run(cmd, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    seconds = time.time() - start
    for line in proc.stdout.splitlines():
        if line.startswith(("input:", "note:", "Warning")):
            print("ours:", line, flush=True)
    if proc.returncode != 0:
        raise RuntimeError(f"train.py failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}")
    with open(os.path.join(model_dir, "summary.json")) as f:
        return {**json.load(f), "seconds": seconds}


def train_keras(args) -> dict:
    """Keras Applications' EfficientNetB0 + fit with our recipe; returns the validation top-1 and wall time."""
    import keras
    import tensorflow as tf

    from loops.config import TrainConfig
    from loops.optimization import learning_rate_schedule

    keras.utils.set_random_seed(args.seed)
    size = (args.img_size, args.img_size)
    folder = {split: os.path.join(args.data_dir, split) for split in ("train", "validation")}
    # Unbatched, then batched without a remainder: every step a full batch, as in train.py.
    train = keras.utils.image_dataset_from_directory(folder["train"], label_mode="categorical", image_size=size,
                                                     batch_size=None, shuffle=True, seed=args.seed)
    validation = keras.utils.image_dataset_from_directory(folder["validation"], label_mode="categorical",
                                                          image_size=size, batch_size=args.batch_size,
                                                          shuffle=False)
    num_train = sum(len(files) for _, _, files in os.walk(folder["train"]))
    steps_per_epoch = num_train // args.batch_size
    recipe = TrainConfig(train_batch_size=args.batch_size, max_epochs=args.epochs, warmup_epochs=args.warmup_epochs,
                         lr_init=args.lr_init)
    schedule = learning_rate_schedule(recipe, 1, steps_per_epoch)
    model = keras.applications.EfficientNetB0(weights=None, input_shape=(*size, 3), classes=len(train.class_names),
                                              classifier_activation=None)
    model.compile(optimizer=keras.optimizers.RMSprop(schedule, rho=recipe.rho, momentum=recipe.momentum,
                                                     epsilon=recipe.epsilon),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True,
                                                            label_smoothing=recipe.label_smoothing),
                  metrics=["accuracy"])
    start = time.time()
    batches = train.shuffle(num_train, seed=args.seed).repeat().batch(args.batch_size, drop_remainder=True)
    model.fit(batches.prefetch(tf.data.AUTOTUNE), steps_per_epoch=steps_per_epoch, epochs=args.epochs, verbose=2)
    _, top1 = model.evaluate(validation, verbose=0)
    return {"eval_accuracy_top_1": float(top1), "seconds": time.time() - start, "steps": steps_per_epoch * args.epochs}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", required=True, help="image folder: train/<class>/*, validation/<class>/*")
    p.add_argument("--img_size", type=int, default=32)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--warmup_epochs", type=float, default=1.0)
    p.add_argument("--lr_init", type=float, default=0.005, help="learning rate per 128 images (train.py's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model_dir", default=None, help="where ours trains (default: a temporary directory)")
    args = p.parse_args(argv)
    for split in ("train", "validation"):
        if not os.path.isdir(os.path.join(args.data_dir, split)):
            p.error(f"--data_dir {args.data_dir} has no {split}/ folder")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        ours = train_ours(args, args.model_dir or os.path.join(tmp, "ours"), extra)
    keras_result = train_keras(args)
    print(f"\n{args.data_dir}: {args.img_size} px, batch {args.batch_size}, {args.epochs} epochs "
          f"({ours['steps']} steps each), warmup {args.warmup_epochs:g}, lr_init {args.lr_init:g}; train.py flags: "
          f"{' '.join(extra) or '(none)'}; {os.cpu_count()} CPUs, load average {load_before:.2f} at the start, "
          f"{os.getloadavg()[0]:.2f} at the end")
    print("| model | top-1 | train + eval s |\n|---|---:|---:|")
    print(f"| ours, raw weights | {ours['eval_accuracy_top_1']:.4f} | {ours['seconds']:.0f} |")
    if "eval_accuracy_top_1_ema" in ours:
        print(f"| ours, EMA weights | {ours['eval_accuracy_top_1_ema']:.4f} | |")
    print(f"| Keras Applications EfficientNetB0 + fit | {keras_result['eval_accuracy_top_1']:.4f} | "
          f"{keras_result['seconds']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
