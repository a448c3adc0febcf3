"""`python -m efficientnet --variant b4 [--mparams k=v,...] [--num_classes N] [--resolution R]`: a model summary."""

from absl import app, flags

import efficientnet

VARIANT = flags.DEFINE_string("variant", "b0", "EfficientNet variant, b0..b7.")
NUM_CLASSES = flags.DEFINE_integer("num_classes", 1000, "Classifier width.")
MPARAMS = flags.DEFINE_list("mparams", [], "Model overrides, key=value[,key=value...].")
RESOLUTION = flags.DEFINE_integer("resolution", None, "Input size for the FLOP count (default: native).")


def main(argv):
    del argv
    variant = efficientnet.canonical_variant(VARIANT.value)
    overrides = efficientnet.parse_overrides(MPARAMS.value)
    overrides.setdefault("num_classes", NUM_CLASSES.value)
    params = efficientnet.params_for(variant, **overrides)
    s = efficientnet.summarize(params, f"efficientnet-{variant}", RESOLUTION.value)
    rows = [
        ("model", s.name),
        ("width / depth", f"{params.width_coefficient} / {params.depth_coefficient}"),
        ("blocks", str(len(efficientnet.decode_blocks(params)))),
        ("resolution", f"{s.resolution} px"),
        ("trainable params", f"{s.trainable_params:,}"),
        ("non-trainable params", f"{s.non_trainable_params:,}"),
        ("multiply-adds", f"{s.multiply_adds:,} ({s.multiply_adds / 1e9:.3f} B)"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def run():
    # Variants are case-insensitive and may carry the 'efficientnet-' prefix.
    flags.register_validator("variant", lambda v: _valid(v), message="unknown variant; valid: b0..b7")
    app.run(main)


def _valid(v):
    try:
        efficientnet.canonical_variant(v)
        return True
    except ValueError:
        return False


if __name__ == "__main__":
    run()
