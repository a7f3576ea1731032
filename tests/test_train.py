"""Tests of the trainer and its checkpoints: exact resumption, atomic files, errors.

The central promise of the training command is that a run killed in any way
and continued with ``--resume`` ends with exactly the parameters of a run
that was never interrupted (same seed, CPU). The tests check it the hard way:
the real command in a subprocess, killed with SIGKILL or SIGTERM at a moment
the test does not choose, then resumed, and every tensor of the final
checkpoint (weights, optimiser moments, RNG state) compared with
``torch.equal``, and every record of the log compared except the wall-clock.
Everything runs on a model with a few hundred parameters and a handful of
short sequences written to a JSON file in the JSB format.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from dmm_fixtures import require_jsb

from dmm_helpers import checkpoint, train
from dmm_helpers.checkpoint import (
    CheckpointError,
    RunFolder,
    load_checkpoint,
    load_model,
)
from dmm_helpers.data import make_batch
from dmm_helpers.devices import resolve_device
from dmm_helpers.dmm import DMM, GUIDES
from dmm_helpers.evaluate import main as evaluate_main
from dmm_helpers.train import (
    FLAG_GROUPS,
    PRESETS,
    NonFiniteLossError,
    TrainConfig,
    Trainer,
    annealing_factor,
    build_parser,
    evaluate_bound,
    flag_of,
    merge_resumed_config,
    parse_args,
    parse_command_line,
)

# Six training sequences in mini-batches of two: three steps per epoch, so a
# signal can land before, inside or at the end of an epoch.
NUM_TRAIN, BATCH_SIZE = 6, 2
STEPS_PER_EPOCH = NUM_TRAIN // BATCH_SIZE
EPOCHS = 30  # of the subprocess runs: long enough to be killed mid-run
# A tiny model and a schedule in which every step matters: the KL factor
# changes at each step for five epochs, and the learning rate decays.
TINY = {
    "batch_size": BATCH_SIZE,
    "eval_every": 2,
    "z_dim": 4,
    "emission_dim": 8,
    "transition_dim": 8,
    "rnn_dim": 16,
    "annealing_epochs": 5,
    "learning_rate": 3e-3,
    "seed": 3,
    "device": "cpu",
    "progress": False,
}
LOG_KEYS = {
    "epoch",
    "step",
    "train_loss",
    "annealing_factor",
    "learning_rate",
    "elapsed_s",
    "skipped_steps",
    "valid_bound",
    "test_bound",
}
SUBPROCESS_ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "CI": "true",
}
SUBPROCESS_TIMEOUT_S = 120


def flags(settings: dict) -> list[str]:
    """``{"z_dim": 4, "progress": False}`` -> ``["--z-dim", "4", "--no-progress"]``."""
    argv = []
    for name, value in settings.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        else:
            argv += [flag, str(value)]
    return argv


def write_tiny_jsb(path: Path, seed: int = 0) -> Path:
    """A JSB-format JSON file: 6/3/2 sequences of 3-8 steps of 0-4 notes each."""
    rng = random.Random(seed)

    def sequence() -> list[list[int]]:
        return [
            sorted(rng.sample(range(48, 80), rng.randint(0, 4)))
            for _ in range(rng.randint(3, 8))
        ]

    splits = {"train": NUM_TRAIN, "valid": 3, "test": 2}
    path.write_text(
        json.dumps(
            {split: [sequence() for _ in range(n)] for split, n in splits.items()}
        )
    )
    return path


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return write_tiny_jsb(tmp_path_factory.mktemp("data") / "tiny.json")


@pytest.fixture
def config(tiny_data, tmp_path) -> TrainConfig:
    """The tiny run, in process, for one epoch with an evaluation after it."""
    return TrainConfig(
        **{**TINY, "eval_every": 1},
        data=str(tiny_data),
        out=str(tmp_path / "run"),
        epochs=1,
    )


def command(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "dmm_helpers.train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--epochs",
        str(EPOCHS),
        *flags(TINY),
        *extra,
    ]


def run_training(data: Path, out: Path, *extra: str) -> None:
    result = subprocess.run(
        command(data, out, *extra),
        env=SUBPROCESS_ENV,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr


def start_and_stop(data: Path, out: Path, signum: int) -> tuple[int, str]:
    """Run the command, send ``signum`` after its first epoch; return (code, stderr)."""
    process = subprocess.Popen(
        command(data, out),
        env=SUBPROCESS_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
    # checkpoint.pt appears (atomically) at the end of the first epoch.
    while not (out / "checkpoint.pt").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(
                "training ended before its first checkpoint: "
                f"{process.communicate()[1]}"
            )
        time.sleep(0.002)
    assert process.poll() is None, "the run finished before it could be interrupted"
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=SUBPROCESS_TIMEOUT_S)
    return process.returncode, stderr


def log_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def without_clock(records: list[dict]) -> list[dict]:
    return [
        {key: value for key, value in record.items() if key != "elapsed_s"}
        for record in records
    ]


def assert_state_dicts_equal(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(actual[name], value), name


def assert_same_run(actual: Path, expected: Path) -> None:
    """Final checkpoints, best models and logs of two runs agree (wall-clock aside)."""
    got, want = (
        load_checkpoint(actual / "checkpoint.pt"),
        load_checkpoint(expected / "checkpoint.pt"),
    )
    assert_state_dicts_equal(got["model"], want["model"])
    assert (got["averaged"] is None) == (want["averaged"] is None)
    if want["averaged"] is not None:
        assert_state_dicts_equal(got["averaged"], want["averaged"])
    got_opt, want_opt = got["optimizer"], want["optimizer"]
    assert (
        got_opt["param_groups"] == want_opt["param_groups"]
    )  # the decayed learning rate too
    assert got_opt["state"].keys() == want_opt["state"].keys()
    for index, state in want_opt["state"].items():
        assert got_opt["state"][index]["step"] == state["step"]
        for moment in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(got_opt["state"][index][moment], state[moment]), (
                index,
                moment,
            )
    assert torch.equal(got["rng"]["torch"], want["rng"]["torch"])
    for key in ("epoch", "step", "batch_in_epoch", "skipped_steps", "best_valid"):
        assert got[key] == want[key], key
    assert {**got["train_config"], "out": None} == {**want["train_config"], "out": None}
    got_best, want_best = (
        torch.load(actual / "best.pt"),
        torch.load(expected / "best.pt"),
    )
    assert_state_dicts_equal(got_best["model"], want_best["model"])
    assert (got_best["epoch"], got_best["valid_bound"]) == (
        want_best["epoch"],
        want_best["valid_bound"],
    )
    assert without_clock(log_records(actual)) == without_clock(log_records(expected))


@pytest.fixture(scope="module")
def uninterrupted(tiny_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    run_training(tiny_data, out)
    return out


# ----------------------------------------------------------------------------
# Exact resumption after SIGKILL, SIGTERM and SIGINT
# ----------------------------------------------------------------------------


def test_uninterrupted_run_writes_one_record_per_evaluation_and_keeps_the_best(
    uninterrupted,
):
    records = log_records(uninterrupted)
    assert [r["epoch"] for r in records] == list(range(2, EPOCHS + 1, 2))
    assert all(r.keys() == LOG_KEYS for r in records)
    assert [r["step"] for r in records] == [
        r["epoch"] * STEPS_PER_EPOCH for r in records
    ]
    assert all(math.isfinite(r[key]) for r in records for key in LOG_KEYS)
    best = torch.load(uninterrupted / "best.pt")
    argmin = min(records, key=lambda r: r["valid_bound"])
    assert (best["epoch"], best["valid_bound"]) == (
        argmin["epoch"],
        argmin["valid_bound"],
    )
    final = load_checkpoint(uninterrupted / "checkpoint.pt")
    assert (final["epoch"], final["step"], final["batch_in_epoch"]) == (
        EPOCHS,
        EPOCHS * STEPS_PER_EPOCH,
        0,
    )
    assert final["best_valid"] == argmin["valid_bound"]
    assert sorted(p.name for p in uninterrupted.iterdir()) == [
        ".lock",  # the run folder's lock, which the run held while it wrote
        "best.pt",
        "checkpoint.pt",
        "command.txt",
        "log.jsonl",
    ]


def test_sigkill_then_resume_ends_exactly_as_an_uninterrupted_run(
    uninterrupted, tiny_data, tmp_path
):
    out = tmp_path / "killed"
    code, _ = start_and_stop(tiny_data, out, signal.SIGKILL)
    assert code == -signal.SIGKILL
    killed = load_checkpoint(out / "checkpoint.pt")
    assert 1 <= killed["epoch"] < EPOCHS and killed["batch_in_epoch"] == 0

    # Resuming really continues from the checkpoint: a run restarted from
    # scratch with the same seed would also end equal, so check that it does not.
    config, resume = parse_args([*command(tiny_data, out)[3:], "--resume"])
    trainer = Trainer(config, resume=resume)
    assert (trainer.epoch, trainer.step) == (
        killed["epoch"],
        killed["epoch"] * STEPS_PER_EPOCH,
    )
    assert_state_dicts_equal(trainer.model.state_dict(), killed["model"])
    torch.manual_seed(config.seed)
    initial = DMM(config.model_config()).state_dict()
    assert any(
        not torch.equal(initial[name], value) for name, value in killed["model"].items()
    )
    trainer.close()  # the folder's lock: the command below resumes the run

    run_training(tiny_data, out, "--resume")
    assert_same_run(out, uninterrupted)


def test_sigterm_saves_mid_epoch_and_resume_ends_exactly_as_an_uninterrupted_run(
    uninterrupted, tiny_data, tmp_path
):
    out = tmp_path / "terminated"
    code, stderr = start_and_stop(tiny_data, out, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM
    assert f"Stopped by signal {int(signal.SIGTERM)}" in stderr
    assert f"resume with --resume --out {out}" in stderr
    stopped = load_checkpoint(out / "checkpoint.pt")
    # Saved at the step after the signal, not at an epoch's end.
    assert 1 <= stopped["batch_in_epoch"] <= STEPS_PER_EPOCH
    assert (
        stopped["step"]
        == stopped["epoch"] * STEPS_PER_EPOCH + stopped["batch_in_epoch"]
    )
    assert stopped["epoch"] < EPOCHS
    # The command the message prints is enough: the checkpoint knows the rest
    # (--device only because a GPU, where present, would be chosen otherwise).
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dmm_helpers.train",
            "--resume",
            "--out",
            str(out),
            "--device",
            "cpu",
        ],
        env=SUBPROCESS_ENV,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr
    assert_same_run(out, uninterrupted)


def test_sigint_saves_a_checkpoint_at_the_next_step_and_restores_the_handlers(
    config, monkeypatch
):
    trainer = Trainer(dataclasses.replace(config, epochs=3))
    real_step = Trainer.train_step

    def step_then_interrupt(self, batch, beta):
        loss = real_step(self, batch, beta)
        if self.step == STEPS_PER_EPOCH + 1:  # the second step of the second epoch
            os.kill(os.getpid(), signal.SIGINT)
        return loss

    monkeypatch.setattr(Trainer, "train_step", step_then_interrupt)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(SystemExit) as stop:
        trainer.run()
    assert stop.value.code == 128 + signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is handler
    saved = load_checkpoint(trainer.checkpoint_path)
    assert (saved["epoch"], saved["batch_in_epoch"], saved["step"]) == (
        1,
        2,
        STEPS_PER_EPOCH + 2,
    )
    assert_state_dicts_equal(saved["model"], trainer.model.state_dict())


def test_resume_after_the_last_batch_of_an_epoch_logs_the_whole_epochs_loss(
    config, tmp_path, monkeypatch
):
    """A signal at an epoch's last step: the resumed epoch has no batches left.

    Its loss is known all the same.
    """
    reference = Trainer(
        dataclasses.replace(config, epochs=2, out=str(tmp_path / "ref"))
    )
    expected = reference.run()

    stopped = Trainer(dataclasses.replace(config, epochs=2))
    real_step = Trainer.train_step

    def step_then_terminate(self, batch, beta):
        loss = real_step(self, batch, beta)
        if self.step == 2 * STEPS_PER_EPOCH - 1:  # the last step of the second epoch
            self.stop_signal = signal.SIGTERM
        return loss

    monkeypatch.setattr(Trainer, "train_step", step_then_terminate)
    with pytest.raises(SystemExit):
        stopped.run()
    monkeypatch.undo()
    assert load_checkpoint(stopped.checkpoint_path)["batch_in_epoch"] == STEPS_PER_EPOCH
    resumed = Trainer(dataclasses.replace(config, epochs=2), resume=True)
    records = resumed.run()
    assert without_clock(records) == without_clock(expected[1:])
    assert without_clock(log_records(Path(config.out))) == without_clock(expected)


def test_resume_drops_log_records_written_after_the_checkpoint(config):
    first = Trainer(config)
    first.run()
    epoch_one = first.checkpoint_path.read_bytes()
    Trainer(dataclasses.replace(config, epochs=2), resume=True).run()
    expected = log_records(Path(config.out))
    # As if killed after logging epoch 2 but before its checkpoint was saved,
    # while the log line of a later evaluation was half written.
    first.checkpoint_path.write_bytes(epoch_one)
    with open(Path(config.out) / "log.jsonl", "a") as handle:
        handle.write('{"epoch": 3, "st')
    Trainer(dataclasses.replace(config, epochs=2), resume=True).run()
    records = log_records(Path(config.out))
    assert [r["epoch"] for r in records] == [1, 2]
    assert without_clock(records) == without_clock(expected)


def test_a_run_with_flows_resumes_exactly_too(config, tmp_path):
    flows = dataclasses.replace(config, num_iafs=1, iaf_dim=8, epochs=3)
    Trainer(dataclasses.replace(flows, out=str(tmp_path / "whole"))).run()
    Trainer(dataclasses.replace(flows, epochs=1)).run()
    Trainer(flows, resume=True).run()
    weights = load_checkpoint(Path(config.out) / "checkpoint.pt")["model"]
    assert any(name.startswith("iaf_nets") for name in weights)
    assert_same_run(Path(config.out), tmp_path / "whole")


def test_the_moving_average_resumes_exactly_and_is_what_is_evaluated_and_kept(
    config, tmp_path
):
    averaged = dataclasses.replace(config, ema_decay=0.9, epochs=3)
    Trainer(dataclasses.replace(averaged, out=str(tmp_path / "whole"))).run()
    Trainer(dataclasses.replace(averaged, epochs=1)).run()
    Trainer(averaged, resume=True).run()
    assert_same_run(Path(config.out), tmp_path / "whole")
    state = load_checkpoint(Path(config.out) / "checkpoint.pt")
    # The average is a different set of weights from the trained ones ...
    trained, average = state["model"], state["averaged"]
    assert int(average["n_averaged"]) == 3 * STEPS_PER_EPOCH
    assert any(
        not torch.equal(average[f"module.{name}"], value)
        for name, value in trained.items()
    )
    # ... and best.pt holds the average at its epoch: here the last, if it is the best.
    best = torch.load(Path(config.out) / "best.pt")
    if best["epoch"] == 3:
        for name, value in best["model"].items():
            assert torch.equal(value, average[f"module.{name}"]), name


def test_the_moving_average_follows_its_formula(config):
    # After each step: average <- decay * average + (1 - decay) * weights,
    # starting from the weights after the first step.
    decay = 0.7
    trainer = Trainer(dataclasses.replace(config, ema_decay=decay))
    batches = list(train.minibatches(trainer.train_set, config.batch_size, seed=0))
    expected = None
    for batch in batches:
        assert trainer.train_step(batch, 1.0) is not None
        weights = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        expected = (
            weights
            if expected is None
            else {n: decay * expected[n] + (1 - decay) * weights[n] for n in weights}
        )
    got = dict(trainer.evaluated_model.named_parameters())
    for name, value in expected.items():
        assert torch.allclose(got[name], value, atol=1e-6), name
    assert trainer.evaluated_model is not trainer.model


def test_resuming_an_averaged_run_without_its_average_is_a_checkpoint_error(config):
    Trainer(dataclasses.replace(config, ema_decay=0.5)).run()
    path = Path(config.out) / "checkpoint.pt"
    state = torch.load(path)
    state["averaged"] = None
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="no moving average"):
        Trainer(dataclasses.replace(config, ema_decay=0.5), resume=True)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"kl_estimator": "exact"}, "--kl must be one of analytic, sampled"),
        ({"ema_decay": 1.0}, "--ema-decay must be a finite number >= 0 and < 1"),
        ({"batch_size": 0}, "--batch-size must be an integer >= 1, got 0"),
        ({"eval_batch_size": 0}, "--eval-batch-size must be an integer >= 1"),
        ({"epochs": 0}, "--epochs must be an integer >= 1, got 0"),
        ({"eval_every": -1}, "--eval-every must be an integer >= 0, got -1"),
        ({"learning_rate": math.nan}, "--learning-rate must be a finite number > 0"),
        ({"seed": 2**32}, "--seed must be an integer >= 0 and <= 4294967295"),
        ({"data": ""}, "--data must be a name or a path"),
        ({"progress": "no"}, "--progress must be True or False"),
        ({"rnn_dropout": 0.5}, "rnn_dropout .* needs rnn_layers > 1"),
    ],
)
def test_unusable_flags_are_refused_by_name(config, changes, message):
    with pytest.raises(ValueError, match=message):
        Trainer(dataclasses.replace(config, **changes))
    assert not Path(config.out).exists()  # nothing written


def test_the_sampled_kl_flag_trains_on_trace_elbos_estimator(config, monkeypatch):
    seen = []
    real = train.elbo

    def elbo(model, batch, annealing_factor=1.0, kl_estimator="analytic", **kwargs):
        seen.append(kl_estimator)
        return real(model, batch, annealing_factor, kl_estimator, **kwargs)

    monkeypatch.setattr(train, "elbo", elbo)
    Trainer(dataclasses.replace(config, kl_estimator="sampled", eval_every=0)).run()
    assert seen and set(seen) == {"sampled"}


def test_resume_of_a_finished_run_changes_nothing(config):
    Trainer(config).run()
    before = (Path(config.out) / "checkpoint.pt").read_bytes()
    assert Trainer(config, resume=True).run() == []
    assert (Path(config.out) / "checkpoint.pt").read_bytes() == before


# ----------------------------------------------------------------------------
# Atomic checkpoint writes
# ----------------------------------------------------------------------------


def test_a_failed_save_leaves_the_previous_checkpoint_and_no_temporary_file(
    config, monkeypatch
):
    trainer = Trainer(config)
    trainer.run()
    out = Path(config.out)
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    real_save = torch.save

    def save_half_then_fail(obj, handle):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    trainer.step += 1  # something new to save
    with pytest.raises(OSError, match="No space left"):
        trainer.save_checkpoint()
    with pytest.raises(OSError, match="No space left"):
        trainer.save_best(0.0)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files
    assert load_checkpoint(out / "checkpoint.pt")["step"] == STEPS_PER_EPOCH
    load_model(out / "best.pt")


KILL_DURING_SAVE = textwrap.dedent(
    """
    import io, json, os, signal, sys
    import torch
    from dmm_helpers.train import TrainConfig, Trainer

    trainer = Trainer(TrainConfig(**json.loads(sys.argv[1])))
    trainer.run()  # one epoch: a good checkpoint.pt
    real_save = torch.save

    def save_half_then_die(obj, handle):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        handle.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = save_half_then_die
    trainer.step += 1
    trainer.save_checkpoint()
    """
)


def test_sigkill_during_a_save_leaves_the_previous_checkpoint_intact(config):
    settings = dataclasses.asdict(config)
    result = subprocess.run(
        [sys.executable, "-c", KILL_DURING_SAVE, json.dumps(settings)],
        env=SUBPROCESS_ENV,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    out = Path(config.out)
    leftovers = list(out.glob(".checkpoint.pt.*.part"))
    assert len(leftovers) == 1  # the kill really landed inside the write
    full_size = (out / "checkpoint.pt").stat().st_size
    assert 0 < leftovers[0].stat().st_size < full_size
    saved = load_checkpoint(out / "checkpoint.pt")
    assert (saved["epoch"], saved["step"]) == (1, STEPS_PER_EPOCH)
    # The next run in the folder clears the dead save's temporary file.
    trainer = Trainer(config, resume=True)
    assert trainer.step == STEPS_PER_EPOCH
    assert not [p for p in out.iterdir() if p.name.endswith(".part")]


# ----------------------------------------------------------------------------
# Corrupt, foreign and incompatible checkpoints
# ----------------------------------------------------------------------------


@pytest.fixture
def trained(config) -> Path:
    """The folder of a finished one-epoch run."""
    Trainer(config).run()
    return Path(config.out)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda raw: raw[: len(raw) // 2], id="truncated"),
        pytest.param(lambda raw: raw[:100], id="truncated-header"),
        pytest.param(lambda raw: b"", id="empty"),
        pytest.param(
            lambda raw: random.Random(0).randbytes(len(raw)), id="random-bytes"
        ),
        pytest.param(lambda raw: raw[:-200] + bytes(200), id="zeroed-tail"),
    ],
)
def test_a_corrupt_checkpoint_is_a_checkpoint_error(trained, config, damage):
    path = trained / "checkpoint.pt"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(
        CheckpointError, match=r"checkpoint\.pt is not a readable checkpoint"
    ):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt"):
        Trainer(config, resume=True)


def test_a_missing_checkpoint_is_a_checkpoint_error(tmp_path, config):
    with pytest.raises(CheckpointError, match="no checkpoint at .*nothing.pt"):
        load_checkpoint(tmp_path / "nothing.pt")
    with pytest.raises(CheckpointError, match="no checkpoint at .*checkpoint.pt"):
        Trainer(config, resume=True)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(
            {"weight": torch.zeros(3)},
            "is not a dmm_helpers checkpoint: it holds a dict without 'format'",
            id="state-dict",
        ),
        pytest.param(
            {"format": 2, "model": {}, "versions": {"dmm_helpers": "9.0"}},
            r"is a checkpoint of format 2 \(written by dmm_helpers 9.0\), but "
            r"dmm_helpers \S+ reads format 1",
            id="other-format",
        ),
        pytest.param(
            torch.zeros(3),
            "is not a dmm_helpers checkpoint: it holds a Tensor",
            id="tensor",
        ),
        pytest.param(
            [1, 2, 3], "is not a dmm_helpers checkpoint: it holds a list", id="list"
        ),
    ],
)
def test_a_torch_file_of_something_else_is_a_checkpoint_error(
    tmp_path, content, message
):
    path = tmp_path / "other.pt"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match=r"other\.pt " + message):
        load_checkpoint(path)


def test_a_pickled_module_is_refused_without_running_its_code(tmp_path):
    path = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), path)  # a whole pickled object, not weights
    with pytest.raises(
        CheckpointError, match=r"module\.pt is not a readable checkpoint"
    ):
        load_checkpoint(path)


def test_resuming_with_another_model_size_names_the_flag(trained, config):
    with pytest.raises(CheckpointError, match=r"--z-dim 4 -> 6"):
        Trainer(dataclasses.replace(config, z_dim=6), resume=True)
    with pytest.raises(CheckpointError, match=r"--rnn-dim 16 -> 32.*--seed 3 -> 4"):
        Trainer(dataclasses.replace(config, rnn_dim=32, seed=4), resume=True)


def test_resuming_may_change_the_epochs_and_keeps_the_stored_settings(trained, config):
    # Flags left at their defaults take the checkpoint's values (z_dim 4, not 100;
    # eval_every 1, not 10), so `--resume --out DIR` alone continues the run as it was.
    bare = Trainer(TrainConfig(out=config.out), resume=True)
    assert bare.config == dataclasses.replace(config, device="auto")
    longer = Trainer(
        dataclasses.replace(TrainConfig(), out=config.out, epochs=2), resume=True
    )
    assert longer.config == dataclasses.replace(config, device="auto", epochs=2)
    assert longer.model.config.z_dim == 4


def test_weights_of_another_size_name_the_mismatching_tensors(trained):
    state = torch.load(trained / "best.pt")
    state["model_config"]["z_dim"] = 5
    torch.save(state, trained / "best.pt")
    with pytest.raises(
        CheckpointError, match=r"different model: .*z_0 \(4,\) vs \(5,\)"
    ):
        load_model(trained / "best.pt")


def test_weights_with_missing_or_unexpected_tensors_are_named(trained):
    state = torch.load(trained / "best.pt")
    state["model"]["extra.weight"] = state["model"].pop("z_q_0")
    torch.save(state, trained / "best.pt")
    with pytest.raises(
        CheckpointError, match=r"missing \['z_q_0'\], unexpected \['extra.weight'\]"
    ):
        load_model(trained / "best.pt")


def test_a_model_config_that_disagrees_with_the_flags_is_refused_on_resume(
    trained, config
):
    path = trained / "checkpoint.pt"
    state = torch.load(path)
    state["model_config"]["rnn_dim"] = 17
    torch.save(state, path)
    with pytest.raises(
        CheckpointError,
        match=r"checkpoint\.pt is for another model .*: rnn_dim 17 \(stored\) vs 16$",
    ):
        Trainer(config, resume=True)


def test_unusable_stored_configs_are_checkpoint_errors(trained, config):
    best = torch.load(trained / "best.pt")
    del best["model_config"]
    torch.save(best, trained / "best.pt")
    with pytest.raises(CheckpointError, match="stored model config is not usable"):
        load_model(trained / "best.pt")
    state = torch.load(trained / "checkpoint.pt")
    state["train_config"]["momentum"] = 0.9
    torch.save(state, trained / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=r"unknown flags \['momentum'\]"):
        Trainer(config, resume=True)


def test_resuming_from_best_pt_says_it_holds_no_training_state(trained, config):
    os.replace(trained / "best.pt", trained / "checkpoint.pt")
    with pytest.raises(
        CheckpointError, match=r"no training state .*'optimizer'.*needs checkpoint\.pt"
    ):
        Trainer(config, resume=True)


def test_load_model_restores_the_best_weights_in_evaluation_mode(trained, config):
    best = torch.load(trained / "best.pt")
    model = load_model(trained / "best.pt")
    assert not model.training
    assert_state_dicts_equal(model.state_dict(), best["model"])
    assert (best["data"], best["versions"]) == (config.data, checkpoint.versions())


# ----------------------------------------------------------------------------
# The non-finite guard
# ----------------------------------------------------------------------------


def nan_on_calls(monkeypatch, bad_calls) -> list[float]:
    """Make ``train.elbo`` NaN on the given calls (0-based); returns its betas."""
    real_elbo = train.elbo
    betas = []

    def elbo(model, batch, annealing_factor=1.0, *args, **kwargs):
        value = real_elbo(model, batch, annealing_factor, *args, **kwargs)
        if model.training:  # evaluations run in eval mode and stay untouched
            betas.append(annealing_factor)
            if len(betas) - 1 in bad_calls:
                return value * math.nan  # still a graph: backward() would run
        return value

    monkeypatch.setattr(train, "elbo", elbo)
    return betas


def test_a_nan_loss_is_skipped_and_leaves_parameters_and_optimiser_untouched(
    config, monkeypatch
):
    trainer = Trainer(config)
    trainer.model.train()
    batch = make_batch(trainer.train_set[:BATCH_SIZE])
    weights = copy.deepcopy(trainer.model.state_dict())
    optimiser = copy.deepcopy(trainer.optimizer.state_dict())
    nan_on_calls(monkeypatch, {0})
    assert trainer.train_step(batch, 0.5) is None
    assert_state_dicts_equal(trainer.model.state_dict(), weights)
    assert trainer.optimizer.state_dict() == optimiser  # no moments, lr not decayed
    assert all(p.grad is None for p in trainer.model.parameters())
    assert (trainer.skipped_steps, trainer.bad_in_a_row) == (1, 1)
    loss = trainer.train_step(batch, 0.5)  # a good step resets the run of bad ones
    assert loss is not None and math.isfinite(loss)
    assert (trainer.skipped_steps, trainer.bad_in_a_row) == (1, 0)
    assert not torch.equal(trainer.model.z_0, weights["z_0"])


def test_a_nan_gradient_with_a_finite_loss_is_skipped(config, monkeypatch):
    trainer = Trainer(config)
    batch = make_batch(trainer.train_set[:BATCH_SIZE])
    weights = copy.deepcopy(trainer.model.state_dict())
    real_elbo = train.elbo

    def elbo_with_nan_gradient(model, batch, *args, **kwargs):
        # 0 * sqrt(0 * z_0): the value is 0, its gradient 0 * inf = NaN.
        return real_elbo(model, batch, *args, **kwargs) + 0.0 * torch.sqrt(
            model.z_0.sum() * 0.0
        )

    monkeypatch.setattr(train, "elbo", elbo_with_nan_gradient)
    assert trainer.train_step(batch, 1.0) is None
    assert_state_dicts_equal(trainer.model.state_dict(), weights)
    assert trainer.skipped_steps == 1


def test_scattered_nan_steps_are_counted_and_training_goes_on(config, monkeypatch):
    bad = {1, 2, 4, 5}  # never three in a row
    betas = nan_on_calls(monkeypatch, bad)
    trainer = Trainer(dataclasses.replace(config, epochs=3, max_bad_steps=3))
    records = trainer.run()
    assert len(betas) == 3 * STEPS_PER_EPOCH
    assert [r["skipped_steps"] for r in records] == [2, 4, 4]
    assert load_checkpoint(trainer.checkpoint_path)["skipped_steps"] == len(bad)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_continual_nan_losses_stop_the_run_and_keep_the_last_good_checkpoint(
    config, monkeypatch
):
    config = dataclasses.replace(config, max_bad_steps=4)
    Trainer(config).run()
    good = load_checkpoint(Path(config.out) / "checkpoint.pt")
    nan_on_calls(monkeypatch, set(range(1000)))
    trainer = Trainer(dataclasses.replace(config, epochs=5), resume=True)
    handler = signal.getsignal(signal.SIGTERM)
    message = (
        r"4 steps in a row gave a non-finite loss .*intact.*"
        "a new run with a smaller --learning-rate"
    )
    with pytest.raises(NonFiniteLossError, match=message):
        trainer.run()
    assert signal.getsignal(signal.SIGTERM) is handler
    # The epoch of skipped steps was saved; the NaNs never reached the weights.
    last = load_checkpoint(Path(config.out) / "checkpoint.pt")
    assert (last["epoch"], last["skipped_steps"]) == (2, STEPS_PER_EPOCH)
    assert_state_dicts_equal(last["model"], good["model"])
    assert all(torch.isfinite(v).all() for v in last["model"].values())
    monkeypatch.undo()
    assert Trainer(config, resume=True).epoch == 2


# ----------------------------------------------------------------------------
# Schedule, devices, data, log, command line
# ----------------------------------------------------------------------------


def pyro_example_factor(
    step: int, steps_per_epoch: int, annealing_epochs: int, minimum: float
) -> float:
    """The KL factor as Pyro's ``examples/dmm.py`` computes it, from epoch and batch."""
    epoch, batch = divmod(step, steps_per_epoch)
    if annealing_epochs > 0 and epoch < annealing_epochs:
        return minimum + (1.0 - minimum) * (batch + 1 + epoch * steps_per_epoch) / (
            annealing_epochs * steps_per_epoch
        )
    return 1.0


@pytest.mark.parametrize(
    ("annealing_epochs", "minimum"), [(4, 0.2), (1, 0.0), (3, 0.5), (0, 0.2), (2, 1.0)]
)
def test_annealing_factor_rises_linearly_from_the_minimum_to_one(
    annealing_epochs, minimum
):
    config = TrainConfig(
        annealing_epochs=annealing_epochs, minimum_annealing_factor=minimum
    )
    steps_per_epoch = 7
    factors = [annealing_factor(step, steps_per_epoch, config) for step in range(30)]
    expected = [
        pyro_example_factor(s, steps_per_epoch, annealing_epochs, minimum)
        for s in range(30)
    ]
    assert factors == pytest.approx(expected, abs=1e-12)
    assert max(factors) == 1.0 and factors[-1] == 1.0  # capped, and reached exactly
    if annealing_epochs > 0 and minimum < 1:
        last = (
            annealing_epochs * steps_per_epoch - 1
        )  # the last step of the annealing epochs
        increment = (1 - minimum) / (annealing_epochs * steps_per_epoch)
        assert factors[0] == pytest.approx(minimum + increment)
        assert factors[last] == pytest.approx(1.0) and factors[last - 1] < 1.0
        assert all(
            b - a == pytest.approx(increment)
            for a, b in zip(factors[:last], factors[1 : last + 1])
        )


def test_training_uses_the_schedule_step_by_step_and_logs_it(config, monkeypatch):
    betas = nan_on_calls(monkeypatch, set())
    trainer = Trainer(dataclasses.replace(config, epochs=3, annealing_epochs=2))
    records = trainer.run()
    expected = [
        annealing_factor(s, STEPS_PER_EPOCH, trainer.config)
        for s in range(3 * STEPS_PER_EPOCH)
    ]
    assert betas == expected and betas[-1] == 1.0 and betas[0] < betas[1] < 1.0
    assert [r["annealing_factor"] for r in records] == [
        expected[r["step"] - 1] for r in records
    ]
    decay = trainer.config.lr_decay
    assert records[-1]["learning_rate"] == pytest.approx(
        trainer.config.learning_rate * decay ** (3 * STEPS_PER_EPOCH), rel=1e-12
    )


def test_best_pt_holds_the_weights_of_the_best_validation_bound(config, monkeypatch):
    valid_bounds = iter([5.0, 3.0, 4.0, 3.5])
    weights_at = []

    def fake_bound(model, sequences, batch_size=100, samples=1):
        if sequences is trainer.data["valid"]:
            weights_at.append(copy.deepcopy(model.state_dict()))
            return next(valid_bounds)
        return 9.0

    monkeypatch.setattr(train, "evaluate_bound", fake_bound)
    trainer = Trainer(dataclasses.replace(config, epochs=4))
    records = trainer.run()
    assert [r["valid_bound"] for r in records] == [5.0, 3.0, 4.0, 3.5]
    best = torch.load(Path(config.out) / "best.pt")
    assert (best["epoch"], best["valid_bound"]) == (2, 3.0)
    assert_state_dicts_equal(best["model"], weights_at[1])
    assert load_checkpoint(trainer.checkpoint_path)["best_valid"] == 3.0


def test_a_run_without_validation_data_is_refused_unless_it_never_evaluates(
    tmp_path, config
):
    data = json.loads(Path(config.data).read_text())
    data["valid"] = []
    (tmp_path / "novalid.json").write_text(json.dumps(data))
    novalid = dataclasses.replace(config, data=str(tmp_path / "novalid.json"))
    with pytest.raises(ValueError, match="no validation sequences.*--eval-every 0"):
        Trainer(novalid)
    assert not Path(config.out).exists()
    assert Trainer(dataclasses.replace(novalid, eval_every=0)).run() == []
    assert not (Path(config.out) / "best.pt").exists()


def test_a_fresh_run_starts_a_new_log_and_records_its_command(config):
    Trainer(dataclasses.replace(config, epochs=2)).run()
    Trainer(config).run()  # not --resume: starts over in the same folder
    assert [r["epoch"] for r in log_records(Path(config.out))] == [1]
    command_line, versions = (Path(config.out) / "command.txt").read_text().splitlines()
    assert command_line.startswith("python -m dmm_helpers.train")
    assert json.loads(versions.removeprefix("# ")) == checkpoint.versions()


def test_resolve_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(
        ValueError, match="--device cuda was asked for, but torch sees no CUDA"
    ):
        resolve_device("cuda")
    for name in ("gpu", "CPU", "cuda:0", ""):
        with pytest.raises(
            ValueError, match=r'--device must be "auto", "cpu" or "cuda", got'
        ):
            resolve_device(name)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda") == torch.device("cuda")


def test_parse_args_has_one_flag_per_setting():
    config, resume = parse_args([])
    assert (config, resume) == (TrainConfig(), False)
    config, resume = parse_args(
        flags(TINY) + ["--resume", "--data", "bach", "--num-iafs", "2"]
    )
    assert resume and config == TrainConfig(**TINY, data="bach", num_iafs=2)
    assert config.model_config(88).z_dim == 4 and config.model_config(88).num_iafs == 2
    with pytest.raises(SystemExit):
        parse_args(["--z-dim", "four"])
    with pytest.raises(SystemExit):
        parse_args(["--no-such-flag"])
    assert parse_args(["--kl", "sampled", "--ema-decay", "0.99"])[0] == TrainConfig(
        kl_estimator="sampled", ema_decay=0.99
    )


def test_parse_command_line_tells_the_flags_given_from_those_left_out():
    line = parse_command_line(
        ["--epochs", "5000", "--eval-every", "10", "--no-progress", "--kl", "sampled"]
    )
    assert line.given == {
        "epochs": 5000,
        "eval_every": 10,
        "progress": False,
        "kl_estimator": "sampled",
    }
    assert (line.resume, line.overwrite, line.debug) == (False, False, False)
    assert line.config() == TrainConfig(
        epochs=5000, eval_every=10, progress=False, kl_estimator="sampled"
    )
    assert parse_command_line([]).given == {}
    line = parse_command_line(["--resume", "--debug", "--out", "x"])
    assert (line.given, line.resume, line.overwrite, line.debug) == (
        {"out": "x"},
        True,
        False,
        True,
    )


def test_a_preset_sets_its_flags_and_given_flags_win():
    line = parse_command_line(["--preset", "pyro2017", "--clip-norm", "5"])
    assert line.config() == TrainConfig(
        kl_estimator="sampled",
        learning_rate=4e-4,
        clip_norm=5.0,  # given, over the preset's 20
        weight_decay=0.6,
        minimum_annealing_factor=0.1,
    )
    assert parse_command_line(["--preset", "pyro"]).config() == TrainConfig(
        kl_estimator="sampled"
    )
    # command.txt records the resolved values, so it reproduces the run alone.
    command = line.config().command()
    assert "--preset" not in command
    for flag in ("--learning-rate 0.0004", "--clip-norm 5.0", "--kl sampled"):
        assert flag in command
    for name, values in PRESETS.items():
        assert TrainConfig(**values) == parse_command_line(["--preset", name]).config()


def test_an_unknown_preset_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as stopped:
        parse_command_line(["--preset", "krishnan"])
    assert stopped.value.code == 2
    assert "invalid choice: 'krishnan'" in capsys.readouterr().err


def test_resume_takes_a_flag_given_at_its_default_value(config):
    """The bug of issue 14: ``--epochs 5000`` (the default) was taken as not given."""
    stored = dataclasses.asdict(
        dataclasses.replace(config, epochs=1000, eval_every=1, learning_rate=4e-4)
    )
    line = parse_command_line(
        ["--resume", "--out", config.out, "--epochs", "5000", "--eval-every", "10"]
    )
    merged = merge_resumed_config(stored, line.config(), line.given)
    assert (merged.epochs, merged.eval_every) == (5000, 10)
    assert (merged.z_dim, merged.learning_rate) == (config.z_dim, 4e-4)  # the run's
    line = parse_command_line(["--resume", "--learning-rate", "3e-4"])
    with pytest.raises(CheckpointError, match=r"--learning-rate 0.0004 -> 0.0003"):
        merge_resumed_config(stored, line.config(), line.given)
    # From Python, without the names given, a default value reads as not given.
    assert merge_resumed_config(stored, line.config()).epochs == 1000


def test_the_command_says_when_there_is_nothing_to_train_and_resumes_for_more(
    config, capsys
):
    argv = ["--data", config.data, "--out", config.out, "--epochs", "1"]
    argv += flags({**TINY, "eval_every": 1})
    train.main(argv)
    assert json.loads(capsys.readouterr().out)["epoch"] == 1
    resume = ["--resume", "--out", config.out, "--device", "cpu"]
    train.main(resume)
    output = capsys.readouterr()
    assert output.out == ""
    assert "nothing to train: the run in" in output.err
    assert "has done 1 of its 1 epochs; pass --epochs" in output.err
    train.main([*resume, "--epochs", "2"])
    assert json.loads(capsys.readouterr().out)["epoch"] == 2
    assert load_checkpoint(Path(config.out) / "checkpoint.pt")["epoch"] == 2


def test_help_describes_every_flag_in_a_sentence_in_its_group():
    text = build_parser().format_help()
    flat = " ".join(text.split()).replace("- ", "-")  # argparse breaks at hyphens
    headings = [text.index(f"\n{group}:\n") for group in FLAG_GROUPS]
    assert headings == sorted(headings)
    for field in dataclasses.fields(TrainConfig):
        about = field.metadata["help"]
        assert about.endswith(".") and len(about.split()) >= 4, field.name
        assert " ".join(about.split()) in flat, field.name
        heading = text.index(f"\n{field.metadata['group']}:\n")
        following = [h for h in headings if h > heading]
        section = text[heading : min(following, default=len(text))]
        assert f"  {flag_of(field.name)}" in section, field.name
    assert "elementwise clamp" in flat
    for flag in ("--resume", "--overwrite", "--debug"):
        assert f"  {flag} " in text
    assert "exit status: 0 done; 1 a problem" in flat


@pytest.mark.parametrize("argv", [["--kl", "exact"], ["--device", "gpu"]])
def test_flags_with_fixed_values_refuse_others_in_the_parser(argv, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the error on a machine without CUDA"
)
def test_asking_for_cuda_without_a_gpu_fails_before_anything_is_written(config):
    with pytest.raises(ValueError, match="no CUDA device"):
        Trainer(dataclasses.replace(config, device="cuda"))
    assert not Path(config.out).exists()


def test_how_often_a_run_is_evaluated_does_not_change_its_training(config, tmp_path):
    """Evaluation samples from its own seeded generator, not the training RNG."""
    import dataclasses

    often = dataclasses.replace(
        config, out=str(tmp_path / "often"), epochs=3, eval_every=1
    )
    never = dataclasses.replace(
        config, out=str(tmp_path / "never"), epochs=3, eval_every=0
    )
    Trainer(often).run()
    Trainer(never).run()
    state_often = torch.load(tmp_path / "often" / "checkpoint.pt", weights_only=True)
    state_never = torch.load(tmp_path / "never" / "checkpoint.pt", weights_only=True)
    assert_state_dicts_equal(state_often["model"], state_never["model"])
    assert len(log_records(tmp_path / "often")) == 3


def test_the_recorded_command_reproduces_the_settings(config):
    """command.txt is built from the settings, so parsing it back gives the same run."""
    import dataclasses
    import shlex

    from dmm_helpers.train import parse_args

    changed = dataclasses.replace(
        config, num_iafs=1, learning_rate=1e-3, progress=False
    )
    words = shlex.split(changed.command())
    assert words[:3] == ["python", "-m", "dmm_helpers.train"]
    assert "--num-iafs" in words and "--no-progress" in words and "--z-dim" in words
    assert "--beta1" not in words  # left at its default
    parsed, resume = parse_args(words[3:])
    assert parsed == changed and not resume


# ----------------------------------------------------------------------------
# --kl and kl_estimator; checkpoints written before the rename
# ----------------------------------------------------------------------------


def test_the_kl_flag_sets_kl_estimator_and_is_recorded_as_kl():
    config, _ = parse_args(["--kl", "sampled"])
    assert config == TrainConfig(kl_estimator="sampled")
    words = config.command().split()
    assert words[-2:] == ["--kl", "sampled"] and "--kl-estimator" not in words
    assert parse_args(words[3:])[0] == config


def test_a_checkpoint_that_says_kl_resumes_with_its_estimator(config):
    sampled = dataclasses.replace(config, kl_estimator="sampled")
    Trainer(sampled).run()
    path = Path(config.out) / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    stored = state["train_config"]
    stored["kl"] = stored.pop("kl_estimator")  # as written before the rename
    torch.save(state, path)
    resumed = Trainer(dataclasses.replace(TrainConfig(), out=config.out), resume=True)
    assert resumed.config == dataclasses.replace(sampled, device="auto")
    assert merge_resumed_config(stored, sampled).kl_estimator == "sampled"
    with pytest.raises(CheckpointError, match="--kl 'sampled' -> 'exact'"):
        merge_resumed_config(stored, dataclasses.replace(config, kl_estimator="exact"))


def test_the_shipped_training_states_still_resume(tmp_path):
    """pretrained/*/checkpoint.pt load into a Trainer at their epoch, unchanged."""
    require_jsb()
    root = Path(__file__).resolve().parents[1] / "pretrained"
    for folder in sorted(root.glob("*/checkpoint.pt")):
        stored = load_checkpoint(folder)
        out = tmp_path / folder.parent.name
        out.mkdir()
        (out / "checkpoint.pt").write_bytes(folder.read_bytes())
        trainer = Trainer(TrainConfig(out=str(out), device="cpu"), resume=True)
        assert (trainer.epoch, trainer.step) == (stored["epoch"], stored["step"])
        assert_state_dicts_equal(trainer.model.state_dict(), stored["model"])


def test_evaluation_and_the_shipped_models_do_not_import_the_trainer():
    code = (
        "import sys, dmm_helpers.evaluate, dmm_helpers.pretrained; "
        "print('dmm_helpers.train' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=SUBPROCESS_ENV,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
    )
    assert result.stdout.strip() == "False", result.stderr


# ----------------------------------------------------------------------------
# The run folder
# ----------------------------------------------------------------------------


def test_a_run_folder_removes_only_its_own_stale_temporaries(tmp_path):
    folder = RunFolder(tmp_path)
    ours = [tmp_path / f".{name}.x1y2.part" for name in RunFolder.FILES]
    others = [tmp_path / ".notes.txt.x1y2.part", tmp_path / "checkpoint.pt.part"]
    for path in ours + others:
        path.write_bytes(b"partial")
    folder.remove_stale_temporaries()
    assert sorted(tmp_path.iterdir()) == sorted(others)


def test_a_run_folder_keeps_the_log_up_to_the_resumed_step(tmp_path):
    folder = RunFolder(tmp_path)
    folder.start("python -m dmm_helpers.train")
    for step in (3, 6, 9):
        folder.append_record({"step": step, "epoch": step // 3})
    with open(folder.log, "a") as handle:
        handle.write('{"step": 12, "ep')  # torn by a crash
    folder.resume_log(6)
    assert [
        json.loads(line)["step"] for line in folder.log.read_text().splitlines()
    ] == [
        3,
        6,
    ]
    folder.start("python -m dmm_helpers.train --epochs 2")  # a fresh run: no log
    assert not folder.log.exists()
    assert folder.command.read_text().startswith(
        "python -m dmm_helpers.train --epochs 2\n"
    )


def test_a_run_folder_lock_is_shared_in_a_process_and_refused_across(tmp_path):
    import fcntl

    folder = RunFolder(tmp_path / "run")
    first, second = folder.lock(), folder.lock()  # one process: shared
    other = os.open(folder.lock_file, os.O_RDWR)  # another open file, as elsewhere
    with pytest.raises(BlockingIOError):
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    first.release()
    with pytest.raises(BlockingIOError):  # still held by the second holder
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    second.release()
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free now
    with pytest.raises(checkpoint.RunFolderError, match="is in use by another"):
        folder.lock()
    os.close(other)
    held = folder.lock()
    # A folder removed and made again is a new lock file: locked afresh.
    shutil.rmtree(folder.path)
    again = folder.lock()
    other = os.open(folder.lock_file, os.O_RDWR)
    with pytest.raises(BlockingIOError):
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.close(other)
    held.release()
    again.release()


@pytest.mark.parametrize("guide", GUIDES)
def test_every_guide_trains_and_evaluates_from_the_command_line(
    guide, tiny_data, tmp_path, capsys
):
    out = tmp_path / guide
    train.main(
        ["--data", str(tiny_data), "--out", str(out), "--epochs", "1"]
        + ["--guide", guide, *flags({**TINY, "eval_every": 1})]
    )
    assert load_checkpoint(out / "best.pt")["model_config"]["guide"] == guide
    # command.txt names a guide other than the default, st-r, so it reproduces it.
    recorded = f"--guide {guide}" in (out / "command.txt").read_text()
    assert recorded == (guide != "st-r")
    capsys.readouterr()
    evaluate_main(
        ["--checkpoint", str(out / "best.pt"), "--data", str(tiny_data)]
        + ["--samples", "3", "--device", "cpu", "--no-progress"]
    )
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert math.isfinite(printed["bound_per_step"])
    assert printed["nll_per_step"] <= printed["bound_per_step"] + 1e-9
    # The model it loads is that guide's.
    assert load_model(out / "best.pt").config.guide == guide


def test_the_authors_update_is_adam_on_the_averaged_clipped_gradient(config):
    # One step of --optimizer adam against an independent computation: the L2
    # gradient added to the summed loss's, divided by the sequences, the global
    # norm rescaled to clip_norm, then torch's Adam at the decayed rate.
    config = dataclasses.replace(
        config, optimizer="adam", clip_norm=0.5, weight_decay=0.3, lr_decay=0.9
    )
    trainer = Trainer(config)
    reference = copy.deepcopy(trainer.model)
    batch = next(iter(train.minibatches(trainer.train_set, config.batch_size, seed=0)))
    torch.manual_seed(11)
    assert trainer.train_step(batch, 0.5) is not None
    torch.manual_seed(11)  # the same draws of the guide
    loss = -train.elbo(reference, batch, 0.5, config.kl_estimator)
    loss.backward()
    grads = {
        name: (p.grad + config.weight_decay * p.detach()) / len(batch.lengths)
        for name, p in reference.named_parameters()
        if p.grad is not None
    }
    norm = torch.sqrt(sum(g.square().sum() for g in grads.values()))
    assert norm > config.clip_norm  # the clip acts in this test
    adam = torch.optim.Adam(
        [p for n, p in reference.named_parameters() if n in grads],
        lr=config.learning_rate * config.lr_decay,
        betas=(config.beta1, config.beta2),
    )
    for name, parameter in reference.named_parameters():
        if name in grads:
            parameter.grad = grads[name] * min(1.0, config.clip_norm / float(norm))
    adam.step()
    for (name, got), expected in zip(
        trainer.model.named_parameters(), reference.parameters()
    ):
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-7), name
    trainer.close()


def test_the_authors_preset_trains_and_resumes_exactly(tiny_data, tmp_path):
    # krishnan2017 with small sizes: two epochs straight, or one and a resume.
    small = ["--z-dim", "4", "--emission-dim", "8", "--transition-dim", "8"]
    small += ["--rnn-dim", "16", "--batch-size", "2", "--eval-every", "1"]
    base = ["--preset", "krishnan2017", "--data", str(tiny_data), *small]
    base += ["--device", "cpu", "--no-progress"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    train.main([*base, "--out", str(straight), "--epochs", "2"])
    train.main([*base, "--out", str(split), "--epochs", "1"])
    train.main([*base, "--out", str(split), "--epochs", "2", "--resume"])
    ends = [load_checkpoint(out / "checkpoint.pt") for out in (straight, split)]
    assert ends[0]["model_config"]["rnn_type"] == "lstm"
    assert_state_dicts_equal(ends[0]["model"], ends[1]["model"])
    command = (straight / "command.txt").read_text()
    assert "--optimizer adam" in command and "--scale variance" in command


@pytest.mark.parametrize(
    "model_flags",
    [["--emitter", "nade"], ["--augmented"], ["--augmented", "--emitter", "nade"]],
    ids=["nade", "augmented", "augmented-nade"],
)
def test_the_papers_other_models_train_and_evaluate_from_the_command_line(
    tiny_data, tmp_path, capsys, model_flags
):
    out = tmp_path / "run"
    train.main(
        ["--data", str(tiny_data), "--out", str(out), "--epochs", "1"]
        + [*model_flags, *flags({**TINY, "eval_every": 1})]
    )
    config = load_model(out / "best.pt").config
    assert config.emitter == ("nade" if "nade" in model_flags else "bernoulli")
    assert config.augmented == ("--augmented" in model_flags)
    assert all(flag in (out / "command.txt").read_text() for flag in model_flags)
    capsys.readouterr()
    evaluate_main(
        ["--checkpoint", str(out / "best.pt"), "--data", str(tiny_data)]
        + ["--samples", "3", "--device", "cpu", "--no-progress"]
    )
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["nll_per_step"] <= printed["bound_per_step"] + 1e-9


def test_an_evaluation_with_several_draws_averages_single_draws(config):
    trainer = Trainer(config)
    valid = trainer.data["valid"]
    torch.manual_seed(5)
    single = [evaluate_bound(trainer.model, valid, 100) for _ in range(3)]
    torch.manual_seed(5)
    averaged = evaluate_bound(trainer.model, valid, 100, samples=3)
    trainer.close()
    # one batch: the three draws come in the same order from the same stream
    assert math.isclose(averaged, sum(single) / 3, rel_tol=1e-12)
    assert len(set(single)) == 3  # the draws differ, so the average is news


def test_changing_eval_samples_on_resume_rescores_best_pt(config):
    Trainer(dataclasses.replace(config, epochs=2)).run()
    best_path = Path(config.out) / "best.pt"
    before = load_checkpoint(best_path)
    more = dataclasses.replace(config, epochs=3, eval_samples=4)
    resumed = Trainer(more, resume=True)
    after = load_checkpoint(best_path)
    best_model = load_model(best_path)  # built before the seed: it draws weights
    torch.manual_seed(more.seed * 1_000_003 + resumed.step)
    expected = evaluate_bound(
        best_model, resumed.data["valid"], more.eval_batch_size, 4
    )
    assert after["epoch"] == before["epoch"]
    assert after["valid_bound"] != before["valid_bound"]
    assert math.isclose(after["valid_bound"], expected, rel_tol=1e-12)
    assert resumed.best_valid == after["valid_bound"]
    records = resumed.run()
    assert records[-1]["epoch"] == 3
    final = load_checkpoint(best_path)
    assert final["valid_bound"] == min(after["valid_bound"], records[-1]["valid_bound"])
