"""Piano rolls for eyes and ears: plots, streams, MIDI, audio, scores, statistics.

Introduced in chapter 02 (``notebooks/02_jsb_chorales.ipynb``: the plot and
the synthesised audio); chapter 07 (``notebooks/07_evaluation_and_music.ipynb``)
adds the rest. A roll is a ``(T, 88)`` array (torch tensor or numpy) with
column ``k`` for MIDI note ``21 + k`` and row ``t`` for the ``t``-th quarter
note, as produced by :mod:`dmm_helpers.data`.

A roll records which keys sound at each step, not when they were struck, so
a key that sounds on consecutive steps is read as one held note. Two quarter
notes of the same pitch in a row (a re-attack) and one half note (a hold)
give the same roll; every conversion here takes the hold.

Sound comes from the best synthesiser at hand: FluidSynth with a General
MIDI soundfont (Debian: ``apt-get install fluidsynth fluid-soundfont-gm``)
plays the roll on a real instrument sample; without it, additive synthesis
in numpy (a few harmonics under a decaying envelope) needs nothing installed,
so a page always has sound. Score images need LilyPond
(``apt-get install lilypond``), reached through music21.
"""

from __future__ import annotations

import base64
import html
import io
import os
import shutil
import subprocess
import tempfile
import wave
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from dmm_helpers.checks import finite_number, positive_int, write_bytes
from dmm_helpers.data import (
    LOWEST_NOTE,
    NUM_NOTES,
    notes_to_roll,
    quantize_to_quarters,
    validate_sequence,
)

_NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")

DEFAULT_TEMPO_BPM = (
    120.0  # quarter notes per minute: 0.5 s a step, as synthesize's default
)
DEFAULT_PROGRAM = (
    19  # General MIDI program (0-based) 19, church organ: sustains held notes
)
SOUNDFONT_ENV = (
    "DMM_SOUNDFONT"  # a reader's own .sf2 file, tried before the standard places
)
# Where Linux distributions install a General MIDI soundfont: Debian/Ubuntu's
# fluid-soundfont-gm, its "default GM" alternative, Fedora's and Arch's.
SOUNDFONT_PATHS = (
    Path("/usr/share/sounds/sf2/FluidR3_GM.sf2"),
    Path("/usr/share/sounds/sf2/default-GM.sf2"),
    Path("/usr/share/soundfonts/FluidR3_GM.sf2"),
    Path("/usr/share/soundfonts/default.sf2"),
)
_TIMEOUT_SECONDS = 300  # for one FluidSynth or LilyPond run


def note_name(midi: int) -> str:
    """Scientific pitch name of a MIDI number: 60 -> 'C4', 21 -> 'A0'."""
    return f"{_NOTE_NAMES[midi % 12]}{midi // 12 - 1}"


def as_roll(roll: Any, *, binary: bool, width: int = NUM_NOTES) -> np.ndarray:
    """Validate a piano roll and return it as a float64 numpy array ``(T, width)``.

    With ``binary`` every entry must be 0 or 1; otherwise entries may be any
    value in [0, 1] (e.g. predicted note probabilities). ``width`` is 88 for
    piano rolls; other binary sequences (a model's ``input_dim``) may differ.
    Every public function of this module that takes a roll checks it here,
    and so can code outside it (:mod:`dmm_helpers.generate` does).

    Raises:
        TypeError: not a tensor or array, or not numbers.
        ValueError: not 2-D, the wrong width, empty, or a value out of range
            (the message names the first bad step and column).
    """
    if hasattr(roll, "detach"):  # a torch tensor, on any device
        roll = roll.detach().cpu().numpy()
    if not isinstance(roll, np.ndarray):
        raise TypeError(
            "a piano roll must be a torch tensor or numpy array, "
            f"got {type(roll).__name__}"
        )
    if roll.ndim != 2:
        raise ValueError(
            f"a piano roll must be 2-D (time, {width}); got shape {roll.shape}"
        )
    if roll.shape[1] != width:
        what = (
            f"one per key, column 0 = MIDI {LOWEST_NOTE}"
            if width == NUM_NOTES
            else "input_dim"
        )
        raise ValueError(
            f"a piano roll must have {width} columns ({what}); got {roll.shape[1]}"
        )
    if roll.shape[0] == 0:
        raise ValueError("the piano roll is empty (0 time steps)")
    if roll.dtype == bool:
        roll = roll.astype(np.float64)
    if not np.issubdtype(roll.dtype, np.number):
        raise TypeError(f"a piano roll must hold numbers, got dtype {roll.dtype}")
    roll = roll.astype(np.float64)
    if binary:
        bad = ~((roll == 0) | (roll == 1))
        if bad.any():
            t, k = np.argwhere(bad)[0]
            raise ValueError(
                "a piano roll must hold only 0 and 1; found "
                f"{float(roll[t, k])!r} at time step {t}, column {k}"
            )
    else:
        bad = ~((roll >= 0) & (roll <= 1))  # also catches NaN
        if bad.any():
            t, k = np.argwhere(bad)[0]
            raise ValueError(
                "piano-roll values must lie in [0, 1]; found "
                f"{float(roll[t, k])!r} at time step {t}, column {k}"
            )
    return roll


def _note_runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The held notes of a validated 0/1 roll ``(T, K)``: maximal runs of 1s per column.

    Returns three integer arrays of equal length, one entry per note: its
    column ``key``, its first step ``start`` and ``stop`` (one past its last
    step), ordered by key, then by start.
    """
    padded = np.zeros((values.shape[0] + 2, values.shape[1]))
    padded[1:-1] = values
    # Transposed, so that nonzero() walks key by key and each key's starts
    # and stops come out in time order and pair up.
    edges = np.diff(
        padded, axis=0
    ).T  # (K, T + 1): +1 where a note starts, -1 after it ends
    keys, starts = np.nonzero(edges > 0)
    _, stops = np.nonzero(edges < 0)
    return keys, starts, stops


def plot_piano_roll(
    roll: Any,
    ax: Any = None,
    title: str | None = None,
    *,
    crop: bool = True,
    margin: int = 2,
    cmap: str = "Greys",
    seconds_per_step: float | None = None,
) -> Any:
    """Draw a piano roll: time on x, MIDI pitch on y.

    Each sounding note is a dark cell; the y axis is labelled with the C of
    each octave (``C4`` = middle C = MIDI 60). Values in (0, 1) are drawn as
    shades of grey, so predicted note probabilities can be shown the same way.

    Args:
        roll: ``(T, 88)`` values in [0, 1], column ``k`` = MIDI ``21 + k``.
        ax: matplotlib Axes to draw on (default: a new figure).
        title: Axes title.
        crop: show only the pitches in use, plus ``margin`` semitones; the
            whole keyboard when ``False`` (or when nothing sounds).
        margin: semitones of space above and below the used range.
        cmap: matplotlib colormap for 0 (light) to 1 (dark).
        seconds_per_step: label the x axis in seconds instead of steps.

    Returns:
        The matplotlib Axes.
    """
    import matplotlib.pyplot as plt

    values = as_roll(roll, binary=False)  # (T, 88)
    steps = values.shape[0]
    used = np.flatnonzero(values.max(axis=0) > 0)
    if crop and used.size:
        low = max(0, used[0] - margin)
        high = min(NUM_NOTES - 1, used[-1] + margin)
    else:
        low, high = 0, NUM_NOTES - 1
    if ax is None:
        _, ax = plt.subplots(figsize=(min(12.0, 2.0 + 0.08 * steps), 3.5))
    scale = seconds_per_step if seconds_per_step is not None else 1.0
    ax.imshow(
        values[:, low : high + 1].T,
        aspect="auto",
        origin="lower",
        interpolation="nearest",
        cmap=cmap,
        vmin=0.0,
        vmax=1.0,
        # Cell centres on integer steps and integer MIDI numbers.
        extent=(
            -0.5 * scale,
            (steps - 0.5) * scale,
            LOWEST_NOTE + low - 0.5,
            LOWEST_NOTE + high + 0.5,
        ),
    )
    midi_low, midi_high = LOWEST_NOTE + low, LOWEST_NOTE + high
    ticks = [m for m in range(midi_low, midi_high + 1) if m % 12 == 0]
    if len(ticks) < 2:  # a narrow range: label its ends too
        ticks = sorted({midi_low, *ticks, midi_high})
    ax.set_yticks(ticks)
    ax.set_yticklabels([f"{note_name(m)} ({m})" for m in ticks])
    ax.set_xlabel(
        "time (s)" if seconds_per_step is not None else "time step (quarter notes)"
    )
    ax.set_ylabel("pitch")
    if title is not None:
        ax.set_title(title)
    return ax


def synthesize(
    roll: Any,
    *,
    sample_rate: int = 22050,
    seconds_per_step: float = 0.5,
    harmonics: tuple[float, ...] = (1.0, 0.5, 0.25, 0.125),
    decay_seconds: float = 1.0,
    attack_seconds: float = 0.01,
    release_seconds: float = 0.05,
    peak: float = 0.9,
) -> np.ndarray:
    """Render a binary piano roll as a mono waveform by additive synthesis.

    A run of consecutive 1s in one column is one held note (it does not
    re-attack). A note of MIDI number ``m`` has fundamental
    ``f = 440 * 2 ** ((m - 69) / 12)`` Hz and sounds

    .. math:: s(t) = e(t) \\sum_h a_h \\sin(2 \\pi h f t)

    with amplitudes ``a_h = harmonics[h - 1]`` (those above the Nyquist
    frequency dropped) and envelope ``e(t)``: a linear attack of
    ``attack_seconds``, then ``exp(-t / decay_seconds)``, and a linear fade
    over the last ``release_seconds`` so notes end without a click. The sum
    over notes is scaled so that its largest magnitude is ``peak`` (at most
    1: no clipping); an all-zero roll gives silence.

    Args:
        roll: ``(T, 88)`` of 0/1, column ``k`` = MIDI ``21 + k``.
        sample_rate: samples per second.
        seconds_per_step: duration of one time step (0.5 s = a quarter at 120 bpm).

    Returns:
        float32 array of ``round(T * seconds_per_step * sample_rate)`` samples
        in [-peak, peak].
    """
    values = as_roll(roll, binary=True)  # (T, 88)
    positive_int("sample_rate", sample_rate)
    _check_seconds_per_step(seconds_per_step)
    _check_peak(peak)
    if not harmonics or any(a < 0 for a in harmonics):
        raise ValueError(
            f"harmonics must be non-negative amplitudes, got {harmonics!r}"
        )
    if not (decay_seconds > 0 and attack_seconds >= 0 and release_seconds >= 0):
        raise ValueError(
            "decay_seconds must be positive; attack and release non-negative"
        )
    steps = values.shape[0]
    # Sample index where each step starts; rounding each boundary (not each
    # step length) keeps the total exact and the error per boundary < 1 sample.
    bounds = np.round(np.arange(steps + 1) * seconds_per_step * sample_rate).astype(
        np.int64
    )
    wave = np.zeros(bounds[-1], dtype=np.float64)
    for key, start, stop in zip(*_note_runs(values)):
        frequency = 440.0 * 2.0 ** ((LOWEST_NOTE + key - 69) / 12.0)
        begin, end = bounds[start], bounds[stop]
        t = np.arange(end - begin) / sample_rate  # seconds since the attack
        duration = (end - begin) / sample_rate
        tone = sum(
            amplitude * np.sin(2.0 * np.pi * h * frequency * t)
            for h, amplitude in enumerate(harmonics, start=1)
            if h * frequency < sample_rate / 2
        )
        envelope = np.exp(-t / decay_seconds)
        if attack_seconds > 0:
            envelope *= np.minimum(1.0, t / attack_seconds)
        if release_seconds > 0:
            envelope *= np.minimum(1.0, (duration - t) / release_seconds)
        wave[begin:end] += envelope * tone
    return _normalise(wave, peak)


def _check_seconds_per_step(seconds_per_step: Any) -> None:
    finite_number(
        "seconds_per_step", seconds_per_step, minimum=0, include_minimum=False
    )


def _check_peak(peak: Any) -> None:
    finite_number("peak", peak, minimum=0, include_minimum=False, maximum=1)


def _normalise(wave: np.ndarray, peak: float) -> np.ndarray:
    """Scale to the largest magnitude ``peak`` (silence stays silent), as float32."""
    largest = np.abs(wave).max() if wave.size else 0.0
    if largest > 0:
        wave = wave * (peak / largest)
    return wave.astype(np.float32)


# ---------------------------------------------------------------------------
# music21 streams and MIDI files
# ---------------------------------------------------------------------------


def _check_tempo(tempo_bpm: Any) -> float:
    """``tempo_bpm`` as a float: quarter notes a minute, finite and > 0."""
    return finite_number("tempo_bpm", tempo_bpm, minimum=0, include_minimum=False)


def _check_program(program: Any) -> int:
    if (
        isinstance(program, bool)
        or not isinstance(program, int)
        or not 0 <= program <= 127
    ):
        raise ValueError(
            f"program must be a General MIDI program number, an int in 0..127 "
            f"(0 = piano, 19 = church organ, 52 = choir), got {program!r}"
        )
    return program


def _instrument(program: int) -> Any:
    from music21 import instrument

    return instrument.instrumentFromMidiProgram(program)


def _lines(values: np.ndarray) -> list[list[tuple[int, int, int]]]:
    """Share a roll's notes out into lines (voices) in which notes never overlap.

    Notes are taken in order of onset, the highest first among those that
    start together, and each goes to the first line that is silent by then,
    so when all voices move together line 0 gets the top note, line 1 the
    next, and so on, as the soprano, alto, tenor and bass of a chorale. The
    number of lines is the largest number of keys sounding at once.

    Returns:
        One list per line of ``(start, stop, midi)`` notes, in time order.
    """
    keys, starts, stops = _note_runs(values)
    lines: list[list[tuple[int, int, int]]] = []
    line_ends: list[int] = []  # the step at which each line falls silent
    for i in np.lexsort((-keys, starts)):  # by onset, then highest key first
        start, stop, midi = int(starts[i]), int(stops[i]), LOWEST_NOTE + int(keys[i])
        free = next((j for j, end in enumerate(line_ends) if end <= start), len(lines))
        if free == len(lines):
            lines.append([])
            line_ends.append(0)
        lines[free].append((start, stop, midi))
        line_ends[free] = stop
    return lines


def roll_to_stream(
    roll: Any, *, tempo_bpm: float = DEFAULT_TEMPO_BPM, program: int = DEFAULT_PROGRAM
) -> Any:
    """A binary piano roll as a music21 score, one quarter note per time step.

    Every maximal run of 1s in a column becomes one note: key ``k`` sounding
    on steps ``start .. stop - 1`` is MIDI note ``21 + k`` at offset
    ``start`` quarter notes, lasting ``stop - start`` quarter notes. (A roll
    cannot tell a held note from repeated strikes of the same key, so runs
    are always read as holds.) The notes are shared out into parts, one
    melodic line each, in which notes never overlap (see :func:`_lines`): a
    four-voice chorale gives about four parts, ordered from the top. Every
    part plays General MIDI instrument ``program``; the first carries the
    tempo mark. The score is ready for ``.write("midi")``,
    ``.write("musicxml")`` or :func:`stream_to_roll`.

    Monophonic parts are also what keeps MIDI round trips exact: music21
    10.5 reads a track in which notes of different lengths overlap into
    measures with several voices, and then misplaces some notes by a beat.

    Args:
        roll: ``(T, 88)`` of 0/1 (tensor or numpy).
        tempo_bpm: quarter notes (time steps) per minute.
        program: General MIDI program number, 0-based (19 = church organ).

    Returns:
        A ``music21.stream.Score``; silent steps are gaps between notes, so
        leading and trailing silence does not survive (there is no note to
        place there). A silent roll gives one empty part.
    """
    from music21 import note, stream, tempo

    values = as_roll(roll, binary=True)  # (T, 88)
    tempo_bpm = _check_tempo(tempo_bpm)
    program = _check_program(program)
    parts = []
    for line in _lines(values) or [[]]:
        part = stream.Part()
        part.insert(0, _instrument(program))
        for start, stop, midi in line:
            part.insert(start, note.Note(midi, quarterLength=stop - start))
        parts.append(part)
    parts[0].insert(
        0, tempo.MetronomeMark(number=tempo_bpm, referent=note.Note(type="quarter"))
    )
    return stream.Score(parts)


def stream_to_roll(score: Any) -> torch.Tensor:
    """A music21 stream as a float32 piano roll ``(T, 88)``, one step per quarter note.

    The stream is sampled at every quarter-note onset by
    :func:`dmm_helpers.data.quantize_to_quarters` (the quantisation every
    loader uses), so a note sounds on each step whose onset it covers, and
    leading and trailing silent steps are dropped. For a roll from
    :func:`roll_to_stream` whose first and last steps sound, the round trip
    gives the roll back exactly.

    Raises:
        TypeError: ``score`` is not a music21 stream.
        ValueError: the stream has no pitched notes, or a pitch lies off the
            piano (outside MIDI 21..108).
    """
    from music21 import stream

    if not isinstance(score, stream.Stream):
        raise TypeError(f"expected a music21 stream, got {type(score).__name__}")
    notes = quantize_to_quarters(score)
    if not notes:
        raise ValueError(
            "the stream has no pitched notes, so its piano roll would be empty"
        )
    validate_sequence(notes, "the stream")
    return notes_to_roll(notes)  # (T, 88)


def midi_bytes(
    roll: Any, *, tempo_bpm: float = DEFAULT_TEMPO_BPM, program: int = DEFAULT_PROGRAM
) -> bytes:
    """The standard MIDI file of :func:`roll_to_stream`'s score, as bytes."""
    from music21 import midi

    score = roll_to_stream(roll, tempo_bpm=tempo_bpm, program=program)
    return midi.translate.streamToMidiFile(score).writestr()


def write_midi(
    roll: Any,
    path: str | os.PathLike,
    *,
    tempo_bpm: float = DEFAULT_TEMPO_BPM,
    program: int = DEFAULT_PROGRAM,
) -> Path:
    """Write a binary piano roll as a standard MIDI file; returns the path.

    The file is written to a temporary name in the same folder and renamed,
    so a reader never finds a half-written file. Missing folders are made.
    See :func:`roll_to_stream` for how notes are formed.
    """
    path = Path(path).expanduser()
    write_bytes(path, midi_bytes(roll, tempo_bpm=tempo_bpm, program=program))
    return path


def read_midi(path: str | os.PathLike) -> torch.Tensor:
    """A MIDI file as a float32 piano roll ``(T, 88)``, one step per quarter note.

    All tracks are merged and sampled by :func:`stream_to_roll`, so
    ``read_midi(write_midi(roll, path))`` is ``roll`` again when its first and
    last steps sound, and otherwise ``roll`` without its leading and trailing
    silent steps. (Files from elsewhere are read by music21's MIDI import,
    which can misplace notes by a beat in a track where notes of different
    lengths overlap; :func:`write_midi` writes one track per melodic line so
    that its own files never have that problem.)

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: music21 cannot read it as MIDI, or it holds no notes.
    """
    import music21

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no MIDI file at {path}")
    try:
        score = music21.converter.parseFile(path, format="midi", forceSource=True)
    except Exception as error:  # noqa: BLE001 -- music21 raises many types
        raise ValueError(f"music21 could not read {path} as MIDI: {error}") from error
    try:
        return stream_to_roll(score)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error


def midi_download_link(
    roll: Any,
    filename: str = "chorale.mid",
    *,
    text: str | None = None,
    tempo_bpm: float = DEFAULT_TEMPO_BPM,
    program: int = DEFAULT_PROGRAM,
) -> Any:
    """An HTML link that downloads the roll as a MIDI file kept inside the page.

    The MIDI bytes are embedded as a base64 ``data:`` URL, so the link keeps
    working on a static website with no file next to the page.
    """
    from IPython.display import HTML

    if (
        not isinstance(filename, str)
        or not filename.endswith((".mid", ".midi"))
        or "/" in filename
    ):
        raise ValueError(
            f"filename must be a plain name ending in .mid or .midi, got {filename!r}"
        )
    payload = base64.b64encode(
        midi_bytes(roll, tempo_bpm=tempo_bpm, program=program)
    ).decode("ascii")
    label = html.escape(text if text is not None else f"download {filename}")
    return HTML(
        f'<a download="{html.escape(filename)}" '
        f'href="data:audio/midi;base64,{payload}">{label}</a>'
    )


# ---------------------------------------------------------------------------
# Audio: FluidSynth with a General MIDI soundfont, else numpy synthesis
# ---------------------------------------------------------------------------


class FluidSynthSetup(NamedTuple):
    """Where FluidSynth and its soundfont are: the executable and the ``.sf2`` file."""

    executable: str
    soundfont: Path


def find_soundfont() -> Path | None:
    """The General MIDI soundfont to play with, or None when there is none.

    ``$DMM_SOUNDFONT`` when set (it must name a file), else the first of
    :data:`SOUNDFONT_PATHS` that exists.
    """
    chosen = os.environ.get(SOUNDFONT_ENV)
    if chosen:
        path = Path(chosen).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{SOUNDFONT_ENV}={chosen} names no file")
        return path
    return next((path for path in SOUNDFONT_PATHS if path.is_file()), None)


def find_fluidsynth() -> FluidSynthSetup | None:
    """FluidSynth's executable and a soundfont, or None unless both are installed."""
    executable = shutil.which("fluidsynth")
    soundfont = find_soundfont()
    if executable is None or soundfont is None:
        return None
    return FluidSynthSetup(executable, soundfont)


def _read_wav(raw: bytes) -> tuple[np.ndarray, int]:
    """A 16-bit PCM WAV file's bytes as a mono float64 wave in [-1, 1], and its rate."""
    with wave.open(io.BytesIO(raw)) as file:
        if file.getsampwidth() != 2:
            raise RuntimeError(
                "expected 16-bit samples from FluidSynth, "
                f"got {8 * file.getsampwidth()}-bit"
            )
        channels, rate = file.getnchannels(), file.getframerate()
        frames = np.frombuffer(file.readframes(file.getnframes()), dtype="<i2")
    return frames.reshape(-1, channels).mean(axis=1) / 32768.0, rate


def render_fluidsynth(
    roll: Any,
    *,
    sample_rate: int = 44100,
    seconds_per_step: float = 0.5,
    program: int = DEFAULT_PROGRAM,
    soundfont: str | os.PathLike | None = None,
    peak: float = 0.9,
    max_tail_seconds: float = 2.0,
) -> np.ndarray:
    """Play a binary piano roll on a General MIDI instrument with FluidSynth.

    The roll goes to MIDI (:func:`midi_bytes`, tempo ``60 / seconds_per_step``),
    FluidSynth renders it offline to a WAV file in a temporary folder, and the
    two stereo channels are averaged to mono. After the last note the
    instrument's release and the reverb ring on: the tail is kept until it
    falls 60 dB below the peak, at most ``max_tail_seconds``, then faded out
    over 20 ms. The result is scaled so its largest magnitude is ``peak``.

    Args:
        roll: ``(T, 88)`` of 0/1.
        sample_rate: samples per second (FluidSynth accepts 8000..96000).
        seconds_per_step: duration of one step (quarter note).
        program: General MIDI program number, 0-based (19 = church organ).
        soundfont: the ``.sf2`` file; default :func:`find_soundfont`'s.
        peak: largest magnitude of the result, in (0, 1].
        max_tail_seconds: longest stretch kept after the last note ends.

    Returns:
        float32 mono waveform: ``round(T * seconds_per_step * sample_rate)``
        samples of music plus the tail.

    Raises:
        RuntimeError: FluidSynth or a soundfont is not installed, or
            FluidSynth failed (its messages are quoted).
    """
    values = as_roll(roll, binary=True)  # (T, 88)
    if (
        isinstance(sample_rate, bool)
        or not isinstance(sample_rate, int)
        or not 8000 <= sample_rate <= 96000
    ):
        raise ValueError(
            "sample_rate must be an integer in 8000..96000 for FluidSynth, "
            f"got {sample_rate!r}"
        )
    _check_seconds_per_step(seconds_per_step)
    _check_peak(peak)
    if not max_tail_seconds >= 0:
        raise ValueError(f"max_tail_seconds must be >= 0, got {max_tail_seconds!r}")
    executable = shutil.which("fluidsynth")
    if soundfont is None:
        soundfont = find_soundfont()
    if executable is None or soundfont is None:
        raise RuntimeError(
            "FluidSynth with a General MIDI soundfont is not installed (on Debian "
            "or Ubuntu: apt-get install fluidsynth fluid-soundfont-gm; or set "
            f"{SOUNDFONT_ENV} to a .sf2 file); audio() falls back to numpy synthesis"
        )
    soundfont = Path(soundfont)
    if not soundfont.is_file():
        raise FileNotFoundError(f"no soundfont file at {soundfont}")
    music_samples = round(values.shape[0] * seconds_per_step * sample_rate)
    if not values.any():
        return np.zeros(music_samples, dtype=np.float32)  # nothing to play
    midi = midi_bytes(values, tempo_bpm=60.0 / seconds_per_step, program=program)
    with tempfile.TemporaryDirectory(prefix="dmm-fluidsynth-") as folder:
        midi_path, wav_path = Path(folder) / "roll.mid", Path(folder) / "roll.wav"
        midi_path.write_bytes(midi)
        command = [
            executable,
            "-n",
            "-i",  # no MIDI input, no shell
            "-F",
            str(wav_path),
            "-T",
            "wav",
            "-O",
            "s16",
            "-r",
            str(sample_rate),
            "-g",
            # FluidSynth's default gain, fixed: a dense roll of ~30 keys stays
            # below 0.4.
            "0.2",
            str(soundfont),
            str(midi_path),
        ]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=_TIMEOUT_SECONDS
        )
        messages = (result.stderr + result.stdout).strip()[-2000:]
        if result.returncode != 0 or not wav_path.is_file():
            raise RuntimeError(
                f"FluidSynth failed (exit status {result.returncode}): {messages}"
            )
        if (
            "not a SoundFont" in messages
        ):  # it would go on with its default soundfont, if any
            raise RuntimeError(
                f"FluidSynth could not load the soundfont {soundfont}: {messages}"
            )
        mono, rate = _read_wav(wav_path.read_bytes())
    if np.abs(mono).max(initial=0.0) < 1e-3:  # below -60 dBFS: only dither noise
        # FluidSynth exits with status 0 even when it cannot load the soundfont.
        raise RuntimeError(f"FluidSynth rendered silence from {soundfont}: {messages}")
    if rate != sample_rate:
        raise RuntimeError(
            f"FluidSynth wrote {rate} samples a second instead of {sample_rate}"
        )
    if mono.size < music_samples:
        mono = np.concatenate([mono, np.zeros(music_samples - mono.size)])
    loud = np.flatnonzero(
        np.abs(mono) > 1e-3 * np.abs(mono).max()
    )  # within 60 dB of the peak
    end = max(music_samples, int(loud[-1]) + 1 if loud.size else 0)
    end = min(end, music_samples + round(max_tail_seconds * sample_rate))
    mono = mono[:end].copy()
    fade = min(end, round(0.02 * sample_rate))
    mono[end - fade :] *= np.linspace(1.0, 0.0, fade)
    return _normalise(mono, peak)


class RollAudio:
    """An audio player for a piano roll that also says which synthesiser made the sound.

    In a notebook it shows as IPython's audio player (``.player``, an
    ``IPython.display.Audio``) with a one-line caption naming the synthesiser.
    Attributes: ``backend`` (``"fluidsynth"`` or ``"numpy"``),
    ``description`` (the caption), ``wave`` (the mono float32 waveform,
    already scaled to at most 1 in magnitude, so the player does not
    renormalise it), ``rate`` (its sample rate) and ``data`` (the WAV bytes).
    IPython is imported only here, so the rest of the module works without it.
    """

    def __init__(
        self, wave: np.ndarray, rate: int, backend: str, description: str
    ) -> None:
        from IPython.display import Audio

        self.wave, self.rate = wave, rate
        self.backend, self.description = backend, description
        self.player = Audio(wave, rate=rate, normalize=False)

    @property
    def data(self) -> bytes:
        """The player's WAV file: a 44-byte header, then 16-bit samples."""
        return self.player.data

    def _repr_html_(self) -> str:
        caption = html.escape(f"Sound: {self.description}")
        return (
            f'<figure style="margin: 0.5em 0">{self.player._repr_html_()}'
            f'<figcaption style="font-size: smaller">{caption}</figcaption></figure>'
        )

    def __repr__(self) -> str:
        seconds = self.wave.size / self.rate
        return f"<RollAudio: {seconds:.1f} s at {self.rate} Hz; {self.description}>"


_SYNTHESIS_SETTINGS = (
    "harmonics",
    "decay_seconds",
    "attack_seconds",
    "release_seconds",
)


def audio(
    roll: Any,
    *,
    sample_rate: int = 22050,
    seconds_per_step: float = 0.5,
    backend: str = "auto",
    program: int = DEFAULT_PROGRAM,
    peak: float = 0.9,
    **kwargs: Any,
) -> RollAudio:
    """An audio player for a binary piano roll, from the best synthesiser at hand.

    ``backend="auto"`` plays the roll with FluidSynth on General MIDI
    instrument ``program`` (:func:`render_fluidsynth`) when FluidSynth and a
    soundfont are installed (:func:`find_fluidsynth`), and with
    :func:`synthesize`'s additive synthesis otherwise; ``"fluidsynth"`` or
    ``"numpy"`` insists on one. Extra keyword arguments are the numpy
    synthesiser's own settings (``harmonics``, ``decay_seconds``,
    ``attack_seconds``, ``release_seconds``); passing any asks for it. Either
    waveform is scaled so that its largest magnitude is ``peak``.

    Returns:
        A :class:`RollAudio`: it displays as a player captioned with the
        synthesiser; ``.backend`` says which one played.
    """
    unknown = sorted(set(kwargs) - set(_SYNTHESIS_SETTINGS))
    if unknown:
        raise TypeError(f"audio() got unexpected keyword arguments {unknown}")
    if backend not in ("auto", "fluidsynth", "numpy"):
        raise ValueError(
            f'backend must be "auto", "fluidsynth" or "numpy", got {backend!r}'
        )
    values = as_roll(roll, binary=True)  # (T, 88)
    if backend == "fluidsynth" and kwargs:
        raise TypeError(
            f"{sorted(kwargs)} are settings of the numpy synthesiser, not of FluidSynth"
        )
    setup = find_fluidsynth() if backend != "numpy" and not kwargs else None
    if backend == "fluidsynth" and setup is None:
        raise RuntimeError(
            "backend='fluidsynth' but FluidSynth or a General MIDI soundfont is not "
            "installed (on Debian or Ubuntu: apt-get install fluidsynth "
            "fluid-soundfont-gm)"
        )
    if setup is not None:
        wave_ = render_fluidsynth(
            values,
            sample_rate=sample_rate,
            seconds_per_step=seconds_per_step,
            program=program,
            soundfont=setup.soundfont,
            peak=peak,
        )
        name = _instrument(_check_program(program)).instrumentName
        description = (
            f"FluidSynth with the {setup.soundfont.name} soundfont, "
            f"General MIDI program {program} ({name})"
        )
        return RollAudio(wave_, sample_rate, "fluidsynth", description)
    wave_ = synthesize(
        values,
        sample_rate=sample_rate,
        seconds_per_step=seconds_per_step,
        peak=peak,
        **kwargs,
    )
    description = "additive synthesis in numpy (a few harmonics, decaying)"
    if backend == "auto" and not kwargs:
        description += (
            "; install FluidSynth and a General MIDI soundfont for instrument sound"
        )
    return RollAudio(wave_, sample_rate, "numpy", description)


# ---------------------------------------------------------------------------
# Scores: engraved with LilyPond, through music21
# ---------------------------------------------------------------------------


def find_lilypond() -> str | None:
    """The LilyPond executable, or None when it is not installed."""
    return shutil.which("lilypond")


def roll_to_score(
    roll: Any, *, time_signature: str = "4/4", split: int | None = None
) -> Any:
    """A binary piano roll as a readable two-staff score (a music21 ``Score``).

    Notes from MIDI ``split`` up go on the upper staff, the rest on the
    lower one; by default ``split`` is the median pitch of all sounding
    steps, which in a four-part chorale puts soprano and alto above, tenor
    and bass below. Each staff gets the clef that fits its notes best
    (``music21.clef.bestClef``). On each staff everything that sounds at once
    is one chord: where one voice holds a note while another moves, the held
    note is split at the change and tied, as in a piano reduction. Silent
    stretches are rests; both staves last the whole roll, ``T`` quarter
    notes, barred in ``time_signature`` (the roll itself carries no metre;
    Bach's chorales are mostly in 4/4).
    """
    from music21 import clef, meter, note, stream

    values = as_roll(roll, binary=True)  # (T, 88)
    if not isinstance(time_signature, str):
        raise TypeError(
            f"time_signature must be a string such as '4/4', got {time_signature!r}"
        )
    try:
        meter.TimeSignature(time_signature)
    except Exception as error:  # noqa: BLE001 -- music21's MeterException
        raise ValueError(
            f"time_signature {time_signature!r} is not a metre music21 knows: {error}"
        ) from error
    highest = LOWEST_NOTE + NUM_NOTES
    if split is None:
        _, keys = np.nonzero(values)
        split = LOWEST_NOTE + int(np.median(keys)) if keys.size else 60
    elif (
        isinstance(split, bool)
        or not isinstance(split, int)
        or not LOWEST_NOTE <= split <= highest
    ):
        raise ValueError(
            f"split must be a MIDI number in {LOWEST_NOTE}..{highest}, got {split!r}"
        )
    steps = values.shape[0]
    staves = []
    for keys in (slice(split - LOWEST_NOTE, None), slice(0, split - LOWEST_NOTE)):
        on_staff = np.zeros_like(values)
        on_staff[:, keys] = values[:, keys]
        part = stream.Part()
        for key, start, stop in zip(*_note_runs(on_staff)):
            part.insert(
                int(start),
                note.Note(LOWEST_NOTE + int(key), quarterLength=int(stop - start)),
            )
        staff_clef = clef.bestClef(part) if on_staff.any() else clef.BassClef()
        # Simultaneous notes become chords, with ties where a held note meets a change.
        staff = part.chordify()
        if staff.highestTime < steps:
            staff.append(note.Rest(quarterLength=steps - staff.highestTime))
        staff.insert(0, staff_clef)
        staff.insert(0, meter.TimeSignature(time_signature))
        staff.makeNotation(inPlace=True)  # bars, and ties across bar lines
        staves.append(staff)
    return stream.Score(staves)


def _crop_and_stack(pages: list[Path], margin: int = 12) -> bytes:
    """Crop each page image to its ink, stack them, frame them in white ``margin``."""
    from PIL import Image, ImageOps

    pieces = []
    for page in pages:
        with Image.open(page) as image:
            grey = image.convert("L")
            box = ImageOps.invert(
                grey
            ).getbbox()  # the bounding box of non-white pixels
            if box is not None:
                pieces.append(grey.crop(box))
    if not pieces:
        raise RuntimeError("LilyPond produced only blank pages")
    gap = margin // 2  # between lines of music
    width = max(piece.width for piece in pieces)
    height = sum(piece.height for piece in pieces) + gap * (len(pieces) - 1)
    sheet = Image.new("L", (width, height), 255)
    top = 0
    for piece in pieces:
        sheet.paste(piece, (0, top))
        top += piece.height + gap
    buffer = io.BytesIO()
    ImageOps.expand(sheet, border=margin, fill=255).save(
        buffer, format="PNG", optimize=True
    )
    return buffer.getvalue()


def score_image(
    roll: Any,
    *,
    time_signature: str = "4/4",
    resolution: int = 150,
    path: str | os.PathLike | None = None,
) -> Any:
    """The roll engraved as sheet music by LilyPond: an ``IPython.display.Image`` (PNG).

    music21 writes :func:`roll_to_score`'s two staves as a LilyPond file;
    LilyPond engraves it at ``resolution`` dots per inch, one image per line
    of music; the lines are cropped to their ink and stacked into one image.
    With ``path`` the PNG is also written there (atomically).

    Raises:
        RuntimeError: LilyPond is not installed (check first with
            :func:`find_lilypond`), or it failed (its messages are quoted).
    """
    executable = find_lilypond()
    if executable is None:
        raise RuntimeError(
            "score images need LilyPond, which is not installed (on Debian or Ubuntu: "
            "apt-get install lilypond); find_lilypond() says whether it is"
        )
    positive_int("resolution", resolution)
    score = roll_to_score(roll, time_signature=time_signature)
    with tempfile.TemporaryDirectory(prefix="dmm-lilypond-") as folder:
        ly_file = score.write("lily", fp=Path(folder) / "score.ly")
        command = [
            executable,
            "--png",
            f"-dresolution={resolution}",
            "-o",
            str(Path(folder) / "score"),
            str(ly_file),
        ]
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            cwd=folder,
            timeout=_TIMEOUT_SECONDS,
        )
        # music21's preamble makes one page per line of music: score-page1.png, ...
        pages = sorted(
            Path(folder).glob("score-page*.png"),
            key=lambda p: int(p.stem.rsplit("page", 1)[1]),
        )
        if not pages and (Path(folder) / "score.png").is_file():
            pages = [Path(folder) / "score.png"]
        if result.returncode != 0 or not pages:
            messages = result.stderr.strip()[-2000:]
            raise RuntimeError(
                f"LilyPond failed (exit status {result.returncode}): {messages}"
            )
        png = _crop_and_stack(pages)
    if path is not None:
        write_bytes(Path(path).expanduser(), png)
    from IPython.display import Image

    return Image(data=png, format="png")


# ---------------------------------------------------------------------------
# Statistics: "sounds like Bach" as numbers
# ---------------------------------------------------------------------------

_MAJOR_SCALE = (
    0,
    2,
    4,
    5,
    7,
    9,
    11,
)  # pitch classes of C major (and of A minor, its mode)


def _as_rolls(rolls: Any) -> list[np.ndarray]:
    """One roll ``(T, 88)``, a batch ``(N, T, 88)`` or a list -> checked 0/1 arrays."""
    if hasattr(rolls, "detach") or isinstance(rolls, np.ndarray):
        array = rolls.detach().cpu().numpy() if hasattr(rolls, "detach") else rolls
        if array.ndim == 3:
            if array.shape[0] == 0:
                raise ValueError("no piano rolls given (a batch of 0 rolls)")
            items = list(array)
        else:
            items = [array]
    elif isinstance(rolls, Sequence) and not isinstance(rolls, (str, bytes)):
        items = list(rolls)
        if not items:
            raise ValueError("no piano rolls given (an empty sequence)")
    else:
        raise TypeError(
            "expected a piano roll (T, 88), a batch (N, T, 88) or a list of rolls, "
            f"got {type(rolls).__name__}"
        )
    if len(items) == 1:
        return [as_roll(items[0], binary=True)]
    checked = []
    for i, item in enumerate(items):
        try:
            checked.append(as_roll(item, binary=True))
        except (TypeError, ValueError) as error:
            raise type(error)(f"roll {i}: {error}") from error
    return checked


def notes_per_step(rolls: Any) -> np.ndarray:
    """How many keys sound at each step (the polyphony), steps of all rolls in order.

    ``n_t = sum_k x_{t,k}``; a four-part chorale has ``n_t = 4`` wherever no
    two voices meet on one key. Accepts one roll ``(T, 88)``, a batch
    ``(N, T, 88)`` or a list of rolls of any lengths (not a zero-padded batch:
    its padding would count as silent steps).

    Returns:
        int64 array ``(sum of the T's,)``.
    """
    return np.concatenate([roll.sum(axis=1) for roll in _as_rolls(rolls)]).astype(
        np.int64
    )


def pitch_classes_per_step(rolls: Any) -> np.ndarray:
    """How many sounding keys of each pitch class C, C#, ..., B each step has.

    ``n_{t,c} = sum_{k: (21 + k) mod 12 = c} x_{t,k}``: the roll folded onto
    one octave, bin 0 being C (MIDI 60 mod 12 = 0). Steps of all rolls in
    order, as :func:`notes_per_step` (one roll ``(T, 88)``, a batch
    ``(N, T, 88)`` or a list of rolls); a row sums to that step's number of
    notes.

    Returns:
        int64 array ``(sum of the T's, 12)``.
    """
    values = np.concatenate(_as_rolls(rolls))  # (steps, 88)
    fold = np.zeros((NUM_NOTES, 12))  # (88, 12): key k -> its pitch class
    fold[np.arange(NUM_NOTES), (LOWEST_NOTE + np.arange(NUM_NOTES)) % 12] = 1
    return (values @ fold).astype(np.int64)


def pitch_class_histogram(rolls: Any) -> np.ndarray:
    """The share of sounding time spent on each pitch class C, C#, ..., B.

    ``h_c = sum_t n_{t,c} / sum_{t,c} n_{t,c}`` with ``n`` the counts of
    :func:`pitch_classes_per_step`, pooled over all rolls: every step a key
    sounds counts once, so a held half note weighs as much as two struck
    quarters (the roll cannot tell them apart anyway). Bin 0 is C.

    Returns:
        float64 array ``(12,)`` summing to 1.

    Raises:
        ValueError: no note sounds in any roll.
    """
    counts = pitch_classes_per_step(rolls).sum(axis=0).astype(np.float64)  # (12,)
    total = counts.sum()
    if total == 0:
        raise ValueError(
            "no note sounds in these rolls, so their pitch-class histogram is undefined"
        )
    return counts / total


def note_durations(rolls: Any) -> np.ndarray:
    """How long each note is held, in steps (quarter notes).

    A note is a maximal run of 1s in one column (see :func:`roll_to_stream`).
    Notes still sounding at a roll's last step are counted with the length
    they have in the roll. Ordered roll by roll, then by key, then by start.

    Returns:
        int64 array, one entry per note (empty when nothing sounds).
    """
    lengths = [
        stops - starts
        for _, starts, stops in (_note_runs(roll) for roll in _as_rolls(rolls))
    ]
    return np.concatenate(lengths).astype(np.int64)


def scale_consistency(rolls: Any) -> np.ndarray:
    """For each roll, the largest share of its sounding time inside one major scale.

    ``s = max_{r=0..11} sum_{c in r + {0,2,4,5,7,9,11}} h_c``, with ``h`` the
    roll's own :func:`pitch_class_histogram`. A piece in one major key, or in
    its relative natural minor, scores 1; the raised leading note of a minor
    key and chromatic passing notes lower it; notes spread evenly over all
    twelve pitch classes give 7/12. The measure of Mogren (2016, C-RNN-GAN)
    for generated music.

    Returns:
        float64 array ``(number of rolls,)``; NaN for a roll in which nothing sounds.
    """
    scores = []
    masks = np.zeros((12, 12))  # row r: the major scale on pitch class r
    for r in range(12):
        masks[r, [(r + c) % 12 for c in _MAJOR_SCALE]] = 1
    for roll in _as_rolls(rolls):
        if not roll.any():
            scores.append(np.nan)
            continue
        scores.append(float((masks @ pitch_class_histogram(roll)).max()))
    return np.array(scores)


def pitch_class_distance(first: Any, second: Any) -> float:
    """Total variation distance between two pitch-class histograms, in [0, 1].

    ``d = (1/2) sum_c |p_c - q_c|``: the share of sounding time that would
    have to move to another pitch class to turn one histogram into the
    other; 0 for equal histograms, 1 for music sharing no pitch class.
    Each argument is a histogram ``(12,)`` (:func:`pitch_class_histogram`)
    or a :class:`MusicStatistics`, whose histogram is used.
    """
    histograms = []
    for value in (first, second):
        if isinstance(value, MusicStatistics):
            value = value.pitch_class_histogram
        histogram = np.asarray(value, dtype=np.float64)
        if histogram.shape != (12,):
            raise ValueError(
                "expected a pitch-class histogram of shape (12,) or a "
                f"MusicStatistics, got shape {histogram.shape}"
            )
        histograms.append(histogram)
    return 0.5 * float(np.abs(histograms[0] - histograms[1]).sum())


def mean_pitch(rolls: Any) -> float:
    """The mean MIDI number of the sounding notes, each counted once a step.

    ``sum_{t,k} x_{t,k} (21 + k) / sum_{t,k} x_{t,k}`` pooled over all rolls,
    so a note held for two steps weighs twice; middle C is 60. NaN when
    nothing sounds.
    """
    per_key = sum(roll.sum(axis=0) for roll in _as_rolls(rolls))  # (88,)
    total = per_key.sum()
    if total == 0:
        return float("nan")
    return float(per_key @ (LOWEST_NOTE + np.arange(NUM_NOTES)) / total)


def mean_pitch_per_step(rolls: Any, *, silent: float = float("nan")) -> np.ndarray:
    """The mean MIDI number of the keys sounding at each step, steps of all rolls.

    ``sum_k x_{t,k} (21 + k) / sum_k x_{t,k}``; a step where nothing sounds
    gets ``silent`` (NaN by default; 0 keeps a correlation over steps
    defined, as chapter 07's has it). Accepts what :func:`notes_per_step`
    accepts.

    Returns:
        float64 array ``(sum of the T's,)``.
    """
    values = np.concatenate(_as_rolls(rolls))  # (steps, 88)
    counts = values.sum(axis=1)  # (steps,)
    pitch_sums = values @ (LOWEST_NOTE + np.arange(NUM_NOTES))  # (steps,)
    sounding = counts > 0
    means = np.full(counts.shape, float(silent))
    means[sounding] = pitch_sums[sounding] / counts[sounding]
    return means


def held_chords(rolls: Any) -> float:
    """The share of steps that repeat the whole step before, key for key.

    Taken over every step but the first of each roll: ``x_t = x_{t-1}``,
    silence after silence included. A half note in every voice, or a
    fermata, makes such a step; in Bach's chorales about one step in ten.
    NaN when no roll has two steps.
    """
    repeats = [(roll[1:] == roll[:-1]).all(axis=1) for roll in _as_rolls(rolls)]
    pairs = np.concatenate(repeats)  # (sum of the (T - 1)'s,)
    return float(pairs.mean()) if pairs.size else float("nan")


def note_motion(rolls: Any) -> np.ndarray:
    """For each note of a step, the semitones to the nearest note of the step before.

    ``min_{j: x_{t-1,j} = 1} |k - j|`` for every ``k`` with ``x_{t,k} = 1``,
    over the steps ``t >= 1`` whose step before sounds: 0 for a held or
    repeated note, 1 or 2 for a step in a melodic line, 5 or more for a leap
    of a fourth or wider (or a voice entering far from the others). Ordered
    roll by roll, then by step, then by key.

    Returns:
        int64 array, one entry per such note (empty when there is none).
    """
    keys = np.arange(NUM_NOTES)
    motions = []
    for roll in _as_rolls(rolls):
        on = roll > 0  # (T, 88)
        # The nearest sounding key at or below and at or above each key, per step.
        below = np.maximum.accumulate(np.where(on, keys, -np.inf), axis=1)
        above = np.minimum.accumulate(np.where(on, keys, np.inf)[:, ::-1], axis=1)
        nearest = np.minimum(keys - below, above[:, ::-1] - keys)  # (T, 88)
        moved = on[1:] & on[:-1].any(axis=1, keepdims=True)  # (T - 1, 88)
        motions.append(nearest[:-1][moved])
    return np.concatenate(motions).astype(np.int64)


class MusicStatistics(NamedTuple):
    """Summary statistics of a collection of piano rolls (:func:`music_statistics`)."""

    notes_per_step: float  # mean number of keys sounding per step
    four_note_steps: float  # share of steps with exactly four keys sounding
    silent_steps: float  # share of steps with no key sounding
    mean_note_duration: float  # mean length of a note, in steps (NaN: none sounds)
    scale_consistency: float  # mean over the sounding rolls (NaN: none sounds)
    pitch_class_histogram: np.ndarray  # (12,), C first; NaN when nothing sounds
    mean_pitch: float  # mean MIDI number of the sounding notes (NaN: none sounds)
    held_chords: float  # share of steps repeating the step before (held_chords)
    mean_note_motion: float  # mean of note_motion, semitones (NaN: no such note)


def music_statistics(rolls: Any) -> MusicStatistics:
    """Polyphony, note lengths, motion and pitch content of rolls, to compare music.

    One roll ``(T, 88)``, a batch ``(N, T, 88)`` or a list of rolls. Step
    averages pool all steps of all rolls; ``scale_consistency`` averages the
    per-roll scores of :func:`scale_consistency`; ``mean_pitch``,
    ``held_chords`` and ``mean_note_motion`` are :func:`mean_pitch`,
    :func:`held_chords` and the mean of :func:`note_motion`. In the JSB
    chorales four keys sound on most steps, notes last one or two quarters,
    nearly all sounding time lies in one major scale per chorale, and a note
    lies a semitone or two from the nearest note of the chord before.
    """
    checked = _as_rolls(rolls)
    counts = notes_per_step(checked)
    durations = note_durations(checked)
    consistency = scale_consistency(checked)
    motion = note_motion(checked)
    sounding = ~np.isnan(consistency)
    return MusicStatistics(
        notes_per_step=float(counts.mean()),
        four_note_steps=float((counts == 4).mean()),
        silent_steps=float((counts == 0).mean()),
        mean_note_duration=float(durations.mean()) if durations.size else float("nan"),
        scale_consistency=float(consistency[sounding].mean())
        if sounding.any()
        else float("nan"),
        pitch_class_histogram=(
            pitch_class_histogram(checked) if durations.size else np.full(12, np.nan)
        ),
        mean_pitch=mean_pitch(checked),
        held_chords=held_chords(checked),
        mean_note_motion=float(motion.mean()) if motion.size else float("nan"),
    )
