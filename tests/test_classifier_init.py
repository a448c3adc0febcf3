"""The classifier's initializer: the reference's (variance 1 / (3 x classes)) by default, and --mparams
classifier_init=fan_in (variance 1 / (3 x features)), which starts a 10-class run at the logit scale the
reference has at 1000 classes."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import efficientnet


def _classifier_kernel(num_classes, **overrides):
    keras.utils.set_random_seed(0)
    model = efficientnet.build_model("b0", num_classes, **overrides)
    return model, model.get_layer("predictions").kernel.numpy()


@pytest.mark.parametrize("num_classes, overrides, bound", [
    (1000, {}, 1 / math.sqrt(1000)),  # the reference's ImageNet init is unchanged
    (10, {}, 1 / math.sqrt(10)),  # ... and ten times wider at 10 classes
    (10, {"classifier_init": "fan_in"}, 1 / math.sqrt(1280)),  # B0's 1280 head features, whatever the classes
    (1000, {"classifier_init": "fan_in"}, 1 / math.sqrt(1280)),
])
def test_classifier_kernel_is_uniform_within_the_bound_of_its_fan(num_classes, overrides, bound):
    _, kernel = _classifier_kernel(num_classes, **overrides)
    assert kernel.shape == (1280, num_classes)
    assert np.abs(kernel).max() <= bound
    assert np.abs(kernel).max() > 0.99 * bound  # uniform: values reach the bound
    assert np.std(kernel) == pytest.approx(bound / math.sqrt(3), rel=0.05)


def test_ten_classes_start_near_chance_loss_with_fan_in_and_far_above_it_by_default():
    images = tf.constant(np.random.default_rng(0).uniform(0, 255, (32, 32, 32, 3)), tf.float32)
    labels = tf.one_hot(np.arange(32) % 10, 10)
    losses = {}
    for mode in ("fan_out", "fan_in"):
        model, _ = _classifier_kernel(10, classifier_init=mode)
        logits = model(images, training=True)
        losses[mode] = float(tf.reduce_mean(keras.losses.categorical_crossentropy(labels, logits, from_logits=True)))
    assert losses["fan_in"] == pytest.approx(math.log(10), abs=0.3)
    assert losses["fan_out"] > math.log(10) + 1.5


def test_unknown_classifier_init_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match=r"classifier_init='zeros': not one of fan_out, fan_in"):
        efficientnet.build_model("b0", 10, **efficientnet.parse_overrides("classifier_init=zeros"))
