"""The training run: stages, epochs, steps, checkpoints and evaluation, in that order of nesting.

The epoch loop is a thin driver: it calls the train step, which counts its own progress in graph variables
(loops.progress), and around it a few periodic actions (the stop request, the non-finite check, step
checkpoints, logging and the progress bar), each of which reads from the device only when it acts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable

import keras
import tensorflow as tf

import input as data
from loops import checkpoints, freezing, stages as staging, warm_start
from loops.advice import slowdown_warnings
from loops.config import TrainConfig
from loops.ema import ExponentialMovingAverage
from loops.evaluation import evaluate_all
from loops.iterators import IteratorRelease
from loops.optimization import create_optimizer, global_batch_size, learning_rate_schedule
from loops.parallel.engine import Engine
from loops.precision import set_precision
from loops.progress import Progress, RunShape
from loops.reporting import Reporter, table
from loops.safety import CheckpointWriteError, ModelDirLock, NonFiniteLoss, Preempted, StopRequest
from loops.steps import TrainState, make_eval_step, make_train_step


@dataclasses.dataclass
class Run:
    """Everything a run builds once, before its first step."""

    cfg: TrainConfig
    engine: Engine
    info: data.DatasetInfo
    spec: checkpoints.RunSpec
    state: TrainState
    saver: checkpoints.Saver
    steps_per_epoch: int
    shape: RunShape
    reporter: Reporter
    lock: ModelDirLock | None
    best: checkpoints.BestCheckpoints
    iterator_release: IteratorRelease = dataclasses.field(default_factory=IteratorRelease)

    @property
    def progress(self) -> Progress:
        return self.state.progress

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
                               eval_img_size=cfg.eval_img_size,
                               preprocessing=_decide_preprocessing(cfg, info, reporter))
    previous = checkpoints.RunSpec.load(cfg.model_dir)
    if previous is not None:
        spec.check_compatible(previous, cfg.model_dir)
    global_batch = global_batch_size(cfg, engine.num_replicas)
    steps_per_epoch = cfg.steps_per_epoch or info.num_train_examples // global_batch
    if steps_per_epoch < 1:
        raise ValueError(f"the global batch of {global_batch} (--train_batch_size={cfg.train_batch_size} x "
                         f"{engine.num_replicas} replicas x --grad_accum_steps={cfg.grad_accum_steps}) is larger "
                         f"than the {info.num_train_examples} training examples of {info.description}")
    shape = RunShape(cfg.train_batch_size, engine.num_replicas, cfg.grad_accum_steps, engine.num_workers,
                     steps_per_epoch)
    progress = Progress(engine.strategy)
    with engine.strategy.scope():
        model = spec.build_model()
        # Before the optimizer and the EMA exist: their slots and shadows start from these weights. Any
        # checkpoint in model_dir makes this a resume, which the init file must not overwrite.
        warm_start.initialize(model, cfg, engine, reporter,
                              resuming_from=tf.train.latest_checkpoint(cfg.model_dir))
        _freeze(model, cfg, reporter)
        # The schedule runs on the example clock, so a resume with another global batch continues it.
        schedule = learning_rate_schedule(cfg, engine.num_replicas, steps_per_epoch)
        optimizer = create_optimizer(cfg, progress.on_clock(schedule, shape))
        optimizer.build(model.trainable_variables)
        ema = ExponentialMovingAverage(model, cfg.moving_average_decay, engine.strategy) if cfg.use_ema else None
    checkpoint = checkpoints.make_checkpoint(model, optimizer, ema, **progress.checkpointed())
    latest = checkpoints.restore_newest_intact(checkpoint, cfg.model_dir, set_aside=engine.is_chief,
                                               say=reporter.say)
    saver = checkpoints.Saver(checkpoint, cfg.model_dir, engine.is_chief, cfg.keep_checkpoints)
    best = checkpoints.BestCheckpoints(saver, cfg.model_dir, cfg.keep_best_checkpoints, engine.is_chief)
    engine.synchronize(list(model.weights) + list(optimizer.variables) + list(progress.checkpointed().values())
                       + (list(ema.shadows) if ema else []) + ([best.scores] if best.scores is not None else []))
    best.adopt_synchronized()
    if latest:
        reporter.say(_resume_note(latest, progress, shape, int(optimizer.iterations.numpy())))
    progress.record_shape(shape)
    if engine.is_chief:
        spec.save(cfg.model_dir)
    state = TrainState(model=model, optimizer=optimizer, ema=ema, engine=engine, progress=progress)
    return Run(cfg, engine, info, spec, state, saver, steps_per_epoch, shape, reporter, lock, best)


def _freeze(model: keras.Model, cfg: TrainConfig, reporter: Reporter):
    frozen = freezing.freeze(model, cfg.trainable_from, cfg.freeze_batch_norm)
    if frozen:
        reporter.say(f"Fine-tuning: {len(model.trainable_variables)} of {len(model.weights)} variables train "
                     f"(from {cfg.trainable_from or 'the stem'} on"
                     f"{', BatchNorm frozen' if cfg.freeze_batch_norm else ''}); {len(frozen)} frozen layers, "
                     f"{frozen[0]} .. {frozen[-1]}, run in inference mode")


def _decide_preprocessing(cfg: TrainConfig, info: data.DatasetInfo, reporter: Reporter) -> data.Preprocessing:
    """--random_crop, --crop_area_range and the eval crop, where not given, from the training images' sizes."""
    if cfg.preprocess.decided:
        return dataclasses.replace(cfg.preprocess, resize_method=cfg.preprocess.interpolation)
    preprocessing, notice = cfg.preprocess.for_images(data.median_short_side(info))
    reporter.say(notice)
    return preprocessing


def _resume_note(latest: str, progress: Progress, shape: RunShape, step: int) -> str:
    """Where the run resumes, and what changed if the checkpoint was written with another shape (one line)."""
    epoch, position = int(progress.epoch.numpy()), int(progress.examples_in_epoch.numpy())
    note = f"Resuming from {latest}: epoch {epoch + 1}, example {position} of {shape.epoch_examples}, step {step}"
    saved = progress.saved_shape()
    changes = shape.changes_from(saved) if saved else []
    if not changes:
        return note
    note += (f". The run shape changed ({', '.join(changes)}; global batch {saved.global_batch} -> "
             f"{shape.global_batch}): training continues on the same example clock, with the learning rate of the "
             "new global batch")
    if position >= shape.epoch_examples:
        note += f"; epoch {epoch + 1} is already complete at this shape"
    elif position and saved.input_pipelines != shape.input_pipelines:
        note += (f"; the rest of epoch {epoch + 1} is read from the new workers' shards, so a few of its examples "
                 "may be seen twice or not at all (later epochs are whole)")
    return note


def _train_dataset(run: Run, stage: staging.Stage, epoch: int, *, skip_examples: int, steps: int):
    """The epoch's batches after its first skip_examples (across all workers), for `steps` steps."""
    cfg = run.cfg
    aug = dataclasses.replace(cfg.augment, raug_magnitude=stage.raug_magnitude, mixup_alpha=stage.mixup_alpha,
                              cutmix_alpha=stage.cutmix_alpha)
    global_batch = cfg.train_batch_size * run.engine.num_replicas

    def dataset_fn(ctx: tf.distribute.InputContext):
        ctx = run.engine.input_context(ctx)
        # One pipeline per epoch, seeded by the epoch, whose example order does not depend on the batch size: a
        # resumed run (with the same number of workers) continues exactly where the checkpoint left the epoch.
        ds = data.train_dataset(run.info, cfg.data, aug,
                                batch_size=ctx.get_per_replica_batch_size(global_batch) * cfg.grad_accum_steps,
                                image_size=stage.image_size, input_context=ctx,
                                seed=cfg.seed * 1_000_003 + epoch, preprocess=run.spec.preprocessing,
                                skip_examples=skip_examples // ctx.num_input_pipelines)
        # One pipeline feeds every replica of its worker, one batch each per step.
        per_step = ctx.num_replicas_in_sync // ctx.num_input_pipelines
        return ds.take(steps * per_step)

    return run.engine.strategy.distribute_datasets_from_function(dataset_fn)


def train(cfg: TrainConfig, engine: Engine) -> dict:
    """Runs cfg.mode; returns the final summary (also written to model_dir/summary.json).

    Raises Preempted (exit code 75) after checkpointing when SIGTERM/SIGUSR1 reaches any process, NonFiniteLoss after
    --max_bad_steps consecutive non-finite losses, CheckpointWriteError when model_dir cannot be written.
    """
    run = build_run(cfg, engine)
    try:
        with StopRequest() as stop:
            return _run(run, stop)
    finally:
        run.iterator_release.join()
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
        summary.update(_evaluate(run, eval_step))
        return _finish(run, summary)

    plan = staging.plan_stages(cfg)
    start_epoch = int(run.progress.epoch.numpy())
    images_seen, train_seconds, last = 0, 0.0, {}
    agreement = _StopAgreement(run, stop)
    wall_start = time.time()
    for stage in plan:
        if stage.end_epoch <= start_epoch:
            continue
        train_step = make_train_step(run.state, cfg, mixup_alpha=stage.mixup_alpha,
                                     cutmix_alpha=stage.cutmix_alpha)
        for epoch in range(max(stage.first_epoch, start_epoch), stage.end_epoch):
            seen, seconds, logged = _train_epoch(run, train_step, stage, epoch, agreement)
            images_seen += seen
            train_seconds += seconds
            last = logged or last
            run.progress.start_epoch(epoch + 1)
            done = epoch + 1 == cfg.max_epochs
            saved = None
            if (epoch + 1) % cfg.save_checkpoint_freq == 0 or done:
                saved = run.save()
                reporter.say(f"Saved {saved}")
            if cfg.mode == "train_and_eval" and ((epoch + 1) % cfg.epochs_between_evals == 0 or done):
                step = int(optimizer.iterations.numpy())
                metrics = _evaluate(run, eval_step)
                reporter.record("eval", step, {"epoch": epoch + 1, **metrics})
                reporter.say(table({k: v for k, v in metrics.items() if "latency" not in k},
                                   f"Evaluation after epoch {epoch + 1}"))
                summary.update(metrics)
                best = run.best.consider(step, epoch + 1, metrics)
                if best:
                    reporter.say(f"Kept {best} among the {cfg.keep_best_checkpoints} best by evaluation top-1")
            if agreement.agreed and not done:
                _stop_here(run, agreement, saved)
    if images_seen:
        summary.update({
            "train_loss": last["loss"], "train_accuracy_top_1": last["top1"],
            "avg_exp_per_second_training": images_seen / train_seconds,
            "avg_exp_per_second_training_per_GPU": images_seen / train_seconds / engine.num_replicas,
            "time_to_train_s": time.time() - wall_start,
        })
    summary["epochs"] = int(run.progress.epoch.numpy())
    summary["steps"] = int(optimizer.iterations.numpy())
    summary["examples_seen"] = int(run.progress.examples_seen.numpy())
    if run.best.entries and engine.is_chief:
        summary["best_checkpoints"] = run.best.entries
    return _finish(run, summary)


class _StopAgreement:
    """Whether the run stops now, the same answer on every process. One process asks its own StopRequest; with
    several (TF_CONFIG workers, Horovod ranks) a signal may reach only one of them, so each process raises its
    stop flag, every train step sums the flags of all processes (loops.steps), and all read that sum after
    every step: they stop after the same step."""

    def __init__(self, run: Run, stop: StopRequest):
        self.run, self.stop = run, stop
        self.several = run.engine.num_workers > 1
        self._flagged = self._agreed = False

    def after_step(self, metrics: dict):
        if self.stop.requested and not self._flagged:
            self.run.progress.stop_flag.assign(1.0)  # summed by the next step
            self._flagged = True
        if self.several:
            self._agreed = float(metrics["stop"]) > 0

    @property
    def agreed(self) -> bool:
        return self._agreed if self.several else self.stop.requested

    @property
    def cause(self) -> str:
        return self.stop.signal_name or "a stop signal to another worker"


def _stop_here(run: Run, agreement: _StopAgreement, saved: str | None = None, *, mid_epoch: bool = False):
    """Checkpoint (unless `saved` already holds this step), say so on every process, wait until every process
    got here (so the chief's checkpoint is complete before any process exits) and exit 75."""
    path = saved or run.save()
    step = int(run.state.optimizer.iterations.numpy())
    if run.engine.is_chief:
        # Mid-epoch, the progress bar's line is still open.
        run.reporter.say(("\n" if mid_epoch else "") + f"Stopped by {agreement.cause} at step {step}; saved {path}")
    else:
        print(f"Worker {run.engine.worker_index}: stopped by {agreement.cause} at step {step} with the chief's "
              "checkpoint", flush=True)
    run.engine.barrier()
    raise Preempted(path)


@dataclasses.dataclass(frozen=True)
class Tick:
    """One step done, as the periodic actions see it."""

    position: int  # steps done in this epoch
    step: int  # train steps since the run began (optimizer updates, unless fp16 skipped some this epoch)
    last: bool  # the epoch's last step (its checkpoint and log are the epoch loop's)
    metrics: dict  # the step's loss, top-1 and stop sum as tensors, read only by an action that needs them


def _train_epoch(run: Run, train_step, stage: staging.Stage, epoch: int, agreement: _StopAgreement):
    """One epoch (or its rest, after a mid-epoch resume); returns (images timed, seconds timed, last logged
    metrics). Timing starts after the first step, which pays for tracing and filling the input pipeline."""
    position_in_examples = int(run.progress.examples_in_epoch.numpy())
    first = run.shape.steps_done(position_in_examples)
    run.progress.start_epoch(epoch, position_in_examples)
    if first == run.steps_per_epoch:  # already complete (a resume with a shorter epoch at this shape)
        return 0, 0.0, {}
    first_step = int(run.state.optimizer.iterations.numpy())
    bar = run.reporter.progress_bar(run.steps_per_epoch, f"Epoch {epoch + 1}/{run.cfg.max_epochs} "
                                    f"(stage {stage.index + 1}/{run.cfg.n_stages}, {stage.image_size} px)")
    clock = _Clock(run.shape.global_batch, first_position=first + 1)
    log = _Log(run, epoch, bar, clock)
    actions = [_stop_when_requested(run, agreement), _non_finite_check(run, epoch), _step_checkpoints(run), log]
    iterator_holder = [iter(_train_dataset(run, stage, epoch, skip_examples=position_in_examples,
                                           steps=run.steps_per_epoch - first))]
    for position in range(first + 1, run.steps_per_epoch + 1):
        metrics = train_step(iterator_holder[0])
        if position == first + 1:
            clock.start(metrics)
        tick = Tick(position, first_step + position - first, position == run.steps_per_epoch, metrics)
        for action in actions:
            action(tick)
    run.iterator_release.drop(iterator_holder)
    run.reporter.record("epoch", int(run.state.optimizer.iterations.numpy()),
                        {"epoch": epoch + 1, "stage": stage.index + 1, "image_size": stage.image_size, **log.last})
    return clock.images(run.steps_per_epoch), clock.seconds(), log.last


class _Clock:
    """Time and images from the end of the epoch's first step, which pays for tracing and the input pipeline's
    start, to the last step read."""

    def __init__(self, images_per_step: int, first_position: int):
        self.images_per_step, self.first_position = images_per_step, first_position
        self._start = time.perf_counter()

    def start(self, metrics: dict):
        float(metrics["loss"])  # waits for the first step
        self._start = time.perf_counter()

    def seconds(self) -> float:
        return time.perf_counter() - self._start

    def images(self, position: int) -> int:
        return self.images_per_step * (position - self.first_position)

    def speed(self, position: int) -> float:
        seconds = self.seconds()
        return self.images(position) / seconds if position > self.first_position and seconds > 0 else 0.0


Action = Callable[[Tick], None]


def _stop_when_requested(run: Run, agreement: _StopAgreement) -> Action:
    """SIGTERM/SIGUSR1 (loops.safety) to any process of the run: every process checkpoints after the same step
    and exits 75; never a checkpoint of non-finite weights (then the next finite step saves). An epoch's last
    step is the epoch loop's."""
    def act(tick: Tick):
        agreement.after_step(tick.metrics)
        if agreement.agreed and not tick.last and run.progress.streak == 0:
            _stop_here(run, agreement, mid_epoch=True)
    return act


def _non_finite_check(run: Run, epoch: int) -> Action:
    """--max_bad_steps consecutive non-finite losses stop the run. The streak is counted on the device and read
    every min(--log_steps, --max_bad_steps) steps, so the run stops within --max_bad_steps steps of the limit."""
    cfg = run.cfg
    every = min(cfg.log_steps, cfg.max_bad_steps)

    def act(tick: Tick):
        if tick.position % every and not tick.last:
            return
        streak = run.progress.streak
        if streak >= cfg.max_bad_steps:
            # Nothing is saved from here on: the last checkpoint holds the last good weights.
            raise NonFiniteLoss(f"the training loss was {float(tick.metrics['loss'])} for {streak} consecutive "
                                f"steps, up to step {tick.step} (epoch {epoch + 1}); stopping. The last checkpoint "
                                f"({tf.train.latest_checkpoint(cfg.model_dir)}) predates the fault. Lower "
                                "--lr_init, check the data, or use --precision amp_fp16 loss scaling.")
    return act


def _step_checkpoints(run: Run) -> Action:
    """--save_checkpoint_steps, for epochs too long to lose; skipped while the losses are non-finite."""
    every = run.cfg.save_checkpoint_steps

    def act(tick: Tick):
        if every and tick.step % every == 0 and not tick.last and run.progress.streak == 0:
            run.reporter.say(f"Saved {run.save()}")
    return act


class _Log:
    """Every --log_steps and at the epoch's end: a log.jsonl/TensorBoard record of the step's loss and top-1, the
    epoch's running means, the learning rate and the speed; the progress bar shows the running means."""

    def __init__(self, run: Run, epoch: int, bar, clock: _Clock):
        self.run, self.epoch, self.bar, self.clock = run, epoch, bar, clock
        self.last: dict = {}

    def __call__(self, tick: Tick):
        if tick.position % self.run.cfg.log_steps and not tick.last:
            return
        self.last = {key: float(tick.metrics[key]) for key in ("loss", "top1")}
        means = self.run.progress.epoch_means()
        optimizer = self.run.state.optimizer
        lr, speed = float(optimizer.learning_rate), self.clock.speed(tick.position)
        self.run.reporter.record("train", int(optimizer.iterations.numpy()), {
            "epoch": self.epoch + 1, "lr": lr, "img_per_s": speed, **self.last,
            "examples_seen": int(self.run.progress.examples_seen.numpy()),
            "epoch_mean_loss": means["loss"], "epoch_mean_top1": means["top1"]})
        if self.bar:
            self.bar.update(tick.position, [("loss", means["loss"]), ("top1", means["top1"]), ("lr", lr),
                                            ("img/s", speed)])


def _evaluate(run: Run, eval_step) -> dict:
    cfg = run.cfg
    return evaluate_all(run.engine, run.info, cfg.data, eval_step, weights=cfg.weights_to_evaluate,
                        batch_size=cfg.eval_batch_size, image_size=cfg.eval_img_size, ema=run.state.ema,
                        preprocess=run.spec.preprocessing, iterator_release=run.iterator_release)


def _finish(run: Run, summary: dict) -> dict:
    if run.engine.is_chief:
        with open(os.path.join(run.cfg.model_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
        run.reporter.say(table({k: v for k, v in summary.items()}, "Summary"))
    return summary
