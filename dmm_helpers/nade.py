"""An autoregressive emission: the notes of a step drawn one after another.

Given ``z_t`` the emitter of chapter 03 draws the 88 notes independently, so
it cannot say "these four together". A NADE (Larochelle and Murray, 2011)
writes the distribution of the step's notes by the chain rule,

``p(x_t | z_t) = prod_k p(x_{t,k} | x_{t,<k}, z_t)``,

``p(x_{t,k} = 1 | ...) = sigmoid(b_k + V_k . sigmoid(c + W_{:,<k} x_{t,<k}))``,

with weights ``W`` ``(H, D)`` and ``V`` ``(D, H)`` shared by all steps and
the biases ``b`` ``(D,)`` and ``c`` ``(H,)`` computed from ``z_t`` by the
emitter's network, as in Krishnan et al.'s DMM with a NADE emission. Every
conditional is a function of the notes below ``k`` only, so the product is
a normalised distribution over all ``2^D`` chords. Scoring is parallel: the
hidden pre-activations of every ``k`` are one cumulative sum. Sampling is
sequential, note by note.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pyro.distributions import TorchDistribution
from torch import nn
from torch.distributions import constraints

from dmm_helpers.modules import with_context


class NADEBernoulli(TorchDistribution):
    """``D`` binary notes, autoregressive: batch shape ``(...)``, event ``(D,)``.

    Args:
        visible_bias: ``(..., D)`` the ``b`` of each note.
        hidden_bias: ``(..., H)`` the ``c`` of the hidden layer.
        weight_in: ``(H, D)`` ``W``, how a sounding note moves the hidden layer.
        weight_out: ``(D, H)`` ``V``, how the hidden layer sets each note.
    """

    arg_constraints = {}
    support = constraints.independent(constraints.boolean, 1)
    has_rsample = False

    def __init__(
        self,
        visible_bias: torch.Tensor,
        hidden_bias: torch.Tensor,
        weight_in: torch.Tensor,
        weight_out: torch.Tensor,
        validate_args: bool | None = None,
    ) -> None:
        self.visible_bias, self.hidden_bias = visible_bias, hidden_bias
        self.weight_in, self.weight_out = weight_in, weight_out
        batch_shape = visible_bias.shape[:-1]
        event_shape = visible_bias.shape[-1:]
        super().__init__(batch_shape, event_shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):  # noqa: ANN001, ANN201
        batch_shape = torch.Size(batch_shape)
        return NADEBernoulli(
            self.visible_bias.expand(batch_shape + self.event_shape),
            self.hidden_bias.expand(batch_shape + self.hidden_bias.shape[-1:]),
            self.weight_in,
            self.weight_out,
        )

    def conditional_logits(self, x: torch.Tensor) -> torch.Tensor:
        """``logit p(x_k = 1 | x_{<k})`` of every note, for the chord ``x``.

        All ``D`` at once. The hidden pre-activation of note ``k`` is ``c``
        plus ``W[:, j]`` of every *sounding* note ``j < k``, so it changes only
        where a note sounds: a chord of ``m`` notes has ``m + 1`` hidden
        states, ``h_i = sigmoid(c + W[:, j_1] + ... + W[:, j_i])`` after its
        ``i`` lowest notes ``j_1 < ... < j_i``. Each ``V h_i`` is one matrix
        product, and note ``k`` reads the one of the count of sounding notes
        below it. For the few notes of a chord this costs ``(m + 1) H D``
        per step instead of the ``H D`` sigmoids of every prefix (``m`` is
        the largest chord of the batch).

        Shapes: ``x`` ``(..., D)`` of 0s and 1s, broadcast with the batch ->
        ``(..., D)``.
        """
        if not bool(((x == 0) | (x == 1)).all()):
            raise ValueError("a NADE scores chords: x must hold only 0s and 1s")
        shape = torch.broadcast_shapes(x.shape[:-1], self.batch_shape)
        notes, units = self.event_shape[0], self.hidden_bias.shape[-1]
        x = x.expand(*shape, notes).reshape(-1, notes)  # (N, D)
        hidden_bias = self.hidden_bias.expand(*shape, units).reshape(-1, units)
        visible_bias = self.visible_bias.expand(*shape, notes).reshape(-1, notes)
        sounding = x.sum(-1)  # (N,)
        largest = int(sounding.max()) if len(sounding) else 0  # m
        # The sounding notes of each row, lowest first (a stable sort keeps the
        # order of equal values), and which of the m slots are real notes.
        lowest = torch.sort(x, dim=-1, descending=True, stable=True).indices
        lowest = lowest[:, :largest]  # (N, m)
        real = torch.arange(largest, device=x.device) < sounding[:, None]  # (N, m)
        steps = self.weight_in.T[lowest] * real[..., None].to(x.dtype)  # (N, m, H)
        pre_activations = torch.cat(
            [hidden_bias[:, None], hidden_bias[:, None] + steps.cumsum(1)], dim=1
        )  # (N, m + 1, H): h_0 .. h_m before the sigmoid
        outputs = torch.sigmoid(pre_activations) @ self.weight_out.T  # (N, m + 1, D)
        below = (torch.cumsum(x, -1) - x).long()  # (N, D): sounding notes below k
        logits = visible_bias + outputs.gather(1, below[:, None]).squeeze(1)
        return logits.reshape(*shape, notes)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """``log p(x) = sum_k log p(x_k | x_{<k})``: ``(..., D)`` -> ``(...)``."""
        logits = self.conditional_logits(value)  # broadcast with the batch
        value = value.expand(logits.shape)
        scores = F.binary_cross_entropy_with_logits(logits, value, reduction="none")
        return -scores.sum(-1)

    @torch.no_grad()
    def sample_tempered(
        self, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw the notes one after another: ``(x, probs)``, each ``(..., D)``.

        Each conditional logit is divided by ``temperature`` ``tau``; ``tau = 0``
        takes the likelier value of every note in turn. ``probs`` are the
        tempered conditional probabilities of the notes at the drawn chord.
        """
        shape = self.visible_bias.shape
        x = self.visible_bias.new_zeros(shape)
        probs = self.visible_bias.new_zeros(shape)
        pre_activation = self.hidden_bias.clone()  # (..., H)
        for k in range(shape[-1]):
            hidden = torch.sigmoid(pre_activation)
            logit = self.visible_bias[..., k] + hidden @ self.weight_out[k]
            if temperature > 0:
                probs[..., k] = torch.sigmoid(logit / temperature)
                x[..., k] = torch.bernoulli(probs[..., k], generator=generator)
            else:
                probs[..., k] = (logit > 0).to(logit.dtype)
                x[..., k] = probs[..., k]
            pre_activation = pre_activation + x[..., k, None] * self.weight_in[:, k]
        return x, probs

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> torch.Tensor:
        """Draws ``sample_shape + batch_shape + (D,)``, note by note."""
        if sample_shape:
            return self.expand(torch.Size(sample_shape) + self.batch_shape).sample()
        return self.sample_tempered()[0]


class NADEEmitter(nn.Module):
    """Parameterises ``p(x_t | z_t)`` as a :class:`NADEBernoulli`.

    The emitter's two-hidden-layer ReLU network of ``z_t`` (chapter 03) gives
    the biases ``b`` (one per note) and ``c`` (one per hidden unit of the
    NADE, ``nade_dim`` of them); ``W`` and ``V`` are shared by every step.
    ``forward`` returns the distribution's arguments.

    With ``context_dim > 0`` (the augmented DMM) the network also reads the
    previous notes ``x_{t-1}``, so the biases depend on them too.

    Shapes: ``z_t`` ``(..., z_dim)`` (and ``context`` ``(..., context_dim)``)
    -> ``b`` ``(..., input_dim)``, ``c`` ``(..., nade_dim)``.
    """

    def __init__(
        self,
        input_dim: int,
        z_dim: int,
        emission_dim: int,
        nade_dim: int,
        context_dim: int = 0,
    ) -> None:
        super().__init__()
        self.z_to_hidden = nn.Linear(z_dim + context_dim, emission_dim)
        self.hidden_to_hidden = nn.Linear(emission_dim, emission_dim)
        self.hidden_to_biases = nn.Linear(emission_dim, input_dim + nade_dim)
        self.weight_in = nn.Parameter(torch.empty(nade_dim, input_dim))
        self.weight_out = nn.Parameter(torch.empty(input_dim, nade_dim))
        bound = 1 / nade_dim**0.5
        nn.init.uniform_(self.weight_in, -bound, bound)
        nn.init.uniform_(self.weight_out, -bound, bound)
        self.input_dim = input_dim

    def forward(
        self, z_t: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = F.relu(self.z_to_hidden(with_context(z_t, context)))
        hidden = F.relu(self.hidden_to_hidden(hidden))  # (..., emission_dim)
        biases = self.hidden_to_biases(hidden)  # (..., input_dim + nade_dim)
        return biases[..., : self.input_dim], biases[..., self.input_dim :]

    def distribution(
        self, z_t: torch.Tensor, context: torch.Tensor | None = None
    ) -> NADEBernoulli:
        """``p(x_t | z_t)`` for ``z_t`` ``(..., z_dim)``: batch ``(...)``."""
        visible_bias, hidden_bias = self(z_t, context)
        return NADEBernoulli(visible_bias, hidden_bias, self.weight_in, self.weight_out)
