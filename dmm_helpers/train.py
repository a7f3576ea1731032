"""Train a deep Markov model: ``python -m dmm_helpers.train --out runs/dmm``.

Introduced in chapter 06 (``notebooks/06_training.ipynb``). The loop is plain
PyTorch around the vectorised ELBO of :mod:`dmm_helpers.elbo` (equal to Pyro's
``TraceMeanField_ELBO`` on the same draws, and several times faster), with the
optimiser of Pyro's DMM example, ``ClippedAdam``: Adam with per-parameter
gradient clipping and a learning rate multiplied by ``lr_decay`` every step.
The defaults of the flags are the paper's and Pyro's example's.

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
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro.optim.clipped_adam import ClippedAdam
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

# load_checkpoint and load_model stay importable from here, as before the
# checkpoint module existed; new code imports them from dmm_helpers.checkpoint.
from dmm_helpers.checkpoint import (
    CHECKPOINT_FORMAT,
    RUN_POSITION,
    CheckpointError,
    RunFolder,
    load_checkpoint,  # noqa: F401
    load_model,  # noqa: F401
    load_weights,
    versions,
)
from dmm_helpers.checks import finite_number, positive_int
from dmm_helpers.data import Batch, load_data, make_batch, minibatches
from dmm_helpers.devices import DEVICES, resolve_device
from dmm_helpers.dmm import DMM, GUIDES, DMMConfig
from dmm_helpers.elbo import elbo


class NonFiniteLossError(RuntimeError):
    """Training kept producing non-finite losses or gradients and stopped."""


@dataclass
class TrainConfig:
    """The flags of a training run; each field is a ``--flag`` of the command line."""

    data: str = "jsb"  # "jsb" (canonical), "bach" (music21) or a JSON/MIDI path
    out: str = "runs/dmm"  # where checkpoints and the log go
    epochs: int = 5000  # passes over the training set
    batch_size: int = 20  # sequences per mini-batch
    learning_rate: float = 3e-4  # Adam's step size at step 0
    beta1: float = 0.96  # Adam's first-moment decay
    beta2: float = 0.999  # Adam's second-moment decay
    clip_norm: float = 10.0  # each gradient entry is clamped to [-clip_norm, clip_norm]
    lr_decay: float = 0.99996  # the learning rate is multiplied by this every step
    weight_decay: float = 2.0  # L2 penalty added to the gradient of the summed loss
    kl_estimator: str = "analytic"  # --kl: "analytic" (closed form) or "sampled"
    ema_decay: float = 0.0  # evaluate and keep a moving average of the weights (0: off)
    annealing_epochs: int = 1000  # epochs over which the KL factor rises to 1
    minimum_annealing_factor: float = 0.2  # the KL factor's start (annealing_factor)
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
    rnn_dropout: float = 0.0  # dropout between stacked RNN layers (rnn_layers > 1)
    num_iafs: int = 0  # inverse autoregressive flows in the guide
    iaf_dim: int = 100  # hidden units of each flow's network
    guide: str = "st-r"  # inference network: st-r, st-l, st-lr, mf-l or mf-lr

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
            guide=self.guide,
        )


# Settings whose flag is not their field's name: --kl sets kl_estimator, a mode
# string (ELBOTerms.kl is a tensor). Checkpoints written before the rename
# store the setting as "kl"; reading them maps it back through this table.
FLAG_NAMES = {"kl_estimator": "kl"}

# Flags with a fixed set of values: the parser lists them and refuses others.
FLAG_CHOICES = {
    "kl_estimator": ("analytic", "sampled"),
    "device": DEVICES,
    "guide": GUIDES,
}

# Flags that may change when a run is resumed; any other change is an error,
# because the continued run would no longer be the run that was started.
RESUMABLE_CHANGES = frozenset(
    {"epochs", "device", "eval_every", "eval_batch_size", "progress", "out"}
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
    """Raise a ``ValueError`` naming the flag, for settings no run can use."""
    kl_choices = FLAG_CHOICES["kl_estimator"]
    if config.kl_estimator not in kl_choices:
        raise ValueError(
            f"--kl must be {' or '.join(map(repr, kl_choices))}, "
            f"got {config.kl_estimator!r}"
        )
    finite_number(
        "--ema-decay",
        config.ema_decay,
        minimum=0.0,
        maximum=1.0,
        include_maximum=False,
    )
    positive_int("--batch-size", config.batch_size)
    positive_int("--eval-batch-size", config.eval_batch_size)
    positive_int("--max-bad-steps", config.max_bad_steps)
    if config.epochs < 0 or config.eval_every < 0:
        raise ValueError(
            "--epochs and --eval-every must be >= 0, "
            f"got {config.epochs} and {config.eval_every}"
        )


def merge_resumed_config(stored: dict[str, Any], given: TrainConfig) -> TrainConfig:
    """The settings of a resumed run: the checkpoint's, and what may change.

    ``stored`` is the checkpoint's ``train_config``; ``given`` the settings of
    this invocation. A flag outside :data:`RESUMABLE_CHANGES` given with a
    value other than the stored one is a :class:`CheckpointError` (the
    checkpoint's model or schedule would not match); the resumable flags
    keep the run's own values unless given, so that ``--resume --out DIR``
    alone continues the run as it was started. Where the checkpoint was
    found and the device are always this invocation's.
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
    defaults = TrainConfig()
    changed = [
        f"{flag_of(name)} {getattr(stored_config, name)!r} -> {getattr(given, name)!r}"
        for name in known - RESUMABLE_CHANGES
        if getattr(stored_config, name) != getattr(given, name)
        and getattr(given, name) != getattr(defaults, name)
    ]
    if changed:
        raise CheckpointError(
            "cannot resume with different settings (the checkpoint's model or "
            "schedule would not match): " + ", ".join(sorted(changed))
        )
    overrides = {
        name: getattr(given, name)
        for name in RESUMABLE_CHANGES
        if name in ("out", "device") or getattr(given, name) != getattr(defaults, name)
    }
    return dataclasses.replace(stored_config, **overrides)


@torch.no_grad()
def evaluate_bound(
    model: DMM, sequences: Sequence[torch.Tensor], batch_size: int = 100
) -> float:
    """The negative ELBO per time step (nats), ``beta = 1``, dropout off.

    The number papers report, estimated with one draw per sequence.
    """
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
    continues from ``config.out/checkpoint.pt``. The files of the run are
    :attr:`folder`'s (a :class:`~dmm_helpers.checkpoint.RunFolder`).
    """

    def __init__(self, config: TrainConfig, *, resume: bool = False) -> None:
        self.folder = RunFolder(config.out)
        self.device = resolve_device(config.device)
        saved = self.folder.training_state(self.device) if resume else None
        if saved is not None:
            config = merge_resumed_config(saved["train_config"], config)
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
            self.folder.resume_log(self.step)
        else:
            self.folder.start(config.command())
        self.folder.remove_stale_temporaries()

    @property
    def checkpoint_path(self) -> Path:
        """Where :meth:`save_checkpoint` writes: ``checkpoint.pt`` of the run."""
        return self.folder.checkpoint

    def _restore(self, saved: dict[str, Any]) -> None:
        stored = DMMConfig.from_dict(saved["model_config"])
        if stored != self.model.config:
            raise CheckpointError(
                f"{self.checkpoint_path} is for the model {stored}, "
                f"not {self.model.config}"
            )
        load_weights(self.model, saved["model"], self.checkpoint_path)
        if self.averaged is not None:
            if saved.get("averaged") is None:
                raise CheckpointError(
                    f"{self.checkpoint_path} holds no moving average of the weights, "
                    f"but the run has --ema-decay {self.config.ema_decay}"
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
        self.folder.append_record(record)
        valid = record.get("valid_bound")
        if valid is not None and valid < self.best_valid:
            self.best_valid = valid
            self.save_best(valid)
        return record

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


def parse_args(argv: Sequence[str] | None = None) -> tuple[TrainConfig, bool]:
    """The command line: one flag per :class:`TrainConfig` field, and ``--resume``."""
    parser = argparse.ArgumentParser(
        prog="python -m dmm_helpers.train",
        description="Train a deep Markov model with the vectorised ELBO (chapter 06).",
    )
    defaults = TrainConfig()
    for field in dataclasses.fields(TrainConfig):
        flag = flag_of(field.name)
        default = getattr(defaults, field.name)
        if isinstance(default, bool):
            parser.add_argument(
                flag,
                dest=field.name,
                action=argparse.BooleanOptionalAction,
                default=default,
            )
        else:
            parser.add_argument(
                flag,
                dest=field.name,
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
