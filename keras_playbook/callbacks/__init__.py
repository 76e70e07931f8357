"""Keras callbacks usable on their own in any `model.fit`."""

from keras_playbook.callbacks.curves import CurveDiagnosis as CurveDiagnosis
from keras_playbook.callbacks.curves import LossComponents as LossComponents
from keras_playbook.callbacks.monitors import UpdateRatioMonitor as UpdateRatioMonitor
from keras_playbook.callbacks.monitors import WeightDecayMonitor as WeightDecayMonitor
from keras_playbook.callbacks.one_cycle import OneCycle as OneCycle
from keras_playbook.callbacks.one_cycle import restore_momentum as restore_momentum
from keras_playbook.callbacks.progress import StepProgress as StepProgress
from keras_playbook.callbacks.schedules import CosineRestarts as CosineRestarts
from keras_playbook.callbacks.schedules import ScheduledLR as ScheduledLR
from keras_playbook.callbacks.schedules import TwoStage as TwoStage
from keras_playbook.callbacks.schedules import WarmUp as WarmUp
from keras_playbook.callbacks.step_down import StepDownLR as StepDownLR

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
