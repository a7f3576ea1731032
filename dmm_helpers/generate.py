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

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import pyro.distributions as dist
import torch

from dmm_helpers.data import Batch
from dmm_helpers.dmm import DMM
from dmm_helpers.music import _as_roll


class Generated(NamedTuple):
    """Sampled sequences and the latent path that produced them.

    Attributes:
        x: ``(N, T, input_dim)`` the rolls, 0.0 or 1.0, in the model's dtype.
        z: ``(N, T, z_dim)`` the latent states ``z_1 .. z_T``.
        probs: ``(N, T, input_dim)`` each note's probability at the sampled
            ``z_t``, ``sigmoid(logits / tau)``: what the model expected, to be
            drawn as shades of grey.
    """

    x: torch.Tensor
    z: torch.Tensor
    probs: torch.Tensor


def _check_model(model: Any) -> None:
    if not isinstance(model, DMM):
        raise TypeError(
            f"model must be a dmm_helpers.dmm.DMM, got {type(model).__name__}"
        )
    with torch.no_grad():
        probe = model.emission_dist(model.z_0[None])
    if not isinstance(getattr(probe, "base_dist", probe), dist.Bernoulli):
        raise TypeError(
            "generating piano rolls needs Bernoulli emissions p(x_t | z_t); this model's "
            f"are {type(getattr(probe, 'base_dist', probe)).__name__}"
        )


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _check_temperature(temperature: Any) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a number, got {temperature!r}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(
            f"temperature must be a finite number >= 0, got {temperature!r}"
        )
    return float(temperature)


def _generator(seed: Any, device: torch.device) -> torch.Generator | None:
    """A private generator on ``device`` seeded with ``seed``; None (the global one) if no seed."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or None, got {seed!r}")
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must lie in 0 .. 2**64 - 1, got {seed}")
    return torch.Generator(device=device).manual_seed(seed)


@contextmanager
def _evaluating(model: DMM) -> Iterator[None]:
    """Eval mode (no RNN dropout) and no autograd for the duration; the mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _emission_logits(model: DMM, z: torch.Tensor) -> torch.Tensor:
    """``logit_k(z)`` of the Bernoulli emission, through the model's own ``emission_dist``."""
    emission = model.emission_dist(z)
    return getattr(emission, "base_dist", emission).logits


def _roll_forward(
    model: DMM,
    z_prev: torch.Tensor,
    num_steps: int,
    temperature: float,
    generator: torch.Generator | None,
) -> Generated:
    """Ancestral sampling of ``num_steps`` steps from ``z_prev`` ``(N, z_dim)``.

    Each step draws the transition noise, then the notes, in that order, so
    that at ``tau = 1`` the draws are those of :meth:`DMM.generate` on the
    same random stream.
    """
    xs, zs, all_probs = [], [], []
    for _ in range(num_steps):
        loc, scale = model.transition(z_prev)  # (N, z_dim) each
        eps = torch.randn(
            loc.shape, generator=generator, dtype=loc.dtype, device=loc.device
        )
        z_t = loc + temperature * scale * eps  # (N, z_dim)
        logits = _emission_logits(model, z_t)  # (N, input_dim)
        if temperature > 0:
            probs = torch.sigmoid(logits / temperature)
            x_t = torch.bernoulli(probs, generator=generator)
        else:  # the limit tau -> 0 of sigmoid(logits / tau): a step at 1/2
            probs = (logits > 0).to(logits.dtype)
            x_t = probs.clone()
        xs.append(x_t)
        zs.append(z_t)
        all_probs.append(probs)
        z_prev = z_t
    return Generated(
        x=torch.stack(xs, dim=1),
        z=torch.stack(zs, dim=1),
        probs=torch.stack(all_probs, dim=1),
    )  # (N, T, input_dim), (N, T, z_dim), (N, T, input_dim)


def sample_prior(
    model: DMM,
    num_sequences: int,
    length: int,
    *,
    seed: int | None = None,
    temperature: float = 1.0,
) -> Generated:
    """Sample new sequences from the model: ``z_t ~ p(z_t | z_{t-1})``, ``x_t ~ p(x_t | z_t)``.

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
    num_sequences = _check_count("num_sequences", num_sequences)
    length = _check_count("length", length)
    temperature = _check_temperature(temperature)
    generator = _generator(seed, model.z_0.device)
    with _evaluating(model):
        z_0 = model.z_0.expand(num_sequences, -1)  # (N, z_dim)
        return _roll_forward(model, z_0, length, temperature, generator)


def continue_sequence(
    model: DMM,
    prefix: Any,
    num_steps: int,
    *,
    seed: int | None = None,
    num_samples: int = 1,
    temperature: float = 1.0,
) -> Generated:
    """Continue a given beginning ``x_{1:P}``: read it with the guide, then sample the model.

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
    num_steps = _check_count("num_steps", num_steps)
    num_samples = _check_count("num_samples", num_samples)
    temperature = _check_temperature(temperature)
    parameter = model.z_q_0
    values = _as_roll(
        prefix, binary=True, width=model.config.input_dim
    )  # (P, input_dim)
    prefix_x = torch.as_tensor(values, dtype=parameter.dtype, device=parameter.device)
    generator = _generator(seed, parameter.device)
    with _evaluating(model):
        # One sequence, no padding: reversing it in time is a flip. (make_batch
        # would do the same, but only for 88-key rolls.)
        batch = Batch(
            x=prefix_x[None],  # (1, P, input_dim)
            x_reversed=prefix_x.flip(0)[None],
            mask=torch.ones_like(prefix_x[None, :, 0]),  # (1, P)
            lengths=torch.tensor([prefix_x.shape[0]], device=prefix_x.device),
        )
        model.check_batch(batch)
        h = model.encode(batch)  # (1, P, rnn_dim): h[:, t] summarises x_{t:P}
        steps, z_dim = prefix_x.shape[0], model.config.z_dim
        eps = torch.randn(
            (num_samples, steps, z_dim),
            generator=generator,
            dtype=h.dtype,
            device=h.device,
        )
        z_prev = model.z_q_0.expand(num_samples, -1)  # (S, z_dim)
        zs = []
        for t in range(steps):
            loc, scale = model.combiner(z_prev, h[:, t])  # (S, z_dim) each
            z_t = loc + scale * eps[:, t]
            for flow in model.iaf_transforms():
                z_t = flow(z_t)
            zs.append(z_t)
            z_prev = z_t
        z_given = torch.stack(zs, dim=1)  # (S, P, z_dim)
        probs_given = torch.sigmoid(
            _emission_logits(model, z_given)
        )  # (S, P, input_dim)
        future = _roll_forward(model, z_prev, num_steps, temperature, generator)
    x_given = prefix_x.expand(num_samples, -1, -1)  # (S, P, input_dim)
    return Generated(
        x=torch.cat([x_given, future.x], dim=1),
        z=torch.cat([z_given, future.z], dim=1),
        probs=torch.cat([probs_given, future.probs], dim=1),
    )
