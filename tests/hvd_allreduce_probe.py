"""Run by tests/test_horovod_install.py under `horovodrun -np 2`: one allreduce round trip per rank.

Each rank prints one line `HVD_PROBE {json}` with its rank/size, whether Gloo is built in and in use, the
reduced tensors and the HOROVOD_* environment horovodrun gave it. Not a test module itself (no test_ prefix)."""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import horovod.tensorflow as hvd  # noqa: E402
import tensorflow as tf  # noqa: E402


def main():
    hvd.init()
    rank, size = hvd.rank(), hvd.size()
    local = tf.constant([rank + 1.0, 10.0 * (rank + 1), -1.0])

    @tf.function
    def reduce(t):
        return (hvd.allreduce(t, op=hvd.Sum, name="probe_sum"),
                hvd.allreduce(t, op=hvd.Average, name="probe_avg"),
                hvd.allreduce(t, op=hvd.Average, compression=hvd.Compression.fp16, name="probe_fp16"),
                hvd.broadcast(t, root_rank=0, name="probe_bcast"))

    total, mean, mean_fp16, bcast = (x.numpy().tolist() for x in reduce(local))
    print("HVD_PROBE " + json.dumps({
        "rank": rank, "size": size, "local_rank": hvd.local_rank(), "local_size": hvd.local_size(),
        "gloo_built": hvd.gloo_built(), "gloo_enabled": hvd.gloo_enabled(), "mpi_enabled": hvd.mpi_enabled(),
        "sum": total, "average": mean, "average_fp16": mean_fp16, "broadcast": bcast,
        "env": {k: v for k, v in os.environ.items() if k.startswith("HOROVOD_")},
    }, sort_keys=True), flush=True)
    hvd.shutdown()


if __name__ == "__main__":
    main()
