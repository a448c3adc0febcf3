"""Settings declared once (flags/settings.py, flags/cli.py): each config field is its flag, with the reference's
names, defaults and rules; configs import without TensorFlow; entry points refuse bad values in one line."""

import dataclasses
import os
import subprocess
import sys

import pytest
from absl import flags

from flags import cli
from flags.settings import POSITIVE, Settings, flag_name, group_of, setting, setting_of
from loops.config import EvalConfig, TrainConfig
from loops.serving.config import ExportConfig, PredictConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The train.py flags of NVIDIA's EfficientNet TF2 README (../shared/seed), spelled as there.
REFERENCE_TRAIN_FLAGS = (
    "augmenter_name", "base_img_size", "cutmix_alpha", "data_dir", "defer_img_mixing", "eval_batch_size",
    "eval_img_size", "log_steps", "lr_decay", "lr_init", "max_epochs", "mixup_alpha", "mode", "model_dir",
    "moving_average_decay", "mparams", "n_stages", "raug_magnitude", "raug_num_layers", "save_checkpoint_freq",
    "train_batch_size", "train_img_size", "use_amp", "use_xla", "warmup_epochs", "weight_decay")


def _parsed(config_class, *argv):
    values = flags.FlagValues()
    cli.define(config_class, values)
    values(["prog", *map(str, argv)])
    return values


def _flag_fields(config_class):
    for field in dataclasses.fields(config_class):
        if group_of(field):
            yield from _flag_fields(group_of(field))
        elif setting_of(field):
            yield field


def test_reference_flag_names_and_defaults_come_from_the_config_fields():
    values = _parsed(TrainConfig)
    assert set(REFERENCE_TRAIN_FLAGS) <= set(values)
    # Every flag's default and help are the field's own: nothing is declared a second time.
    for field in _flag_fields(TrainConfig):
        flag = values[flag_name(field)]
        default = field.default_factory() if field.default is dataclasses.MISSING else field.default
        if isinstance(default, dict):
            default = [f"{k}={v}" for k, v in default.items()]
        elif isinstance(default, tuple):
            default = [str(v) for v in default]
        assert flag.default == default, flag_name(field)
        assert flag.help.endswith(setting_of(field).help)  # enums prefix their choices
    cfg = cli.build(TrainConfig, values)
    assert cfg == TrainConfig(variant="b0")


def test_flags_reach_nested_configs_and_parsers():
    values = _parsed(TrainConfig, "--arch", "EfficientNet-B4", "--mparams", "dropout_rate=0.5,sync_bn=true",
                     "--opt_epsilon", "0.01", "--data_source", "folder", "--data_dir", "/d", "--mixup_alpha", 0.2,
                     "--benchmark_batch_sizes", "1,8", "--use_amp")
    cfg = cli.build(TrainConfig, values)
    assert (cfg.variant, cfg.model_overrides, cfg.epsilon) == ("b4", {"dropout_rate": 0.5, "sync_bn": True}, 0.01)
    assert (cfg.data.source, cfg.data.data_dir, cfg.augment.mixup_alpha) == ("folder", "/d", 0.2)
    assert cfg.benchmark.batch_sizes == (1, 8) and cfg.precision == "amp_fp16"


@pytest.mark.parametrize("config_class,argv,message", [
    (TrainConfig, ["--lr_init", "-1"], "--lr_init=-1.0: must be positive"),
    (TrainConfig, ["--arch", "b9"], "--arch='b9': unknown EfficientNet variant"),
    (TrainConfig, ["--mparams", "width=2"], "--mparams=['width=2']: unknown model parameter 'width'"),
    (TrainConfig, ["--use_amp", "--precision", "fp32"], "--use_amp=True: contradicts --precision=fp32"),
    (TrainConfig, ["--defer_img_mixing"], "--defer_img_mixing=True: needs --mixup_alpha or --cutmix_alpha > 0"),
    (TrainConfig, ["--label_smoothing", "1"], "--label_smoothing=1.0: must be in [0, 1)"),
    (TrainConfig, ["--benchmark_batch_sizes", "1,x"], "--benchmark_batch_sizes=['1', 'x']"),
    (EvalConfig, [], "--ckpt is required"),
    (ExportConfig, ["--ckpt", "d"], "--output is required"),
    (PredictConfig, ["--ckpt", "d"], "pass exactly one of --image_dir and --image"),
])
def test_a_bad_value_is_refused_naming_its_flag(config_class, argv, message):
    values = _parsed(config_class, *argv)
    with pytest.raises(ValueError) as e:
        cli.build(config_class, values)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_new_setting_is_one_declaration():
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Toy(Settings):
        crop_padding: int = setting(32, "Pixels added to the eval size before the centre crop.", rule=POSITIVE)

    values = _parsed(Toy, "--crop_padding", "48")
    assert values["crop_padding"].help == "Pixels added to the eval size before the centre crop."
    assert cli.build(Toy, values).crop_padding == 48
    with pytest.raises(ValueError, match="--crop_padding=0: must be positive"):
        Toy(crop_padding=0)


def test_configs_and_command_lines_load_without_tensorflow():
    code = ("import sys\nimport flags.cli, loops.config, loops.serving.config, input.config\n"
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("script,argv,message", [
    ("train.py", ["--weight_decay", "-1"], "--weight_decay=-1.0: must be >= 0"),
    ("evaluate.py", ["--ckpt", "x", "--weights", "best"], "--weights"),
    ("predict.py", ["--ckpt", "x", "--image", "a.jpg", "--top_k", "0"], "--top_k=0: must be positive"),
    ("export.py", ["--ckpt", "x"], "--output is required"),
    ("-m", ["loops.average_checkpoints", "--weights", "ema"], "--ckpts is required"),
])
def test_entry_points_refuse_bad_flags_before_loading_tensorflow(script, argv, message):
    # -X importtime lists every module the process imported, on stderr.
    proc = subprocess.run([sys.executable, "-X", "importtime", script, *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and message in proc.stderr, proc.stderr[-2000:]
    assert " tensorflow\n" not in proc.stderr and "Traceback" not in proc.stderr
