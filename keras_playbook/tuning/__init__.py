"""KerasTuner pieces: the Playbook as a HyperModel, its oracles, reading results."""

from keras_playbook.tuning.hypermodel import PlaybookHyperModel as PlaybookHyperModel
from keras_playbook.tuning.hypermodel import PlaybookTuner as PlaybookTuner
from keras_playbook.tuning.hypermodel import apply_l2_penalty as apply_l2_penalty
from keras_playbook.tuning.oracles import CoarseToFineOracle as CoarseToFineOracle
from keras_playbook.tuning.oracles import GridOracle as GridOracle

__all__ = [
    "CoarseToFineOracle",
    "GridOracle",
    "PlaybookHyperModel",
    "PlaybookTuner",
    "apply_l2_penalty",
]
