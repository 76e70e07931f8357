"""Keras callbacks usable on their own in any `model.fit`."""

from keras_playbook.callbacks.progress import StepProgress as StepProgress

__all__ = ["StepProgress"]
