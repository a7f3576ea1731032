"""Generation from a DMM: prior samples and continuations of a given beginning.

The model is tiny and randomly initialised: what is tested is the sampling
itself. At temperature 1 the prior sampler must reproduce ``DMM.generate``
draw for draw; the continuation's reading of the prefix must equal the
guide's sample that the fast ELBO (:mod:`dmm_helpers.elbo`, written
independently) draws from the same noise; temperatures are checked against
the distributions they are meant to produce.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from dmm_helpers.data import make_batch
from dmm_helpers.dmm import DMM, GUIDES, DMMConfig, LinearGaussianDMM
from dmm_helpers.elbo import elbo_terms
from dmm_helpers.generate import Generated, continue_sequence, sample_prior

TINY = DMMConfig(z_dim=4, emission_dim=8, transition_dim=8, rnn_dim=8)


def _model(
    seed: int = 0, config: DMMConfig = TINY, dtype: torch.dtype = torch.float32
) -> DMM:
    torch.manual_seed(seed)
    model = DMM(config).to(dtype)
    with (
        torch.no_grad()
    ):  # a livelier emitter than the default initialisation: some notes likely
        model.emitter.hidden_to_logits.bias.uniform_(-3.0, 1.0)
    return model.eval()


def _prefix(steps: int = 6, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.bernoulli(
        torch.full((steps, 88), 0.08), generator=generator
    )  # (P, 88)


def _is_binary(x: torch.Tensor) -> bool:
    return bool(((x == 0) | (x == 1)).all())


# ---------------------------------------------------------------------------
# The prior
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_prior_samples_have_the_right_shapes_dtype_and_values(dtype):
    model = _model(dtype=dtype)
    sample = sample_prior(model, 3, 11, seed=0)
    assert isinstance(sample, Generated)
    assert sample.x.shape == (3, 11, 88) and sample.z.shape == (3, 11, 4)
    assert sample.probs.shape == (3, 11, 88)
    for tensor in sample:
        assert tensor.dtype == dtype and tensor.device == model.z_0.device
        assert not tensor.requires_grad
    assert _is_binary(sample.x) and 0 < sample.x.mean() < 1
    assert bool(((sample.probs >= 0) & (sample.probs <= 1)).all())


def test_temperature_one_is_the_models_own_generate():
    model = _model()
    torch.manual_seed(123)
    ours = sample_prior(model, 4, 9)  # no seed: the global generator
    torch.manual_seed(123)
    x, z = model.generate(4, 9)
    assert torch.equal(ours.x, x) and torch.equal(ours.z, z)


def test_probabilities_are_the_tempered_emission_at_the_sampled_states():
    model = _model()
    for temperature in (0.5, 1.0, 2.0):
        sample = sample_prior(model, 2, 5, seed=1, temperature=temperature)
        logits = model.emitter(sample.z)  # (2, 5, 88)
        assert torch.allclose(sample.probs, torch.sigmoid(logits / temperature))


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_temperature_scales_the_transition_noise_and_sharpens_the_notes(temperature):
    model = _model()
    sample = sample_prior(model, 4000, 4, seed=2, temperature=temperature)
    z_prev = torch.cat(
        [model.z_0.expand(4000, 1, -1), sample.z[:, :-1]], dim=1
    )  # (N, T, z_dim)
    with torch.no_grad():
        loc, scale = model.transition(z_prev)
    eps = (sample.z - loc) / scale  # standard normal times the temperature
    assert eps.std().item() == pytest.approx(temperature, rel=0.02)
    assert eps.mean().abs().item() < 0.02 * temperature
    # The notes are Bernoulli(probs): the average gap is zero within its standard error.
    gap = (sample.x - sample.probs).mean().item()
    standard_error = (sample.probs * (1 - sample.probs)).mean().sqrt().item() / np.sqrt(
        sample.x.numel()
    )
    assert abs(gap) < 4 * standard_error


def test_temperature_zero_is_the_mean_path_and_the_likelier_notes():
    model = _model()
    sample = sample_prior(model, 3, 6, seed=5, temperature=0.0)
    z_prev, path = model.z_0, []
    with torch.no_grad():
        for _ in range(6):
            z_prev, _scale = model.transition(z_prev)
            path.append(z_prev)
        logits = model.emitter(torch.stack(path))  # (6, 88)
    assert torch.allclose(sample.z, torch.stack(path).expand(3, -1, -1))
    assert torch.equal(sample.x, (logits > 0).float().expand(3, -1, -1))
    assert torch.equal(sample.probs, sample.x)


AUGMENTED = dataclasses.replace(TINY, augmented=True)


def test_an_augmented_model_feeds_each_drawn_chord_to_the_next_step():
    # At temperature 0: z_t is the transition mean of (z_{t-1}, x_{t-1}) and
    # x_t the likelier notes of the emitter at (z_t, x_{t-1}), from x_0 = 0.
    model = _model(config=AUGMENTED)
    sample = sample_prior(model, 2, 6, seed=5, temperature=0.0)
    z_prev, x_prev = model.z_0[None], torch.zeros(1, 88)
    with torch.no_grad():
        for t in range(6):
            z_prev, _scale = model.transition(z_prev, x_prev)
            x_prev = (model.emitter(z_prev, x_prev) > 0).float()
            assert torch.allclose(sample.z[:, t], z_prev.expand(2, -1))
            assert torch.equal(sample.x[:, t], x_prev.expand(2, -1))
    assert 0 < sample.x.sum() < sample.x.numel()  # the notes vary, so they matter


@pytest.mark.parametrize("emitter", ["bernoulli", "nade"])
def test_an_augmented_continuation_reads_the_prefix_notes_step_by_step(emitter):
    torch.manual_seed(0)
    model = DMM(dataclasses.replace(AUGMENTED, emitter=emitter)).double().eval()
    prefix = _prefix(5).double()
    result = continue_sequence(model, prefix, 3, seed=2, num_samples=2, temperature=0.0)
    before = torch.cat([torch.zeros(1, 88), prefix[:-1]]).double()  # x_0 .. x_{P-1}
    with torch.no_grad():
        x, before = prefix.expand(2, -1, -1), before.expand(2, -1, -1)
        expected = model.note_probabilities(result.z[:, :5], x, before)
        assert torch.allclose(result.probs[:, :5], expected)
        # the future's first step reads the prefix's last chord
        z_next, _scale = model.transition(result.z[:, 4], prefix[-1].expand(2, -1))
        assert torch.allclose(result.z[:, 5], z_next)
        x_next = model.sample_emission(z_next, 0.0, x_prev=prefix[-1].expand(2, -1))[0]
        assert torch.equal(result.x[:, 5], x_next)


def test_seeds_reproduce_and_leave_the_global_generator_alone():
    model = _model()
    state = torch.get_rng_state()
    first = sample_prior(model, 2, 8, seed=7)
    again = sample_prior(model, 2, 8, seed=7)
    other = sample_prior(model, 2, 8, seed=8)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first.z, other.z)


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        (
            {"num_sequences": 0},
            ValueError,
            "num_sequences must be a positive int, got 0",
        ),
        (
            {"num_sequences": True},
            ValueError,
            "num_sequences must be a positive int, got True",
        ),
        ({"length": 2.0}, ValueError, "length must be a positive int, got 2.0"),
        ({"length": -3}, ValueError, "length must be a positive int, got -3"),
        (
            {"temperature": -0.1},
            ValueError,
            "temperature must be a finite number >= 0, got -0.1",
        ),
        (
            {"temperature": float("nan")},
            ValueError,
            "temperature must be a finite number >= 0",
        ),
        ({"temperature": "hot"}, TypeError, "temperature must be a number, got 'hot'"),
        ({"seed": "abc"}, TypeError, "seed must be an int or None, got 'abc'"),
        ({"seed": -1}, ValueError, r"seed must lie in 0 .. 2\*\*64 - 1, got -1"),
    ],
)
def test_bad_prior_arguments(kwargs, error, pattern):
    arguments = {"num_sequences": 2, "length": 3, **kwargs}
    with pytest.raises(error, match=pattern):
        sample_prior(
            _model(),
            arguments.pop("num_sequences"),
            arguments.pop("length"),
            **arguments,
        )


def test_models_that_cannot_make_piano_rolls_are_refused():
    with pytest.raises(
        TypeError, match="model must be a dmm_helpers.dmm.DMM, got Linear"
    ):
        sample_prior(torch.nn.Linear(2, 2), 1, 1)
    gaussian = LinearGaussianDMM(
        torch.eye(2), torch.ones(3, 2), torch.ones(2), torch.ones(3), torch.zeros(2)
    )
    with pytest.raises(TypeError, match="needs binary emissions .* are Normal"):
        sample_prior(gaussian, 1, 1)
    with pytest.raises(TypeError, match="needs binary emissions"):
        continue_sequence(gaussian, torch.zeros(2, 3), 1)


# ---------------------------------------------------------------------------
# Continuations
# ---------------------------------------------------------------------------


def test_continuation_keeps_the_prefix_exactly():
    model = _model()
    prefix = _prefix(6)
    result = continue_sequence(model, prefix, 5, seed=0, num_samples=3)
    assert result.x.shape == (3, 11, 88) and result.z.shape == (3, 11, 4)
    assert result.probs.shape == (3, 11, 88)
    assert torch.equal(result.x[:, :6], prefix.expand(3, -1, -1))
    assert _is_binary(result.x)
    # A numpy or boolean prefix is taken as the same roll.
    from_numpy = continue_sequence(
        model, prefix.numpy().astype(bool), 5, seed=0, num_samples=3
    )
    assert all(torch.equal(a, b) for a, b in zip(result, from_numpy))


@pytest.mark.parametrize("num_iafs", [0, 2])
def test_the_prefix_is_read_as_the_guide_reads_it(num_iafs):
    # With the same standard normal draws, the guide's sample in the fast
    # ELBO (packed batches, its own loop) must give the same z_1..z_P.
    config = DMMConfig(
        z_dim=4,
        emission_dim=8,
        transition_dim=8,
        rnn_dim=8,
        num_iafs=num_iafs,
        iaf_dim=8,
    )
    model = _model(config=config, dtype=torch.float64)
    prefix = _prefix(7).double()
    result = continue_sequence(model, prefix, 3, seed=11, num_samples=4)
    noise = torch.randn(
        (4, 7, 4), generator=torch.Generator().manual_seed(11), dtype=torch.float64
    )
    with torch.no_grad():
        guide_z = elbo_terms(
            model, make_batch([prefix] * 4), noise=noise
        ).z  # (4, 7, z_dim)
    assert torch.allclose(result.z[:, :7], guide_z, rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        assert torch.allclose(
            result.probs[:, :7], torch.sigmoid(model.emitter(guide_z))
        )


def test_the_future_starts_from_the_last_state_of_the_prefix():
    model = _model()
    result = continue_sequence(
        model, _prefix(5), 4, seed=3, num_samples=2, temperature=0.0
    )
    with torch.no_grad():
        z = result.z[:, 4]  # z_P, from the guide
        for t in range(5, 9):  # at temperature 0 each next state is the transition mean
            z, _scale = model.transition(z)
            assert torch.allclose(result.z[:, t], z)
            assert torch.equal(result.x[:, t], (model.emitter(z) > 0).float())


def test_the_continuation_depends_on_the_prefix():
    model = _model()
    quiet = continue_sequence(model, torch.zeros(6, 88), 4, seed=0)
    busy = continue_sequence(model, torch.ones(6, 88), 4, seed=0)
    assert not torch.allclose(quiet.z[:, 5], busy.z[:, 5])


def test_continuation_seeds_mode_and_dropout():
    config = DMMConfig(
        z_dim=4,
        emission_dim=8,
        transition_dim=8,
        rnn_dim=8,
        rnn_layers=2,
        rnn_dropout=0.5,
    )
    model = _model(config=config)
    model.train()  # dropout on while training; generation must switch it off
    state = torch.get_rng_state()
    first = continue_sequence(model, _prefix(), 6, seed=4, num_samples=2)
    again = continue_sequence(model, _prefix(), 6, seed=4, num_samples=2)
    assert torch.equal(torch.get_rng_state(), state)
    assert model.training  # the caller's mode is restored
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    model.eval()
    in_eval = continue_sequence(model, _prefix(), 6, seed=4, num_samples=2)
    assert all(torch.equal(a, b) for a, b in zip(first, in_eval))
    assert not torch.equal(
        first.x, continue_sequence(model, _prefix(), 6, seed=5, num_samples=2).x
    )


def test_a_float32_prefix_follows_a_float64_model():
    model = _model(dtype=torch.float64)
    result = continue_sequence(model, _prefix(4), 2, seed=0)
    assert result.x.dtype == result.z.dtype == result.probs.dtype == torch.float64


@pytest.mark.parametrize(
    ("prefix", "kwargs", "error", "pattern"),
    [
        (
            torch.zeros(4, 87),
            {},
            ValueError,
            r"must have 88 columns \(one per key, column 0 = MIDI 21\); got 87",
        ),
        (
            torch.zeros(88),
            {},
            ValueError,
            r"must be 2-D \(time, 88\); got shape \(88,\)",
        ),
        (torch.zeros(0, 88), {}, ValueError, r"empty \(0 time steps\)"),
        (
            torch.full((2, 88), 0.5),
            {},
            ValueError,
            r"only 0 and 1; found 0\.5 at time step 0, column 0",
        ),
        ([[0] * 88], {}, TypeError, "torch tensor or numpy array, got list"),
        (
            torch.zeros(2, 88),
            {"num_steps": 0},
            ValueError,
            "num_steps must be a positive int, got 0",
        ),
        (
            torch.zeros(2, 88),
            {"num_samples": 0},
            ValueError,
            "num_samples must be a positive int, got 0",
        ),
        (
            torch.zeros(2, 88),
            {"temperature": -1},
            ValueError,
            "temperature must be a finite number >= 0",
        ),
        (
            torch.zeros(2, 88),
            {"seed": 1.5},
            TypeError,
            "seed must be an int or None, got 1.5",
        ),
    ],
)
def test_bad_continuation_arguments(prefix, kwargs, error, pattern):
    arguments = {"num_steps": 3, **kwargs}
    with pytest.raises(error, match=pattern):
        continue_sequence(_model(), prefix, arguments.pop("num_steps"), **arguments)


def test_models_of_other_widths_take_prefixes_of_their_width():
    model = _model(
        config=DMMConfig(
            input_dim=5, z_dim=2, emission_dim=4, transition_dim=4, rnn_dim=4
        )
    )
    result = continue_sequence(model, torch.ones(3, 5), 2, seed=0)
    assert result.x.shape == (1, 5, 5)
    with pytest.raises(ValueError, match=r"must have 5 columns \(input_dim\); got 88"):
        continue_sequence(model, torch.ones(3, 88), 2)


@pytest.mark.parametrize("guide", GUIDES)
def test_every_guide_continues_a_chorale_from_its_own_reading(guide):
    config = dataclasses.replace(TINY, guide=guide)
    model = _model(config=config, dtype=torch.float64)
    prefix = _prefix(7).double()
    result = continue_sequence(model, prefix, 3, seed=5, num_samples=2)
    assert result.x.shape == (2, 10, 88) and torch.equal(
        result.x[:, :7], prefix.expand(2, -1, -1)
    )
    noise = torch.randn(
        (2, 7, config.z_dim),
        generator=torch.Generator().manual_seed(5),
        dtype=torch.float64,
    )
    with torch.no_grad():  # the prefix's states are the guide's, read by elbo_terms
        guide_z = elbo_terms(model, make_batch([prefix] * 2), noise=noise).z
    assert torch.allclose(result.z[:, :7], guide_z, rtol=1e-10, atol=1e-12)


def test_a_nade_model_samples_and_continues_chorales():
    torch.manual_seed(0)
    model = DMM(dataclasses.replace(TINY, emitter="nade")).double().eval()
    with torch.no_grad():  # as _model does: some notes likely
        model.emitter.hidden_to_biases.bias[:88].uniform_(-3.0, 1.0)
    sample = sample_prior(model, 3, 6, seed=2)
    assert sample.x.shape == (3, 6, 88) and _is_binary(sample.x)
    again = sample_prior(model, 3, 6, seed=2)
    assert torch.equal(sample.x, again.x)  # a seed fixes the note-by-note draws
    # probs are the conditionals at the drawn notes: what the model expected.
    with torch.no_grad():
        expected = model.note_probabilities(sample.z, sample.x)
    assert torch.allclose(sample.probs, expected)
    prefix = _prefix(5).double()
    result = continue_sequence(model, prefix, 4, seed=3, num_samples=2)
    assert torch.equal(result.x[:, :5], prefix.expand(2, -1, -1))
    cold = sample_prior(model, 2, 4, seed=0, temperature=0.0)
    assert torch.equal(cold.x, cold.probs)
