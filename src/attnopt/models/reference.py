"""The method written out plainly: a reference for tests, never used for speed.

It reads the parameters of a :class:`~attnopt.models.build.FewShotModel` (c_I, the LSTM, the
gates, the attention weights, the learner's γ and θ's layout ``learner.specs``) and computes
the whole meta-objective again in the most direct way: one task at a time, one coordinate per
row of the meta-learner's LSTM, ``torch.func.grad`` for the inner gradient. The engine
(:mod:`attnopt.adapt`, :mod:`attnopt.objective`) must agree with it
(tests/unit/test_reference.py). Where each equation lives (DESIGN.md section 2):

- preprocessing of L_t and ∇_t, p = 10 ............................ :func:`preprocess`
- the LSTM cell, the gates f_t, i_t and θ_t = f_t ⊙ θ_{t-1} − i_t ⊙ ∇_t  :func:`meta_step`
- the attention-LSTM's tokens, softmax(QKᵀ/√d)V and h̃ = h + W_O·ctx ... :func:`meta_context`
- the learner: Conv-4 / ResNet-12 blocks, BatchNorm, the head ....... :func:`learner_logits`
- MLAL's cross-attention y = x + γ ⊙ W_O·softmax(q kᵀ/√d) v ........... :func:`cross_attention`
- which coordinates ``--adapt`` updates ............................ :func:`adapted_names`
- L_t and ∇_t at a detached θ (first-order) ........................ :func:`support_loss_and_grad`
- the inner loop θ_0 = c_I, ..., θ_T ................................ :func:`adapt_task`
- the query loss averaged over the meta-batch ...................... :func:`reference_episode_loss`
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # the reference reads the model's parameters, never the engine's code
    from attnopt.data.episodes import Episode
    from attnopt.models.build import FewShotModel

P = 10.0  # the preprocessing's p
LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default
LEAKY_SLOPE = 0.1  # ResNet-12's LeakyReLU


def preprocess(v: torch.Tensor) -> torch.Tensor:
    """(n,) -> (n, 2): (log|v| / p, sign v) if |v| >= e^-p, else (-1, e^p · v)."""
    big = v.abs() >= math.exp(-P)
    safe = torch.where(big, v.abs(), torch.ones_like(v))
    first = torch.where(big, torch.log(safe) / P, -torch.ones_like(v))
    second = torch.where(big, torch.sign(v), math.exp(P) * v)
    return torch.stack((first, second), dim=1)


# ----- θ's layout -----------------------------------------------------------------------------


def named(model: FewShotModel, theta: torch.Tensor) -> dict[str, torch.Tensor]:
    """One task's θ (P,) as named tensors, from the learner's specs (name, shape, offset)."""
    return {
        s.name: theta[s.offset : s.offset + math.prod(s.shape)].view(s.shape)
        for s in model.learner.specs
    }


def adapted_names(model: FewShotModel) -> list[str]:
    """The tensors that ``--adapt`` lets the meta-learner update, in θ's order.

    all: every tensor; last: the last block, the head and the cross-attention; head: the head
    and the cross-attention.
    """
    names = [s.name for s in model.learner.specs]
    stage = {name: name.split(".")[0] for name in names}  # "block2", "head", "attn"
    mode = model.learner.adapt
    if mode == "all":
        return names
    keep = {"head", "attn"}
    if mode == "last":
        keep.add(
            max((s for s in stage.values() if s.startswith("block")), key=lambda s: int(s[5:]))
        )
    return [name for name in names if stage[name] in keep]


def adapted_index(model: FewShotModel) -> tuple[torch.Tensor, list[int]]:
    """The positions of the adapted coordinates θ_a inside θ (P_a,), and each adapted tensor's
    size (in θ_a's order)."""
    chosen = set(adapted_names(model))
    specs = [s for s in model.learner.specs if s.name in chosen]
    sizes = [math.prod(s.shape) for s in specs]
    ranges = [torch.arange(s.offset, s.offset + n) for s, n in zip(specs, sizes, strict=True)]
    return torch.cat(ranges), sizes


# ----- the learner ----------------------------------------------------------------------------


def batch_norm(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, n_support: int, bn: str, eps: float
) -> torch.Tensor:
    """(n, C, H, W) -> the same: every image normalised with the first ``n_support`` images'
    statistics (bn="support"), or support and query images each with their own
    ("transductive"). Biased variance, as training-mode BatchNorm."""

    def normalise(part: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        mean = stats.mean((0, 2, 3), keepdim=True)
        var = ((stats - mean) ** 2).mean((0, 2, 3), keepdim=True)
        return (part - mean) / torch.sqrt(var + eps) * w.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)

    support, query = x[:n_support], x[n_support:]
    if bn == "transductive" and len(query):
        return torch.cat((normalise(support, support), normalise(query, query)))
    return normalise(x, support)


def layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """LN over the last dimension (channels) with affine w, b."""
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + LAYER_NORM_EPS) * w + b


def cross_attention(
    p: dict[str, torch.Tensor], gamma: torch.Tensor, x: torch.Tensor, n_support: int
) -> torch.Tensor:
    """MLAL's base-learner attention on one task's feature maps x (n, C, h, w).

    Tokens are every image's positions; queries come from all of them, keys and values from
    the support images' (the first ``n_support``) only.
    """
    n, c, height, width = x.shape
    tokens = x.permute(0, 2, 3, 1).reshape(n * height * width, c)  # (T, C), image by image
    normed = layer_norm(tokens, p["attn.norm.weight"], p["attn.norm.bias"])  # LN(x)
    support = normed[: n_support * height * width]  # LN(support features)
    q = normed @ p["attn.query.weight"].T
    k = support @ p["attn.key.weight"].T
    v = support @ p["attn.value.weight"].T
    attended = torch.softmax(q @ k.T / math.sqrt(c), dim=-1) @ v  # softmax(q kᵀ/√d) v
    y = tokens + gamma * (attended @ p["attn.out.weight"].T)  # y = x + γ ⊙ W_O·Attn
    return y.view(n, height, width, c).permute(0, 3, 1, 2)


def conv4_block(
    p: dict[str, torch.Tensor], b: int, x: torch.Tensor, n_support: int, bn: str, eps: float
) -> torch.Tensor:
    """conv 3x3 (padding 1) -> BatchNorm -> ReLU -> max-pool 2."""
    x = F.conv2d(x, p[f"block{b}.conv.weight"], p[f"block{b}.conv.bias"], padding=1)
    x = batch_norm(x, p[f"block{b}.bn.weight"], p[f"block{b}.bn.bias"], n_support, bn, eps)
    return F.max_pool2d(F.relu(x), 2)


def resnet12_block(
    p: dict[str, torch.Tensor], b: int, x: torch.Tensor, n_support: int, bn: str, eps: float
) -> torch.Tensor:
    """Three conv 3x3 + BatchNorm (LeakyReLU(0.1) after the first two), plus a 1x1 conv +
    BatchNorm shortcut; LeakyReLU after the sum, then max-pool 2. No conv biases."""

    def conv_bn(inp: torch.Tensor, conv: str, norm: str, padding: int) -> torch.Tensor:
        out = F.conv2d(inp, p[f"block{b}.{conv}.weight"], padding=padding)
        w, bias = p[f"block{b}.{norm}.weight"], p[f"block{b}.{norm}.bias"]
        return batch_norm(out, w, bias, n_support, bn, eps)

    out = F.leaky_relu(conv_bn(x, "conv1", "bn1", 1), LEAKY_SLOPE)
    out = F.leaky_relu(conv_bn(out, "conv2", "bn2", 1), LEAKY_SLOPE)
    out = conv_bn(out, "conv3", "bn3", 1) + conv_bn(x, "shortcut.conv", "shortcut.bn", 0)
    return F.max_pool2d(F.leaky_relu(out, LEAKY_SLOPE), 2)


def learner_logits(
    model: FewShotModel, theta: torch.Tensor, x: torch.Tensor, n_support: int, bn: str
) -> torch.Tensor:
    """One task's logits (n, N) for images x (n, C, H, W) under θ (P,); the first
    ``n_support`` images are its support set."""
    learner, p = model.learner, named(model, theta)
    resnet = "block0.conv1.weight" in p
    block = resnet12_block if resnet else conv4_block
    n_blocks = 1 + max(int(name.split(".")[0][5:]) for name in p if name.startswith("block"))
    for b in range(n_blocks):
        x = block(p, b, x, n_support, bn, learner.bn_eps)
        if learner.cross_attention and b == learner.attn_block - 1:
            x = cross_attention(p, learner.attn_scale, x, n_support)
    features = x.mean((2, 3)) if resnet else x.flatten(1)  # global average pool / flatten
    return features @ p["head.weight"].T + p["head.bias"]


# ----- the meta-learner -----------------------------------------------------------------------


def chunks(sizes: list[int], chunk: int) -> list[tuple[int, int, int]]:
    """(start, stop, tensor) of every chunk of θ_a: each tensor cut into runs of at most
    ``chunk`` consecutive coordinates; no chunk spans two tensors."""
    out, offset = [], 0
    for t, size in enumerate(sizes):
        for start in range(0, size, chunk):
            out.append((offset + start, offset + min(start + chunk, size), t))
        offset += size
    return out


def meta_context(model: FewShotModel, h: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """h̃_t (rows, H) of the attention-LSTM from h_t (rows, H); the plain model's is h_t."""
    ml = model.metalearner
    if not hasattr(ml, "attn_out"):
        return h
    layout = chunks(sizes, ml.chunk)
    chunk_of_row = torch.repeat_interleave(
        torch.arange(len(layout)), torch.tensor([b - a for a, b, _ in layout])
    )  # (rows,): the chunk g of every coordinate
    tensor_of_chunk = torch.tensor([t for _, _, t in layout])
    counts = torch.bincount(chunk_of_row).to(h.dtype).unsqueeze(1)
    means = h.new_zeros(len(layout), h.shape[1]).index_add(0, chunk_of_row, h) / counts
    # token_g = mean of h_t over chunk g + the embedding of its tensor
    tokens = means + ml.tensor_embedding[tensor_of_chunk]
    q, k, v = (tokens @ w.weight.T for w in (ml.attn_query, ml.attn_key, ml.attn_value))
    heads = ml.heads
    d = q.shape[1] // heads
    per_head = []
    for j in range(heads):  # each head: softmax(Q Kᵀ / √d) V on its d columns
        cols = slice(j * d, (j + 1) * d)
        weights = torch.softmax(q[:, cols] @ k[:, cols].T / math.sqrt(d), dim=-1)
        per_head.append(weights @ v[:, cols])
    ctx = torch.cat(per_head, dim=1) @ ml.attn_out.weight.T  # W_O · ctx_g, (G, H)
    return h + ctx[chunk_of_row]  # h̃_t = h_t + W_O·ctx_g for every coordinate of chunk g


def meta_step(
    model: FewShotModel,
    grad: torch.Tensor,
    loss: torch.Tensor,
    theta: torch.Tensor,
    state: tuple[torch.Tensor, ...],
    sizes: list[int],
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """One learned update of one task's adapted coordinates, one LSTM row per coordinate.

    grad, theta: (rows,); loss: a scalar; state: (h, c (rows, H), f, i (rows,)).
    """
    ml = model.metalearner
    grad = grad * getattr(ml, "grad_scale", 1.0)  # --inner-grad-scale
    h, c, f_prev, i_prev = state
    # LSTM input [prep(L_t), prep(∇_t)] (rows, 4), the loss the same for every coordinate
    x = torch.cat((preprocess(loss.reshape(1)).expand(len(grad), 2), preprocess(grad)), dim=1)
    h, c = ml.lstm(x, (h, c))
    context = meta_context(model, h, sizes)
    feeds = getattr(ml, "feeds", "gates")  # --attn-feeds: who reads h̃_t
    read = h if feeds == "lstm" else context
    h = h if feeds == "gates" else context
    hidden = read.shape[1]

    def gate(w: torch.Tensor, bias: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        # σ(W·[h_t, θ_{t-1}, gate_{t-1}] + b)
        return torch.sigmoid(read @ w[:hidden] + theta * w[hidden] + prev * w[hidden + 1] + bias)

    f = gate(ml.forget_weight, ml.forget_bias, f_prev)  # f_t
    i = gate(ml.input_weight, ml.input_bias, i_prev)  # i_t
    theta = f * theta - i * grad  # θ_t = f_t ⊙ θ_{t-1} − i_t ⊙ ∇_t
    return theta, (h, c, f, i)


# ----- the inner loop and the meta-objective --------------------------------------------------


def support_loss_and_grad(
    model: FewShotModel, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """L_t (scalar) and ∇_t (P,): the mean cross-entropy of a support mini-batch x (n, C, H, W),
    y (n,) at a detached θ (P,); both constants for the meta-gradient (first-order)."""

    def loss(t: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(learner_logits(model, t, x, len(x), "support"), y)

    grad, value = torch.func.grad_and_value(loss)(theta.detach())
    return value.detach(), grad.detach()


def adapt_task(
    model: FewShotModel,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    epochs: int,
    batch_size: int,
) -> list[torch.Tensor]:
    """One task's inner loop: θ_0 = c_I, then T = epochs · ceil(n / batch_size) steps over the
    support set (n, C, H, W) in mini-batches, in order. Only the adapted coordinates θ_a move;
    the others stay at c_I. Returns θ_1 .. θ_T, each (P,), differentiable in the
    meta-parameters."""
    ml = model.metalearner
    c_init = ml.c_init
    index, sizes = adapted_index(model)
    theta_a = c_init[index]  # θ_0 = c_I
    rows, hidden = len(index), ml.lstm.hidden_size
    zeros = c_init.new_zeros(rows)
    state = (c_init.new_zeros(rows, hidden), c_init.new_zeros(rows, hidden), zeros, zeros)
    thetas = []
    for _ in range(epochs):
        for start in range(0, len(support_x), batch_size):
            x, y = support_x[start : start + batch_size], support_y[start : start + batch_size]
            theta = c_init.index_put((index,), theta_a)  # frozen coordinates at c_I
            loss, grad = support_loss_and_grad(model, theta, x, y)
            theta_a, state = meta_step(model, grad[index], loss, theta_a, state, sizes)
            thetas.append(c_init.index_put((index,), theta_a))
    return thetas


def reference_episode_loss(
    model: FewShotModel, episodes: Episode, epochs: int, batch_size: int, bn: str = "support"
) -> tuple[torch.Tensor, torch.Tensor]:
    """θ_T (B, P) of B tasks (``episodes`` with a leading (B,) dimension), adapted one at a time,
    and the meta-objective: the mean query cross-entropy under θ_T, averaged over the tasks."""
    thetas, losses = [], []
    for b in range(episodes.support_x.shape[0]):
        support_x, query_x = episodes.support_x[b], episodes.query_x[b]
        theta = adapt_task(model, support_x, episodes.support_y[b], epochs, batch_size)[-1]
        n = len(support_x)
        logits = learner_logits(model, theta, torch.cat((support_x, query_x)), n, bn)[n:]
        losses.append(F.cross_entropy(logits, episodes.query_y[b]))
        thetas.append(theta)
    return torch.stack(thetas), torch.stack(losses).mean()
