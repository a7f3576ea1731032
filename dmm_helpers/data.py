"""Piano-roll data for the deep Markov model, and padded mini-batches.

Introduced in chapter 02 (``notebooks/02_jsb_chorales.ipynb``).

A *piano roll* is a float32 tensor of shape ``(T, 88)``: row ``t`` is one time
step (a quarter note), column ``k`` is 1 when MIDI note ``21 + k`` sounds then
(column 0 = A0 = MIDI 21, column 87 = C8 = MIDI 108) and 0 otherwise.

Every loader returns ``{"train": [...], "valid": [...], "test": [...]}``,
each a list of such rolls:

- :func:`load_jsb` -- the JSB chorales benchmark (Boulanger-Lewandowski et al.
  2012; 229/76/77 chorales), downloaded from a pinned URL or read from a local
  copy, SHA-256-verified before it is parsed;
- :func:`load_bach_chorales` -- an offline stand-in built from the Bach
  chorales bundled with music21;
- :func:`load_sequences` -- a reader's own music: a JSON file in the JSB
  format or a folder of MIDI/MusicXML files;
- :func:`load_data` -- one of these by the name or path that the training
  and evaluation commands take (``--data jsb``, ``bach`` or a path).

On disk the format is JSON, never pickle: an object with the three splits, each
a list of sequences, each sequence a list of time steps, each time step a list
of the MIDI note numbers (integers in 21..108) sounding then; ``[]`` is a rest.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import math
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from dmm_helpers.checks import atomic_write, positive_int, write_bytes

NUM_NOTES = 88  # keys of a piano
LOWEST_NOTE = 21  # MIDI number of A0, column 0 of a piano roll
HIGHEST_NOTE = 108  # MIDI number of C8, column 87
SPLITS = ("train", "valid", "test")

JSB_URL = (
    "https://raw.githubusercontent.com/czhuang/JSB-Chorales-dataset/"
    "9a7f733ddb4ed91f48da64ac7f0f621c34aadd4d/jsb-chorales-quarter.json"
)
JSB_SHA256 = "2db9329f1881a1d3f49703ec556bf1d6f84b4f6c1d702c156536e93cf31e1c91"
JSB_FILENAME = "jsb-chorales-quarter.json"

# Bumped whenever the quantisation below changes, so stale caches are not reused.
_QUANTISATION_VERSION = 1
_MUSIC_SUFFIXES = (".mid", ".midi", ".mxl", ".musicxml", ".xml")


class ChecksumError(ValueError):
    """A file's SHA-256 differs from the expected one."""


class DownloadError(OSError):
    """A download failed (no network, HTTP error, or a truncated response)."""


# ---------------------------------------------------------------------------
# Validation and conversion, shared by every loader
# ---------------------------------------------------------------------------


def _validate_notes(data: Any, source: str) -> None:
    """Raise a clear error unless ``data`` is ``{split: [[[note, ...], ...], ...]}``.

    Notes must be JSON integers (Python ``int``, not ``bool``) in 21..108.
    Floats are refused even when integral (``60.0``): a float in a note list
    almost always means the data went through a numeric conversion (say a
    normalised or frequency column) and is not what the writer intended.
    A time step may be empty (a rest); a sequence may not. A split may hold
    no sequences (e.g. a reader who keeps all their music in ``train``), but
    ``train`` may not.
    """
    if not isinstance(data, dict):
        raise TypeError(
            f"{source}: expected a JSON object with keys {', '.join(SPLITS)}; "
            f"got {type(data).__name__}"
        )
    for split in SPLITS:
        if split not in data:
            raise ValueError(
                f"{source}: missing split {split!r} "
                f"(found keys {sorted(map(str, data))})"
            )
    extra = sorted(str(key) for key in data if key not in SPLITS)
    if extra:
        raise ValueError(
            f"{source}: unexpected keys {extra}; expected exactly {', '.join(SPLITS)}"
        )
    for split in SPLITS:
        sequences = data[split]
        if not isinstance(sequences, list):
            raise TypeError(
                f"{source}: split {split!r} must be a list of sequences, "
                f"got {type(sequences).__name__}"
            )
        if split == "train" and not sequences:
            raise ValueError(f"{source}: split 'train' holds no sequences")
        for i, sequence in enumerate(sequences):
            validate_sequence(sequence, f"{source}: split {split!r}, sequence {i}")


def validate_sequence(sequence: Any, where: str) -> None:
    """Raise unless ``sequence`` is a non-empty list of lists of ints in 21..108.

    ``sequence`` holds the MIDI notes of each time step (the JSON format of
    this module); ``where`` names it in the message, which also gives the
    time step and the offending value.

    Raises:
        TypeError: a sequence or time step that is not a list, a note that
            is not an int.
        ValueError: an empty sequence, a note off the piano.
    """
    if not isinstance(sequence, list):
        raise TypeError(
            f"{where} must be a list of time steps, got {type(sequence).__name__}"
        )
    if not sequence:
        raise ValueError(f"{where} is empty (0 time steps)")
    for t, step in enumerate(sequence):
        if not isinstance(step, list):
            raise TypeError(
                f"{where}, time step {t} must be a list of MIDI notes, "
                f"got {type(step).__name__} {step!r}"
            )
        for note in step:
            if isinstance(note, bool) or not isinstance(note, int):
                raise TypeError(
                    f"{where}, time step {t}: note {note!r} is not an integer "
                    f"MIDI number (got {type(note).__name__})"
                )
            if not LOWEST_NOTE <= note <= HIGHEST_NOTE:
                raise ValueError(
                    f"{where}, time step {t}: note {note} is outside the piano "
                    f"range {LOWEST_NOTE}..{HIGHEST_NOTE}"
                )


def notes_to_roll(sequence: list[list[int]]) -> torch.Tensor:
    """One sequence of note lists -> float32 roll ``(T, 88)``.

    ``roll[t, note - 21] = 1`` for every note of step ``t``. The sequence is
    not checked here: pass it through :func:`validate_sequence` first.
    """
    roll = torch.zeros(len(sequence), NUM_NOTES, dtype=torch.float32)  # (T, 88)
    steps = [t for t, step in enumerate(sequence) for _ in step]
    keys = [note - LOWEST_NOTE for step in sequence for note in step]
    roll[steps, keys] = 1.0
    return roll


def rolls_from_notes(
    data: Any, *, source: str = "data"
) -> dict[str, list[torch.Tensor]]:
    """Validate note lists and turn them into piano rolls.

    Args:
        data: ``{"train": seqs, "valid": seqs, "test": seqs}``; a sequence is a
            non-empty list of time steps, a time step a list of integer MIDI
            notes in 21..108 (empty for a rest).
        source: names the data in error messages (e.g. the file).

    Returns:
        The same splits as lists of float32 rolls ``(T, 88)`` with
        ``roll[t, note - 21] = 1`` for every note of step ``t``.

    Raises:
        TypeError, ValueError: naming the split, sequence index, time step
        and offending value.
    """
    _validate_notes(data, source)
    return {split: [notes_to_roll(seq) for seq in data[split]] for split in SPLITS}


def _parse_json_bytes(raw: bytes, source: str) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{source} is not valid JSON: {error}") from error


# ---------------------------------------------------------------------------
# Files: cache folder, checksums, download
# ---------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """The folder where downloads and built data sets are cached.

    ``$DMM_CACHE_DIR`` if set; otherwise the platform's user cache folder
    (as the ``platformdirs`` package would choose): ``$XDG_CACHE_HOME`` or
    ``~/.cache`` on Linux, ``~/Library/Caches`` on macOS,
    ``%LOCALAPPDATA%`` on Windows, with ``dmm_helpers`` appended.
    """
    if os.environ.get("DMM_CACHE_DIR"):
        return Path(os.environ["DMM_CACHE_DIR"]).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "dmm_helpers"


def _resolve_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    return (
        Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    )


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 digest of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_sha256(actual: str, expected: str, name: str) -> None:
    if actual != expected:
        raise ChecksumError(
            f"{name} failed its SHA-256 check: expected {expected}, got {actual}. "
            "The file is corrupt or is not the canonical JSB chorales file "
            "(load other data with load_sequences())."
        )


def download(
    url: str, target: str | os.PathLike, expected_sha256: str, timeout: float = 60.0
) -> None:
    """Download ``url`` to ``target``, verified; on any failure leave no file.

    The bytes go to a temporary file beside ``target``
    (:func:`dmm_helpers.checks.atomic_write`), hashed as they arrive; only a
    response that is complete (as long as its Content-Length says) and
    matches ``expected_sha256`` is renamed to ``target``.

    Raises:
        DownloadError: no connection, an HTTP error, or a truncated response
            (the message says how to work offline).
        ChecksumError: the bytes are not the expected ones.
    """
    offline_hint = (
        "If you are offline, pass a local copy of the file, "
        f"load_jsb('path/to/{JSB_FILENAME}') (or set DMM_JSB_PATH), "
        "or use load_bach_chorales() for the offline stand-in built from "
        "music21's Bach chorales."
    )
    digest = hashlib.sha256()
    received = 0
    with atomic_write(target) as file:
        try:
            response = urllib.request.urlopen(url, timeout=timeout)
        except urllib.error.HTTPError as error:
            raise DownloadError(
                f"could not download {url}: HTTP {error.code} {error.reason}. "
                f"{offline_hint}"
            ) from error
        except (urllib.error.URLError, OSError, ValueError) as error:
            reason = getattr(error, "reason", error)
            raise DownloadError(
                f"could not download {url}: {reason}. {offline_hint}"
            ) from error
        with response:
            announced = response.headers.get("Content-Length")
            while True:
                try:
                    chunk = response.read(1 << 16)
                except (OSError, http.client.HTTPException) as error:
                    raise DownloadError(
                        f"download of {url} broke off: {error!r}. {offline_hint}"
                    ) from error
                if not chunk:
                    break
                file.write(chunk)  # a full disk raises its own OSError, unchanged
                digest.update(chunk)
                received += len(chunk)
        # http.client returns a short body without complaint when the server
        # closes the connection early, so compare with the announced length.
        if announced is not None and announced.isdigit() and received != int(announced):
            raise DownloadError(
                f"download of {url} was truncated: received {received} of "
                f"{announced} bytes. {offline_hint}"
            )
        _check_sha256(
            digest.hexdigest(), expected_sha256, f"the file downloaded from {url}"
        )


# ---------------------------------------------------------------------------
# JSB chorales
# ---------------------------------------------------------------------------


def load_jsb(
    path: str | os.PathLike | None = None,
    *,
    url: str = JSB_URL,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, list[torch.Tensor]]:
    """The JSB chorales benchmark as piano rolls.

    229 / 76 / 77 chorales (13,807 / 4,602 / 4,725 quarter-note steps) in the
    train / valid / test split of Boulanger-Lewandowski et al. (2012), the
    data the DMM paper and Pyro's tutorial report on.

    Where the file comes from, in order: ``path``; else the environment
    variable ``DMM_JSB_PATH``; else ``jsb-chorales-quarter.json`` in the cache
    folder (``cache_dir``, default :func:`default_cache_dir`), downloaded from
    ``url`` first if it is not there. Every file is checked against
    :data:`JSB_SHA256` before it is parsed (as JSON, never pickle); a cached
    file that fails the check is downloaded again.

    Returns:
        ``{"train", "valid", "test"}`` -> lists of float32 rolls ``(T, 88)``.

    Raises:
        ChecksumError: the file's SHA-256 is not :data:`JSB_SHA256` (the
            message names the file and both hashes).
        DownloadError: the download failed; the message says how to work
            offline.
        FileNotFoundError: ``path`` or ``DMM_JSB_PATH`` names no file.
    """
    if path is None and os.environ.get("DMM_JSB_PATH"):
        path = os.environ["DMM_JSB_PATH"]
        origin = f"DMM_JSB_PATH={path}"
    else:
        origin = str(path)
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"JSB chorales file not found: {origin}")
    else:
        path = _resolve_cache_dir(cache_dir) / JSB_FILENAME
        if path.is_file() and sha256_of(path) != JSB_SHA256:
            path.unlink()  # our own cache, corrupted on disk: fetch a fresh copy
        if not path.is_file():
            download(url, path, JSB_SHA256)
    # Hash the very bytes that get parsed, so nothing can change in between.
    raw = path.read_bytes()
    _check_sha256(hashlib.sha256(raw).hexdigest(), JSB_SHA256, str(path))
    return rolls_from_notes(_parse_json_bytes(raw, str(path)), source=str(path))


# ---------------------------------------------------------------------------
# music21: quantisation, the offline Bach chorales, a reader's own music
# ---------------------------------------------------------------------------


def _split_of(index: int) -> str:
    """The fixed 80/10/10 split by position: 0-7 train, 8 valid, 9 test (mod 10)."""
    return {8: "valid", 9: "test"}.get(index % 10, "train")


def quantize_to_quarters(score: Any) -> list[list[int]]:
    """Sample a music21 stream's sounding pitches at every quarter-note onset.

    Step ``k`` holds the MIDI numbers of all notes (in all parts) with
    ``onset <= s_k < onset + duration`` at ``s_k = phase + k`` quarter notes.
    ``phase`` aligns the grid with the beat when the piece opens with a
    pickup shorter than a whole number of quarters (e.g. an eighth); it is 0
    otherwise. Nothing is transposed; repeats are not expanded; grace notes
    (no duration) are never sampled; unpitched percussion is ignored. Leading
    and trailing silent steps are dropped, rests inside the piece are kept
    as empty steps.

    Args:
        score: any ``music21.stream.Stream`` (a score, a part, a parsed MIDI).

    Returns:
        A list of time steps, each a sorted list of distinct MIDI numbers
        (possibly empty); an empty list when the stream has no pitched notes.
    """
    phase = 0.0
    measures = score.recurse().getElementsByClass("Measure")
    first = measures.first() if measures else None
    if first is not None and first.paddingLeft:
        phase = float(-first.paddingLeft % 1)
    spans: list[tuple[float, float, list[int]]] = []
    for element in score.flatten().notes:
        pitches = [p.midi for p in getattr(element, "pitches", ())]
        duration = float(element.duration.quarterLength)
        if pitches and duration > 0:
            onset = float(element.offset)
            spans.append((onset, onset + duration, pitches))
    if not spans:
        return []
    end = max(stop for _, stop, _ in spans)
    steps: list[set[int]] = [set() for _ in range(max(0, math.ceil(end - phase)))]
    for onset, stop, pitches in spans:
        # Grid points s = phase + k inside [onset, stop).
        for k in range(max(0, math.ceil(onset - phase)), math.ceil(stop - phase)):
            steps[k].update(pitches)
    sounding = [k for k, step in enumerate(steps) if step]
    return [sorted(step) for step in steps[sounding[0] : sounding[-1] + 1]]


def _read_cached_json(path: Path) -> Any | None:
    """A cached JSON file's contents, or None if it is absent or unreadable."""
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None


def load_bach_chorales(
    *, cache_dir: str | os.PathLike | None = None, limit: int | None = None
) -> dict[str, list[torch.Tensor]]:
    """An offline stand-in for JSB: the Bach chorales bundled with music21.

    Which chorales: the 371 chorales in Riemenschneider's numbering, as listed
    by ``music21.corpus.chorales.Iterator``; a few numbers share one file, so
    each file is kept once, at its first number (350 distinct files in
    music21 10.5). Each is quantised with :func:`quantize_to_quarters`
    (quarter-note steps, all parts, no transposition); pieces that fail to
    parse or have no notes are dropped.

    The split is fixed by position in that list (``i`` counted from 0 over
    the distinct files): ``i % 10`` in 0-7 -> train, 8 -> valid, 9 -> test,
    about 80/10/10 (280 / 35 / 35 with music21 10.5). Unlike JSB this is not
    the Boulanger-Lewandowski split, so numbers computed on it are not
    comparable with the papers'.

    The result is cached as JSON in the cache folder, keyed by the music21
    version (and ``limit``), so only the first call parses scores.

    Args:
        cache_dir: cache folder (default :func:`default_cache_dir`).
        limit: use only the first ``limit`` distinct files (fast tests); the
            split of each piece is the same as in the full data set.

    Returns:
        ``{"train", "valid", "test"}`` -> lists of float32 rolls ``(T, 88)``.
    """
    if limit is not None:
        positive_int("limit", limit)
    import music21
    from music21 import corpus
    from music21.corpus import chorales

    tag = "all" if limit is None else f"first{limit}"
    cache_path = _resolve_cache_dir(cache_dir) / (
        f"bach-chorales-quarter-q{_QUANTISATION_VERSION}"
        f"-music21-{music21.__version__}-{tag}.json"
    )
    cached = _read_cached_json(cache_path)
    if cached is not None:
        try:
            return rolls_from_notes(cached, source=str(cache_path))
        except (TypeError, ValueError):
            pass  # a damaged cache file: build it again below and replace it

    names = list(dict.fromkeys(chorales.Iterator(returnType="filename")))
    if limit is not None:
        names = names[:limit]
    data: dict[str, list[list[list[int]]]] = {split: [] for split in SPLITS}
    for index, name in enumerate(names):
        try:
            notes = quantize_to_quarters(corpus.parse(name))
        except Exception:  # noqa: BLE001
            continue  # a corpus file music21 cannot read is skipped, as documented
        if notes:
            data[_split_of(index)].append(notes)
    rolls = rolls_from_notes(data, source="music21 Bach chorales")
    write_bytes(cache_path, json.dumps(data, separators=(",", ":")).encode())
    return rolls


def load_sequences(path: str | os.PathLike) -> dict[str, list[torch.Tensor]]:
    """A reader's own music as piano rolls, in the same format as :func:`load_jsb`.

    ``path`` is either

    - a JSON file in the JSB format (validated the same way, no checksum), or
    - a folder of ``.mid``/``.midi``/``.mxl``/``.musicxml``/``.xml`` files
      (searched recursively), each parsed with music21 and quantised with
      :func:`quantize_to_quarters`. If the folder has subfolders ``train``,
      ``valid`` and ``test`` (``train`` at least), they are the splits, and
      files elsewhere are ignored. Otherwise the files are sorted by their
      path relative to the folder and split by position
      (:func:`split_by_position`): ``i % 10`` in 0-7 -> train, 8 -> valid,
      9 -> test, except that of fewer than ten files the last two go to valid
      and test (one or two files all go to train).

    MIDI files are best written with one voice per track (as
    :func:`dmm_helpers.music.write_midi` does): music21 10 can shift notes
    when a single track holds overlapping notes of different lengths, so
    check a file's piano roll by eye (``dmm_helpers.music.plot_piano_roll``)
    before training on it.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: invalid JSON or notes; a folder (or its ``train``
            subfolder) without music files; a file music21 cannot parse or
            that has no notes (named).
    """
    path = Path(path).expanduser()
    if path.is_file():
        return rolls_from_notes(
            _parse_json_bytes(path.read_bytes(), str(path)), source=str(path)
        )
    if not path.is_dir():
        raise FileNotFoundError(f"no JSON file or folder of music files at {path}")
    if (path / "train").is_dir():
        data = {split: _read_music(path / split) for split in SPLITS}
        if not data["train"]:
            raise ValueError(
                f"{path / 'train'} holds no music files "
                f"(looked for {', '.join(_MUSIC_SUFFIXES)})"
            )
    else:
        pieces = _read_music(path)
        if not pieces:
            raise ValueError(
                f"{path} holds no music files (looked for {', '.join(_MUSIC_SUFFIXES)})"
            )
        data = split_by_position(pieces)
    return rolls_from_notes(data, source=str(path))


def split_by_position(pieces: Sequence[Any]) -> dict[str, list[Any]]:
    """Split a folder's pieces by position: 8 of every 10 to train, 1 valid, 1 test.

    ``i % 10`` in 0-7 -> train, 8 -> valid, 9 -> test, as
    :func:`load_bach_chorales` does; with three to nine pieces, which that
    rule would leave without a test (or valid) piece, the last two go to
    valid and test, so that a run on them is evaluated. One or two pieces
    all go to train.
    """
    data: dict[str, list[Any]] = {split: [] for split in SPLITS}
    small = 3 <= len(pieces) < 10
    for index, piece in enumerate(pieces):
        if small:
            split = {len(pieces) - 2: "valid", len(pieces) - 1: "test"}.get(
                index, "train"
            )
        else:
            split = _split_of(index)
        data[split].append(piece)
    return data


def _read_music(folder: Path) -> list[list[list[int]]]:
    """The notes of every music file below ``folder``, sorted by relative path."""
    import music21

    if not folder.is_dir():
        return []
    files = sorted(
        (
            f
            for f in folder.rglob("*")
            if f.is_file() and f.suffix.lower() in _MUSIC_SUFFIXES
        ),
        key=lambda f: f.relative_to(folder).as_posix(),
    )
    pieces = []
    for file in files:
        try:
            score = music21.converter.parse(file)
        except Exception as error:  # noqa: BLE001
            # music21 raises many types: name the file whatever it raised.
            raise ValueError(f"music21 could not parse {file}: {error}") from error
        notes = quantize_to_quarters(score)
        if not notes:
            raise ValueError(f"{file} has no pitched notes")
        # Named by its file, should a pitch lie off the piano.
        validate_sequence(notes, str(file))
        pieces.append(notes)
    return pieces


def load_data(spec: str) -> dict[str, list[torch.Tensor]]:
    """The splits named by ``spec`` (the ``--data`` flag): a name or a path.

    ``"jsb"`` is :func:`load_jsb`, ``"bach"`` :func:`load_bach_chorales`. A
    file whose SHA-256 is the canonical JSB file's is read with
    :func:`load_jsb` (checksum and all); any other JSON file or folder of
    MIDI files with :func:`load_sequences`.

    Raises:
        FileNotFoundError: ``spec`` is neither a name nor an existing path.
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


# ---------------------------------------------------------------------------
# Mini-batches
# ---------------------------------------------------------------------------


class Batch(NamedTuple):
    """A zero-padded mini-batch of piano rolls.

    Attributes:
        x: ``(B, T_max, 88)`` the rolls, zero after each sequence's end.
        x_reversed: ``(B, T_max, 88)`` each roll reversed in time *within its
            own length*: ``x_reversed[b, t] = x[b, lengths[b] - 1 - t]`` for
            ``t < lengths[b]``; the padding stays at the end (zeros).
        mask: ``(B, T_max)`` 1.0 on real time steps, 0.0 on padding, in the
            rolls' float dtype.
        lengths: ``(B,)`` long, the true length of each sequence.
    """

    x: torch.Tensor
    x_reversed: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor


def reverse_sequences(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence of a padded batch in time, within its own length.

    ``out[b, t] = x[b, lengths[b] - 1 - t]`` for ``t < lengths[b]`` and
    ``out[b, t] = x[b, t]`` otherwise, so whatever sits in the padding stays
    where it is and the map is an involution: reversing twice gives ``x``
    back exactly. Works on any trailing shape (rolls, hidden states, ...).

    Args:
        x: ``(B, T_max, ...)`` padded batch.
        lengths: ``(B,)`` integer lengths, each in ``0..T_max``.

    Returns:
        ``(B, T_max, ...)`` tensor, same dtype and device as ``x``.
    """
    if not isinstance(x, torch.Tensor) or not isinstance(lengths, torch.Tensor):
        raise TypeError(
            "reverse_sequences expects tensors x and lengths, got "
            f"{type(x).__name__} and {type(lengths).__name__}"
        )
    if x.dim() < 2:
        raise ValueError(
            f"x must have shape (batch, time, ...); got shape {tuple(x.shape)}"
        )
    if lengths.dim() != 1 or lengths.shape[0] != x.shape[0]:
        raise ValueError(
            f"lengths must have shape ({x.shape[0]},) to match x's batch size; "
            f"got shape {tuple(lengths.shape)}"
        )
    if (
        lengths.dtype.is_floating_point
        or lengths.dtype.is_complex
        or lengths.dtype == torch.bool
    ):
        raise TypeError(f"lengths must be an integer tensor, got dtype {lengths.dtype}")
    t_max = x.shape[1]
    if lengths.numel() and (int(lengths.min()) < 0 or int(lengths.max()) > t_max):
        raise ValueError(
            f"lengths must lie in 0..{t_max} (the time dimension of x); "
            f"got min {int(lengths.min())}, max {int(lengths.max())}"
        )
    lengths = lengths.to(device=x.device, dtype=torch.long)
    time = torch.arange(t_max, device=x.device)  # (T_max,)
    # Source index of each output step: mirrored inside the sequence,
    # identity on padding.
    source = torch.where(
        time < lengths[:, None], lengths[:, None] - 1 - time, time
    )  # (B, T_max)
    index = source.reshape(source.shape + (1,) * (x.dim() - 2)).expand(x.shape)
    return torch.gather(x, 1, index)


def make_batch(
    sequences: Sequence[torch.Tensor], device: torch.device | str | None = None
) -> Batch:
    """Pad a list of piano rolls into a :class:`Batch`.

    Args:
        sequences: ``B >= 1`` float tensors of shapes ``(T_b, 88)`` with
            ``T_b >= 1``, all of the same floating dtype.
        device: where the batch lives; default: the first sequence's device.

    Returns:
        ``Batch(x, x_reversed, mask, lengths)`` with ``T_max = max_b T_b``;
        ``x``, ``x_reversed`` and ``mask`` have the sequences' dtype.
    """
    if isinstance(sequences, torch.Tensor):
        raise TypeError(
            "make_batch expects a list of (T, 88) tensors, not a single tensor; "
            "wrap one sequence as [roll]"
        )
    sequences = list(sequences)
    if not sequences:
        raise ValueError("make_batch needs at least one sequence; got an empty list")
    dtype = None
    for i, seq in enumerate(sequences):
        if not isinstance(seq, torch.Tensor):
            raise TypeError(
                f"sequence {i} is a {type(seq).__name__}, expected a torch.Tensor"
            )
        if seq.dim() != 2:
            raise ValueError(
                f"sequence {i} has shape {tuple(seq.shape)}; "
                f"expected a 2-D (time, {NUM_NOTES}) roll"
            )
        if seq.shape[1] != NUM_NOTES:
            raise ValueError(
                f"sequence {i} has {seq.shape[1]} columns; "
                f"expected {NUM_NOTES} (one per piano key)"
            )
        if seq.shape[0] == 0:
            raise ValueError(f"sequence {i} is empty (0 time steps)")
        if not seq.dtype.is_floating_point:
            raise TypeError(
                f"sequence {i} has dtype {seq.dtype}; expected a floating dtype "
                "(convert with roll.float())"
            )
        if dtype is None:
            dtype = seq.dtype
        elif seq.dtype != dtype:
            raise TypeError(
                f"mixed dtypes: sequence 0 is {dtype} but sequence {i} is {seq.dtype}"
            )
    device = torch.device(device) if device is not None else sequences[0].device
    lengths = torch.tensor(
        [seq.shape[0] for seq in sequences], dtype=torch.long, device=device
    )
    x = torch.nn.utils.rnn.pad_sequence(
        [seq.to(device) for seq in sequences], batch_first=True
    )  # (B, T_max, 88), zeros after each end
    time = torch.arange(x.shape[1], device=device)
    mask = (time < lengths[:, None]).to(dtype)  # (B, T_max)
    return Batch(
        x=x, x_reversed=reverse_sequences(x, lengths), mask=mask, lengths=lengths
    )


def minibatches(
    sequences: Sequence[torch.Tensor],
    batch_size: int,
    *,
    seed: int,
    shuffle: bool = True,
    drop_last: bool = False,
    device: torch.device | str | None = None,
) -> Iterator[Batch]:
    """One epoch of mini-batches, in an order fixed by ``seed``.

    With ``shuffle`` the sequences are permuted by ``torch.randperm`` driven by
    a private ``torch.Generator`` seeded with ``seed`` (the global RNG is not
    touched), so the same seed always gives the same batches; pass e.g.
    ``seed=base_seed + epoch`` for a fresh order each epoch. Sequences are not
    sorted by length: each batch is padded to its own longest sequence and the
    mask removes the padding from every sum. Sorting (bucketing) would cut the
    padding, and the compute spent on it, but would put the same sequences
    together in every epoch, so the batches would no longer be random samples
    and the stochastic gradients would be biased within an epoch.

    Args:
        sequences: the rolls, each ``(T, 88)``.
        batch_size: sequences per batch (the last batch may be smaller).
        seed: seed of the permutation.
        shuffle: permute the sequences (otherwise keep their order).
        drop_last: drop a last batch smaller than ``batch_size``.
        device: device of the batches.

    Yields:
        :class:`Batch` objects covering every sequence exactly once (except
        those dropped by ``drop_last``).
    """
    positive_int("batch_size", batch_size)
    if isinstance(sequences, torch.Tensor):
        raise TypeError(
            "minibatches expects a list of (T, 88) tensors, not a single tensor"
        )
    sequences = list(sequences)
    if not sequences:
        raise ValueError("minibatches needs at least one sequence; got an empty list")
    n = len(sequences)
    if shuffle:
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(n, generator=generator).tolist()
    else:
        order = list(range(n))
    stop = n - n % batch_size if drop_last else n
    # A generator expression rather than ``yield`` in this body, so that bad
    # arguments raise here, at the call, and not at the first ``next``.
    return (
        make_batch(
            [sequences[i] for i in order[start : start + batch_size]], device=device
        )
        for start in range(0, stop, batch_size)
    )
