"""Piano rolls for eyes and ears: plots and synthesised audio.

Introduced in chapter 02 (``notebooks/02_jsb_chorales.ipynb``). A roll is a
``(T, 88)`` array (torch tensor or numpy) with column ``k`` for MIDI note
``21 + k``, as produced by :mod:`dmm_helpers.data`.

The audio is additive synthesis in numpy (a few harmonics under a decaying
envelope), so a page can play music with no synthesiser installed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .data import LOWEST_NOTE, NUM_NOTES

_NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def note_name(midi: int) -> str:
    """Scientific pitch name of a MIDI number: 60 -> 'C4', 21 -> 'A0'."""
    return f"{_NOTE_NAMES[midi % 12]}{midi // 12 - 1}"


def _as_roll(roll: Any, *, binary: bool) -> np.ndarray:
    """Validate a piano roll and return it as a float64 numpy array ``(T, 88)``.

    With ``binary`` every entry must be 0 or 1; otherwise entries may be any
    value in [0, 1] (e.g. predicted note probabilities).
    """
    if hasattr(roll, "detach"):  # a torch tensor, on any device
        roll = roll.detach().cpu().numpy()
    if not isinstance(roll, np.ndarray):
        raise TypeError(
            f"a piano roll must be a torch tensor or numpy array, got {type(roll).__name__}"
        )
    if roll.ndim != 2:
        raise ValueError(
            f"a piano roll must be 2-D (time, {NUM_NOTES}); got shape {roll.shape}"
        )
    if roll.shape[1] != NUM_NOTES:
        raise ValueError(
            f"a piano roll must have {NUM_NOTES} columns (one per key, column 0 = "
            f"MIDI {LOWEST_NOTE}); got {roll.shape[1]}"
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

    values = _as_roll(roll, binary=False)  # (T, 88)
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
    ax.set_xlabel("time (s)" if seconds_per_step is not None else "time step (quarter notes)")
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
    values = _as_roll(roll, binary=True)  # (T, 88)
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate < 1:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    if not seconds_per_step > 0:
        raise ValueError(f"seconds_per_step must be positive, got {seconds_per_step!r}")
    if not 0 < peak <= 1:
        raise ValueError(f"peak must lie in (0, 1], got {peak!r}")
    if not harmonics or any(a < 0 for a in harmonics):
        raise ValueError(f"harmonics must be non-negative amplitudes, got {harmonics!r}")
    if not (decay_seconds > 0 and attack_seconds >= 0 and release_seconds >= 0):
        raise ValueError("decay_seconds must be positive; attack and release non-negative")
    steps = values.shape[0]
    # Sample index where each step starts; rounding each boundary (not each
    # step length) keeps the total exact and the error per boundary < 1 sample.
    bounds = np.round(np.arange(steps + 1) * seconds_per_step * sample_rate).astype(np.int64)
    wave = np.zeros(bounds[-1], dtype=np.float64)
    for key in np.flatnonzero(values.any(axis=0)):
        # Runs of 1s in this column: starts where 0 -> 1, stops where 1 -> 0.
        edges = np.diff(np.concatenate(([0.0], values[:, key], [0.0])))
        starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        frequency = 440.0 * 2.0 ** ((LOWEST_NOTE + key - 69) / 12.0)
        for start, stop in zip(starts, stops):
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
    largest = np.abs(wave).max() if wave.size else 0.0
    if largest > 0:
        wave *= peak / largest
    return wave.astype(np.float32)


def audio(roll: Any, *, sample_rate: int = 22050, seconds_per_step: float = 0.5, **kwargs: Any) -> Any:
    """An ``IPython.display.Audio`` player for a binary piano roll.

    The waveform is :func:`synthesize`'s (extra keyword arguments go to it),
    already scaled to at most 1 in magnitude, so the player does not
    renormalise it.
    """
    from IPython.display import Audio

    wave = synthesize(roll, sample_rate=sample_rate, seconds_per_step=seconds_per_step, **kwargs)
    return Audio(wave, rate=sample_rate, normalize=False)
