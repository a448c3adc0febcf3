"""A trained network put to use: predict.py and the exported artifacts."""
