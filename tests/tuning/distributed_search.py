"""One process of a distributed weight-decay grid (run by test_distributed.py).

KerasTuner's chief/worker mode: the environment gives this process its role
(`KERASTUNER_TUNER_ID` "chief" or a worker's id, `KERASTUNER_ORACLE_IP`,
`KERASTUNER_ORACLE_PORT`); every process runs the same script. Writes its
result as JSON to `<output>/<tuner id>.json`.

Usage: python -m tests.tuning.distributed_search TUNING_DIRECTORY OUTPUT_DIRECTORY
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from keras_playbook import Playbook  # noqa: E402
from tests import helpers  # noqa: E402

WEIGHT_DECAYS = [0.0, 1e-5, 1e-4, 1e-3, 1e-2, 3e-2]


def main(directory, output):
    keras.utils.set_random_seed(0)
    digits = helpers.digits_data()
    pb = Playbook(
        helpers.mlp(),
        (digits["x_train"], digits["y_train"]),
        validation_data=(digits["x_val"], digits["y_val"]),
        loss=helpers.LOGITS_LOSS,
        metrics=["accuracy"],
        batch_size=32,
        verbose=0,
    )
    result = pb.grid_weight_decay(values=WEIGHT_DECAYS, epochs=3, directory=directory)
    path = os.path.join(output, os.environ["KERASTUNER_TUNER_ID"] + ".json")
    with open(path, "w") as file:
        json.dump(result.to_dict(), file)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
