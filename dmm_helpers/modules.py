"""The networks of the deep Markov model, one small module per density.

Introduced in chapter 03 (``notebooks/03_deep_markov_model.ipynb``: the
emitter and the gated transition) and chapter 04
(``notebooks/04_structured_inference.ipynb``: the combiner). Chapter 05 uses
:class:`LinearGaussian` to put a linear Gaussian state space model inside the
same machinery.

Each density module maps a tensor with any leading batch shape ``(...)`` to
tensors with the same leading shape, so one call can score a single time step
``(batch, z_dim)`` or a whole sequence ``(batch, time, z_dim)``; the backward
RNN takes a padded batch ``(batch, time, input_dim)``. Outputs follow the
device and dtype of the inputs and parameters.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import FunctionCtx, once_differentiable

from dmm_helpers.checks import shape_of
from dmm_helpers.data import reverse_sequences


class Emitter(nn.Module):
    """Parameterises the emission ``p(x_t | z_t)``.

    Each of the ``input_dim`` notes is an independent Bernoulli variable,

    ``p(x_t | z_t) = prod_k Bernoulli(x_{t,k}; sigmoid(logits_k(z_t)))``,

    with ``logits(z_t)`` a two-hidden-layer ReLU network. The module returns
    the logits; ``torch.sigmoid(logits)`` are the probabilities. Scoring with
    logits (``Bernoulli(logits=...)``, i.e. binary cross-entropy with logits)
    never takes the log of a probability that has rounded to 0 or 1.

    With ``context_dim > 0`` (the augmented DMM of chapter 09) the first layer
    also reads a context, the previous step's notes ``x_{t-1}``, beside ``z_t``.

    Shapes: ``z_t`` ``(..., z_dim)`` (and ``context`` ``(..., context_dim)``)
    -> logits ``(..., input_dim)``.
    """

    def __init__(
        self, input_dim: int, z_dim: int, emission_dim: int, context_dim: int = 0
    ) -> None:
        super().__init__()
        self.z_to_hidden = nn.Linear(z_dim + context_dim, emission_dim)
        self.hidden_to_hidden = nn.Linear(emission_dim, emission_dim)
        self.hidden_to_logits = nn.Linear(emission_dim, input_dim)

    def forward(
        self, z_t: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        hidden = F.relu(self.z_to_hidden(with_context(z_t, context)))
        hidden = F.relu(self.hidden_to_hidden(hidden))  # (..., emission_dim)
        return self.hidden_to_logits(hidden)  # (..., input_dim)


def with_context(z: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
    """A network's input: ``z`` alone, or ``z`` and the ``context`` side by side.

    The augmented DMM's emitter and transition read the previous notes
    ``x_{t-1}`` beside the latent state; the two broadcast over leading shapes.
    Shapes: ``(..., z_dim)``, ``(..., c)`` -> ``(..., z_dim + c)``.
    """
    if context is None:
        return z
    shape = torch.broadcast_shapes(z.shape[:-1], context.shape[:-1])
    return torch.cat(
        [z.expand(*shape, z.shape[-1]), context.expand(*shape, context.shape[-1])], -1
    )


def softplus_scale(argument: torch.Tensor, variance: bool) -> torch.Tensor:
    """A Gaussian's standard deviation from a network's output, through softplus.

    Softplus gives the standard deviation itself (Pyro's example, this book's
    default), or the variance, whose square root is then taken (the authors'
    code and the paper, ``sigma^2 = softplus(...)``).
    """
    positive = F.softplus(argument)
    return positive.sqrt() if variance else positive


class GatedTransition(nn.Module):
    """Parameterises the transition ``p(z_t | z_{t-1}) = N(loc, diag(scale^2))``.

    A gate ``g`` in ``(0, 1)^z_dim`` mixes a linear map of ``z_{t-1}`` with a
    nonlinear proposal ``m``:

    - ``g = sigmoid(W_g2 relu(W_g1 z_{t-1} + b_g1) + b_g2)``
    - ``m = W_m2 relu(W_m1 z_{t-1} + b_m1) + b_m2``
    - ``loc = (1 - g) * (W z_{t-1} + b) + g * m``
    - ``scale = softplus(W_s relu(m) + b_s)``

    ``W`` starts as the identity and ``b`` as zero, so where the gate is
    closed an untrained model carries the state forward unchanged (a random
    walk): the network learns departures from persistence rather than
    persistence itself. Softplus keeps the scale positive with a gradient
    that never vanishes for large arguments.

    With ``context_dim > 0`` (the augmented DMM of chapter 09) the gate's and
    the proposal's hidden layers also read a context, the previous notes
    ``x_{t-1}``, beside ``z_{t-1}``; the linear map reads ``z_{t-1}`` alone.

    Shapes: ``z_prev`` ``(..., z_dim)`` (and ``context`` ``(..., context_dim)``)
    -> ``loc``, ``scale`` ``(..., z_dim)``.
    """

    def __init__(
        self,
        z_dim: int,
        transition_dim: int,
        variance: bool = False,
        context_dim: int = 0,
    ) -> None:
        super().__init__()
        self.variance = variance  # softplus gives the variance, as the authors'
        self.gate_hidden = nn.Linear(z_dim + context_dim, transition_dim)
        self.gate_out = nn.Linear(transition_dim, z_dim)
        self.proposal_hidden = nn.Linear(z_dim + context_dim, transition_dim)
        self.proposal_out = nn.Linear(transition_dim, z_dim)
        self.linear_loc = nn.Linear(z_dim, z_dim)
        self.proposal_to_scale = nn.Linear(z_dim, z_dim)
        nn.init.eye_(self.linear_loc.weight)
        nn.init.zeros_(self.linear_loc.bias)

    def forward(
        self, z_prev: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = with_context(z_prev, context)  # (..., z_dim [+ context_dim])
        gate = torch.sigmoid(self.gate_out(F.relu(self.gate_hidden(inputs))))
        proposal = self.proposal_out(F.relu(self.proposal_hidden(inputs)))
        loc = (1 - gate) * self.linear_loc(z_prev) + gate * proposal  # (..., z_dim)
        scale = softplus_scale(self.proposal_to_scale(F.relu(proposal)), self.variance)
        return loc, scale  # (..., z_dim) each


class ForwardRNN(nn.Module):
    """Summarises the past of each sequence: ``h_t`` from ``x_{1:t}``.

    An Elman RNN with ReLU, from ``h_0`` (learned):

    ``h_t = relu(W_in x_t + b + W_rec h_{t-1})``,

    the recursion of ``torch.nn.RNN(nonlinearity="relu")``, with its
    initialisation. Stacked layers feed each layer's outputs (with dropout
    while training) to the next; ``h_t`` is the last layer's. The guides
    ``st-l``, ``st-lr``, ``mf-l`` and ``mf-lr`` read the music with it;
    :class:`BackwardRNN` is the same network run backwards in time.

    The loop is written out rather than calling ``nn.RNN``, for speed on a
    CPU: it runs over a packed batch, so no padded step is computed;
    ``W_in x + b`` is one product for all steps; and the recursion's backward
    pass is written out too (:class:`_ReluRecurrence`), with ``W_rec``'s
    gradient one product over all steps instead of one per step.

    Shapes: ``x`` ``(batch, time, input_dim)``, ``lengths`` ``(batch,)`` -> a
    ``PackedSequence`` of ``h``: ``.data`` is ``(N, rnn_dim)`` for the ``N =
    lengths.sum()`` real steps, time-major, longest sequences first (as
    ``pack_padded_sequence(h, lengths, batch_first=True,
    enforce_sorted=False)`` would give); ``pad_packed_sequence`` turns it into
    ``(batch, time, rnn_dim)``.
    """

    def __init__(
        self, input_dim: int, rnn_dim: int, num_layers: int = 1, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.dropout = dropout
        self.input_to_hidden = nn.ModuleList(
            nn.Linear(input_dim if layer == 0 else rnn_dim, rnn_dim)
            for layer in range(num_layers)
        )
        self.hidden_to_hidden = nn.ModuleList(
            nn.Linear(rnn_dim, rnn_dim, bias=False) for _ in range(num_layers)
        )
        self.h_0 = nn.Parameter(torch.zeros(num_layers, rnn_dim))
        bound = 1 / math.sqrt(rnn_dim)  # nn.RNN's initialisation
        for linear in [*self.input_to_hidden, *self.hidden_to_hidden]:
            for weight in linear.parameters():
                nn.init.uniform_(weight, -bound, bound)

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor
    ) -> nn.utils.rnn.PackedSequence:
        packed = nn.utils.rnn.pack_padded_sequence(
            x, lengths.cpu(), batch_first=True, enforce_sorted=False
        )  # real steps only, time-major, longest sequences first
        sizes = packed.batch_sizes.tolist()  # sequences still running at each step
        inputs = packed.data  # (N, input_dim)
        for layer, (to_hidden, recurrent) in enumerate(
            zip(self.input_to_hidden, self.hidden_to_hidden)
        ):
            if layer > 0:
                inputs = F.dropout(inputs, self.dropout, self.training)
            # W_in x + b for every step at once: (N, rnn_dim)
            projected = to_hidden(inputs)
            inputs = _ReluRecurrence.apply(
                projected, self.h_0[layer], recurrent.weight, sizes
            )
        return packed._replace(data=inputs)


class BackwardRNN(ForwardRNN):
    """Summarises the future of each sequence for the guide: ``h_t`` from ``x_{t:T}``.

    The :class:`ForwardRNN` run backwards in time, from ``h_{T+1} = h_0``
    (learned) down to ``t = 1``:

    ``h_t = relu(W_in x_t + b + W_rec h_{t+1})``.

    Running backwards is running forwards over ``x_reversed``, each sequence
    reversed within its own length; the outputs are then put back in
    forward time order, so ``h_t`` sits in the row of step ``t``.

    Shapes: ``x_reversed`` ``(batch, time, input_dim)`` (see
    :func:`~dmm_helpers.data.reverse_sequences`), ``lengths`` ``(batch,)`` ->
    a ``PackedSequence`` of ``h`` in *forward* time order, packed as
    :class:`ForwardRNN` packs.
    """

    def forward(
        self, x_reversed: torch.Tensor, lengths: torch.Tensor
    ) -> nn.utils.rnn.PackedSequence:
        h = super().forward(x_reversed, lengths)  # rows in reversed time
        return h._replace(data=h.data[_unreversed_rows(h, lengths)])


class LSTMReader(nn.Module):
    """The authors' reader of the music: a ReLU input layer, then an LSTM.

    ``h_t = LSTM(relu(W x_t + b))`` over the steps of each sequence, from the
    fixed state ``h = 0``, ``c = 1`` of the authors' code (``stinfmodel/dkf.py``
    and theanomodels' ``_LSTMlayer``), forwards in time or, with
    ``backward``, from the last step to the first (run over ``x_reversed``,
    the outputs put back in forward time order, as :class:`BackwardRNN`
    does). PyTorch's ``nn.LSTM`` computes it, over a packed batch; its
    weights start with PyTorch's initialisation, not the authors' orthogonal
    blocks. Same interface as :class:`ForwardRNN` and :class:`BackwardRNN`.
    """

    def __init__(self, input_dim: int, rnn_dim: int, backward: bool) -> None:
        super().__init__()
        self.backward_in_time = backward
        self.input_layer = nn.Linear(input_dim, rnn_dim)
        self.lstm = nn.LSTM(rnn_dim, rnn_dim, batch_first=True)

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor
    ) -> nn.utils.rnn.PackedSequence:
        packed = nn.utils.rnn.pack_padded_sequence(
            F.relu(self.input_layer(x)),
            lengths.cpu(),
            batch_first=True,
            enforce_sorted=False,
        )  # real steps only, time-major, longest sequences first
        state_shape = (1, len(lengths), self.lstm.hidden_size)
        start = (x.new_zeros(state_shape), x.new_ones(state_shape))  # h = 0, c = 1
        h, _ = self.lstm(packed, start)
        if self.backward_in_time:
            return h._replace(data=h.data[_unreversed_rows(h, lengths)])
        return h


class _ReluRecurrence(torch.autograd.Function):
    """``h_t = relu(p_t + W h_{t-1})`` over packed steps, backpropagated by hand.

    Forward: ``p`` ``(N, rnn_dim)`` holds ``W_in x_t + b`` of every step, rows
    grouped by step (``sizes[t]`` running sequences each, longest first), and
    the states start from ``h_0`` ``(rnn_dim,)``; returns every ``h_t`` in the
    same rows. Backward: the loop runs from the last step to the first and
    only carries ``dL/dh`` back one step at a time; ``dL/dW`` is then one
    product of all steps' pre-activation gradients with all previous states,
    where autograd would form and add up one ``(rnn_dim, rnn_dim)`` product
    per step. Not twice differentiable.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        projected: torch.Tensor,
        h_0: torch.Tensor,
        weight: torch.Tensor,
        sizes: list[int],
    ) -> torch.Tensor:
        h = h_0.expand(sizes[0], -1)  # (batch, rnn_dim)
        outputs = []
        for projected_t in projected.split(sizes):
            h = torch.relu(
                projected_t + h[: len(projected_t)] @ weight.T
            )  # (running, rnn_dim)
            outputs.append(h)
        h_all = torch.cat(outputs)  # (N, rnn_dim)
        ctx.save_for_backward(h_all, h_0, weight)
        ctx.sizes = sizes
        return h_all

    @staticmethod
    @once_differentiable
    def backward(
        ctx: FunctionCtx, grad_h_all: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]:
        h_all, h_0, weight = ctx.saved_tensors
        sizes = ctx.sizes
        steps = h_all.split(sizes)
        # dL/d(p_t + W h_{t-1}) for every step, completed from the last step back.
        grad_pre = torch.where(h_all > 0, grad_h_all, 0)  # (N, rnn_dim)
        grad_h = None  # dL/dh_t through step t + 1, for the sequences running then
        for h_t, grad_pre_t in zip(reversed(steps), reversed(grad_pre.split(sizes))):
            if grad_h is not None:
                running = len(grad_h)
                grad_pre_t[:running] += grad_h * (h_t[:running] > 0)
            grad_h = grad_pre_t @ weight  # dL/dh_{t-1}, (running, rnn_dim)
        h_0_rows = h_0.expand(sizes[0], -1)  # (batch, rnn_dim)
        h_prev = torch.cat([h_0_rows] + [h_t[:n] for h_t, n in zip(steps, sizes[1:])])
        return grad_pre, grad_h.sum(0), grad_pre.T @ h_prev, None


def _unreversed_rows(
    packed: nn.utils.rnn.PackedSequence, lengths: torch.Tensor
) -> torch.Tensor:
    """Row ``i`` of the forward-time packing is row ``rows[i]`` of reversed ``packed``.

    Both packings share ``batch_sizes`` and the order of the sequences (that
    depends on ``lengths`` only), so undoing the reversal is one gather of
    rows, found by putting row numbers through pad, reverse and pack.
    """
    numbers = torch.arange(len(packed.data), device=packed.data.device)  # (N,)
    padded, _ = nn.utils.rnn.pad_packed_sequence(
        packed._replace(data=numbers), batch_first=True
    )  # (batch, time)
    forward = reverse_sequences(padded, lengths)  # (batch, time)
    return nn.utils.rnn.pack_padded_sequence(
        forward, lengths.cpu(), batch_first=True, enforce_sorted=False
    ).data  # (N,)


class Combiner(nn.Module):
    """Parameterises the guide's step ``q(z_t | z_{t-1}, h_t) = N(loc, diag(scale^2))``.

    ``h_t`` is the RNN's summary of the music (of ``x_{t:T}`` for the paper's
    ST-R guide). The combiner averages it with a squashed map of the previous
    state and reads the Gaussian's parameters off the average with one
    affine layer ``(W_loc; W_scale)``:

    - ``c_t = (tanh(W_z z_{t-1} + b_z) + h_t) / 2``
    - ``loc = W_loc c_t + b_loc``, ``scale = softplus(W_scale c_t + b_scale)``

    With ``num_summaries = 2`` (the ST-LR guide), ``h_t`` is the sum of a
    forward and a backward RNN's states and the average is over three terms,
    ``c_t = (tanh(W_z z_{t-1} + b_z) + h_t) / 3``, as in the authors' code.

    Because the output layer is affine, its ``h_t`` part,
    ``(W_loc; W_scale) h_t / 2 + (b_loc; b_scale)``, does not depend on
    ``z_{t-1}``: :meth:`project_rnn` computes it for every time step in one
    matrix product, and :meth:`step` adds the ``z_{t-1}`` part, the only part
    that must wait for the previous sample. ``forward`` is the two composed.

    Shapes: ``z_prev`` ``(..., z_dim)``, ``h_rnn`` ``(..., rnn_dim)`` (any
    broadcastable leading shapes) -> ``loc``, ``scale`` ``(..., z_dim)``.
    """

    def __init__(
        self, z_dim: int, rnn_dim: int, num_summaries: int = 1, variance: bool = False
    ) -> None:
        super().__init__()
        self.terms = num_summaries + 1  # averaged: the summaries and the z part
        self.variance = variance  # softplus gives the variance, as the authors'
        self.z_to_hidden = nn.Linear(z_dim, rnn_dim)
        # rows: loc, then scale
        self.hidden_to_loc_scale = nn.Linear(rnn_dim, 2 * z_dim)

    def project_rnn(self, h_rnn: torch.Tensor) -> torch.Tensor:
        """The ``h_t`` part of the output layer, ``(..., rnn_dim)`` -> ``(..., 2z)``."""
        out = self.hidden_to_loc_scale
        return F.linear(h_rnn / self.terms, out.weight, out.bias)

    def step(
        self, z_prev: torch.Tensor, h_projected: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``loc``, ``scale`` from ``z_{t-1}`` and the :meth:`project_rnn` output."""
        z_part = torch.tanh(self.z_to_hidden(z_prev)) / self.terms
        z_half = F.linear(z_part, self.hidden_to_loc_scale.weight)
        loc, scale_arg = (z_half + h_projected).chunk(2, dim=-1)  # (..., z_dim) each
        return loc, softplus_scale(scale_arg, self.variance)

    def forward(
        self, z_prev: torch.Tensor, h_rnn: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.step(z_prev, self.project_rnn(h_rnn))


class MeanField(nn.Module):
    """Parameterises a mean-field guide's step ``q(z_t | h_t) = N(loc, diag(scale^2))``.

    No ``z_{t-1}``: given the RNN summaries, the ``z_t`` are independent.
    Each of the ``num_summaries`` summaries (a forward RNN's ``h_t`` of
    ``x_{1:t}``, a backward RNN's of ``x_{t:T}``) gives a Gaussian with one
    affine layer, ``loc_i = W_i h_i + b_i``, ``scale_i = softplus(V_i h_i +
    c_i)``; two are combined as the authors' MF-LR guide does, by their
    product, normalised: precisions add,
    ``1 / scale^2 = 1 / scale_1^2 + 1 / scale_2^2``, and
    ``loc = scale^2 (loc_1 / scale_1^2 + loc_2 / scale_2^2)``.

    Shapes: ``h`` ``(..., num_summaries * rnn_dim)``, the summaries side by
    side -> ``loc``, ``scale`` ``(..., z_dim)``.
    """

    def __init__(
        self, z_dim: int, rnn_dim: int, num_summaries: int = 1, variance: bool = False
    ) -> None:
        super().__init__()
        self.rnn_dim = rnn_dim
        self.variance = variance  # softplus gives the variance, as the authors'
        self.hidden_to_loc_scale = nn.ModuleList(
            nn.Linear(rnn_dim, 2 * z_dim) for _ in range(num_summaries)
        )

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        precision, weighted_loc = 0, 0
        for layer, h_i in zip(self.hidden_to_loc_scale, h.split(self.rnn_dim, -1)):
            loc_i, scale_arg = layer(h_i).chunk(2, dim=-1)  # (..., z_dim) each
            scale_i = softplus_scale(scale_arg, self.variance)
            if len(self.hidden_to_loc_scale) == 1:
                return loc_i, scale_i
            precision_i = scale_i.pow(-2)
            precision = precision + precision_i
            weighted_loc = weighted_loc + precision_i * loc_i
        return weighted_loc / precision, precision.rsqrt()


class LinearGaussian(nn.Module):
    """Parameterises a fixed linear Gaussian conditional ``N(y; M u, diag(scale^2))``.

    With ``M = A`` it is the transition ``p(z_t | z_{t-1})`` of a linear
    Gaussian state space model, with ``M = C`` its emission ``p(x_t | z_t)``
    (chapter 01, with diagonal noise covariances ``Q = diag(scale^2)`` and
    ``R = diag(scale^2)``). ``M`` and ``scale`` are buffers, not parameters:
    they move with ``.to()`` but no optimiser changes them.

    Shapes: ``u`` ``(..., in_dim)`` -> ``loc``, ``scale`` ``(..., out_dim)``,
    where ``M`` is ``(out_dim, in_dim)``.
    """

    def __init__(self, matrix: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        if not isinstance(matrix, torch.Tensor) or matrix.dim() != 2:
            raise ValueError(
                f"matrix must be a 2-D tensor (out_dim, in_dim); got {shape_of(matrix)}"
            )
        if not isinstance(scale, torch.Tensor) or scale.shape != matrix.shape[:1]:
            raise ValueError(
                f"scale must be a tensor of shape ({matrix.shape[0]},), one standard "
                f"deviation per output; got {shape_of(scale)}"
            )
        if not bool((scale > 0).all()):
            raise ValueError(
                f"scale must be positive; got minimum {float(scale.min())}"
            )
        self.register_buffer("matrix", matrix.detach().clone())
        self.register_buffer("scale", scale.detach().clone())

    def forward(
        self, u: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if context is not None:
            raise ValueError("a linear Gaussian conditional reads no context")
        loc = u @ self.matrix.T  # (..., out_dim)
        return loc, self.scale.expand_as(loc)
