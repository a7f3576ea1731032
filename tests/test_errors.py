"""Every bad input of the commands and every fault: a clear message, nothing lost.

Issue 14's promise, tried as a new user would. Each case runs a command
(``dmm_helpers.train``, ``evaluate`` or ``pretrained``) through its
``main(argv)``, in process, and checks

- the exit status: 2 for a bad command line (the parser's usage error,
  before anything is read or written), 1 for a problem with the data, a
  checkpoint, the run folder or the run itself;
- the words of the message, on one line (``error: ...``) for status 1, and
  that no traceback is printed, nor torch's advice to load with
  ``weights_only=False``;
- that nothing in the run folder changed (every file's bytes and
  modification time) and that no temporary file was left behind.

Faults are a disk that fills up in the middle of one file's write
(:func:`faults.disk_fills`) and a run that diverges. The last cases run the
real commands in subprocesses, for the end-to-end absence of a traceback.
"""

from __future__ import annotations

import fcntl
import io
import json
import math
import os
import pickle
import random
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from faults import NO_SPACE, disk_fills, snapshot, temporaries
from test_train import SUBPROCESS_ENV, SUBPROCESS_TIMEOUT_S, TINY, flags
from test_train import write_tiny_jsb as write_data

from dmm_helpers import data as dmm_data
from dmm_helpers import evaluate, pretrained, train
from dmm_helpers.checkpoint import CheckpointError, load_checkpoint, load_model

# The tiny run of test_train, evaluated after every epoch, and stopped after
# two non-finite steps in a row (three steps make an epoch).
RUN_FLAGS = flags({**TINY, "eval_every": 1, "max_bad_steps": 2})


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return write_data(tmp_path_factory.mktemp("data") / "tiny.json")


@pytest.fixture(scope="module")
def trained_run(tiny_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "run"
    train.main(fresh(tiny_data, out))
    return out


@pytest.fixture
def run(trained_run, tmp_path) -> Path:
    """A copy of a finished one-epoch run (epoch 1 of 1), for a test to try to harm."""
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    return copy


def fresh(tiny_data, out, *extra) -> list[str]:
    """The command line of a tiny fresh run of one epoch."""
    argv = ["--data", str(tiny_data), "--out", str(out), "--epochs", "1"]
    return [*argv, *RUN_FLAGS, *extra]


def resumed(run, *extra) -> list[str]:
    """The command line that resumes ``run`` for a second epoch."""
    return ["--resume", "--out", str(run), "--device", "cpu", "--epochs", "2", *extra]


def expect_error(main, argv, capsys, code: int, *words: str, folder=()) -> str:
    """Run ``main(argv)``; check the exit status, the words, the folder; return stderr.

    Status 1 must print exactly one line, ``error: ...``; status 2 is the
    parser's usage message, whose last line says what was wrong. Every
    folder in ``folder`` must be as it was, with no temporary file left.
    """
    folders = [folder] if isinstance(folder, Path) else list(folder)
    before = [snapshot(f) for f in folders]
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == code, err
    assert "Traceback" not in err and "weights_only" not in err, err
    if code == 1:
        assert err.startswith("error: ") and err.count("\n") == 1, err
    else:
        assert err.startswith("usage: ") and ": error: " in err.splitlines()[-1], err
    for word in words:
        assert word in err, (word, err)
    for f, state in zip(folders, before):
        assert snapshot(f) == state, f"{f} changed"
        assert not temporaries(f), temporaries(f)
    return err


# ----------------------------------------------------------------------------
# Training: bad flags are usage errors, before anything is read or written
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--learning-rate", "nan"], "--learning-rate: must be a finite number > 0, "),
        (["--learning-rate", "-1"], "--learning-rate: must be a finite number > 0"),
        (["--learning-rate", "inf"], "--learning-rate: must be a finite number > 0"),
        (["--beta1", "1"], "--beta1: must be a finite number >= 0 and < 1, got 1"),
        (["--beta2", "-0.1"], "--beta2: must be a finite number >= 0 and < 1"),
        (["--clip-norm", "0"], "--clip-norm: must be a finite number > 0, got 0"),
        (["--lr-decay", "0"], "--lr-decay: must be a finite number > 0 and <= 1"),
        (["--lr-decay", "1.5"], "--lr-decay: must be a finite number > 0 and <= 1"),
        (["--weight-decay", "-1"], "--weight-decay: must be a finite number >= 0"),
        (["--ema-decay", "1"], "--ema-decay: must be a finite number >= 0 and < 1"),
        (
            ["--minimum-annealing-factor", "0"],
            "--minimum-annealing-factor: must be a finite number > 0 and <= 1",
        ),
        (["--annealing-epochs", "-1"], "--annealing-epochs: must be an integer >= 0"),
        (["--epochs", "0"], "--epochs: must be an integer >= 1, got 0"),
        (["--epochs", "1e3"], "--epochs: must be an integer >= 1, got '1e3'"),
        (["--batch-size", "0"], "--batch-size: must be an integer >= 1, got 0"),
        (["--eval-every", "-1"], "--eval-every: must be an integer >= 0, got -1"),
        (["--eval-batch-size", "0"], "--eval-batch-size: must be an integer >= 1"),
        (["--max-bad-steps", "0"], "--max-bad-steps: must be an integer >= 1"),
        (["--z-dim", "0"], "--z-dim: must be an integer >= 1, got 0"),
        (["--rnn-layers", "0"], "--rnn-layers: must be an integer >= 1"),
        (["--rnn-dropout", "1"], "--rnn-dropout: must be a finite number >= 0 and < 1"),
        (["--rnn-dropout", "0.5"], "rnn_dropout acts between stacked RNN layers"),
        (["--num-iafs", "-1"], "--num-iafs: must be an integer >= 0, got -1"),
        (["--seed", "-1"], "--seed: must be an integer >= 0 and <= 4294967295"),
        (["--seed", str(2**32)], "--seed: must be an integer >= 0 and <= 4294967295"),
        (["--device", "gpu"], "--device: invalid choice: 'gpu'"),
        (["--kl", "exact"], "--kl: invalid choice: 'exact'"),
        (["--guide", "st-x"], "--guide: invalid choice: 'st-x'"),
        (["--data", ""], "--data: must not be empty"),
        (
            ["--resume", "--overwrite"],
            "--overwrite: not allowed with argument --resume",
        ),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["--learning", "3e-4"], "unrecognized arguments: --learning"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else None,
)
def test_a_bad_training_flag_is_a_usage_error(argv, message, run, tiny_data, capsys):
    expect_error(
        train.main, [*fresh(tiny_data, run), *argv], capsys, 2, message, folder=run
    )


def test_a_bad_flag_writes_nothing_not_even_the_run_folder(tiny_data, tmp_path, capsys):
    out = tmp_path / "new"
    argv = [*fresh(tiny_data, out), "--learning-rate", "nan"]
    expect_error(train.main, argv, capsys, 2, "got nan")
    assert not out.exists()


# ----------------------------------------------------------------------------
# Training: data, checkpoints and run folders that cannot be used
# ----------------------------------------------------------------------------


def _json(path: Path, content) -> Path:
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def _write_midi(path: Path, pitch: int) -> None:
    from music21 import note, stream

    path.parent.mkdir(parents=True, exist_ok=True)
    part = stream.Part([note.Note(pitch, quarterLength=1) for _ in range(3)])
    stream.Score([part]).write("midi", fp=str(path))


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda folder: folder / "nothing.json", ["no such file or folder"]),
        (
            lambda folder: _json(folder / "broken.json", '{"train": [[[60]'),
            ["broken.json is not valid JSON"],
        ),
        (
            lambda folder: _json(
                folder / "off.json",
                {"train": [[[60, 130]]], "valid": [[[60]]], "test": []},
            ),
            ["off.json: split 'train', sequence 0, time step 0: note 130 is outside"],
        ),
        (
            lambda folder: _json(folder / "two.json", {"train": [[[60]]], "valid": []}),
            ["two.json: missing split 'test'"],
        ),
        (
            lambda folder: _json(
                folder / "novalid.json", {"train": [[[60]]], "valid": [], "test": []}
            ),
            ["has no validation sequences", "--eval-every 0 trains without"],
        ),
        (
            lambda folder: (
                [_write_midi(folder / f"{i}.mid", 60 + i) for i in (0, 1)] and folder
            ),
            ["has no validation sequences", "train/, valid/ and test/ subfolders"],
        ),
        (
            lambda folder: (folder / "bad.mid").write_bytes(b"not midi") and folder,
            ["music21 could not parse", "bad.mid"],
        ),
    ],
    ids=[
        "missing",
        "invalid-json",
        "note-off-the-piano",
        "missing-split",
        "no-valid-split",
        "two-midi-files",
        "unparsable-midi",
    ],
)
def test_data_that_cannot_be_used_is_one_line_and_writes_nothing(
    make, words, tmp_path, capsys
):
    source = tmp_path / "data"
    source.mkdir()
    data = make(source)
    out = tmp_path / "out"
    expect_error(train.main, fresh(data, out), capsys, 1, *words, folder=source)
    assert not out.exists()


def test_an_out_that_is_a_file_is_refused(tiny_data, tmp_path, capsys):
    out = tmp_path / "out"
    out.write_text("my notes")
    expect_error(
        train.main,
        fresh(tiny_data, out),
        capsys,
        1,
        f"the run folder {out} is a file, not a folder",
        folder=tmp_path,
    )


def test_an_out_inside_a_file_is_refused(tiny_data, tmp_path, capsys):
    (tmp_path / "file").write_text("my notes")
    out = tmp_path / "file" / "run"
    expect_error(
        train.main,
        fresh(tiny_data, out),
        capsys,
        1,
        f"cannot make the run folder {out}: {tmp_path / 'file'} is a file",
        folder=tmp_path,
    )


def test_an_out_that_is_not_writable_is_refused(
    tiny_data, tmp_path, capsys, monkeypatch
):
    # The tests may run as root, whom permissions do not stop: os.access says no.
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(
        os, "access", lambda path, mode: Path(path) != locked and real(path, mode)
    )
    expect_error(
        train.main,
        fresh(tiny_data, locked / "run"),
        capsys,
        1,
        f"cannot write in {locked} (permission denied)",
        folder=tmp_path,
    )


def test_a_second_run_on_the_same_out_is_refused(run, tiny_data, capsys):
    holder = os.open(run / ".lock", os.O_RDWR)  # as another process's run does
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        words = [f"the run folder {run} is in use by another training run"]
        expect_error(train.main, resumed(run), capsys, 1, *words, folder=run)
        argv = [*fresh(tiny_data, run), "--overwrite"]
        expect_error(train.main, argv, capsys, 1, *words, folder=run)
    finally:
        os.close(holder)
    train.main(resumed(run))  # the lock released, the run goes on
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 2


def test_a_lock_left_by_a_killed_run_does_not_block(run, capsys):
    assert (run / ".lock").exists()  # no process holds it: the system let go
    train.main(resumed(run))
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 2


def test_a_fresh_run_in_a_folder_that_holds_a_run_needs_overwrite(
    run, tiny_data, capsys
):
    expect_error(
        train.main,
        fresh(tiny_data, run),
        capsys,
        1,
        f"{run} already holds a run: continue it with --resume",
        "--overwrite",
        folder=run,
    )
    train.main([*fresh(tiny_data, run), "--overwrite"])
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 1


def _damage(path: Path, change) -> None:
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)


@pytest.mark.parametrize(
    ("harm", "argv", "words"),
    [
        (
            lambda run: (run / "checkpoint.pt").unlink(),
            [],
            ["no checkpoint at", "checkpoint.pt"],
        ),
        (
            lambda run: (run / "checkpoint.pt").write_bytes(
                (run / "checkpoint.pt").read_bytes()[:1000]
            ),
            [],
            ["checkpoint.pt is not a readable checkpoint: it is truncated or damaged"],
        ),
        (
            lambda run: shutil.copyfile(run / "best.pt", run / "checkpoint.pt"),
            [],
            ["holds no training state to resume from", "needs checkpoint.pt"],
        ),
        (
            lambda run: _damage(
                run / "checkpoint.pt", lambda s: s["model"]["z_0"].fill_(math.nan)
            ),
            [],
            ["holds weights that are not finite (NaN or inf): z_0"],
        ),
        (
            lambda run: _damage(run / "checkpoint.pt", lambda s: s.update(format=2)),
            [],
            ["is a checkpoint of format 2", "reads format 1"],
        ),
        (
            lambda run: None,
            ["--learning-rate", "3e-4"],  # the default, not the run's 3e-3
            [
                "cannot resume with different settings",
                "--learning-rate 0.003 -> 0.0003",
            ],
        ),
        (lambda run: None, ["--z-dim", "6"], ["--z-dim 4 -> 6"]),
        (
            lambda run: _damage(
                run / "checkpoint.pt", lambda s: s["model_config"].update(rnn_dim=17)
            ),
            [],
            ["is for another model than its flags describe: rnn_dim 17 (stored) vs 16"],
        ),
    ],
    ids=[
        "no-checkpoint",
        "truncated",
        "best-pt-instead",
        "nan-weights",
        "other-format",
        "changed-default-flag",
        "changed-size",
        "other-model",
    ],
)
def test_a_checkpoint_that_cannot_be_resumed_is_one_line(
    harm, argv, words, run, capsys
):
    harm(run)
    expect_error(train.main, resumed(run, *argv), capsys, 1, *words, folder=run)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_one_line(run, capsys):
    words = ["--device cuda was asked for, but torch sees no CUDA device"]
    argv = ["--resume", "--out", str(run), "--device", "cuda"]
    expect_error(train.main, argv, capsys, 1, *words, folder=run)


def test_debug_shows_the_traceback(run):
    (run / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="it is empty"):
        train.main([*resumed(run), "--debug"])


# ----------------------------------------------------------------------------
# Training: a full disk and a diverging run lose nothing
# ----------------------------------------------------------------------------


def test_a_disk_full_while_saving_the_checkpoint_keeps_the_previous_one(run, capsys):
    with disk_fills("checkpoint.pt", room=2000):
        expect_error(
            train.main,
            resumed(run, "--eval-every", "0"),
            capsys,
            1,
            f"could not write {run / 'checkpoint.pt'}: {NO_SPACE}; the previous "
            "checkpoint.pt is intact",
            folder=run,
        )
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 1
    train.main(resumed(run))  # and it resumes, once there is room again
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 2


def test_a_disk_full_while_logging_keeps_the_log_whole(run, capsys):
    log = (run / "log.jsonl").read_bytes()
    with disk_fills("log.jsonl", room=10):
        expect_error(
            train.main,
            resumed(run),
            capsys,
            1,
            f"could not write {run / 'log.jsonl'}: {NO_SPACE}",
            folder=[run / "checkpoint.pt", run / "best.pt"],
        )
    assert (run / "log.jsonl").read_bytes() == log  # cut back: no torn line
    assert not temporaries(run)


def test_a_disk_full_while_saving_the_best_model_keeps_the_previous_one(
    run, capsys, monkeypatch
):
    best, state = (run / "best.pt").read_bytes(), (run / "checkpoint.pt").read_bytes()
    monkeypatch.setattr(train, "evaluate_bound", lambda *args, **kwargs: 0.0)
    with disk_fills("best.pt", room=2000):
        expect_error(
            train.main,
            resumed(run),
            capsys,
            1,
            f"could not write {run / 'best.pt'}: {NO_SPACE}; the previous best.pt is "
            "intact",
        )
    assert (run / "best.pt").read_bytes() == best
    assert (run / "checkpoint.pt").read_bytes() == state
    load_model(run / "best.pt")
    # The log holds whole records; the one of the epoch not saved goes on resume.
    assert [json.loads(line)["epoch"] for line in open(run / "log.jsonl")] == [1, 2]
    train.main(resumed(run))
    assert [json.loads(line)["epoch"] for line in open(run / "log.jsonl")] == [1, 2]
    assert not temporaries(run)


def test_a_disk_full_while_writing_the_command_changes_nothing(run, tiny_data, capsys):
    with disk_fills("command.txt", room=10):
        expect_error(
            train.main,
            [*fresh(tiny_data, run), "--overwrite"],
            capsys,
            1,
            f"could not write {run / 'command.txt'}: {NO_SPACE}; the previous "
            "command.txt is intact",
            folder=run,
        )


def test_a_disk_full_on_a_new_runs_first_checkpoint_leaves_no_partial_file(
    tiny_data, tmp_path, capsys
):
    out = tmp_path / "new"
    with disk_fills("checkpoint.pt", room=100):
        expect_error(
            train.main,
            fresh(tiny_data, out),
            capsys,
            1,
            f"could not write {out / 'checkpoint.pt'}: {NO_SPACE}; no checkpoint.pt "
            "was written",
        )
    assert sorted(p.name for p in out.iterdir()) == [
        ".lock",
        "best.pt",
        "command.txt",
        "log.jsonl",
    ]


def _nan_steps(monkeypatch) -> None:
    real = train.elbo

    def elbo(model, batch, *args, **kwargs):
        value = real(model, batch, *args, **kwargs)
        return value * math.nan if model.training else value

    monkeypatch.setattr(train, "elbo", elbo)


def test_a_run_of_non_finite_steps_stops_and_keeps_the_last_good_checkpoint(
    run, capsys, monkeypatch
):
    _nan_steps(monkeypatch)
    expect_error(
        train.main,
        resumed(run),
        capsys,
        1,
        "2 steps in a row gave a non-finite loss or gradient (epoch 1, step 4)",
        f"The last good checkpoint, {run / 'checkpoint.pt'}, is intact",
        folder=run,
    )


def test_a_non_finite_bound_at_evaluation_stops_and_keeps_the_last_good_checkpoint(
    run, capsys, monkeypatch
):
    monkeypatch.setattr(train, "evaluate_bound", lambda *args, **kwargs: math.nan)
    expect_error(
        train.main,
        resumed(run),
        capsys,
        1,
        "the evaluation after epoch 2 gave a non-finite bound (valid_bound nan, "
        "test_bound nan)",
        f"the last good checkpoint, {run / 'checkpoint.pt'}, is intact",
        folder=run,
    )


def test_a_log_whose_last_line_was_cut_resumes_without_losing_earlier_lines(run):
    with open(run / "log.jsonl", "a") as log:
        log.write('{"epoch": 2, "step": 6, "train_lo')  # a crash while appending
    train.main([*resumed(run, "--epochs", "3")])
    records = [json.loads(line) for line in open(run / "log.jsonl")]
    assert [r["epoch"] for r in records] == [1, 2, 3]


# ----------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--samples", "0"], "--samples: must be an integer >= 1, got 0"),
        (["--samples", "nan"], "--samples: must be an integer >= 1, got 'nan'"),
        (["--chunk-size", "-1"], "--chunk-size: must be an integer >= 1, got -1"),
        (["--batch-size", "0"], "--batch-size: must be an integer >= 1, got 0"),
        (["--seed", "-1"], "--seed: must be an integer >= 0"),
        (["--device", "gpu"], "--device: invalid choice: 'gpu'"),
        (["--split", "training"], "--split: invalid choice: 'training'"),
        (["--checkpoint", ""], "--checkpoint: must not be empty"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else None,
)
def test_a_bad_evaluation_flag_is_a_usage_error(argv, message, run, capsys):
    base = ["--checkpoint", str(run / "best.pt"), "--device", "cpu"]
    expect_error(evaluate.main, [*base, *argv], capsys, 2, message, folder=run)


def test_evaluation_needs_a_checkpoint(capsys):
    words = ["the following arguments are required: --checkpoint"]
    expect_error(evaluate.main, ["--split", "valid"], capsys, 2, *words)


class RunsCode:
    """Unpickling this would call ``open(path, "w")``: code run by loading."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def _zip_of_something_else(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes/readme.txt", "not a model")


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda path, best: None, ["no checkpoint at"]),
        (lambda path, best: path.mkdir(), ["is a folder, not a checkpoint file"]),
        (
            lambda path, best: path.write_bytes(b""),
            ["is not a readable checkpoint: it is empty"],
        ),
        (
            lambda path, best: path.write_bytes(random.Random(0).randbytes(5000)),
            ["is not a readable checkpoint: it is not a file written by torch.save"],
        ),
        (
            lambda path, best: path.write_bytes(best[: len(best) // 2]),
            ["is not a readable checkpoint: it is truncated or damaged"],
        ),
        (
            lambda path, best: path.write_bytes(best[:-300] + bytes(300)),
            ["is not a readable checkpoint"],
        ),
        (
            lambda path, best: _zip_of_something_else(path),
            ["is a zip archive, but not one written by torch.save"],
        ),
        (
            lambda path, best: path.write_bytes(pickle.dumps({"model": {}})),
            ["is not a readable checkpoint: it is not a file written by torch.save"],
        ),
        (
            lambda path, best: torch.save({"x": RunsCode(path.with_name("ran"))}, path),
            ["only running code (io.open) could rebuild", "refused"],
        ),
        (
            lambda path, best: torch.save(torch.nn.Linear(2, 2), path),
            ["only running code (torch.nn.modules.linear.Linear) could rebuild"],
        ),
        (
            lambda path, best: torch.save(torch.zeros(3), path),
            ["is not a dmm_helpers checkpoint: it holds a Tensor"],
        ),
        (
            lambda path, best: torch.save({"weight": torch.zeros(3)}, path),
            ["is not a dmm_helpers checkpoint: it holds a dict without 'format'"],
        ),
        (
            lambda path, best: path.write_text("hello, world\n"),
            ["is not a readable checkpoint"],
        ),
        (
            lambda path, best: _changed(
                path,
                best,
                lambda s: s.update(format=7, versions={"dmm_helpers": "2.0"}),
            ),
            ["is a checkpoint of format 7 (written by dmm_helpers 2.0), but"],
        ),
        (
            lambda path, best: _changed(
                path, best, lambda s: s["model"]["z_0"].fill_(math.inf)
            ),
            ["holds weights that are not finite (NaN or inf): z_0"],
        ),
        (
            lambda path, best: _changed(
                path, best, lambda s: s["model_config"].update(z_dim=5)
            ),
            ["holds weights for a different model", "z_0 (4,) vs (5,)"],
        ),
        (
            lambda path, best: _changed(
                path, best, lambda s: s["model_config"].update(depth=3)
            ),
            ["the stored model config is not usable", "unknown DMMConfig keys"],
        ),
    ],
    ids=[
        "missing",
        "folder",
        "empty",
        "random-bytes",
        "truncated",
        "zeroed-tail",
        "zip-of-something-else",
        "plain-pickle",
        "pickle-that-runs-code",
        "pickled-module",
        "tensor",
        "state-dict",
        "text",
        "other-format",
        "infinite-weights",
        "other-model",
        "unknown-config",
    ],
)
def test_a_file_that_is_not_a_usable_checkpoint_is_one_line(
    make, words, trained_run, tiny_data, tmp_path, capsys
):
    folder = tmp_path / "files"
    folder.mkdir()
    path = folder / "model.pt"
    make(path, (trained_run / "best.pt").read_bytes())
    argv = ["--checkpoint", str(path), "--data", str(tiny_data), "--device", "cpu"]
    err = expect_error(evaluate.main, argv, capsys, 1, *words, folder=folder)
    assert str(path) in err
    assert not (folder / "ran").exists()  # nothing in the file was run


def _changed(path: Path, best: bytes, change) -> None:
    state = torch.load(io.BytesIO(best), weights_only=True)
    change(state)
    torch.save(state, path)


@pytest.mark.parametrize(
    ("make", "argv", "words"),
    [
        (lambda folder: folder / "nothing", [], ["no such file or folder"]),
        (
            lambda folder: _json(folder / "broken.json", "[1, 2"),
            [],
            ["broken.json is not valid JSON"],
        ),
        (
            lambda folder: _json(
                folder / "novalid.json", {"train": [[[60]]], "valid": [], "test": []}
            ),
            ["--split", "valid"],
            ["the valid split of --data", "holds no sequences"],
        ),
    ],
    ids=["missing", "invalid-json", "empty-split"],
)
def test_evaluation_data_that_cannot_be_used_is_one_line(
    make, argv, words, run, tmp_path, capsys
):
    data = make(tmp_path)
    command = ["--checkpoint", str(run / "best.pt"), "--data", str(data), *argv]
    expect_error(evaluate.main, command, capsys, 1, *words, folder=run)


def test_a_non_finite_estimate_is_one_line(run, tiny_data, capsys, monkeypatch):
    real = evaluate.evaluate
    monkeypatch.setattr(
        evaluate,
        "evaluate",
        lambda *args, **kwargs: {**real(*args, **kwargs), "nll_per_step": math.nan},
    )
    argv = ["--checkpoint", str(run / "best.pt"), "--data", str(tiny_data)]
    words = ["gives non-finite estimates on the test split (nll_per_step nan)"]
    expect_error(evaluate.main, [*argv, "--samples", "2"], capsys, 1, *words)


def test_ctrl_c_during_evaluation_exits_130_without_a_traceback(
    run, tiny_data, capsys, monkeypatch
):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "evaluate", interrupted)
    argv = ["--checkpoint", str(run / "best.pt"), "--data", str(tiny_data)]
    with pytest.raises(SystemExit) as stop:
        evaluate.main(argv)
    assert stop.value.code == 130
    assert capsys.readouterr().err == "error: interrupted\n"


def test_evaluation_shows_progress_when_asked(run, tiny_data, capsys):
    argv = ["--checkpoint", str(run / "best.pt"), "--data", str(tiny_data)]
    evaluate.main([*argv, "--samples", "2", "--progress"])
    assert "evaluating" in capsys.readouterr().err
    evaluate.main([*argv, "--samples", "2"])  # stderr is no terminal: no bar
    assert capsys.readouterr().err == ""


# ----------------------------------------------------------------------------
# Downloads and shipped models
# ----------------------------------------------------------------------------


class _Response:
    """What ``urlopen`` returns, serving ``body``."""

    def __init__(self, body: bytes) -> None:
        self.body = io.BytesIO(body)
        self.headers = {"Content-Length": str(len(body))}

    def read(self, size: int) -> bytes:
        return self.body.read(size)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_a_disk_full_during_the_download_leaves_no_partial_file(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv("DMM_JSB_PATH", raising=False)
    monkeypatch.setenv("DMM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(
        dmm_data.urllib.request,
        "urlopen",
        lambda url, timeout: _Response(bytes(300_000)),
    )
    target = tmp_path / "cache" / dmm_data.JSB_FILENAME
    with disk_fills(dmm_data.JSB_FILENAME, room=70_000):
        expect_error(
            train.main,
            ["--data", "jsb", "--out", str(tmp_path / "out"), "--epochs", "1"],
            capsys,
            1,
            f"could not write {target}: {NO_SPACE}; no {target.name} was written",
        )
    assert not target.exists() and not temporaries(tmp_path)


def test_a_disk_full_during_a_download_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "file.json"
    target.write_bytes(b"the previous version")
    monkeypatch.setattr(
        dmm_data.urllib.request, "urlopen", lambda url, timeout: _Response(b"x" * 999)
    )
    with disk_fills(target.name, room=100):
        with pytest.raises(OSError, match=f"{NO_SPACE}; the previous file.json is"):
            dmm_data.download("https://example.org/file.json", target, "0" * 64)
    assert target.read_bytes() == b"the previous version"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.json"]


@pytest.fixture
def shipping(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """Where ``ship`` writes in this test: (the shipped models, the manifest)."""
    listing = tmp_path / "pretrained.json"
    shutil.copyfile(pretrained.MANIFEST_PATH, listing)
    monkeypatch.setattr(pretrained, "MANIFEST_PATH", listing)
    monkeypatch.setattr(pretrained, "REPOSITORY_DIR", tmp_path / "shipped")
    return tmp_path / "shipped", listing


def test_a_disk_full_while_shipping_keeps_the_shipped_model_and_manifest(
    run, shipping, capsys
):
    shipped, listing = shipping
    ship = ["ship", str(run), "--name", "tiny", "--description"]
    pretrained.main([*ship, "the first"])
    assert pretrained.pretrained_dir("tiny") == shipped / "tiny"
    with open(run / "log.jsonl", "a") as log:
        log.write('{"epoch": 2, "step": 6}\n')
    for name in pretrained.FILES:
        with disk_fills(name, room=20):
            expect_error(
                pretrained.main,
                [*ship, "the second"],
                capsys,
                1,
                f"could not write {shipped / 'tiny' / name}: {NO_SPACE}; the "
                f"previous {name} is intact",
                folder=[shipped, listing.parent],
            )
    pretrained.pretrained_dir("tiny")  # still every file as listed


@pytest.mark.parametrize(
    ("argv", "code", "words"),
    [
        (["--name", "../evil"], 2, ["--name: a model name is letters, digits"]),
        (
            ["--name", "tiny", "--description", "x", "--from", "y"],
            2,
            ["unrecognized arguments: --from"],
        ),
        (["--name", "tiny"], 2, ["the following arguments are required: --descr"]),
    ],
    ids=["bad-name", "unknown-flag", "no-description"],
)
def test_a_bad_ship_command_is_a_usage_error(argv, code, words, run, shipping, capsys):
    shipped, listing = shipping
    expect_error(
        pretrained.main,
        ["ship", str(run), *argv],
        capsys,
        code,
        *words,
        folder=[run, listing.parent],
    )


def test_shipping_an_unfinished_or_broken_run_is_one_line(run, shipping, capsys):
    _, listing = shipping
    (run / "best.pt").write_bytes(b"not a model")
    ship = ["ship", str(run), "--name", "tiny", "--description", "x"]
    words = [f"{run / 'best.pt'} is not a readable checkpoint"]
    expect_error(pretrained.main, ship, capsys, 1, *words, folder=listing.parent)
    (run / "best.pt").unlink()
    words = [f"cannot ship {run}: missing", "best.pt"]
    expect_error(pretrained.main, ship, capsys, 1, *words, folder=listing.parent)


def test_a_shipped_model_with_non_finite_weights_is_refused(run, shipping):
    _damage(run / "best.pt", lambda s: s["model"]["z_0"].fill_(math.nan))
    with pytest.raises(CheckpointError, match=r"best\.pt holds weights that are not"):
        pretrained.ship(run, "tiny", "x")
    listed = json.loads(shipping[1].read_text())
    assert "tiny" not in listed


def test_an_unknown_shipped_model_names_the_available_ones(capsys):
    with pytest.raises(KeyError) as unknown:
        pretrained.load_pretrained("jsb_dmn")
    from dmm_helpers.cli import message_of

    assert message_of(unknown.value).startswith(
        "no shipped model named 'jsb_dmn'; available: ['jsb_dmm'"
    )


# ----------------------------------------------------------------------------
# The real commands, end to end
# ----------------------------------------------------------------------------


def command(module: str, *argv: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"dmm_helpers.{module}", *argv],
        env={**SUBPROCESS_ENV, **env},
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
    )


def test_the_commands_never_print_a_traceback(run, tiny_data, tmp_path):
    out = tmp_path / "out"
    result = command("train", *fresh(tiny_data, out), "--learning-rate", "nan")
    assert result.returncode == 2, result.stderr
    assert "argument --learning-rate: must be a finite number > 0, got nan" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr and not out.exists()

    (tmp_path / "random.pt").write_bytes(random.Random(1).randbytes(4000))
    result = command("evaluate", "--checkpoint", str(tmp_path / "random.pt"))
    assert result.returncode == 1
    assert result.stderr == (
        f"error: {tmp_path / 'random.pt'} is not a readable checkpoint: it is not a "
        "file written by torch.save (random bytes, a plain pickle or another "
        "format?)\n"
    )

    holder = os.open(run / ".lock", os.O_RDWR)  # another process's run
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        result = command("train", *resumed(run))
    finally:
        os.close(holder)
    assert result.returncode == 1
    assert result.stderr.startswith("error: the run folder") and "in use" in (
        result.stderr
    )


def test_dmm_debug_shows_the_traceback(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    result = command(
        "evaluate", "--checkpoint", str(tmp_path / "empty.pt"), DMM_DEBUG="1"
    )
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert "CheckpointError" in result.stderr and "it is empty" in result.stderr
