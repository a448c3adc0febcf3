"""The demo dataset, read through the real pipeline, is learnable: labels match images and the default
demo augmentation does not destroy the digits."""
import numpy as np
import pytest

import input as I


@pytest.mark.slow
def test_small_cnn_learns_demo_digits(tmp_path):
    import keras

    cfg = I.DataConfig(demo_cache_dir=str(tmp_path))
    info = I.open_dataset(cfg)
    train = I.train_dataset(info, cfg, I.AugmentConfig(), batch_size=64, image_size=32, seed=0)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((32, 32, 3)),
        keras.layers.Rescaling(1 / 255.0),
        keras.layers.Conv2D(16, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, activation="relu"), keras.layers.MaxPooling2D(), keras.layers.Flatten(),
        keras.layers.Dense(info.num_classes),
    ])
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.CategoricalCrossentropy(from_logits=True))
    model.fit(train, steps_per_epoch=200, epochs=1, verbose=0)
    correct = total = 0
    for x, y, m in I.eval_dataset(info, cfg, batch_size=64, image_size=32):
        pred = np.argmax(model.predict_on_batch(x), 1)
        correct += float(((pred == y.numpy()) * m.numpy()).sum())
        total += float(m.numpy().sum())
    assert total == info.num_eval_examples
    print(f"demo accuracy {correct / total:.3f}")
    assert correct / total > 0.9, correct / total  # chance is 0.1
