"""What a trained guide does with its latent dimensions (introduced in chapter 08).

A latent dimension that the guide never moves away from the prior costs no
KL and carries no information about the music: the *posterior collapse* of
that dimension. Two measures, both per dimension ``u`` of ``z_t``:

- the **KL per dimension**: the closed-form
  ``KL(q(z_{t,u} | ...) || p(z_{t,u} | z_{t-1}))`` at the sampled
  ``z_{t-1}``, averaged over the real time steps and the guide's draws. The
  dimensions' values add up to the ELBO's KL term per step;
- the **activity** of Burda et al. (2016): ``A_u = Var_x(E_q[z_{t,u}])``,
  the variance across the data (here every real step of every sequence) of
  the posterior mean. A dimension is *active* when ``A_u > 0.01``, their
  threshold: its posterior mean changes with the music.

A structured guide's ``E_q[z_t]`` has no closed form (``z_t`` depends on the
sampled ``z_{t-1}``); it is estimated as the average over ``S`` draws of the
guide's mean ``loc_t``, whose expectation it is (Rao-Blackwellised: less
noisy than averaging the ``z_t`` themselves). The variance of such
averages across steps exceeds the variance of the true means by the
average within-step variance over ``S``; that excess is estimated from the
draws and subtracted, so a dimension whose mean never moves has ``A_u``
near zero whatever ``S`` is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from dmm_helpers.checks import finite_number, positive_int
from dmm_helpers.data import make_batch
from dmm_helpers.dmm import DMM
from dmm_helpers.elbo import (
    gaussian_kl_terms,
    previous_notes,
    prior_at_sample,
    sample_guide,
)

ACTIVITY_THRESHOLD = 0.01
"""Burda et al. (2016, section 5.2): a unit is active when ``A_u`` exceeds it."""


class LatentUsage(NamedTuple):
    """Per latent dimension, from :func:`latent_usage`.

    Attributes:
        kl_per_dimension: ``(z_dim,)`` nats per time step.
        activity: ``(z_dim,)`` ``A_u``, the variance of the posterior mean.
    """

    kl_per_dimension: torch.Tensor
    activity: torch.Tensor

    def active_units(self, threshold: float = ACTIVITY_THRESHOLD) -> int:
        """How many dimensions have ``A_u > threshold``."""
        threshold = finite_number("threshold", threshold, minimum=0)
        return int((self.activity > threshold).sum())


@torch.no_grad()
def latent_usage(
    model: DMM,
    sequences: Sequence[torch.Tensor],
    num_samples: int = 16,
    *,
    batch_size: int = 20,
) -> LatentUsage:
    """KL per dimension and Burda's activity of a model's guide on ``sequences``.

    ``num_samples`` draws of the guide per sequence estimate the posterior
    means and average the KL (see the module's docstring). The model is put
    in eval mode for the duration. Needs a guide without flows, whose
    ``q(z_t | ...)`` is a diagonal Gaussian with a closed-form KL and mean
    ``loc_t``.
    """
    num_samples = positive_int("num_samples", num_samples)
    batch_size = positive_int("batch_size", batch_size)
    if model.config.num_iafs > 0:
        raise ValueError(
            "latent_usage needs a Gaussian guide: with flows, q(z_t | ...) has no "
            "closed-form KL per dimension"
        )
    if len(sequences) == 0:
        raise ValueError("no sequences to measure")
    was_training = model.training
    model.eval()
    dtype, device = model.z_0.dtype, model.z_0.device
    kl_sum = torch.zeros(model.config.z_dim, dtype=torch.float64, device=device)
    sums, squares, steps = [], [], 0
    try:
        for start in range(0, len(sequences), batch_size):
            chunk = [s.to(dtype) for s in sequences[start : start + batch_size]]
            batch = make_batch(chunk, device=device)
            h = model.summarise(batch)  # packed: .data (N, ...)
            x_prev = previous_notes(model, batch)  # read if augmented
            z_shape = (len(h.data), model.config.z_dim)
            loc_sum = torch.zeros(z_shape, dtype=torch.float64, device=device)
            loc_square_sum = torch.zeros_like(loc_sum)  # (N, z_dim) each
            for _ in range(num_samples):
                eps = torch.randn(z_shape, dtype=dtype, device=device)
                q = sample_guide(model, h, eps)
                p_loc, p_scale = prior_at_sample(model, q.z, h.batch_sizes, x_prev)
                kl = gaussian_kl_terms(q.loc, q.scale, p_loc, p_scale)  # (N, z_dim)
                kl_sum += kl.sum(0).double()
                loc_sum += q.loc.double()
                loc_square_sum += q.loc.double().square()
            sums.append(loc_sum)
            squares.append(loc_square_sum)
            steps += len(h.data)
    finally:
        model.train(was_training)
    loc_sum, loc_square_sum = torch.cat(sums), torch.cat(squares)  # (steps, z_dim)
    posterior_means = loc_sum / num_samples
    activity = torch.zeros_like(kl_sum)
    if steps > 1:
        activity = posterior_means.var(0)
        if num_samples > 1:  # minus the Monte Carlo variance of the averages
            within = (loc_square_sum - num_samples * posterior_means.square()) / (
                num_samples - 1
            )  # (steps, z_dim): variance of loc_t over the draws
            activity = (activity - within.mean(0) / num_samples).clamp(min=0)
    return LatentUsage(kl_sum / (num_samples * steps), activity)
