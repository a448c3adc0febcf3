"""Parallel engines: tf.distribute (one device, local GPUs, TF_CONFIG workers), Horovod, and Slurm's cluster."""
