"""Keras callbacks usable on their own in any `model.fit`."""

from keras_playbook.callbacks.monitors import CurveDiagnosis as CurveDiagnosis
from keras_playbook.callbacks.monitors import LossComponents as LossComponents
from keras_playbook.callbacks.monitors import UpdateRatioMonitor as UpdateRatioMonitor
from keras_playbook.callbacks.progress import StepProgress as StepProgress
from keras_playbook.callbacks.schedules import StepDownLR as StepDownLR

__all__ = ["CurveDiagnosis", "LossComponents", "StepDownLR", "StepProgress", "UpdateRatioMonitor"]
