"""Checkpoints and run folders: what training writes, and how it is read back.

A checkpoint is a ``torch.save`` file of a dict of tensors, numbers and
strings, read back with ``weights_only=True``, so that loading one never runs
code. Every checkpoint holds ``"format"`` (:data:`CHECKPOINT_FORMAT`),
``"model_config"`` (:meth:`DMMConfig.to_dict`), ``"model"`` (the weights) and
``"versions"``; there are two kinds:

- ``checkpoint.pt``: the whole training state, enough for ``--resume`` to
  continue exactly (the keys of :data:`TRAINING_STATE` besides the above);
- ``best.pt``: the weights with the best validation bound, their
  ``"epoch"``, ``"valid_bound"`` and ``"data"``: the file to ship and to
  evaluate (:func:`load_model`).

A run folder (the ``--out`` of :mod:`dmm_helpers.train`) holds these two,
``log.jsonl`` (one JSON record per evaluation) and ``command.txt`` (the
command and the versions); :class:`RunFolder` reads and writes them. Every
file is written atomically (:func:`dmm_helpers.checks.atomic_write`), except
log records, which are appended whole or not at all
(:func:`dmm_helpers.checks.append_text`): a record torn by a crash is dropped
on resume. A run holds the folder's lock (``.lock``, :meth:`RunFolder.lock`)
while it writes, so a second run on the same folder is refused rather than
mixed with the first.

Reading is as careful: a file that is not a checkpoint of this project
(empty, truncated, random bytes, another zip or pickle, a pickle that would
have to run code to load) is a :class:`CheckpointError` that names the file
and the reason, and so are weights that are not finite and checkpoints of
another format or model.

A file too large for the repository (over :data:`PART_BYTES`; a model of the
authors' sizes is about 14 MB) is shipped in parts, ``model.pt.001``,
``model.pt.002``, ...: :func:`split_into_parts` cuts it, and
:func:`load_checkpoint` reads ``model.pt`` from its parts when the whole file
is absent, so every command takes the same path either way.
"""

from __future__ import annotations

import glob
import io
import json
import os
import pickle
import re
import warnings
import weakref
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyro
import torch

from dmm_helpers import __version__
from dmm_helpers.checks import append_text, write_error, write_text, write_with
from dmm_helpers.dmm import DMM, DMMConfig

try:
    import fcntl
except ImportError:  # Windows: runs are not locked there
    fcntl = None

CHECKPOINT_FORMAT = 1

# Where a run stands: the counters a Trainer keeps and checkpoint.pt stores.
RUN_POSITION = (
    "epoch",
    "batch_in_epoch",
    "step",
    "skipped_steps",
    "elapsed",
    "best_valid",
)

# What --resume needs besides the weights; best.pt, for one, holds only the weights.
TRAINING_STATE = frozenset({"train_config", "optimizer", "rng", *RUN_POSITION})


# The largest file the repository keeps whole (its house rule is 10 MiB a file).
PART_BYTES = 8 * 2**20


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: corrupt, truncated, or for another model."""


class RunFolderError(OSError):
    """A run folder that cannot be used: a file, not writable, or in use."""


def versions() -> dict[str, str]:
    """The versions that produced a checkpoint, stored in it for the record."""
    return {
        "torch": str(torch.__version__),
        "pyro": str(pyro.__version__),
        "dmm_helpers": __version__,
    }


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """``torch.save`` ``state`` to ``path`` atomically: never a partial file.

    A failed write (a full disk, say) is a
    :class:`~dmm_helpers.checks.WriteError` naming ``path``, whose previous
    version is intact.
    """
    try:
        write_with(path, lambda file: torch.save(state, file))
    except RuntimeError as error:
        # torch.save reports a failed write of its file as a RuntimeError
        # raised while handling the OSError.
        if isinstance(error.__context__, OSError):
            raise write_error(path, error.__context__) from error
        raise


def split_into_parts(name: str, data: bytes) -> dict[str, bytes]:
    """``{name: data}``, or ``data`` cut into ``name.001``, ``name.002``, ...

    A file over :data:`PART_BYTES` is cut into as few parts of at most that
    size as hold it; :func:`load_checkpoint` joins them again.
    """
    if len(data) <= PART_BYTES:
        return {name: data}
    return {
        f"{name}.{number:03d}": data[start : start + PART_BYTES]
        for number, start in enumerate(range(0, len(data), PART_BYTES), start=1)
    }


def numbered_parts(path: str | os.PathLike) -> dict[int, Path]:
    """Every ``path.NNN`` beside ``path``, by its number, gaps and all."""
    path = Path(path)
    if not path.parent.is_dir():
        return {}
    pattern = f"{glob.escape(path.name)}.[0-9][0-9][0-9]"
    return {int(part.suffix[1:]): part for part in path.parent.glob(pattern)}


def parts_of(path: str | os.PathLike) -> list[Path]:
    """The parts ``path.001``, ``path.002``, ... of a file stored in parts, in order.

    Empty when there are none. Raises :class:`CheckpointError` when their
    numbers do not run 1, 2, ... without a gap (a part is missing).
    """
    path = Path(path)
    found = numbered_parts(path)
    missing = sorted(set(range(1, max(found, default=0) + 1)) - set(found))
    if missing:
        raise CheckpointError(
            f"{path} is stored in {max(found)} parts, but part "
            f"{', '.join(f'{path.name}.{n:03d}' for n in missing)} is missing"
        )
    return [found[number] for number in sorted(found)]


def _whole(path: Path) -> bytes:
    """The bytes of ``path``, or of its parts joined when it is stored in parts."""
    if path.is_file():
        return path.read_bytes()
    return b"".join(part.read_bytes() for part in parts_of(path))


def _unreadable(path: Path, error: BaseException) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, in this project's words.

    Never torch's own text, which suggests loading with ``weights_only=False``:
    that runs whatever code the file holds.
    """
    if isinstance(error, pickle.UnpicklingError):
        code = re.search(r"GLOBAL ([\w.]+)", str(error))
        if code:
            return (
                f"it holds Python objects that only running code ({code[1]}) could "
                "rebuild, and a checkpoint is loaded without running any; refused"
            )
    data = _whole(path)
    if zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            if not any(name.endswith("data.pkl") for name in archive.namelist()):
                return "it is a zip archive, but not one written by torch.save"
        return "its contents are corrupt"
    if data.startswith(b"PK"):
        return "it is truncated or damaged (an incomplete zip archive)"
    return (
        "it is not a file written by torch.save (random bytes, a plain pickle "
        "or another format?)"
    )


def load_checkpoint(
    path: str | os.PathLike, map_location: Any = "cpu"
) -> dict[str, Any]:
    """Read a checkpoint (``weights_only``: no code is unpickled).

    ``path`` may be stored in parts (:func:`split_into_parts`): it is read
    from them when the whole file is absent. Raises :class:`CheckpointError`,
    naming the file and the reason, for a missing, empty, corrupt or truncated
    file, one of something else, one of another format, a missing part, and
    a file that is there both whole and in parts.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    parts = parts_of(path)
    if path.is_file() and parts:
        raise CheckpointError(
            f"{path} is there both whole and in parts ({parts[0].name}, ...): "
            "one of them is stale; remove it"
        )
    if not path.is_file() and not parts:
        raise CheckpointError(f"no checkpoint at {path}")
    if sum(source.stat().st_size for source in parts or [path]) == 0:
        raise CheckpointError(f"{path} is not a readable checkpoint: it is empty")
    try:
        # A file in parts is read from its joined bytes, the same ones.
        source = (
            io.BytesIO(b"".join(part.read_bytes() for part in parts)) if parts else path
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on foreign pickles
            state = torch.load(source, map_location=map_location, weights_only=True)
    except (PermissionError, IsADirectoryError) as error:
        raise CheckpointError(
            f"{path} could not be read: {error.strerror or error}"
        ) from error
    except (
        OSError,  # torch's reader says EINVAL for some broken archives
        RuntimeError,
        EOFError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        ValueError,
        KeyError,
        IndexError,
        TypeError,
        AttributeError,
    ) as error:
        raise CheckpointError(
            f"{path} is not a readable checkpoint: {_unreadable(path, error)}"
        ) from None
    if not isinstance(state, dict) or "format" not in state:
        found = "a dict without 'format'" if isinstance(state, dict) else None
        found = found or f"a {type(state).__name__}"
        raise CheckpointError(
            f"{path} is not a dmm_helpers checkpoint: it holds {found}"
        )
    if state["format"] != CHECKPOINT_FORMAT:
        written = state.get("versions")
        by = (
            f" (written by dmm_helpers {written.get('dmm_helpers', '?')})"
            if isinstance(written, Mapping)
            else ""
        )
        raise CheckpointError(
            f"{path} is a checkpoint of format {state['format']!r}{by}, but "
            f"dmm_helpers {__version__} reads format {CHECKPOINT_FORMAT}"
        )
    return state


def non_finite(weights: Mapping[str, Any]) -> list[str]:
    """The names of the floating-point tensors in ``weights`` with a NaN or an inf."""
    return sorted(
        name
        for name, value in weights.items()
        if isinstance(value, torch.Tensor)
        and value.is_floating_point()
        and not torch.isfinite(value).all()
    )


def load_weights(
    model: DMM, weights: dict[str, torch.Tensor], source: str | os.PathLike
) -> None:
    """``model.load_state_dict(weights)``, with an error that names the tensors.

    A mismatch is a :class:`CheckpointError` that lists the missing, the
    unexpected and the mis-shaped tensors of ``source`` (a path, for the
    message).
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    wrong = sorted(
        f"{name} {tuple(weights[name].shape)} vs {tuple(own[name].shape)}"
        for name in set(own) & set(weights)
        if weights[name].shape != own[name].shape
    )
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{source} holds weights for a different model: "
            f"missing {missing or 'none'}, unexpected {unexpected or 'none'}, "
            f"shapes stored vs expected {wrong or 'none'}"
        )
    bad = non_finite(weights)
    if bad:
        raise CheckpointError(
            f"{source} holds weights that are not finite (NaN or inf): "
            f"{', '.join(bad)}; it comes from a run that diverged"
        )
    model.load_state_dict(weights)


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu") -> DMM:
    """The DMM stored in ``best.pt`` or ``checkpoint.pt``, in evaluation mode."""
    state = load_checkpoint(path, map_location=device)
    try:
        config = DMMConfig.from_dict(state["model_config"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(
            f"{path}: the stored model config is not usable: {error}"
        ) from error
    if not isinstance(state.get("model"), Mapping):
        raise CheckpointError(f"{path} holds no model weights")
    model = DMM(config).to(device)
    load_weights(model, state["model"], path)
    return model.eval()


def config_differences(stored: DMMConfig, expected: DMMConfig) -> str:
    """``"rnn_dim 17 (stored) vs 16"`` for every field in which the two differ."""
    return ", ".join(
        f"{name} {value!r} (stored) vs {getattr(expected, name)!r}"
        for name, value in stored.to_dict().items()
        if value != getattr(expected, name)
    )


# This process's holds on run folders' locks: the lock file's (device, inode)
# -> [its open descriptor, how many FolderLocks hold it]. flock belongs to an
# open file, so one descriptor per file is kept and shared by its holders.
_HELD: dict[tuple[int, int], list[int]] = {}


def _release(key: tuple[int, int]) -> None:
    held = _HELD.get(key)
    if held is None:
        return
    held[1] -= 1
    if held[1] == 0:
        del _HELD[key]
        os.close(held[0])  # closing the file releases the lock


class FolderLock:
    """This process's hold on a run folder's lock.

    :meth:`release` ends it, as does garbage collection or the end of the
    process (the system releases the lock of a killed process, so a stale
    lock file never blocks a later run).
    """

    def __init__(self, key: tuple[int, int]) -> None:
        self._release = weakref.finalize(self, _release, key)

    def release(self) -> None:
        """Let go of the lock (the last holder of this process unlocks the folder)."""
        self._release()


def _step_of(line: str) -> int | None:
    """The ``step`` of a log line, or ``None`` for a line torn by a crash."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    step = record.get("step") if isinstance(record, dict) else None
    return step if isinstance(step, int) else None


class RunFolder:
    """The files of one training run in the folder ``path``.

    ``checkpoint.pt``, ``best.pt``, ``log.jsonl`` and ``command.txt``. It
    keeps the folder consistent with the training state: a fresh run starts
    with no log, checkpoint or best model, a resumed run drops the log
    records written after its checkpoint, and temporary files of saves cut
    short by ``SIGKILL`` are removed. A run takes the folder's :meth:`lock`
    before it writes anything.
    """

    FILES = ("checkpoint.pt", "best.pt", "log.jsonl", "command.txt")

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.checkpoint = self.path / "checkpoint.pt"
        self.best = self.path / "best.pt"
        self.log = self.path / "log.jsonl"
        self.command = self.path / "command.txt"
        self.lock_file = self.path / ".lock"

    def check_usable(self) -> None:
        """Raise :class:`RunFolderError` unless the folder is, or can become, ours.

        It must be a folder (or not exist yet, below a folder) in which this
        process may write. Nothing is created.
        """
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"the run folder {self.path} is a file, not a folder")
        existing = self.path
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise RunFolderError(
                f"cannot make the run folder {self.path}: {existing} is a file"
            )
        if not os.access(existing, os.W_OK | os.X_OK):
            raise RunFolderError(
                f"cannot write in {existing} (permission denied), so not in the "
                f"run folder {self.path}"
            )

    def holds_run(self) -> bool:
        """Whether a run has written its checkpoint, best model or log here."""
        return any(path.exists() for path in (self.checkpoint, self.best, self.log))

    def lock(self) -> FolderLock:
        """Take the folder's lock (creating the folder), or refuse: it is in use.

        Another process that holds it (a run on the same ``--out``) is a
        :class:`RunFolderError`; holders in this process share it. The lock
        is ``fcntl.flock`` on ``.lock`` (no lock on systems without fcntl).
        """
        self.check_usable()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o666)
            opened = os.fstat(fd)
            key = (opened.st_dev, opened.st_ino)
            if key in _HELD:
                os.close(fd)  # this process holds it already
            else:
                try:
                    if fcntl is not None:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    raise RunFolderError(
                        f"the run folder {self.path} is in use by another training "
                        "run (which holds its .lock); wait for it to end, or choose "
                        "another --out"
                    ) from None
                _HELD[key] = [fd, 0]
        except RunFolderError:
            raise
        except OSError as error:
            raise RunFolderError(
                f"cannot write in the run folder {self.path}: {error.strerror or error}"
            ) from error
        _HELD[key][1] += 1
        return FolderLock(key)

    def start(self, command: str) -> None:
        """Begin a fresh run: the folder, its ``command.txt``, no old run's files."""
        self.path.mkdir(parents=True, exist_ok=True)
        write_text(self.command, f"{command}\n# {json.dumps(versions())}\n")
        for old in (self.log, self.checkpoint, self.best):
            old.unlink(missing_ok=True)

    def training_state(self, map_location: Any = "cpu") -> dict[str, Any]:
        """``checkpoint.pt``, checked to hold what ``--resume`` needs."""
        state = load_checkpoint(self.checkpoint, map_location=map_location)
        missing = sorted(TRAINING_STATE - set(state))
        if missing:
            raise CheckpointError(
                f"{self.checkpoint} holds no training state to resume from "
                f"(missing {missing}); best.pt keeps only the weights, --resume "
                "needs checkpoint.pt"
            )
        return state

    def resume_log(self, step: int) -> None:
        """Drop the log records after ``step``, which the resumed run writes again.

        A line torn by a crash while it was appended goes too; every record
        before it stays. The log is rewritten (atomically) only if a line goes.
        """
        if not self.log.exists():
            return
        text = self.log.read_bytes().decode("utf-8", errors="replace")
        keep = [
            line
            for line in text.splitlines()
            if (line_step := _step_of(line)) is not None and line_step <= step
        ]
        kept = "".join(line + "\n" for line in keep)
        if kept != text:
            write_text(self.log, kept)

    def remove_stale_temporaries(self) -> None:
        """Delete what saves killed by ``SIGKILL`` left behind.

        Such a save leaves its temporary file (the finished file is never
        touched); no other process writes in a run folder (see :meth:`lock`).
        """
        for name in self.FILES:
            for stale in self.path.glob(f".{name}.*.part"):
                stale.unlink(missing_ok=True)

    def append_record(self, record: dict[str, Any]) -> None:
        """Add one evaluation record to ``log.jsonl``: a whole line, or nothing."""
        append_text(self.log, json.dumps(record) + "\n")

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Write ``checkpoint.pt`` atomically."""
        save_checkpoint(state, self.checkpoint)

    def save_best(self, state: dict[str, Any]) -> None:
        """Write ``best.pt`` atomically."""
        save_checkpoint(state, self.best)
