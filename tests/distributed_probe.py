"""Run by tests/test_distributed.py: one process of a multi-process training run, or its single-process
reference. Not a test module itself (no test_ prefix).

    python tests/distributed_probe.py worker OUT [timeout=SECONDS] [pause_after=STEPS] [stall_after=STEPS]
        under horovodrun (Horovod engine) or with TF_CONFIG (MultiWorkerMirroredStrategy): trains the tiny
        config in OUT/run (resuming from its latest checkpoint) and dumps this process's final variables to
        OUT/vars-<worker index>.npz.
        pause_after: worker 1, after that many train steps of this launch, writes OUT/paused-1 (its pid) and
        waits (up to 300 s) until a stop signal reaches it (the test sends it, or kills it), so the signal or
        the kill lands between two known steps.
        stall_after: worker 1, after that many train steps, writes OUT/stalled-1 and never submits the next
        step's allreduce: alive but stalled, as a rank stuck in its input or a deadlock would be.
    python tests/distributed_probe.py gradients OUT
        under horovodrun: each rank's gradients of the tiny model on its own batch, and their sum through the
        Horovod engine's allreduce with and without --hvd_fp16_allreduce, in OUT/grads-<rank>.npz.
    python tests/distributed_probe.py reference OUT
        one process, two logical CPUs (MirroredStrategy) at the same global batch, each replica fed the
        shard worker <replica> reads; dumps OUT/vars-ref.npz.

BatchNorm is not synchronized in either, so replica r of the reference computes exactly what worker r does
(per-replica batch statistics, per-replica moving averages): only float summation order may differ. The
network is B0 cut to one block per stage and a quarter of its width: what these runs check (who reduces,
who writes, where a resumed run starts) does not depend on its size, and tracing it takes a fraction of B0's.
"""

import json
import os
import pathlib
import sys
import threading

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
import numpy as np  # noqa: E402

import input as data  # noqa: E402
from loops.config import TrainConfig  # noqa: E402
from loops.parallel.distribution import Engine, create_engine  # noqa: E402

WORKERS = 2
PER_REPLICA_BATCH = 8


TINY = {"dropout_rate": 0.0, "drop_connect_rate": 0.0, "depth_coefficient": 0.1, "width_coefficient": 0.25}


def tiny_config(model_dir, timeout=None) -> TrainConfig:
    return TrainConfig(model_dir=str(model_dir), mode="train_and_eval", train_img_size=32, eval_img_size=32,
                       train_batch_size=PER_REPLICA_BATCH, eval_batch_size=64, steps_per_epoch=3,
                       max_epochs=2, warmup_epochs=0, epochs_between_evals=2, save_checkpoint_freq=1,
                       log_steps=1, moving_average_decay=0.99, lr_init=0.02, seed=0,
                       # SGD: RMSprop's first updates magnify float-order differences beyond a tight check.
                       optimizer="sgd", collective_timeout_s=timeout, model_overrides=TINY)


class ShardedMirroredStrategy(tf.distribute.MirroredStrategy):
    """MirroredStrategy whose replica r reads worker r's shard (worker_input_context(r, WORKERS)) instead of
    consecutive batches of one pipeline: the single-process twin of a WORKERS-process run."""

    def distribute_datasets_from_function(self, dataset_fn, options=None):
        shards = [dataset_fn(data.worker_input_context(r, WORKERS)) for r in range(WORKERS)]

        def one_each(*batches):  # replica r takes element r of each group (round-robin over devices)
            ds = tf.data.Dataset.from_tensors(batches[0])
            for b in batches[1:]:
                ds = ds.concatenate(tf.data.Dataset.from_tensors(b))
            return ds

        interleaved = tf.data.Dataset.zip(tuple(shards)).flat_map(one_each)
        return super().distribute_datasets_from_function(lambda ctx: interleaved, options)


def capture_synchronized(engine: Engine) -> list:
    """The variables build_run hands to engine.synchronize (model, optimizer, epoch, EMA): after train()
    they hold the final state, so no test hook is needed in the loop."""
    captured = []
    original = engine.synchronize

    def synchronize(variables):
        captured[:] = list(variables)
        original(variables)

    engine.synchronize = synchronize
    return captured


def hold_worker_one(after: int, out: pathlib.Path, marker: str, until_stopped: bool):
    """Worker 1 holds after its `after`-th train step: until a stop signal reaches it, or for good."""
    from loops import safety, training

    signalled = threading.Event()
    handle = safety.StopRequest._handle

    def noting(self, signum, frame):
        handle(self, signum, frame)
        signalled.set()

    safety.StopRequest._handle = noting
    make = training.make_train_step

    def make_holding(*args, **kwargs):
        step, calls = make(*args, **kwargs), [0]

        def holding(iterator):
            metrics = step(iterator)
            calls[0] += 1
            if calls[0] == after:
                # Written aside and renamed: the test reads the pid as soon as the name appears.
                aside = out / f".{marker}-1"
                aside.write_text(str(os.getpid()))
                aside.rename(out / f"{marker}-1")
                if until_stopped:
                    assert signalled.wait(300), "no stop signal arrived"
                else:
                    threading.Event().wait()  # stalled: alive, but the next allreduce never comes
            return metrics

        return holding

    training.make_train_step = make_holding


def gradients(out: pathlib.Path):
    """Each rank's gradients on its batch and their allreduced sum in float32 and with fp16 compression."""
    import keras

    import efficientnet

    engine = create_engine("horovod")
    cfg = tiny_config(out / "unused")
    info = data.open_dataset(cfg.data)
    keras.utils.set_random_seed(0)
    model = efficientnet.build_model("b0", info.num_classes, **cfg.model_overrides)
    context = data.worker_input_context(engine.worker_index, engine.num_workers)
    images, labels = next(iter(data.train_dataset(info, cfg.data, cfg.augment, batch_size=PER_REPLICA_BATCH,
                                                  image_size=32, input_context=context, seed=0)))
    with tf.GradientTape() as tape:
        logits = model(images, training=True)
        loss = tf.reduce_mean(keras.losses.categorical_crossentropy(labels, logits, from_logits=True))
    local = tape.gradient(loss, model.trainable_variables)
    reduced = {}
    for name, compression in (("fp32", engine._hvd.Compression.none), ("fp16", engine._hvd.Compression.fp16)):
        engine.compression = compression  # what --hvd_fp16_allreduce chooses
        reduced[name] = engine.reduce_gradients(local)
    np.savez(out / f"grads-{engine.worker_index}.npz",
             **{f"{kind}{i:04d}": g.numpy() for kind, grads in (("local", local), *reduced.items())
                for i, g in enumerate(grads)})
    print("PROBE " + json.dumps({"name": str(engine.worker_index), "tensors": len(local)}), flush=True)


def dump(variables, path):
    names = [getattr(v, "path", None) or v.name for v in variables]
    values = {f"{i:04d}:{name}": np.asarray(v.numpy()) for i, (name, v) in enumerate(zip(names, variables))}
    np.savez(path, **values)


def main():
    mode, out = sys.argv[1], pathlib.Path(sys.argv[2])
    if mode == "gradients":
        return gradients(out)
    if mode == "worker":
        opts = dict(a.split("=", 1) for a in sys.argv[3:])
        cfg = tiny_config(out / "run", float(opts["timeout"]) if "timeout" in opts else None)
        engine = create_engine(cfg.engine, collective_timeout_s=cfg.collective_timeout_s)
        for option, marker, until_stopped in (("pause_after", "paused", True), ("stall_after", "stalled", False)):
            if option in opts and engine.worker_index == 1:
                hold_worker_one(int(opts[option]), out, marker, until_stopped)
        name = str(engine.worker_index)
    else:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * WORKERS)
        cfg = tiny_config(out / "ref")
        engine = Engine(ShardedMirroredStrategy([f"/cpu:{i}" for i in range(WORKERS)]), "mirrored")
        name = "ref"
    variables = capture_synchronized(engine)
    from loops.safety import Preempted
    from loops.training import train
    try:
        summary = train(cfg, engine)
    except Preempted as stopped:  # as train.py does
        stopped.exit_now()
    dump(variables, out / f"vars-{name}.npz")
    print("PROBE " + json.dumps({"name": name, "engine": engine.name, "replicas": engine.num_replicas,
                                 "steps": summary["steps"], "eval_examples": summary.get("eval_examples")}),
          flush=True)


if __name__ == "__main__":
    main()
