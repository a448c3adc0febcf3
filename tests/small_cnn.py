"""A small Keras CNN trained for a few steps through the real input pipeline: whether a dataset, as the pipeline
preprocesses it, is learnable at all (independent of EfficientNet and the training loop)."""
import numpy as np

import input as I


def validation_accuracy(info, cfg, *, preprocess, batch_size: int, steps: int, image_size: int = 32) -> float:
    """Top-1 over every validation example after `steps` Adam steps on `train_dataset` batches."""
    import keras

    train = I.train_dataset(info, cfg, I.AugmentConfig(), batch_size=batch_size, image_size=image_size, seed=0,
                            preprocess=preprocess)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((image_size, image_size, 3)), keras.layers.Rescaling(1 / 255.0),
        keras.layers.Conv2D(16, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, activation="relu"), keras.layers.MaxPooling2D(), keras.layers.Flatten(),
        keras.layers.Dense(info.num_classes),
    ])
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.CategoricalCrossentropy(from_logits=True))
    model.fit(train, steps_per_epoch=steps, epochs=1, verbose=0)
    correct = total = 0.0
    for x, y, m in I.eval_dataset(info, cfg, batch_size=64, image_size=image_size, preprocess=preprocess):
        correct += float(((np.argmax(model.predict_on_batch(x), 1) == y.numpy()) * m.numpy()).sum())
        total += float(m.numpy().sum())
    assert total == info.num_eval_examples
    return correct / total
