"""The files a Playbook keeps in its directory, and their removal when nothing refers to them.

A Playbook directory holds the journal (`journal.json`) and what its
records point to: the trained weights of each training stage and the
initial weights of each set-up (`weights/`), the backups of a training
call in progress (`backup/<call key>`, Keras's `BackupAndRestore` plus the
callbacks' state) and KerasTuner's projects (`tuning/`). The journal owns
them: `overwrite=True` removes them with it, and files no record refers to
any more (the weights of a stage that was taken back, a backup of a call
that finished or will never be made again) are removed, so the folder does
not grow without bound over reruns. Nothing else in the directory is
touched.
"""

import os
import shutil

OWNED = ("weights", "backup", "tuning")


def remove_owned(directory, journal_filename):
    """Removes an old journal and everything it owned (`OWNED` folders), for `overwrite=True`.

    Args:
        directory: The Playbook directory.
        journal_filename: The journal's file name in it.

    Returns:
        The paths removed (relative to `directory`), for the message.
    """
    removed = []
    for name in (journal_filename, *OWNED):
        path = os.path.join(directory, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
        else:
            continue
        removed.append(name)
    return removed


def referenced_files(journal):
    """The files under `weights/` the journal's records refer to (relative paths, normalized)."""
    found = set()

    def visit(value):
        if isinstance(value, dict):
            for item in value.values():
                visit(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item)
        elif isinstance(value, str) and value.startswith("weights" + os.sep):
            found.add(os.path.normpath(value))

    for result in journal:
        visit(result.to_dict())
    return found


def backup_folder(directory, call_key):
    """Where the backup of the training call `call_key` is kept: `<directory>/backup/<call_key>`."""
    return os.path.join(directory, "backup", call_key)


def remove_backup(directory, call_key):
    """Removes the backup of a training call (its folder and its curves), once the journal has its record."""
    folder = backup_folder(directory, call_key)
    shutil.rmtree(folder, ignore_errors=True)
    if os.path.exists(folder + ".csv"):
        os.remove(folder + ".csv")


def collect_garbage(directory, journal, backups=True):
    """Removes the weights files no record of `journal` refers to and, with `backups`, every backup.

    Called by the runner when a stage called at the top level has been
    recorded: no training is then in progress, and a backup left by an
    interrupted call could only be resumed by the same call at the same
    point of the journal, which has moved on.

    Returns:
        The paths removed, relative to `directory`.
    """
    removed = []
    keep = referenced_files(journal)
    weights = os.path.join(directory, "weights")
    if os.path.isdir(weights):
        for name in sorted(os.listdir(weights)):
            relative = os.path.join("weights", name)
            if relative not in keep and os.path.isfile(os.path.join(directory, relative)):
                os.remove(os.path.join(directory, relative))
                removed.append(relative)
    backup = os.path.join(directory, "backup")
    if backups and os.path.isdir(backup):
        for name in sorted(os.listdir(backup)):
            path = os.path.join(backup, name)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)
            removed.append(os.path.join("backup", name))
    return removed
