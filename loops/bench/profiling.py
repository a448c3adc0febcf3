"""Where a step's time goes, read from a TensorFlow profiler trace.

`tf.profiler.experimental` writes an XSpace protobuf (`*.xplane.pb`) that TensorBoard's profile plugin can
show. That plugin (xprof) also computes op statistics, but it drags in its own server stack (protobuf 7,
cloud storage clients) that does not install beside TensorFlow 2.21's pins, so the few lines that total the
op events are written here, on the protobuf module TensorFlow itself ships.

Each TensorFlow op the executor ran is one event on a `tf_Compute` thread, named `<op name>:<op type>`.
Op names carry the Keras layer and, for gradients, the `gradient_tape/` prefix, so every op is charged to
a part of the step (forward, backward, optimizer, EMA, L2, other) and to a kind of layer. Events are wall
time; ops running side by side on the inter-op threads each count their own time, so totals can exceed
the step time, and shares are shares of op time.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import os
import re

# First match wins; matched against the Keras layer name found in the op name.
LAYER_KINDS = (
    ("depthwise conv", re.compile(r"_dwconv$")),
    ("batch norm", re.compile(r"_bn$")),
    ("squeeze-excite", re.compile(r"_se_(squeeze|reduce|expand|excite)$")),
    ("activation (swish)", re.compile(r"_activation$")),
    ("conv 1x1 / stem", re.compile(r"_conv$")),
    ("stochastic depth + residual", re.compile(r"_(drop|add)$")),
    ("head (pool, dense)", re.compile(r"^(avg_pool|top_dropout|predictions|logits)$")),
    ("input normalization", re.compile(r"^normalize$")),
)
OPTIMIZER_SCOPES = ("rm_sprop", "sgd", "adam_w", "loss_scale_optimizer")
NAMED_SCOPES = {"ema": "EMA", "l2_penalty": "L2 penalty"}  # tf.name_scope of loops/ema.py, loops/optimization.py
# An XLA-compiled function inside a graph runs as one executable; its events carry no op name. Without
# --use_xla the only such function in the step is the swish gradient (efficientnet/model.py).
XLA_RUN = "CpuExecutable::ExecuteAsyncOnStream"


@dataclasses.dataclass(frozen=True)
class OpEvent:
    name: str
    op_type: str
    seconds: float


def read_op_events(logdir: str) -> list[OpEvent]:
    """Every TF op event of the newest trace under `logdir`."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    traces = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime)
    if not traces:
        raise FileNotFoundError(f"{logdir}: no profiler trace (*.xplane.pb) found")
    space = xplane_pb2.XSpace()
    with open(traces[-1], "rb") as f:
        space.ParseFromString(f.read())
    events = []
    for plane in space.planes:
        if not plane.name.startswith("/host:"):
            continue
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                full = plane.event_metadata[event.metadata_id].name
                if full == XLA_RUN:
                    events.append(OpEvent(XLA_RUN, "XLA cluster", event.duration_ps * 1e-12))
                    continue
                # "ExecutorState::Process" and friends wrap ops; ops are "<name>:<type>".
                if "::" in full or ":" not in full:
                    continue
                name, op_type = full.rsplit(":", 1)
                events.append(OpEvent(name, op_type.removeprefix("_MklNative").removeprefix("_Mkl"),
                                      event.duration_ps * 1e-12))
    return events


def classify(name: str) -> tuple[str, str]:
    """(part of the step, kind of layer) for one op name."""
    if name == XLA_RUN:
        return "XLA clusters", "XLA clusters"
    parts = name.split("/")
    if re.fullmatch(r"replica_\d+", parts[0]):  # MirroredStrategy's scope for replicas after the first
        parts = parts[1:]
    backward = parts[0] == "gradient_tape"
    if backward:
        parts = parts[1:]
    if parts[0] in OPTIMIZER_SCOPES:
        return "optimizer", "optimizer"
    if parts[0] in NAMED_SCOPES:
        return NAMED_SCOPES[parts[0]], NAMED_SCOPES[parts[0]]
    part = "backward" if backward else "forward"
    if len(parts) > 1 and parts[0].startswith("efficientnet"):
        layer = re.sub(r"_\d+$", "", parts[1])  # Keras appends _1, _2 to a layer's scope on each call
        for kind, pattern in LAYER_KINDS:
            if pattern.search(layer):
                return part, kind
        return part, "other layers"
    return part if backward else "other", "loss, metrics, unattributed gradients"


def summarize(events: list[OpEvent], steps: int) -> dict[str, list[tuple[str, float, float]]]:
    """Tables of (key, ms per step, % of op time) by op type, by part of the step and by layer kind, largest
    first."""
    total = sum(e.seconds for e in events) or 1.0
    tables = {"op type": collections.Counter(), "part of the step": collections.Counter(),
              "layer kind (forward + backward)": collections.Counter()}
    for e in events:
        part, kind = classify(e.name)
        tables["op type"][e.op_type] += e.seconds
        tables["part of the step"][part] += e.seconds
        if part in ("forward", "backward"):
            tables["layer kind (forward + backward)"][kind] += e.seconds
    return {title: [(key, 1000 * sec / steps, 100 * sec / total) for key, sec in counter.most_common()]
            for title, counter in tables.items()}


def format_summary(summary: dict, top: int = 15) -> str:
    out = []
    for title, rows in summary.items():
        out.append(f"\n| {title} | ms per step | % of op time |\n|---|---:|---:|")
        out += [f"| {key} | {ms:.1f} | {pct:.1f} |" for key, ms, pct in rows[:top]]
        if len(rows) > top:
            rest = rows[top:]
            out.append(f"| ({len(rest)} more) | {sum(r[1] for r in rest):.1f} | {sum(r[2] for r in rest):.1f} |")
    return "\n".join(out)
