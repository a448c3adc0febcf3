"""Does a user's own small dataset learn as well with train.py as with Keras Applications + fit? One command
trains both on the same image folder with the same budget and recipe and prints both top-1s:

    .venv/bin/python scripts/compare_convergence.py --data_dir DIR [--img_size 32] [--batch_size 64] \
        [--epochs 10] [--warmup_epochs 1] [-- more train.py flags, e.g. --flagfile flags/demo.cfg]

DIR holds train/<class>/* and validation/<class>/* (scripts/small_image_datasets.py writes such folders).

Ours: train.py itself in a subprocess (--data_dir DIR --train_img_size/--eval_img_size S --train_batch_size B
--max_epochs E --warmup_epochs W, then the flags after `--`, which win), evaluated once at the end; its
summary.json gives the top-1 of the raw and of the EMA weights. Preprocessing is whatever train.py decides or
is told.

Keras: Keras Applications' EfficientNet of ours' variant and --mparams width/depth coefficients (by default
`keras.applications.EfficientNetB0(weights=None)`) on `keras.utils.image_dataset_from_directory` (the
whole image resized to S, no augmentation). The recipe is read from ours' command line with train.py's own
flag parser, so both get the same: batch size, epochs, image size, the optimizer (RMSprop rho, momentum,
epsilon), the learning-rate schedule object train.py builds (lr_init x batch / 128, linear warmup, cosine or
exponential decay), label smoothing, and the BatchNorm momentum and classifier initializer when `--mparams
bn_momentum=...,classifier_init=...` sets them. Fit runs the same number of steps (train images // batch per
epoch); then the validation folder is evaluated.
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
from loops import host_memory  # noqa: E402


def ours_flags(args, model_dir: str, extra: list[str]) -> list[str]:
    """train.py's command line: the comparison's budget, then the user's flags (later flags win in absl)."""
    return ["--data_dir", args.data_dir, "--model_dir", model_dir, "--train_img_size", str(args.img_size),
            "--eval_img_size", str(args.img_size), "--train_batch_size", str(args.batch_size),
            "--eval_batch_size", str(args.batch_size), "--max_epochs", str(args.epochs),
            "--warmup_epochs", str(args.warmup_epochs), "--lr_init", str(args.lr_init), "--seed", str(args.seed),
            "--epochs_between_evals", "1000000", "--save_checkpoint_freq", "1000000", *extra]


def recipe_of(flags: list[str]):
    """The TrainConfig train.py builds from these flags (its own parser: flag files, overrides, rules)."""
    from absl import flags as absl_flags

    from flags import cli
    from loops.config import TrainConfig

    values = absl_flags.FlagValues()
    cli.define(TrainConfig, values)
    values(["train.py", *flags])
    return cli.build(TrainConfig, values)


def train_ours(flags: list[str], model_dir: str) -> dict:
    """train.py on the folder; returns its summary.json plus the wall time."""
    cmd = [sys.executable, os.path.join(REPO, "train.py"), *flags]
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


def keras_params(recipe, num_classes: int | None = None):
    """The network of ours' recipe (variant and --mparams) for Keras Applications' builder; a ValueError names
    what Keras cannot build."""
    from efficientnet.params import params_for
    from efficientnet.pretrained import check_keras_architecture

    classes = {"num_classes": num_classes} if num_classes else {}
    params = params_for(recipe.variant, **recipe.model_overrides, **classes)
    check_keras_architecture("--mparams", params, any_coefficients=True)
    return params


def keras_name(params) -> str:
    from efficientnet.pretrained import standard_variant

    variant = standard_variant(params)
    return (f"EfficientNet{variant.upper()}" if variant else
            f"EfficientNet (width {params.width_coefficient:g}, depth {params.depth_coefficient:g})")


def train_keras(data_dir: str, recipe) -> dict:
    """Keras Applications' EfficientNet + fit with our recipe; returns the validation top-1 and wall time."""
    import keras
    import tensorflow as tf

    from efficientnet.pretrained import keras_applications_model
    from loops.optimization import learning_rate_schedule

    keras.utils.set_random_seed(recipe.seed)
    size = (recipe.train_img_size, recipe.train_img_size)
    batch = recipe.train_batch_size
    folder = {split: os.path.join(data_dir, split) for split in ("train", "validation")}
    # Unbatched, then batched without a remainder: every step a full batch, as in train.py.
    train = keras.utils.image_dataset_from_directory(folder["train"], label_mode="categorical", image_size=size,
                                                     batch_size=None, shuffle=True, seed=recipe.seed)
    validation = keras.utils.image_dataset_from_directory(folder["validation"], label_mode="categorical",
                                                          image_size=size, batch_size=batch, shuffle=False)
    num_train = sum(len(files) for _, _, files in os.walk(folder["train"]))
    steps_per_epoch = num_train // batch
    schedule = learning_rate_schedule(recipe, 1, steps_per_epoch)
    model = keras_applications_model(keras_params(recipe, len(train.class_names)), input_shape=(*size, 3))
    model.compile(optimizer=keras.optimizers.RMSprop(schedule, rho=recipe.rho, momentum=recipe.momentum,
                                                     epsilon=recipe.epsilon),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True,
                                                            label_smoothing=recipe.label_smoothing),
                  metrics=["accuracy"])
    start = time.time()
    batches = train.shuffle(num_train, seed=recipe.seed).repeat().batch(batch, drop_remainder=True)
    model.fit(batches.prefetch(tf.data.AUTOTUNE), steps_per_epoch=steps_per_epoch, epochs=recipe.max_epochs,
              verbose=2)
    _, top1 = model.evaluate(validation, verbose=0)
    return {"eval_accuracy_top_1": float(top1), "seconds": time.time() - start,
            "steps": steps_per_epoch * recipe.max_epochs}


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
        flags = ours_flags(args, args.model_dir or os.path.join(tmp, "ours"), extra)
        recipe = recipe_of(flags)
        try:  # before either side trains
            keras_label = f"Keras Applications {keras_name(keras_params(recipe))} + fit"
        except ValueError as e:
            p.error(str(e))
        ours = train_ours(flags, recipe.model_dir)
    host_memory.keep_freed_memory()  # Keras's fit, in this process, with the malloc settings train.py runs under
    keras_result = train_keras(args.data_dir, recipe)
    if keras_result["steps"] != ours["steps"]:
        raise RuntimeError(f"ours ran {ours['steps']} steps, Keras {keras_result['steps']}")
    print(f"\n{args.data_dir}: {recipe.train_img_size} px, batch {recipe.train_batch_size}, {recipe.max_epochs} "
          f"epochs ({ours['steps']} steps each), warmup {recipe.warmup_epochs:g}, lr_init {recipe.lr_init:g}, "
          f"bn_momentum {recipe.model_overrides.get('bn_momentum', 0.99)}, classifier_init "
          f"{recipe.model_overrides.get('classifier_init', 'fan_out')}; train.py flags: "
          f"{' '.join(extra) or '(none)'}; {os.cpu_count()} CPUs, load average {load_before:.2f} at the start, "
          f"{os.getloadavg()[0]:.2f} at the end")
    print("| model | top-1 | train + eval s |\n|---|---:|---:|")
    print(f"| ours, raw weights | {ours['eval_accuracy_top_1']:.4f} | {ours['seconds']:.0f} |")
    if "eval_accuracy_top_1_ema" in ours:
        print(f"| ours, EMA weights | {ours['eval_accuracy_top_1_ema']:.4f} | |")
    print(f"| {keras_label} | {keras_result['eval_accuracy_top_1']:.4f} | "
          f"{keras_result['seconds']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
