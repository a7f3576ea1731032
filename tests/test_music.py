"""Tests of dmm_helpers.music: plots, audio, streams and MIDI, scores, statistics.

Round trips are checked on the real JSB chorales (``DMM_JSB_PATH``, or
``../shared/data/jsb-chorales-quarter.json`` seen from the project root) and
on hand-made rolls; the statistics against numbers worked out by hand.
FluidSynth and LilyPond tests run where those programs are installed and
are skipped, with the reason, where they are not; the fallbacks are tested
everywhere by hiding the programs.
"""

from __future__ import annotations

import base64
import json
import re

import matplotlib

matplotlib.use("Agg")  # no display in tests

import matplotlib.pyplot as plt  # noqa: E402
import music21  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from dmm_fixtures import require_jsb
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from IPython.display import Audio  # noqa: E402

from dmm_helpers import music  # noqa: E402
from dmm_helpers.data import load_jsb  # noqa: E402
from dmm_helpers.music import (  # noqa: E402
    MusicStatistics,
    audio,
    find_fluidsynth,
    find_lilypond,
    held_chords,
    mean_pitch,
    mean_pitch_per_step,
    midi_bytes,
    midi_download_link,
    music_statistics,
    note_durations,
    note_motion,
    note_name,
    notes_per_step,
    pitch_class_distance,
    pitch_class_histogram,
    pitch_classes_per_step,
    plot_piano_roll,
    read_midi,
    render_fluidsynth,
    roll_to_score,
    roll_to_stream,
    scale_consistency,
    score_image,
    stream_to_roll,
    synthesize,
    write_midi,
)

needs_fluidsynth = pytest.mark.skipif(
    find_fluidsynth() is None,
    reason="FluidSynth or a General MIDI soundfont is not installed "
    "(Debian: apt-get install fluidsynth fluid-soundfont-gm)",
)
needs_lilypond = pytest.mark.skipif(
    find_lilypond() is None,
    reason="LilyPond is not installed (Debian: apt-get install lilypond)",
)

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


@pytest.mark.parametrize(
    ("steps", "seconds", "rate"), [(3, 0.25, RATE), (5, 0.3, 22050), (1, 0.5, 44100)]
)
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
    assert np.isclose(
        np.abs(synthesize(chord, sample_rate=RATE, peak=0.5)).max(), 0.5, atol=1e-6
    )


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
    assert _magnitude_near(freqs, magnitude, 880.0) / fundamental == pytest.approx(
        0.5, rel=0.02
    )
    assert _magnitude_near(freqs, magnitude, 1320.0) / fundamental == pytest.approx(
        0.25, rel=0.02
    )
    assert (
        _magnitude_near(freqs, magnitude, 1760.0) / fundamental < 0.01
    )  # no 4th partial
    rms = np.sqrt(np.mean(wave.astype(np.float64) ** 2))
    assert 0.05 < rms < 0.9


def test_middle_c_and_a_chord_show_each_fundamental():
    wave = synthesize(
        _roll(4, {t: [60, 67] for t in range(4)}), sample_rate=RATE, harmonics=(1.0,)
    )
    freqs, magnitude = _spectrum(wave, RATE)
    top_two = np.sort(freqs[np.argsort(magnitude)[-2:]])
    c4, g4 = 440 * 2 ** (-9 / 12), 440 * 2 ** (-2 / 12)  # 261.63 Hz, 392.00 Hz
    assert abs(top_two[0] - c4) < 1.0 and abs(top_two[1] - g4) < 1.0


def test_held_note_does_not_reattack():
    steps, samples = 6, RATE // 2
    held = synthesize(_held(60, steps), sample_rate=RATE)
    step_rms = np.sqrt(
        (held.astype(np.float64).reshape(steps, samples) ** 2).mean(axis=1)
    )
    assert np.all(np.diff(step_rms) < 0)  # one attack, then a steady decay
    # Struck on every other step instead: loud again after each rest.
    struck = synthesize(
        _roll(steps, {t: [60] for t in range(0, steps, 2)}), sample_rate=RATE
    )
    struck_rms = np.sqrt(
        (struck.astype(np.float64).reshape(steps, samples) ** 2).mean(axis=1)
    )
    assert struck_rms[2] > 0.9 * struck_rms[0] and struck_rms[4] > 0.9 * struck_rms[0]


def test_notes_start_and_end_without_clicks():
    wave = synthesize(_roll(3, {1: [72]}), sample_rate=RATE)
    step = RATE // 2
    assert (
        not wave[:step].any() and not wave[2 * step :].any()
    )  # silent outside its step
    assert abs(wave[step]) < 1e-6  # the attack starts from 0
    assert abs(wave[2 * step - 1]) < 0.01  # and the release ends near 0


def test_accepts_tensors_and_bools():
    roll = _roll(2, {0: [60], 1: [64]})
    expected = synthesize(roll, sample_rate=RATE)
    assert np.array_equal(
        synthesize(torch.tensor(roll, dtype=torch.float32), sample_rate=RATE), expected
    )
    assert np.array_equal(synthesize(roll.astype(bool), sample_rate=RATE), expected)


@pytest.mark.parametrize(
    ("roll", "error", "pattern"),
    [
        (np.zeros(88), ValueError, r"must be 2-D \(time, 88\); got shape \(88,\)"),
        (np.zeros((3, 87)), ValueError, "must have 88 columns .*got 87"),
        (np.zeros((0, 88)), ValueError, r"empty \(0 time steps\)"),
        (
            np.full((2, 88), 0.5),
            ValueError,
            r"only 0 and 1; found 0\.5 at time step 0, column 0",
        ),
        ([[0.0] * 88], TypeError, "torch tensor or numpy array, got list"),
        (np.full((2, 88), "a"), TypeError, "must hold numbers"),
    ],
)
def test_bad_rolls_are_refused(roll, error, pattern):
    with pytest.raises(error, match=pattern):
        synthesize(roll)
    with pytest.raises(error, match=pattern):
        audio(roll, backend="numpy")
    with pytest.raises(error, match=pattern):
        roll_to_stream(roll)
    with pytest.raises(error, match=pattern):
        notes_per_step(roll)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"sample_rate": 0}, "sample_rate must be a positive int, got 0"),
        ({"sample_rate": 8000.0}, "sample_rate must be a positive int, got 8000.0"),
        ({"seconds_per_step": 0.0}, "seconds_per_step must be a finite number > 0"),
        ({"peak": 1.5}, "peak must be a finite number > 0 and <= 1, got 1.5"),
        ({"harmonics": ()}, "harmonics must be non-negative"),
        ({"decay_seconds": 0.0}, "decay_seconds must be positive"),
    ],
)
def test_bad_synthesis_settings(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        synthesize(_held(60, 2), **kwargs)


def test_numpy_audio_player_holds_the_waveform():
    player = audio(_held(60, 2), sample_rate=RATE, backend="numpy")
    assert player.backend == "numpy"
    assert isinstance(player.player, Audio)
    assert player.data[:4] == b"RIFF"
    # A 16-bit mono WAV: a 44-byte header, then two bytes per sample.
    assert len(player.data) == 44 + 2 * RATE
    assert np.array_equal(player.wave, synthesize(_held(60, 2), sample_rate=RATE))
    page = player._repr_html_()
    assert "<audio" in page and "additive synthesis in numpy" in page


def test_note_names():
    assert [note_name(m) for m in (21, 60, 61, 69, 108)] == [
        "A0",
        "C4",
        "C#4",
        "A4",
        "C8",
    ]


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
    returned = plot_piano_roll(
        roll, ax=axes[1], crop=True
    )  # nothing sounds: whole keyboard
    assert returned is axes[1]
    assert returned.get_ylim() == (20.5, 108.5)
    ax = plot_piano_roll(_roll(3, {1: [60]}), crop=False, seconds_per_step=0.5)
    assert ax.get_ylim() == (20.5, 108.5)
    assert ax.get_xlim() == (-0.25, 1.25)
    assert ax.get_xlabel() == "time (s)"


def test_plot_accepts_probabilities_but_not_values_outside_0_1():
    probabilities = np.full((4, 88), 0.25)
    plot_piano_roll(probabilities)
    with pytest.raises(
        ValueError, match=r"must lie in \[0, 1\]; found 1\.5 at time step 0, column 3"
    ):
        plot_piano_roll(_roll(2) + np.eye(2, 88, 3) * 1.5)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]; found nan"):
        plot_piano_roll(np.full((2, 88), np.nan))
    with pytest.raises(ValueError, match="must have 88 columns"):
        plot_piano_roll(np.zeros((2, 12)))


# ---------------------------------------------------------------------------
# Streams and MIDI
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jsb_raw() -> dict:
    return json.loads(require_jsb().read_bytes())


@pytest.fixture(scope="module")
def jsb(jsb_raw) -> dict:
    return load_jsb(require_jsb())


def _notes_of(score) -> list[tuple[float, float, int]]:
    """(offset, quarter length, MIDI) of every pitch in a stream, sorted."""
    return sorted(
        (float(element.offset), float(element.quarterLength), pitch.midi)
        for element in score.flatten().notes
        for pitch in element.pitches
    )


# Holds, re-entries after a rest, a silent step inside, two voices crossing onto
# one key.
HAND_MADE = _roll(
    7,
    {
        0: [60, 64, 67, 72],
        1: [60, 64, 67, 74],
        2: [59, 62, 67, 74],
        3: [],
        4: [60, 67],
        5: [60, 67],
        6: [48],
    },
)


def test_roll_to_stream_merges_held_notes_into_longer_notes():
    score = roll_to_stream(HAND_MADE, tempo_bpm=90, program=52)
    assert _notes_of(score) == [
        (0.0, 1.0, 72),
        (0.0, 2.0, 60),
        (0.0, 2.0, 64),
        (0.0, 3.0, 67),
        (1.0, 2.0, 74),
        (2.0, 1.0, 59),
        (2.0, 1.0, 62),
        (4.0, 2.0, 60),
        (4.0, 2.0, 67),
        (6.0, 1.0, 48),
    ]
    marks = list(score.flatten().getElementsByClass("MetronomeMark"))
    assert [mark.number for mark in marks] == [90]
    assert marks[0].referent.quarterLength == 1.0
    for part in score.parts:
        assert part.getInstrument().midiProgram == 52


def test_stream_parts_are_lines_without_overlaps_ordered_from_the_top():
    score = roll_to_stream(HAND_MADE)
    assert len(score.parts) == 4  # at most four keys sound at once
    for part in score.parts:
        notes = list(part.flatten().notes)
        assert all(len(n.pitches) == 1 for n in notes)
        ends = [float(n.offset + n.quarterLength) for n in notes]
        starts = [float(n.offset) for n in notes]
        assert all(end <= start for end, start in zip(ends, starts[1:]))
    first_notes = [part.flatten().notes[0].pitch.midi for part in score.parts]
    assert first_notes == [
        72,
        67,
        64,
        60,
    ]  # soprano, alto, tenor, bass at the first chord


def test_a_repeated_key_is_read_as_one_held_note():
    # Two quarter notes C4 C4 and one half note C4 give the same roll; the
    # stream takes the hold.
    from music21 import note, stream

    struck = stream.Part(
        [note.Note(60, quarterLength=1), note.Note(60, quarterLength=1)]
    )
    held = stream.Part([note.Note(60, quarterLength=2)])
    assert torch.equal(stream_to_roll(struck), stream_to_roll(held))
    assert _notes_of(roll_to_stream(stream_to_roll(struck))) == [(0.0, 2.0, 60)]


def test_stream_to_roll_samples_a_hand_written_stream():
    from music21 import chord, note, stream

    part = stream.Part()
    part.insert(0, chord.Chord([48, 55], quarterLength=3))  # C3 G3, dotted half
    part.insert(0, note.Note(76, quarterLength=0.5))  # an eighth: sounds at step 0 only
    part.insert(1, note.Note(74, quarterLength=2))
    part.insert(
        5, note.Note(72, quarterLength=1)
    )  # after a quarter rest at step 4... and 3
    expected = _roll(
        6, {0: [48, 55, 76], 1: [48, 55, 74], 2: [48, 55, 74], 3: [], 4: [], 5: [72]}
    )
    roll = stream_to_roll(part)
    assert roll.dtype == torch.float32 and roll.shape == (6, 88)
    assert np.array_equal(roll.numpy(), expected)


def test_round_trip_of_a_hand_made_roll_through_stream_and_midi(tmp_path):
    assert np.array_equal(stream_to_roll(roll_to_stream(HAND_MADE)).numpy(), HAND_MADE)
    path = write_midi(HAND_MADE, tmp_path / "hand.mid", tempo_bpm=72)
    assert path == tmp_path / "hand.mid"
    back = read_midi(path)
    assert back.dtype == torch.float32 and np.array_equal(back.numpy(), HAND_MADE)
    score = music21.converter.parse(path)
    assert [m.number for m in score.flatten().getElementsByClass("MetronomeMark")][
        :1
    ] == [72]


def test_leading_and_trailing_silence_is_dropped_as_by_the_loaders(tmp_path):
    roll = np.zeros((6, 88))
    roll[2:4, 60 - 21] = 1  # silent, silent, C4, C4, silent, silent
    assert stream_to_roll(roll_to_stream(roll)).shape == (2, 88)
    assert np.array_equal(
        read_midi(write_midi(roll, tmp_path / "r.mid")).numpy(), roll[2:4]
    )


def test_jsb_chorales_survive_midi_exactly(jsb, jsb_raw, tmp_path):
    # The first five test chorales and the longest one, through a MIDI file
    # on disk; and the rolls' steps against the JSON file's own note lists.
    chorales = jsb["test"][:5] + [max(jsb["test"], key=len)]
    for i, chorale in enumerate(chorales):
        back = read_midi(write_midi(chorale, tmp_path / f"{i}.mid"))
        assert torch.equal(back, chorale), f"chorale {i} changed"
    for chorale, notes in zip(jsb["test"][:5], jsb_raw["test"][:5]):
        assert torch.equal(stream_to_roll(roll_to_stream(chorale)), chorale)
        assert [sorted(set(step)) for step in notes] == [
            (torch.nonzero(step).flatten() + 21).tolist() for step in chorale
        ]


@settings(max_examples=25, deadline=None)
@given(
    steps=st.integers(1, 24),
    density=st.sampled_from([0.02, 0.1, 0.4]),
    seed=st.integers(0, 2**32 - 1),
)
def test_round_trip_is_exact_for_any_roll_that_starts_and_ends_with_sound(
    steps, density, seed
):
    rng = np.random.default_rng(seed)
    roll = (rng.random((steps, 88)) < density).astype(np.float64)
    roll[0, rng.integers(88)] = 1
    roll[-1, rng.integers(88)] = 1
    assert np.array_equal(stream_to_roll(roll_to_stream(roll)).numpy(), roll)
    score = music21.converter.parseData(midi_bytes(roll), format="midi")
    assert np.array_equal(stream_to_roll(score).numpy(), roll)


def test_midi_file_is_written_atomically(tmp_path):
    target = tmp_path / "new" / "folder" / "piece.mid"
    write_midi(HAND_MADE, target)
    assert target.read_bytes() == midi_bytes(HAND_MADE)
    assert target.read_bytes()[:4] == b"MThd"
    before = target.read_bytes()
    with pytest.raises(ValueError, match="only 0 and 1"):
        write_midi(np.full((2, 88), 0.5), target)
    assert target.read_bytes() == before  # a failed write leaves the old file alone
    assert sorted(p.name for p in target.parent.iterdir()) == [
        "piece.mid"
    ]  # no temporary files


def test_midi_download_link_embeds_the_file():
    link = midi_download_link(HAND_MADE, "hand.mid", text="the <hand> piece")
    html_text = link.data
    assert 'download="hand.mid"' in html_text and "the &lt;hand&gt; piece" in html_text
    payload = re.search(r"base64,([A-Za-z0-9+/=]+)", html_text).group(1)
    assert base64.b64decode(payload) == midi_bytes(HAND_MADE)
    with pytest.raises(ValueError, match="plain name ending in .mid"):
        midi_download_link(HAND_MADE, "folder/hand.wav")


def test_bad_stream_inputs(tmp_path):
    from music21 import note, stream

    with pytest.raises(TypeError, match="expected a music21 stream, got list"):
        stream_to_roll([60, 64])
    with pytest.raises(ValueError, match="has no pitched notes"):
        stream_to_roll(stream.Part([note.Rest(quarterLength=2)]))
    with pytest.raises(ValueError, match="note 12 is outside the piano range 21..108"):
        stream_to_roll(stream.Part([note.Note(12)]))
    with pytest.raises(FileNotFoundError, match="no MIDI file at .*missing.mid"):
        read_midi(tmp_path / "missing.mid")
    (tmp_path / "junk.mid").write_bytes(b"this is not MIDI")
    with pytest.raises(ValueError, match="music21 could not read .*junk.mid as MIDI"):
        read_midi(tmp_path / "junk.mid")
    silent = write_midi(
        np.zeros((3, 88)), tmp_path / "silent.mid"
    )  # a valid file with no notes
    with pytest.raises(ValueError, match="silent.mid: the stream has no pitched notes"):
        read_midi(silent)


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"tempo_bpm": 0}, ValueError, "tempo_bpm must be a finite number > 0"),
        (
            {"tempo_bpm": float("inf")},
            ValueError,
            "tempo_bpm must be a finite number > 0, got inf",
        ),
        ({"tempo_bpm": "fast"}, TypeError, "tempo_bpm must be a number"),
        (
            {"program": 128},
            ValueError,
            r"program must be a General MIDI program number, an int in 0..127",
        ),
        ({"program": 1.0}, ValueError, "program must be a General MIDI program number"),
    ],
)
def test_bad_stream_settings(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        roll_to_stream(HAND_MADE, **kwargs)


# ---------------------------------------------------------------------------
# Audio: FluidSynth and the fallback
# ---------------------------------------------------------------------------


@pytest.fixture
def no_fluidsynth(monkeypatch):
    """Pretend FluidSynth is not installed."""
    monkeypatch.setattr(music.shutil, "which", lambda name: None)
    assert find_fluidsynth() is None


def test_fallback_without_fluidsynth_is_the_numpy_synthesis(no_fluidsynth):
    roll = _roll(4, {0: [60, 64], 1: [60, 64], 2: [67], 3: [72]})
    player = audio(roll, sample_rate=RATE)
    assert player.backend == "numpy"
    assert np.array_equal(player.wave, synthesize(roll, sample_rate=RATE))
    assert "install FluidSynth" in player.description
    assert "additive synthesis" in player._repr_html_()
    with pytest.raises(
        RuntimeError, match="backend='fluidsynth' but FluidSynth .* not installed"
    ):
        audio(roll, backend="fluidsynth")
    with pytest.raises(
        RuntimeError, match="apt-get install fluidsynth fluid-soundfont-gm"
    ):
        render_fluidsynth(roll)


def test_soundfont_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(music.SOUNDFONT_ENV, str(tmp_path / "none.sf2"))
    with pytest.raises(
        FileNotFoundError, match="DMM_SOUNDFONT=.*none.sf2 names no file"
    ):
        music.find_soundfont()
    (tmp_path / "mine.sf2").write_bytes(b"RIFF")
    monkeypatch.setenv(music.SOUNDFONT_ENV, str(tmp_path / "mine.sf2"))
    assert music.find_soundfont() == tmp_path / "mine.sf2"
    monkeypatch.delenv(music.SOUNDFONT_ENV)
    monkeypatch.setattr(
        music, "SOUNDFONT_PATHS", (tmp_path / "a.sf2", tmp_path / "mine.sf2")
    )
    assert music.find_soundfont() == tmp_path / "mine.sf2"  # the first that exists
    monkeypatch.setattr(music, "SOUNDFONT_PATHS", (tmp_path / "a.sf2",))
    assert music.find_soundfont() is None and find_fluidsynth() is None


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        (
            {"backend": "midi"},
            ValueError,
            'backend must be "auto", "fluidsynth" or "numpy"',
        ),
        ({"volume": 3}, TypeError, r"unexpected keyword arguments \['volume'\]"),
        (
            {"backend": "fluidsynth", "harmonics": (1.0,)},
            TypeError,
            "settings of the numpy synthesiser",
        ),
    ],
)
def test_bad_audio_arguments(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        audio(_held(60, 2), **kwargs)


@needs_fluidsynth
def test_fluidsynth_plays_the_right_pitch_for_the_right_time():
    rate, seconds = 22050, 0.5
    roll = _held(69, 4)  # A4 for 2 s
    wave = render_fluidsynth(
        roll, sample_rate=rate, seconds_per_step=seconds, program=0
    )  # piano
    music_samples = round(4 * seconds * rate)
    assert wave.dtype == np.float32
    assert (
        music_samples <= wave.size <= music_samples + 2 * rate
    )  # the music, then at most 2 s of tail
    assert np.isclose(np.abs(wave).max(), 0.9, atol=1e-6)
    freqs, magnitude = _spectrum(wave, rate)
    assert abs(freqs[magnitude.argmax()] - 440.0) < 2.0
    # The organ sounds at once and holds the note, unlike the decaying
    # piano, to the end of the roll; its strongest partials are all
    # harmonics of 440 Hz.
    organ = render_fluidsynth(roll, sample_rate=rate, program=19)
    step_rms = np.sqrt(
        (organ[:music_samples].astype(np.float64).reshape(4, -1) ** 2).mean(axis=1)
    )
    assert np.all(step_rms > 0.5 * step_rms.max())
    freqs, magnitude = _spectrum(organ, rate)
    strongest = freqs[np.argsort(magnitude)[-20:]]
    harmonic = np.round(strongest / 440.0)
    assert np.all(harmonic >= 1) and np.all(
        np.abs(strongest / (440.0 * harmonic) - 1) < 0.015
    )


@needs_fluidsynth
def test_fluidsynth_leaves_rests_silent():
    rate = 22050
    roll = _roll(
        12, {0: [60, 64, 67], 11: [72]}
    )  # a chord, five seconds of rest, a note
    wave = render_fluidsynth(roll, sample_rate=rate, program=19)
    step = rate // 2
    rms = np.sqrt(
        (wave[: 12 * step].astype(np.float64).reshape(12, step) ** 2).mean(axis=1)
    )
    assert rms[0] > 0.05 and rms[11] > 0.05
    assert np.all(
        rms[6:10] < 1e-2 * rms[0]
    )  # the release and reverb have died away (-40 dB)


@needs_fluidsynth
def test_audio_prefers_fluidsynth_and_says_so():
    roll = _roll(
        4, {0: [60, 64, 67], 1: [60, 64, 67], 2: [62, 65, 71], 3: [60, 64, 72]}
    )
    player = audio(roll, sample_rate=RATE)
    setup = find_fluidsynth()
    assert player.backend == "fluidsynth"
    assert player.description == (
        f"FluidSynth with the {setup.soundfont.name} soundfont, "
        "General MIDI program 19 (Pipe Organ)"
    )
    page = player._repr_html_()
    assert "<audio" in page and "<figcaption" in page and setup.soundfont.name in page
    assert player.data[:4] == b"RIFF"
    assert np.array_equal(
        player.wave, render_fluidsynth(roll, sample_rate=RATE)
    )  # deterministic
    # Settings of the numpy synthesiser ask for it.
    assert audio(roll, sample_rate=RATE, harmonics=(1.0,)).backend == "numpy"
    assert audio(roll, sample_rate=RATE, backend="numpy").backend == "numpy"
    assert audio(np.zeros((3, 88)), sample_rate=RATE).wave.shape == (
        3 * RATE // 2,
    )  # silence


@needs_fluidsynth
def test_fluidsynth_errors(tmp_path):
    (tmp_path / "fake.sf2").write_text("not a soundfont")
    with pytest.raises(RuntimeError, match="could not load the soundfont .*fake.sf2"):
        render_fluidsynth(_held(60, 2), soundfont=tmp_path / "fake.sf2")
    with pytest.raises(FileNotFoundError, match="no soundfont file at"):
        render_fluidsynth(_held(60, 2), soundfont=tmp_path / "none.sf2")
    with pytest.raises(
        ValueError, match="sample_rate must be an integer in 8000..96000"
    ):
        render_fluidsynth(_held(60, 2), sample_rate=4000)


# ---------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------


def test_score_has_two_barred_staves_that_sound_like_the_roll(jsb):
    for roll in [HAND_MADE, jsb["test"][0][:30]]:
        score = roll_to_score(roll, time_signature="3/4")
        assert len(score.parts) == 2
        for staff in score.parts:
            assert staff.highestTime == roll.shape[0]
            measures = list(staff.getElementsByClass("Measure"))
            assert measures and measures[0].timeSignature.ratioString == "3/4"
        # Chords, ties and rests put back together: the same notes at every step.
        assert np.array_equal(stream_to_roll(score).numpy(), np.asarray(roll))


def test_score_splits_at_the_median_pitch_by_default():
    roll = _roll(
        2, {0: [48, 55, 64, 72], 1: [50, 57, 65, 74]}
    )  # median key: 60 (64 - 4)
    upper, lower = roll_to_score(roll).parts
    assert sorted(p.midi for n in upper.flatten().notes for p in n.pitches) == [
        64,
        65,
        72,
        74,
    ]
    assert sorted(p.midi for n in lower.flatten().notes for p in n.pitches) == [
        48,
        50,
        55,
        57,
    ]
    upper, lower = roll_to_score(roll, split=70).parts
    assert sorted(p.midi for n in upper.flatten().notes for p in n.pitches) == [72, 74]


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"time_signature": "x/y"}, ValueError, "time_signature 'x/y' is not a metre"),
        ({"time_signature": 4}, TypeError, "time_signature must be a string"),
        ({"split": 200}, ValueError, r"split must be a MIDI number in 21..109"),
    ],
)
def test_bad_score_settings(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        roll_to_score(HAND_MADE, **kwargs)


def test_score_image_without_lilypond_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(music.shutil, "which", lambda name: None)
    assert find_lilypond() is None
    with pytest.raises(
        RuntimeError,
        match="need LilyPond, which is not installed.*apt-get install lilypond",
    ):
        score_image(HAND_MADE)


@needs_lilypond
def test_score_image_is_a_cropped_png(tmp_path):
    from PIL import Image

    image = score_image(HAND_MADE, path=tmp_path / "score.png", resolution=100)
    assert image.data[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "score.png").read_bytes() == image.data
    with Image.open(tmp_path / "score.png") as png:
        width, height = png.size
        pixels = np.asarray(png.convert("L"))
    assert (
        100 < width < 827 and 50 < height < 400
    )  # cropped well inside an A4 page at 100 dpi
    assert pixels.min() == 0  # ink inside
    assert (
        pixels[:12].min()
        == pixels[-12:].min()
        == pixels[:, :12].min()
        == pixels[:, -12:].min()
        == 255
    )


# ---------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------

# Worked by hand. Steps: {C4 E4 G4}, {C4 E4 G4}, {D4}, {}, {C4 E4 G4 C5}, {C#4}.
STATS_ROLL = _roll(
    6, {0: [60, 64, 67], 1: [60, 64, 67], 2: [62], 4: [60, 64, 67, 72], 5: [61]}
)


def test_notes_per_step_by_hand():
    assert notes_per_step(STATS_ROLL).tolist() == [3, 3, 1, 0, 4, 1]
    assert notes_per_step([STATS_ROLL, _roll(1, {0: [40]})]).tolist() == [
        3,
        3,
        1,
        0,
        4,
        1,
        1,
    ]


def test_pitch_class_histogram_by_hand():
    # Sounding steps: C 4 (C4 three times, C5 once), E 3, G 3, D 1, C# 1: 12 in all.
    expected = np.zeros(12)
    expected[[0, 4, 7, 2, 1]] = [4, 3, 3, 1, 1]
    assert np.allclose(pitch_class_histogram(STATS_ROLL), expected / 12)
    assert pitch_class_histogram(_held(21, 3)).argmax() == 9  # A0 is an A


def test_note_durations_by_hand():
    # In key order: C4: 2 steps, then 1; C#4: 1; D4: 1; E4: 2, then 1; G4: 2,
    # then 1; C5: 1.
    assert note_durations(STATS_ROLL).tolist() == [2, 1, 1, 1, 2, 1, 2, 1, 1]
    assert note_durations(np.zeros((3, 88))).tolist() == []
    assert note_durations(_held(60, 5)).tolist() == [
        5
    ]  # held to the end: counted as it stands


def test_scale_consistency_by_hand():
    # STATS_ROLL has C, D, E, G (11 of 12 sounding steps) and one C#. No major
    # scale holds both C and C#, so the best (C, F or G major) scores 11/12.
    assert scale_consistency(STATS_ROLL).tolist() == pytest.approx([11 / 12])
    g_major = _roll(2, {0: [60, 62, 64, 67], 1: [66]})  # C D E G F#: all in G major
    assert scale_consistency(g_major).tolist() == pytest.approx([1.0])
    chromatic = np.eye(12, 88, 39)  # C4, C#4, ..., B4, one step each
    assert scale_consistency(chromatic).tolist() == pytest.approx([7 / 12])
    a_minor = _roll(3, {0: [57, 60, 64], 1: [59, 62, 65], 2: [57, 60, 64]})
    both = scale_consistency([a_minor, np.zeros((2, 88))])
    assert both[0] == 1.0 and np.isnan(both[1])


def test_music_statistics_summarises_by_hand():
    stats = music_statistics(STATS_ROLL)
    assert isinstance(stats, MusicStatistics)
    assert stats.notes_per_step == pytest.approx(12 / 6)
    assert stats.four_note_steps == pytest.approx(1 / 6)
    assert stats.silent_steps == pytest.approx(1 / 6)
    assert stats.mean_note_duration == pytest.approx(12 / 9)
    assert stats.scale_consistency == pytest.approx(11 / 12)
    assert np.allclose(stats.pitch_class_histogram, pitch_class_histogram(STATS_ROLL))
    assert stats.mean_pitch == 64.0
    assert stats.held_chords == pytest.approx(1 / 5)
    assert stats.mean_note_motion == pytest.approx(3 / 5)
    silent = music_statistics(np.zeros((4, 88)))
    assert silent.silent_steps == 1.0 and np.isnan(silent.mean_note_duration)
    assert np.isnan(silent.scale_consistency) and np.all(
        np.isnan(silent.pitch_class_histogram)
    )
    assert np.isnan(silent.mean_pitch) and np.isnan(silent.mean_note_motion)
    assert silent.held_chords == 1.0  # silence held throughout


def test_pitch_classes_per_step_by_hand():
    expected = np.zeros((6, 12), dtype=np.int64)
    expected[[0, 1, 4], 0] = 1  # C4
    expected[4, 0] += 1  # and C5
    expected[[0, 1, 4], 4] = 1  # E4
    expected[[0, 1, 4], 7] = 1  # G4
    expected[2, 2] = 1  # D4
    expected[5, 1] = 1  # C#4
    assert np.array_equal(pitch_classes_per_step(STATS_ROLL), expected)
    assert pitch_classes_per_step(STATS_ROLL).dtype == np.int64
    both = pitch_classes_per_step([STATS_ROLL, _held(21, 2)])  # A0 is an A
    assert both.shape == (8, 12) and both[6:, 9].tolist() == [1, 1]


def test_mean_pitch_by_hand():
    # (3 * 60 + 3 * 64 + 3 * 67 + 62 + 72 + 61) / 12 sounding (step, key) pairs.
    assert mean_pitch(STATS_ROLL) == (768 / 12) == 64.0
    assert mean_pitch([_held(40, 3), _held(50, 1)]) == 42.5  # weighted by steps
    assert np.isnan(mean_pitch(np.zeros((2, 88))))
    per_step = mean_pitch_per_step(STATS_ROLL)
    expected = [191 / 3, 191 / 3, 62, np.nan, 263 / 4, 61]
    assert np.allclose(per_step, expected, equal_nan=True)
    assert mean_pitch_per_step(STATS_ROLL, silent=0.0)[3] == 0.0


def test_held_chords_by_hand():
    # Step 1 repeats step 0; steps 2 to 5 each differ from the step before.
    assert held_chords(STATS_ROLL) == pytest.approx(1 / 5)
    # Pairs are taken within each roll: 1 of 5 here, 2 of 2 in the held note.
    assert held_chords([STATS_ROLL, _held(60, 3)]) == pytest.approx(3 / 7)
    assert np.isnan(held_chords(_held(60, 1)))


def test_note_motion_by_hand():
    # Step 1: C4 E4 G4 over C4 E4 G4: 0, 0, 0. Step 2: D4, two semitones from
    # C4 and from E4. Step 3 is silent; step 4 follows silence; step 5: C#4,
    # a semitone from C4.
    assert note_motion(STATS_ROLL).tolist() == [0, 0, 0, 2, 1]
    assert note_motion(STATS_ROLL).dtype == np.int64
    leap = _roll(2, {0: [48, 72], 1: [60, 61, 71]})  # nearest: 48 or 72, 72, 72
    assert note_motion(leap).tolist() == [12, 11, 1]
    # Steps of different rolls are never compared.
    assert note_motion([_held(40, 1), _held(80, 1)]).tolist() == []


def _note_motion_by_loops(rolls):
    """note_motion, written out with loops over steps and keys."""
    motion = []
    for roll in rolls:
        for t in range(1, len(roll)):
            before = [k for k in range(88) if roll[t - 1, k]]
            for k in range(88):
                if roll[t, k] and before:
                    motion.append(min(abs(k - j) for j in before))
    return motion


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_note_motion_matches_loops_on_random_rolls(seed):
    rng = np.random.default_rng(seed)
    rolls = [
        (rng.random((rng.integers(1, 6), 88)) < rng.choice([0.02, 0.1])).astype(float)
        for _ in range(3)
    ]
    assert note_motion(rolls).tolist() == _note_motion_by_loops(rolls)


def test_pitch_class_distance_by_hand():
    c, d = np.eye(12)[0], np.eye(12)[2]
    assert pitch_class_distance(c, d) == 1.0
    assert pitch_class_distance(c, c) == 0.0
    assert pitch_class_distance(c, (c + d) / 2) == 0.5
    stats = music_statistics(STATS_ROLL)
    assert pitch_class_distance(stats, stats.pitch_class_histogram) == 0.0
    # STATS_ROLL's histogram is C 4, C# 1, D 1, E 3, G 3 (of 12): C holds 4/12.
    assert pitch_class_distance(stats, c) == pytest.approx(1 - 4 / 12)
    with pytest.raises(ValueError, match=r"shape \(12,\) or a MusicStatistics"):
        pitch_class_distance(np.ones(11) / 11, c)


def test_statistics_accept_one_roll_a_batch_or_a_list():
    batch = torch.stack(
        [torch.tensor(STATS_ROLL), torch.tensor(STATS_ROLL[::-1].copy())]
    )  # (2, 6, 88)
    as_list = [STATS_ROLL, STATS_ROLL[::-1]]
    assert np.array_equal(notes_per_step(batch), notes_per_step(as_list))
    assert np.allclose(pitch_class_histogram(batch), pitch_class_histogram(STATS_ROLL))
    assert (
        music_statistics(batch).notes_per_step
        == music_statistics(STATS_ROLL).notes_per_step
    )


def test_statistics_of_jsb_match_the_note_lists(jsb, jsb_raw):
    # Polyphony and pitch classes straight from the JSON file, with no roll in between.
    steps = [step for chorale in jsb_raw["test"] for step in chorale]
    assert notes_per_step(jsb["test"]).tolist() == [len(set(step)) for step in steps]
    counts = np.bincount(
        [note % 12 for step in steps for note in set(step)], minlength=12
    )
    assert np.allclose(pitch_class_histogram(jsb["test"]), counts / counts.sum())
    assert (
        note_durations(jsb["test"]).sum() == counts.sum()
    )  # every sounding step is in one note
    stats = music_statistics(jsb["test"])
    assert stats.four_note_steps > 0.85 and stats.scale_consistency > 0.9


@pytest.mark.parametrize(
    ("rolls", "error", "pattern"),
    [
        ([], ValueError, r"no piano rolls given \(an empty sequence\)"),
        (
            np.zeros((0, 4, 88)),
            ValueError,
            r"no piano rolls given \(a batch of 0 rolls\)",
        ),
        (
            [np.zeros((2, 88)), np.full((2, 88), 2.0)],
            ValueError,
            r"roll 1: a piano roll must hold only 0 and 1; found 2\.0",
        ),
        (
            [np.zeros((2, 88)), np.zeros((2, 87))],
            ValueError,
            "roll 1: a piano roll must have 88 columns",
        ),
        ("C major", TypeError, "expected a piano roll .*got str"),
        (np.zeros((0, 88)), ValueError, r"empty \(0 time steps\)"),
    ],
)
def test_bad_statistics_inputs(rolls, error, pattern):
    for function in (
        notes_per_step,
        note_durations,
        scale_consistency,
        music_statistics,
        pitch_classes_per_step,
        mean_pitch,
        mean_pitch_per_step,
        held_chords,
        note_motion,
    ):
        with pytest.raises(error, match=pattern):
            function(rolls)


def test_histogram_of_silence_is_refused():
    with pytest.raises(ValueError, match="no note sounds in these rolls"):
        pitch_class_histogram(np.zeros((3, 88)))
