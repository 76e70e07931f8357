"""The search stages' arguments, checked before anything runs, and what a call sets itself.

Each search stage (`grid_weight_decay`, `tune_lr_wd`, `compare_seeds`,
`run_round`) registers its check here as `StageSpec.check`: `run()` checks
every call of a plan before the first stage runs (a negative weight decay in
the grid is refused before the range test, not after it), and a stage called
by hand is checked before it changes anything. The checks read the arguments
and the model as compiled, never the data, the journal or a trial; what
depends on those (validation data, a settled learning rate) is checked by the
stage itself, still before any trial.

References:
    Godbole et al. 2023, Deep Learning Tuning Playbook (rounds of
    experiments, seeds, epochs not tuned).
"""

import math

from keras_playbook import _validation as validation
from keras_playbook._runner import SEARCHED
from keras_playbook.tuning.hypermodel import WEIGHT_DECAY_MODES


def check_grid_weight_decay(arguments, session):
    """`grid_weight_decay`'s arguments (see `weight_decay_search.weight_decay_grid`)."""
    from keras_playbook._stages import search

    caller = "grid_weight_decay"
    _check_shared(arguments, session, caller, ("epochs",))
    search.check_weight_decays(arguments["values"], caller)
    _check_confirm_seeds(arguments["confirm_seeds"], caller)


def check_tune_lr_wd(arguments, session):
    """`tune_lr_wd`'s arguments (see `lr_wd_search.lr_wd_grid`)."""
    from keras_playbook._stages import search

    caller = "tune_lr_wd"
    _check_shared(arguments, session, caller, ("coarse_epochs", "fine_epochs"))
    validation.check_int(arguments["max_extensions"], "max_extensions", caller, minimum=0)
    _check_confirm_seeds(arguments["confirm_seeds"], caller)
    validation.check_number(arguments["learning_rate"], "learning_rate", caller, allow_none=True)
    if arguments["learning_rates"] is not None:
        validation.check_numbers(arguments["learning_rates"], "learning_rates", caller)
    search.check_weight_decays(arguments["weight_decays"], caller, "weight_decays")


def check_compare_seeds(arguments, session):
    """`compare_seeds`'s arguments (see `experiments.seed_comparison`)."""
    from keras_playbook._stages import experiments

    caller = "compare_seeds"
    _check_shared(arguments, session, caller, ("epochs",))
    experiments.check_seeds(arguments["seeds"], caller)
    experiments.check_alpha(arguments["alpha"], caller)
    experiments.check_configs(arguments["configs"], session, caller)


def check_run_round(arguments, session):
    """`run_round`'s arguments (see `rounds.experiment_round`)."""
    from keras_playbook._stages import experiments, rounds

    caller = "run_round"
    _check_shared(arguments, session, caller, ("epochs",))
    scientific = arguments["scientific"]
    nuisance = {} if arguments["nuisance"] is None else arguments["nuisance"]
    fixed = {} if arguments["fixed"] is None else arguments["fixed"]
    max_trials = arguments["max_trials"]
    rounds._check_round_inputs(
        session, arguments["goal"], scientific, nuisance, fixed, max_trials, arguments["oracle"], caller
    )
    if arguments["seeds"] is not None:
        experiments.check_seeds(arguments["seeds"], caller)
    experiments.check_alpha(arguments["alpha"], caller)
    combinations = math.prod(len(values) for values in scientific.values())
    if max_trials < combinations:
        raise ValueError(
            f"{caller}: max_trials={max_trials} is fewer than the {combinations} "
            "scientific values: each needs at least one trial. Raise `max_trials`."
        )


def compare_seeds_given(arguments):
    """The names every configuration of `compare_seeds` sets: searched. One a configuration leaves out is read.

    A configuration that leaves a name out trains at the value in force, so
    that value is read from the journal (and refused when stale) like any
    other the stage requires.
    """
    configs = arguments["configs"]
    if not isinstance(configs, dict) or not configs:
        return {}
    names = [set(config) if isinstance(config, dict) else set() for config in configs.values()]
    return dict.fromkeys(set.intersection(*names), SEARCHED)


def _check_shared(arguments, session, caller, epochs):
    """What every search checks: its epochs, the weight-decay mode, the objective, the callbacks."""
    from keras_playbook._stages import search

    for name in epochs:
        validation.check_int(arguments[name], name, caller)
    mode = arguments["weight_decay_mode"]
    if mode not in WEIGHT_DECAY_MODES:
        raise ValueError(
            f"{caller}: argument `weight_decay_mode` must be one of "
            f"{WEIGHT_DECAY_MODES}. Received: weight_decay_mode={mode!r}."
        )
    search.make_objective(arguments["objective"], session, caller)
    callbacks = arguments["callbacks"]
    if callbacks is not None and not isinstance(callbacks, (list, tuple)):
        raise TypeError(f"{caller}: `callbacks` must be a list of callbacks. Received: {callbacks!r}.")


def _check_confirm_seeds(confirm_seeds, caller):
    if confirm_seeds != 0:
        validation.check_int(confirm_seeds, "confirm_seeds", caller, minimum=2)
