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
log records, which are appended: a record torn by a crash is dropped on
resume.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import pyro
import torch

from dmm_helpers import __version__
from dmm_helpers.checks import write_text, write_with
from dmm_helpers.dmm import DMM, DMMConfig

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


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: corrupt, truncated, or for another model."""


def versions() -> dict[str, str]:
    """The versions that produced a checkpoint, stored in it for the record."""
    return {
        "torch": str(torch.__version__),
        "pyro": str(pyro.__version__),
        "dmm_helpers": __version__,
    }


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """``torch.save`` ``state`` to ``path`` atomically: never a partial file."""
    write_with(path, lambda file: torch.save(state, file))


def load_checkpoint(
    path: str | os.PathLike, map_location: Any = "cpu"
) -> dict[str, Any]:
    """Read a checkpoint (``weights_only``: no code is unpickled).

    Raises :class:`CheckpointError` for a missing, corrupt or truncated file,
    or one that is not a checkpoint of this format.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (
        RuntimeError,
        EOFError,
        OSError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        ValueError,
    ) as error:
        raise CheckpointError(
            f"{path} is not a readable checkpoint (corrupt or truncated file?): {error}"
        ) from error
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{path} is not a dmm_helpers checkpoint of format {CHECKPOINT_FORMAT} "
            f"(found {found!r})"
        )
    return state


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
    model = DMM(config).to(device)
    load_weights(model, state["model"], path)
    return model.eval()


class RunFolder:
    """The files of one training run in the folder ``path``.

    ``checkpoint.pt``, ``best.pt``, ``log.jsonl`` and ``command.txt``. It
    keeps the folder consistent with the training state: a fresh run starts
    with no log, a resumed run drops the log records written after its
    checkpoint, and temporary files of saves cut short by ``SIGKILL`` are
    removed.
    """

    FILES = ("checkpoint.pt", "best.pt", "log.jsonl", "command.txt")

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.checkpoint = self.path / "checkpoint.pt"
        self.best = self.path / "best.pt"
        self.log = self.path / "log.jsonl"
        self.command = self.path / "command.txt"

    def start(self, command: str) -> None:
        """Begin a fresh run: the folder, its ``command.txt``, and no old log."""
        self.path.mkdir(parents=True, exist_ok=True)
        write_text(self.command, f"{command}\n# {json.dumps(versions())}\n")
        self.log.unlink(missing_ok=True)

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

        A line torn by a crash while it was appended goes too.
        """
        if not self.log.exists():
            return
        keep = []
        for line in self.log.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a crash while it was appended
            if record["step"] <= step:
                keep.append(line)
        write_text(self.log, "".join(line + "\n" for line in keep))

    def remove_stale_temporaries(self) -> None:
        """Delete what saves killed by ``SIGKILL`` left behind.

        Such a save leaves its temporary file (the finished file is never
        touched); no other process writes in a run folder.
        """
        for name in self.FILES:
            for stale in self.path.glob(f".{name}.*.part"):
                stale.unlink(missing_ok=True)

    def append_record(self, record: dict[str, Any]) -> None:
        """Add one evaluation record to ``log.jsonl``."""
        with open(self.log, "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Write ``checkpoint.pt`` atomically."""
        save_checkpoint(state, self.checkpoint)

    def save_best(self, state: dict[str, Any]) -> None:
        """Write ``best.pt`` atomically."""
        save_checkpoint(state, self.best)
