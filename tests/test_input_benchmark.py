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


def test_rounds_repeat_every_row_and_take_the_median_ratio(tmp_path, capsys):
    testdata.labelled_shards(str(tmp_path), "train", [8, 8])
    assert benchmark.main(["--data_dir", str(tmp_path), "--image_size", "32", "--batch_size", "4",
                           "--batches", "2", "--warmup", "1", "--augmenters", "none",
                           "--baselines", "decode_then_crop", "--rounds", "3"]) == 0
    out = capsys.readouterr().out
    ours = [float(r) for r in re.findall(r"^none +(\S+) ", out, re.M)]
    theirs = [float(r) for r in re.findall(r"^decode_then_crop +(\S+) ", out, re.M)]
    assert len(ours) == len(theirs) == 3
    line = re.search(r"^ours \(none\) / decode_then_crop: (\S+)x \(median of 3 rounds: (.*)\)$", out, re.M)
    per_round = [float(r.rstrip("x")) for r in line.group(2).split(", ")]
    assert per_round == pytest.approx([round(a / b, 2) for a, b in zip(ours, theirs)], abs=0.011)
    assert float(line.group(1)) == sorted(per_round)[1]


def test_unknown_baseline_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        benchmark.main(["--data_dir", str(tmp_path), "--baselines", "keras_randaugment_batch,foo"])
    assert e.value.code == 2
    assert "--baselines: unknown foo" in capsys.readouterr().err
