"""The DMM's networks: each computes the density its docstring names.

Every formula is checked against an independent computation from the raw
weight matrices (or against ``torch.nn.RNN`` for the backward RNN), on any
leading batch shape, in float64, and on the ``meta`` device, where any tensor
created without following the inputs would land on the CPU and fail.
"""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dmm_helpers.data import reverse_sequences
from dmm_helpers.modules import (
    BackwardRNN,
    Combiner,
    Emitter,
    GatedTransition,
    LinearGaussian,
    _ReluRecurrence,
)

allclose = partial(torch.allclose, rtol=1e-10, atol=1e-12)  # float64 throughout
LEADING_SHAPES = [(), (5,), (2, 3), (2, 1, 4)]


def affine(layer: nn.Linear, u: torch.Tensor) -> torch.Tensor:
    """``W u + b`` written with an explicit product, independent of
    ``nn.Linear.forward``.
    """
    return torch.einsum("oi,...i->...o", layer.weight, u) + layer.bias


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# ---------------------------------------------------------------- Emitter


@pytest.mark.parametrize("leading", LEADING_SHAPES)
def test_emitter_logits_match_the_two_hidden_layer_formula(
    leading: tuple[int, ...],
) -> None:
    emitter = Emitter(input_dim=7, z_dim=3, emission_dim=5).double()
    z = torch.randn(*leading, 3, dtype=torch.float64)
    logits = emitter(z)
    hidden = torch.relu(affine(emitter.z_to_hidden, z))
    hidden = torch.relu(affine(emitter.hidden_to_hidden, hidden))
    assert logits.shape == (*leading, 7)
    assert logits.dtype == torch.float64
    assert allclose(logits, affine(emitter.hidden_to_logits, hidden))


# ------------------------------------------------------- GatedTransition


@pytest.mark.parametrize("z_dim", [1, 4, 100])
def test_gated_transition_linear_map_starts_as_identity(z_dim: int) -> None:
    transition = GatedTransition(z_dim=z_dim, transition_dim=8)
    assert torch.equal(transition.linear_loc.weight, torch.eye(z_dim))
    assert torch.equal(transition.linear_loc.bias, torch.zeros(z_dim))
    # Everything else is random: the identity start is specific to the linear map.
    assert not torch.equal(transition.proposal_to_scale.weight, torch.eye(z_dim))


def test_gated_transition_with_closed_gate_carries_the_state_forward() -> None:
    transition = GatedTransition(z_dim=4, transition_dim=8).double()
    with torch.no_grad():
        transition.gate_out.bias.fill_(-1e3)  # sigmoid(-1e3) == 0 in float64
    z_prev = torch.randn(6, 4, dtype=torch.float64)
    loc, _ = transition(z_prev)
    assert torch.equal(loc, z_prev)  # identity map, zero bias, gate shut


@pytest.mark.parametrize("leading", LEADING_SHAPES)
def test_gated_transition_matches_the_gated_formula(leading: tuple[int, ...]) -> None:
    transition = GatedTransition(z_dim=3, transition_dim=6).double()
    with torch.no_grad():  # move off the identity so the linear part is tested too
        transition.linear_loc.weight.add_(0.3 * torch.randn(3, 3, dtype=torch.float64))
    z_prev = torch.randn(*leading, 3, dtype=torch.float64)
    loc, scale = transition(z_prev)

    gate = torch.sigmoid(
        affine(transition.gate_out, torch.relu(affine(transition.gate_hidden, z_prev)))
    )
    proposal = affine(
        transition.proposal_out, torch.relu(affine(transition.proposal_hidden, z_prev))
    )
    expected_loc = (1 - gate) * affine(transition.linear_loc, z_prev) + gate * proposal
    scale_arg = affine(transition.proposal_to_scale, torch.relu(proposal))
    expected_scale = torch.log1p(torch.exp(scale_arg))  # softplus, written out
    assert loc.shape == scale.shape == (*leading, 3)
    assert allclose(loc, expected_loc)
    assert allclose(scale, expected_scale)
    assert bool((scale > 0).all())
    assert bool(((gate > 0) & (gate < 1)).all())


# --------------------------------------------------------------- Combiner


@pytest.mark.parametrize("leading", LEADING_SHAPES)
def test_combiner_matches_the_averaging_formula(leading: tuple[int, ...]) -> None:
    combiner = Combiner(z_dim=3, rnn_dim=5).double()
    z_prev = torch.randn(*leading, 3, dtype=torch.float64)
    h = torch.randn(*leading, 5, dtype=torch.float64)
    loc, scale = combiner(z_prev, h)

    combined = (torch.tanh(affine(combiner.z_to_hidden, z_prev)) + h) / 2
    out = affine(combiner.hidden_to_loc_scale, combined)
    assert loc.shape == scale.shape == (*leading, 3)
    assert allclose(loc, out[..., :3])
    assert allclose(scale, F.softplus(out[..., 3:]))
    assert bool((scale > 0).all())


def test_combiner_split_precomputes_the_rnn_half_for_all_steps() -> None:
    combiner = Combiner(z_dim=3, rnn_dim=5).double()
    h = torch.randn(4, 6, 5, dtype=torch.float64)  # (batch, time, rnn_dim)
    z_prev = torch.randn(4, 6, 3, dtype=torch.float64)
    projected = combiner.project_rnn(h)  # once, for every step
    for t in range(6):
        loc, scale = combiner.step(z_prev[:, t], projected[:, t])
        expected_loc, expected_scale = combiner(z_prev[:, t], h[:, t])
        assert allclose(loc, expected_loc) and allclose(scale, expected_scale)


def test_combiner_broadcasts_one_state_against_many_summaries() -> None:
    combiner = Combiner(z_dim=3, rnn_dim=5).double()
    z_prev = torch.randn(3, dtype=torch.float64)
    h = torch.randn(2, 4, 5, dtype=torch.float64)
    loc, scale = combiner(z_prev, h)
    assert loc.shape == (2, 4, 3)
    assert allclose(loc, combiner(z_prev.expand(2, 4, 3), h)[0])


# ------------------------------------------------------------ BackwardRNN


def reference_rnn(rnn: BackwardRNN) -> nn.RNN:
    """``torch.nn.RNN`` with the same weights (its second bias zero)."""
    num_layers, rnn_dim = rnn.h_0.shape
    input_dim = rnn.input_to_hidden[0].in_features
    reference = nn.RNN(
        input_dim, rnn_dim, num_layers, nonlinearity="relu", batch_first=True
    )
    reference = reference.to(rnn.h_0.dtype)
    with torch.no_grad():
        for layer in range(num_layers):
            getattr(reference, f"weight_ih_l{layer}").copy_(
                rnn.input_to_hidden[layer].weight
            )
            getattr(reference, f"bias_ih_l{layer}").copy_(
                rnn.input_to_hidden[layer].bias
            )
            getattr(reference, f"weight_hh_l{layer}").copy_(
                rnn.hidden_to_hidden[layer].weight
            )
            getattr(reference, f"bias_hh_l{layer}").zero_()
    return reference


@pytest.mark.parametrize("num_layers", [1, 2])
def test_backward_rnn_summarises_each_future_like_torch_rnn(num_layers: int) -> None:
    rnn = BackwardRNN(input_dim=4, rnn_dim=6, num_layers=num_layers).double()
    with torch.no_grad():
        rnn.h_0.normal_()  # a learned, non-zero start
    reference = reference_rnn(rnn)
    lengths = torch.tensor([3, 7, 1, 7, 5])
    x = torch.randn(5, 7, 4, dtype=torch.float64)
    x = x * (torch.arange(7) < lengths[:, None])[..., None]  # zero padding
    packed = rnn(reverse_sequences(x, lengths), lengths)
    h, _ = nn.utils.rnn.pad_packed_sequence(packed, batch_first=True, total_length=7)

    assert h.shape == (5, 7, 6)
    for b, length in enumerate(lengths.tolist()):
        # nn.RNN run forwards over this sequence alone, reversed: output k is h_{T-k}.
        future_first = x[b, :length].flip(0)[None]  # (1, length, 4)
        h_0 = rnn.h_0[:, None, :].contiguous()  # (layers, 1, rnn_dim)
        expected, _ = reference(future_first, h_0)
        assert allclose(h[b, :length], expected[0].flip(0))
        assert torch.equal(h[b, length:], torch.zeros_like(h[b, length:]))


@pytest.mark.parametrize("num_layers", [1, 2])
def test_backward_rnn_gradients_equal_torch_rnns(num_layers: int) -> None:
    rnn = BackwardRNN(input_dim=4, rnn_dim=6, num_layers=num_layers).double()
    with torch.no_grad():
        rnn.h_0.normal_()
    reference = reference_rnn(rnn)
    lengths = torch.tensor([3, 7, 1, 7, 5])
    x = torch.randn(5, 7, 4, dtype=torch.float64)
    x = x * (torch.arange(7) < lengths[:, None])[..., None]
    readout = torch.randn(
        5, 7, 6, dtype=torch.float64
    )  # an arbitrary loss on every h_t

    packed = rnn(reverse_sequences(x, lengths), lengths)
    h, _ = nn.utils.rnn.pad_packed_sequence(packed, batch_first=True, total_length=7)
    ours = dict(
        zip(
            [name for name, _ in rnn.named_parameters()],
            torch.autograd.grad((h * readout).sum(), list(rnn.parameters())),
        )
    )

    h_0 = rnn.h_0.detach()[:, None, :].clone().requires_grad_()  # (layers, 1, rnn_dim)
    loss = sum(
        (reference(x[b, :n].flip(0)[None], h_0)[0][0].flip(0) * readout[b, :n]).sum()
        for b, n in enumerate(lengths.tolist())
    )
    names = [name for name, _ in reference.named_parameters()] + ["h_0"]
    theirs = dict(zip(names, torch.autograd.grad(loss, [*reference.parameters(), h_0])))

    assert allclose(ours["h_0"], theirs["h_0"][:, 0])
    for layer in range(num_layers):
        assert allclose(
            ours[f"input_to_hidden.{layer}.weight"], theirs[f"weight_ih_l{layer}"]
        )
        assert allclose(
            ours[f"input_to_hidden.{layer}.bias"], theirs[f"bias_ih_l{layer}"]
        )
        assert allclose(
            ours[f"hidden_to_hidden.{layer}.weight"], theirs[f"weight_hh_l{layer}"]
        )


def test_relu_recurrence_backward_passes_gradcheck() -> None:
    sizes = [4, 4, 3, 3, 1]  # sequences dropping out as the steps go on
    projected = torch.randn(sum(sizes), 5, dtype=torch.float64, requires_grad=True)
    h_0 = torch.randn(5, dtype=torch.float64, requires_grad=True)
    weight = (0.5 * torch.randn(5, 5, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda p, h, w: _ReluRecurrence.apply(p, h, w, sizes), (projected, h_0, weight)
    )


def test_backward_rnn_is_initialised_like_torch_rnn() -> None:
    rnn = BackwardRNN(input_dim=88, rnn_dim=600)
    bound = 1 / math.sqrt(600)
    for name, weight in rnn.named_parameters():
        if name != "h_0":
            assert float(weight.detach().abs().max()) <= bound, name
            assert float(weight.detach().abs().max()) > 0.9 * bound, (
                name
            )  # uniform over the range
    assert torch.equal(rnn.h_0, torch.zeros(1, 600))


def test_backward_rnn_dropout_acts_only_while_training() -> None:
    rnn = BackwardRNN(input_dim=4, rnn_dim=6, num_layers=2, dropout=0.5).double()
    lengths = torch.tensor([5, 3])
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    rnn.eval()
    first, second = rnn(x, lengths).data, rnn(x, lengths).data
    assert torch.equal(first, second)
    rnn.train()
    assert not torch.equal(rnn(x, lengths).data, first)


# --------------------------------------------------------- LinearGaussian


@pytest.mark.parametrize("leading", LEADING_SHAPES)
def test_linear_gaussian_is_a_fixed_linear_map_with_fixed_scale(
    leading: tuple[int, ...],
) -> None:
    matrix = torch.randn(2, 3, dtype=torch.float64)
    scale = torch.tensor([0.5, 2.0], dtype=torch.float64)
    conditional = LinearGaussian(matrix, scale)
    u = torch.randn(*leading, 3, dtype=torch.float64)
    loc, out_scale = conditional(u)
    assert allclose(loc, torch.einsum("oi,...i->...o", matrix, u))
    assert torch.equal(out_scale, scale.expand(*leading, 2))
    assert list(conditional.parameters()) == []  # buffers: no optimiser moves them
    assert {name for name, _ in conditional.named_buffers()} == {"matrix", "scale"}


@pytest.mark.parametrize(
    ("matrix", "scale", "message"),
    [
        (torch.ones(3), torch.ones(3), r"matrix must be a 2-D tensor .* got \(3,\)"),
        (
            torch.ones(2, 3),
            torch.ones(3),
            r"scale must be a tensor of shape \(2,\).* got \(3,\)",
        ),
        (
            torch.ones(2, 3),
            torch.tensor([1.0, -1.0]),
            r"scale must be positive; got minimum -1.0",
        ),
    ],
)
def test_linear_gaussian_rejects_bad_arguments(
    matrix: torch.Tensor, scale: torch.Tensor, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        LinearGaussian(matrix, scale)


# ------------------------------------------------------- device and dtype


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_modules_follow_the_device_and_dtype_of_inputs(
    device: str, dtype: torch.dtype
) -> None:
    def tensor(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, dtype=dtype).to(device)

    emitter = Emitter(7, 3, 5).to(device=device, dtype=dtype)
    transition = GatedTransition(3, 6).to(device=device, dtype=dtype)
    combiner = Combiner(3, 5).to(device=device, dtype=dtype)
    linear = LinearGaussian(
        torch.randn(2, 3, dtype=dtype), torch.rand(2, dtype=dtype) + 0.5
    )
    linear = linear.to(device)
    outputs = [
        emitter(tensor(4, 3)),
        *transition(tensor(4, 3)),
        *combiner(tensor(4, 3), tensor(4, 5)),
        *combiner.step(tensor(4, 3), combiner.project_rnn(tensor(4, 5))),
        *linear(tensor(4, 3)),
    ]
    for out in outputs:
        assert out.device.type == device and out.dtype == dtype
