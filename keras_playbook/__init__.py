"""keras-playbook: the disciplined practice of hyperparameter tuning, as Keras code."""

from keras_playbook._backend import check_backend as _check_backend

_check_backend()

from keras_playbook.diagnosis import Finding as Finding  # noqa: E402
from keras_playbook.diagnosis import diagnose as diagnose  # noqa: E402
from keras_playbook.journal import Journal as Journal  # noqa: E402
from keras_playbook.journal import Result as Result  # noqa: E402
from keras_playbook.playbook import Playbook as Playbook  # noqa: E402
from keras_playbook.records import FitRecord as FitRecord  # noqa: E402
from keras_playbook.records import SetupRecord as SetupRecord  # noqa: E402
from keras_playbook.session import Session as Session  # noqa: E402
from keras_playbook.stages import BatchSizeResult as BatchSizeResult  # noqa: E402
from keras_playbook.stages import InitialLossResult as InitialLossResult  # noqa: E402
from keras_playbook.stages import LRRangeResult as LRRangeResult  # noqa: E402
from keras_playbook.stages import LRWeightDecayResult as LRWeightDecayResult  # noqa: E402
from keras_playbook.stages import MomentumResult as MomentumResult  # noqa: E402
from keras_playbook.stages import OverfitResult as OverfitResult  # noqa: E402
from keras_playbook.stages import ProbeResult as ProbeResult  # noqa: E402
from keras_playbook.stages import RoundResult as RoundResult  # noqa: E402
from keras_playbook.stages import SeedComparisonResult as SeedComparisonResult  # noqa: E402
from keras_playbook.stages import WeightDecayResult as WeightDecayResult  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "BatchSizeResult",
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
    "SeedComparisonResult",
    "Session",
    "SetupRecord",
    "WeightDecayResult",
    "__version__",
    "diagnose",
]
