"""MLAL's attention: starts as the plain model, learns, and never leaks the query set."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from attnopt.adapt import adapt, query_logits
from attnopt.config import Config
from attnopt.models.build import FewShotModel, build_model
from attnopt.models.learner import Conv4Learner
from attnopt.models.metalearner import AttentionMetaLearner, chunk_layout

VARIANTS = ("meta", "learner", "both")
EPOCHS, BATCH = 3, 10


def make(attention: str, seed: int = 0, **overrides) -> FewShotModel:
    torch.manual_seed(seed)
    config = Config(
        attention=attention, image_size=16, n_class=5, hidden_size=8, attn_chunk=16, **overrides
    )
    return build_model(config, in_channels=3)


def copy_plain_into(plain: FewShotModel, other: FewShotModel) -> None:
    """Give ``other`` the plain model's meta-parameters wherever the two share them."""
    p = plain.metalearner.num_params
    other_params = dict(other.named_parameters())
    with torch.no_grad():
        for name, value in plain.named_parameters():
            if name == "metalearner.c_init":
                other_params[name][:p] = value
            else:
                other_params[name].copy_(value)


@pytest.fixture
def episode() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    support_x = torch.randn(10, 3, 16, 16, generator=g)
    query_x = torch.randn(15, 3, 16, 16, generator=g)
    return support_x, torch.arange(5).repeat(2), query_x


def trajectory(model: FewShotModel, support_x, support_y) -> list[torch.Tensor]:
    steps: list[torch.Tensor] = []
    adapt(
        model.learner,
        model.metalearner,
        support_x[None],
        support_y[None],
        EPOCHS,
        BATCH,
        on_step=lambda t, theta, state: steps.append(theta[0].detach().clone()),
    )
    return steps


@pytest.mark.parametrize("attention", VARIANTS)
def test_untrained_attention_is_exactly_the_plain_model(attention: str, episode) -> None:
    support_x, support_y, query_x = episode
    plain, other = make("none"), make(attention, seed=5)
    copy_plain_into(plain, other)
    p = plain.metalearner.num_params
    plain_steps = trajectory(plain, support_x, support_y)
    other_steps = trajectory(other, support_x, support_y)
    assert len(plain_steps) == len(other_steps) == EPOCHS
    for a, b in zip(plain_steps, other_steps, strict=True):
        assert torch.equal(a, b[:p])
    logits_plain = query_logits(
        plain.learner, plain_steps[-1][None], support_x[None], query_x[None]
    )[0]
    logits_other = query_logits(
        other.learner, other_steps[-1][None], support_x[None], query_x[None]
    )[0]
    torch.testing.assert_close(logits_plain, logits_other, rtol=0, atol=1e-6)


def test_meta_attention_weights_are_distributions(episode) -> None:
    support_x, support_y, _ = episode
    model = make("meta")
    states = []
    adapt(
        model.learner,
        model.metalearner,
        support_x[None],
        support_y[None],
        1,
        BATCH,
        on_step=lambda t, theta, state: states.append(state),
    )
    weights = states[-1].attention[0]  # (G, G) of the one task
    g = model.metalearner.num_chunks
    assert weights.shape == (g, g)
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(g))


def test_cross_attention_weights_are_distributions_over_support_positions(episode) -> None:
    support_x, _, query_x = episode
    model = make("learner")
    theta = model.metalearner.c_init.detach()
    weights = model.learner.cross_attention_weights(theta, torch.cat((support_x, query_x)), 10)
    assert weights.shape == (25, 4, 10, 4)  # 16x16 images -> 2x2 positions after block 3
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum((2, 3)), torch.ones(25, 4))


def test_chunks_never_span_two_tensors() -> None:
    sizes = [5, 64, 65, 1, 130]
    layout = chunk_layout(sizes, 64)
    assert layout == [(0, 5), (1, 0), (1, 1), (0, 1), (2, 2)]
    for size, (full, rest) in zip(sizes, layout, strict=True):
        assert full * 64 + rest == size and rest < 64


def test_chunk_tokens_are_chunk_means_and_broadcast_back() -> None:
    meta = AttentionMetaLearner(torch.zeros(265), [5, 64, 65, 1, 130], hidden_size=3, chunk=64)
    assert meta.tensor_of_chunk.tolist() == [0, 1, 2, 2, 3, 4, 4, 4]
    h = torch.randn(3, 265)  # hidden-major: (hidden, P)
    means = meta._chunk_means(h)
    bounds = [0, 5, 69, 133, 134, 135, 199, 263, 265]
    expected = torch.stack([h[:, a:b].mean(1) for a, b in zip(bounds, bounds[1:], strict=False)])
    torch.testing.assert_close(means, expected)
    back = meta._broadcast(expected)
    assert back.shape == (3, 265)
    for g, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False)):
        assert torch.equal(back[:, a:b], expected[g].unsqueeze(1).expand(3, b - a))
    assert torch.equal(meta._chunk_embeddings(), meta.tensor_embedding[meta.tensor_of_chunk])


def test_meta_step_backward_has_no_scatter() -> None:
    """No op of the step's backward is a scatter-add (the backward of an index): torch.compile
    runs those with parallel atomic adds, which sum in a different order from run to run."""
    meta = AttentionMetaLearner(torch.zeros(265), [5, 64, 65, 1, 130], hidden_size=3, chunk=64)
    theta, _ = meta.step(torch.randn(2, 265), torch.rand(2), meta.c_init.repeat(2, 1),
                         meta.initial_state((2,)))  # fmt: skip
    seen, todo = set(), [theta.grad_fn]
    while todo:
        node = todo.pop()
        if node is not None and node not in seen:
            seen.add(node)
            todo += [next_fn for next_fn, _ in node.next_functions]
    names = {node.name() for node in seen}
    assert "SliceBackward0" in names  # the walk reached the chunk tokens
    assert not [n for n in names if "Index" in n or "Scatter" in n or "Gather" in n], names


def meta_update(model: FewShotModel, optimizer, episode) -> dict[str, torch.Tensor]:
    support_x, support_y, query_x = episode
    theta = adapt(
        model.learner, model.metalearner, support_x[None], support_y[None], EPOCHS, BATCH
    )[0]
    loss = F.cross_entropy(
        query_logits(model.learner, theta[None], support_x[None], query_x[None])[0],
        torch.arange(5).repeat(3),
    )
    optimizer.zero_grad()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    optimizer.step()
    return grads


def test_meta_gradient_reaches_every_attention_parameter(episode) -> None:
    model = make("both")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    attention_theta = slice(
        model.learner.specs[-6].offset, model.learner.num_params
    )  # LN, W_Q, W_K, W_V, W_O
    first = meta_update(model, optimizer, episode)
    # The zero-initialised output projections get a gradient at once ...
    assert first["metalearner.attn_out.weight"].abs().sum() > 0
    assert first["learner.attn_scale"].abs().sum() > 0
    # ... and, once they are non-zero, so does everything behind them.
    second = meta_update(model, optimizer, episode)
    for name in ("attn_query", "attn_key", "attn_value", "attn_out"):
        g = second[f"metalearner.{name}.weight"]
        assert torch.isfinite(g).all() and g.abs().sum() > 0, name
    assert second["metalearner.tensor_embedding"].abs().sum() > 0
    assert second["metalearner.c_init"][attention_theta].abs().sum() > 0
    after = dict(model.named_parameters())
    for name in (
        "metalearner.attn_query.weight",
        "metalearner.attn_out.weight",
        "metalearner.tensor_embedding",
        "learner.attn_scale",
    ):
        assert not torch.equal(before[name], after[name]), name
    assert not torch.equal(
        before["metalearner.c_init"][attention_theta], after["metalearner.c_init"][attention_theta]
    )


def test_attention_meta_learner_gradcheck_in_float64() -> None:
    torch.manual_seed(0)
    learner = Conv4Learner(1, 2, 16, width=2)
    sizes = [s.numel for s in learner.specs]
    meta = AttentionMetaLearner(learner.init_theta(), sizes, hidden_size=3, chunk=8, attn_dim=2)
    meta = meta.double()
    with torch.no_grad():
        meta.attn_out.weight.normal_()  # away from zero so every attention weight matters
    x = torch.randn(4, 1, 16, 16, dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 1])
    grads = [torch.randn(learner.num_params, dtype=torch.float64) * 0.1 for _ in range(2)]
    losses = [torch.tensor(0.7, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64)]
    names = [n for n, _ in meta.named_parameters()]

    def run(*params: torch.Tensor) -> torch.Tensor:
        values = dict(zip(names, params, strict=True))
        theta, state = values["c_init"], meta.initial_state()
        for loss, grad in zip(losses, grads, strict=True):
            theta, state = functional_call(meta, values, (grad, loss, theta, state))
        return F.cross_entropy(learner(theta, x), y)

    inputs = tuple(p.detach().clone().requires_grad_() for p in meta.parameters())
    assert torch.autograd.gradcheck(run, inputs, eps=1e-6, atol=1e-5, fast_mode=True)


def test_cross_attention_learner_gradcheck_in_float64() -> None:
    torch.manual_seed(0)
    learner = Conv4Learner(1, 2, 16, width=2, cross_attention=True).double()
    theta = learner.init_theta().double().requires_grad_()
    scale = torch.tensor([0.5, -1.0], dtype=torch.float64, requires_grad=True)
    x = torch.randn(5, 1, 16, 16, dtype=torch.float64)

    def run(theta: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return functional_call(learner, {"attn_scale": scale}, (theta, x, 3))

    assert torch.autograd.gradcheck(run, (theta, scale), eps=1e-6, atol=1e-5)


@pytest.fixture
def trained_both(episode) -> FewShotModel:
    """A 'both' model whose attention is switched on (non-zero output projections)."""
    model = make("both")
    with torch.no_grad():
        model.learner.attn_scale.fill_(1.0)
        model.metalearner.attn_out.weight.normal_(0, 0.5)
    return model


def test_adaptation_sees_the_support_set_only(trained_both: FewShotModel, episode) -> None:
    """θ_T is a function of the support set: whatever the query set, the same θ_T."""
    support_x, support_y, query_x = episode
    model = trained_both
    thetas = []
    for queries in (query_x, query_x.flip(0), torch.randn_like(query_x)):
        theta = adapt(
            model.learner, model.metalearner, support_x[None], support_y[None], EPOCHS, BATCH
        )[0]
        # the query set is used after
        query_logits(model.learner, theta[None], support_x[None], queries[None])
        thetas.append(theta.detach())
    assert torch.equal(thetas[0], thetas[1]) and torch.equal(thetas[0], thetas[2])


def test_a_query_prediction_does_not_depend_on_the_other_queries(
    trained_both: FewShotModel, episode
) -> None:
    support_x, support_y, query_x = episode
    model = trained_both
    with torch.no_grad():
        theta = adapt(
            model.learner, model.metalearner, support_x[None], support_y[None], EPOCHS, BATCH
        )[0]
        together = query_logits(model.learner, theta[None], support_x[None], query_x[None])[0]
        alone = query_logits(model.learner, theta[None], support_x[None], query_x[:1][None])[0]
        others_replaced = query_logits(
            model.learner,
            theta[None],
            support_x[None],
            torch.cat((query_x[:1], torch.randn(9, 3, 16, 16)))[None],
        )[0]
        permuted = query_logits(
            model.learner,
            theta[None],
            support_x[None],
            query_x.flip(0)[None],
        )[0]
    torch.testing.assert_close(together[:1], alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(together[:1], others_replaced[:1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(together.flip(0), permuted, rtol=1e-5, atol=1e-5)
    # The attention is live: the support set does change the prediction.
    changed = query_logits(
        model.learner, theta[None], (support_x.flip(0) * 0.5)[None], query_x[:1][None]
    )[0]
    assert not torch.allclose(alone, changed, atol=1e-4)


@pytest.mark.parametrize("attention", ("none", *VARIANTS))
def test_every_variant_meta_learns_a_fixed_task_on_1_shot_and_5_shot(attention: str) -> None:
    """A few meta-updates on one task lower its query loss, through finite meta-gradients."""
    for shot in (1, 5):
        torch.manual_seed(0)
        model = make(attention, n_shot=shot)
        prototypes = torch.randn(5, 3, 16, 16)
        support_x = prototypes.repeat(shot, 1, 1, 1) + 0.3 * torch.randn(5 * shot, 3, 16, 16)
        query_x = prototypes.repeat(2, 1, 1, 1) + 0.3 * torch.randn(10, 3, 16, 16)
        support_y, query_y = torch.arange(5).repeat(shot), torch.arange(5).repeat(2)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        losses = []
        for _ in range(5):
            theta = adapt(
                model.learner, model.metalearner, support_x[None], support_y[None], 2, 5 * shot
            )[0]
            loss = F.cross_entropy(
                query_logits(model.learner, theta[None], support_x[None], query_x[None])[0], query_y
            )
            optimizer.zero_grad()
            loss.backward()
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            assert grads and all(torch.isfinite(g).all() for g in grads)
            optimizer.step()
            losses.append(loss.item())
        assert losses[-1] < 0.9 * losses[0], (shot, losses)


def test_config_records_the_variant() -> None:
    assert dataclasses.asdict(Config())["attention"] == "both"


def test_attention_meta_parameters_take_a_scaled_learning_rate() -> None:
    model = make("both")
    plain, attention = model.param_groups(lr=1e-3, attn_lr_scale=0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert attention["lr"] == pytest.approx(1e-4) and plain["lr"] == 1e-3
    assert sorted(names[id(p)] for p in attention["params"]) == [
        "learner.attn_scale",
        "metalearner.attn_key.weight",
        "metalearner.attn_out.weight",
        "metalearner.attn_query.weight",
        "metalearner.attn_value.weight",
        "metalearner.tensor_embedding",
    ]
    assert len(plain["params"]) + len(attention["params"]) == len(list(model.parameters()))
    assert len(make("none").param_groups(1e-3, 0.1)) == 1


def test_c_init_takes_a_scaled_learning_rate_in_a_group_of_its_own() -> None:
    model = make("both")
    plain, init, attention = model.param_groups(lr=1e-3, attn_lr_scale=2.0, init_lr_scale=0.1)
    assert [g["lr"] for g in (plain, init, attention)] == pytest.approx([1e-3, 1e-4, 2e-3])
    assert init["params"] == [model.metalearner.c_init]
    assert all(p is not model.metalearner.c_init for p in plain["params"] + attention["params"])
    assert len(model.param_groups(1e-3, 2.0, init_lr_scale=1.0)) == 2  # as before: no group


@pytest.mark.parametrize("block", (1, 2, 4))
def test_cross_attention_after_any_block_starts_as_the_plain_model(block: int, episode) -> None:
    support_x, support_y, query_x = episode
    plain, other = make("none"), make("learner", seed=5, attn_block=block)
    copy_plain_into(plain, other)
    p = plain.metalearner.num_params
    for a, b in zip(
        trajectory(plain, support_x, support_y),
        trajectory(other, support_x, support_y),
        strict=True,
    ):
        assert torch.equal(a, b[:p])
    weights = other.learner.cross_attention_weights(
        other.metalearner.c_init, torch.cat((support_x, query_x)), 10
    )
    torch.testing.assert_close(weights.sum((-1, -2)), torch.ones(weights.shape[:2]))


@pytest.mark.parametrize(("heads", "feeds"), [(2, "gates"), (1, "lstm"), (4, "both")])
def test_untrained_attention_of_any_heads_and_feeds_is_the_plain_model(
    heads: int, feeds: str, episode
) -> None:
    support_x, support_y, _ = episode
    plain = make("none")
    other = make("both", seed=5, attn_heads=heads, attn_feeds=feeds)
    copy_plain_into(plain, other)
    p = plain.metalearner.num_params
    for a, b in zip(
        trajectory(plain, support_x, support_y),
        trajectory(other, support_x, support_y),
        strict=True,
    ):
        assert torch.equal(a, b[:p])


def test_each_head_attends_on_its_own_slice_of_queries_keys_and_values() -> None:
    torch.manual_seed(0)
    meta = AttentionMetaLearner(torch.randn(100), [60, 40], hidden_size=8, chunk=16, heads=2)
    torch.nn.init.normal_(meta.attn_out.weight)
    h = torch.randn(8, 100)  # hidden-major (H, P)
    ctx, weights = meta.context(h)
    tokens = meta._chunk_means(h) + meta._chunk_embeddings()
    parts, maps = [], []
    for j in range(2):
        rows = slice(16 * j, 16 * (j + 1))
        q, k, v = (
            w.weight[rows] @ tokens.T for w in (meta.attn_query, meta.attn_key, meta.attn_value)
        )
        a = torch.softmax(q.T @ k / 4.0, dim=-1)  # √16 = 4
        parts.append(a @ v.T)
        maps.append(a)
    expected = h + meta._broadcast(meta.attn_out(torch.cat(parts, dim=-1)))
    torch.testing.assert_close(ctx, expected)
    torch.testing.assert_close(weights, (maps[0] + maps[1]) / 2)  # shown: the heads' mean


@pytest.mark.parametrize("feeds", ("gates", "lstm", "both"))
def test_the_attention_context_feeds_what_attn_feeds_says(feeds: str) -> None:
    torch.manual_seed(0)
    meta = AttentionMetaLearner(torch.randn(100), [60, 40], hidden_size=8, chunk=16)
    meta.feeds = feeds
    theta, grad, loss = torch.randn(1, 100), torch.randn(1, 100), torch.tensor([1.3])
    state = meta.initial_state((1,))
    before_theta, before = meta.step(grad, loss, theta, state)  # W_O = 0: no context
    torch.nn.init.normal_(meta.attn_out.weight)
    after_theta, after = meta.step(grad, loss, theta, state)
    assert torch.equal(before_theta, after_theta) == (feeds == "lstm")  # the gates read h̃
    assert torch.equal(before.h, after.h) == (feeds == "gates")  # the LSTM carries h̃
