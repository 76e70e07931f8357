"""Keras callbacks usable on their own in any `model.fit`."""

from keras_playbook.callbacks.monitors import CurveDiagnosis as CurveDiagnosis
from keras_playbook.callbacks.monitors import LossComponents as LossComponents
from keras_playbook.callbacks.monitors import UpdateRatioMonitor as UpdateRatioMonitor
from keras_playbook.callbacks.monitors import WeightDecayMonitor as WeightDecayMonitor
from keras_playbook.callbacks.progress import StepProgress as StepProgress
from keras_playbook.callbacks.schedules import CosineRestarts as CosineRestarts
from keras_playbook.callbacks.schedules import OneCycle as OneCycle
from keras_playbook.callbacks.schedules import ScheduledLR as ScheduledLR
from keras_playbook.callbacks.schedules import StepDownLR as StepDownLR
from keras_playbook.callbacks.schedules import TwoStage as TwoStage
from keras_playbook.callbacks.schedules import WarmUp as WarmUp
from keras_playbook.callbacks.schedules import restore_momentum as restore_momentum

__all__ = [
    "CosineRestarts",
    "CurveDiagnosis",
    "LossComponents",
    "OneCycle",
    "ScheduledLR",
    "StepDownLR",
    "StepProgress",
    "TwoStage",
    "UpdateRatioMonitor",
    "WarmUp",
    "WeightDecayMonitor",
    "restore_momentum",
]
