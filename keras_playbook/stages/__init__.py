"""Stage functions: a session and a pipeline in, a `Result` out."""

from keras_playbook.stages.batch_size import BatchSizeResult as BatchSizeResult
from keras_playbook.stages.batch_size import find_batch_size as find_batch_size
from keras_playbook.stages.lr_range import LRRangeResult as LRRangeResult
from keras_playbook.stages.lr_range import SUGGESTION_RULES as SUGGESTION_RULES
from keras_playbook.stages.lr_range import find_lr as find_lr
from keras_playbook.stages.probes import MomentumResult as MomentumResult
from keras_playbook.stages.probes import ProbeResult as ProbeResult
from keras_playbook.stages.probes import probe_lrs as probe_lrs
from keras_playbook.stages.probes import sweep_momentum as sweep_momentum
from keras_playbook.stages.sanity import InitialLossResult as InitialLossResult
from keras_playbook.stages.sanity import OverfitResult as OverfitResult
from keras_playbook.stages.sanity import check_initial_loss as check_initial_loss
from keras_playbook.stages.sanity import disable_regularization as disable_regularization
from keras_playbook.stages.sanity import overfit_small_sample as overfit_small_sample

__all__ = [
    "BatchSizeResult",
    "InitialLossResult",
    "LRRangeResult",
    "MomentumResult",
    "OverfitResult",
    "ProbeResult",
    "SUGGESTION_RULES",
    "check_initial_loss",
    "disable_regularization",
    "find_batch_size",
    "find_lr",
    "overfit_small_sample",
    "probe_lrs",
    "sweep_momentum",
]
