"""Train a deep Markov model: ``python -m dmm_helpers.train --out runs/dmm``.

Introduced in chapter 06 (``notebooks/06_training.ipynb``). The loop is plain
PyTorch around the vectorised ELBO of :mod:`dmm_helpers.elbo` (equal to Pyro's
``TraceMeanField_ELBO`` on the same draws, and several times faster), with the
optimiser of Pyro's DMM example, ``ClippedAdam``: Adam with per-parameter
gradient clipping and a learning rate multiplied by ``lr_decay`` every step.
The defaults of the flags are those of Pyro's ``examples/dmm.py``, except the
closed-form KL (this book's choice); ``--preset`` selects other sets.

What a run leaves in ``--out`` (written by
:class:`~dmm_helpers.checkpoint.RunFolder`):

- ``checkpoint.pt``: everything needed to resume (model, optimiser, RNG
  states, position in the epoch, the flags), written atomically;
- ``best.pt``: the model with the best validation bound so far (weights and
  config only: this is the file to ship and to evaluate); with
  ``--ema-decay`` the weights evaluated and kept are an exponential moving
  average of the trained ones (``torch.optim.swa_utils.AveragedModel``);
- ``log.jsonl``: one JSON object per evaluation (train, valid and test bound
  per time step, annealing factor, learning rate, wall-clock seconds);
- ``command.txt``: the command line that started the run, and the versions.

A run killed in any way, even ``SIGKILL``, and continued with ``--resume`` ends
with exactly the parameters of an uninterrupted run (same seed, same
machine, CPU): the order of the mini-batches is a function of the seed and
the epoch, and the checkpoint holds the RNG state. ``SIGINT`` and
``SIGTERM`` save a checkpoint at the next step and exit.

The command line is :class:`TrainConfig`: one flag per field, whose help
sentence, ``--help`` group and allowed range are the field's metadata.
:func:`parse_command_line` tells the flags given from those left out
(:class:`CommandLine`), which ``--resume`` needs. A bad flag is a usage error
(exit 2) before anything is read or written; a problem with the data, a
checkpoint or the run folder, a full disk or a diverged run is one line
``error: ...`` and exit 1 (:mod:`dmm_helpers.cli`), and leaves the files of
the run as they were after its last good step: every file is replaced
atomically, and the folder is locked against a second run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import shlex
import signal
import sys
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pyro
import torch
from pyro.optim.clipped_adam import ClippedAdam
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from dmm_helpers.checkpoint import (
    CHECKPOINT_FORMAT,
    RUN_POSITION,
    CheckpointError,
    RunFolder,
    RunFolderError,
    config_differences,
    load_checkpoint,
    load_model,
    load_weights,
    non_finite,
    versions,
)
from dmm_helpers.checks import Range, positive_int
from dmm_helpers.cli import (
    COUNT,
    SEED,
    add_debug_flag,
    errors_reported,
    new_parser,
    number_flag,
    text_flag,
)
from dmm_helpers.data import Batch, load_data, make_batch, minibatches
from dmm_helpers.devices import DEVICES, resolve_device
from dmm_helpers.dmm import CHOICES as MODEL_CHOICES
from dmm_helpers.dmm import DMM, DMMConfig
from dmm_helpers.elbo import elbo


class NonFiniteLossError(RuntimeError):
    """Training diverged and stopped: a run of non-finite steps, or bound.

    Raised after ``max_bad_steps`` non-finite losses or gradients in a row,
    or when an evaluation's bound is not finite; the last good checkpoint is
    left as it was.
    """


# The groups of --help, in order: a setting's group is in its field's metadata.
FLAG_GROUPS = {
    "data": "what the model learns from",
    "model": "the deep Markov model and its inference network",
    "optimisation": "ClippedAdam, the loss and the guard against divergence",
    "schedule": "how long, the KL annealing, and how often to evaluate",
    "run": "where the run's files go, and on what it runs",
}


def setting(default: Any, group: str, about: str, allowed: Range | None = None) -> Any:
    """A :class:`TrainConfig` field and everything its ``--flag`` needs.

    ``about`` (a sentence) is the flag's ``--help``, ``group`` its heading
    (one of :data:`FLAG_GROUPS`) and ``allowed`` the range that the parser
    and :func:`check_config` hold a number to; the one place each is written.
    """
    if group not in FLAG_GROUPS:
        raise ValueError(f"unknown flag group {group!r}")
    return dataclasses.field(
        default=default, metadata={"group": group, "help": about, "range": allowed}
    )


POSITIVE = Range(0.0, include_minimum=False)
PROBABILITY_BELOW_ONE = Range(0.0, 1.0, include_maximum=False)
UNIT_INTERVAL_ABOVE_ZERO = Range(0.0, 1.0, include_minimum=False)
COUNT_OR_ZERO = Range(0, integer=True)


@dataclass
class TrainConfig:
    """The flags of a training run; each field is a ``--flag`` of the command line.

    Each field's metadata holds its help sentence, its ``--help`` group and
    the range of its values (:func:`setting`); the defaults are Pyro's
    ``examples/dmm.py``'s, except ``kl_estimator`` (this book's choice).
    """

    data: str = setting(
        "jsb",
        "data",
        '"jsb" (the canonical JSB chorales), "bach" (the offline stand-in built '
        "from music21's chorales), or the path of a JSON file in the JSB format "
        "or of a folder of MIDI files.",
    )
    out: str = setting(
        "runs/dmm",
        "run",
        "The run folder: the checkpoints, the best model, the log and the "
        "command go there.",
    )
    epochs: int = setting(
        5000,
        "schedule",
        "Passes over the training set (with --resume: the total to reach).",
        COUNT,
    )
    batch_size: int = setting(
        20, "optimisation", "Sequences in each mini-batch of a step.", COUNT
    )
    learning_rate: float = setting(
        3e-4, "optimisation", "Adam's step size at the first step.", POSITIVE
    )
    beta1: float = setting(
        0.96,
        "optimisation",
        "Adam's decay of its moving average of the gradient.",
        PROBABILITY_BELOW_ONE,
    )
    beta2: float = setting(
        0.999,
        "optimisation",
        "Adam's decay of its moving average of the squared gradient.",
        PROBABILITY_BELOW_ONE,
    )
    optimizer: str = setting(
        "clipped-adam",
        "optimisation",
        "clipped-adam: Pyro's ClippedAdam on the summed loss (Pyro's example); "
        "adam: torch's Adam on the gradient averaged over the mini-batch's "
        "sequences, its global norm clipped (the authors' code).",
    )
    clip_norm: float = setting(
        10.0,
        "optimisation",
        "clipped-adam: each gradient entry is clamped to [-clip_norm, clip_norm] "
        "(an elementwise clamp); adam: the averaged gradient's global norm is "
        "rescaled to at most clip_norm.",
        POSITIVE,
    )
    lr_decay: float = setting(
        0.99996,
        "optimisation",
        "The learning rate is multiplied by this after every step.",
        UNIT_INTERVAL_ABOVE_ZERO,
    )
    weight_decay: float = setting(
        2.0,
        "optimisation",
        "L2 penalty: this times the weights is added to the gradient of the "
        "summed loss, for every parameter (the authors' 0.05 sum(w^2) in the loss "
        "is 0.1 here).",
        Range(0.0),
    )
    kl_estimator: str = setting(
        "analytic",
        "optimisation",
        "The ELBO's KL term: analytic (in closed form) or sampled (at the guide's "
        "draw, as Pyro's Trace_ELBO).",
    )
    ema_decay: float = setting(
        0.0,
        "optimisation",
        "Evaluate and keep an exponential moving average of the weights with this "
        "decay (0: off).",
        PROBABILITY_BELOW_ONE,
    )
    annealing_epochs: int = setting(
        1000,
        "schedule",
        "Epochs over which the KL factor rises linearly to 1 (0: no annealing).",
        COUNT_OR_ZERO,
    )
    minimum_annealing_factor: float = setting(
        0.2,
        "schedule",
        "The KL factor at the start of the annealing.",
        UNIT_INTERVAL_ABOVE_ZERO,
    )
    seed: int = setting(
        0,
        "run",
        "Seeds the initial weights, the order of the mini-batches and the samples.",
        SEED,
    )
    device: str = setting(
        "auto",
        "run",
        '"auto" (CUDA when torch sees a GPU, else the CPU), or "cpu" or "cuda".',
    )
    eval_every: int = setting(
        10,
        "schedule",
        "Epochs between evaluations on the valid and test sets (0: never).",
        COUNT_OR_ZERO,
    )
    eval_batch_size: int = setting(
        100,
        "run",
        "Sequences per evaluation batch (memory only: the bound is the same).",
        COUNT,
    )
    eval_samples: int = setting(
        1,
        "run",
        "Draws of z per sequence in each evaluation's bounds, averaged (the "
        "authors' code: 2). More make the choice of best.pt less a matter of "
        "luck; a resumed run that changes it re-scores best.pt first.",
        COUNT,
    )
    max_bad_steps: int = setting(
        20,
        "optimisation",
        "Stop after this many non-finite steps in a row (each one is skipped).",
        COUNT,
    )
    progress: bool = setting(True, "run", "Show a progress bar over the epochs.")
    z_dim: int = setting(100, "model", "Dimension of the latent state z_t.", COUNT)
    emission_dim: int = setting(
        100, "model", "Hidden units of the emitter, p(x_t | z_t).", COUNT
    )
    transition_dim: int = setting(
        200, "model", "Hidden units of the gated transition, p(z_t | z_t-1).", COUNT
    )
    rnn_dim: int = setting(
        600, "model", "Hidden units of the inference network's RNNs.", COUNT
    )
    rnn_layers: int = setting(
        1, "model", "Stacked layers of the inference network's RNNs.", COUNT
    )
    rnn_dropout: float = setting(
        0.0,
        "model",
        "Dropout between stacked RNN layers (needs --rnn-layers 2 or more).",
        PROBABILITY_BELOW_ONE,
    )
    num_iafs: int = setting(
        0,
        "model",
        "Inverse autoregressive flows on the guide's z_t (0: none).",
        COUNT_OR_ZERO,
    )
    iaf_dim: int = setting(
        100, "model", "Hidden units of each flow's autoregressive network.", COUNT
    )
    iaf_context: bool = setting(
        False,
        "model",
        "Each flow also reads the guide's summary h_t of the step, as Kingma et "
        "al.'s IAF does (Pyro's example's flows read z alone).",
    )
    guide: str = setting(
        "st-r",
        "model",
        "The inference network: st-r (the paper's DMM: structured, reads the "
        "future), st-l, st-lr, mf-l or mf-lr (mean field; l the past, lr both).",
    )
    scale: str = setting(
        "std",
        "model",
        "What softplus gives in the transition and the guide: std (Pyro's) or "
        "variance (the authors' code and the paper).",
    )
    z1_prior: str = setting(
        "learned",
        "model",
        "p(z_1): the transition of a learned z_0 (Pyro's) or standard, N(0, I) "
        "(the authors').",
    )
    guide_start: str = setting(
        "learned",
        "model",
        "A structured guide's z_0^q: learned (Pyro's) or zero (the authors').",
    )
    rnn_type: str = setting(
        "relu",
        "model",
        "The guide's reader: the relu RNN (Pyro's, chapter 04) or lstm, a ReLU "
        "input layer and an LSTM from h = 0, c = 1 (the authors').",
    )
    rnn_output_dropout: float = setting(
        0.0,
        "model",
        "Dropout on the readers' h_t while training (the authors': 0.1).",
        PROBABILITY_BELOW_ONE,
    )
    init: str = setting(
        "pytorch",
        "model",
        "Initial weights: PyTorch's, or uniform on (-0.1, 0.1) (the authors').",
    )
    emitter: str = setting(
        "bernoulli",
        "model",
        "p(x_t | z_t): bernoulli, the 88 notes independent given z_t (the paper's "
        "DMM), or nade, drawn one after another (the paper's DMM with NADE).",
    )
    augmented: bool = setting(
        False,
        "model",
        "The emitter and the transition also read the previous notes x_t-1 "
        "(the paper's DMM-Aug; the authors' -etype conditional -previnp).",
    )

    def command(self) -> str:
        """The command line that trains with these settings.

        Every flag that differs from its default, built from the settings
        rather than ``sys.argv``, so that a run started from Python or a
        notebook records a command that reproduces it too.
        """
        defaults = TrainConfig()
        parts = ["python", "-m", "dmm_helpers.train"]
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value == getattr(defaults, field.name):
                continue
            flag = flag_of(field.name)
            if isinstance(value, bool):
                parts.append(flag if value else f"--no-{flag[2:]}")
            else:
                parts += [flag, str(value)]
        return " ".join(shlex.quote(part) for part in parts)

    def model_config(self, input_dim: int = 88) -> DMMConfig:
        """The :class:`DMMConfig` these flags describe (each of its fields is one)."""
        sizes = {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(DMMConfig)
            if field.name != "input_dim"
        }
        return DMMConfig(input_dim=input_dim, **sizes)


# Settings whose flag is not their field's name: --kl sets kl_estimator, a mode
# string (ELBOTerms.kl is a tensor). Checkpoints written before the rename
# store the setting as "kl"; reading them maps it back through this table.
FLAG_NAMES = {"kl_estimator": "kl"}

# Flags with a fixed set of values: the parser lists them and refuses others.
FLAG_CHOICES = {
    "kl_estimator": ("analytic", "sampled"),
    "device": DEVICES,
    "optimizer": ("clipped-adam", "adam"),
    **MODEL_CHOICES,
}

# Flags that may change when a run is resumed; any other change is an error,
# because the continued run would no longer be the run that was started.
RESUMABLE_CHANGES = frozenset(
    {
        "epochs",
        "device",
        "eval_every",
        "eval_batch_size",
        "eval_samples",
        "progress",
        "out",
    }
)


def flag_of(name: str) -> str:
    """The command-line flag of the :class:`TrainConfig` field ``name``."""
    return "--" + FLAG_NAMES.get(name, name).replace("_", "-")


def annealing_factor(step: int, steps_per_epoch: int, config: TrainConfig) -> float:
    """The KL weight ``beta`` at a global step, rising linearly to 1.

    ``beta = min_beta + (1 - min_beta) * (step + 1) / (A * steps_per_epoch)``
    with ``A = annealing_epochs``, capped at 1; with ``A = 0`` it is always 1.
    """
    if config.annealing_epochs <= 0:
        return 1.0
    progress = (step + 1) / (config.annealing_epochs * steps_per_epoch)
    low = config.minimum_annealing_factor
    return min(1.0, low + (1.0 - low) * progress)


def check_config(config: TrainConfig) -> None:
    """Raise a ``ValueError`` naming the flag, for settings no run can use.

    Each number must lie in its field's range, each choice among
    :data:`FLAG_CHOICES`; the model's sizes must make a :class:`DMMConfig`.
    """
    for field in dataclasses.fields(TrainConfig):
        flag, value = flag_of(field.name), getattr(config, field.name)
        allowed, choices = field.metadata["range"], FLAG_CHOICES.get(field.name)
        if allowed is not None:
            allowed.check(flag, value)
        elif choices is not None:
            if value not in choices:
                raise ValueError(
                    f"{flag} must be one of {', '.join(choices)}, got {value!r}"
                )
        elif isinstance(field.default, bool):
            if not isinstance(value, bool):
                raise ValueError(f"{flag} must be True or False, got {value!r}")
        elif not isinstance(value, str) or not value.strip():
            raise ValueError(f"{flag} must be a name or a path, got {value!r}")
    config.model_config()  # the combinations DMMConfig refuses


def merge_resumed_config(
    stored: dict[str, Any], given: TrainConfig, names: Collection[str] | None = None
) -> TrainConfig:
    """The settings of a resumed run: the checkpoint's, and what may change.

    ``stored`` is the checkpoint's ``train_config``; ``given`` the settings of
    this invocation, of which ``names`` were given explicitly (the command
    line's :attr:`CommandLine.given`); ``None`` takes every field that differs
    from its default as given, which is what a Python caller who builds a
    :class:`TrainConfig` means. A given flag outside
    :data:`RESUMABLE_CHANGES` whose value differs from the stored one is a
    :class:`CheckpointError` (the checkpoint's model or schedule would not
    match); a given resumable flag takes its new value, even its default
    one; flags not given keep the run's values, so that ``--resume --out
    DIR`` alone continues the run as it was started. Where the checkpoint
    was found and the device are always this invocation's.
    """
    renamed = {name: field for field, name in FLAG_NAMES.items()}
    stored = {renamed.get(name, name): value for name, value in stored.items()}
    known = {field.name for field in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(stored) - known)
    if unknown:
        raise CheckpointError(
            f"the checkpoint was written with unknown flags {unknown}"
        )
    stored_config = TrainConfig(**stored)
    if names is None:
        defaults = TrainConfig()
        names = {n for n in known if getattr(given, n) != getattr(defaults, n)}
    names = set(names) | {"out", "device"}
    changed = [
        f"{flag_of(name)} {getattr(stored_config, name)!r} -> {getattr(given, name)!r}"
        for name in names - RESUMABLE_CHANGES
        if getattr(stored_config, name) != getattr(given, name)
    ]
    if changed:
        raise CheckpointError(
            "cannot resume with different settings (the checkpoint's model or "
            "schedule would not match): " + ", ".join(sorted(changed))
        )
    overrides = {name: getattr(given, name) for name in names & RESUMABLE_CHANGES}
    return dataclasses.replace(stored_config, **overrides)


@torch.no_grad()
def evaluate_bound(
    model: DMM,
    sequences: Sequence[torch.Tensor],
    batch_size: int = 100,
    samples: int = 1,
) -> float:
    """The negative ELBO per time step (nats), ``beta = 1``, dropout off.

    The number papers report, estimated with ``samples`` draws per sequence
    (averaged).
    """
    samples = positive_int("samples", samples)
    was_training = model.training
    model.eval()
    device = model.z_0.device
    total, steps = 0.0, 0
    try:
        for start in range(0, len(sequences), batch_size):
            batch = make_batch(
                [s.to(model.z_0.dtype) for s in sequences[start : start + batch_size]],
                device=device,
            )
            for _ in range(samples):
                total -= elbo(model, batch).item()
            steps += int(batch.lengths.sum())
    finally:
        model.train(was_training)
    return total / (steps * samples)


class Trainer:
    """One training run: the model, the optimiser and the position in the schedule.

    ``Trainer(config).run()`` trains; ``Trainer(config, resume=True)``
    continues from ``config.out/checkpoint.pt`` (``given``: the settings the
    caller set, see :func:`merge_resumed_config`). The files of the run are
    :attr:`folder`'s (a :class:`~dmm_helpers.checkpoint.RunFolder`). Every
    setting, the data and the checkpoint are checked before anything is
    written; from its first write the trainer holds the folder's lock, until
    :meth:`close` or garbage collection, so that a run in another process
    cannot write there too.
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        resume: bool = False,
        given: Collection[str] | None = None,
    ) -> None:
        self.folder = RunFolder(config.out)
        self.folder.check_usable()
        self.device = resolve_device(config.device)
        saved = self.folder.training_state(self.device) if resume else None
        if saved is not None:
            config = merge_resumed_config(saved["train_config"], config, given)
        check_config(config)
        self.config = config
        self.data = load_data(config.data)
        if config.eval_every and not self.data["valid"]:
            raise ValueError(
                f"--data {config.data} has no validation sequences, so the run "
                "would never be evaluated nor keep a best.pt: a folder of music "
                "files splits itself once it holds 3 or more (or put them in "
                "train/, valid/ and test/ subfolders), a JSON file lists its "
                '"valid" sequences; --eval-every 0 trains without evaluating'
            )
        self.train_set = self.data["train"]
        input_dim = self.train_set[0].shape[-1]
        self.steps_per_epoch = math.ceil(len(self.train_set) / config.batch_size)

        torch.manual_seed(config.seed)  # the initial weights
        self.model = DMM(config.model_config(input_dim)).to(self.device)
        if config.optimizer == "clipped-adam":
            self.optimizer = ClippedAdam(
                self.model.parameters(),
                lr=config.learning_rate,
                betas=(config.beta1, config.beta2),
                clip_norm=config.clip_norm,
                lrd=config.lr_decay,
                weight_decay=config.weight_decay,
            )
        else:
            self.optimizer = torch.optim.Adam(
                self.model.parameters(),
                lr=config.learning_rate,
                betas=(config.beta1, config.beta2),
            )
        # The weights that are evaluated and kept as best.pt: the trained ones,
        # or their exponential moving average (updated after every step).
        self.averaged = (
            AveragedModel(
                self.model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay)
            )
            if config.ema_decay > 0
            else None
        )
        self.epoch = 0  # epochs completed
        self.batch_in_epoch = 0  # mini-batches of the current epoch already taken
        self.step = 0  # optimiser steps taken (skipped ones included)
        self.epoch_loss = 0.0  # summed -ELBO of this epoch's steps so far
        self.epoch_time_steps = 0  # time steps those steps covered
        self.skipped_steps = 0
        self.bad_in_a_row = 0
        self.elapsed = 0.0  # training wall-clock seconds, across resumptions
        self.best_valid = math.inf
        self.stop_signal: int | None = None
        if saved is not None:
            self._restore(saved)
        # Everything is checked: from here on the run writes, and holds the
        # folder's lock while it lives, so no other run writes there too.
        self._lock = self.folder.lock()
        if saved is not None:
            self.folder.resume_log(self.step)
            stored_samples = saved["train_config"].get("eval_samples", 1)
            if stored_samples != config.eval_samples and self.folder.best.is_file():
                self._rescore_best()
        else:
            self.folder.start(config.command())
        self.folder.remove_stale_temporaries()

    def close(self) -> None:
        """Let go of the run folder's lock (as garbage collection would)."""
        self._lock.release()

    @property
    def checkpoint_path(self) -> Path:
        """Where :meth:`save_checkpoint` writes: ``checkpoint.pt`` of the run."""
        return self.folder.checkpoint

    def _restore(self, saved: dict[str, Any]) -> None:
        try:
            stored = DMMConfig.from_dict(saved["model_config"])
        except (TypeError, ValueError) as error:
            raise CheckpointError(
                f"{self.checkpoint_path}: the stored model config is not usable: "
                f"{error}"
            ) from error
        if stored != self.model.config:
            raise CheckpointError(
                f"{self.checkpoint_path} is for another model than its flags "
                f"describe: {config_differences(stored, self.model.config)}"
            )
        load_weights(self.model, saved["model"], self.checkpoint_path)
        if self.averaged is not None:
            if saved.get("averaged") is None:
                raise CheckpointError(
                    f"{self.checkpoint_path} holds no moving average of the weights, "
                    f"but the run has --ema-decay {self.config.ema_decay}"
                )
            bad = non_finite(saved["averaged"])
            if bad:
                raise CheckpointError(
                    f"{self.checkpoint_path} holds a moving average that is not "
                    f"finite: {', '.join(bad)}"
                )
            self.averaged.load_state_dict(saved["averaged"])
        self.optimizer.load_state_dict(saved["optimizer"])
        for key in RUN_POSITION:
            setattr(self, key, saved[key])
        # Absent from checkpoints written before these were kept: start afresh.
        self.epoch_loss = saved.get("epoch_loss", 0.0)
        self.epoch_time_steps = saved.get("epoch_time_steps", 0)
        torch.set_rng_state(saved["rng"]["torch"].cpu())
        if self.device.type == "cuda" and saved["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state_all([s.cpu() for s in saved["rng"]["cuda"]])

    def state(self) -> dict[str, Any]:
        """What ``checkpoint.pt`` holds: enough to continue exactly where the run is."""
        return {
            "format": CHECKPOINT_FORMAT,
            "model_config": self.model.config.to_dict(),
            "train_config": dataclasses.asdict(self.config),
            "model": self.model.state_dict(),
            "averaged": None if self.averaged is None else self.averaged.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all()
                if self.device.type == "cuda"
                else None,
            },
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "step": self.step,
            "epoch_loss": self.epoch_loss,
            "epoch_time_steps": self.epoch_time_steps,
            "skipped_steps": self.skipped_steps,
            "elapsed": self.elapsed,
            "best_valid": self.best_valid,
            "versions": versions(),
        }

    def save_checkpoint(self) -> None:
        """Write :meth:`state` to ``checkpoint.pt``, atomically."""
        self.folder.save_checkpoint(self.state())

    @property
    def evaluated_model(self) -> DMM:
        """What the log's bounds measure and ``best.pt`` keeps: the average, if any."""
        return self.model if self.averaged is None else self.averaged.module

    def save_best(self, valid_bound: float) -> None:
        """Write the evaluated weights to ``best.pt``, atomically."""
        self.folder.save_best(
            {
                "format": CHECKPOINT_FORMAT,
                "model_config": self.model.config.to_dict(),
                "model": self.evaluated_model.state_dict(),
                "epoch": self.epoch,
                "valid_bound": valid_bound,
                "data": self.config.data,
                "versions": versions(),
            }
        )

    def train_step(self, batch: Batch, beta: float) -> float | None:
        """One optimiser step on ``-ELBO``; ``None`` (no update) if anything is NaN.

        ``batch`` comes from :func:`~dmm_helpers.data.minibatches` or
        :func:`~dmm_helpers.data.make_batch`, which checked it; it is not
        checked again here, on every step. Infinite losses and gradients are
        skipped as NaN ones are.
        """
        self.optimizer.zero_grad(set_to_none=True)
        # Without argument validation a NaN reaches the loss, where the guard
        # below catches it, instead of raising inside a distribution.
        with pyro.validation_enabled(False):
            loss = -elbo(self.model, batch, beta, self.config.kl_estimator, check=False)
        if torch.isfinite(loss):
            loss.backward()
            grads_finite = all(
                torch.isfinite(p.grad).all()
                for p in self.model.parameters()
                if p.grad is not None
            )
            if grads_finite:
                if self.config.optimizer == "adam":
                    self._authors_update(len(batch.lengths))
                self.optimizer.step()
                if self.averaged is not None:
                    self.averaged.update_parameters(self.model)
                self.bad_in_a_row = 0
                return loss.item()
        self.optimizer.zero_grad(set_to_none=True)
        self.skipped_steps += 1
        self.bad_in_a_row += 1
        if self.bad_in_a_row >= self.config.max_bad_steps:
            raise NonFiniteLossError(
                f"{self.bad_in_a_row} steps in a row gave a non-finite loss or "
                f"gradient (epoch {self.epoch}, step {self.step}); stopped. The last "
                f"good checkpoint, {self.checkpoint_path}, is intact, but resuming it "
                "would replay the same steps: start a new run with a smaller "
                "--learning-rate or --clip-norm."
            )
        return None

    def _authors_update(self, batch_size: int) -> None:
        """Prepare the gradient as the authors' code does, before Adam's step.

        The L2 term's gradient is added to that of the summed loss, the sum is
        divided by the mini-batch's sequences, its global norm is rescaled to
        at most ``clip_norm`` (theanomodels' ``optimizer.py``: regularize,
        rescale, normalize), and the learning rate decays by ``lr_decay``.
        """
        parameters = [p for p in self.model.parameters() if p.grad is not None]
        with torch.no_grad():
            for parameter in parameters:
                parameter.grad.add_(parameter, alpha=self.config.weight_decay)
                parameter.grad.div_(batch_size)
        nn.utils.clip_grad_norm_(parameters, self.config.clip_norm)
        for group in self.optimizer.param_groups:
            group["lr"] *= self.config.lr_decay

    def validate(self, train_loss: float) -> dict[str, Any]:
        """Bound the valid and test sets, log the record, keep the best weights.

        Returns the record appended to ``log.jsonl``; ``best.pt`` is
        rewritten when the validation bound is the lowest so far.
        """
        record = {
            "epoch": self.epoch,
            "step": self.step,
            "train_loss": train_loss,
            "annealing_factor": annealing_factor(
                self.step - 1, self.steps_per_epoch, self.config
            ),
            "learning_rate": self.optimizer.param_groups[0]["lr"],
            "elapsed_s": round(self.elapsed, 2),
            "skipped_steps": self.skipped_steps,
        }
        with self._evaluation_rng():
            for split in ("valid", "test"):
                if self.data.get(split):
                    record[f"{split}_bound"] = evaluate_bound(
                        self.evaluated_model,
                        self.data[split],
                        self.config.eval_batch_size,
                        self.config.eval_samples,
                    )
        diverged = [
            f"{key} {value}"
            for key, value in record.items()
            if key.endswith("_bound") and not math.isfinite(value)
        ]
        if diverged:
            raise NonFiniteLossError(
                f"the evaluation after epoch {self.epoch} gave a non-finite bound "
                f"({', '.join(diverged)}): the weights diverged. Stopped before "
                f"logging or saving it; the last good checkpoint, "
                f"{self.checkpoint_path}, is intact, but resuming it would replay "
                "the same steps: start a new run with a smaller --learning-rate "
                "or --clip-norm."
            )
        self.folder.append_record(record)
        valid = record.get("valid_bound")
        if valid is not None and valid < self.best_valid:
            self.best_valid = valid
            self.save_best(valid)
        return record

    @contextlib.contextmanager
    def _evaluation_rng(self) -> Iterator[None]:
        # Evaluation draws its own samples from a generator seeded by the step,
        # so how often a run is evaluated never changes its training trajectory.
        # Without argument validation a diverged model's NaN reaches the bound,
        # where validate's check catches it, instead of raising inside a
        # distribution.
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), pyro.validation_enabled(False):
            torch.manual_seed(self.config.seed * 1_000_003 + self.step)
            yield

    def _rescore_best(self) -> None:
        """Measure ``best.pt`` on the validation set again, with this run's draws.

        When a resumed run changes ``eval_samples``, the best bound so far was
        measured with another number of draws; later evaluations must be
        compared with the best weights measured as they are.
        """
        best = load_checkpoint(self.folder.best, self.device)
        model = load_model(self.folder.best, self.device)
        with self._evaluation_rng():
            valid = evaluate_bound(
                model,
                self.data["valid"],
                self.config.eval_batch_size,
                self.config.eval_samples,
            )
        self.best_valid = valid
        self.folder.save_best({**best, "valid_bound": valid})

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stop_signal = signum

    def run(self) -> list[dict[str, Any]]:
        """Train until ``config.epochs``; returns the evaluation records it logged."""
        config = self.config
        records = []
        handlers = {
            s: signal.signal(s, self._on_signal)
            for s in (signal.SIGINT, signal.SIGTERM)
        }
        bar = tqdm(
            total=config.epochs,
            initial=self.epoch,
            disable=not config.progress,
            desc="epochs",
            dynamic_ncols=True,
        )
        self.model.train()
        try:
            while self.epoch < config.epochs:
                batches = minibatches(
                    self.train_set,
                    config.batch_size,
                    seed=config.seed * 1_000_003 + self.epoch,
                    device=self.device,
                )
                started = time.perf_counter()
                for index, batch in enumerate(batches):
                    if index < self.batch_in_epoch:
                        continue  # taken before the run was interrupted
                    beta = annealing_factor(self.step, self.steps_per_epoch, config)
                    loss = self.train_step(batch, beta)
                    self.step += 1
                    self.batch_in_epoch = index + 1
                    if loss is not None:
                        self.epoch_loss += loss
                        self.epoch_time_steps += int(batch.lengths.sum())
                    if self.stop_signal is not None:
                        self.elapsed += time.perf_counter() - started
                        self.save_checkpoint()
                        bar.close()
                        print(
                            f"Stopped by signal {self.stop_signal} at epoch "
                            f"{self.epoch}, step {self.step}; resume with --resume "
                            f"--out {self.folder.path}",
                            file=sys.stderr,
                        )
                        raise SystemExit(128 + self.stop_signal)
                self.elapsed += time.perf_counter() - started
                self.epoch += 1
                self.batch_in_epoch = 0
                train_loss = self.epoch_loss / max(self.epoch_time_steps, 1)
                self.epoch_loss, self.epoch_time_steps = 0.0, 0
                bar.update(1)
                bar.set_postfix(loss=f"{train_loss:.3f}")
                if config.eval_every and (
                    self.epoch % config.eval_every == 0 or self.epoch == config.epochs
                ):
                    records.append(self.validate(train_loss))
                    bar.set_postfix(
                        loss=f"{train_loss:.3f}",
                        valid=f"{records[-1].get('valid_bound', math.nan):.3f}",
                    )
                self.save_checkpoint()
        finally:
            bar.close()
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        return records


PRESETS: dict[str, dict[str, Any]] = {
    # Pyro's examples/dmm.py today (pyro-ppl/pyro, its argparse defaults): the
    # defaults of TrainConfig, with the KL sampled as its Trace_ELBO does. The
    # closed-form KL of TrainConfig's default is this book's choice.
    "pyro": {"kl_estimator": "sampled"},
    # examples/dmm/dmm.py at commit 78a6f382b (2017-10-20; argparse defaults
    # lr 0.0004, clip_norm 20.0, weight_decay 0.6, minimum annealing 0.1), the
    # code behind the tutorial's 6.87 / 6.82 / 6.80 (posted in 07504f87e). The
    # tutorial does not give its command line; these are the defaults it ran.
    "pyro2017": {
        "kl_estimator": "sampled",
        "learning_rate": 4e-4,
        "clip_norm": 20.0,
        "weight_decay": 0.6,
        "minimum_annealing_factor": 0.1,
    },
    # The authors' code for the paper's DMM (table 3: ST-R, KL annealed over
    # 5000 updates): clinicalml/structuredinference at ad2a00b, its JSB command
    # (expt-polyphonic/jsb_expts.sh, "DKF w/ AR") and the argparse defaults of
    # parse_args_dkf.py: lr 8e-4, Adam (0.9, 0.999) without decay, gradient
    # averaged over the 20 sequences and its norm clipped at 1, L2 0.05 sum(w^2)
    # on every parameter (0.1 w on the gradient), annealing from 0.01 over 5000
    # updates (about 413 epochs of 12), 2000 epochs, a checkpoint every 25;
    # z 100, emitter 200 and transition 400 hidden units (-dh 200, doubled in
    # stinfmodel/dkf.py), a backward LSTM of 600 after a ReLU layer with
    # dropout 0.1 on its outputs, softplus giving variances, p(z_1) = N(0, I),
    # z_0^q = 0, weights uniform on (-0.1, 0.1), the best weights chosen on a
    # validation bound of 2 draws (train_dkf.py). Not reproduced: the LSTM's
    # orthogonal and Laplace initialisation, and fixed length-sorted batches.
    # For the guides' comparison of table 2, add --annealing-epochs 0 (theirs:
    # 10 updates).
    "krishnan2017": {
        "optimizer": "adam",
        "learning_rate": 8e-4,
        "beta1": 0.9,
        "beta2": 0.999,
        "lr_decay": 1.0,
        "clip_norm": 1.0,
        "weight_decay": 0.1,
        "kl_estimator": "analytic",
        "annealing_epochs": 413,
        "minimum_annealing_factor": 0.01,
        "epochs": 2000,
        "batch_size": 20,
        "eval_every": 25,
        "eval_samples": 2,
        "z_dim": 100,
        "emission_dim": 200,
        "transition_dim": 400,
        "rnn_dim": 600,
        "rnn_type": "lstm",
        "rnn_output_dropout": 0.1,
        "scale": "variance",
        "z1_prior": "standard",
        "guide_start": "zero",
        "init": "uniform",
    },
}
"""Settings that ``--preset NAME`` sets; flags given on the command line win."""


class CommandLine(NamedTuple):
    """What ``python -m dmm_helpers.train`` was asked to do.

    ``given`` holds the :class:`TrainConfig` settings that the command line
    names, by field name, each parsed and in range: a flag left out is
    absent, not set to its default, so that ``--resume`` can tell
    ``--epochs 5000`` (given, equal to the default) from no ``--epochs``.
    ``--preset`` counts as giving its settings, under the flags given:
    ``{**PRESETS[name], **flags}``.
    """

    given: dict[str, Any]  # the settings given on the command line, by field
    resume: bool  # continue the run in --out
    overwrite: bool  # start afresh in a folder that holds a run
    debug: bool  # show tracebacks

    def config(self) -> TrainConfig:
        """The settings: those given, and the defaults for the rest."""
        return TrainConfig(**self.given)


def _shown(default: Any) -> str:
    if isinstance(default, bool):
        return "on" if default else "off"
    return str(default)


def build_parser() -> argparse.ArgumentParser:
    """The parser: one flag per :class:`TrainConfig` field, in :data:`FLAG_GROUPS`.

    No flag has a default in the parser (``argparse.SUPPRESS``): the
    namespace holds only the flags given. Numbers are checked against their
    field's range, so a bad value is a usage error (exit 2).
    """
    parser = new_parser(
        "python -m dmm_helpers.train",
        "Train a deep Markov model with the vectorised ELBO (chapter 06). The "
        "defaults are those of Pyro's examples/dmm.py, except the closed-form KL "
        "(this book's); --preset selects another set.",
    )
    described = "; ".join(
        f"{name}: "
        + (", ".join(f"{flag_of(k)} {v}" for k, v in values.items()) or "defaults")
        for name, values in PRESETS.items()
    )
    parser.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        default=argparse.SUPPRESS,
        help="Set several flags at once, as one published setup had them (flags "
        f"given as well win). {described}. pyro is Pyro's examples/dmm.py today, "
        "pyro2017 the version behind its tutorial's 6.87 (commit 78a6f382b), "
        "krishnan2017 the authors' code for the paper's DMM "
        "(clinicalml/structuredinference at ad2a00b; with --annealing-epochs 0 "
        "for its comparison of guides). The sources of each value are in "
        "dmm_helpers/train.py's PRESETS.",
    )
    groups = {
        name: parser.add_argument_group(name, about)
        for name, about in FLAG_GROUPS.items()
    }
    for field in dataclasses.fields(TrainConfig):
        about = f"{field.metadata['help']} Default: {_shown(field.default)}."
        group = groups[field.metadata["group"]]
        common = {"dest": field.name, "default": argparse.SUPPRESS, "help": about}
        allowed = field.metadata["range"]
        if isinstance(field.default, bool):
            group.add_argument(
                flag_of(field.name), action=argparse.BooleanOptionalAction, **common
            )
        elif field.name in FLAG_CHOICES:
            group.add_argument(
                flag_of(field.name), choices=FLAG_CHOICES[field.name], **common
            )
        else:
            if allowed is None:
                group.add_argument(flag_of(field.name), type=text_flag, **common)
            else:
                group.add_argument(
                    flag_of(field.name),
                    type=number_flag(allowed),
                    metavar="N" if allowed.integer else "X",
                    **common,
                )
    start = groups["run"].add_mutually_exclusive_group()
    start.add_argument(
        "--resume",
        action="store_true",
        help="Continue the run in --out from its checkpoint.pt. The flags not "
        "given keep the run's values; of those given, only --epochs, --eval-every, "
        "--eval-batch-size, --device and --progress may differ from the run's.",
    )
    start.add_argument(
        "--overwrite",
        action="store_true",
        help="Start afresh in an --out that holds a run, deleting its "
        "checkpoints and log (without it, such a folder is refused).",
    )
    add_debug_flag(groups["run"])
    return parser


def parse_command_line(argv: Sequence[str] | None = None) -> CommandLine:
    """Parse and check the flags (a bad one is a usage error, exit 2).

    For a fresh run the settings are checked together too (say
    ``--rnn-dropout`` without ``--rnn-layers``); a resumed run's are checked
    once they are merged with the checkpoint's.
    """
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    preset = PRESETS.get(args.pop("preset", None), {})
    line = CommandLine(
        resume=args.pop("resume"),
        overwrite=args.pop("overwrite"),
        debug=args.pop("debug"),
        given={**preset, **args},
    )
    if not line.resume:
        try:
            check_config(line.config())
        except (TypeError, ValueError) as error:
            parser.error(str(error))
    return line


def parse_args(argv: Sequence[str] | None = None) -> tuple[TrainConfig, bool]:
    """A command line's settings (defaults for flags not given), and ``--resume``."""
    line = parse_command_line(argv)
    return line.config(), line.resume


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m dmm_helpers.train`` (exit statuses: :mod:`dmm_helpers.cli`).

    Prints the last evaluation record as one JSON line when the run ends.
    """
    line = parse_command_line(argv)
    config = line.config()
    with errors_reported(line.debug, problems=(NonFiniteLossError,)):
        folder = RunFolder(config.out)
        folder.check_usable()
        if not line.resume and not line.overwrite and folder.holds_run():
            raise RunFolderError(
                f"{folder.path} already holds a run: continue it with --resume, "
                "start it afresh with --overwrite (deleting its checkpoints and "
                "log), or choose another --out"
            )
        trainer = Trainer(config, resume=line.resume, given=line.given)
        if trainer.epoch >= trainer.config.epochs:
            print(
                f"nothing to train: the run in {folder.path} has done "
                f"{trainer.epoch} of its {trainer.config.epochs} epochs; pass "
                "--epochs with a larger total to train it further",
                file=sys.stderr,
            )
        records = trainer.run()
    if records:
        print(json.dumps(records[-1]))


if __name__ == "__main__":
    main()
