"""The DMM as Pyro programs: configuration, sites, masks, scales, errors, flows.

The model's log joint is recomputed here from ``torch.distributions`` by
hand, so the Pyro program is tested against the math, not against itself.
"""

from __future__ import annotations

import json
import re

import pyro
import pyro.distributions as dist
import pytest
import torch
from dmm_fixtures import random_batch, small_dmm
from pyro import poutine
from pyro.infer import JitTrace_ELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.poutine.util import site_is_subsample
from torch import nn

from dmm_helpers.data import Batch, make_batch
from dmm_helpers.dmm import DMM, DMMConfig, LinearGaussianDMM


def sample_sites(trace: poutine.Trace) -> list[str]:
    """Names of the sample sites, without the plate's own bookkeeping site."""
    return [
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site_is_subsample(site)
    ]


@pytest.fixture(autouse=True)
def _fresh_pyro() -> None:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)


# ---------------------------------------------------------------- config


def test_config_defaults_are_pyros_example_sizes() -> None:
    assert DMMConfig().to_dict() == {
        "input_dim": 88,
        "z_dim": 100,
        "emission_dim": 100,
        "transition_dim": 200,
        "rnn_dim": 600,
        "rnn_layers": 1,
        "rnn_dropout": 0.0,
        "num_iafs": 0,
        "iaf_dim": 100,
        "iaf_context": False,
        "guide": "st-r",
        "scale": "std",
        "z1_prior": "learned",
        "guide_start": "learned",
        "rnn_type": "relu",
        "rnn_output_dropout": 0.0,
        "init": "pytorch",
        "emitter": "bernoulli",
        "augmented": False,
    }


def test_config_round_trips_through_json() -> None:
    config = DMMConfig(z_dim=4, rnn_layers=2, rnn_dropout=0.25, num_iafs=2)
    assert DMMConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert DMMConfig.from_dict({"z_dim": 4}) == DMMConfig(
        z_dim=4
    )  # missing keys: defaults


def test_config_from_dict_names_unknown_keys() -> None:
    with pytest.raises(
        ValueError, match=r"unknown DMMConfig keys \['hidden', 'zdim'\]"
    ):
        DMMConfig.from_dict({"zdim": 3, "hidden": 2})


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"z_dim": 0}, ValueError, "z_dim must be >= 1, got 0"),
        ({"num_iafs": -1}, ValueError, "num_iafs must be >= 0, got -1"),
        ({"rnn_dim": 2.5}, TypeError, "rnn_dim must be an int, got 2.5"),
        ({"input_dim": True}, TypeError, "input_dim must be an int, got True"),
        (
            {"rnn_dropout": 1.0, "rnn_layers": 2},
            ValueError,
            r"rnn_dropout must lie in \[0, 1\)",
        ),
        ({"rnn_dropout": 0.1}, ValueError, "needs rnn_layers > 1"),
        ({"augmented": 1}, TypeError, "augmented must be True or False, got 1"),
        ({"iaf_context": True}, ValueError, "iaf_context .* needs num_iafs >= 1"),
    ],
)
def test_config_rejects_bad_values(changes: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        DMMConfig(**changes)


def test_dmm_sizes_follow_the_config() -> None:
    c = DMMConfig(input_dim=10, z_dim=3, emission_dim=5, transition_dim=6, rnn_dim=7)
    dmm = DMM(c)
    emitter = (
        (c.z_dim + 1) * c.emission_dim
        + (c.emission_dim + 1) * c.emission_dim
        + (c.emission_dim + 1) * c.input_dim
    )
    transition = (
        2 * ((c.z_dim + 1) * c.transition_dim + (c.transition_dim + 1) * c.z_dim)
        + 2 * (c.z_dim + 1) * c.z_dim
    )
    combiner = (c.z_dim + 1) * c.rnn_dim + (c.rnn_dim + 1) * 2 * c.z_dim
    rnn = (c.input_dim + 1) * c.rnn_dim + c.rnn_dim * c.rnn_dim + c.rnn_dim
    starts = 2 * c.z_dim
    count = {
        name: sum(p.numel() for p in module.parameters())
        for name, module in dmm.named_children()
    }
    assert count == {
        "emitter": emitter,
        "transition": transition,
        "combiner": combiner,
        "rnn": rnn,
        "iaf_nets": 0,
    }
    assert sum(p.numel() for p in dmm.parameters()) == sum(count.values()) + starts


def test_dmm_rejects_a_config_of_the_wrong_type() -> None:
    with pytest.raises(TypeError, match="config must be a DMMConfig, got dict"):
        DMM({"z_dim": 3})  # type: ignore[arg-type]


# ----------------------------------------------------------------- model


def test_model_sites_shapes_masks_and_scales() -> None:
    dmm = small_dmm()
    batch = random_batch([4, 2, 3])
    trace = poutine.trace(dmm.model).get_trace(batch, 0.25)
    assert sample_sites(trace) == [
        f"{kind}_{t}" for t in range(1, 5) for kind in ("z", "x")
    ]
    for t in range(4):
        z_site, x_site = trace.nodes[f"z_{t + 1}"], trace.nodes[f"x_{t + 1}"]
        assert z_site["fn"].batch_shape == (3,) and z_site["fn"].event_shape == (3,)
        assert x_site["fn"].batch_shape == (3,) and x_site["fn"].event_shape == (88,)
        assert x_site["is_observed"] and torch.equal(x_site["value"], batch.x[:, t])
        for site in (z_site, x_site):
            assert torch.equal(site["fn"]._mask, batch.mask[:, t].bool())
            (frame,) = site["cond_indep_stack"]
            assert (frame.name, frame.dim, frame.size) == ("sequences", -1, 3)
        assert z_site["scale"] == 0.25 and x_site["scale"] == 1.0


def test_model_log_joint_equals_the_hand_computed_density() -> None:
    dmm = small_dmm()
    batch = random_batch([4, 2, 3])
    trace = poutine.trace(dmm.model).get_trace(batch)
    expected = torch.zeros((), dtype=torch.float64)
    with torch.no_grad():
        for b, length in enumerate(batch.lengths.tolist()):
            z_prev = dmm.z_0
            for t in range(length):  # padded steps contribute nothing
                z_t = trace.nodes[f"z_{t + 1}"]["value"][b]
                loc, scale = dmm.transition(z_prev)
                expected += torch.distributions.Normal(loc, scale).log_prob(z_t).sum()
                probs = torch.sigmoid(dmm.emitter(z_t))
                expected += (
                    torch.distributions.Bernoulli(probs=probs)
                    .log_prob(batch.x[b, t])
                    .sum()
                )
                z_prev = z_t
        assert torch.allclose(trace.log_prob_sum(), expected, rtol=1e-10)


@pytest.mark.parametrize("z1_prior", ["learned", "standard"])
def test_augmented_model_log_joint_equals_the_hand_computed_density(
    z1_prior: str,
) -> None:
    # DMM-Aug: z_t ~ p(z_t | z_{t-1}, x_{t-1}) and x_t ~ p(x_t | z_t, x_{t-1}),
    # x_0 = 0. The networks' first layers are applied here by hand to [z; x_prev].
    dmm = small_dmm(augmented=True, z1_prior=z1_prior)
    batch = random_batch([4, 2, 3])
    trace = poutine.trace(dmm.model).get_trace(batch)
    transition, emitter = dmm.transition, dmm.emitter
    expected = torch.zeros((), dtype=torch.float64)
    relu = torch.relu
    with torch.no_grad():
        for b, length in enumerate(batch.lengths.tolist()):
            z_prev, x_prev = dmm.z_0, torch.zeros_like(batch.x[b, 0])
            for t in range(length):
                z_t = trace.nodes[f"z_{t + 1}"]["value"][b]
                inputs = torch.cat([z_prev, x_prev])
                gate = torch.sigmoid(
                    transition.gate_out(relu(transition.gate_hidden(inputs)))
                )
                proposal = transition.proposal_out(
                    relu(transition.proposal_hidden(inputs))
                )
                loc = (1 - gate) * transition.linear_loc(z_prev) + gate * proposal
                scale = nn.functional.softplus(
                    transition.proposal_to_scale(relu(proposal))
                )
                if t == 0 and z1_prior == "standard":
                    loc, scale = torch.zeros_like(loc), torch.ones_like(scale)
                expected += torch.distributions.Normal(loc, scale).log_prob(z_t).sum()
                hidden = relu(emitter.z_to_hidden(torch.cat([z_t, x_prev])))
                logits = emitter.hidden_to_logits(
                    relu(emitter.hidden_to_hidden(hidden))
                )
                expected += (
                    torch.distributions.Bernoulli(logits=logits)
                    .log_prob(batch.x[b, t])
                    .sum()
                )
                z_prev, x_prev = z_t, batch.x[b, t]
        assert torch.allclose(trace.log_prob_sum(), expected, rtol=1e-10)


@pytest.mark.parametrize("emitter", ["bernoulli", "nade"])
def test_an_augmented_model_reads_the_previous_notes_and_not_the_later_ones(
    emitter: str,
) -> None:
    # With the states held fixed, changing the notes of step 2 changes the
    # densities of z_3 and x_3 (they read x_2) and of no earlier site; the
    # paper's DMM, given the states, reads no notes at all.
    batch = random_batch([4, 4])
    flipped_x = batch.x.clone()
    flipped_x[:, 1] = 1 - flipped_x[:, 1]
    flipped = make_batch(list(flipped_x))
    for augmented in (True, False):
        dmm = small_dmm(augmented=augmented, emitter=emitter)
        states = poutine.trace(dmm.model).get_trace(batch)
        fixed = {f"z_{t}": states.nodes[f"z_{t}"]["value"] for t in range(1, 5)}
        conditioned = poutine.condition(dmm.model, data=fixed)
        scores = {}
        for name, given in (("original", batch), ("flipped", flipped)):
            trace = poutine.trace(conditioned).get_trace(given)
            trace.compute_log_prob()
            scores[name] = {
                site: trace.nodes[site]["log_prob"]
                for site in [*fixed, *(f"x_{t}" for t in range(1, 5))]
            }
        same = {
            site
            for site in scores["original"]
            if torch.equal(scores["original"][site], scores["flipped"][site])
        }
        if augmented:  # x_2 is scored at other values, z_3 and x_3 read them
            assert same == {"z_1", "x_1", "z_2", "z_4", "x_4"}
        else:
            assert same == {"z_1", "x_1", "z_2", "z_3", "x_3", "z_4", "x_4"}


def test_an_augmented_model_needs_the_previous_notes() -> None:
    dmm = small_dmm(augmented=True)
    z = torch.zeros(2, dmm.config.z_dim, dtype=torch.float64)
    with pytest.raises(ValueError, match="augmented.*pass x_prev"):
        dmm.emission_dist(z)
    with pytest.raises(ValueError, match="augmented.*pass x_prev"):
        dmm.prior(z)
    loc, scale = dmm.prior(z, x_prev=torch.zeros(2, 88, dtype=torch.float64))
    assert loc.shape == scale.shape == (2, dmm.config.z_dim)


def test_model_with_everything_masked_but_one_sequence_scores_that_sequence() -> None:
    dmm = small_dmm()
    batch = random_batch([4, 2, 3])
    alone = Batch(*(field[1:2] for field in batch))
    alone = alone._replace(
        x=alone.x[:, :2], x_reversed=alone.x_reversed[:, :2], mask=alone.mask[:, :2]
    )
    guide_trace = poutine.trace(dmm.guide).get_trace(batch)
    both = poutine.trace(poutine.replay(dmm.model, trace=guide_trace)).get_trace(batch)
    # The same z values for sequence 1, run on its own.
    values = {
        f"z_{t + 1}": guide_trace.nodes[f"z_{t + 1}"]["value"][1:2] for t in range(2)
    }
    single = poutine.trace(poutine.condition(dmm.model, data=values)).get_trace(alone)
    per_sequence = {
        name: both.nodes[name]["fn"].log_prob(both.nodes[name]["value"])
        for name in sample_sites(both)
    }
    for name in sample_sites(single):
        site = single.nodes[name]
        assert torch.allclose(
            site["fn"].log_prob(site["value"]), per_sequence[name][1:2]
        )
    for t in (3, 4):  # sequence 1 has ended: its steps 3 and 4 count for nothing
        assert per_sequence[f"z_{t}"][1] == 0 and per_sequence[f"x_{t}"][1] == 0


# ----------------------------------------------------------------- guide


@pytest.mark.parametrize("num_iafs", [0, 2])
def test_guide_sites_shapes_masks_and_scales(num_iafs: int) -> None:
    dmm = small_dmm(num_iafs)
    batch = random_batch([4, 2, 3])
    trace = poutine.trace(dmm.guide).get_trace(batch, 0.5)
    assert sample_sites(trace) == [f"z_{t}" for t in range(1, 5)]
    for t in range(4):
        site = trace.nodes[f"z_{t + 1}"]
        assert site["value"].shape == (3, 3) and bool(site["value"].isfinite().all())
        assert site["fn"].batch_shape == (3,) and site["fn"].event_shape == (3,)
        assert torch.equal(site["fn"]._mask, batch.mask[:, t].bool())
        assert site["scale"] == 0.5
        if num_iafs:
            flowed = site["fn"].base_dist
            assert isinstance(flowed, dist.TransformedDistribution)
            assert len(flowed.transforms) == num_iafs


def test_guide_first_step_is_the_combiner_at_the_learned_start() -> None:
    dmm = small_dmm()
    batch = random_batch([4, 2, 3])
    trace = poutine.trace(dmm.guide).get_trace(batch)
    normal = trace.nodes["z_1"]["fn"].base_dist.base_dist
    loc, scale = dmm.combiner(dmm.z_q_0.expand(3, -1), dmm.encode(batch)[:, 0])
    assert torch.allclose(normal.loc, loc) and torch.allclose(normal.scale, scale)


def test_encode_summarises_only_the_future() -> None:
    dmm = small_dmm()
    batch = random_batch([6])
    h = dmm.encode(batch)[0]  # (time, rnn_dim)
    for t in range(6):
        changed = batch.x[0].clone()
        changed[t] = 1 - changed[t]  # flip every note at step t
        h_changed = dmm.encode(make_batch([changed]))[0]
        assert torch.allclose(h_changed[t + 1 :], h[t + 1 :], rtol=1e-12, atol=1e-12)
        assert not torch.allclose(h_changed[t], h[t])


@pytest.mark.parametrize(
    ("guide", "sees_past", "sees_future"),
    [
        ("st-r", False, True),
        ("st-l", True, False),
        ("mf-l", True, False),
        ("st-lr", True, True),
        ("mf-lr", True, True),
    ],
)
def test_each_guide_reads_the_steps_its_name_says(
    guide: str, sees_past: bool, sees_future: bool
) -> None:
    # h_t must depend on x_t always, on x_{<t} only with a forward RNN (l) and
    # on x_{>t} only with a backward RNN (r).
    dmm = small_dmm(guide=guide)
    x = random_batch([6]).x[0]
    h = dmm.encode(make_batch([x]))[0]  # (time, summary)
    t = 3
    changed = x.clone()
    changed[t] = 1 - changed[t]  # flip every note at step t
    h_changed = dmm.encode(make_batch([changed]))[0]

    def same(a: torch.Tensor, b: torch.Tensor) -> bool:
        return torch.allclose(a, b, rtol=1e-12, atol=1e-12)

    assert not same(h_changed[t], h[t])
    assert same(h_changed[t + 1 :], h[t + 1 :]) != sees_past
    assert same(h_changed[:t], h[:t]) != sees_future


def test_mean_field_guides_drop_the_previous_state() -> None:
    dmm = small_dmm(guide="mf-lr")
    assert not hasattr(dmm, "z_q_0") and not hasattr(dmm, "combiner")
    h = dmm.encode(random_batch([4]))[0]  # (time, 2 rnn_dim)
    assert h.shape[-1] == 2 * dmm.config.rnn_dim
    some_state = torch.randn(4, dmm.config.z_dim, dtype=torch.float64)
    assert all(
        torch.equal(a, b)
        for a, b in zip(dmm.guide_step(None, h), dmm.guide_step(some_state, h))
    )


def test_mf_lr_multiplies_the_two_gaussians() -> None:
    # The normalised product of N(loc_1, s_1^2) and N(loc_2, s_2^2): its log
    # density differs from the sum of theirs by a constant in z.
    dmm = small_dmm(guide="mf-lr")
    h = dmm.encode(random_batch([3]))[0, 1]  # (2 rnn_dim,) one step
    loc, scale = dmm.mean_field(h)
    h_l, h_r = h.split(dmm.config.rnn_dim)
    parts = []
    for layer, h_i in zip(dmm.mean_field.hidden_to_loc_scale, (h_l, h_r)):
        loc_i, scale_arg = layer(h_i).chunk(2)
        parts.append(dist.Normal(loc_i, nn.functional.softplus(scale_arg)))
    z = torch.randn(5, dmm.config.z_dim, dtype=torch.float64)
    difference = dist.Normal(loc, scale).log_prob(z) - sum(
        part.log_prob(z) for part in parts
    )  # (5, z_dim): the same row five times
    assert torch.allclose(difference, difference[:1].expand_as(difference))


def test_a_config_without_a_guide_is_the_papers_st_r() -> None:
    values = DMMConfig().to_dict()
    del values["guide"]  # as in checkpoints written before guides were a choice
    assert DMMConfig.from_dict(values).guide == "st-r"
    with pytest.raises(ValueError, match="guide must be one of"):
        DMMConfig(guide="st-x")


def test_encode_of_a_padded_batch_equals_each_sequence_alone() -> None:
    dmm = small_dmm()
    batch = random_batch([5, 2, 4])
    h = dmm.encode(batch)
    for b, length in enumerate(batch.lengths.tolist()):
        alone = dmm.encode(make_batch([batch.x[b, :length]]))[0]
        assert torch.allclose(h[b, :length], alone, rtol=1e-12, atol=1e-12)
        assert torch.equal(h[b, length:], torch.zeros_like(h[b, length:]))


# ------------------------------------------------------ gradients, errors


@pytest.mark.parametrize("num_iafs", [0, 1])
def test_pyro_loss_gradients_reach_every_parameter(num_iafs: int) -> None:
    dmm = small_dmm(num_iafs)
    batch = random_batch([4, 2, 3])
    loss = Trace_ELBO(max_plate_nesting=1).differentiable_loss(
        dmm.model, dmm.guide, batch
    )
    loss.backward()
    for name, parameter in dmm.named_parameters():
        assert parameter.grad is not None, name
        assert bool(parameter.grad.isfinite().all()), name
        assert float(parameter.grad.abs().sum()) > 0, name


@pytest.mark.parametrize("num_iafs", [1, 2])
def test_iaf_guide_gives_a_finite_elbo(num_iafs: int) -> None:
    dmm = small_dmm(num_iafs)
    batch = random_batch([4, 2, 3])
    loss = TraceMeanField_ELBO(max_plate_nesting=1).loss(dmm.model, dmm.guide, batch)
    assert torch.isfinite(torch.tensor(loss))


def test_batch_of_the_wrong_feature_size_is_refused() -> None:
    dmm = small_dmm()
    batch = random_batch([3, 2])
    narrow = Batch(
        batch.x[..., :12], batch.x_reversed[..., :12], batch.mask, batch.lengths
    )
    message = re.escape(
        "batch has feature size 12 per time step, but this model expects input_dim=88"
    )
    for program in (dmm.model, dmm.guide):
        with pytest.raises(ValueError, match=message):
            program(narrow)


def test_bad_batches_are_refused_with_a_clear_message() -> None:
    dmm = small_dmm()
    batch = random_batch([3, 2])
    with pytest.raises(
        TypeError, match="expected a dmm_helpers.data.Batch .* got Tensor"
    ):
        dmm.model(batch.x)
    message = r"batch.x must have shape \(batch, time, 88\); got \(3, 88\)"
    with pytest.raises(ValueError, match=message):
        dmm.model(batch._replace(x=batch.x[0]))
    with pytest.raises(ValueError, match="inconsistent batch"):
        dmm.model(batch._replace(mask=batch.mask[:, :1]))
    with pytest.raises(
        ValueError, match=r"batch.lengths must lie in 1..3 .* got min 3, max 4"
    ):
        dmm.model(batch._replace(lengths=batch.lengths + 1))
    with pytest.raises(ValueError, match="batch.mask disagrees with batch.lengths"):
        dmm.guide(batch._replace(mask=torch.ones_like(batch.mask)))
    with pytest.raises(
        TypeError, match="batch is torch.float32 on cpu but the model's parameters"
    ):
        dmm.guide(random_batch([3, 2], dtype=torch.float32))


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:DeprecationWarning")
def test_tracing_with_torch_jit_is_refused() -> None:
    dmm = small_dmm()
    batch = random_batch([3, 2])
    with pytest.raises(RuntimeError, match="cannot be traced with torch.jit"):
        JitTrace_ELBO(max_plate_nesting=1).loss_and_grads(dmm.model, dmm.guide, batch)


# -------------------------------------------------------------- sampling


def test_generate_draws_binary_rolls_from_the_prior() -> None:
    dmm = small_dmm()
    x, z = dmm.generate(num_sequences=4, num_steps=6)
    assert x.shape == (4, 6, 88) and z.shape == (4, 6, 3)
    assert x.dtype == z.dtype == torch.float64
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="num_steps must be a positive int, got 0"):
        dmm.generate(2, 0)


def test_generate_follows_the_transition() -> None:
    dmm = small_dmm()
    with torch.no_grad():
        dmm.transition.proposal_to_scale.bias.fill_(
            -50.0
        )  # scale ~ 1e-22: deterministic
    _, z = dmm.generate(num_sequences=1, num_steps=3)
    z_prev = dmm.z_0
    for t in range(3):
        loc, _ = dmm.transition(z_prev)
        assert torch.allclose(z[0, t], loc, atol=1e-12)
        z_prev = z[0, t]


# --------------------------------------------------- linear Gaussian DMM


def linear_gaussian_dmm() -> LinearGaussianDMM:
    torch.manual_seed(0)
    A = torch.tensor([[0.9, 0.2], [-0.1, 0.8]], dtype=torch.float64)
    C = torch.tensor([[1.0, 0.5], [0.0, 1.0], [0.3, -0.7]], dtype=torch.float64)
    return LinearGaussianDMM(
        A,
        C,
        q_scale=torch.tensor([0.5, 0.3], dtype=torch.float64),
        r_scale=torch.tensor([0.4, 0.6, 0.5], dtype=torch.float64),
        z_0=torch.tensor([1.0, -1.0], dtype=torch.float64),
        rnn_dim=8,
    )


def test_linear_gaussian_dmm_is_the_lgssm_it_reports() -> None:
    dmm = linear_gaussian_dmm()
    params = dmm.lgssm_params()
    A, C = params["A"], params["C"]
    assert torch.equal(
        params["mu0"], A @ torch.tensor([1.0, -1.0], dtype=torch.float64)
    )
    assert torch.equal(params["P0"], params["Q"])

    def diag(*values: float) -> torch.Tensor:
        return torch.diag(torch.tensor(values, dtype=torch.float64))

    assert torch.allclose(params["Q"], diag(0.25, 0.09))
    assert torch.allclose(params["R"], diag(0.16, 0.36, 0.25))
    z = torch.randn(5, 2, dtype=torch.float64)
    loc, scale = dmm.transition(z)
    assert torch.allclose(loc, z @ A.T)
    assert torch.allclose(scale**2, params["Q"].diagonal().expand(5, 2))
    emission = dmm.emission_dist(z)
    assert isinstance(emission.base_dist, dist.Normal)
    assert torch.allclose(emission.mean, z @ C.T)


def test_linear_gaussian_dmm_learns_only_its_guide() -> None:
    dmm = linear_gaussian_dmm()
    assert dmm.z_q_0.dtype == torch.float64  # the module took A's dtype
    trainable = {name.split(".")[0] for name, _ in dmm.named_parameters()}
    assert trainable == {"combiner", "rnn", "z_q_0"}
    assert {"z_0", "transition.matrix", "emitter.matrix"} <= {
        n for n, _ in dmm.named_buffers()
    }


@pytest.mark.parametrize(
    ("which", "message"),
    [
        ("A", r"A must be a square 2-D tensor \(z_dim, z_dim\); got \(2, 3\)"),
        ("C", r"C must be a 2-D tensor \(obs_dim, 2\); got \(3, 3\)"),
        ("z_0", r"z_0 must be a tensor of shape \(2,\); got \(3,\)"),
        ("q_scale", r"q_scale must be a tensor of shape \(2,\); got \(3,\)"),
        ("r_scale", r"r_scale must be a tensor of shape \(3,\); got \(2,\)"),
    ],
)
def test_linear_gaussian_dmm_rejects_mismatched_shapes(
    which: str, message: str
) -> None:
    arguments = {
        "A": torch.eye(2),
        "C": torch.ones(3, 2),
        "q_scale": torch.ones(2),
        "r_scale": torch.ones(3),
        "z_0": torch.zeros(2),
    }
    arguments[which] = {
        "A": torch.ones(2, 3),
        "C": torch.ones(3, 3),
        "z_0": torch.zeros(3),
        "q_scale": torch.ones(3),
        "r_scale": torch.ones(2),
    }[which]
    with pytest.raises(ValueError, match=message):
        LinearGaussianDMM(**arguments)


def test_dmm_moves_with_to() -> None:
    dmm = small_dmm().float()
    assert all(p.dtype == torch.float32 for p in dmm.parameters())
    assert isinstance(dmm.rnn.input_to_hidden, nn.ModuleList)
    trace = poutine.trace(dmm.guide).get_trace(random_batch([3], dtype=torch.float32))
    assert trace.nodes["z_1"]["value"].dtype == torch.float32


def test_the_authors_starts_are_fixed_and_their_prior_standard() -> None:
    dmm = small_dmm(z1_prior="standard", guide_start="zero")
    names = {name for name, _ in dmm.named_parameters()}
    assert "z_0" not in names and "z_q_0" not in names  # buffers, never trained
    assert torch.equal(dmm.z_q_0, torch.zeros(3, dtype=torch.float64))
    batch = random_batch([4, 2, 3])
    trace = poutine.trace(dmm.model).get_trace(batch)
    first = trace.nodes["z_1"]["fn"].base_dist.base_dist  # p(z_1), unmasked
    assert torch.equal(first.loc, torch.zeros_like(first.loc))
    assert torch.equal(first.scale, torch.ones_like(first.scale))
    second = trace.nodes["z_2"]["fn"].base_dist.base_dist  # the transition
    loc, scale = dmm.transition(trace.nodes["z_1"]["value"])
    assert torch.allclose(second.loc, loc) and torch.allclose(second.scale, scale)
    # Sampling starts the same way: at temperature 0, z_1 is the prior's mean.
    sample = dmm.sample_forward(dmm.z_0.expand(2, -1), 3, 0.0, start=True)
    assert torch.equal(sample.z[:, 0], torch.zeros(2, 3, dtype=torch.float64))


@pytest.mark.parametrize("guide", ["st-r", "mf-l"])
def test_softplus_gives_the_variance_when_asked(guide: str) -> None:
    std, variance = (small_dmm(guide=guide, scale=s) for s in ("std", "variance"))
    z = torch.randn(5, 3, dtype=torch.float64)
    (_, scale_std), (_, scale_var) = std.transition(z), variance.transition(z)
    assert torch.allclose(scale_var.square(), scale_std)  # same weights, same seed
    h = std.encode(random_batch([4]))[0]
    (_, q_std), (_, q_var) = std.guide_step(z[:4], h), variance.guide_step(z[:4], h)
    assert torch.allclose(q_var.square(), q_std)


@pytest.mark.parametrize(
    ("guide", "sees_past", "sees_future"),
    [("st-r", False, True), ("st-l", True, False), ("mf-lr", True, True)],
)
def test_the_lstm_reader_reads_the_steps_its_guide_says(
    guide: str, sees_past: bool, sees_future: bool
) -> None:
    dmm = small_dmm(guide=guide, rnn_type="lstm").eval()
    x = random_batch([6]).x[0]
    h = dmm.encode(make_batch([x]))[0]
    changed = x.clone()
    changed[3] = 1 - changed[3]
    h_changed = dmm.encode(make_batch([changed]))[0]

    def same(a: torch.Tensor, b: torch.Tensor) -> bool:
        return torch.allclose(a, b, rtol=1e-12, atol=1e-12)

    assert not same(h_changed[3], h[3])
    assert same(h_changed[4:], h[4:]) != sees_past
    assert same(h_changed[:3], h[:3]) != sees_future
    # A padded batch reads each sequence as it reads it alone.
    batch = random_batch([5, 2, 4])
    padded = dmm.encode(batch)
    for b, length in enumerate(batch.lengths.tolist()):
        alone = dmm.encode(make_batch([batch.x[b, :length]]))[0]
        assert torch.allclose(padded[b, :length], alone, rtol=1e-10, atol=1e-12)


def test_the_lstm_starts_from_the_authors_state_and_reads_through_a_relu_layer():
    dmm = small_dmm(rnn_type="lstm").eval()
    reader = dmm.rnn
    x = random_batch([1]).x  # one step: h_1 = LSTM(relu(W x + b), h = 0, c = 1)
    with torch.no_grad():
        inputs = torch.relu(reader.input_layer(x))
        zeros = torch.zeros(1, 1, reader.lstm.hidden_size, dtype=x.dtype)
        expected, _ = reader.lstm(inputs, (zeros, torch.ones_like(zeros)))
        assert torch.allclose(dmm.encode(make_batch([x[0]])), expected)


def test_dropout_on_the_readers_outputs_acts_only_while_training() -> None:
    dmm = small_dmm(rnn_output_dropout=0.5)
    batch = random_batch([6, 3])
    with torch.no_grad():
        dmm.eval()
        first, second = dmm.encode(batch), dmm.encode(batch)
        assert torch.equal(first, second)
        dmm.train()
        dropped = dmm.encode(batch)
    real = batch.mask.bool()
    active = first[real] != 0  # the ReLU RNN's zeros stay zero either way
    zeroed = (dropped[real] == 0) & active
    assert 0.3 < zeroed.sum() / active.sum() < 0.7  # about half, the rest doubled
    kept = ~zeroed & active
    assert torch.allclose(dropped[real][kept], 2 * first[real][kept])


def test_uniform_initialisation_keeps_the_identity_of_the_transition() -> None:
    dmm = small_dmm(init="uniform", rnn_type="lstm")
    for name, parameter in dmm.named_parameters():
        if name.startswith("transition.linear_loc"):
            continue
        if name in ("z_0", "z_q_0"):
            continue
        assert float(parameter.detach().abs().max()) <= 0.1, name
    assert torch.equal(
        dmm.transition.linear_loc.weight, torch.eye(3, dtype=torch.float64)
    )
    with pytest.raises(ValueError, match="one layer"):
        DMMConfig(rnn_type="lstm", rnn_layers=2)
