"""The training and evaluation loops around the EfficientNet model."""
