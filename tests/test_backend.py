"""Import guard: missing TensorFlow and a foreign KERAS_BACKEND fail clearly."""

import os
import subprocess
import sys


def _import_in_subprocess(code, **environment):
    env = {**os.environ, **environment}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_import_without_tensorflow_names_the_extra():
    completed = _import_in_subprocess("import sys; sys.modules['tensorflow'] = None; import keras_playbook")
    assert completed.returncode != 0
    assert "ImportError" in completed.stderr
    assert "keras-playbook[cpu]" in completed.stderr
    assert "keras-playbook[gpu]" in completed.stderr


def test_import_with_another_keras_backend_raises_value_error():
    completed = _import_in_subprocess("import keras_playbook", KERAS_BACKEND="jax")
    assert completed.returncode != 0
    assert "ValueError" in completed.stderr
    assert "KERAS_BACKEND='jax'" in completed.stderr


def test_import_with_unknown_keras_backend_raises_value_error():
    completed = _import_in_subprocess("import keras_playbook", KERAS_BACKEND="notabackend")
    assert completed.returncode != 0
    assert "ValueError" in completed.stderr
    assert "KERAS_BACKEND='notabackend'" in completed.stderr


def test_import_with_tensorflow_backend_works():
    completed = _import_in_subprocess(
        "import keras_playbook; print(keras_playbook.__version__)", KERAS_BACKEND="tensorflow"
    )
    assert completed.returncode == 0, completed.stderr
