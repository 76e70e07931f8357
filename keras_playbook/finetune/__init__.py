"""Fine-tuning pretrained backbones: layer groups, freezing, discriminative learning rates (Howard & Ruder 2018).

When fine-tuning, start with a lower learning rate than from
scratch, since the model has been trained once and needs small changes; and
change the deeper layers more than the first ones: freeze the early layers,
or give them a lower learning rate than the later ones.

- `layer_groups(model, n)`: the model's weighted layers in groups, earliest
  first, the head last (by depth, by name prefixes, or explicit lists).
- `freeze`, `unfreeze`, `freeze_to`: trainability by group, nested models
  included; frozen BatchNormalization layers run in inference mode (Keras's
  convention for `trainable = False`) and stay so while other groups thaw.
- `discriminative(optimizer, groups, multipliers)`: one optimizer whose step
  for each group's weights is scaled by that group's multiplier, with one
  base `learning_rate` that schedules and callbacks read and set.
- `GradualUnfreezing`: thaws one group at a time from the top (ULMFiT).
- `build_model` and `load_backbone`: a classifier on a Keras Applications
  backbone, for `Playbook.fine_tune` (the two phases, head first).

These work on any Keras model, without a Playbook.

References:
    Howard & Ruder 2018, "Universal Language Model Fine-tuning for Text
    Classification", arXiv:1801.06146 (discriminative rates, factor 2.6,
    gradual unfreezing).
"""

from keras_playbook.finetune._discriminative import ULMFIT_FACTOR as ULMFIT_FACTOR
from keras_playbook.finetune._discriminative import DiscriminativeOptimizer as DiscriminativeOptimizer
from keras_playbook.finetune._discriminative import discriminative as discriminative
from keras_playbook.finetune._discriminative import geometric_multipliers as geometric_multipliers
from keras_playbook.finetune._discriminative import learning_rates as learning_rates
from keras_playbook.finetune._discriminative import trainable_multipliers as trainable_multipliers
from keras_playbook.finetune._groups import freeze as freeze
from keras_playbook.finetune._groups import freeze_to as freeze_to
from keras_playbook.finetune._groups import layer_groups as layer_groups
from keras_playbook.finetune._groups import prepare_optimizer as prepare_optimizer
from keras_playbook.finetune._groups import restore_trainable as restore_trainable
from keras_playbook.finetune._groups import trainable_state as trainable_state
from keras_playbook.finetune._groups import unfreeze as unfreeze
from keras_playbook.finetune._groups import weighted_layers as weighted_layers
from keras_playbook.finetune._stage import FineTuneResult as FineTuneResult
from keras_playbook.finetune._stage import build_model as build_model
from keras_playbook.finetune._stage import load_backbone as load_backbone
from keras_playbook.finetune._unfreezing import GradualUnfreezing as GradualUnfreezing

__all__ = [
    "DiscriminativeOptimizer",
    "FineTuneResult",
    "GradualUnfreezing",
    "ULMFIT_FACTOR",
    "build_model",
    "discriminative",
    "freeze",
    "freeze_to",
    "geometric_multipliers",
    "layer_groups",
    "learning_rates",
    "load_backbone",
    "prepare_optimizer",
    "restore_trainable",
    "trainable_multipliers",
    "trainable_state",
    "unfreeze",
    "weighted_layers",
]
