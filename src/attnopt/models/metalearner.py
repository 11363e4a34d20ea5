"""The LSTM meta-learner of Ravi & Larochelle (2017): a learned update rule and initialisation.

One small LSTM is shared by every coordinate of the learner's parameter vector θ (P numbers).
Its cell state *is* θ: the update of a coordinate is

    θ_t = f_t ⊙ θ_{t-1} − i_t ⊙ ∇_t                                (paper, eq. 2)

with a forget gate f_t and an input gate (a learning rate) i_t computed per coordinate.
The recurrent state is an explicit value (:class:`MetaState`), never kept on the module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from attnopt.models.backend import PLAIN, Backend

PREPROCESS_P = 10.0


def preprocess(v: torch.Tensor, p: float = PREPROCESS_P, dim: int = -1) -> torch.Tensor:
    """Scale-free encoding of gradients and losses (Andrychowicz et al. 2016): the two
    features stacked at ``dim``, shape (..., 2) by default.

    (log|v| / p, sign v) if |v| >= e^-p, else (-1, e^p · v).
    """
    big = v.abs() >= math.exp(-p)
    log_part = torch.where(big, torch.log(v.abs().clamp_min(math.exp(-p))) / p, -torch.ones_like(v))
    sign_part = torch.where(big, torch.sign(v), math.exp(p) * v)
    return torch.stack((log_part, sign_part), dim=dim)


@dataclass(frozen=True)
class MetaState:
    """Recurrent state between inner steps, one column per coordinate of θ.

    h, c: the shared LSTM's hidden and cell state, (*tasks, hidden_size, P): hidden-major, so
    that each of the LSTM's gates is one contiguous block, which elementwise kernels vectorise
    (aten's LSTM cell runs its sigmoids on (P, hidden) slices of a (P, 4·hidden) matrix: a
    strided loop many times slower).
    f, i: the previous forget and input gates, (*tasks, P).
    ``tasks`` is () for one task, (B,) for a meta-batch of B tasks adapted together.
    """

    h: torch.Tensor
    c: torch.Tensor
    f: torch.Tensor
    i: torch.Tensor
    attention: torch.Tensor | None = None  # (*tasks, G, G) between chunk tokens, for inspection


class MetaLearner(nn.Module):
    """Plain meta-learner (``--attention none``).

    Args:
        init_theta: the learner's default initialisation; c_I (the learned θ_0) starts here.
        input_size: LSTM input size, 4 = [prep(L_t), prep(∇_t)].
        hidden_size: LSTM hidden size (20 in the paper).
        adapted: how many coordinates the inner loop adapts (the LSTM's rows); None: all of
            θ. With partial adaptation (``--adapt``) the step sees θ_a, those coordinates only.
    """

    # Multiplies ∇_t before it is read and applied (``--inner-grad-scale``; the public port
    # divides the mean cross-entropy's gradient by the mini-batch size). A plain attribute:
    # it is a setting of the run, not a learned parameter.
    grad_scale: float = 1.0
    # What reads the gates' context h̃_t (``--attn-feeds``): "gates" (the gates of this step),
    # "lstm" (the LSTM's recurrent state, hence the next steps) or "both". The plain model's
    # context is h_t itself, so for it all three are the same.
    feeds: str = "gates"
    backend: Backend = PLAIN  # the fast paths it takes (:meth:`use_backend`)

    def __init__(
        self,
        init_theta: torch.Tensor,
        input_size: int = 4,
        hidden_size: int = 20,
        adapted: int | None = None,
    ) -> None:
        super().__init__()
        if input_size != 4:
            raise ValueError("input_size must be 4: [prep(loss), prep(grad)]")
        self.hidden_size = hidden_size
        self.rows = init_theta.numel() if adapted is None else adapted
        self.lstm = nn.LSTMCell(input_size, hidden_size)
        # Gate weights over [h_t, θ_{t-1}, gate_{t-1}].
        self.forget_weight = nn.Parameter(torch.empty(hidden_size + 2))
        self.forget_bias = nn.Parameter(torch.empty(1))
        self.input_weight = nn.Parameter(torch.empty(hidden_size + 2))
        self.input_bias = nn.Parameter(torch.empty(1))
        self.c_init = nn.Parameter(init_theta.detach().clone())  # c_I = θ_0
        self.reset_gates()

    @property
    def num_params(self) -> int:
        return self.c_init.numel()

    def reset_gates(self) -> None:
        """Small weights, b_F ~ U(4, 6) and b_I ~ U(-5, -4).

        The forget gate starts near 1 (keep θ) and the input gate near σ(-4.5) ≈ 0.011, so
        the untrained model is plain gradient descent with a small learning rate.
        """
        for w in (self.forget_weight, self.input_weight):
            nn.init.uniform_(w, -0.01, 0.01)
        nn.init.uniform_(self.forget_bias, 4.0, 6.0)
        nn.init.uniform_(self.input_bias, -5.0, -4.0)

    def use_backend(self, backend: Backend) -> None:
        """Take ``backend``'s fast paths from now on (:mod:`attnopt.models.backend`)."""
        self.backend = backend

    def initial_state(self, tasks: tuple[int, ...] = ()) -> MetaState:
        """Zero LSTM state and zero previous gates for ``tasks`` (() or (B,)) tasks: one row
        per adapted coordinate."""
        like = self.c_init
        zeros_h = like.new_zeros(*tasks, self.hidden_size, self.rows)
        zeros = like.new_zeros(*tasks, self.rows)
        return MetaState(h=zeros_h, c=zeros_h, f=zeros, i=zeros)

    def context(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What the gates read of the LSTM state (..., hidden, P), and attention weights if any.

        The plain model reads h_t itself.
        """
        return h, None

    def step(
        self, grad: torch.Tensor, loss: torch.Tensor, theta: torch.Tensor, state: MetaState
    ) -> tuple[torch.Tensor, MetaState]:
        """One learned update. grad, theta: (*tasks, P); loss: (*tasks,). Returns (θ_t, state).

        Every coordinate of every task is one row of the shared LSTM, so a meta-batch of
        tasks is one call. ``grad`` and ``loss`` must be detached: the paper drops their
        dependence on the meta-parameters (first-order approximation).
        """
        if self.grad_scale != 1.0:
            grad = grad * self.grad_scale
        h, c = self._lstm_cell(grad, loss, state.h, state.c)
        ctx, attention = self.context(h)
        read, h = (ctx if self.feeds != "lstm" else h), (ctx if self.feeds != "gates" else h)
        # [f_t; i_t] = σ([W_F; W_I] · [h_t, θ_{t-1}, [f_{t-1}; i_{t-1}]] + [b_F; b_I])  (eqs. 4, 5)
        weight = torch.stack((self.forget_weight, self.input_weight))  # (2, hidden + 2)
        bias = torch.cat((self.forget_bias, self.input_bias)).unsqueeze(-1)
        prev = torch.stack((state.f, state.i), dim=-2)  # (*tasks, 2, P)
        gates = torch.matmul(weight[:, :-2], read) + theta.unsqueeze(-2) * weight[:, -2:-1]
        gates = gates + prev * weight[:, -1:] + bias
        f, i = torch.sigmoid(gates).unbind(-2)
        # θ_t = f_t ⊙ θ_{t-1} − i_t ⊙ ∇_t                                     (paper, eq. 2)
        theta = f * theta - i * grad
        return theta, MetaState(h=h, c=c, f=f, i=i, attention=attention)

    def _lstm_cell(
        self, grad: torch.Tensor, loss: torch.Tensor, h: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``nn.LSTMCell`` on input x = [prep(L_t), prep(∇_t)], hidden-major: h, c
        (*tasks, hidden, P). All gate pre-activations come from one matrix product, with the
        loss's features (one per task) folded into the bias."""
        lstm, hidden = self.lstm, self.hidden_size
        # W_ih·x + b = W_ih[:, 2:]·prep(∇_t) + (W_ih[:, :2]·prep(L_t) + b_ih + b_hh)
        bias = preprocess(loss) @ lstm.weight_ih[:, :2].T + lstm.bias_ih + lstm.bias_hh
        lead = grad.shape[:-1]
        weight = torch.cat(
            (
                lstm.weight_ih[:, 2:].expand(*lead, -1, -1),
                lstm.weight_hh.expand(*lead, -1, -1),
                bias.unsqueeze(-1),
            ),
            dim=-1,
        )  # (*tasks, 4·hidden, 2 + hidden + 1)
        inputs = torch.cat(
            (preprocess(grad, dim=-2), h, grad.new_ones(*lead, 1, grad.shape[-1])), -2
        )
        columns = self.backend.cell_columns
        if columns is None or torch.is_grad_enabled():  # a graph to record: the whole cell
            return _cell_update(torch.matmul(weight, inputs), c, hidden)
        # The same operations on column blocks (:class:`attnopt.models.backend.Backend`): the
        # same result up to the rounding of the product (BLAS may round a narrow last block
        # differently; at glyph, CIFAR and mini-ImageNet sizes it was bit for bit the same)
        h_next, c_next = torch.empty_like(h), torch.empty_like(c)
        for at in range(0, grad.shape[-1], columns):
            cols = slice(at, at + columns)
            h_next[..., cols], c_next[..., cols] = _cell_update(
                torch.matmul(weight, inputs[..., cols]), c[..., cols], hidden
            )
        return h_next, c_next

    forward = step  # lets torch.func.functional_call drive a step with substituted parameters


def _cell_update(
    gates: torch.Tensor, c: torch.Tensor, hidden: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The LSTM's h_t, c_t from its gate pre-activations (*tasks, 4·hidden, P) and c_{t-1}."""
    # split, not sliced: the backward of a split is one concatenation, while each slice's
    # backward would fill a zero tensor the size of all the gates
    in_gate, forget, cell, out = gates.split(hidden, dim=-2)
    c = torch.addcmul(torch.sigmoid(forget) * c, torch.sigmoid(in_gate), torch.tanh(cell))
    return torch.sigmoid(out) * torch.tanh(c), c


def chunk_layout(tensor_sizes: Sequence[int], chunk: int) -> list[tuple[int, int]]:
    """Cut each parameter tensor into chunks of at most ``chunk`` consecutive coordinates.

    Returns, per tensor, (number of full chunks, size of the last partial chunk or 0); no
    chunk spans two tensors.
    """
    return [(size // chunk, size % chunk) for size in tensor_sizes]


class AttentionMetaLearner(MetaLearner):
    """MLAL's attention-LSTM meta-learner (``--attention meta``).

    The plain model updates each coordinate seeing only its own gradient history; here the
    coordinates see the rest of the network. Each parameter tensor is cut into chunks of at
    most ``chunk`` coordinates; a chunk's token is the mean LSTM state of its coordinates plus
    a learned embedding of its tensor (the hierarchy: coordinates -> chunks -> tensors).
    Self-attention over the G tokens gives a context per chunk, added back to the state of
    every coordinate in the chunk through W_O, which starts at zero: the untrained model is
    exactly the plain one. Cost per step O(P·hidden + G²·d).

    Args:
        tensor_sizes: sizes of the adapted parameter tensors, in θ_a's order (sum = the
            adapted count: P with ``--adapt all``).
        chunk: ``--attn-chunk``; attn_dim: d, the width of queries, keys and values.
    """

    def __init__(
        self,
        init_theta: torch.Tensor,
        tensor_sizes: Sequence[int],
        input_size: int = 4,
        hidden_size: int = 20,
        chunk: int = 64,
        attn_dim: int = 16,
        heads: int = 1,
    ) -> None:
        super().__init__(init_theta, input_size, hidden_size, adapted=sum(tensor_sizes))
        self.heads = heads
        if sum(tensor_sizes) > init_theta.numel():
            raise ValueError("tensor_sizes must add up to at most the number of parameters")
        self.chunk = chunk
        self.layout = chunk_layout(tensor_sizes, chunk)
        tensor_of_chunk = [
            t for t, (full, rest) in enumerate(self.layout) for _ in range(full + (rest > 0))
        ]
        # Derived from the layout, so kept out of checkpoints.
        self.register_buffer("tensor_of_chunk", torch.tensor(tensor_of_chunk), persistent=False)
        self.tensor_embedding = nn.Parameter(0.1 * torch.randn(len(tensor_sizes), hidden_size))
        width = attn_dim * heads  # every head has queries, keys and values of attn_dim
        self.attn_query = nn.Linear(hidden_size, width, bias=False)
        self.attn_key = nn.Linear(hidden_size, width, bias=False)
        self.attn_value = nn.Linear(hidden_size, width, bias=False)
        self.attn_out = nn.Linear(width, hidden_size, bias=False)
        nn.init.zeros_(self.attn_out.weight)  # start as the plain model

    @property
    def num_chunks(self) -> int:
        return self.tensor_of_chunk.shape[0]

    def _chunk_means(self, h: torch.Tensor) -> torch.Tensor:
        """(..., H, P) -> (..., G, H): the mean over each chunk, with views and reductions.

        h is split in one operation (whose backward is one concatenation) rather than sliced
        tensor by tensor (each slice's backward would fill an (H, P) tensor with zeros).
        """
        lead, hidden = h.shape[:-2], h.shape[-2]
        sizes = [size for full, rest in self.layout for size in (full * self.chunk, rest)]
        blocks, parts = iter(h.split(sizes, dim=-1)), []
        for full, rest in self.layout:
            block, last = next(blocks), next(blocks)
            if full:
                parts.append(block.reshape(*lead, hidden, full, self.chunk).mean(-1))
            if rest:  # the tensor's last, partial chunk
                parts.append(last.mean(-1, keepdim=True))
        return torch.cat(parts, dim=-1).transpose(-1, -2)

    def _chunk_embeddings(self) -> torch.Tensor:
        """(G, H): every chunk's tensor embedding, ``tensor_embedding[tensor_of_chunk]`` made of
        expands. An index's backward is a scatter-add, which torch.compile runs with atomic
        adds in parallel: summed in a different order from run to run."""
        rows = [
            self.tensor_embedding[t : t + 1].expand(full + (rest > 0), -1)
            for t, (full, rest) in enumerate(self.layout)
        ]
        return torch.cat(rows)

    def _broadcast(self, per_chunk: torch.Tensor) -> torch.Tensor:
        """(..., G, H) -> (..., H, P): every coordinate gets its chunk's row, with expands only
        (indexing would make the backward a slow scatter-add)."""
        per_chunk = per_chunk.transpose(-1, -2)
        lead, hidden = per_chunk.shape[:-2], per_chunk.shape[-2]
        parts, g = [], 0
        for full, rest in self.layout:
            if full:
                columns = per_chunk[..., g : g + full].unsqueeze(-1)
                columns = columns.expand(*lead, hidden, full, self.chunk)
                parts.append(columns.reshape(*lead, hidden, full * self.chunk))
                g += full
            if rest:
                parts.append(per_chunk[..., g : g + 1].expand(*lead, hidden, rest))
                g += 1
        return torch.cat(parts, dim=-1)

    def context(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """h̃_t = h_t + W_O · ctx_g for every coordinate of chunk g."""
        # token_g = mean of h_t over chunk g + embedding of its tensor
        tokens = self._chunk_means(h) + self._chunk_embeddings()
        # (..., G, heads·d) -> (..., heads, G, d)
        q, k, v = (
            w(tokens).unflatten(-1, (self.heads, -1)).transpose(-2, -3)
            for w in (self.attn_query, self.attn_key, self.attn_value)
        )
        # ctx = softmax(Q Kᵀ / √d) V over the G tokens, per head
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        ctx = (weights @ v).transpose(-2, -3).flatten(-2)  # heads side by side
        return h + self._broadcast(self.attn_out(ctx)), weights.mean(-3)
