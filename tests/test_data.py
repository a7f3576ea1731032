"""Tests of dmm_helpers.data: loaders, checksums, downloads, batches."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import threading
from pathlib import Path

import pytest
import torch

# JSB_PATH is read at import, before any test's monkeypatch removes
# DMM_JSB_PATH; require_jsb fails under CI when the file is missing.
from dmm_fixtures import require_jsb
from hypothesis import given, settings
from hypothesis import strategies as st

from dmm_helpers import data as dmm_data
from dmm_helpers.data import (
    HIGHEST_NOTE,
    JSB_SHA256,
    LOWEST_NOTE,
    NUM_NOTES,
    Batch,
    ChecksumError,
    DownloadError,
    load_bach_chorales,
    load_data,
    load_jsb,
    load_sequences,
    make_batch,
    minibatches,
    quantize_to_quarters,
    reverse_sequences,
    rolls_from_notes,
    split_by_position,
)


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch, tmp_path_factory):
    """No test reads the caller's DMM_JSB_PATH or writes to the user's cache."""
    monkeypatch.delenv("DMM_JSB_PATH", raising=False)
    monkeypatch.setenv("DMM_CACHE_DIR", str(tmp_path_factory.mktemp("default-cache")))


@pytest.fixture(scope="module")
def jsb_path() -> Path:
    return require_jsb()


@pytest.fixture(scope="module")
def jsb_bytes(jsb_path) -> bytes:
    return jsb_path.read_bytes()


@pytest.fixture(scope="module")
def jsb(jsb_path):
    return load_jsb(jsb_path)


def _sha(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _one_byte_changed(raw: bytes) -> bytes:
    """The file with one digit changed, so it is still valid JSON with valid notes."""
    position = raw.index(b"60")  # a note; 61 is a note as well
    return raw[: position + 1] + b"1" + raw[position + 2 :]


# ---------------------------------------------------------------------------
# load_jsb on the canonical file
# ---------------------------------------------------------------------------


def test_jsb_split_sizes_and_time_steps(jsb):
    assert {split: len(seqs) for split, seqs in jsb.items()} == {
        "train": 229,
        "valid": 76,
        "test": 77,
    }
    steps = {split: sum(roll.shape[0] for roll in seqs) for split, seqs in jsb.items()}
    assert steps == {"train": 13807, "valid": 4602, "test": 4725}


def test_jsb_rolls_are_binary_float32_with_88_columns(jsb):
    lengths = []
    for seqs in jsb.values():
        for roll in seqs:
            assert roll.dtype == torch.float32
            assert roll.dim() == 2 and roll.shape[1] == NUM_NOTES
            assert torch.all((roll == 0) | (roll == 1))
            lengths.append(roll.shape[0])
    assert (min(lengths), max(lengths)) == (25, 160)


def test_jsb_columns_match_midi_numbers(jsb, jsb_bytes):
    raw = json.loads(jsb_bytes)
    # A known note: the first step of the first training chorale is C4 C5 G5 E6.
    assert raw["train"][0][0] == [60, 72, 79, 88]
    first = jsb["train"][0][0]
    assert torch.nonzero(first).flatten().tolist() == [
        60 - 21,
        72 - 21,
        79 - 21,
        88 - 21,
    ]
    # Every roll against an independent reading of the JSON.
    for split in ("train", "valid", "test"):
        for roll, sequence in zip(jsb[split], raw[split], strict=True):
            assert roll.shape[0] == len(sequence)
            for t, step in enumerate(sequence):
                assert (
                    torch.nonzero(roll[t]).flatten() + LOWEST_NOTE
                ).tolist() == sorted(step)


def test_jsb_from_environment_variable(jsb_path, monkeypatch, jsb):
    monkeypatch.setenv("DMM_JSB_PATH", str(jsb_path))
    from_env = load_jsb()
    assert all(
        torch.equal(a, b)
        for split in jsb
        for a, b in zip(from_env[split], jsb[split], strict=True)
    )


def test_jsb_environment_variable_naming_no_file(monkeypatch, tmp_path):
    monkeypatch.setenv("DMM_JSB_PATH", str(tmp_path / "nope.json"))
    with pytest.raises(FileNotFoundError, match="DMM_JSB_PATH=.*nope.json"):
        load_jsb()


def test_jsb_missing_local_file(tmp_path):
    with pytest.raises(
        FileNotFoundError, match="JSB chorales file not found: .*absent.json"
    ):
        load_jsb(tmp_path / "absent.json")


def test_jsb_one_byte_changed_is_refused_with_both_hashes(jsb_bytes, tmp_path):
    changed = _one_byte_changed(jsb_bytes)
    assert len(changed) == len(jsb_bytes) and changed != jsb_bytes
    path = tmp_path / "jsb-chorales-quarter.json"
    path.write_bytes(changed)
    with pytest.raises(ChecksumError) as info:
        load_jsb(path)
    message = str(info.value)
    assert str(path) in message
    assert JSB_SHA256 in message
    assert _sha(changed) in message
    assert isinstance(info.value, ValueError)


# ---------------------------------------------------------------------------
# Downloads from a local HTTP server
# ---------------------------------------------------------------------------


class _Server:
    """An HTTP server on 127.0.0.1 serving fixed routes and counting requests."""

    def __init__(self, good: bytes):
        self.hits: dict[str, int] = {}
        routes = {
            "/good.json": ("full", good),
            "/corrupt.json": ("full", _one_byte_changed(good)),
            "/truncated.json": ("truncated", good),
            "/chunked-truncated.json": ("chunked-truncated", good),
        }
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 -- the name http.server dispatches to
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                if self.path not in routes:
                    self.send_error(404, "Not Found")
                    return
                kind, body = routes[self.path]
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                if kind == "chunked-truncated":  # one chunk announced whole, cut short
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    self.wfile.write(
                        f"{len(body):x}\r\n".encode() + body[: len(body) // 3]
                    )
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if kind == "full":
                    self.wfile.write(body)
                else:  # announce the whole body, send a third, hang up
                    self.wfile.write(body[: len(body) // 3])
                    self.wfile.flush()
                    self.close_connection = True

            def log_message(self, *args):  # keep the test output clean
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture(scope="module")
def server(jsb_bytes):
    running = _Server(jsb_bytes)
    yield running
    running.close()


def _files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


def test_download_good_file_is_cached_and_reused(server, tmp_path, jsb):
    url = f"{server.url}/good.json"
    before = server.hits.get("/good.json", 0)
    first = load_jsb(url=url, cache_dir=tmp_path)
    assert server.hits["/good.json"] == before + 1
    assert _files_in(tmp_path) == ["jsb-chorales-quarter.json"]
    assert dmm_data.sha256_of(tmp_path / "jsb-chorales-quarter.json") == JSB_SHA256
    second = load_jsb(url=url, cache_dir=tmp_path)
    assert server.hits["/good.json"] == before + 1  # served from the cache
    for split in jsb:
        assert all(
            torch.equal(a, b) for a, b in zip(first[split], second[split], strict=True)
        )
        assert all(
            torch.equal(a, b) for a, b in zip(first[split], jsb[split], strict=True)
        )


def test_download_uses_cache_dir_from_environment(server, tmp_path, monkeypatch):
    monkeypatch.setenv("DMM_CACHE_DIR", str(tmp_path / "env-cache"))
    load_jsb(url=f"{server.url}/good.json")
    assert _files_in(tmp_path / "env-cache") == ["jsb-chorales-quarter.json"]


def test_default_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("DMM_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    if os.name == "posix" and os.uname().sysname == "Linux":
        assert dmm_data.default_cache_dir() == tmp_path / "dmm_helpers"
    monkeypatch.setenv("DMM_CACHE_DIR", str(tmp_path / "mine"))
    assert dmm_data.default_cache_dir() == tmp_path / "mine"


def test_corrupt_cached_file_is_downloaded_again(server, tmp_path):
    (tmp_path / "jsb-chorales-quarter.json").write_bytes(b'{"train": []}')
    before = server.hits.get("/good.json", 0)
    data = load_jsb(url=f"{server.url}/good.json", cache_dir=tmp_path)
    assert server.hits["/good.json"] == before + 1
    assert len(data["train"]) == 229
    assert dmm_data.sha256_of(tmp_path / "jsb-chorales-quarter.json") == JSB_SHA256


def test_corrupt_download_raises_and_leaves_nothing(server, tmp_path, jsb_bytes):
    url = f"{server.url}/corrupt.json"
    with pytest.raises(ChecksumError) as info:
        load_jsb(url=url, cache_dir=tmp_path)
    message = str(info.value)
    assert url in message
    assert JSB_SHA256 in message and _sha(_one_byte_changed(jsb_bytes)) in message
    assert _files_in(tmp_path) == []


def test_truncated_download_raises_and_leaves_nothing(server, tmp_path, jsb_bytes):
    with pytest.raises(
        DownloadError, match=rf"truncated: received \d+ of {len(jsb_bytes)} bytes"
    ):
        load_jsb(url=f"{server.url}/truncated.json", cache_dir=tmp_path)
    assert _files_in(tmp_path) == []


def test_chunked_download_cut_short_raises_and_leaves_nothing(server, tmp_path):
    with pytest.raises(DownloadError, match="broke off: IncompleteRead"):
        load_jsb(url=f"{server.url}/chunked-truncated.json", cache_dir=tmp_path)
    assert _files_in(tmp_path) == []


def test_http_404_raises_with_offline_advice(server, tmp_path):
    with pytest.raises(DownloadError, match=r"HTTP 404.*load_bach_chorales\(\)"):
        load_jsb(url=f"{server.url}/missing.json", cache_dir=tmp_path)
    assert _files_in(tmp_path) == []


def test_no_server_raises_with_offline_advice(tmp_path):
    with socket.socket() as sock:  # a port that nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(
        DownloadError, match=r"could not download .*DMM_JSB_PATH.*load_bach_chorales"
    ):
        load_jsb(url=f"http://127.0.0.1:{port}/jsb.json", cache_dir=tmp_path)
    assert _files_in(tmp_path) == []


@pytest.mark.parametrize(
    ("failure", "expected", "pattern"),
    [
        (KeyboardInterrupt, KeyboardInterrupt, None),  # the reader pressed Ctrl-C
        (ConnectionResetError, DownloadError, "broke off: ConnectionResetError"),
    ],
)
def test_interrupted_download_leaves_nothing(
    monkeypatch, tmp_path, jsb_bytes, failure, expected, pattern
):
    class Interrupted:
        headers = {"Content-Length": str(len(jsb_bytes))}
        calls = 0

        def read(self, size):
            Interrupted.calls += 1
            if Interrupted.calls > 2:
                raise failure
            return jsb_bytes[:size]

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(
        dmm_data.urllib.request, "urlopen", lambda url, timeout: Interrupted()
    )
    with pytest.raises(expected, match=pattern):
        load_jsb(url="http://example.invalid/jsb.json", cache_dir=tmp_path)
    assert Interrupted.calls == 3  # it did write a partial file before the interrupt
    assert _files_in(tmp_path) == []


# ---------------------------------------------------------------------------
# Validation of note lists (shared by all loaders)
# ---------------------------------------------------------------------------


def _splits(train=None, valid=None, test=None):
    return {
        "train": [[[60, 64], [], [67]]] if train is None else train,
        "valid": [[[60]], [[62], [64]]] if valid is None else valid,
        "test": [[[72]]] if test is None else test,
    }


def test_rolls_from_notes_builds_rolls():
    rolls = rolls_from_notes(_splits())
    assert [r.shape for r in rolls["valid"]] == [(1, 88), (2, 88)]
    expected = torch.zeros(3, 88)
    expected[0, 60 - 21] = expected[0, 64 - 21] = expected[2, 67 - 21] = 1
    assert torch.equal(rolls["train"][0], expected)
    edge = rolls_from_notes(_splits(test=[[[LOWEST_NOTE, HIGHEST_NOTE]]]))["test"][0]
    assert edge[0, 0] == 1 and edge[0, 87] == 1 and edge.sum() == 2


def _bad_valid_step(value):
    return _splits(valid=[[[60]], [[62], [64], [value]]])


@pytest.mark.parametrize(
    ("data", "error", "pattern"),
    [
        (
            _bad_valid_step(20),
            ValueError,
            r"split 'valid', sequence 1, time step 2: "
            r"note 20 is outside the piano range 21\.\.108",
        ),
        (
            _bad_valid_step(109),
            ValueError,
            r"sequence 1, time step 2: note 109 is outside",
        ),
        (
            _bad_valid_step(60.5),
            TypeError,
            r"split 'valid', sequence 1, time step 2: note 60\.5 is not an integer",
        ),
        (
            _bad_valid_step(60.0),
            TypeError,
            r"time step 2: note 60\.0 is not an integer",
        ),
        (
            _bad_valid_step(True),
            TypeError,
            r"time step 2: note True is not an integer .*bool",
        ),
        (
            _bad_valid_step("60"),
            TypeError,
            r"time step 2: note '60' is not an integer .*str",
        ),
        (_splits(test=[[[60]], []]), ValueError, r"split 'test', sequence 1 is empty"),
        ({"train": [[[60]]], "valid": []}, ValueError, r"missing split 'test'"),
        ({**_splits(), "extra": []}, ValueError, r"unexpected keys \['extra'\]"),
        (
            [[[60]]],
            TypeError,
            r"expected a JSON object with keys train, valid, test; got list",
        ),
        (
            _splits(valid={"a": 1}),
            TypeError,
            r"split 'valid' must be a list of sequences, got dict",
        ),
        (_splits(train=[]), ValueError, r"split 'train' holds no sequences"),
        (
            _splits(train=[[60, 62]]),
            TypeError,
            r"split 'train', sequence 0, time step 0 "
            "must be a list of MIDI notes, got int",
        ),
        (
            _splits(train=["abc"]),
            TypeError,
            r"split 'train', sequence 0 must be a list of time steps, got str",
        ),
    ],
)
def test_bad_notes_are_named(data, error, pattern, tmp_path):
    with pytest.raises(error, match=pattern):
        rolls_from_notes(data)
    # The same check guards a reader's own JSON file, and names the file.
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(data))
    with pytest.raises(error, match="mine.json: .*" + pattern):
        load_sequences(path)


def test_empty_splits_other_than_train_are_allowed():
    rolls = rolls_from_notes(_splits(valid=[], test=[]))
    assert rolls["valid"] == [] and rolls["test"] == []


def test_load_sequences_json_round_trip(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(_splits()))
    loaded = load_sequences(path)
    direct = rolls_from_notes(_splits())
    for split in direct:
        assert all(
            torch.equal(a, b) for a, b in zip(loaded[split], direct[split], strict=True)
        )


def test_load_sequences_invalid_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"train": [')
    with pytest.raises(ValueError, match="broken.json is not valid JSON"):
        load_sequences(path)


def test_load_sequences_missing_path(tmp_path):
    with pytest.raises(
        FileNotFoundError, match="no JSON file or folder of music files at .*nothing"
    ):
        load_sequences(tmp_path / "nothing")


# ---------------------------------------------------------------------------
# music21: quantisation, a folder of MIDI files, the offline Bach chorales
# ---------------------------------------------------------------------------


def test_quantize_samples_sounding_pitches_at_quarter_onsets():
    from music21 import chord, note, stream

    soprano = stream.Part()
    soprano.append(note.Rest(quarterLength=1))  # leading silence is dropped
    soprano.append(note.Note("E5", quarterLength=2))  # held over two steps
    soprano.append(note.Note("F5", quarterLength=0.5))  # an eighth on the beat: sampled
    soprano.append(note.Note("G5", quarterLength=0.5))  # off the beat: never sampled
    soprano.append(note.Rest(quarterLength=1))  # an inner rest stays
    soprano.append(note.Note("A5", quarterLength=1))
    soprano.append(note.Rest(quarterLength=2))  # trailing silence is dropped
    bass = stream.Part()
    bass.append(note.Rest(quarterLength=1))
    bass.append(chord.Chord(["C3", "G3"], quarterLength=3))
    score = stream.Score([soprano, bass])
    assert quantize_to_quarters(score) == [
        [48, 55, 76],  # beat 1: E5 + C3 G3
        [48, 55, 76],  # beat 2: E5 held, chord held
        [48, 55, 77],  # beat 3: F5 (the G5 eighth falls between beats)
        [],  # the rest
        [81],  # A5
    ]
    assert quantize_to_quarters(stream.Score([stream.Part([note.Rest()])])) == []


def test_quantize_aligns_grid_with_a_short_pickup():
    from music21 import meter, note, stream

    part = stream.Part()
    pickup = stream.Measure(number=0)
    pickup.append(meter.TimeSignature("4/4"))
    pickup.append(note.Note("G4", quarterLength=0.5))  # an eighth-note upbeat
    pickup.paddingLeft = 3.5
    bar = stream.Measure(number=1)
    for name in ("C4", "D4", "E4", "F4"):
        bar.append(note.Note(name, quarterLength=1))
    part.append([pickup, bar])
    # The grid sits on the beats (offsets 0.5, 1.5, ...), not on the upbeat.
    assert quantize_to_quarters(part) == [[60], [62], [64], [65]]


def _write_midi(path: Path, pitches: list[int]) -> None:
    from music21 import note, stream

    part = stream.Part()
    for pitch in pitches:
        part.append(note.Note(pitch, quarterLength=1))
    path.parent.mkdir(parents=True, exist_ok=True)
    stream.Score([part]).write("midi", fp=str(path))


def test_load_sequences_midi_folder_split_by_sorted_name(tmp_path):
    for i in range(10):
        folder = tmp_path / ("sub" if i == 9 else "")  # sorting is by relative path
        _write_midi(folder / f"piece{i}.mid", [50 + i, 50 + i + 4, 50 + i + 7])
    (tmp_path / "notes.txt").write_text("not music")
    data = load_sequences(tmp_path)
    assert [len(data[s]) for s in ("train", "valid", "test")] == [8, 1, 1]
    first_notes = {
        split: [int(torch.nonzero(roll[0])[0, 0]) + LOWEST_NOTE for roll in rolls]
        for split, rolls in data.items()
    }
    assert first_notes == {"train": list(range(50, 58)), "valid": [58], "test": [59]}
    expected = torch.zeros(3, 88)
    expected[[0, 1, 2], [50 - 21, 54 - 21, 57 - 21]] = 1
    assert torch.equal(data["train"][0], expected)


@pytest.mark.parametrize(
    ("pieces", "sizes"),
    [
        (1, (1, 0, 0)),
        (2, (2, 0, 0)),
        (3, (1, 1, 1)),
        (8, (6, 1, 1)),
        (9, (7, 1, 1)),
        (10, (8, 1, 1)),
        (19, (16, 2, 1)),
        (20, (16, 2, 2)),
    ],
)
def test_split_by_position_leaves_no_split_empty_from_three_pieces(pieces, sizes):
    data = split_by_position(list(range(pieces)))
    assert tuple(len(data[split]) for split in ("train", "valid", "test")) == sizes
    assert sorted(sum(data.values(), [])) == list(range(pieces))
    if pieces >= 10:  # the usual rule, as for the Bach chorales
        assert data["valid"][0] == 8 and data["test"][0] == 9


def test_a_folder_of_eight_midi_files_is_evaluated_on_its_last_two(tmp_path):
    for i in range(8):
        _write_midi(tmp_path / f"piece{i}.mid", [50 + i, 54 + i])
    data = load_sequences(tmp_path)
    first_notes = {
        split: [int(torch.nonzero(roll[0])[0, 0]) + LOWEST_NOTE for roll in rolls]
        for split, rolls in data.items()
    }
    assert first_notes == {"train": list(range(50, 56)), "valid": [56], "test": [57]}


def test_subfolders_train_valid_and_test_are_the_splits(tmp_path):
    for name, pitch in [
        ("train/a.mid", 50),
        ("train/deeper/b.mid", 51),
        ("valid/c.mid", 52),
        ("test/d.mid", 53),
        ("elsewhere/e.mid", 54),  # not in a split: not read
    ]:
        _write_midi(tmp_path / name, [pitch])
    data = load_sequences(tmp_path)
    first_notes = {
        split: [int(torch.nonzero(roll[0])[0, 0]) + LOWEST_NOTE for roll in rolls]
        for split, rolls in data.items()
    }
    assert first_notes == {"train": [50, 51], "valid": [52], "test": [53]}
    for split in ("train", "valid", "test"):
        for file in (tmp_path / split).rglob("*.mid"):
            file.unlink()
    with pytest.raises(ValueError, match=r"train holds no music files"):
        load_sequences(tmp_path)


def test_load_sequences_empty_folder(tmp_path):
    with pytest.raises(ValueError, match="holds no music files"):
        load_sequences(tmp_path)


def test_load_sequences_unparsable_midi(tmp_path):
    (tmp_path / "bad.mid").write_bytes(b"this is not a MIDI file")
    with pytest.raises(ValueError, match="music21 could not parse .*bad.mid"):
        load_sequences(tmp_path)


def test_load_sequences_midi_outside_piano_range(tmp_path):
    _write_midi(tmp_path / "low.mid", [60, 12])
    with pytest.raises(ValueError, match=r"low.mid, time step 1: note 12 is outside"):
        load_sequences(tmp_path)


def test_bach_chorales_small_limit_valid_deterministic_and_cached(
    tmp_path, monkeypatch
):
    first = load_bach_chorales(cache_dir=tmp_path / "a", limit=10)
    # Positions 0-7 train, 8 valid, 9 test; a piece that failed to parse would
    # shrink one.
    assert [len(first[s]) for s in ("train", "valid", "test")] == [8, 1, 1]
    for rolls in first.values():
        for roll in rolls:
            assert roll.dtype == torch.float32 and roll.shape[1] == NUM_NOTES
            assert roll.shape[0] >= 8
            assert torch.all((roll == 0) | (roll == 1))
            assert roll.sum(1).max() >= 3  # four-part writing
    cached = list((tmp_path / "a").iterdir())
    assert len(cached) == 1 and cached[0].suffix == ".json"
    # A second build elsewhere gives the same rolls in the same splits.
    again = load_bach_chorales(cache_dir=tmp_path / "b", limit=10)
    for split in first:
        assert all(
            torch.equal(a, b) for a, b in zip(first[split], again[split], strict=True)
        )

    # The cache is read without touching the corpus.
    import music21.corpus

    def refuse(*args, **kwargs):
        raise AssertionError("the corpus was parsed although the cache exists")

    with monkeypatch.context() as patched:
        patched.setattr(music21.corpus, "parse", refuse)
        from_cache = load_bach_chorales(cache_dir=tmp_path / "a", limit=10)
    for split in first:
        assert all(
            torch.equal(a, b)
            for a, b in zip(first[split], from_cache[split], strict=True)
        )

    # A damaged cache file is rebuilt, not trusted.
    cached[0].write_text('{"train": [[]], "valid": [], "test": []}')
    rebuilt = load_bach_chorales(cache_dir=tmp_path / "a", limit=10)
    for split in first:
        assert all(
            torch.equal(a, b) for a, b in zip(first[split], rebuilt[split], strict=True)
        )
    assert json.loads(cached[0].read_text())["train"][0]  # replaced by the good data


@pytest.mark.parametrize("limit", [0, -3, 2.5, True])
def test_bach_chorales_bad_limit(limit):
    with pytest.raises(ValueError, match="limit must be a positive int, got "):
        load_bach_chorales(limit=limit)


# ---------------------------------------------------------------------------
# make_batch, reverse_sequences, minibatches
# ---------------------------------------------------------------------------


def _random_rolls(lengths, seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.rand(length, NUM_NOTES, generator=generator) < 0.1).to(dtype)
        for length in lengths
    ]


def test_make_batch_pads_reverses_and_masks():
    sequences = _random_rolls([3, 7, 1, 5])
    batch = make_batch(sequences)
    assert isinstance(batch, Batch)
    assert batch.x.shape == batch.x_reversed.shape == (4, 7, 88)
    assert batch.lengths.dtype == torch.long
    assert batch.lengths.tolist() == [3, 7, 1, 5]
    assert batch.mask.dtype == torch.float32
    for b, seq in enumerate(sequences):
        length = seq.shape[0]
        assert torch.equal(batch.x[b, :length], seq)
        assert torch.equal(batch.x_reversed[b, :length], torch.flip(seq, dims=[0]))
        assert torch.all(batch.x[b, length:] == 0)
        assert torch.all(batch.x_reversed[b, length:] == 0)
        assert batch.mask[b].tolist() == [1.0] * length + [0.0] * (7 - length)


def test_make_batch_dtype_and_device_follow():
    batch = make_batch(_random_rolls([2, 4], dtype=torch.float64), device="cpu")
    assert batch.x.dtype == batch.x_reversed.dtype == batch.mask.dtype == torch.float64
    assert batch.x.device.type == batch.lengths.device.type == "cpu"


@pytest.mark.parametrize(
    ("sequences", "error", "pattern"),
    [
        ([], ValueError, "at least one sequence; got an empty list"),
        (
            [torch.zeros(3, 88), torch.zeros(88)],
            ValueError,
            r"sequence 1 has shape \(88,\); expected a 2-D \(time, 88\) roll",
        ),
        ([torch.zeros(3, 87)], ValueError, "sequence 0 has 87 columns; expected 88"),
        (
            [torch.zeros(3, 88), torch.zeros(2, 89)],
            ValueError,
            "sequence 1 has 89 columns",
        ),
        (
            [torch.zeros(3, 88), torch.zeros(0, 88)],
            ValueError,
            r"sequence 1 is empty \(0 time steps\)",
        ),
        (
            [torch.zeros(3, 88), torch.zeros(3, 88, dtype=torch.float64)],
            TypeError,
            "mixed dtypes: sequence 0 is torch.float32 but sequence 1 is torch.float64",
        ),
        (
            [torch.zeros(3, 88, dtype=torch.long)],
            TypeError,
            "sequence 0 has dtype torch.int64; expected a floating dtype",
        ),
        ([[[0.0] * 88]], TypeError, "sequence 0 is a list, expected a torch.Tensor"),
        (torch.zeros(2, 3, 88), TypeError, "not a single tensor"),
    ],
)
def test_make_batch_bad_input(sequences, error, pattern):
    with pytest.raises(error, match=pattern):
        make_batch(sequences)


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 9), min_size=1, max_size=6),
    extra=st.integers(0, 3),
    trailing=st.sampled_from([(), (1,), (3,), (2, 2)]),
    seed=st.integers(0, 2**16),
)
def test_reverse_sequences_is_an_involution_matching_flip(
    lengths, extra, trailing, seed
):
    t_max = max(lengths) + extra
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(
        (len(lengths), t_max, *trailing), generator=generator
    )  # padding not zero
    lengths_t = torch.tensor(lengths)
    reversed_x = reverse_sequences(x, lengths_t)
    assert reversed_x.shape == x.shape
    assert torch.equal(reverse_sequences(reversed_x, lengths_t), x)
    for b, length in enumerate(lengths):
        assert torch.equal(reversed_x[b, :length], torch.flip(x[b, :length], dims=[0]))
        assert torch.equal(reversed_x[b, length:], x[b, length:])


@settings(max_examples=30, deadline=None)
@given(lengths=st.lists(st.integers(1, 12), min_size=1, max_size=5))
def test_make_batch_agrees_with_flips_for_random_lengths(lengths):
    sequences = _random_rolls(lengths, seed=len(lengths))
    batch = make_batch(sequences)
    assert batch.x.shape == (len(lengths), max(lengths), NUM_NOTES)
    assert torch.equal(batch.mask.sum(1).long(), batch.lengths)
    assert torch.equal(reverse_sequences(batch.x_reversed, batch.lengths), batch.x)
    for b, seq in enumerate(sequences):
        assert torch.equal(batch.x_reversed[b, : len(seq)], seq.flip(0))


@pytest.mark.parametrize(
    ("x", "lengths", "error", "pattern"),
    [
        (
            torch.zeros(2, 4),
            torch.tensor([5, 1]),
            ValueError,
            r"lengths must lie in 0\.\.4",
        ),
        (torch.zeros(2, 4), torch.tensor([-1, 1]), ValueError, r"got min -1"),
        (
            torch.zeros(2, 4),
            torch.tensor([1, 2, 3]),
            ValueError,
            r"lengths must have shape \(2,\)",
        ),
        (torch.zeros(2, 4), torch.tensor([1.0, 2.0]), TypeError, "integer tensor"),
        (
            torch.zeros(4),
            torch.tensor([1]),
            ValueError,
            r"shape \(batch, time, \.\.\.\)",
        ),
        ([[0.0]], torch.tensor([1]), TypeError, "expects tensors"),
    ],
)
def test_reverse_sequences_bad_input(x, lengths, error, pattern):
    with pytest.raises(error, match=pattern):
        reverse_sequences(x, lengths)


def _tagged_rolls(n):
    """Rolls whose length identifies them: sequence i has i + 1 steps."""
    return _random_rolls([i + 1 for i in range(n)], seed=n)


def _epoch(sequences, **kwargs):
    return [batch.lengths.tolist() for batch in minibatches(sequences, **kwargs)]


def test_minibatches_cover_every_sequence_once():
    sequences = _tagged_rolls(23)
    epoch = _epoch(sequences, batch_size=5, seed=1)
    assert [len(b) for b in epoch] == [5, 5, 5, 5, 3]
    assert sorted(length for batch in epoch for length in batch) == list(range(1, 24))
    for batch in minibatches(sequences, 5, seed=1):
        for b, length in enumerate(batch.lengths.tolist()):
            assert torch.equal(batch.x[b, :length], sequences[length - 1])


def test_minibatches_reproducible_by_seed_and_leave_global_rng_alone():
    sequences = _tagged_rolls(30)
    state = torch.get_rng_state()
    assert _epoch(sequences, batch_size=4, seed=7) == _epoch(
        sequences, batch_size=4, seed=7
    )
    assert _epoch(sequences, batch_size=4, seed=7) != _epoch(
        sequences, batch_size=4, seed=8
    )
    assert torch.equal(torch.get_rng_state(), state)


def test_minibatches_without_shuffle_and_drop_last():
    sequences = _tagged_rolls(7)
    assert _epoch(sequences, batch_size=3, seed=0, shuffle=False) == [
        [1, 2, 3],
        [4, 5, 6],
        [7],
    ]
    dropped = _epoch(sequences, batch_size=3, seed=0, drop_last=True)
    assert [len(b) for b in dropped] == [3, 3]
    assert len(set(sum(dropped, []))) == 6


@pytest.mark.parametrize("batch_size", [0, -1, 2.0, True])
def test_minibatches_bad_batch_size_raises_at_call(batch_size):
    with pytest.raises(ValueError, match="batch_size must be a positive int, got "):
        minibatches(_tagged_rolls(3), batch_size, seed=0)


def test_minibatches_empty_list_raises_at_call():
    with pytest.raises(ValueError, match="at least one sequence"):
        minibatches([], 2, seed=0)


# ---------------------------------------------------------------------------
# load_data: the --data flag of the commands
# ---------------------------------------------------------------------------


def test_load_data_dispatches_on_the_data_flag(tmp_path, monkeypatch):
    own = tmp_path / "own.json"
    own.write_text(json.dumps(_splits()))
    calls = []
    monkeypatch.setattr(
        dmm_data, "load_jsb", lambda *path: calls.append(("jsb", *path)) or "jsb"
    )
    monkeypatch.setattr(
        dmm_data, "load_bach_chorales", lambda: calls.append(("bach",)) or "bach"
    )
    monkeypatch.setattr(
        dmm_data, "load_sequences", lambda path: calls.append(("own", path)) or "own"
    )
    assert load_data("jsb") == "jsb" and load_data("bach") == "bach"
    assert load_data(str(own)) == "own"
    assert load_data(str(tmp_path)) == "own"  # a folder of MIDI files
    # A file with the canonical file's SHA-256 is read as JSB, checksum and all.
    monkeypatch.setattr(dmm_data, "JSB_SHA256", dmm_data.sha256_of(own))
    assert load_data(str(own)) == "jsb"
    assert calls == [
        ("jsb",),
        ("bach",),
        ("own", own),
        ("own", tmp_path),
        ("jsb", own),
    ]
    with pytest.raises(FileNotFoundError, match=r"--data 'nowhere.json': no such file"):
        load_data("nowhere.json")


def test_load_data_reads_a_json_file_in_the_jsb_format(tmp_path):
    raw = _splits()
    path = tmp_path / "own.json"
    path.write_text(json.dumps(raw))
    data = load_data(str(path))
    assert {split: len(rolls) for split, rolls in data.items()} == {
        split: len(raw[split]) for split in ("train", "valid", "test")
    }
    first = data["train"][0]
    assert first.shape == (len(raw["train"][0]), 88)
    assert first.sum(-1).tolist() == [len(step) for step in raw["train"][0]]
