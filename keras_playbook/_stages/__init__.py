"""Stage functions: the runner's `StageContext` in, a `Result` out; importing this package registers them all."""

from keras_playbook import finetune as finetune  # noqa: F401  (registers fine_tune)
from keras_playbook._short_runs import disable_regularization as disable_regularization
from keras_playbook._stages import training as training  # noqa: F401  (registers fit)
from keras_playbook._stages.batch_size import BatchSizeResult as BatchSizeResult
from keras_playbook._stages.batch_size import find_batch_size as find_batch_size
from keras_playbook._stages.experiments import SeedComparisonResult as SeedComparisonResult
from keras_playbook._stages.experiments import compare_seeds as compare_seeds
from keras_playbook._stages.lr_curves import SUGGESTION_RULES as SUGGESTION_RULES
from keras_playbook._stages.lr_range import LRRangeResult as LRRangeResult
from keras_playbook._stages.lr_range import find_lr as find_lr
from keras_playbook._stages.lr_wd_search import LRWeightDecayResult as LRWeightDecayResult
from keras_playbook._stages.lr_wd_search import tune_lr_wd as tune_lr_wd
from keras_playbook._stages.overfit import OverfitResult as OverfitResult
from keras_playbook._stages.overfit import overfit_small_sample as overfit_small_sample
from keras_playbook._stages.probes import MomentumResult as MomentumResult
from keras_playbook._stages.probes import ProbeResult as ProbeResult
from keras_playbook._stages.probes import probe_lrs as probe_lrs
from keras_playbook._stages.probes import sweep_momentum as sweep_momentum
from keras_playbook._stages.rounds import RoundResult as RoundResult
from keras_playbook._stages.rounds import run_round as run_round
from keras_playbook._stages.sanity import InitialLossResult as InitialLossResult
from keras_playbook._stages.sanity import check_initial_loss as check_initial_loss
from keras_playbook._stages.weight_decay_search import WeightDecayResult as WeightDecayResult
from keras_playbook._stages.weight_decay_search import grid_weight_decay as grid_weight_decay

__all__ = [
    "BatchSizeResult",
    "InitialLossResult",
    "LRRangeResult",
    "LRWeightDecayResult",
    "MomentumResult",
    "OverfitResult",
    "ProbeResult",
    "RoundResult",
    "SUGGESTION_RULES",
    "SeedComparisonResult",
    "WeightDecayResult",
    "check_initial_loss",
    "compare_seeds",
    "disable_regularization",
    "find_batch_size",
    "find_lr",
    "grid_weight_decay",
    "overfit_small_sample",
    "probe_lrs",
    "run_round",
    "sweep_momentum",
    "tune_lr_wd",
]
