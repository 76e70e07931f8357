"""Stage functions: a session and a pipeline in, a `Result` out."""

from keras_playbook.stages.sanity import InitialLossResult as InitialLossResult
from keras_playbook.stages.sanity import OverfitResult as OverfitResult
from keras_playbook.stages.sanity import check_initial_loss as check_initial_loss
from keras_playbook.stages.sanity import disable_regularization as disable_regularization
from keras_playbook.stages.sanity import overfit_small_sample as overfit_small_sample

__all__ = [
    "InitialLossResult",
    "OverfitResult",
    "check_initial_loss",
    "disable_regularization",
    "overfit_small_sample",
]
