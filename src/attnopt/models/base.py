"""What every learner shares: a pure function of one flat parameter vector θ, cut into stages.

A learner's forward pass is a fixed sequence of *stages*: its blocks, MLAL's support-set
cross-attention after one of them (``--attention learner|both``), and the linear head. Each
parameter tensor of θ belongs to one stage. Partial adaptation (``--adapt``) names the stages
whose coordinates the meta-learner updates in the inner loop:

- ``all``: every stage (Ravi & Larochelle 2017);
- ``last``: the last block and the head;
- ``head``: the head alone (ANIL-style).

The cross-attention's own coordinates are adapted in every mode. The other coordinates are
meta-parameters, learned by the outer loop through the query loss and held at θ_0 during
adaptation. The meta-learner sees the adapted coordinates only, as one vector θ_a; the rest is
the vector ``frozen``. Leading stages without an adapted coordinate (the *frozen prefix*) are
computed once per support mini-batch, and no inner-loop gradient is computed for any frozen
coordinate.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from attnopt.models.backend import PLAIN, Backend

ADAPT_MODES = ("all", "last", "head")
HEAD, ATTENTION = "head", "attn"


@dataclass(frozen=True)
class ParamSpec:
    """One parameter tensor inside a flat vector: its name, shape and offset."""

    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def make_specs(shapes: Sequence[tuple[str, tuple[int, ...]]]) -> tuple[ParamSpec, ...]:
    """Consecutive specs for (name, shape) pairs, the first at offset 0."""
    specs, offset = [], 0
    for name, shape in shapes:
        specs.append(ParamSpec(name, tuple(shape), offset))
        offset += math.prod(shape)
    return tuple(specs)


def _runs(specs: Sequence[ParamSpec]) -> list[tuple[int, int]]:
    """The (start, stop) ranges of θ that ``specs`` cover, adjacent tensors merged."""
    runs: list[tuple[int, int]] = []
    for s in specs:
        if runs and runs[-1][1] == s.offset:
            runs[-1] = (runs[-1][0], s.offset + s.numel)
        else:
            runs.append((s.offset, s.offset + s.numel))
    return runs


def _merge_order(
    adapted: list[tuple[int, int]], frozen: list[tuple[int, int]]
) -> list[tuple[int, int, int]]:
    """θ's ranges in order as (0 = θ_a or 1 = frozen, start, stop) inside that vector."""
    order, at = [], [0, 0]
    for (start, stop), side in sorted([(r, 0) for r in adapted] + [(r, 1) for r in frozen]):
        order.append((side, at[side], at[side] + stop - start))
        at[side] += stop - start
    return order


def _views(specs: Sequence[ParamSpec], flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """Views of ``flat`` (*tasks, n) as named tensors (*tasks, *shape); ``specs`` cover it in
    order. One split, not a slice per tensor: the backward of a slice fills a zero tensor of
    the whole of ``flat``, per tensor (for ResNet-12, 50 x 12.4M numbers per backward); the
    split's backward concatenates the gradients once."""
    lead = flat.shape[:-1]
    pieces = torch.split(flat, [s.numel for s in specs], dim=-1)
    return {s.name: piece.view(*lead, *s.shape) for s, piece in zip(specs, pieces, strict=True)}


class Learner(nn.Module):
    """The learner contract: ``logits = learner(theta, x, n_support, bn)``.

    Subclasses describe their parameters and stages with :meth:`_set_layout` and implement
    :meth:`_enter` (images -> their activation layout), :meth:`_stage` (one block, or the
    head: activations -> logits (B, n, N)), :meth:`_tokens` / :meth:`_from_tokens` (the
    cross-attention's view of the activations) and :meth:`_plain_init`.

    The module's own parameters are meta-parameters that the inner loop does not adapt: only
    ``attn_scale`` (per-channel, zero-initialised) when ``cross_attention`` is on.
    """

    backend: Backend = PLAIN  # the fast paths it takes (:meth:`use_backend`)

    def __init__(
        self,
        n_class: int,
        cross_attention: bool = False,
        attn_block: int = 3,
        amp_dtype: torch.dtype | None = None,
        adapt: str = "all",
    ) -> None:
        super().__init__()
        if adapt not in ADAPT_MODES:
            raise ValueError(f"adapt must be one of {', '.join(ADAPT_MODES)}, got {adapt!r}")
        self.n_class, self.cross_attention, self.attn_block = n_class, cross_attention, attn_block
        self.amp_dtype, self.adapt = amp_dtype, adapt

    # ----- layout: θ, stages, partial adaptation -------------------------------------------

    def _set_layout(
        self,
        blocks: Sequence[Sequence[tuple[str, tuple[int, ...]]]],
        head: Sequence[tuple[str, tuple[int, ...]]],
        attn_width: int,
    ) -> None:
        """θ = the blocks' tensors, the head's, then (with cross-attention) the attention's:
        shared coordinates keep their offsets with and without attention.

        ``blocks[b]`` lists block b's (name, shape) pairs; the cross-attention of width
        ``attn_width`` follows block ``attn_block`` (1-based).
        """
        if self.cross_attention and not 1 <= self.attn_block <= len(blocks):
            raise ValueError(f"attn_block must be in 1..{len(blocks)}, got {self.attn_block}")
        self.n_blocks = len(blocks)
        stage_of: dict[str, str] = {}
        shapes: list[tuple[str, tuple[int, ...]]] = []
        stages: list[str] = []
        for b, block in enumerate(blocks):
            stages.append(f"block{b}")
            if self.cross_attention and b == self.attn_block - 1:
                stages.append(ATTENTION)
            for name, shape in block:
                shapes.append((name, shape))
                stage_of[name] = f"block{b}"
        stages.append(HEAD)
        for name, shape in head:
            shapes.append((name, shape))
            stage_of[name] = HEAD
        if self.cross_attention:
            self.attn_width = attn_width
            attn = [("attn.norm.weight", (attn_width,)), ("attn.norm.bias", (attn_width,))]
            attn += [(f"attn.{w}.weight", (attn_width,) * 2) for w in ("query", "key", "value")]
            attn += [("attn.out.weight", (attn_width, attn_width))]
            for name, shape in attn:
                shapes.append((name, shape))
                stage_of[name] = ATTENTION
            # y = x + attn_scale ⊙ W_O·Attn(...): a meta-parameter, zero at first, so the
            # untrained model is exactly the plain one during the whole inner loop
            # (∂L/∂θ_attn = 0).
            self.attn_scale = nn.Parameter(torch.zeros(attn_width))
        self.stages = tuple(stages)
        self.specs = make_specs(shapes)
        self.num_params = sum(s.numel for s in self.specs)
        self.stage_of = stage_of
        adapted = self._adapted_stages(blocks)
        self.frozen_prefix = next(i for i, s in enumerate(self.stages) if s in adapted)
        chosen = [s for s in self.specs if stage_of[s.name] in adapted]
        rest = [s for s in self.specs if stage_of[s.name] not in adapted]
        self._adapted_runs, self._frozen_runs = _runs(chosen), _runs(rest)
        self._merge_order = _merge_order(self._adapted_runs, self._frozen_runs)
        # the same tensors, at their offsets inside θ_a and inside ``frozen``
        self.adapted_specs = make_specs([(s.name, s.shape) for s in chosen])
        self.frozen_specs = make_specs([(s.name, s.shape) for s in rest])
        self.num_adapted = sum(s.numel for s in chosen)

    def _adapted_stages(self, blocks: Sequence[Sequence[tuple[str, tuple[int, ...]]]]) -> set:
        """The stages that ``--adapt`` updates in the inner loop."""
        if self.adapt == "all":
            return set(self.stages)
        adapted = {HEAD, ATTENTION}
        if self.adapt == "last":
            with_params = [b for b, block in enumerate(blocks) if block]
            adapted |= {f"block{with_params[-1]}"} if with_params else set()
        return adapted

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of θ (*tasks, P) as named parameter tensors (*tasks, *shape)."""
        return _views(self.specs, theta)

    def split(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """θ (..., P) -> (θ_a (..., P_a), frozen (..., P - P_a)); (θ, None) with ``--adapt all``."""
        if not self._frozen_runs:
            return theta, None
        adapted = torch.cat([theta[..., a:b] for a, b in self._adapted_runs], dim=-1)
        return adapted, torch.cat([theta[..., a:b] for a, b in self._frozen_runs], dim=-1)

    def merge(self, adapted: torch.Tensor, frozen: torch.Tensor | None) -> torch.Tensor:
        """The inverse of :meth:`split`: θ (..., P) from θ_a and ``frozen``."""
        if frozen is None:
            return adapted
        return torch.cat(
            [(adapted, frozen)[side][..., a:b] for side, a, b in self._merge_order], dim=-1
        )

    def params(self, adapted: torch.Tensor, frozen: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Named parameter views of θ_a and ``frozen``, without assembling θ."""
        if frozen is None:
            return _views(self.specs, adapted)
        return {**_views(self.adapted_specs, adapted), **_views(self.frozen_specs, frozen)}

    def init_theta(self) -> torch.Tensor:
        """The initial θ: :meth:`_plain_init`, then the cross-attention's LayerNorm (1, 0) and
        W_Q, W_K, W_V, W_O as ``nn.Linear(C, C, bias=False)`` (global torch RNG, plain
        coordinates drawn first: the same with and without cross-attention)."""
        parts = [self._plain_init()]
        if self.cross_attention:
            width = self.attn_width
            parts += [torch.ones(width), torch.zeros(width)]  # LayerNorm
            for _ in range(4):
                parts.append(nn.Linear(width, width, bias=False).weight.detach().ravel())
        return torch.cat(parts)

    # ----- the function ------------------------------------------------------------------

    def forward(
        self,
        theta: torch.Tensor,
        x: torch.Tensor,
        n_support: int | None = None,
        bn: str = "support",
    ) -> torch.Tensor:
        """Logits (n, N) for images ``x`` (n, C, H, W) under θ (P,); or, for B tasks at once,
        logits (B, n, N) for images (B, n, C, H, W) under θ (B, P), task b's images under θ_b.

        The first ``n_support`` images of each task are its support set (all of them when
        None); the rest are query images. Support images provide the cross-attention keys
        and values, and with ``bn="support"`` the BatchNorm statistics, so a query image's
        logits depend on its task's support set and itself only. ``bn="transductive"``
        normalises the query images with their own batch statistics instead.
        """
        if theta.dim() == 1:
            return self.forward(theta[None], x[None], n_support, bn)[0]
        n_support = x.shape[1] if n_support is None else n_support
        return self.run(self.unflatten(theta), self._enter(x), n_support, bn)

    def run(
        self,
        p: dict[str, torch.Tensor],
        h: torch.Tensor,
        n_support: int,
        bn: str,
        start: int = 0,
        stop: int | None = None,
    ) -> torch.Tensor:
        """Stages ``start`` to ``stop`` (all remaining when None) on activations ``h``."""
        for stage in self.stages[start:stop]:
            if stage == ATTENTION:
                h = self._cross_attend(p, h, n_support)
            else:
                h = self._stage(stage, p, h, n_support, bn)
        return h

    def frozen_features(self, frozen: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
        """The frozen prefix's output for support images ``x`` (B, n, C, H, W), all of them
        support, under ``frozen`` (B, P - P_a); None when the first stage is adapted."""
        if frozen is None or self.frozen_prefix == 0:
            return None
        with torch.no_grad():
            p = _views(self.frozen_specs, frozen)
            return self.run(p, self._enter(x), x.shape[1], "support", 0, self.frozen_prefix)

    def loss_and_grad(
        self,
        theta: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        frozen: torch.Tensor | None = None,
        features: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean cross-entropy L_t of each task at its θ, and the gradient ∇_t of the adapted
        coordinates, cut from the meta-graph: the inner loop's step (support mini-batch)
        before the meta-learner's update.

        theta: θ_a (B, P_a) (all of θ with ``--adapt all``); frozen: the other coordinates
        (B, P - P_a) or None; x: (B, n, C, H, W); y: (B, n); features: the frozen prefix's
        output for x (:meth:`frozen_features`), if any. Returns loss (B,) and grad (B, P_a).
        θ is detached first: the paper treats ∇_t and L_t as constants for the meta-gradient
        (first-order approximation), which also frees this step's activations at once.
        ``torch.func`` computes the gradient even under ``torch.no_grad`` (evaluation).
        """
        frozen = None if frozen is None else frozen.detach()

        def total_loss(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            if frozen is None:
                logits = self(t, x)
            elif features is None:
                logits = self.run(self.params(t, frozen), self._enter(x), x.shape[1], "support")
            else:
                p = self.params(t, frozen)
                logits = self.run(p, features, x.shape[1], "support", self.frozen_prefix)
            per_image = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
            per_task = per_image.view(y.shape).mean(1)
            # tasks are independent, so ∂(Σ_b L_b)/∂θ_b = ∂L_b/∂θ_b: every task's own gradient
            return per_task.sum(), per_task

        grads, loss = torch.func.grad(total_loss, has_aux=True)(theta.detach())
        return loss.detach(), grads.detach()

    def use_backend(self, backend: Backend) -> None:
        """Take ``backend``'s fast paths from now on (:mod:`attnopt.models.backend`); a
        learner without a written-out inner step (all but Conv-4) records it as off."""
        self.backend = replace(backend, inner_step_by_kernels=False)

    def _amp(self, device: torch.device) -> contextlib.AbstractContextManager:
        """Autocast to ``amp_dtype`` (``--amp bf16``) for the blocks; nothing without it."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.amp_dtype)

    # ----- the cross-attention (MLAL's base-learner) -------------------------------------

    def _attention_inputs(
        self, p: dict[str, torch.Tensor], tokens: torch.Tensor, n_support_tokens: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q (B, T, C) for every token, k and v (B, T_support, C) from the support's tokens."""
        normed = F.layer_norm(tokens, (tokens.shape[-1],))  # LN(x) with each task's affine:
        normed = torch.addcmul(
            p["attn.norm.bias"].unsqueeze(1), normed, p["attn.norm.weight"].unsqueeze(1)
        )
        support = normed[:, :n_support_tokens]  # keys/values: the support set only
        return (
            normed @ p["attn.query.weight"].transpose(1, 2),
            support @ p["attn.key.weight"].transpose(1, 2),
            support @ p["attn.value.weight"].transpose(1, 2),
        )

    def _cross_attend(
        self, p: dict[str, torch.Tensor], h: torch.Tensor, n_support: int
    ) -> torch.Tensor:
        """y = x + γ ⊙ W_O · softmax(q kᵀ / √d) v with q = LN(x) W_Q, k = LN(s) W_K, v = LN(s) W_V,
        s the support set's tokens (MLAL's base-learner attention, with the softmax)."""
        tokens, per_image = self._tokens(h, p["attn.norm.weight"].dtype)
        q, k, v = self._attention_inputs(p, tokens, n_support * per_image)
        # one head as (B, 1, T, C): with four dimensions the CPU runs its fused (flash) kernel,
        # which never forms the (T, T_support) weights (6x faster at 84x84); with three it
        # took the unfused path (the same result up to float rounding)
        attended = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        y = tokens + self.attn_scale * (attended @ p["attn.out.weight"].transpose(1, 2))
        return self._from_tokens(y, h)

    def cross_attention_weights(
        self, theta: torch.Tensor, x: torch.Tensor, n_support: int
    ) -> torch.Tensor:
        """Attention of every image's positions over the support positions (after block
        ``attn_block``).

        theta (P,), x (n, C, H, W). Returns (n, HW, n_support, HW): for image i and position j,
        a distribution over the positions of the support images. For inspection and plots.
        """
        p = self.unflatten(theta[None])
        h = self.run(p, self._enter(x[None]), n_support, "support", 0, self.stages.index(ATTENTION))
        tokens, hw = self._tokens(h, p["attn.norm.weight"].dtype)
        q, k, _ = self._attention_inputs(p, tokens, n_support * hw)
        weights = torch.softmax(q[0] @ k[0].T / math.sqrt(self.attn_width), dim=-1)
        return weights.reshape(x.shape[0], hw, n_support, hw)

    # ----- what subclasses provide ---------------------------------------------------------

    def _plain_init(self) -> torch.Tensor:
        """The initial values of the blocks' and the head's coordinates, flat."""
        raise NotImplementedError

    def _enter(self, x: torch.Tensor) -> torch.Tensor:
        """Images of B tasks (B, n, C, H, W) -> the first stage's input."""
        raise NotImplementedError

    def _stage(
        self, stage: str, p: dict[str, torch.Tensor], h: torch.Tensor, n_support: int, bn: str
    ) -> torch.Tensor:
        """One block (activations -> activations) or the head (activations -> logits)."""
        raise NotImplementedError

    def _tokens(self, h: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, int]:
        """Activations -> (tokens (B, n·HW, C) in ``dtype``, HW): every image's positions."""
        raise NotImplementedError

    def _from_tokens(self, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Tokens (B, n·HW, C) -> activations laid out like ``like``."""
        raise NotImplementedError


def linear_head(p: dict[str, torch.Tensor], features: torch.Tensor) -> torch.Tensor:
    """Logits (B, n, N) of features (B, n, F) under each task's head."""
    head = p["head.weight"].transpose(1, 2)  # (B, F, N)
    return torch.baddbmm(p["head.bias"].unsqueeze(1), features, head)
