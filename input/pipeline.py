"""tf.data pipelines: record streams per shard, sharding across workers, train and eval datasets.

Each shard (a TFRecord file, or one image of an image folder) is read by its own small dataset that
decodes, drops undecodable records (ignore_errors) and then checks, in a scan, that no record index is
missing. A missing index is a record that did not decode: by default the scan's assertion stops the run
naming the shard and record index; with skip_corrupt the gap is counted and logged instead. Labels are
range-checked in the same place, so the error names the shard. No Python runs per image.
"""
from __future__ import annotations

import functools
import math
import os
import sys

import tensorflow as tf

from input import augment as augment_lib
from input import mixing, preprocessing
from input.config import REFERENCE, AugmentConfig, DataConfig, DatasetInfo, Preprocessing, Shard

AUTOTUNE = tf.data.AUTOTUNE
# tf.data runs AutoGraph over every function it is given unless told not to. The functions below are graph ops
# throughout (tf.cond, tf.where, dataset methods), so converting them only cost start-up time
# (docs/performance.md).
graph_function = tf.autograph.experimental.do_not_convert
_SHUFFLE_BYTES = 256 << 20  # memory allowed for the decoded-example shuffle buffer


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def worker_input_context(rank: int, size: int) -> tf.distribute.InputContext:
    """The InputContext of one process in a one-replica-per-process job (Horovod rank/size, MPI, ...)."""
    if not 0 <= rank < size:
        raise ValueError(f"worker rank {rank} is outside [0, {size})")
    return tf.distribute.InputContext(num_input_pipelines=size, input_pipeline_id=rank, num_replicas_in_sync=size)


def _workers(input_context) -> tuple[int, int]:
    if input_context is None:
        return 1, 0
    return input_context.num_input_pipelines, input_context.input_pipeline_id


def _shard_tensors(shards: tuple[Shard, ...]):
    return (
        tf.constant([s.path for s in shards], tf.string),
        tf.constant([s.num_records for s in shards], tf.int64),
        tf.constant([s.label for s in shards], tf.int32),
    )


def _record_stream(info: DatasetInfo, units: tf.data.Dataset, decode, *, num_workers: int, worker: int,
                   by_record: bool, skip_corrupt: bool, image_size: int, cycle_length: int,
                   deterministic: bool) -> tf.data.Dataset:
    """units: (path, count, label, seed[2]) -> (image float32 [S,S,3], label int32, seed[2]).

    by_record: every worker reads every unit and keeps the records whose index is congruent to its id.
    """
    n, w = tf.constant(num_workers, tf.int64), tf.constant(worker if by_record else 0, tf.int64)
    step = n if by_record else tf.constant(1, tf.int64)
    spec = {info.image_key: tf.io.FixedLenFeature([], tf.string),
            info.label_key: tf.io.FixedLenFeature([], tf.int64)}
    num_classes, offset = info.num_classes, info.label_offset
    folder = info.record_format == "files"
    # The interleave below decodes up to cycle_length shards at once. When that covers the cores, a parallel
    # map inside every shard on top of it only adds thread hand-offs: the pipeline without a policy ran ~20%
    # faster without it (docs/input_pipeline.md). A single image (folder) or fewer shards than cores keep it.
    parallel_in_shard = None if folder or cycle_length >= _cores() else AUTOTUNE

    @graph_function  # and so are the datasets' functions it builds: they trace in its context
    def per_unit(path, count, label, unit_seed):
        if folder:
            recs = tf.data.Dataset.from_tensors(path).enumerate()
        else:
            recs = tf.data.TFRecordDataset(path, buffer_size=1 << 20).enumerate()
        if by_record:
            recs = recs.filter(lambda i, _: i % step == w)

        def decode_one(i, rec):
            if folder:
                image_bytes, lab = tf.io.read_file(rec), label
            else:
                ex = tf.io.parse_single_example(rec, spec)
                image_bytes, lab = ex[info.image_key], tf.cast(ex[info.label_key] - offset, tf.int32)
            seed = tf.random.experimental.stateless_fold_in(unit_seed, i)
            return decode(image_bytes, seed), lab, i, seed

        # A single image needs no parallel map; a shard's records decode in parallel but stay in index order.
        if parallel_in_shard:
            out = recs.map(decode_one, num_parallel_calls=parallel_in_shard, deterministic=True)
        else:
            out = recs.map(decode_one)
        # Parse or decode errors drop the record here; the scan below notices the missing index.
        out = out.ignore_errors()
        first_after = count + tf.math.floormod(w - count, step)
        sentinel = tf.data.Dataset.from_tensors(
            (tf.zeros([image_size, image_size, 3], tf.float32), tf.constant(-1, tf.int32), first_after,
             tf.zeros([2], tf.int64)))

        def check(expected, elem):
            img, lab, i, seed = elem
            gap = (i - expected) // step
            is_sentinel = tf.equal(i, first_after)
            asserts = [tf.debugging.Assert(
                tf.logical_or(is_sentinel, tf.logical_and(lab >= 0, lab < num_classes)),
                ["Label out of range [0, %d) in shard" % num_classes, path, "record index", i,
                 "label (0-based)", lab, "(see --labels_zero_based and --num_classes)"], summarize=3)]
            if not skip_corrupt:
                asserts.append(tf.debugging.Assert(
                    tf.equal(gap, 0),
                    ["Undecodable image (or a record without %s / %s) in shard" % (info.image_key, info.label_key),
                     path, "record index", expected, "(use --skip_corrupt to skip such records)"], summarize=3))
            with tf.control_dependencies(asserts):
                gap = tf.identity(gap)
            return i + step, (img, lab, seed, gap, path)

        return out.concatenate(sentinel).scan(w, check)

    stream = units.interleave(per_unit, cycle_length=cycle_length, block_length=1, num_parallel_calls=AUTOTUNE,
                              deterministic=deterministic)
    if skip_corrupt:
        @graph_function
        def count(total, elem):
            img, lab, seed, gap, path = elem
            total = total + gap
            log = tf.cond(gap > 0,
                          lambda: tf.print("input: skipped", gap, "corrupt record(s) in", path, "- total skipped:",
                                           total, output_stream=sys.stderr),
                          lambda: tf.no_op())
            with tf.control_dependencies([log]):
                total = tf.identity(total)
            return total, elem

        stream = stream.scan(tf.constant(0, tf.int64), count)
    stream = stream.filter(graph_function(lambda img, lab, seed, gap, path: lab >= 0))
    return stream.map(graph_function(lambda img, lab, seed, gap, path: (img, lab, seed)))


# ------------------------------------------------------------------------------------------------ train
def train_units(info: DatasetInfo, input_context=None, seed: int | None = None):
    """The per-worker unit stream, reshuffled every epoch, and whether records (not files) are sharded."""
    shards = info.train_shards
    if not shards:
        raise ValueError(f"no training data in {info.description}: there are no train-* shards or train/ images")
    n, w = _workers(input_context)
    units = tf.data.Dataset.from_tensor_slices(_shard_tensors(shards))
    by_record = n > 1 and len(shards) < n
    if n > 1 and not by_record:
        units = units.shard(n, w)
        num_units = len(range(w, len(shards), n))
    else:
        num_units = len(shards)
        if by_record and sum(s.num_records for s in shards) < n:
            raise ValueError(f"{info.description}: fewer training records than the {n} input pipelines")
    # reshuffle_each_iteration draws a new permutation every epoch from the seeded generator, so the
    # order really changes from epoch to epoch while staying reproducible for a fixed seed.
    units = units.shuffle(num_units, seed=seed, reshuffle_each_iteration=True).repeat()
    seeds = tf.data.Dataset.random(seed=seed).batch(2)
    units = tf.data.Dataset.zip((units, seeds)).map(graph_function(lambda u, s: (*u, s)))
    return units, by_record


def train_records(info: DatasetInfo, cfg: DataConfig, *, image_size: int, input_context=None,
                  seed: int | None = None, preprocess: Preprocessing = REFERENCE) -> tf.data.Dataset:
    """Infinite stream of (image float32 [S,S,3] cropped/flipped/resized, label int32, seed[2])."""
    n, w = _workers(input_context)
    units, by_record = train_units(info, input_context, seed)

    def decode(image_bytes, s):
        return preprocessing.preprocess_for_train(image_bytes, image_size, s, preprocess)

    cycle = min(16 if info.record_format == "tfrecord" else 64, len(info.train_shards))
    return _record_stream(info, units, decode, num_workers=n, worker=w, by_record=by_record,
                          skip_corrupt=cfg.skip_corrupt, image_size=image_size, cycle_length=max(cycle, 1),
                          deterministic=seed is not None)


def shuffle_buffer_size(info: DatasetInfo, image_size: int) -> int:
    """Decoded examples the train shuffle holds."""
    # Shuffle memory is bounded in bytes; a buffer above one epoch only makes a tiny set read ahead for epochs.
    return int(min(4096, info.num_train_examples, max(64, _SHUFFLE_BYTES // (image_size * image_size * 3 * 4))))


@functools.lru_cache(maxsize=None)
def _augmenter(name: str, num_layers: int, magnitude: float):
    """The policy as a tf.function traced once per image shape.

    tf.data traces its map functions anew for every dataset, and training builds one per epoch; a map
    function that only calls this reuses its graph instead of rebuilding the policy's ~50 operation
    branches in Python, which took seconds per epoch."""
    return tf.function(lambda image, seed: augment_lib.augment(image, seed, name, num_layers, magnitude),
                       autograph=False)


def train_dataset(info: DatasetInfo, cfg: DataConfig, aug: AugmentConfig, *, batch_size: int, image_size: int,
                  input_context=None, seed: int | None = None, skip_examples: int = 0,
                  preprocess: Preprocessing = REFERENCE) -> tf.data.Dataset:
    """Infinite batches of (images float32 [B,S,S,3] in [0,255], labels float32 one-hot [B,C]); B per replica.

    The example order (and each example's augmentation) depends on the seed and the input context, not on the
    batch size; skip_examples starts the stream that far in, so a run resumed with another batch size continues
    where it stopped (examples are skipped before they are augmented)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    records = train_records(info, cfg, image_size=image_size, input_context=input_context, seed=seed,
                            preprocess=preprocess)
    num_classes = info.num_classes
    augmenter = None
    if aug.augmenter_name:
        augmenter = _augmenter(aug.augmenter_name, aug.raug_num_layers, aug.raug_magnitude)

    ds = records.shuffle(shuffle_buffer_size(info, image_size), seed=seed).skip(skip_examples)
    if augmenter is not None:
        ds = ds.map(graph_function(
            lambda img, lab, s: (augmenter(img, tf.random.experimental.stateless_fold_in(s, 7)), lab)),
                    num_parallel_calls=AUTOTUNE, deterministic=seed is not None)
    else:  # no per-image step left: one parallel map stage fewer (docs/input_pipeline.md)
        ds = ds.map(graph_function(lambda img, lab, s: (img, lab)))
    # One-hot per batch: one op per batch instead of one per image.
    ds = ds.batch(batch_size, drop_remainder=True).map(
        graph_function(lambda x, lab: (x, tf.one_hot(lab, num_classes))))
    if aug.mixing and not aug.defer_img_mixing:
        mix_seeds = tf.data.Dataset.random(seed=None if seed is None else seed + 1).batch(2)
        mix_seeds = mix_seeds.skip(skip_examples // batch_size)
        ds = tf.data.Dataset.zip((ds, mix_seeds)).map(graph_function(
            lambda b, s: mixing.mix_batch(b[0], b[1], mixup_alpha=aug.mixup_alpha, cutmix_alpha=aug.cutmix_alpha,
                                          seed=s)),
            num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


# ------------------------------------------------------------------------------------------------- eval
def _eval_plan(info: DatasetInfo, num_workers: int) -> tuple[bool, list[list[int]], list[int]]:
    """Which eval shards each worker reads, whether records are sharded, and each worker's example count."""
    shards = info.eval_shards
    if num_workers <= 1:
        return False, [list(range(len(shards)))], [sum(s.num_records for s in shards)]
    if len(shards) < num_workers:
        counts = [sum(max(0, -(-(s.num_records - w) // num_workers)) for s in shards) for w in range(num_workers)]
        return True, [list(range(len(shards)))] * num_workers, counts
    # Greedy balance by record count (largest first) keeps the padded step count close to n / workers.
    loads, assign = [0] * num_workers, [[] for _ in range(num_workers)]
    for k in sorted(range(len(shards)), key=lambda k: (-shards[k].num_records, k)):
        w = min(range(num_workers), key=lambda w: (loads[w], w))
        assign[w].append(k)
        loads[w] += shards[k].num_records
    return False, [sorted(a) for a in assign], loads


def eval_steps(info: DatasetInfo, global_batch_size: int, num_workers: int = 1) -> int:
    """Batches per worker so that every eval example is seen exactly once (the rest is masked padding)."""
    if global_batch_size < 1 or global_batch_size % num_workers:
        raise ValueError(f"global batch {global_batch_size} must be a positive multiple of {num_workers} workers")
    _, _, counts = _eval_plan(info, num_workers)
    per_worker_step = global_batch_size // num_workers
    return math.ceil(max(counts) / per_worker_step)


def eval_records(info: DatasetInfo, cfg: DataConfig, *, image_size: int, input_context=None,
                 preprocess: Preprocessing = REFERENCE) -> tf.data.Dataset:
    """Finite, deterministic stream of (image float32 [S,S,3], label int32) for this worker."""
    if not info.eval_shards:
        raise ValueError(f"no evaluation data in {info.description}: there are no validation-* shards or "
                         f"validation/ images")
    n, w = _workers(input_context)
    by_record, assign, _ = _eval_plan(info, n)
    mine = tuple(info.eval_shards[k] for k in assign[w])
    if not mine:
        return tf.data.Dataset.from_tensors((tf.zeros([image_size, image_size, 3]), tf.constant(0))).take(0)
    units = tf.data.Dataset.from_tensor_slices(_shard_tensors(mine)).map(
        graph_function(lambda p, c, lab: (p, c, lab, tf.zeros([2], tf.int64))))

    def decode(image_bytes, _seed):
        return preprocessing.preprocess_for_eval(image_bytes, image_size, preprocess)

    cycle = min(8 if info.record_format == "tfrecord" else 64, len(mine))
    stream = _record_stream(info, units, decode, num_workers=n, worker=w, by_record=by_record,
                            skip_corrupt=cfg.skip_corrupt, image_size=image_size, cycle_length=cycle,
                            deterministic=True)
    return stream.map(graph_function(lambda img, lab, seed: (img, lab)))


def eval_dataset(info: DatasetInfo, cfg: DataConfig, *, batch_size: int, image_size: int,
                 input_context=None, preprocess: Preprocessing = REFERENCE) -> tf.data.Dataset:
    """Finite batches of (images float32 [B,S,S,3], labels int32 [B], mask float32 [B]); B per replica.

    Every worker yields eval_steps(info, global_batch, num_pipelines) * replicas_per_pipeline batches;
    padding examples (zeros, label 0) have mask 0, real ones mask 1, and each real example appears once.
    """
    n, _ = _workers(input_context)
    replicas = input_context.num_replicas_in_sync if input_context is not None else 1
    per_pipeline = max(1, replicas // n)
    steps = eval_steps(info, batch_size * per_pipeline * n, n)
    total = steps * per_pipeline * batch_size
    real = eval_records(info, cfg, image_size=image_size, input_context=input_context, preprocess=preprocess).map(
        graph_function(lambda img, lab: (img, lab, tf.constant(1.0))))
    pad = tf.data.Dataset.from_tensors(
        (tf.zeros([image_size, image_size, 3], tf.float32), tf.constant(0, tf.int32), tf.constant(0.0))).repeat()
    ds = real.concatenate(pad).take(total).batch(batch_size, drop_remainder=True)
    return ds.prefetch(AUTOTUNE)
