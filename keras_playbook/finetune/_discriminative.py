"""Discriminative learning rates (Howard & Ruder 2018, ULMFiT): one optimizer, a multiplier per layer group."""

import keras

from keras_playbook import _validation as validation
from keras_playbook._session import read_value
from keras_playbook.finetune._groups import _layers_in, _optimizer_of, _trainable_candidates

ULMFIT_FACTOR = 2.6  # Each earlier group's rate is the next one's divided by this (ULMFiT).


# Discriminative learning rates ----------------------------------------------


@keras.saving.register_keras_serializable(package="keras_playbook")
class DiscriminativeOptimizer(keras.optimizers.Optimizer):
    """An optimizer whose step for each weight is scaled by its group's multiplier.

    Wraps another optimizer (`inner_optimizer`) and passes it, for each
    variable, the base learning rate times that variable's multiplier: the
    *step* scales, not the gradient, so the scaling is exact for SGD, Adam,
    RMSprop and the rest (for Adam, scaling the gradient would cancel out).
    There is one base `learning_rate`, the inner optimizer's, which
    schedules and callbacks (`OneCycle`, `StepDownLR`, `ReduceLROnPlateau`)
    read and set as usual. Variables without a multiplier get 1.
    Decoupled weight decay stays at the base rate. Saved and loaded with the
    model (`model.save`, `keras.models.load_model`).

    Multipliers are keyed by the end of the variable's path, layer name and
    variable name ("block1_conv/kernel"), with more of the path only where
    that is ambiguous: a variable's path depends on the name scope it was
    built in (a loaded model's paths lack the outer model's name), its
    layer's name does not.

    Args:
        inner_optimizer: The optimizer doing the work.
        multipliers: Dict of path ending (e.g. "dense/kernel") -> multiplier.
        name: Optional name.
        **kwargs: Arguments of the inner optimizer to change (a copy of it
            is made), e.g. `learning_rate=0.1`.

    Example:

    ```python
    optimizer = discriminative(keras.optimizers.Adam(1e-3), groups, multipliers=[0.01, 0.1, 1.0])
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    ```
    """

    def __init__(self, inner_optimizer, multipliers, name=None, **kwargs):
        if kwargs:  # The inner optimizer's arguments (a config updated as for any optimizer).
            config = inner_optimizer.get_config()
            unknown = sorted(set(kwargs) - set(config))
            if unknown:
                raise ValueError(
                    f"DiscriminativeOptimizer: {type(inner_optimizer).__name__} has no argument(s) {unknown}."
                )
            if any(config[key] != value for key, value in kwargs.items()):
                config.update(kwargs)
                inner_optimizer = type(inner_optimizer).from_config(config)
        for path, value in multipliers.items():
            validation.check_number(value, f"multipliers[{path!r}]")
        super().__init__(learning_rate=0.0, name=name)
        self.inner_optimizer = inner_optimizer
        self.multipliers = {str(path): float(value) for path, value in multipliers.items()}
        self._scales = []
        step = inner_optimizer.update_step

        def scaled_update_step(gradient, variable, learning_rate):
            return step(gradient, variable, learning_rate * self._scale_of(variable))

        # The inner optimizer calls `self.update_step(gradient, variable, learning_rate)` per variable.
        object.__setattr__(inner_optimizer, "update_step", scaled_update_step)

    def _scale_of(self, variable):
        return self._scales[self.inner_optimizer._get_variable_index(variable)]

    def build(self, var_list):
        self.inner_optimizer.build(var_list)
        self._scales = [self.multiplier_of(v) for v in self.inner_optimizer._trainable_variables]
        self.built = True

    @property
    def variables(self):
        return self.inner_optimizer.variables

    def apply(self, grads, trainable_variables=None):
        if not self.built:
            self.build(trainable_variables)
        return self.inner_optimizer.apply(grads, trainable_variables)

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.inner_optimizer.learning_rate = learning_rate

    @property
    def iterations(self):
        return self.inner_optimizer.iterations

    def finalize_variable_values(self, var_list):
        self.inner_optimizer.finalize_variable_values(var_list)

    def multiplier_of(self, variable):
        """The multiplier of `variable`: that of the longest key its path ends with (1 when none)."""
        path = variable.path
        matches = [key for key in self.multipliers if path == key or path.endswith("/" + key)]
        return self.multipliers[max(matches, key=len)] if matches else 1.0

    def get_config(self):
        """The inner optimizer's arguments, plus the inner optimizer itself and the multipliers.

        The arguments are repeated at the top so that code reading an
        optimizer's config (`config["weight_decay"]`) or making a changed copy
        (`type(opt).from_config({**config, "learning_rate": 0.1})`) works.
        """
        arguments = self.inner_optimizer.get_config()
        arguments.pop("name", None)
        return {
            **arguments,
            "name": self.name,
            "inner_optimizer": keras.saving.serialize_keras_object(self.inner_optimizer),
            "multipliers": dict(self.multipliers),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        inner = keras.saving.deserialize_keras_object(config.pop("inner_optimizer"), custom_objects=custom_objects)
        multipliers = config.pop("multipliers")
        return cls(inner, multipliers, **config)


def geometric_multipliers(num_groups, factor=ULMFIT_FACTOR):
    """`[factor**-(n-1), ..., 1/factor, 1]`: each earlier group's rate is the next one's over `factor` (ULMFiT)."""
    validation.check_number(factor, "factor", within=">= 1")
    return [float(factor) ** -(num_groups - 1 - index) for index in range(num_groups)]


def discriminative(optimizer, groups, multipliers=None, factor=ULMFIT_FACTOR):
    """Wraps `optimizer` so each group's step is scaled by its multiplier (Howard & Ruder 2018, ULMFiT).

    Args:
        optimizer: A Keras optimizer (its learning rate is the base rate:
            the last group's, with the default multipliers).
        groups: Layer groups, earliest first (`layer_groups`).
        multipliers: One number > 0 per group; default: geometric, each
            earlier group's rate the next one's divided by `factor`.
        factor: The geometric factor (2.6, as in ULMFiT).

    Returns:
        A `DiscriminativeOptimizer`; compile the model with it.

    Raises:
        ValueError: for multipliers whose number differs from the number of
            groups, or that are not all > 0.

    Example:

    ```python
    groups = layer_groups(model, n=3)
    model.compile(optimizer=discriminative(keras.optimizers.Adam(1e-4), groups),
                  loss="sparse_categorical_crossentropy")
    ```
    """
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise ValueError(f"discriminative: expected a Keras optimizer. Received: {optimizer!r}.")
    if not isinstance(groups, (list, tuple)) or not groups:
        raise ValueError("discriminative: `groups` must be a non-empty list of layer groups (see layer_groups).")
    if multipliers is None:
        multipliers = geometric_multipliers(len(groups), factor)
    if not isinstance(multipliers, (list, tuple)) or len(multipliers) != len(groups):
        raise ValueError(
            f"discriminative: one multiplier per group: {len(groups)} groups, "
            f"{len(multipliers) if isinstance(multipliers, (list, tuple)) else multipliers!r} multipliers."
        )
    for index, value in enumerate(multipliers):
        validation.check_number(value, f"multipliers[{index}]", "discriminative")
    assigned = [
        (variable, float(multiplier))
        for group, multiplier in zip(groups, multipliers)
        for layer in _layers_in(group)
        for variable in _trainable_candidates(layer)
    ]
    return DiscriminativeOptimizer(
        optimizer, dict(zip(_path_endings([v for v, _ in assigned]), [m for _, m in assigned]))
    )


def _path_endings(variables):
    """The shortest path endings (at least layer/variable) that tell `variables` apart."""
    parts = [variable.path.split("/") for variable in variables]
    endings = []
    for index, part in enumerate(parts):
        length = min(2, len(part))
        while length < len(part) and any(
            other[-length:] == part[-length:] for j, other in enumerate(parts) if j != index
        ):
            length += 1
        endings.append("/".join(part[-length:]))
    return endings


def trainable_multipliers(model):
    """Per trainable variable path, the multiplier its step gets (1 without a DiscriminativeOptimizer)."""
    optimizer = _optimizer_of(model)
    scale = optimizer.multiplier_of if isinstance(optimizer, DiscriminativeOptimizer) else (lambda variable: 1.0)
    return {variable.path: scale(variable) for variable in model.trainable_variables}


def learning_rates(model):
    """Per trainable variable path, the learning rate it trains at now: base rate x multiplier."""
    optimizer = _optimizer_of(model)
    base = float(read_value(optimizer.learning_rate))
    return {path: base * multiplier for path, multiplier in trainable_multipliers(model).items()}
