"""The trained models shipped with the book, their training logs, and queries on them.

Chapters 06 and 07 evaluate these models live. Each lives in a folder
``pretrained/NAME/`` of the repository with three files: ``model.pt`` (the
best-on-valid weights and config written by :mod:`dmm_helpers.train`),
``log.jsonl`` (its training log) and ``command.txt`` (the command that trained
it). ``pretrained.json``, inside the package, lists every file with its
SHA-256, so a file is used only if it is exactly the one that was shipped. A
``model.pt`` over :data:`~dmm_helpers.checkpoint.PART_BYTES` (the authors'
sizes) ships in parts, ``model.pt.001``, ``model.pt.002``, ..., listed one by
one; every reader of ``pretrained/NAME/model.pt`` joins them
(:func:`~dmm_helpers.checkpoint.load_checkpoint`).

A training log is a list of records, one per evaluation (see
:meth:`dmm_helpers.train.Trainer.validate`); :func:`best_record`,
:func:`first_reaching` and :func:`training_hours` answer the questions the
chapters and ``benchmarks/train_speed.py`` ask of it, for a shipped log or a
live run's records alike.

Where the files are looked for, in order:

1. ``$DMM_PRETRAINED_DIR/NAME/``, if that variable is set;
2. ``pretrained/NAME/`` beside the package, in a clone of the repository;
3. the cache folder (:func:`dmm_helpers.data.default_cache_dir`), downloading
   any missing file from the repository first (as in Colab, where only the
   package is installed).

Maintainers ship a finished run with ``python -m dmm_helpers.pretrained ship
runs/jsb_dmm --name jsb_dmm --description "..."``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from dmm_helpers.checkpoint import (
    load_checkpoint,
    load_model,
    numbered_parts,
    split_into_parts,
)
from dmm_helpers.checks import atomic_write
from dmm_helpers.cli import add_debug_flag, errors_reported, new_parser
from dmm_helpers.data import ChecksumError, default_cache_dir, download, sha256_of
from dmm_helpers.dmm import DMM

# The repository, as in _config.yml (a test checks that the two agree).
REPOSITORY_URL = "https://github.com/dmm-book/deep-markov-models"
RAW_URL = (
    REPOSITORY_URL.replace("https://github.com/", "https://raw.githubusercontent.com/")
    + "/main/pretrained"
)
MANIFEST_PATH = Path(__file__).with_name("pretrained.json")
REPOSITORY_DIR = Path(__file__).resolve().parents[1] / "pretrained"
FILES = ("model.pt", "log.jsonl", "command.txt")
"""What a shipped model holds; ``model.pt`` may be stored in parts."""


def lists_a_model(files: Sequence[str]) -> bool:
    """Whether a manifest entry's ``files`` are :data:`FILES`, whole or in parts.

    ``model.pt`` may be replaced by ``model.pt.001`` ... ``model.pt.00n``
    (n >= 2, no gap); the others are whole.
    """
    rest = set(files) - {"log.jsonl", "command.txt"}
    if set(files) - rest != {"log.jsonl", "command.txt"}:
        return False
    parts = [f"model.pt.{number:03d}" for number in range(1, len(rest) + 1)]
    return rest == {"model.pt"} or (len(rest) >= 2 and rest == set(parts))


def manifest() -> dict[str, dict[str, Any]]:
    """The shipped models: ``{name: {"description": ..., "files": {file: sha}}}``."""
    return json.loads(MANIFEST_PATH.read_text())


def _entry(name: str) -> dict[str, Any]:
    models = manifest()
    if name not in models:
        raise KeyError(f"no shipped model named {name!r}; available: {sorted(models)}")
    return models[name]


def _verified(path: Path, expected: str) -> bool:
    return path.is_file() and sha256_of(path) == expected


def pretrained_dir(name: str) -> Path:
    """The folder of ``name``'s files, each checked against the manifest.

    Files missing from the repository and the cache are downloaded first.
    """
    files = _entry(name)["files"]
    candidates = []
    if os.environ.get("DMM_PRETRAINED_DIR"):
        candidates.append(Path(os.environ["DMM_PRETRAINED_DIR"]) / name)
    candidates.append(REPOSITORY_DIR / name)
    for folder in candidates:
        if all((folder / file).is_file() for file in files):
            for file, expected in files.items():
                actual = sha256_of(folder / file)
                if actual != expected:
                    raise ChecksumError(
                        f"{folder / file} has SHA-256 {actual}, but the shipped "
                        f"file has {expected}: the file was changed after it was "
                        "shipped (re-ship it with `python -m dmm_helpers.pretrained "
                        "ship`, or restore it)"
                    )
            return folder
    folder = default_cache_dir() / "pretrained" / name
    folder.mkdir(parents=True, exist_ok=True)
    for file, expected in files.items():
        if not _verified(folder / file, expected):
            download(f"{RAW_URL}/{name}/{file}", folder / file, expected)
    return folder


def load_pretrained(name: str, device: torch.device | str = "cpu") -> DMM:
    """The shipped model ``name`` (e.g. ``"jsb_dmm"``), in evaluation mode."""
    return load_model(pretrained_dir(name) / "model.pt", device)


def training_log(name: str) -> list[dict[str, Any]]:
    """The shipped model's training log: one record per evaluation.

    Each record holds ``epoch``, ``step``, ``train_loss``,
    ``annealing_factor``, ``learning_rate``, ``elapsed_s`` (training
    wall-clock, evaluations excluded), ``skipped_steps`` and, for the splits
    the run had, ``valid_bound`` and ``test_bound`` (nats per time step).
    """
    text = (pretrained_dir(name) / "log.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def best_record(
    log: Sequence[dict[str, Any]], key: str = "valid_bound"
) -> dict[str, Any]:
    """The record with the lowest ``key`` (the earliest of equals).

    With the default key, the record of the weights a run keeps as
    ``best.pt`` and ships. Records without ``key`` are passed over.

    Raises:
        ValueError: no record has ``key``.
    """
    scored = [record for record in log if key in record]
    if not scored:
        raise ValueError(f"no record of the log has {key!r}")
    return min(scored, key=lambda record: record[key])


def first_reaching(
    log: Sequence[dict[str, Any]], bound: float, key: str = "test_bound"
) -> dict[str, Any] | None:
    """The first record whose ``key`` is at or below ``bound``, or ``None``."""
    return next((record for record in log if record.get(key, math.inf) <= bound), None)


def training_hours(record: dict[str, Any]) -> float:
    """The training wall-clock up to ``record``, in hours (evaluations excluded)."""
    return record["elapsed_s"] / 3600


def training_command(name: str) -> str:
    """The command line that trained the shipped model."""
    return (pretrained_dir(name) / "command.txt").read_text().splitlines()[0]


def check_name(name: str) -> str:
    """``name`` if it can name a shipped model: letters, digits and underscores."""
    if not name or not name.replace("_", "").isalnum() or not name.isascii():
        raise ValueError(
            f"a model name is letters, digits and underscores, got {name!r}"
        )
    return name


def ship(
    run_dir: str | os.PathLike, name: str, description: str, target: Path | None = None
) -> Path:
    """Copy a run's ``best.pt``, ``log.jsonl`` and ``command.txt`` and list them.

    They go to ``pretrained/name`` (or ``target/name``) as ``model.pt``
    (in parts if it is too large for the repository:
    :func:`~dmm_helpers.checkpoint.split_into_parts`), ``log.jsonl`` and
    ``command.txt``, and their SHA-256 to the manifest. ``best.pt`` must
    load as a model. Every file is written to a temporary file first
    (:func:`dmm_helpers.checks.atomic_write`), and the files are renamed into
    place only once all of them are written, the manifest last: a write that
    fails (a full disk, say) leaves the shipped folder and the manifest as
    they were. A previous ``model.pt`` in the other form (whole, or in
    parts) is removed last.
    """
    check_name(name)
    run = Path(run_dir)
    sources = {
        "model.pt": run / "best.pt",
        "log.jsonl": run / "log.jsonl",
        "command.txt": run / "command.txt",
    }
    missing = [str(path) for path in sources.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"cannot ship {run}: missing {missing}")
    load_model(sources["model.pt"])  # a CheckpointError, naming it, if unusable
    contents = {file: source.read_bytes() for file, source in sources.items()}
    # The book reads "the weights of epoch N" off the log: they must agree.
    best = load_checkpoint(sources["model.pt"])
    lines = contents["log.jsonl"].decode().splitlines()
    record = best_record([json.loads(line) for line in lines if line.strip()])
    if (record.get("epoch"), record["valid_bound"]) != (
        best.get("epoch"),
        best.get("valid_bound"),
    ):
        raise ValueError(
            f"cannot ship {run}: best.pt holds epoch {best.get('epoch')} (valid "
            f"bound {best.get('valid_bound')}) but the log's best record is epoch "
            f"{record.get('epoch')} ({record['valid_bound']}); a run that changed "
            "--eval-samples must train until its best evaluation is a new one"
        )
    stored = {
        stored_name: data
        for file in FILES
        for stored_name, data in split_into_parts(file, contents[file]).items()
    }
    models = manifest() if MANIFEST_PATH.exists() else {}
    models[name] = {
        "description": description,
        "files": {
            file: hashlib.sha256(data).hexdigest() for file, data in stored.items()
        },
    }
    manifest_text = json.dumps(models, indent=2, sort_keys=True) + "\n"
    folder = (target or REPOSITORY_DIR) / name
    # The previous model.pt in the other form, or with more parts than now.
    model = folder / "model.pt"
    stale = [
        path
        for path in [model, *numbered_parts(model).values()]
        if path.name not in stored
    ]
    # Each atomic_write renames its file when its context exits, in the
    # reverse order of entering: the manifest, entered first, is renamed last.
    with ExitStack() as stack:
        listing = stack.enter_context(atomic_write(MANIFEST_PATH))
        for file, data in stored.items():
            stack.enter_context(atomic_write(folder / file)).write(data)
        listing.write(manifest_text.encode())
    for path in stale:
        path.unlink(missing_ok=True)
    return folder


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m dmm_helpers.pretrained`` (exit statuses: :mod:`dmm_helpers.cli`)."""
    parser = new_parser(
        "python -m dmm_helpers.pretrained",
        "The models shipped with the book: list them, or ship a training run.",
    )
    add_debug_flag(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="List the shipped models.")
    ship_parser = commands.add_parser(
        "ship",
        help="Ship a training run's best model, log and command.",
        allow_abbrev=False,
    )
    ship_parser.add_argument("run_dir", help="The run folder (--out of training).")
    ship_parser.add_argument(
        "--name",
        required=True,
        type=_name_flag,
        help="The model's name: letters, digits and underscores.",
    )
    ship_parser.add_argument(
        "--description", required=True, help="One sentence on what the model is."
    )
    args = parser.parse_args(argv)
    with errors_reported(args.debug):
        if args.command == "ship":
            print(ship(args.run_dir, args.name, args.description))
        else:
            for name, entry in manifest().items():
                print(f"{name}: {entry['description']}")


def _name_flag(text: str) -> str:
    try:
        return check_name(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


if __name__ == "__main__":
    main()
