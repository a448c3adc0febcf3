"""The datasets under tf.distribute.MirroredStrategy with two CPU replicas (in a fresh process, because
logical devices must be configured before TensorFlow initializes)."""
import os
import textwrap

import preloaded
from input import testdata

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import input as I

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    cfg = I.DataConfig(data_dir=sys.argv[1], num_classes=35)
    info = I.open_dataset(cfg)
    global_batch = 6
    ev = strategy.distribute_datasets_from_function(lambda ctx: I.eval_dataset(
        info, cfg, batch_size=ctx.get_per_replica_batch_size(global_batch), image_size=32, input_context=ctx))
    labels, steps = [], 0
    for x, y, m in ev:
        steps += 1
        for yy, mm in zip(strategy.experimental_local_results(y), strategy.experimental_local_results(m)):
            labels += [int(v) for v in yy.numpy()[mm.numpy() > 0]]
    print("eval", steps, I.eval_steps(info, global_batch), sorted(labels) == list(range(24, 35)), len(labels))

    aug = I.AugmentConfig(mixup_alpha=0.2, cutmix_alpha=1.0, defer_img_mixing=True)
    tr = strategy.distribute_datasets_from_function(lambda ctx: I.train_dataset(
        info, cfg, aug, batch_size=ctx.get_per_replica_batch_size(8), image_size=32, input_context=ctx, seed=1))

    @tf.function
    def step(x, y):
        x, y = I.mix_batch(x, y, mixup_alpha=aug.mixup_alpha, cutmix_alpha=aug.cutmix_alpha)
        return tf.reduce_sum(y, axis=1), tf.shape(x)

    it = iter(tr)
    for _ in range(3):
        sums, shape = strategy.run(step, next(it))
    sums = np.concatenate([s.numpy() for s in strategy.experimental_local_results(sums)])
    print("train", strategy.experimental_local_results(shape)[0].numpy().tolist(), bool(np.allclose(sums, 1)))
""")


def test_mirrored_strategy_two_replicas(tmp_path):
    data = tmp_path / "data"
    testdata.labelled_shards(str(data), "train", [4] * 6)
    testdata.labelled_shards(str(data), "validation", [5, 2, 4], start_label=24)
    proc = preloaded.run(["-c", SCRIPT, data], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # 11 examples, global batch 6 (3 per replica): 2 steps, every example once.
    assert "eval 2 2 True 11" in proc.stdout
    assert "train [4, 32, 32, 3] True" in proc.stdout
