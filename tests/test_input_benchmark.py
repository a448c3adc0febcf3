"""input.benchmark on a tiny TFRecord set: every pipeline row, ours and the baselines, and both ratio lines."""
import re

import pytest

from input import benchmark, testdata


def test_benchmark_times_ours_and_the_baselines_on_the_same_files(tmp_path, capsys):
    testdata.labelled_shards(str(tmp_path), "train", [8, 8])
    assert benchmark.main(["--data_dir", str(tmp_path), "--image_size", "32", "--batch_size", "4",
                           "--batches", "2", "--baseline_batches", "1", "--warmup", "1",
                           "--augmenters", "none,autoaugment"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"cpu cores available: \d+", out)
    for name in ("none", "autoaugment", *benchmark.BASELINES):
        rate, per_core, warm, load = re.search(rf"^{name} +(\S+) +(\S+) +(\S+) +(\S+)$", out, re.M).groups()
        assert float(rate) > 0 and float(per_core) > 0 and float(warm) >= 0 and float(load) >= 0
    assert re.search(r"^ours \(none\) / decode_then_crop: \d+\.\d+x$", out, re.M)
    assert re.search(r"^ours \(autoaugment\) / keras_randaugment_(batch|example): \d+\.\dx \(goal >= 2x\)", out, re.M)


def test_unknown_baseline_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        benchmark.main(["--data_dir", str(tmp_path), "--baselines", "keras_randaugment_batch,foo"])
    assert e.value.code == 2
    assert "--baselines: unknown foo" in capsys.readouterr().err
