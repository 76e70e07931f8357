"""KerasTuner's chief/worker mode: a chief and two workers on the loopback address."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from tests.tuning.distributed_search import WEIGHT_DECAYS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_chief_and_two_workers_complete_the_grid(tmp_path):
    port = _free_port()
    tuning, output = tmp_path / "tuning", tmp_path / "output"
    output.mkdir()
    processes = []
    for tuner_id in ("chief", "tuner1", "tuner2"):
        env = {
            **os.environ,
            "KERASTUNER_TUNER_ID": tuner_id,
            "KERASTUNER_ORACLE_IP": "127.0.0.1",
            "KERASTUNER_ORACLE_PORT": str(port),
            "CUDA_VISIBLE_DEVICES": "",
        }
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "tests.tuning.distributed_search", str(tuning), str(output)],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
        if tuner_id == "chief":
            time.sleep(1)  # Workers wait for the chief anyway (gRPC wait_for_ready).
    logs = []
    for process in processes:
        out, _ = process.communicate(timeout=420)
        logs.append(out[-3000:])
        assert process.returncode == 0, "\n".join(logs)
    results = {name: json.loads((output / f"{name}.json").read_text()) for name in ("chief", "tuner1", "tuner2")}
    chief = results["chief"]
    assert chief["role"] == "chief"
    # Every cell ran exactly once, all of them on the workers.
    assert sorted(t["values"]["weight_decay"] for t in chief["trials"]) == sorted(WEIGHT_DECAYS)
    assert all(t["status"] == "COMPLETED" and len(t["history"]["val_loss"]) == 3 for t in chief["trials"])
    ran = {name: {t["trial_id"] for t in results[name]["trials"]} for name in ("tuner1", "tuner2")}
    assert all(results[name]["role"] == "worker" for name in ran)
    assert not ran["tuner1"] & ran["tuner2"]
    assert ran["tuner1"] | ran["tuner2"] == {t["trial_id"] for t in chief["trials"]}
    assert chief["best"]["weight_decay"] in WEIGHT_DECAYS
    # Only the chief's result settles a value; a worker's says where the result is.
    assert "chief" in results["tuner1"]["message"]
    print({name: sorted(ids) for name, ids in ran.items()})
