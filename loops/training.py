"""The training run: stages, epochs, steps, checkpoints and evaluation, in that order of nesting."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time

import keras
import tensorflow as tf

import input as data
from loops import checkpoints, stages as staging
from loops.advice import slowdown_warnings
from loops.config import TrainConfig
from loops.distribution import Engine
from loops.ema import ExponentialMovingAverage
from loops.evaluation import evaluate
from loops.optimization import create_optimizer, global_batch_size, learning_rate_schedule
from loops.reporting import Reporter, table
from loops.safety import CheckpointWriteError, ModelDirLock, NonFiniteLoss, Preempted, StopRequest
from loops.steps import TrainState, make_eval_step, make_train_step

POLICIES = {"fp32": "float32", "tf32": "float32", "amp_fp16": "mixed_float16", "amp_bf16": "mixed_bfloat16"}


def set_precision(precision: str):
    keras.mixed_precision.set_global_policy(POLICIES[precision])
    tf.config.experimental.enable_tensor_float_32_execution(precision == "tf32")


@dataclasses.dataclass
class Run:
    """Everything a run builds once, before its first step."""

    cfg: TrainConfig
    engine: Engine
    info: data.DatasetInfo
    spec: checkpoints.RunSpec
    state: TrainState
    epoch: tf.Variable  # completed epochs
    batch_in_epoch: tf.Variable  # steps done in the current epoch (a preempted run resumes mid-epoch)
    saver: checkpoints.Saver
    steps_per_epoch: int
    reporter: Reporter
    lock: ModelDirLock | None

    def save(self) -> str:
        """A checkpoint of the current state; a failed write leaves the previous checkpoint as it was."""
        try:
            return self.saver.save(int(self.state.optimizer.iterations.numpy()))
        except (tf.errors.OpError, OSError) as e:
            raise CheckpointWriteError(
                f"could not write a checkpoint to --model_dir {self.cfg.model_dir}: {e}. The previous "
                f"checkpoint ({tf.train.latest_checkpoint(self.cfg.model_dir)}) is intact.") from None


def build_run(cfg: TrainConfig, engine: Engine) -> Run:
    set_precision(cfg.precision)
    keras.utils.set_random_seed(cfg.seed)
    # Only the chief writes into model_dir, so only it locks; a second run there stops before writing.
    lock = ModelDirLock(cfg.model_dir).acquire() if engine.is_chief and cfg.mode != "eval" else None
    try:
        return _build_run(cfg, engine, lock)
    except BaseException:
        if lock:
            lock.release()
        raise


def _build_run(cfg: TrainConfig, engine: Engine, lock: ModelDirLock | None) -> Run:
    reporter = Reporter(cfg.model_dir, enabled=engine.is_chief)
    info = data.open_dataset(cfg.data)
    num_classes = cfg.num_classes or info.num_classes
    if num_classes != info.num_classes:
        raise ValueError(f"--num_classes={num_classes}, but {info.description} has {info.num_classes} classes")
    spec = checkpoints.RunSpec(variant=cfg.variant, num_classes=num_classes,
                               model_overrides=dict(cfg.model_overrides), class_names=tuple(info.class_names),
                               eval_img_size=cfg.eval_img_size, resize_method=cfg.data.resize_method,
                               eval_crop_fraction=info.eval_crop_fraction)
    previous = checkpoints.RunSpec.load(cfg.model_dir)
    if previous is not None:
        spec.check_compatible(previous, cfg.model_dir)
    global_batch = global_batch_size(cfg, engine.num_replicas)
    steps_per_epoch = cfg.steps_per_epoch or info.num_train_examples // global_batch
    if steps_per_epoch < 1:
        raise ValueError(f"the global batch of {global_batch} (--train_batch_size={cfg.train_batch_size} x "
                         f"{engine.num_replicas} replicas x --grad_accum_steps={cfg.grad_accum_steps}) is larger "
                         f"than the {info.num_train_examples} training examples of {info.description}")
    with engine.strategy.scope():
        model = spec.build_model()
        optimizer = create_optimizer(cfg, learning_rate_schedule(cfg, engine.num_replicas, steps_per_epoch))
        optimizer.build(model.trainable_variables)
        ema = ExponentialMovingAverage(model, cfg.moving_average_decay, engine.strategy) if cfg.use_ema else None
        epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        batch_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="batch_in_epoch")
    checkpoint = checkpoints.make_checkpoint(model, optimizer, ema, epoch=epoch, batch_in_epoch=batch_in_epoch)
    saver = checkpoints.Saver(checkpoint, cfg.model_dir, engine.is_chief, cfg.keep_checkpoints)
    latest = tf.train.latest_checkpoint(cfg.model_dir)
    if latest:
        checkpoint.restore(latest).assert_existing_objects_matched()
        reporter.say(f"Resuming from {latest}: epoch {int(epoch.numpy()) + 1}, batch "
                     f"{int(batch_in_epoch.numpy())}, step {int(optimizer.iterations.numpy())}")
    engine.synchronize(list(model.weights) + list(optimizer.variables) + [epoch, batch_in_epoch]
                       + (list(ema.shadows) if ema else []))
    if engine.is_chief:
        spec.save(cfg.model_dir)
    state = TrainState(model=model, optimizer=optimizer, ema=ema, engine=engine)
    return Run(cfg, engine, info, spec, state, epoch, batch_in_epoch, saver, steps_per_epoch, reporter, lock)


def _train_dataset(run: Run, stage: staging.Stage, epoch: int, skip_batches: int = 0):
    cfg = run.cfg
    aug = dataclasses.replace(cfg.augment, raug_magnitude=stage.raug_magnitude, mixup_alpha=stage.mixup_alpha,
                              cutmix_alpha=stage.cutmix_alpha)
    global_batch = cfg.train_batch_size * run.engine.num_replicas

    def dataset_fn(ctx: tf.distribute.InputContext):
        ctx = run.engine.input_context(ctx)
        # One pipeline per epoch, seeded by the epoch: a resumed run replays exactly the same batches.
        ds = data.train_dataset(run.info, cfg.data, aug,
                                batch_size=ctx.get_per_replica_batch_size(global_batch) * cfg.grad_accum_steps,
                                image_size=stage.image_size, input_context=ctx,
                                seed=cfg.seed * 1_000_003 + epoch)
        # One pipeline feeds every replica of its worker, one batch each per step.
        per_step = ctx.num_replicas_in_sync // ctx.num_input_pipelines
        return ds.take(run.steps_per_epoch * per_step).skip(skip_batches * per_step)

    return run.engine.strategy.distribute_datasets_from_function(dataset_fn)


def evaluate_weights(cfg: TrainConfig, engine: Engine, info: data.DatasetInfo, ema, eval_step,
                     which: str) -> dict:
    """Raw or EMA ("ema": shadows swapped in and back) weights over the whole eval set."""
    global_batch = cfg.eval_batch_size * engine.num_replicas

    def dataset_fn(ctx):
        ctx = engine.input_context(ctx)
        return data.eval_dataset(info, cfg.data, batch_size=ctx.get_per_replica_batch_size(global_batch),
                                 image_size=cfg.eval_img_size, input_context=ctx)

    dataset = engine.strategy.distribute_datasets_from_function(dataset_fn)
    swap = which == "ema"
    if swap:
        ema.swap()
    try:
        result = evaluate(eval_step, dataset, global_batch=global_batch)
    finally:
        if swap:
            ema.swap()
    return result.metrics(engine.num_replicas, suffix="" if which == "raw" else "_ema")


def evaluate_all(cfg: TrainConfig, engine: Engine, info: data.DatasetInfo, ema, eval_step) -> dict:
    """cfg.weights_to_evaluate, each under its own metric names, and which one was better."""
    metrics = {}
    for which in cfg.weights_to_evaluate:
        metrics.update(evaluate_weights(cfg, engine, info, ema, eval_step, which))
    if len(cfg.weights_to_evaluate) == 2:
        best = "_ema" if metrics["eval_accuracy_top_1_ema"] > metrics["eval_accuracy_top_1"] else ""
        metrics["best_weights"] = "ema" if best else "raw"
        metrics["best_eval_accuracy_top_1"] = metrics[f"eval_accuracy_top_1{best}"]
    return metrics


def train(cfg: TrainConfig, engine: Engine) -> dict:
    """Runs cfg.mode; returns the final summary (also written to model_dir/summary.json).

    Raises Preempted (exit code 75) after checkpointing when SIGTERM/SIGUSR1 arrives, NonFiniteLoss after
    --max_bad_steps consecutive non-finite losses, CheckpointWriteError when model_dir cannot be written.
    """
    run = build_run(cfg, engine)
    try:
        with StopRequest() as stop:
            return _run(run, stop)
    finally:
        run.reporter.close()
        run.saver.close()
        if run.lock:
            run.lock.release()


def _run(run: Run, stop: StopRequest) -> dict:
    cfg, engine = run.cfg, run.engine
    reporter, optimizer = run.reporter, run.state.optimizer
    eval_step = make_eval_step(run.state.model, engine)
    reporter.say(table({"model": f"efficientnet-{cfg.variant}", "data": run.info.description,
                        "replicas": engine.num_replicas, "engine": engine.name,
                        "global batch": global_batch_size(cfg, engine.num_replicas),
                        "steps per epoch": run.steps_per_epoch, "precision": cfg.precision,
                        "xla": cfg.use_xla}, "Run"))
    for note in slowdown_warnings(cfg):
        reporter.say(f"Warning: {note}")
    summary: dict = {}
    if cfg.mode == "eval":
        summary.update(evaluate_all(cfg, engine, run.info, run.state.ema, eval_step))
        return _finish(run, summary)

    plan = staging.plan_stages(cfg)
    start_epoch = int(run.epoch.numpy())
    images_seen, train_seconds = 0, 0.0
    wall_start = time.time()
    for stage in plan:
        if stage.end_epoch <= start_epoch:
            continue
        train_step = make_train_step(run.state, cfg, mixup_alpha=stage.mixup_alpha,
                                     cutmix_alpha=stage.cutmix_alpha)
        for epoch in range(max(stage.first_epoch, start_epoch), stage.end_epoch):
            seen, seconds, last = _train_epoch(run, train_step, stage, epoch, stop)
            images_seen += seen
            train_seconds += seconds
            run.epoch.assign(epoch + 1)
            run.batch_in_epoch.assign(0)
            done = epoch + 1 == cfg.max_epochs
            if (epoch + 1) % cfg.save_checkpoint_freq == 0 or done:
                reporter.say(f"Saved {run.save()}")
            if cfg.mode == "train_and_eval" and ((epoch + 1) % cfg.epochs_between_evals == 0 or done):
                metrics = evaluate_all(cfg, engine, run.info, run.state.ema, eval_step)
                reporter.record("eval", int(optimizer.iterations.numpy()), {"epoch": epoch + 1, **metrics})
                reporter.say(table({k: v for k, v in metrics.items() if "latency" not in k},
                                   f"Evaluation after epoch {epoch + 1}"))
                summary.update(metrics)
            if stop.requested and not done:
                path = run.save()
                reporter.say(f"Stopped by {stop.signal_name} after epoch {epoch + 1}; saved {path}")
                raise Preempted(path)
    if images_seen:
        summary.update({
            "train_loss": last["loss"], "train_accuracy_top_1": last["top1"],
            "avg_exp_per_second_training": images_seen / train_seconds,
            "avg_exp_per_second_training_per_GPU": images_seen / train_seconds / engine.num_replicas,
            "time_to_train_s": time.time() - wall_start,
        })
    summary["epochs"] = int(run.epoch.numpy())
    summary["steps"] = int(optimizer.iterations.numpy())
    return _finish(run, summary)


def _train_epoch(run: Run, train_step, stage: staging.Stage, epoch: int, stop: StopRequest):
    """One epoch (or its rest, after a mid-epoch resume); returns (images timed, seconds timed, last logged
    metrics). Timing starts after the first step, which pays for tracing and filling the input pipeline."""
    cfg, reporter, optimizer = run.cfg, run.reporter, run.state.optimizer
    images_per_step = global_batch_size(cfg, run.engine.num_replicas)
    first = int(run.batch_in_epoch.numpy())
    bar = reporter.progress_bar(run.steps_per_epoch, f"Epoch {epoch + 1}/{cfg.max_epochs} "
                                f"(stage {stage.index + 1}/{cfg.n_stages}, {stage.image_size} px)")
    iterator = iter(_train_dataset(run, stage, epoch, skip_batches=first))
    start, last, bad_streak = None, {}, 0
    for i in range(first, run.steps_per_epoch):
        metrics = train_step(iterator)
        loss = float(metrics["loss"])  # also waits for the step: the clock and the checks below need it
        start = start or time.perf_counter()
        run.batch_in_epoch.assign(i + 1)
        global_step = epoch * run.steps_per_epoch + i + 1
        bad_streak = 0 if math.isfinite(loss) else bad_streak + 1
        if bad_streak >= cfg.max_bad_steps:
            # Nothing is saved from here on: the last checkpoint holds the last good weights.
            raise NonFiniteLoss(f"the training loss was {loss} for {bad_streak} consecutive steps, up to step "
                                f"{global_step} (epoch {epoch + 1}); stopping. The last checkpoint "
                                f"({tf.train.latest_checkpoint(cfg.model_dir)}) predates the fault. Lower "
                                "--lr_init, check the data, or use --precision amp_fp16 loss scaling.")
        if stop.requested and bad_streak == 0 and i + 1 < run.steps_per_epoch:  # an epoch's end: see _run
            path = run.save()
            reporter.say(f"Stopped by {stop.signal_name} at step {global_step}; saved {path}")
            raise Preempted(path)
        if cfg.save_checkpoint_steps and global_step % cfg.save_checkpoint_steps == 0 and bad_streak == 0 \
                and i + 1 < run.steps_per_epoch:  # the epoch's end has its own save
            reporter.say(f"Saved {run.save()}")
        if (i + 1) % cfg.log_steps and i + 1 != run.steps_per_epoch:
            continue
        last = {k: float(v) for k, v in metrics.items()}
        elapsed = time.perf_counter() - start
        speed = images_per_step * (i - first) / elapsed if i > first and elapsed > 0 else 0.0
        lr = float(optimizer.learning_rate)
        reporter.record("train", int(optimizer.iterations.numpy()),
                        {"epoch": epoch + 1, "lr": lr, "img_per_s": speed, **last})
        if bar:
            bar.update(i + 1, [("loss", last["loss"]), ("top1", last["top1"]), ("lr", lr), ("img/s", speed)])
    elapsed = time.perf_counter() - start
    reporter.record("epoch", int(optimizer.iterations.numpy()),
                    {"epoch": epoch + 1, "stage": stage.index + 1, "image_size": stage.image_size, **last})
    return images_per_step * (run.steps_per_epoch - first - 1), elapsed, last


def _finish(run: Run, summary: dict) -> dict:
    if run.engine.is_chief:
        with open(os.path.join(run.cfg.model_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
        run.reporter.say(table({k: v for k, v in summary.items()}, "Summary"))
    return summary
