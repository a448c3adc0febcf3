"""The served (inference-only) form of the network gives the model's own outputs, with every BatchNorm folded
away, and the trained checkpoint's predict/export top-k are unchanged by it."""

import collections

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

import efficientnet
import input as data
from efficientnet.serving import inference_model, serving_function, with_trained_like_statistics
from input import testdata
from input.config import REFERENCE
from loops.restore import restore

SIZE = 64
# float32 rounding differs (the folded kernel is w * s, not (x * w) * s); measured differences are about 1e-6.
LOGITS_ATOL, PROBS_ATOL = 1e-4, 1e-5


def _real_images(size, preprocessing=REFERENCE):
    """Decoded JPEG/PNG files through the evaluation preprocessing, as predict.py and the export see them."""
    files = [testdata.encode(testdata.image_array(seed, 50 + 7 * seed, 70), fmt)
             for seed, fmt in ((1, "jpg"), (2, "png"), (3, "jpg"))]
    return tf.stack([data.preprocess_for_eval(tf.constant(b), size, preprocessing) for b in files])


def test_folded_network_matches_the_model_and_has_no_batch_norm():
    model = with_trained_like_statistics(efficientnet.build_model("b0", 10))
    x = _real_images(SIZE)
    expected = model(x, training=False).numpy()

    served = inference_model(model)
    kinds = collections.Counter(type(layer).__name__ for layer in served.layers)
    assert kinds["BatchNormalization"] == 0
    assert kinds["Dense"] == 1 + 2 * 16  # the classifier and both squeeze-excite projections of 16 blocks
    assert all(layer.use_bias for layer in served.layers if isinstance(layer, keras.layers.Conv2D))
    np.testing.assert_allclose(served(x, training=False).numpy(), expected, atol=LOGITS_ATOL, rtol=0)

    logits = serving_function(model, tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32))(x).numpy()
    np.testing.assert_allclose(logits, expected, atol=LOGITS_ATOL, rtol=0)
    np.testing.assert_allclose(tf.nn.softmax(logits).numpy(), tf.nn.softmax(expected).numpy(),
                               atol=PROBS_ATOL, rtol=0)


def test_frozen_function_keeps_the_weights_it_was_made_with():
    model = with_trained_like_statistics(efficientnet.build_model("b0", 10))
    x = _real_images(SIZE)
    logits = serving_function(model, tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32))
    before = logits(x).numpy()
    with_trained_like_statistics(model, seed=1)
    np.testing.assert_array_equal(logits(x).numpy(), before)


def test_mixed_precision_model_folds_under_its_policy_as_close_to_float32_as_unfolded():
    keras.utils.set_random_seed(0)  # the weights, and so the logits' scale, do not depend on the tests run before
    try:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        model = with_trained_like_statistics(efficientnet.build_model("b0", 10))
        x = _real_images(SIZE)
        unfolded = model(x, training=False).numpy()
        folded = serving_function(model, tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32))(x).numpy()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    exact = efficientnet.build_model("b0", 10)
    exact.set_weights(model.get_weights())
    exact = exact(x, training=False).numpy()
    assert folded.dtype == np.float32
    # bfloat16 keeps 8 significant bits, so both differ from the float32 network by its rounding (about 1% of the
    # logits' scale here); folding changes where the rounding happens, not how far it takes the result.
    unfolded_error, folded_error = np.abs(unfolded - exact).max(), np.abs(folded - exact).max()
    assert 0 < unfolded_error < 0.05 * np.abs(exact).max()
    assert folded_error <= 2 * unfolded_error


def test_grappler_fuses_conv_bias_and_swish_into_one_kernel():
    """The point of the rewrite: on oneDNN CPUs every Conv2D + bias + swish runs as one fused kernel."""
    model = with_trained_like_statistics(efficientnet.build_model("b0", 10))
    served = inference_model(model)
    traced = tf.function(lambda images: served(images, training=False)).get_concrete_function(
        tf.TensorSpec([1, SIZE, SIZE, 3], tf.float32))
    frozen = convert_variables_to_constants_v2(traced)
    graph = tf.Graph()
    with graph.as_default():
        tf.import_graph_def(frozen.graph.as_graph_def(), name="")
    metadata = tf.compat.v1.RunMetadata()
    with tf.compat.v1.Session(graph=graph) as session:
        session.run(frozen.outputs[0].name, {frozen.inputs[0].name: np.zeros([1, SIZE, SIZE, 3], np.float32)},
                    options=tf.compat.v1.RunOptions(output_partition_graphs=True), run_metadata=metadata)
    nodes = [n for g in metadata.partition_graphs for n in g.node]
    if not any(n.op.startswith("_Mkl") for n in nodes):
        pytest.skip("oneDNN is not in use here (GPU build or TF_ENABLE_ONEDNN_OPTS=0)")
    fused = [[s.decode() for s in n.attr["fused_ops"].list.s] for n in nodes if "Conv2D" in n.op]
    # stem, 15 expansion convs and the head conv are followed by swish; none may be left unfused
    assert sum(ops == ["BiasAdd", "_MklSwish"] for ops in fused) == 17
    assert not [n for n in nodes if n.op in ("FusedBatchNormV3", "Rsqrt")]


@pytest.mark.slow
def test_checkpoint_top_k_unchanged_by_serving(tiny_checkpoint):
    restored = restore(tiny_checkpoint)
    restored.use_ema_weights()
    spec = restored.spec
    x = _real_images(spec.eval_img_size, spec.preprocessing)
    expected = tf.nn.softmax(restored.model(x, training=False)).numpy()
    served = tf.nn.softmax(serving_function(
        restored.model, tf.TensorSpec([None, spec.eval_img_size, spec.eval_img_size, 3], tf.float32))(x)).numpy()
    np.testing.assert_allclose(served, expected, atol=PROBS_ATOL, rtol=0)
    np.testing.assert_array_equal(np.argsort(-served, axis=1, kind="stable")[:, :5],
                                  np.argsort(-expected, axis=1, kind="stable")[:, :5])
