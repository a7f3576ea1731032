"""Posterior collapse measured: KL per latent dimension and active units."""

from __future__ import annotations

import pytest
import torch
from dmm_fixtures import SMALL, random_batch, small_dmm

from dmm_helpers.data import make_batch
from dmm_helpers.dmm import GUIDES
from dmm_helpers.elbo import elbo_terms
from dmm_helpers.latents import LatentUsage, latent_usage


@pytest.mark.parametrize("guide", GUIDES)
def test_kl_per_dimension_adds_up_to_the_elbos_kl(guide: str) -> None:
    dmm = small_dmm(guide=guide)
    rolls = [random_batch([n]).x[0] for n in (5, 3, 4)]
    torch.manual_seed(3)
    usage = latent_usage(dmm, rolls, num_samples=1)
    torch.manual_seed(3)  # the same draws: one batch, one sample
    with torch.no_grad():
        kl = elbo_terms(dmm, make_batch(rolls), "analytic").kl.sum()
    assert usage.kl_per_dimension.shape == (SMALL.z_dim,)
    assert bool((usage.kl_per_dimension >= 0).all())
    assert torch.allclose(usage.kl_per_dimension.sum() * 12, kl, rtol=1e-9)


def test_a_dimension_the_guide_never_moves_is_inactive() -> None:
    dmm = small_dmm(guide="st-r")
    with torch.no_grad():  # loc_u = b_u for u >= 1: the same at every step
        dmm.combiner.hidden_to_loc_scale.weight[1 : SMALL.z_dim].zero_()
        dmm.combiner.hidden_to_loc_scale.weight[0] *= 10  # loc_0 follows the music
    rolls = [random_batch([n], seed=n).x[0] for n in (6, 5, 7)]
    torch.manual_seed(0)
    usage = latent_usage(dmm, rolls, num_samples=8)
    assert float(usage.activity[0]) > 0.05
    assert torch.allclose(usage.activity[1:], torch.zeros(SMALL.z_dim - 1).double())
    assert usage.active_units() == 1
    assert usage.active_units(threshold=float(usage.activity[0]) + 1) == 0


def test_activity_is_the_variance_of_the_posterior_means() -> None:
    usage = LatentUsage(torch.zeros(2), torch.tensor([0.02, 0.005]))
    assert usage.active_units() == 1


def test_flows_and_empty_input_are_refused() -> None:
    roll = random_batch([3]).x[0]
    with pytest.raises(ValueError, match="needs a Gaussian guide"):
        latent_usage(small_dmm(num_iafs=1), [roll])
    with pytest.raises(ValueError, match="no sequences"):
        latent_usage(small_dmm(), [])
    with pytest.raises(ValueError, match="num_samples must be a positive int"):
        latent_usage(small_dmm(), [roll], num_samples=0)


def test_a_mean_field_guides_activity_is_the_variance_of_its_means() -> None:
    # A mean-field guide's E_q[z_t] is its loc, with no Monte Carlo error:
    # the activity must be the variance of loc over all real steps, exactly.
    dmm = small_dmm(guide="mf-lr")
    rolls = [random_batch([n], seed=n).x[0] for n in (6, 5, 7)]
    usage = latent_usage(dmm, rolls, num_samples=3)
    with torch.no_grad():
        locs = [dmm.mean_field(dmm.encode(make_batch([r]))[0])[0] for r in rolls]
    assert torch.allclose(usage.activity, torch.cat(locs).var(0), rtol=1e-9)


def test_the_monte_carlo_excess_is_removed() -> None:
    # Averages of a few draws vary more across steps than the true means; with
    # the excess subtracted, 2 draws and 400 draws estimate the same activity.
    dmm = small_dmm(guide="st-r")
    with torch.no_grad():
        dmm.combiner.hidden_to_loc_scale.weight[: SMALL.z_dim] *= 3
    rolls = [random_batch([n], seed=n).x[0] for n in (30, 25, 35)]
    torch.manual_seed(1)
    few = latent_usage(dmm, rolls, num_samples=2).activity
    many = latent_usage(dmm, rolls, num_samples=400).activity
    assert torch.allclose(few, many, rtol=0.25, atol=0.01), (few, many)
