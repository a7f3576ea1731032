"""The shipped models: files match the manifest, tampering is caught, logs queried."""

from __future__ import annotations

import hashlib
import http.server
import json
import shlex
import shutil
import threading
from pathlib import Path

import pytest
import torch
import yaml
from faults import NO_SPACE, disk_fills, temporaries

from dmm_helpers import checkpoint, pretrained
from dmm_helpers.checkpoint import CheckpointError, load_checkpoint, load_model
from dmm_helpers.checks import WriteError
from dmm_helpers.data import ChecksumError
from dmm_helpers.dmm import DMM
from dmm_helpers.train import parse_args

ROOT = Path(__file__).resolve().parents[1]


def test_the_repository_url_is_the_books():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert pretrained.REPOSITORY_URL == config["repository"]["url"].rstrip("/")


def test_every_shipped_file_matches_the_manifest():
    models = pretrained.manifest()
    assert {"jsb_dmm", "jsb_dmm_iaf", "jsb_dmm_pyro"} <= set(models)
    for name, entry in models.items():
        assert pretrained.lists_a_model(entry["files"]), (name, sorted(entry["files"]))
        for file, expected in entry["files"].items():
            data = (ROOT / "pretrained" / name / file).read_bytes()
            assert hashlib.sha256(data).hexdigest() == expected, (
                f"{name}/{file} changed since shipping"
            )
            # the repository keeps no file over 10 MiB: larger models ship in parts
            assert len(data) <= checkpoint.PART_BYTES < 10 * 2**20, (name, file)


def test_a_listing_is_the_three_files_with_the_model_whole_or_in_parts():
    rest = ["log.jsonl", "command.txt"]
    assert pretrained.lists_a_model(["model.pt", *rest])
    assert pretrained.lists_a_model(["model.pt.001", "model.pt.002", *rest])
    assert pretrained.lists_a_model([f"model.pt.{n:03d}" for n in (1, 2, 3)] + rest)
    for files in (
        rest,  # no model
        ["model.pt", "log.jsonl"],  # no command
        ["model.pt", "model.pt.001", "model.pt.002", *rest],  # both forms
        ["model.pt.001", *rest],  # one part is not a split
        ["model.pt.001", "model.pt.003", *rest],  # a gap
        ["model.pt", "checkpoint.pt", *rest],  # something else
    ):
        assert not pretrained.lists_a_model(files), files


@pytest.mark.parametrize("name", sorted(pretrained.manifest()))
def test_shipped_models_load_and_their_logs_and_commands_agree(name):
    model = pretrained.load_pretrained(name)
    assert isinstance(model, DMM) and not model.training
    log = pretrained.training_log(name)
    assert log and all("valid_bound" in record for record in log)
    command = pretrained.training_command(name)
    assert command.startswith("python -m dmm_helpers.train ")
    # the exact command: the model it asks for is the model shipped
    config, _ = parse_args(shlex.split(command)[3:])
    assert config.model_config() == model.config
    state = load_checkpoint(pretrained.pretrained_dir(name) / "model.pt")
    assert state["valid_bound"] == min(
        record["valid_bound"] for record in log if record["epoch"] <= state["epoch"]
    )


def test_an_unknown_name_lists_the_available_models():
    with pytest.raises(
        KeyError, match="no shipped model named 'nope'; available: .*jsb_dmm"
    ):
        pretrained.pretrained_dir("nope")


def test_a_tampered_file_is_refused(tmp_path, monkeypatch):
    shutil.copytree(ROOT / "pretrained" / "jsb_dmm_pyro", tmp_path / "jsb_dmm_pyro")
    with open(tmp_path / "jsb_dmm_pyro" / "log.jsonl", "a") as handle:
        handle.write("\n")
    monkeypatch.setenv("DMM_PRETRAINED_DIR", str(tmp_path))
    with pytest.raises(
        ChecksumError,
        match=r"log\.jsonl has SHA-256 [0-9a-f]{64}, but the shipped file has",
    ):
        pretrained.pretrained_dir("jsb_dmm_pyro")


class _Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def server(tmp_path):
    """Serves a copy of pretrained/ on 127.0.0.1 with one file corrupted on request."""
    root = tmp_path / "served"
    shutil.copytree(ROOT / "pretrained", root / "pretrained")
    handler = lambda *args: _Files(*args, directory=str(root))  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root / "pretrained", f"http://127.0.0.1:{httpd.server_address[1]}/pretrained"
    httpd.shutdown()


def _away_from_the_repository(monkeypatch, tmp_path, url):
    monkeypatch.delenv("DMM_PRETRAINED_DIR", raising=False)
    monkeypatch.setattr(pretrained, "REPOSITORY_DIR", tmp_path / "not-a-clone")
    monkeypatch.setattr(pretrained, "RAW_URL", url)
    monkeypatch.setenv("DMM_CACHE_DIR", str(tmp_path / "cache"))


def test_without_a_clone_the_files_are_downloaded_and_verified(
    server, tmp_path, monkeypatch
):
    _, url = server
    _away_from_the_repository(monkeypatch, tmp_path, url)
    folder = pretrained.pretrained_dir("jsb_dmm_pyro")
    assert folder == tmp_path / "cache" / "pretrained" / "jsb_dmm_pyro"
    assert sorted(p.name for p in folder.iterdir()) == sorted(pretrained.FILES)
    assert pretrained.load_pretrained("jsb_dmm_pyro").config.num_iafs == 0


def test_a_corrupt_download_leaves_nothing_behind(server, tmp_path, monkeypatch):
    served, url = server
    (served / "jsb_dmm_pyro" / "model.pt").write_bytes(b"not a model")
    _away_from_the_repository(monkeypatch, tmp_path, url)
    with pytest.raises(ChecksumError):
        pretrained.pretrained_dir("jsb_dmm_pyro")
    assert not (
        tmp_path / "cache" / "pretrained" / "jsb_dmm_pyro" / "model.pt"
    ).exists()
    leftovers = [
        p.name for p in (tmp_path / "cache" / "pretrained" / "jsb_dmm_pyro").iterdir()
    ]
    assert all(name in pretrained.FILES for name in leftovers), leftovers


def test_a_disk_full_during_a_download_leaves_no_partial_file(
    server, tmp_path, monkeypatch
):
    _, url = server
    _away_from_the_repository(monkeypatch, tmp_path, url)
    cached = tmp_path / "cache" / "pretrained" / "jsb_dmm_pyro"
    with disk_fills("model.pt", room=10_000):
        with pytest.raises(WriteError) as full:
            pretrained.pretrained_dir("jsb_dmm_pyro")
    assert str(full.value.strerror) == (
        f"could not write {cached / 'model.pt'}: {NO_SPACE}; no model.pt was written"
    )
    assert not (cached / "model.pt").exists() and not temporaries(cached)
    assert (
        pretrained.pretrained_dir("jsb_dmm_pyro") == cached
    )  # with room, it completes


@pytest.fixture
def manifest_copy(tmp_path, monkeypatch) -> Path:
    """A copy of the manifest that ``ship`` writes to in this test."""
    listing = tmp_path / "pretrained.json"
    shutil.copyfile(pretrained.MANIFEST_PATH, listing)
    monkeypatch.setattr(pretrained, "MANIFEST_PATH", listing)
    return listing


def test_ship_copies_the_run_and_lists_its_checksums(tmp_path, manifest_copy):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(ROOT / "pretrained" / "jsb_dmm_pyro" / "model.pt", run / "best.pt")
    best = torch.load(run / "best.pt", weights_only=True)
    records = [
        {"epoch": 1, "valid_bound": best["valid_bound"] + 1},
        {"epoch": best["epoch"], "valid_bound": best["valid_bound"]},
    ]
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run / "command.txt").write_text("python -m dmm_helpers.train --epochs 1\n")
    folder = pretrained.ship(run, "tiny", "a test model", target=tmp_path / "shipped")
    entry = json.loads(manifest_copy.read_text())["tiny"]
    assert entry["description"] == "a test model"
    for file, digest in entry["files"].items():
        assert hashlib.sha256((folder / file).read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in folder.iterdir()) == sorted(pretrained.FILES)
    # best.pt must be the log's best record: "the weights of epoch N" is read off it
    lucky = [{"epoch": 1, "valid_bound": best["valid_bound"] - 1}, *records]
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lucky))
    with pytest.raises(ValueError, match="log's best record is epoch 1"):
        pretrained.ship(run, "tiny", "x", target=tmp_path / "shipped")
    with pytest.raises(FileNotFoundError, match="missing"):
        pretrained.ship(tmp_path / "empty", "tiny", "x", target=tmp_path / "shipped")
    with pytest.raises(ValueError, match="letters, digits and underscores"):
        pretrained.ship(run, "../evil", "x", target=tmp_path / "shipped")


def _shippable_run(tmp_path: Path) -> Path:
    """A run folder holding the shipped jsb_dmm_pyro as its best.pt, log and command."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(ROOT / "pretrained" / "jsb_dmm_pyro" / "model.pt", run / "best.pt")
    best = torch.load(run / "best.pt", weights_only=True)
    record = {"epoch": best["epoch"], "valid_bound": best["valid_bound"]}
    (run / "log.jsonl").write_text(json.dumps(record) + "\n")
    (run / "command.txt").write_text("python -m dmm_helpers.train --epochs 1\n")
    return run


def test_a_large_model_ships_in_parts_that_load_as_the_whole(
    tmp_path, monkeypatch, manifest_copy
):
    run = _shippable_run(tmp_path)
    whole = (run / "best.pt").read_bytes()
    monkeypatch.setattr(checkpoint, "PART_BYTES", len(whole) // 3 + 1)
    folder = pretrained.ship(run, "big", "in parts", target=tmp_path / "shipped")
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["command.txt", "log.jsonl", *(f"model.pt.00{n}" for n in "123")]
    assert b"".join((folder / f"model.pt.00{n}").read_bytes() for n in "123") == whole
    files = json.loads(manifest_copy.read_text())["big"]["files"]
    assert pretrained.lists_a_model(files) and set(files) == set(names)
    # every reader of model.pt gets the whole file's model
    parted, original = load_model(folder / "model.pt"), load_model(run / "best.pt")
    for (name, ours), theirs in zip(
        parted.state_dict().items(), original.state_dict().values(), strict=True
    ):
        assert torch.equal(ours, theirs), name
    # re-shipped small enough to be whole: the parts go, and the other way round
    monkeypatch.setattr(checkpoint, "PART_BYTES", len(whole))
    pretrained.ship(run, "big", "whole", target=tmp_path / "shipped")
    assert sorted(p.name for p in folder.iterdir()) == sorted(pretrained.FILES)
    monkeypatch.setattr(checkpoint, "PART_BYTES", len(whole) // 2 + 1)
    pretrained.ship(run, "big", "in two", target=tmp_path / "shipped")
    assert not (folder / "model.pt").exists()
    assert sorted(p.name for p in folder.glob("model.pt.*")) == [
        "model.pt.001",
        "model.pt.002",
    ]
    shipped_epoch = load_checkpoint(run / "best.pt")["epoch"]
    assert load_checkpoint(folder / "model.pt")["epoch"] == shipped_epoch


def test_a_model_in_parts_with_a_part_missing_stale_or_cut_is_refused(tmp_path):
    run = _shippable_run(tmp_path)
    whole = (run / "best.pt").read_bytes()
    third = len(whole) // 3 + 1
    folder = tmp_path / "parted"
    folder.mkdir()
    for n, start in enumerate(range(0, len(whole), third), start=1):
        (folder / f"model.pt.{n:03d}").write_bytes(whole[start : start + third])
    shipped_epoch = load_checkpoint(run / "best.pt")["epoch"]
    assert load_checkpoint(folder / "model.pt")["epoch"] == shipped_epoch
    (folder / "model.pt.002").rename(tmp_path / "away")
    with pytest.raises(CheckpointError, match=r"3 parts, but part model\.pt\.002 is"):
        load_checkpoint(folder / "model.pt")
    (tmp_path / "away").rename(folder / "model.pt.002")
    (folder / "model.pt").write_bytes(whole)
    with pytest.raises(CheckpointError, match="both whole and in parts"):
        load_checkpoint(folder / "model.pt")
    (folder / "model.pt").unlink()
    (folder / "model.pt.003").write_bytes(whole[2 * third : -100])
    with pytest.raises(CheckpointError, match=r"model\.pt is not a readable"):
        load_checkpoint(folder / "model.pt")


def test_without_a_clone_a_model_in_parts_is_downloaded_and_joined(
    server, tmp_path, monkeypatch, manifest_copy
):
    served, url = server
    run = _shippable_run(tmp_path)
    monkeypatch.setattr(checkpoint, "PART_BYTES", 1_000_000)
    pretrained.ship(run, "big", "in parts", target=served)
    _away_from_the_repository(monkeypatch, tmp_path, url)
    model = pretrained.load_pretrained("big")
    folder = tmp_path / "cache" / "pretrained" / "big"
    assert len(list(folder.glob("model.pt.*"))) == 3
    assert not (folder / "model.pt").exists()
    assert torch.equal(model.z_0, load_model(run / "best.pt").z_0)


# ----------------------------------------------------------------------------
# Queries on training logs
# ----------------------------------------------------------------------------

# A log as Trainer.validate writes it, cut down: the last record has no
# validation bound (as in a run without a valid split), two share the lowest.
LOG = [
    {"epoch": 10, "elapsed_s": 360.0, "valid_bound": 8.0, "test_bound": 8.1},
    {"epoch": 20, "elapsed_s": 720.0, "valid_bound": 7.0, "test_bound": 7.2},
    {"epoch": 30, "elapsed_s": 1080.0, "valid_bound": 7.0, "test_bound": 6.9},
    {"epoch": 40, "elapsed_s": 1440.0, "test_bound": 6.8},
]


def test_best_record_is_the_earliest_lowest_and_skips_records_without_the_key():
    assert pretrained.best_record(LOG) is LOG[1]
    assert pretrained.best_record(LOG, "test_bound") is LOG[3]
    assert pretrained.best_record(LOG[:1]) is LOG[0]
    for log, key in ((LOG, "nll"), ([], "valid_bound")):
        with pytest.raises(ValueError, match=f"no record of the log has '{key}'"):
            pretrained.best_record(log, key)


def test_first_reaching_is_the_first_record_at_or_below_the_bound():
    assert pretrained.first_reaching(LOG, 8.1) is LOG[0]
    assert pretrained.first_reaching(LOG, 7.0) is LOG[2]
    assert pretrained.first_reaching(LOG, 6.85) is LOG[3]
    assert pretrained.first_reaching(LOG, 6.5) is None
    assert pretrained.first_reaching(LOG, 7.0, key="valid_bound") is LOG[1]
    assert pretrained.first_reaching(LOG, 9.0, key="nll") is None


def test_training_hours_are_the_logged_seconds_over_3600():
    assert [pretrained.training_hours(r) for r in LOG] == [0.1, 0.2, 0.3, 0.4]


@pytest.mark.parametrize("name", sorted(pretrained.manifest()))
def test_the_best_record_of_a_shipped_log_is_its_shipped_weights(name):
    state = load_checkpoint(pretrained.pretrained_dir(name) / "model.pt")
    best = pretrained.best_record(pretrained.training_log(name))
    assert (best["epoch"], best["valid_bound"]) == (
        state["epoch"],
        state["valid_bound"],
    )
