"""Train a deep Markov model: ``python -m dmm_helpers.train --out runs/dmm``.

Introduced in chapter 06 (``notebooks/06_training.ipynb``). The loop is plain
PyTorch around the vectorised ELBO of :mod:`dmm_helpers.elbo` (equal to Pyro's
``TraceMeanField_ELBO`` on the same draws, and several times faster), with the
optimiser of Pyro's DMM example, ``ClippedAdam``: Adam with per-parameter
gradient clipping and a learning rate multiplied by ``lr_decay`` every step.
The defaults of the flags are the paper's and Pyro's example's.

What a run leaves in ``--out``:

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
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pickle
import shlex
import signal
import sys
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro.optim.clipped_adam import ClippedAdam
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from dmm_helpers import __version__
from dmm_helpers.data import (
    JSB_SHA256,
    load_bach_chorales,
    load_jsb,
    load_sequences,
    make_batch,
    minibatches,
    sha256_of,
)
from dmm_helpers.dmm import DMM, DMMConfig
from dmm_helpers.elbo import elbo

CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: corrupt, truncated, or for another model."""


class NonFiniteLossError(RuntimeError):
    """Training kept producing non-finite losses or gradients and stopped."""


@dataclass
class TrainConfig:
    """The flags of a training run; each field is a ``--flag`` of the command line."""

    data: str = (
        "jsb"  # "jsb" (canonical), "bach" (music21 stand-in) or a JSON/MIDI path
    )
    out: str = "runs/dmm"  # where checkpoints and the log go
    epochs: int = 5000  # passes over the training set
    batch_size: int = 20  # sequences per mini-batch
    learning_rate: float = 3e-4  # Adam's step size at step 0
    beta1: float = 0.96  # Adam's first-moment decay
    beta2: float = 0.999  # Adam's second-moment decay
    clip_norm: float = (
        10.0  # every gradient entry is clamped to [-clip_norm, clip_norm]
    )
    lr_decay: float = 0.99996  # the learning rate is multiplied by this every step
    weight_decay: float = 2.0  # L2 penalty added to the gradient of the summed loss
    kl: str = (
        "analytic"  # the KL term: "analytic" (closed form) or "sampled" (as Trace_ELBO)
    )
    ema_decay: float = (
        0.0  # evaluate and keep an exponential moving average of the weights (0: off)
    )
    annealing_epochs: int = 1000  # epochs over which the KL factor rises to 1
    minimum_annealing_factor: float = (
        0.2  # the KL factor's starting point (see annealing_factor)
    )
    seed: int = 0  # seeds the initial weights, the batch order and the samples
    device: str = "auto"  # "auto" (CUDA when present), "cpu" or "cuda"
    eval_every: int = 10  # epochs between evaluations on valid and test (0: never)
    eval_batch_size: int = 100  # sequences per evaluation batch
    max_bad_steps: int = 20  # stop after this many non-finite steps in a row
    progress: bool = True  # show a progress bar
    z_dim: int = 100  # latent dimension
    emission_dim: int = 100  # hidden units of the emitter
    transition_dim: int = 200  # hidden units of the gated transition
    rnn_dim: int = 600  # hidden units of the backward RNN
    rnn_layers: int = 1  # layers of the backward RNN
    rnn_dropout: float = (
        0.0  # dropout between stacked RNN layers (needs rnn_layers > 1)
    )
    num_iafs: int = 0  # inverse autoregressive flows in the guide
    iaf_dim: int = 100  # hidden units of each flow's network

    def command(self) -> str:
        """The command line that trains with these settings: every flag that differs from its default.

        Built from the settings rather than ``sys.argv``, so a run started from
        Python or a notebook records a command that reproduces it too.
        """
        defaults = TrainConfig()
        parts = ["python", "-m", "dmm_helpers.train"]
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value == getattr(defaults, field.name):
                continue
            flag = field.name.replace("_", "-")
            if isinstance(value, bool):
                parts.append(f"--{flag}" if value else f"--no-{flag}")
            else:
                parts += [f"--{flag}", str(value)]
        return " ".join(shlex.quote(part) for part in parts)

    def model_config(self, input_dim: int = 88) -> DMMConfig:
        """The :class:`DMMConfig` these flags describe."""
        return DMMConfig(
            input_dim=input_dim,
            z_dim=self.z_dim,
            emission_dim=self.emission_dim,
            transition_dim=self.transition_dim,
            rnn_dim=self.rnn_dim,
            rnn_layers=self.rnn_layers,
            rnn_dropout=self.rnn_dropout,
            num_iafs=self.num_iafs,
            iaf_dim=self.iaf_dim,
        )


# Flags that may change when a run is resumed; any other change is an error,
# because the continued run would no longer be the run that was started.
RESUMABLE_CHANGES = frozenset(
    {"epochs", "device", "eval_every", "eval_batch_size", "progress", "out"}
)

# What --resume needs besides the weights; best.pt, for one, holds only the weights.
TRAINING_STATE = frozenset(
    {
        "train_config",
        "optimizer",
        "rng",
        "epoch",
        "batch_in_epoch",
        "step",
        "skipped_steps",
        "elapsed",
        "best_valid",
    }
)


def annealing_factor(step: int, steps_per_epoch: int, config: TrainConfig) -> float:
    """The KL weight ``beta`` at a global step: linear from the minimum to 1 over the annealing epochs.

    ``beta = min_beta + (1 - min_beta) * (step + 1) / (annealing_epochs * steps_per_epoch)``,
    capped at 1; with ``annealing_epochs = 0`` it is always 1.
    """
    if config.annealing_epochs <= 0:
        return 1.0
    progress = (step + 1) / (config.annealing_epochs * steps_per_epoch)
    low = config.minimum_annealing_factor
    return min(1.0, low + (1.0 - low) * progress)


# Flags with a fixed set of values: the parser lists them and refuses others.
FLAG_CHOICES = {"kl": ("analytic", "sampled"), "device": ("auto", "cpu", "cuda")}


def check_config(config: TrainConfig) -> None:
    """Raise a ``ValueError`` naming the flag, for settings no run can use."""
    if config.kl not in FLAG_CHOICES["kl"]:
        raise ValueError(f'--kl must be "analytic" or "sampled", got {config.kl!r}')
    if not 0.0 <= config.ema_decay < 1.0:
        raise ValueError(
            f"--ema-decay must lie in [0, 1) (0 switches it off), got {config.ema_decay}"
        )
    if config.batch_size < 1 or config.epochs < 0:
        raise ValueError(
            f"--batch-size must be >= 1 and --epochs >= 0, got {config.batch_size} and {config.epochs}"
        )


def resolve_device(name: str) -> torch.device:
    """``"auto"`` is CUDA when available, else the CPU; ``"cuda"`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA device")
    if name not in ("cpu", "cuda"):
        raise ValueError(f'--device must be "auto", "cpu" or "cuda", got {name!r}')
    return torch.device(name)


def load_data(spec: str) -> dict[str, list[torch.Tensor]]:
    """The splits named by ``--data``: ``jsb``, ``bach``, or a path.

    A path whose SHA-256 is the canonical JSB file's is read with
    :func:`~dmm_helpers.data.load_jsb`; any other JSON file or folder of MIDI
    files with :func:`~dmm_helpers.data.load_sequences`.
    """
    if spec == "jsb":
        return load_jsb()
    if spec == "bach":
        return load_bach_chorales()
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(
            f'--data {spec!r}: no such file or folder (or use "jsb" or "bach")'
        )
    if path.is_file() and sha256_of(path) == JSB_SHA256:
        return load_jsb(path)
    return load_sequences(path)


def versions() -> dict[str, str]:
    """The versions that produced a checkpoint, stored in it for the record."""
    return {
        "torch": str(torch.__version__),
        "pyro": str(pyro.__version__),
        "dmm_helpers": __version__,
    }


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary name in the same folder, then rename: never a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(
    path: str | os.PathLike, map_location: Any = "cpu"
) -> dict[str, Any]:
    """Read a checkpoint written by this module (``weights_only``: no code is unpickled).

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
            f"{path} is not a dmm_helpers checkpoint of format {CHECKPOINT_FORMAT} (found {found!r})"
        )
    return state


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu") -> DMM:
    """The DMM stored in ``best.pt`` or ``checkpoint.pt``, in evaluation mode on ``device``."""
    state = load_checkpoint(path, map_location=device)
    try:
        config = DMMConfig.from_dict(state["model_config"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(
            f"{path}: the stored model config is not usable: {error}"
        ) from error
    model = DMM(config).to(device)
    _load_state_dict(model, state["model"], path)
    return model.eval()


def _load_state_dict(
    model: DMM, weights: dict[str, torch.Tensor], path: str | os.PathLike
) -> None:
    """``load_state_dict`` with an error that names the mismatching tensors."""
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
            f"{path} holds weights for a different model: missing {missing or 'none'}, "
            f"unexpected {unexpected or 'none'}, shapes stored vs expected {wrong or 'none'}"
        )
    model.load_state_dict(weights)


@torch.no_grad()
def evaluate_bound(
    model: DMM, sequences: Sequence[torch.Tensor], batch_size: int = 100
) -> float:
    """The negative ELBO per time step (nats), ``beta = 1``, dropout off: the number papers report."""
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
            total -= elbo(model, batch).item()
            steps += int(batch.lengths.sum())
    finally:
        model.train(was_training)
    return total / steps


class Trainer:
    """One training run: the model, the optimiser and the position in the schedule.

    ``Trainer(config).run()`` trains; ``Trainer(config, resume=True)``
    continues from ``config.out/checkpoint.pt``.
    """

    def __init__(self, config: TrainConfig, *, resume: bool = False) -> None:
        self.out = Path(config.out)
        self.checkpoint_path = self.out / "checkpoint.pt"
        self.device = resolve_device(config.device)
        saved = (
            load_checkpoint(self.checkpoint_path, map_location=self.device)
            if resume
            else None
        )
        if saved is not None:
            missing = sorted(TRAINING_STATE - set(saved))
            if missing:
                raise CheckpointError(
                    f"{self.checkpoint_path} holds no training state to resume from (missing "
                    f"{missing}); best.pt keeps only the weights, --resume needs checkpoint.pt"
                )
            config = self._merge_resumed_config(saved["train_config"], config)
        check_config(config)
        self.config = config
        self.data = load_data(config.data)
        self.train_set = self.data["train"]
        input_dim = self.train_set[0].shape[-1]
        self.steps_per_epoch = math.ceil(len(self.train_set) / config.batch_size)

        torch.manual_seed(config.seed)  # the initial weights
        self.model = DMM(config.model_config(input_dim)).to(self.device)
        self.optimizer = ClippedAdam(
            self.model.parameters(),
            lr=config.learning_rate,
            betas=(config.beta1, config.beta2),
            clip_norm=config.clip_norm,
            lrd=config.lr_decay,
            weight_decay=config.weight_decay,
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
        else:
            self.out.mkdir(parents=True, exist_ok=True)
            self._write_command()
            (self.out / "log.jsonl").unlink(missing_ok=True)
        # A save interrupted by SIGKILL leaves its temporary file behind (the
        # finished file is never touched); no other process writes here.
        for stale in self.out.glob(".*.pt.*.tmp"):
            stale.unlink(missing_ok=True)

    @staticmethod
    def _merge_resumed_config(
        stored: dict[str, Any], given: TrainConfig
    ) -> TrainConfig:
        known = {field.name for field in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(stored) - known)
        if unknown:
            raise CheckpointError(
                f"the checkpoint was written with unknown flags {unknown}"
            )
        stored_config = TrainConfig(**stored)
        changed = [
            f"--{name.replace('_', '-')} {getattr(stored_config, name)!r} -> {getattr(given, name)!r}"
            for name in known - RESUMABLE_CHANGES
            if getattr(stored_config, name) != getattr(given, name)
            and getattr(given, name) != getattr(TrainConfig(), name)
        ]
        if changed:
            raise CheckpointError(
                "cannot resume with different settings (the checkpoint's model or schedule "
                "would not match): " + ", ".join(sorted(changed))
            )
        # The resumable flags, too, keep the run's own values unless given, so
        # that ``--resume --out DIR`` alone continues the run as it was started;
        # where the checkpoint was found and the device are this invocation's.
        overrides = {
            name: getattr(given, name)
            for name in RESUMABLE_CHANGES
            if name in ("out", "device")
            or getattr(given, name) != getattr(TrainConfig(), name)
        }
        return dataclasses.replace(stored_config, **overrides)

    def _restore(self, saved: dict[str, Any]) -> None:
        stored = DMMConfig.from_dict(saved["model_config"])
        if stored != self.model.config:
            raise CheckpointError(
                f"{self.checkpoint_path} is for the model {stored}, not {self.model.config}"
            )
        _load_state_dict(self.model, saved["model"], self.checkpoint_path)
        if self.averaged is not None:
            if saved.get("averaged") is None:
                raise CheckpointError(
                    f"{self.checkpoint_path} holds no moving average of the weights, "
                    f"but the run has --ema-decay {self.config.ema_decay}"
                )
            self.averaged.load_state_dict(saved["averaged"])
        self.optimizer.load_state_dict(saved["optimizer"])
        for key in (
            "epoch",
            "batch_in_epoch",
            "step",
            "skipped_steps",
            "elapsed",
            "best_valid",
        ):
            setattr(self, key, saved[key])
        # Absent from checkpoints written before these were kept: start the sums afresh.
        self.epoch_loss = saved.get("epoch_loss", 0.0)
        self.epoch_time_steps = saved.get("epoch_time_steps", 0)
        torch.set_rng_state(saved["rng"]["torch"].cpu())
        if self.device.type == "cuda" and saved["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state_all([s.cpu() for s in saved["rng"]["cuda"]])
        self._truncate_log()

    def _truncate_log(self) -> None:
        """Drop log records written after the checkpoint, which the resumed run writes again."""
        log = self.out / "log.jsonl"
        if not log.exists():
            return
        keep = []
        for line in log.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a crash while it was appended
            if record["step"] <= self.step:
                keep.append(line)
        tmp = log.with_name(f".{log.name}.tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, log)

    def _write_command(self) -> None:
        text = f"{self.config.command()}\n# {json.dumps(versions())}\n"
        tmp = self.out / ".command.txt.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.out / "command.txt")

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
        atomic_torch_save(self.state(), self.checkpoint_path)

    @property
    def evaluated_model(self) -> DMM:
        """What the log's bounds measure and ``best.pt`` keeps: the moving average, if any."""
        return self.model if self.averaged is None else self.averaged.module

    def save_best(self, valid_bound: float) -> None:
        atomic_torch_save(
            {
                "format": CHECKPOINT_FORMAT,
                "model_config": self.model.config.to_dict(),
                "model": self.evaluated_model.state_dict(),
                "epoch": self.epoch,
                "valid_bound": valid_bound,
                "data": self.config.data,
                "versions": versions(),
            },
            self.out / "best.pt",
        )

    def train_step(self, batch: Any, beta: float) -> float | None:
        """One optimiser step on ``-ELBO``; ``None`` (and no update) if anything is non-finite."""
        self.optimizer.zero_grad(set_to_none=True)
        # Without argument validation a NaN reaches the loss, where the guard
        # below catches it, instead of raising inside a distribution.
        with pyro.validation_enabled(False):
            # Batches come from make_batch, checked where they were made.
            loss = -elbo(self.model, batch, beta, self.config.kl, check=False)
        if torch.isfinite(loss):
            loss.backward()
            grads_finite = all(
                torch.isfinite(p.grad).all()
                for p in self.model.parameters()
                if p.grad is not None
            )
            if grads_finite:
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
                f"{self.bad_in_a_row} steps in a row gave a non-finite loss or gradient "
                f"(epoch {self.epoch}, step {self.step}); stopped. The last good checkpoint, "
                f"{self.checkpoint_path}, is intact, but resuming it would replay the same "
                "steps: start a new run with a smaller --learning-rate or --clip-norm."
            )
        return None

    def evaluate(self, train_loss: float) -> dict[str, Any]:
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
        # Evaluation draws its own samples from a generator seeded by the step,
        # so how often a run is evaluated never changes its training trajectory.
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.config.seed * 1_000_003 + self.step)
            for split in ("valid", "test"):
                if self.data.get(split):
                    record[f"{split}_bound"] = evaluate_bound(
                        self.evaluated_model,
                        self.data[split],
                        self.config.eval_batch_size,
                    )
        with open(self.out / "log.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
        valid = record.get("valid_bound")
        if valid is not None and valid < self.best_valid:
            self.best_valid = valid
            self.save_best(valid)
        return record

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stop_signal = signum

    def run(self) -> list[dict[str, Any]]:
        """Train until ``config.epochs``; returns the evaluation records of this invocation."""
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
                            f"Stopped by signal {self.stop_signal} at epoch {self.epoch}, "
                            f"step {self.step}; resume with --resume --out {self.out}",
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
                    records.append(self.evaluate(train_loss))
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


def parse_args(argv: Sequence[str] | None = None) -> tuple[TrainConfig, bool]:
    """The command line: one ``--flag`` per :class:`TrainConfig` field, plus ``--resume``."""
    parser = argparse.ArgumentParser(
        prog="python -m dmm_helpers.train",
        description="Train a deep Markov model with the vectorised ELBO (chapter 06).",
    )
    defaults = TrainConfig()
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        default = getattr(defaults, field.name)
        if isinstance(default, bool):
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=default
            )
        else:
            parser.add_argument(
                flag,
                type=type(default),
                default=default,
                choices=FLAG_CHOICES.get(field.name),
                help=f"(default: {default})",
            )
    parser.add_argument(
        "--resume", action="store_true", help="continue from --out/checkpoint.pt"
    )
    args = vars(parser.parse_args(argv))
    resume = args.pop("resume")
    return TrainConfig(**args), resume


def main(argv: Sequence[str] | None = None) -> None:
    config, resume = parse_args(argv)
    trainer = Trainer(config, resume=resume)
    records = trainer.run()
    if records:
        print(json.dumps(records[-1]))


if __name__ == "__main__":
    main()
