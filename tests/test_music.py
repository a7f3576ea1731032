"""Tests of dmm_helpers.music: piano-roll plots and synthesised audio."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display in tests

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from dmm_helpers.music import audio, note_name, plot_piano_roll, synthesize  # noqa: E402

RATE = 8000  # low enough to keep the tests fast, high enough for the harmonics used


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _roll(steps: int, notes_by_step: dict[int, list[int]] | None = None) -> np.ndarray:
    roll = np.zeros((steps, 88))
    for t, notes in (notes_by_step or {}).items():
        roll[t, [n - 21 for n in notes]] = 1
    return roll


def _held(midi: int, steps: int) -> np.ndarray:
    return _roll(steps, {t: [midi] for t in range(steps)})


def _spectrum(wave: np.ndarray, rate: int) -> tuple[np.ndarray, np.ndarray]:
    return np.fft.rfftfreq(wave.size, 1 / rate), np.abs(np.fft.rfft(wave))


def _magnitude_near(freqs, magnitude, frequency, width=3.0):
    return magnitude[np.abs(freqs - frequency) < width].max()


@pytest.mark.parametrize(("steps", "seconds", "rate"), [(3, 0.25, RATE), (5, 0.3, 22050), (1, 0.5, 44100)])
def test_length_is_steps_times_seconds_times_rate(steps, seconds, rate):
    wave = synthesize(_held(60, steps), sample_rate=rate, seconds_per_step=seconds)
    assert wave.dtype == np.float32
    assert wave.shape == (round(steps * seconds * rate),)


def test_waveform_is_finite_bounded_and_normalised():
    chord = _roll(6, {t: [48, 55, 64, 72] for t in range(6)})
    wave = synthesize(chord, sample_rate=RATE)
    assert np.all(np.isfinite(wave))
    assert np.abs(wave).max() <= 1.0
    assert np.isclose(np.abs(wave).max(), 0.9, atol=1e-6)  # the default peak
    assert np.isclose(np.abs(synthesize(chord, sample_rate=RATE, peak=0.5)).max(), 0.5, atol=1e-6)


def test_silent_roll_gives_silence():
    wave = synthesize(np.zeros((4, 88)), sample_rate=RATE, seconds_per_step=0.25)
    assert wave.shape == (4 * 2000,) and not wave.any()


def test_single_note_has_its_fundamental_and_harmonic_amplitudes():
    # A4 = MIDI 69 = 440 Hz, held 4 s: the spectrum peaks at 440 Hz, and the
    # partials keep the ratios of ``harmonics`` because they share one envelope.
    wave = synthesize(_held(69, 8), sample_rate=RATE, harmonics=(1.0, 0.5, 0.25))
    freqs, magnitude = _spectrum(wave, RATE)
    assert abs(freqs[magnitude.argmax()] - 440.0) < 1.0
    fundamental = _magnitude_near(freqs, magnitude, 440.0)
    assert _magnitude_near(freqs, magnitude, 880.0) / fundamental == pytest.approx(0.5, rel=0.02)
    assert _magnitude_near(freqs, magnitude, 1320.0) / fundamental == pytest.approx(0.25, rel=0.02)
    assert _magnitude_near(freqs, magnitude, 1760.0) / fundamental < 0.01  # no 4th partial
    rms = np.sqrt(np.mean(wave.astype(np.float64) ** 2))
    assert 0.05 < rms < 0.9


def test_middle_c_and_a_chord_show_each_fundamental():
    wave = synthesize(_roll(4, {t: [60, 67] for t in range(4)}), sample_rate=RATE, harmonics=(1.0,))
    freqs, magnitude = _spectrum(wave, RATE)
    top_two = np.sort(freqs[np.argsort(magnitude)[-2:]])
    c4, g4 = 440 * 2 ** (-9 / 12), 440 * 2 ** (-2 / 12)  # 261.63 Hz, 392.00 Hz
    assert abs(top_two[0] - c4) < 1.0 and abs(top_two[1] - g4) < 1.0


def test_held_note_does_not_reattack():
    steps, samples = 6, RATE // 2
    held = synthesize(_held(60, steps), sample_rate=RATE)
    step_rms = np.sqrt((held.astype(np.float64).reshape(steps, samples) ** 2).mean(axis=1))
    assert np.all(np.diff(step_rms) < 0)  # one attack, then a steady decay
    # Struck on every other step instead: loud again after each rest.
    struck = synthesize(_roll(steps, {t: [60] for t in range(0, steps, 2)}), sample_rate=RATE)
    struck_rms = np.sqrt((struck.astype(np.float64).reshape(steps, samples) ** 2).mean(axis=1))
    assert struck_rms[2] > 0.9 * struck_rms[0] and struck_rms[4] > 0.9 * struck_rms[0]


def test_notes_start_and_end_without_clicks():
    wave = synthesize(_roll(3, {1: [72]}), sample_rate=RATE)
    step = RATE // 2
    assert not wave[:step].any() and not wave[2 * step:].any()  # silent outside its step
    assert abs(wave[step]) < 1e-6  # the attack starts from 0
    assert abs(wave[2 * step - 1]) < 0.01  # and the release ends near 0


def test_accepts_tensors_and_bools():
    roll = _roll(2, {0: [60], 1: [64]})
    expected = synthesize(roll, sample_rate=RATE)
    assert np.array_equal(synthesize(torch.tensor(roll, dtype=torch.float32), sample_rate=RATE), expected)
    assert np.array_equal(synthesize(roll.astype(bool), sample_rate=RATE), expected)


@pytest.mark.parametrize(
    ("roll", "error", "pattern"),
    [
        (np.zeros(88), ValueError, r"must be 2-D \(time, 88\); got shape \(88,\)"),
        (np.zeros((3, 87)), ValueError, "must have 88 columns .*got 87"),
        (np.zeros((0, 88)), ValueError, r"empty \(0 time steps\)"),
        (np.full((2, 88), 0.5), ValueError, r"only 0 and 1; found 0\.5 at time step 0, column 0"),
        ([[0.0] * 88], TypeError, "torch tensor or numpy array, got list"),
        (np.full((2, 88), "a"), TypeError, "must hold numbers"),
    ],
)
def test_bad_rolls_are_refused(roll, error, pattern):
    with pytest.raises(error, match=pattern):
        synthesize(roll)
    with pytest.raises(error, match=pattern):
        audio(roll)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"sample_rate": 0}, "sample_rate must be a positive integer"),
        ({"sample_rate": 8000.0}, "sample_rate must be a positive integer"),
        ({"seconds_per_step": 0.0}, "seconds_per_step must be positive"),
        ({"peak": 1.5}, r"peak must lie in \(0, 1\]"),
        ({"harmonics": ()}, "harmonics must be non-negative"),
        ({"decay_seconds": 0.0}, "decay_seconds must be positive"),
    ],
)
def test_bad_synthesis_settings(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        synthesize(_held(60, 2), **kwargs)


def test_audio_player_holds_the_waveform():
    from IPython.display import Audio

    player = audio(_held(60, 2), sample_rate=RATE)
    assert isinstance(player, Audio)
    assert player.data[:4] == b"RIFF"
    # A 16-bit mono WAV: a 44-byte header, then two bytes per sample.
    assert len(player.data) == 44 + 2 * RATE


def test_note_names():
    assert [note_name(m) for m in (21, 60, 61, 69, 108)] == ["A0", "C4", "C#4", "A4", "C8"]


def test_plot_crops_to_used_range_and_labels_octaves():
    roll = _roll(5, {0: [60, 64], 2: [67], 4: [72]})
    ax = plot_piano_roll(roll, title="a chord")
    assert ax.get_title() == "a chord"
    assert ax.get_ylim() == (58 - 0.5, 74 + 0.5)  # 60..72 plus a 2-semitone margin
    assert ax.get_xlim() == (-0.5, 4.5)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["C4 (60)", "C5 (72)"]
    image = ax.get_images()[0].get_array()
    assert np.array_equal(np.asarray(image), roll[:, 58 - 21 : 74 - 21 + 1].T)


def test_plot_whole_keyboard_on_given_axes():
    fig, axes = plt.subplots(1, 2)
    roll = torch.zeros(3, 88)
    returned = plot_piano_roll(roll, ax=axes[1], crop=True)  # nothing sounds: whole keyboard
    assert returned is axes[1]
    assert returned.get_ylim() == (20.5, 108.5)
    ax = plot_piano_roll(_roll(3, {1: [60]}), crop=False, seconds_per_step=0.5)
    assert ax.get_ylim() == (20.5, 108.5)
    assert ax.get_xlim() == (-0.25, 1.25)
    assert ax.get_xlabel() == "time (s)"


def test_plot_accepts_probabilities_but_not_values_outside_0_1():
    probabilities = np.full((4, 88), 0.25)
    plot_piano_roll(probabilities)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]; found 1\.5 at time step 0, column 3"):
        plot_piano_roll(_roll(2) + np.eye(2, 88, 3) * 1.5)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]; found nan"):
        plot_piano_roll(np.full((2, 88), np.nan))
    with pytest.raises(ValueError, match="must have 88 columns"):
        plot_piano_roll(np.zeros((2, 12)))
