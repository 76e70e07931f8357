"""keras-playbook: the disciplined practice of hyperparameter tuning, as Keras code.

What users call is exported here, once: `Playbook`, the result classes its
stages return (all `Result`s, kept in a `Journal`), `diagnose` and `Finding`,
and three subpackages usable without a Playbook: `callbacks` (schedules and
monitors for any `model.fit`), `finetune` (layer groups, freezing,
discriminative rates) and `tuning` (the KerasTuner pieces). Modules whose
names start with an underscore are internal and may change.
"""

from keras_playbook._backend import check_backend as _check_backend

_check_backend()

from keras_playbook import callbacks as callbacks  # noqa: E402
from keras_playbook import finetune as finetune  # noqa: E402
from keras_playbook import tuning as tuning  # noqa: E402
from keras_playbook._diagnosis import Finding as Finding  # noqa: E402
from keras_playbook._diagnosis import diagnose as diagnose  # noqa: E402
from keras_playbook._journal import Journal as Journal  # noqa: E402
from keras_playbook._journal import Result as Result  # noqa: E402
from keras_playbook._playbook import Playbook as Playbook  # noqa: E402
from keras_playbook._records import FitRecord as FitRecord  # noqa: E402
from keras_playbook._records import RunResult as RunResult  # noqa: E402
from keras_playbook._records import SetupRecord as SetupRecord  # noqa: E402
from keras_playbook._stages import BatchSizeResult as BatchSizeResult  # noqa: E402
from keras_playbook._stages import InitialLossResult as InitialLossResult  # noqa: E402
from keras_playbook._stages import LRRangeResult as LRRangeResult  # noqa: E402
from keras_playbook._stages import LRWeightDecayResult as LRWeightDecayResult  # noqa: E402
from keras_playbook._stages import MomentumResult as MomentumResult  # noqa: E402
from keras_playbook._stages import OverfitResult as OverfitResult  # noqa: E402
from keras_playbook._stages import ProbeResult as ProbeResult  # noqa: E402
from keras_playbook._stages import RoundResult as RoundResult  # noqa: E402
from keras_playbook._stages import SeedComparisonResult as SeedComparisonResult  # noqa: E402
from keras_playbook._stages import WeightDecayResult as WeightDecayResult  # noqa: E402
from keras_playbook.finetune import FineTuneResult as FineTuneResult  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "BatchSizeResult",
    "FineTuneResult",
    "FitRecord",
    "Finding",
    "InitialLossResult",
    "Journal",
    "LRRangeResult",
    "LRWeightDecayResult",
    "MomentumResult",
    "OverfitResult",
    "Playbook",
    "ProbeResult",
    "Result",
    "RoundResult",
    "RunResult",
    "SeedComparisonResult",
    "SetupRecord",
    "WeightDecayResult",
    "__version__",
    "callbacks",
    "diagnose",
    "finetune",
    "tuning",
]
