"""The deep Markov model and its structured inference network, as Pyro programs.

Introduced in chapters 03 (the generative ``model``), 04 (the ``guide``) and
05 (:class:`LinearGaussianDMM`); the Pyro objective for them is
``pyro.infer.Trace_ELBO`` / ``TraceMeanField_ELBO``, the fast equivalent is
:mod:`dmm_helpers.elbo`.

Generative model, for each sequence of a batch (Krishnan et al., 2017):

- ``z_0`` is a learned vector;
- ``z_t ~ N(loc(z_{t-1}), diag(scale(z_{t-1})^2))`` (:class:`GatedTransition`);
- ``x_t ~ prod_k Bernoulli(sigmoid(logits_k(z_t)))`` (:class:`Emitter`),

for ``t = 1..T``. Guide: a backward RNN summarises the future, ``h_t`` of
``x_{t:T}``; then ``z_t ~ q(z_t | z_{t-1}, h_t)`` (:class:`Combiner`) starting
from a learned ``z_0^q``, optionally pushed through inverse autoregressive
flows (Kingma et al., 2016). Sample sites are named ``z_1 .. z_T`` and
``x_1 .. x_T`` as in the paper; time index ``t`` of a tensor is step ``t + 1``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.distributions.transforms import (
    AffineAutoregressive,
    ConditionalAffineAutoregressive,
)
from pyro.nn import AutoRegressiveNN, ConditionalAutoRegressiveNN
from torch import nn

from dmm_helpers.checks import positive_int, shape_of
from dmm_helpers.data import Batch
from dmm_helpers.modules import (
    BackwardRNN,
    Combiner,
    Emitter,
    ForwardRNN,
    GatedTransition,
    LinearGaussian,
    LSTMReader,
    MeanField,
)
from dmm_helpers.nade import NADEEmitter

GUIDES = ("st-r", "st-l", "st-lr", "mf-l", "mf-lr")
"""The inference networks Krishnan et al. (2017) name; their table 2 compares four.

``st`` (structured): ``q(z_t | z_{t-1}, h_t)``, a :class:`Combiner`;
``mf`` (mean field): ``q(z_t | h_t)``, a :class:`MeanField`. The letters
after the dash say what ``h_t`` summarises: ``r`` the future ``x_{t:T}``
(a :class:`BackwardRNN`), ``l`` the past ``x_{1:t}`` (a
:class:`ForwardRNN`), ``lr`` both. ``st-r`` is the paper's DMM and this
book's default.
"""


CHOICES: dict[str, tuple[str, ...]] = {
    "guide": GUIDES,
    "scale": ("std", "variance"),
    "z1_prior": ("learned", "standard"),
    "guide_start": ("learned", "zero"),
    "rnn_type": ("relu", "lstm"),
    "init": ("pytorch", "uniform"),
    "emitter": ("bernoulli", "nade"),
}
"""The :class:`DMMConfig` fields that take one of a few names, and those names.

``scale``, ``z1_prior``, ``guide_start``, ``rnn_type`` and ``init`` choose
between Pyro's example (the first name, this book's default) and the
authors' code: softplus giving the variance, ``p(z_1) = N(0, I)``, a guide
that starts from ``z_0^q = 0`` (``stinfmodel/dkf.py``; the paper states these
three), an LSTM after a ReLU input layer (:class:`LSTMReader`), and weights
drawn uniformly from (-0.1, 0.1) (``parse_args_dkf.py``'s ``-ischeme``).
"""


def preceding_notes(x: torch.Tensor) -> torch.Tensor:
    """Each step's previous notes ``x_{t-1}``, with ``x_0 = 0``: augmented input.

    Shapes: ``x`` ``(..., time, input_dim)`` -> the same, shifted one step
    later in time (the last step's notes are read by no step).
    """
    return torch.cat([torch.zeros_like(x[..., :1, :]), x[..., :-1, :]], dim=-2)


class Generated(NamedTuple):
    """Sampled sequences and the latent path that produced them.

    Attributes:
        x: ``(N, T, input_dim)`` the rolls, 0.0 or 1.0, in the model's dtype.
        z: ``(N, T, z_dim)`` the latent states ``z_1 .. z_T``.
        probs: ``(N, T, input_dim)`` each note's probability at the sampled
            ``z_t`` (``sigmoid(logits / tau)``): what the model expected, to be
            drawn as shades of grey. For a Gaussian emission, its mean.
    """

    x: torch.Tensor
    z: torch.Tensor
    probs: torch.Tensor


@dataclass(frozen=True)
class DMMConfig:
    """Sizes and guide of a :class:`DMM`.

    The default sizes are those of Pyro's ``examples/dmm.py`` for JSB, which
    are also the ones the paper's appendix states. The authors' code
    (``parse_args_dkf.py``, ``stinfmodel/dkf.py``) has the same ``z_dim`` and
    RNN size but 200 hidden units in the emitter and 400 in the transition
    (``dim_hidden`` and twice it), and an LSTM where this book has a ReLU RNN.
    """

    input_dim: int = 88  # features per time step (piano keys)
    z_dim: int = 100  # latent state z_t
    emission_dim: int = 100  # hidden units of the emitter
    transition_dim: int = 200  # hidden units of the gated transition
    rnn_dim: int = 600  # hidden units of the backward RNN
    rnn_layers: int = 1  # stacked RNN layers
    rnn_dropout: float = 0.0  # dropout between RNN layers (needs rnn_layers > 1)
    num_iafs: int = 0  # inverse autoregressive flows in the guide
    iaf_dim: int = 100  # hidden units of each flow's autoregressive network
    iaf_context: bool = False  # each flow also reads h_t (Kingma et al.'s IAF)
    guide: str = "st-r"  # inference network: one of GUIDES
    scale: str = "std"  # softplus gives the "std" (Pyro's) or the "variance"
    z1_prior: str = "learned"  # p(z_1): transition of a "learned" z_0, or "standard"
    guide_start: str = "learned"  # a structured guide's z_0^q: "learned" or "zero"
    rnn_type: str = "relu"  # the guide's reader: "relu" RNN, or the authors' "lstm"
    rnn_output_dropout: float = 0.0  # dropout on the readers' h_t while training
    init: str = "pytorch"  # initial weights: "pytorch", or "uniform" on (-0.1, 0.1)
    emitter: str = "bernoulli"  # independent notes, or "nade" (one after another)
    augmented: bool = False  # transition and emitter also read x_{t-1} (chapter 09)

    def __post_init__(self) -> None:
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"{name} must be one of {allowed}, got {getattr(self, name)!r}"
                )
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name in CHOICES:
                continue
            if field.name in ("augmented", "iaf_context"):
                if not isinstance(value, bool):
                    raise TypeError(
                        f"{field.name} must be True or False, got {value!r}"
                    )
                continue
            if field.name in ("rnn_dropout", "rnn_output_dropout"):
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise TypeError(f"{field.name} must be a number, got {value!r}")
                if not 0.0 <= value < 1.0:
                    raise ValueError(f"{field.name} must lie in [0, 1), got {value}")
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{field.name} must be an int, got {value!r}")
            smallest = 0 if field.name == "num_iafs" else 1
            if value < smallest:
                raise ValueError(f"{field.name} must be >= {smallest}, got {value}")
        if self.rnn_type == "lstm" and self.rnn_layers != 1:
            raise ValueError(
                f"the LSTM reader has one layer (the authors'); got rnn_layers="
                f"{self.rnn_layers}"
            )
        if self.iaf_context and self.num_iafs == 0:
            raise ValueError(
                "iaf_context gives the flows the guide's h_t, so it needs num_iafs >= 1"
            )
        if self.rnn_dropout > 0 and self.rnn_layers == 1:
            raise ValueError(
                "rnn_dropout acts between stacked RNN layers, so it needs "
                "rnn_layers > 1; "
                f"got rnn_dropout={self.rnn_dropout} with rnn_layers=1"
            )

    def to_dict(self) -> dict[str, Any]:
        """The sizes as a plain dict (for checkpoints and JSON)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DMMConfig:
        """Inverse of :meth:`to_dict`: unknown keys are errors, missing ones default."""
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown DMMConfig keys {unknown}; known keys are {sorted(known)}"
            )
        return cls(**values)


class DMM(nn.Module):
    """The deep Markov model (``model``) and its inference network (``guide``).

    Both take a :class:`~dmm_helpers.data.Batch` and an ``annealing_factor``
    ``beta`` that scales every latent site (the KL term) in both programs, so
    Pyro's ELBO becomes ``E_q[log p(x | z)] - beta * KL(q(z | x) || p(z))``.
    Padded steps are masked out of every site.
    """

    def __init__(self, config: DMMConfig | None = None) -> None:
        super().__init__()
        config = DMMConfig() if config is None else config
        if not isinstance(config, DMMConfig):
            raise TypeError(f"config must be a DMMConfig, got {type(config).__name__}")
        self.config = config
        variance = config.scale == "variance"
        # An augmented DMM's emitter and transition also read x_{t-1} (chapter 09).
        context = config.input_dim if config.augmented else 0
        emitter_sizes = (config.input_dim, config.z_dim, config.emission_dim)
        if config.emitter == "nade":  # the NADE's hidden layer: emission_dim units
            self.emitter = NADEEmitter(*emitter_sizes, config.emission_dim, context)
        else:
            self.emitter = Emitter(*emitter_sizes, context)
        self.transition = GatedTransition(
            config.z_dim, config.transition_dim, variance, context
        )
        # The guide (GUIDES): a structured combiner or a mean-field layer, fed by
        # a backward RNN (the future), a forward RNN (the past) or both.
        kind, reads = config.guide.split("-")
        self.structured = kind == "st"
        summaries = len(reads)
        if self.structured:
            self.combiner = Combiner(config.z_dim, config.rnn_dim, summaries, variance)
        else:
            self.mean_field = MeanField(
                config.z_dim, config.rnn_dim, summaries, variance
            )
        rnn_args = (config.input_dim, config.rnn_dim)
        if config.rnn_type == "lstm":
            if "r" in reads:
                self.rnn = LSTMReader(*rnn_args, backward=True)
            if "l" in reads:
                self.rnn_forward = LSTMReader(*rnn_args, backward=False)
        else:
            rnn_args += (config.rnn_layers, config.rnn_dropout)
            if "r" in reads:
                self.rnn = BackwardRNN(*rnn_args)
            if "l" in reads:
                self.rnn_forward = ForwardRNN(*rnn_args)
        # The flows' masked autoregressive networks, shared by all time steps;
        # with iaf_context each also reads h_t, as summarise gives it.
        h_dim = config.rnn_dim * (2 if config.guide == "mf-lr" else 1)
        self.iaf_nets = nn.ModuleList(
            ConditionalAutoRegressiveNN(config.z_dim, h_dim, [config.iaf_dim])
            if config.iaf_context
            else AutoRegressiveNN(config.z_dim, [config.iaf_dim])
            for _ in range(config.num_iafs)
        )
        # The model's z_0 and a structured guide's z_0^q: learned parameters, or
        # fixed zeros (buffers) where p(z_1) = N(0, I) or the guide starts at 0.
        zeros = torch.zeros(config.z_dim)
        if config.z1_prior == "learned":
            self.z_0 = nn.Parameter(zeros.clone())
        else:
            self.register_buffer("z_0", zeros.clone())
        if self.structured and config.guide_start == "learned":
            self.z_q_0 = nn.Parameter(zeros.clone())
        elif self.structured:
            self.register_buffer("z_q_0", zeros.clone())
        if config.init == "uniform":
            self._initialise_uniformly()

    def _initialise_uniformly(self) -> None:
        """Every weight and bias from uniform(-0.1, 0.1), as the authors' code.

        Their exceptions are kept where this model has them: the transition's
        linear map starts as the identity, and the learned starts as zeros.
        """
        keep = {"z_0", "z_q_0"}
        keep |= {f"transition.linear_loc.{name}" for name in ("weight", "bias")}
        with torch.no_grad():
            for name, parameter in self.named_parameters():
                if name not in keep and not name.endswith("h_0"):
                    parameter.uniform_(-0.1, 0.1)

    def check_batch(self, batch: Batch) -> None:
        """Raise a clear error unless ``batch`` is a batch this model can score."""
        if torch.jit.is_tracing():
            raise RuntimeError(
                "the DMM cannot be traced with torch.jit (as JitTrace_ELBO does): "
                "its loops run over packed sequences whose sizes depend on "
                "batch.lengths, which a trace would freeze; use Trace_ELBO, "
                "TraceMeanField_ELBO or dmm_helpers.elbo.elbo"
            )
        for name in Batch._fields:
            if not isinstance(getattr(batch, name, None), torch.Tensor):
                raise TypeError(
                    "expected a dmm_helpers.data.Batch (see make_batch) with a tensor "
                    f"field {name!r}; got {type(batch).__name__}"
                )
        x = batch.x
        expected = self.config.input_dim
        if x.dim() != 3:
            raise ValueError(
                f"batch.x must have shape (batch, time, {expected}); "
                f"got {tuple(x.shape)}"
            )
        if x.shape[-1] != expected:
            raise ValueError(
                f"batch has feature size {x.shape[-1]} per time step, but this model "
                f"expects input_dim={expected}"
            )
        if (
            batch.x_reversed.shape != x.shape
            or batch.mask.shape != x.shape[:2]
            or batch.lengths.shape != x.shape[:1]
        ):
            raise ValueError(
                "inconsistent batch: x_reversed, mask and lengths must have shapes "
                f"{tuple(x.shape)}, {tuple(x.shape[:2])}, {tuple(x.shape[:1])}; got "
                f"{tuple(batch.x_reversed.shape)}, {tuple(batch.mask.shape)}, "
                f"{tuple(batch.lengths.shape)}"
            )
        reference = self.z_0
        if x.dtype != reference.dtype or x.device != reference.device:
            raise TypeError(
                f"batch is {x.dtype} on {x.device} but the model's parameters are "
                f"{reference.dtype} on {reference.device}; move one to the other, "
                "e.g. model.to(batch.x)"
            )
        # Pyro's programs mask with batch.mask, the fast ELBO packs by batch.lengths.
        lengths = batch.lengths.to(batch.mask.device)
        if (
            lengths.numel()
            and not 1 <= int(lengths.min()) <= int(lengths.max()) <= x.shape[1]
        ):
            raise ValueError(
                f"batch.lengths must lie in 1..{x.shape[1]} (the time dimension); got "
                f"min {int(lengths.min())}, max {int(lengths.max())}"
            )
        steps = torch.arange(x.shape[1], device=batch.mask.device)
        if not torch.equal(batch.mask.bool(), steps < lengths[:, None]):
            raise ValueError(
                "batch.mask disagrees with batch.lengths: the mask must be 1 "
                "exactly on "
                "the first lengths[b] steps of sequence b"
            )

    def summarise(self, batch: Batch) -> nn.utils.rnn.PackedSequence:
        """The guide's reading of the music, ``h_t`` for every real step, packed.

        A backward RNN's ``h_t`` summarises ``x_{t:T}`` (guides ``*-r``), a
        forward RNN's ``x_{1:t}`` (``*-l``). With both (``*-lr``), a
        structured guide gets their sum and a mean-field guide the two side
        by side. Rows as ``pack_padded_sequence(..., enforce_sorted=False)``
        packs ``batch.x``: ``.data`` is ``(N, rnn_dim)``, or ``(N, 2 rnn_dim)``
        for ``mf-lr``.
        """
        parts = []
        if hasattr(self, "rnn_forward"):
            parts.append(self.rnn_forward(batch.x, batch.lengths))
        if hasattr(self, "rnn"):
            parts.append(self.rnn(batch.x_reversed, batch.lengths))
        p = self.config.rnn_output_dropout  # the authors' dropout on h_t
        data = [F.dropout(part.data, p, self.training) for part in parts]
        if self.structured:
            return parts[0]._replace(data=sum(data[1:], data[0]))
        return parts[0]._replace(data=torch.cat(data, dim=-1))

    def encode(self, batch: Batch) -> torch.Tensor:
        """:meth:`summarise`, padded: ``h[:, t]`` is what the guide reads at step ``t``.

        For the paper's ST-R guide, the backward RNN: ``h[:, t]`` summarises
        ``x_{t:T}``. Returns ``(batch, time, rnn_dim)`` (``2 rnn_dim`` for
        ``mf-lr``), zero on padded steps.
        """
        padded, _ = nn.utils.rnn.pad_packed_sequence(
            self.summarise(batch), batch_first=True, total_length=batch.x.shape[1]
        )
        return padded  # (batch, time, rnn_dim)

    def guide_step(
        self, z_prev: torch.Tensor | None, h_t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``loc``, ``scale`` of ``q(z_t | z_{t-1}, h_t)``, or of ``q(z_t | h_t)``.

        A structured guide combines ``z_{t-1}`` with ``h_t`` (:class:`Combiner`);
        a mean-field guide reads ``h_t`` alone (:class:`MeanField`) and ignores
        ``z_prev``.
        """
        if self.structured:
            return self.combiner(z_prev, h_t)
        return self.mean_field(h_t)

    def context(self, x_prev: torch.Tensor | None) -> torch.Tensor | None:
        """What the emitter and the transition read beside the latent state.

        ``None`` for the paper's DMM, whose networks read ``z`` alone; the
        previous step's notes ``x_{t-1}`` ``(..., input_dim)`` for an
        augmented DMM (``augmented=True``, chapter 09), which needs them.
        """
        if not self.config.augmented:
            return None
        if x_prev is None:
            raise ValueError(
                "this DMM is augmented: its transition and emitter read the "
                "previous notes, so pass x_prev (zeros before the first step)"
            )
        return x_prev

    def prior(
        self,
        z_prev: torch.Tensor,
        first: bool = False,
        x_prev: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``loc``, ``scale`` of ``p(z_t | z_{t-1})``; of ``p(z_1)`` when ``first``.

        The gated transition of ``z_prev`` ``(..., z_dim)`` (and, augmented,
        of ``x_prev``: :meth:`context`), except for the first step of a model
        whose ``z1_prior`` is ``"standard"``: then ``p(z_1) = N(0, I)``
        (``z_prev`` is ``z_0`` there and only gives shapes).
        """
        if first and self.config.z1_prior == "standard":
            return torch.zeros_like(z_prev), torch.ones_like(z_prev)
        return self.transition(z_prev, self.context(x_prev))

    def emission_dist(
        self, z: torch.Tensor, x_prev: torch.Tensor | None = None
    ) -> dist.TorchDistribution:
        """``p(x_t | z_t)`` for ``z`` ``(..., z_dim)``, with batch shape ``(...)``.

        88 independent Bernoulli notes, or with ``emitter="nade"`` a
        :class:`~dmm_helpers.nade.NADEBernoulli` that draws them in turn. An
        augmented DMM's also depends on ``x_prev``, ``x_{t-1}`` (:meth:`context`).
        """
        if self.config.emitter == "nade":
            return self.emitter.distribution(z, self.context(x_prev))
        return dist.Bernoulli(logits=self.emitter(z, self.context(x_prev))).to_event(1)

    def note_probabilities(
        self, z: torch.Tensor, x: torch.Tensor, x_prev: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``p(x_{t,k} = 1 | z_t, x_{t,<k})`` of every note, at the notes ``x``.

        For independent notes the notes below ``k`` do not matter; for a NADE
        these are its conditionals along ``x``. An augmented DMM also reads
        ``x_prev`` (:meth:`context`). Shapes ``(..., z_dim)`` and ``(...,
        input_dim)`` -> ``(..., input_dim)``.
        """
        if self.config.emitter == "nade":
            return torch.sigmoid(self.emission_dist(z, x_prev).conditional_logits(x))
        return torch.sigmoid(self.emitter(z, self.context(x_prev))).expand_as(x)

    def model(self, batch: Batch, annealing_factor: float = 1.0) -> None:
        """The generative model ``p(x_{1:T}, z_{1:T})``, conditioned on ``batch.x``."""
        self.check_batch(batch)
        pyro.module("dmm", self)
        batch_size, t_max, _ = batch.x.shape
        mask = batch.mask.bool()  # (batch, time)
        z_prev = self.z_0.expand(batch_size, -1)  # (batch, z_dim)
        x_prev = torch.zeros_like(batch.x[:, 0])  # x_0 = 0, read if augmented
        with pyro.plate("sequences", batch_size, dim=-1):
            for t in pyro.markov(range(t_max)):
                loc, scale = self.prior(z_prev, t == 0, x_prev)  # (batch, z_dim) each
                with poutine.scale(scale=annealing_factor):
                    z_t = pyro.sample(
                        f"z_{t + 1}",
                        dist.Normal(loc, scale).to_event(1).mask(mask[:, t]),
                    )  # (batch, z_dim)
                pyro.sample(
                    f"x_{t + 1}",
                    self.emission_dist(z_t, x_prev).mask(mask[:, t]),
                    obs=batch.x[:, t],
                )
                z_prev, x_prev = z_t, batch.x[:, t]

    def guide(self, batch: Batch, annealing_factor: float = 1.0) -> None:
        """The posterior ``q(z | x) = prod_t q(z_t | z_{t-1}, h_t)`` (structured).

        ``h_t`` summarises ``x_{t:T}`` for the paper's ST-R guide; a mean-field
        guide drops ``z_{t-1}`` (see :data:`GUIDES` and :meth:`guide_step`).
        """
        self.check_batch(batch)
        pyro.module("dmm", self)
        batch_size, t_max, _ = batch.x.shape
        mask = batch.mask.bool()  # (batch, time)
        h = self.encode(batch)  # (batch, time, rnn_dim)
        z_prev = self.z_q_0.expand(batch_size, -1) if self.structured else None
        with pyro.plate("sequences", batch_size, dim=-1):
            for t in pyro.markov(range(t_max)):
                loc, scale = self.guide_step(z_prev, h[:, t])  # (batch, z_dim) each
                q_t = dist.Normal(loc, scale).to_event(1)
                if self.config.num_iafs > 0:
                    flows = self.iaf_transforms(h[:, t])
                    q_t = dist.TransformedDistribution(q_t, flows)
                with poutine.scale(scale=annealing_factor):
                    z_t = pyro.sample(
                        f"z_{t + 1}", q_t.mask(mask[:, t])
                    )  # (batch, z_dim)
                z_prev = z_t

    def iaf_transforms(
        self, h_t: torch.Tensor | None = None
    ) -> list[AffineAutoregressive]:
        """The guide's inverse autoregressive flows for one time step.

        ``y = sigma(x) * x + (1 - sigma(x)) * mu(x)`` per flow, with
        ``sigma = sigmoid(s + 2)`` (Pyro's ``sigmoid_bias``, which starts each
        flow close to the identity) and ``(mu, s)`` from the shared networks
        ``iaf_nets``: the numerically stable form of Kingma et al. (2016, eq. 14).
        The plain form ``y = mu + exp(s) * x`` lets ``z`` grow without bound
        along a chorale; on JSB it produced non-finite losses within the first
        epoch at Pyro's settings, the gated form none. Fresh transform objects
        each step, because a transform remembers only its latest ``(x, y)``
        pair: with its own step's pair at hand, Pyro scores ``z_t`` without
        inverting the flow, which costs ``z_dim`` sequential network passes.

        With ``iaf_context`` (Kingma et al.'s IAF; Pyro's example has none),
        ``mu`` and ``s`` also depend on the guide's reading ``h_t`` of the
        step, ``(..., h_dim)``, which must then be given.
        """
        if not self.config.iaf_context:
            return [AffineAutoregressive(net, stable=True) for net in self.iaf_nets]
        if h_t is None:
            raise ValueError("these flows read the guide's h_t: pass it (iaf_context)")
        return [
            ConditionalAffineAutoregressive(net, stable=True).condition(h_t)
            for net in self.iaf_nets
        ]

    def sample_emission(
        self,
        z_t: torch.Tensor,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        x_prev: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``x_t ~ p(x_t | z_t)`` at temperature ``tau``: ``(x_t, probs)``.

        Each note is drawn with probability ``sigmoid(logits_k(z_t) / tau)``;
        ``tau = 0`` is the limit, a note sounds exactly when its logit is
        positive. ``probs`` are those probabilities. An augmented DMM also
        reads ``x_prev`` (:meth:`context`). Shapes: ``(..., z_dim)`` ->
        ``(..., input_dim)`` each.
        """
        if self.config.emitter == "nade":  # note by note
            emission = self.emission_dist(z_t, x_prev)
            return emission.sample_tempered(temperature, generator)
        logits = self.emitter(z_t, self.context(x_prev))  # (..., input_dim)
        if temperature > 0:
            probs = torch.sigmoid(logits / temperature)
            return torch.bernoulli(probs, generator=generator), probs
        probs = (logits > 0).to(logits.dtype)  # the limit tau -> 0: a step at 1/2
        return probs.clone(), probs

    @torch.no_grad()
    def sample_forward(
        self,
        z_prev: torch.Tensor,
        num_steps: int,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        *,
        start: bool = False,
        x_prev: torch.Tensor | None = None,
    ) -> Generated:
        """Ancestral sampling: ``num_steps`` steps of the model from ``z_prev``.

        With ``start``, ``z_prev`` is the model's ``z_0`` and the first step
        draws ``z_1`` from :meth:`prior` for a first step. ``x_prev`` ``(N,
        input_dim)``, the notes before the first step drawn, is read by an
        augmented DMM only; by default zeros, the ``x_0`` of a start.

        ``z_t = loc(z_{t-1}) + tau * scale(z_{t-1}) * eps_t`` and
        ``x_t ~`` :meth:`sample_emission` at the same ``tau``; each step draws
        the transition noise, then the notes. ``tau = 1`` samples the model
        itself. The model's only forward sampler: :meth:`generate`,
        :func:`~dmm_helpers.generate.sample_prior` and
        :func:`~dmm_helpers.generate.continue_sequence` call it.

        Shapes: ``z_prev`` ``(N, z_dim)`` -> :class:`Generated` with ``x``
        and ``probs`` ``(N, num_steps, input_dim)``, ``z`` ``(N, num_steps,
        z_dim)``.
        """
        num_steps = positive_int("num_steps", num_steps)
        if x_prev is None:  # x_0 = 0
            x_prev = z_prev.new_zeros(z_prev.shape[0], self.config.input_dim)
        xs, zs, all_probs = [], [], []
        for step in range(num_steps):
            first = start and step == 0
            loc, scale = self.prior(z_prev, first, x_prev)  # (N, z_dim) each
            eps = torch.randn(
                loc.shape, generator=generator, dtype=loc.dtype, device=loc.device
            )
            z_t = loc + temperature * scale * eps  # (N, z_dim)
            x_t, probs = self.sample_emission(z_t, temperature, generator, x_prev)
            xs.append(x_t)
            zs.append(z_t)
            all_probs.append(probs)
            z_prev, x_prev = z_t, x_t
        return Generated(*(torch.stack(parts, dim=1) for parts in (xs, zs, all_probs)))

    def generate(
        self, num_sequences: int, num_steps: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Ancestral samples from the model's start: ``x`` and ``z``.

        ``x`` is ``(N, T, input_dim)``, ``z`` ``(N, T, z_dim)``. For temperatures,
        seeds and continuing a
        given beginning, see :mod:`dmm_helpers.generate`.
        """
        num_sequences = positive_int("num_sequences", num_sequences)
        z_0 = self.z_0.expand(num_sequences, -1)  # (N, z_dim)
        sample = self.sample_forward(z_0, num_steps, start=True)
        return sample.x, sample.z


class LinearGaussianDMM(DMM):
    """A DMM whose generative half is a fixed linear Gaussian state space model.

    ``p(z_t | z_{t-1}) = N(A z_{t-1}, diag(q_scale^2))`` and
    ``p(x_t | z_t) = N(C z_t, diag(r_scale^2))`` from a fixed ``z_0``: the
    LGSSM of chapter 01 with ``mu0 = A z_0`` and ``P0 = Q``, whose exact
    log-likelihood the Kalman filter computes (:meth:`lgssm_params`). The
    guide is the DMM's own (any of :data:`GUIDES`, optional flows), so the
    gap between the ELBO and the exact ``log p(x)`` is the guide's alone.
    ``A``, ``C``, the scales and ``z_0`` are buffers: training changes only
    the guide. The module takes the device and dtype of ``A``.
    """

    def __init__(
        self,
        A: torch.Tensor,
        C: torch.Tensor,
        q_scale: torch.Tensor,
        r_scale: torch.Tensor,
        z_0: torch.Tensor,
        *,
        rnn_dim: int = 64,
        num_iafs: int = 0,
        iaf_dim: int = 32,
        guide: str = "st-r",
    ) -> None:
        if not isinstance(A, torch.Tensor) or A.dim() != 2 or A.shape[0] != A.shape[1]:
            raise ValueError(
                f"A must be a square 2-D tensor (z_dim, z_dim); got {shape_of(A)}"
            )
        z_dim = A.shape[0]
        if not isinstance(C, torch.Tensor) or C.dim() != 2 or C.shape[1] != z_dim:
            raise ValueError(
                f"C must be a 2-D tensor (obs_dim, {z_dim}); got {shape_of(C)}"
            )
        for name, vector, size in (
            ("q_scale", q_scale, z_dim),
            ("r_scale", r_scale, C.shape[0]),
            ("z_0", z_0, z_dim),
        ):
            if not isinstance(vector, torch.Tensor) or vector.shape != (size,):
                raise ValueError(
                    f"{name} must be a tensor of shape ({size},); "
                    f"got {shape_of(vector)}"
                )
        # emission_dim and transition_dim size networks that are replaced below.
        config = DMMConfig(
            input_dim=C.shape[0],
            z_dim=z_dim,
            emission_dim=1,
            transition_dim=1,
            rnn_dim=rnn_dim,
            num_iafs=num_iafs,
            iaf_dim=iaf_dim,
            guide=guide,
        )
        super().__init__(config)
        self.transition = LinearGaussian(A, q_scale)
        self.emitter = LinearGaussian(C, r_scale)
        del self.z_0  # a buffer below, not a parameter
        self.register_buffer("z_0", z_0.detach().clone())
        self.to(device=A.device, dtype=A.dtype)

    def emission_dist(
        self, z: torch.Tensor, x_prev: torch.Tensor | None = None
    ) -> dist.TorchDistribution:
        """``p(x_t | z_t) = N(C z_t, diag(r_scale^2))``, with batch shape ``(...)``.

        ``x_prev`` is ignored: this model is never augmented.
        """
        loc, scale = self.emitter(z)
        return dist.Normal(loc, scale).to_event(1)

    def sample_emission(
        self,
        z_t: torch.Tensor,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        x_prev: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``x_t ~ N(C z_t, diag((tau r_scale)^2))``: ``(x_t, C z_t)``.

        ``x_prev`` is ignored: this model is never augmented.
        """
        loc, scale = self.emitter(z_t)
        eps = torch.randn(
            loc.shape, generator=generator, dtype=loc.dtype, device=loc.device
        )
        return loc + temperature * scale * eps, loc

    def lgssm_params(self) -> dict[str, torch.Tensor]:
        """``A, C, Q, R, mu0, P0`` of the equivalent LGSSM.

        Keyed as the arguments of :func:`dmm_helpers.lgssm.log_likelihood`
        and :func:`dmm_helpers.lgssm.sample`, so ``log_likelihood(x,
        **dmm.lgssm_params(), mask=mask)`` is the exact ``log p(x)``.
        """
        A, C = self.transition.matrix, self.emitter.matrix
        Q = torch.diag(self.transition.scale**2)
        R = torch.diag(self.emitter.scale**2)
        return {"A": A, "C": C, "Q": Q, "R": R, "mu0": A @ self.z_0, "P0": Q}
