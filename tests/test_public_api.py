"""The public API is what `keras_playbook/__init__.py` exports, once; the rest is private by name."""

import pkgutil

import keras_playbook
from keras_playbook import callbacks, finetune, tuning

EXPORTED = [
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


def test_exported_names_are_pinned():
    assert sorted(keras_playbook.__all__) == sorted(EXPORTED)
    for name in EXPORTED:
        assert hasattr(keras_playbook, name), name


def test_every_result_class_is_a_result():
    for name in EXPORTED:
        value = getattr(keras_playbook, name)
        if name.endswith(("Result", "Record")):
            assert issubclass(value, keras_playbook.Result), name


def test_modules_outside_the_public_subpackages_are_private():
    public = {"callbacks", "finetune", "tuning"}
    for module in pkgutil.iter_modules(keras_playbook.__path__):
        assert module.name in public or module.name.startswith("_"), module.name


def test_subpackages_export_what_they_list():
    for package in (callbacks, finetune, tuning):
        for name in package.__all__:
            assert hasattr(package, name), f"{package.__name__}.{name}"
