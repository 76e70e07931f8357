"""Two Playbooks on one folder lose nothing: a lock per process, a takeover in the same process."""

import gc
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from keras_playbook import Playbook
from keras_playbook import _lock as lock_module
from tests import helpers

# Every Playbook here draws new initial weights; the journal's are loaded back (and said so).
pytestmark = pytest.mark.filterwarnings("ignore:The model's initial weights differ")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _playbook(digits, directory, **kwargs):
    return Playbook(
        helpers.mlp(),
        (digits["x_train"][:128], digits["y_train"][:128]),
        validation_data=(digits["x_val"][:64], digits["y_val"][:64]),
        loss=helpers.LOGITS_LOSS,
        batch_size=32,
        directory=directory,
        verbose=0,
        **kwargs,
    )


def _kinds(directory):
    return [entry["kind"] for entry in json.loads((directory / "journal.json").read_text())["results"]]


def _files(directory):
    return sorted(
        os.path.relpath(os.path.join(root, name), directory) for root, _, names in os.walk(directory) for name in names
    )


def _lock_file(directory):
    return json.loads((directory / lock_module.LOCK_FILENAME).read_text())


def _write_lock(directory, pid, host, heartbeat):
    directory.mkdir(parents=True, exist_ok=True)
    info = {"pid": pid, "host": host, "token": uuid.uuid4().hex, "started": heartbeat, "heartbeat": heartbeat}
    (directory / lock_module.LOCK_FILENAME).write_text(json.dumps(info))


def _python(code, args_after=(), **kwargs):
    environment = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args_after],
        cwd=ROOT,
        env=environment,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        **kwargs,
    )


# Another process ---------------------------------------------------------------------------------------------------

HOLDER = """
    import sys
    from keras_playbook import Playbook
    from tests import helpers

    digits = helpers.digits_data()
    pb = Playbook(
        helpers.mlp(),
        (digits["x_train"][:128], digits["y_train"][:128]),
        validation_data=(digits["x_val"][:64], digits["y_val"][:64]),
        loss=helpers.LOGITS_LOSS,
        batch_size=32,
        directory=sys.argv[1],
        verbose=0,
    )
    pb.check_initial_loss()
    print("ready", flush=True)
    sys.stdin.read()  # Holds the folder until the test closes stdin.
"""


@pytest.mark.slow
def test_a_playbook_in_another_live_process_is_refused_and_the_folder_untouched(digits, tmp_path):
    holder = _python(HOLDER, args_after=[str(tmp_path)])
    try:
        assert holder.stdout.readline().strip() == "ready"
        journal = (tmp_path / "journal.json").read_bytes()
        listing = _files(tmp_path)
        for overwrite in (False, True):  # overwrite=True does not bypass the refusal.
            with pytest.raises(
                ValueError, match=rf"process {holder.pid} on host '{re.escape(socket.gethostname())}'"
            ) as error:
                _playbook(digits, tmp_path, overwrite=overwrite)
            assert "Wait for that process to end" in str(error.value) and "another `directory`" in str(error.value)
            assert (tmp_path / "journal.json").read_bytes() == journal
            assert _files(tmp_path) == listing
            assert _lock_file(tmp_path)["pid"] == holder.pid
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert holder.returncode == 0
    assert not (tmp_path / lock_module.LOCK_FILENAME).exists()  # Released when that process exited.
    pb = _playbook(digits, tmp_path)  # Free now: carries the other process's journal on.
    assert [result.kind for result in pb.journal] == ["setup", "check_initial_loss"]
    assert _lock_file(tmp_path)["pid"] == os.getpid()


def test_a_lock_of_a_live_process_refuses_and_its_end_frees_the_folder(digits, tmp_path):
    sleeper = _python("import sys; sys.stdin.read()")
    try:
        _write_lock(tmp_path, sleeper.pid, socket.gethostname(), time.time() - 3600)  # A live pid: the age is moot.
        with pytest.raises(ValueError, match=rf"process {sleeper.pid} on host"):
            _playbook(digits, tmp_path)
        assert sorted(os.listdir(tmp_path)) == [lock_module.LOCK_FILENAME]
    finally:
        sleeper.stdin.close()
        sleeper.wait(timeout=30)
    pb = _playbook(digits, tmp_path)  # Its process ended: the lock is stale and taken over.
    assert _lock_file(tmp_path)["pid"] == os.getpid()
    pb.check_initial_loss()
    assert _kinds(tmp_path) == ["setup", "check_initial_loss"]


# The same process ------------------------------------------------------------------------------------------------


def test_a_second_playbook_in_the_same_process_takes_over_and_keeps_the_first_ones_records(digits, tmp_path):
    first = _playbook(digits, tmp_path)
    first.check_initial_loss()
    token = _lock_file(tmp_path)["token"]
    second = _playbook(digits, tmp_path)  # A notebook running its constructor cell again.
    assert [result.kind for result in second.journal] == ["setup", "check_initial_loss"]
    assert _lock_file(tmp_path)["token"] == token  # The process's lock, kept.
    for call in (lambda: first.fit(epochs=1), lambda: first.run(1, plan=["check_initial_loss"])):
        with pytest.raises(RuntimeError, match=r"another Playbook made in this process.*Use the newer Playbook"):
            call()
    assert _kinds(tmp_path) == ["setup", "check_initial_loss"]  # The refused calls wrote nothing.
    second.fit(epochs=1)
    assert _kinds(tmp_path) == ["setup", "check_initial_loss", "fit"]
    weights = [result.call["weights"] for result in second.journal if result.kind == "fit"]
    assert weights and (tmp_path / weights[0]).exists()
    third = _playbook(digits, tmp_path)
    with pytest.raises(RuntimeError, match="no longer writes"):
        second.check_initial_loss()
    third.check_initial_loss()
    assert _kinds(tmp_path) == ["setup", "check_initial_loss", "fit", "check_initial_loss"]


def test_a_failed_constructor_takes_nothing_over(digits, tmp_path):
    first = _playbook(digits, tmp_path)
    with pytest.raises(ValueError, match="predicts 3 classes"):  # Refused after the lease was made: nothing taken.
        Playbook(
            helpers.mlp(num_classes=3),
            (digits["x_train"], digits["y_train"]),
            loss=helpers.LOGITS_LOSS,
            directory=tmp_path,
            verbose=0,
        )
    first.check_initial_loss()  # Still the folder's Playbook.
    assert _kinds(tmp_path) == ["setup", "check_initial_loss"]


def test_the_heartbeat_is_refreshed_and_a_deleted_lock_taken_again(digits, tmp_path, monkeypatch):
    pb = _playbook(digits, tmp_path)
    before = _lock_file(tmp_path)
    monkeypatch.setattr(lock_module, "HEARTBEAT_EVERY", 0.0)
    time.sleep(0.01)
    pb.check_initial_loss()
    after = _lock_file(tmp_path)
    assert after["token"] == before["token"] and after["heartbeat"] > before["heartbeat"]
    (tmp_path / lock_module.LOCK_FILENAME).unlink()
    pb.check_initial_loss()
    assert _lock_file(tmp_path)["token"] == before["token"]


def test_a_playbook_whose_lock_another_process_took_refuses_stages(digits, tmp_path):
    pb = _playbook(digits, tmp_path)
    _write_lock(tmp_path, 4242, "another-host.example", time.time())  # Judged ours stale and took it.
    with pytest.raises(RuntimeError, match=r"process 4242 on host 'another-host.example'"):
        pb.check_initial_loss()
    assert _kinds(tmp_path) == ["setup"]


def test_the_lock_goes_with_its_playbook(digits, tmp_path):
    pb = _playbook(digits, tmp_path)
    assert (tmp_path / lock_module.LOCK_FILENAME).exists()
    del pb
    gc.collect()
    assert not (tmp_path / lock_module.LOCK_FILENAME).exists()


# Stale locks -------------------------------------------------------------------------------------------------------


def _ended_pid(reaped=True):
    """The id of a process that has ended: waited for, or not yet (a zombie: it still answers `os.kill(pid, 0)`)."""
    process = _python("pass")
    if reaped:
        process.communicate(timeout=30)
    else:
        os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)  # Ended, left unreaped.
        _ZOMBIES.append(process)
    return process.pid


_ZOMBIES = []  # Reaped when their test ends.


@pytest.fixture(autouse=True)
def _reap():
    yield
    while _ZOMBIES:
        _ZOMBIES.pop().wait(timeout=30)


@pytest.mark.parametrize(
    "pid, host, age",
    [
        ("ended", "this", 0.0),  # Its process has ended on this host: the heartbeat does not matter.
        pytest.param(
            "zombie",
            "this",
            0.0,
            marks=pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="zombies are told apart on Linux"),
        ),
        (4242, "another-host.example", lock_module.STALE_AFTER + 60),  # Another host, a heartbeat too old.
    ],
    ids=["ended-pid", "unreaped-pid", "old-foreign-heartbeat"],
)
def test_a_stale_lock_is_taken_over(digits, tmp_path, pid, host, age):
    first = _playbook(digits, tmp_path / "run")
    first.check_initial_loss()
    del first
    gc.collect()  # Its lock goes (else the stale one written next replaces it: the outcome is the same).
    pid = _ended_pid(reaped=pid == "ended") if pid in ("ended", "zombie") else pid
    _write_lock(tmp_path / "run", pid, socket.gethostname() if host == "this" else host, time.time() - age)
    pb = _playbook(digits, tmp_path / "run")
    assert _lock_file(tmp_path / "run")["pid"] == os.getpid()
    pb.fit(epochs=1)
    assert _kinds(tmp_path / "run") == ["setup", "check_initial_loss", "fit"]


def test_a_foreign_lock_with_a_fresh_heartbeat_is_refused(digits, tmp_path):
    _write_lock(tmp_path, 4242, "another-host.example", time.time() - 30)
    with pytest.raises(ValueError, match=r"process 4242 on host 'another-host.example'.*heartbeat is 30 s old"):
        _playbook(digits, tmp_path)
    assert sorted(os.listdir(tmp_path)) == [lock_module.LOCK_FILENAME]
    assert _lock_file(tmp_path)["pid"] == 4242


def test_an_unreadable_lock_is_refused_until_it_is_old(digits, tmp_path):
    path = tmp_path / lock_module.LOCK_FILENAME
    path.write_text("{half a lock")
    with pytest.raises(ValueError, match=r"cannot be read.*delete .*\.lock"):
        _playbook(digits, tmp_path)
    old = time.time() - lock_module.STALE_AFTER - 60
    os.utime(path, (old, old))
    _playbook(digits, tmp_path)
    assert _lock_file(tmp_path)["pid"] == os.getpid()


RACER = """
    import importlib.util, os, sys
    spec = importlib.util.spec_from_file_location("lock", sys.argv[1])  # The module alone: no TensorFlow to import.
    lock = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lock)
    sys.stdin.readline()  # All start together.
    try:
        lock.acquire(os.path.realpath(sys.argv[2]), sys.argv[2])
        print("held", flush=True)
    except ValueError as error:
        print("refused", error, flush=True)
    sys.stdin.read()
"""


@pytest.mark.parametrize("stale", [False, True], ids=["free", "stale"])
def test_processes_racing_for_a_folder_one_takes_it(tmp_path, stale):
    if stale:
        _write_lock(tmp_path, _ended_pid(), socket.gethostname(), time.time())
    racers = [_python(RACER, args_after=[lock_module.__file__, str(tmp_path)]) for _ in range(6)]
    try:
        for racer in racers:
            racer.stdin.write("go\n")
            racer.stdin.flush()
        answers = {racer.pid: racer.stdout.readline() for racer in racers}
        holder = _lock_file(tmp_path)["pid"]
    finally:
        for racer in racers:
            racer.stdin.close()
            racer.wait(timeout=30)
    held = [pid for pid, answer in answers.items() if answer.startswith("held")]
    assert held == [holder], answers
    assert not (tmp_path / lock_module.LOCK_FILENAME).exists()  # Released as its process exited.
    refused = [answer for answer in answers.values() if answer.startswith("refused")]
    assert len(refused) == 5 and all(f"process {held[0]} on host" in answer for answer in refused)


# A KerasTuner worker ---------------------------------------------------------------------------------------------


def test_a_kerastuner_worker_takes_no_lock_and_never_writes_the_journal(digits, tmp_path, monkeypatch):
    chief = _playbook(digits, tmp_path / "shared")
    chief.check_initial_loss()
    del chief
    gc.collect()
    _write_lock(tmp_path / "shared", 4242, "chief-host.example", time.time())  # The chief, alive on its host.
    journal = (tmp_path / "shared" / "journal.json").read_bytes()
    listing = _files(tmp_path / "shared")
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", "8000")
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "tuner0")
    worker = _playbook(digits, tmp_path / "shared")  # Not refused; reads the chief's journal.
    assert [result.kind for result in worker.journal] == ["setup", "check_initial_loss"]
    worker.check_initial_loss()
    worker.fit(epochs=1)
    assert [result.kind for result in worker.journal][-2:] == ["check_initial_loss", "fit"]
    assert (tmp_path / "shared" / "journal.json").read_bytes() == journal
    assert _files(tmp_path / "shared") == listing  # No lock, no weights, no backup either.
    fresh = _playbook(digits, tmp_path / "fresh")
    fresh.fit(epochs=1)
    assert not (tmp_path / "fresh").exists()
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", "8000")
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "chief")
    _playbook(digits, tmp_path / "chief")
    assert (tmp_path / "chief" / lock_module.LOCK_FILENAME).exists()
