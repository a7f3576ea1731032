"""Music from a deep Markov model: sampling the prior and continuing a chorale.

Introduced in chapter 07 (``notebooks/07_evaluation_and_music.ipynb``).

Two ways to make piano rolls with a trained :class:`~dmm_helpers.dmm.DMM`:

- :func:`sample_prior` draws whole sequences from the generative model,
  ``z_t ~ p(z_t | z_{t-1})`` from the learned ``z_0``, then
  ``x_t ~ p(x_t | z_t)`` (ancestral sampling);
- :func:`continue_sequence` first reads a given beginning ``x_{1:P}`` with
  the guide, ``z_{1:P} ~ q(z_{1:P} | x_{1:P})``, and then samples the rest
  from the model, starting from the state ``z_P`` that summarises it.

Both can sharpen the model's distributions with a *temperature* ``tau``:

- the transition noise is scaled, ``z_t = loc(z_{t-1}) + tau * scale(z_{t-1}) * eps``
  with ``eps ~ N(0, I)``;
- the emission logits are divided, ``x_{t,k} ~ Bernoulli(sigmoid(logit_k(z_t) / tau))``.

``tau = 1`` samples the model itself; ``tau < 1`` keeps the latent path
nearer its expected course and makes every note's probability more extreme
(likely notes likelier, unlikely ones rarer), which trades variety for
fewer stray notes; ``tau > 1`` does the opposite. ``tau = 0`` is the limit:
the latent path follows the transition means, and a note sounds exactly
when its probability exceeds 1/2, so every sample is the same.

Randomness comes from a private ``torch.Generator`` when a ``seed`` is
given (the same seed gives the same music, and the global random state is
left alone), and from torch's global generator otherwise (so
``pyro.set_rng_seed`` governs it). Results live on the model's device, in
its dtype.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyro.distributions as dist
import torch

from dmm_helpers.checks import finite_number, positive_int
from dmm_helpers.data import Batch
from dmm_helpers.dmm import DMM, Generated, preceding_notes
from dmm_helpers.elbo import elbo_terms
from dmm_helpers.music import as_roll
from dmm_helpers.nade import NADEBernoulli


def _check_model(model: Any) -> None:
    if not isinstance(model, DMM):
        raise TypeError(
            f"model must be a dmm_helpers.dmm.DMM, got {type(model).__name__}"
        )
    with torch.no_grad():
        probe = model.emission_dist(
            model.z_0[None], model.z_0.new_zeros(1, model.config.input_dim)
        )
    emission = getattr(probe, "base_dist", probe)
    if not isinstance(emission, (dist.Bernoulli, NADEBernoulli)):
        raise TypeError(
            "generating piano rolls needs binary emissions p(x_t | z_t) "
            f"(Bernoulli or NADE); this model's are {type(emission).__name__}"
        )


def _check_temperature(temperature: Any) -> float:
    return finite_number("temperature", temperature, minimum=0)


def _generator(seed: Any, device: torch.device) -> torch.Generator | None:
    """A private generator on ``device`` seeded with ``seed``; None (the global one)."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or None, got {seed!r}")
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must lie in 0 .. 2**64 - 1, got {seed}")
    return torch.Generator(device=device).manual_seed(seed)


@contextmanager
def _evaluating(model: DMM) -> Iterator[None]:
    """Eval mode (no RNN dropout) and no autograd meanwhile; then the old mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def sample_prior(
    model: DMM,
    num_sequences: int,
    length: int,
    *,
    seed: int | None = None,
    temperature: float = 1.0,
) -> Generated:
    """Sample new sequences: ``z_t ~ p(z_t | z_{t-1})``, ``x_t ~ p(x_t | z_t)``.

    Starts from the model's learned ``z_0`` and runs ``length`` steps of the
    gated transition and the emitter, all ``num_sequences`` sequences at
    once. ``temperature`` ``tau`` scales the transition noise and divides the
    emission logits (see the module docstring; ``tau = 1`` is the model).

    Args:
        model: a :class:`~dmm_helpers.dmm.DMM` (Bernoulli emissions).
        num_sequences: ``N``, how many sequences.
        length: ``T``, time steps per sequence.
        seed: seed of a private random generator (reproducible, leaves the
            global random state alone); None draws from the global one.
        temperature: ``tau >= 0``.

    Returns:
        :class:`Generated` with ``x`` ``(N, T, input_dim)`` of 0/1,
        ``z`` ``(N, T, z_dim)`` and ``probs`` ``(N, T, input_dim)``.
    """
    _check_model(model)
    num_sequences = positive_int("num_sequences", num_sequences)
    length = positive_int("length", length)
    temperature = _check_temperature(temperature)
    generator = _generator(seed, model.z_0.device)
    with _evaluating(model):
        z_0 = model.z_0.expand(num_sequences, -1)  # (N, z_dim)
        return model.sample_forward(z_0, length, temperature, generator, start=True)


def continue_sequence(
    model: DMM,
    prefix: Any,
    num_steps: int,
    *,
    seed: int | None = None,
    num_samples: int = 1,
    temperature: float = 1.0,
) -> Generated:
    """Continue a beginning ``x_{1:P}``: read it with the guide, then sample the model.

    1. The guide reads the prefix: the backward RNN summarises ``x_{t:P}``
       into ``h_t``, and the combiner draws
       ``z_t ~ q(z_t | z_{t-1}, h_t)`` for ``t = 1..P`` from the guide's
       ``z_0`` (through the inverse autoregressive flows, if the model has
       any), a sample of ``q(z_{1:P} | x_{1:P})``. The RNN sees only the
       prefix, never the music after it: at step ``t`` it has read
       ``x_{t:P}``, so ``z_P`` is inferred from everything given.
    2. From ``z_P`` the model runs on as in :func:`sample_prior` for
       ``num_steps`` more steps.

    Each of the ``num_samples`` continuations gets its own draw of
    ``z_{1:P}`` and of the future. The prefix's noise is drawn first, as one
    ``(num_samples, P, z_dim)`` block of standard normals (the ``noise`` of
    :func:`dmm_helpers.elbo.elbo_terms`), then the future's, step by step.
    ``temperature`` applies to the future only; the reading of the prefix
    is the guide's own.

    Args:
        model: a :class:`~dmm_helpers.dmm.DMM` (Bernoulli emissions).
        prefix: ``(P, input_dim)`` of 0/1 (tensor or numpy), e.g. a
            chorale's first bars.
        num_steps: how many steps to add.
        seed: as in :func:`sample_prior`.
        num_samples: ``S``, how many continuations.
        temperature: ``tau >= 0`` for the future.

    Returns:
        :class:`Generated` over the whole ``P + num_steps`` steps, ``S``
        sequences: ``x[:, :P]`` is the prefix exactly; ``z[:, :P]`` the
        guide's states and ``z[:, P:]`` the model's; ``probs`` are the
        emission probabilities at those states (for the prefix, how well the
        inferred states explain the notes given).
    """
    _check_model(model)
    num_steps = positive_int("num_steps", num_steps)
    num_samples = positive_int("num_samples", num_samples)
    temperature = _check_temperature(temperature)
    parameter = model.z_0
    values = as_roll(
        prefix, binary=True, width=model.config.input_dim
    )  # (P, input_dim)
    prefix_x = torch.as_tensor(values, dtype=parameter.dtype, device=parameter.device)
    generator = _generator(seed, parameter.device)
    steps = prefix_x.shape[0]
    # S copies of one unpadded sequence: reversing it in time is a flip.
    # (make_batch would do the same, but only for 88-key rolls.)
    x = prefix_x.expand(num_samples, -1, -1)  # (S, P, input_dim)
    batch = Batch(
        x=x,
        x_reversed=x.flip(1),
        mask=torch.ones_like(x[..., 0]),  # (S, P)
        lengths=torch.full((num_samples,), steps, device=x.device),
    )
    with _evaluating(model):
        noise = torch.randn(
            (num_samples, steps, model.config.z_dim),
            generator=generator,
            dtype=x.dtype,
            device=x.device,
        )
        z_given = elbo_terms(model, batch, noise=noise).z  # (S, P, z_dim) ~ q
        x_prev = preceding_notes(x)  # (S, P, input_dim): x_0 = 0, x_1, ..., x_{P-1}
        probs_given = model.note_probabilities(z_given, x, x_prev)  # (S, P, input_dim)
        future = model.sample_forward(
            z_given[:, -1], num_steps, temperature, generator, x_prev=x[:, -1]
        )
    x_given = prefix_x.expand(num_samples, -1, -1)  # (S, P, input_dim)
    return Generated(
        x=torch.cat([x_given, future.x], dim=1),
        z=torch.cat([z_given, future.z], dim=1),
        probs=torch.cat([probs_given, future.probs], dim=1),
    )
