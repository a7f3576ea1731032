"""The autoregressive (NADE) emission: a normalised distribution over chords."""

from __future__ import annotations

import itertools

import pytest
import torch

from dmm_helpers.nade import NADEBernoulli, NADEEmitter


def random_nade(batch=(3,), notes=5, hidden=4, seed=0) -> NADEBernoulli:
    generator = torch.Generator().manual_seed(seed)

    def draw(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    return NADEBernoulli(
        draw(*batch, notes),
        draw(*batch, hidden),
        draw(hidden, notes),
        draw(notes, hidden),
    )


def every_chord(notes: int) -> torch.Tensor:
    """All 2^notes binary vectors, (2^notes, notes)."""
    rows = list(itertools.product((0.0, 1.0), repeat=notes))
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("notes", [1, 3, 6])
def test_the_probabilities_of_every_chord_sum_to_one(notes):
    nade = random_nade(batch=(2,), notes=notes)
    chords = every_chord(notes)[:, None]  # (2^n, 1, n): broadcast over the batch
    total = nade.log_prob(chords).exp().sum(0)  # (2,)
    assert torch.allclose(total, torch.ones(2, dtype=torch.float64), rtol=1e-12)


def test_the_parallel_score_equals_the_chain_rule_note_by_note():
    nade = random_nade(batch=(4,), notes=7, hidden=5)
    x = torch.bernoulli(torch.full((4, 7), 0.4, dtype=torch.float64))
    expected = torch.zeros(4, dtype=torch.float64)
    for b in range(4):
        activation = nade.hidden_bias[b].clone()
        for k in range(7):
            p_on = torch.sigmoid(
                nade.visible_bias[b, k] + torch.sigmoid(activation) @ nade.weight_out[k]
            )
            expected[b] += torch.log(p_on if x[b, k] == 1 else 1 - p_on)
            activation = activation + x[b, k] * nade.weight_in[:, k]
    assert torch.allclose(nade.log_prob(x), expected, rtol=1e-12)


def test_samples_follow_the_distribution():
    nade = random_nade(batch=(), notes=3, hidden=3, seed=2)
    torch.manual_seed(0)
    draws = nade.sample(torch.Size([40_000]))  # (40000, 3)
    assert draws.shape == (40_000, 3)
    chords = every_chord(3)
    exact = nade.log_prob(chords).exp()  # (8,)
    counts = torch.stack([(draws == chord).all(-1).double().mean() for chord in chords])
    # Four standard errors of a frequency from 40,000 draws.
    tolerance = 4 * (exact * (1 - exact) / 40_000).sqrt() + 1e-4
    assert bool(((counts - exact).abs() < tolerance).all()), (counts, exact)


def test_temperature_zero_takes_the_likelier_value_of_each_note_in_turn():
    nade = random_nade(batch=(2,), notes=6)
    x, probs = nade.sample_tempered(temperature=0.0)
    assert torch.equal(x, probs)
    logits = nade.conditional_logits(x)  # the conditionals at the chosen chord
    assert torch.equal(x, (logits > 0).to(x.dtype))


def test_the_emitter_gives_biases_from_the_state():
    torch.manual_seed(0)
    emitter = NADEEmitter(input_dim=88, z_dim=4, emission_dim=8, nade_dim=6)
    z = torch.randn(2, 5, 4)
    distribution = emitter.distribution(z)
    assert distribution.batch_shape == (2, 5) and distribution.event_shape == (88,)
    assert distribution.hidden_bias.shape == (2, 5, 6)
    x = torch.bernoulli(torch.full((2, 5, 88), 0.05))
    assert distribution.log_prob(x).shape == (2, 5)
    assert torch.isfinite(distribution.log_prob(x)).all()


def test_only_chords_are_scored():
    nade = random_nade(batch=(2,), notes=4)
    with pytest.raises(ValueError, match="only 0s and 1s"):
        nade.log_prob(torch.full((2, 4), 0.5, dtype=torch.float64))


def test_an_empty_batch_has_no_scores():
    nade = random_nade(batch=(0,), notes=4)
    assert nade.log_prob(torch.zeros(0, 4, dtype=torch.float64)).shape == (0,)
