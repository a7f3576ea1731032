"""Piano-roll data for the deep Markov model, and padded mini-batches.

Introduced in chapter 02 (``notebooks/02_jsb_chorales.ipynb``).

A *piano roll* is a float tensor of shape ``(T, 88)``: row ``t`` is one time
step (a quarter note), column ``k`` is 1 when MIDI note ``21 + k`` sounds then
(column 0 = A0 = MIDI 21, column 87 = C8 = MIDI 108) and 0 otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch

NUM_NOTES = 88  # keys of a piano
LOWEST_NOTE = 21  # MIDI number of A0, column 0 of a piano roll
HIGHEST_NOTE = 108  # MIDI number of C8, column 87


# ---------------------------------------------------------------------------
# Mini-batches
# ---------------------------------------------------------------------------


class Batch(NamedTuple):
    """A zero-padded mini-batch of piano rolls.

    Attributes:
        x: ``(B, T_max, 88)`` the rolls, zero after each sequence's end.
        x_reversed: ``(B, T_max, 88)`` each roll reversed in time *within its
            own length*: ``x_reversed[b, t] = x[b, lengths[b] - 1 - t]`` for
            ``t < lengths[b]``; the padding stays at the end (zeros).
        mask: ``(B, T_max)`` 1.0 on real time steps, 0.0 on padding, in the
            rolls' float dtype.
        lengths: ``(B,)`` long, the true length of each sequence.
    """

    x: torch.Tensor
    x_reversed: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor


def reverse_sequences(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence of a padded batch in time, within its own length.

    ``out[b, t] = x[b, lengths[b] - 1 - t]`` for ``t < lengths[b]`` and
    ``out[b, t] = x[b, t]`` otherwise, so whatever sits in the padding stays
    where it is and the map is an involution: reversing twice gives ``x``
    back exactly. Works on any trailing shape (rolls, hidden states, ...).

    Args:
        x: ``(B, T_max, ...)`` padded batch.
        lengths: ``(B,)`` integer lengths, each in ``0..T_max``.

    Returns:
        ``(B, T_max, ...)`` tensor, same dtype and device as ``x``.
    """
    if not isinstance(x, torch.Tensor) or not isinstance(lengths, torch.Tensor):
        raise TypeError(
            "reverse_sequences expects tensors x and lengths, got "
            f"{type(x).__name__} and {type(lengths).__name__}"
        )
    if x.dim() < 2:
        raise ValueError(f"x must have shape (batch, time, ...); got shape {tuple(x.shape)}")
    if lengths.dim() != 1 or lengths.shape[0] != x.shape[0]:
        raise ValueError(
            f"lengths must have shape ({x.shape[0]},) to match x's batch size; "
            f"got shape {tuple(lengths.shape)}"
        )
    if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
        raise TypeError(f"lengths must be an integer tensor, got dtype {lengths.dtype}")
    t_max = x.shape[1]
    if lengths.numel() and (int(lengths.min()) < 0 or int(lengths.max()) > t_max):
        raise ValueError(
            f"lengths must lie in 0..{t_max} (the time dimension of x); "
            f"got min {int(lengths.min())}, max {int(lengths.max())}"
        )
    lengths = lengths.to(device=x.device, dtype=torch.long)
    time = torch.arange(t_max, device=x.device)  # (T_max,)
    # Source index of each output step: mirrored inside the sequence, identity on padding.
    source = torch.where(
        time < lengths[:, None], lengths[:, None] - 1 - time, time
    )  # (B, T_max)
    index = source.reshape(source.shape + (1,) * (x.dim() - 2)).expand(x.shape)
    return torch.gather(x, 1, index)


def make_batch(
    sequences: Sequence[torch.Tensor], device: torch.device | str | None = None
) -> Batch:
    """Pad a list of piano rolls into a :class:`Batch`.

    Args:
        sequences: ``B >= 1`` float tensors of shapes ``(T_b, 88)`` with
            ``T_b >= 1``, all of the same floating dtype.
        device: where the batch lives; default: the first sequence's device.

    Returns:
        ``Batch(x, x_reversed, mask, lengths)`` with ``T_max = max_b T_b``;
        ``x``, ``x_reversed`` and ``mask`` have the sequences' dtype.
    """
    if isinstance(sequences, torch.Tensor):
        raise TypeError(
            "make_batch expects a list of (T, 88) tensors, not a single tensor; "
            "wrap one sequence as [roll]"
        )
    sequences = list(sequences)
    if not sequences:
        raise ValueError("make_batch needs at least one sequence; got an empty list")
    dtype = None
    for i, seq in enumerate(sequences):
        if not isinstance(seq, torch.Tensor):
            raise TypeError(f"sequence {i} is a {type(seq).__name__}, expected a torch.Tensor")
        if seq.dim() != 2:
            raise ValueError(
                f"sequence {i} has shape {tuple(seq.shape)}; expected a 2-D (time, {NUM_NOTES}) roll"
            )
        if seq.shape[1] != NUM_NOTES:
            raise ValueError(
                f"sequence {i} has {seq.shape[1]} columns; expected {NUM_NOTES} (one per piano key)"
            )
        if seq.shape[0] == 0:
            raise ValueError(f"sequence {i} is empty (0 time steps)")
        if not seq.dtype.is_floating_point:
            raise TypeError(
                f"sequence {i} has dtype {seq.dtype}; expected a floating dtype "
                "(convert with roll.float())"
            )
        if dtype is None:
            dtype = seq.dtype
        elif seq.dtype != dtype:
            raise TypeError(
                f"mixed dtypes: sequence 0 is {dtype} but sequence {i} is {seq.dtype}"
            )
    device = torch.device(device) if device is not None else sequences[0].device
    lengths = torch.tensor([seq.shape[0] for seq in sequences], dtype=torch.long, device=device)
    x = torch.nn.utils.rnn.pad_sequence(
        [seq.to(device) for seq in sequences], batch_first=True
    )  # (B, T_max, 88), zeros after each end
    time = torch.arange(x.shape[1], device=device)
    mask = (time < lengths[:, None]).to(dtype)  # (B, T_max)
    return Batch(x=x, x_reversed=reverse_sequences(x, lengths), mask=mask, lengths=lengths)


def minibatches(
    sequences: Sequence[torch.Tensor],
    batch_size: int,
    *,
    seed: int,
    shuffle: bool = True,
    drop_last: bool = False,
    device: torch.device | str | None = None,
) -> Iterator[Batch]:
    """One epoch of mini-batches, in an order fixed by ``seed``.

    With ``shuffle`` the sequences are permuted by ``torch.randperm`` driven by
    a private ``torch.Generator`` seeded with ``seed`` (the global RNG is not
    touched), so the same seed always gives the same batches; pass e.g.
    ``seed=base_seed + epoch`` for a fresh order each epoch. Sequences are not
    sorted by length: each batch is padded to its own longest sequence and the
    mask removes the padding from every sum, so sorting would only save a
    little compute at the price of batches that are not random.

    Args:
        sequences: the rolls, each ``(T, 88)``.
        batch_size: sequences per batch (the last batch may be smaller).
        seed: seed of the permutation.
        shuffle: permute the sequences (otherwise keep their order).
        drop_last: drop a last batch smaller than ``batch_size``.
        device: device of the batches.

    Yields:
        :class:`Batch` objects covering every sequence exactly once (except
        those dropped by ``drop_last``).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(sequences, torch.Tensor):
        raise TypeError("minibatches expects a list of (T, 88) tensors, not a single tensor")
    sequences = list(sequences)
    if not sequences:
        raise ValueError("minibatches needs at least one sequence; got an empty list")
    n = len(sequences)
    if shuffle:
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(n, generator=generator).tolist()
    else:
        order = list(range(n))
    stop = n - n % batch_size if drop_last else n
    # A generator expression rather than ``yield`` in this body, so that bad
    # arguments raise here, at the call, and not at the first ``next``.
    return (
        make_batch([sequences[i] for i in order[start : start + batch_size]], device=device)
        for start in range(0, stop, batch_size)
    )
