"""Your own feature extractor as an attnopt learner.

:class:`ModuleLearner` turns an ``nn.Module`` (or a function of named parameters) that maps
images (n, C, H, W) to feature vectors (n, F) into a learner with the same guarantees as the
built-in ones: a pure function of one flat θ (the module's parameters, then a linear head to
N logits, then the cross-attention's), BatchNorm statistics from the support set, no query
leak, task batching (``torch.func.vmap``, where the module allows it; a loop over tasks
otherwise), partial adaptation and the cross-attention.

The contract, checked when the learner is built (a :class:`~attnopt.errors.UserError` names
what breaks it):

- every parameter is a floating-point tensor (they all become coordinates of θ; keep
  constants in buffers);
- BatchNorm layers keep no running statistics (``track_running_stats=False``): statistics
  carried from one task to the next would leak information between tasks. attnopt computes
  every BatchNorm layer's statistics from the task's support set (``--bn support``);
- a forward pass changes no buffer and draws no random numbers (no dropout): the same images
  give the same features;
- the output is (n, F) for n images: one feature vector per image;
- an image's features depend on that image alone (and on the support set, through
  BatchNorm), never on the other query images.

An ``nn.Sequential`` is cut into blocks at its children: ``--adapt last`` adapts its last
child with parameters (and the head), and the cross-attention can follow any child whose
output is a feature map (n, C, h, w) or vectors (n, F). Any other module, and a function, is
one block.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from attnopt.errors import UserError
from attnopt.models.base import HEAD, Learner, linear_head
from attnopt.models.support_norm import support_batch_norm

PROBE_SUPPORT, PROBE_QUERY = 4, 2  # images of the probe batch that checks the contract


class _Context:
    """What the BatchNorm layers of a wrapped module need to know about the current call."""

    n_support: int = 0
    bn: str = "support"


class _SupportBatchNorm(nn.Module):
    """Stands in for a BatchNorm layer of a wrapped module: the same parameters (names kept),
    statistics from the support set."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, context: _Context) -> None:
        super().__init__()
        self.weight, self.bias, self.eps = bn.weight, bn.bias, bn.eps
        self.context = context

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.context
        return support_batch_norm(x, self.weight, self.bias, self.eps, c.n_support, c.bn)


def _support_norms(module: nn.Module, context: _Context) -> nn.Module:
    """A copy of ``module`` with every BatchNorm layer computing support-set statistics;
    UserError for one that keeps running statistics."""
    module = copy.deepcopy(module)
    for name, child in list(module.named_modules()):
        if not isinstance(child, nn.modules.batchnorm._BatchNorm):
            continue
        if child.track_running_stats:
            raise UserError(
                f"BatchNorm layer {name!r} of the backbone keeps running statistics, which "
                "would carry information from one task to the next; build it with "
                "track_running_stats=False (attnopt normalises with the support set's "
                "statistics)"
            )
        parent = module.get_submodule(name.rpartition(".")[0]) if "." in name else module
        replacement = _SupportBatchNorm(child, context)
        if name:
            setattr(parent, name.rpartition(".")[2], replacement)
        else:
            module = replacement
    return module


class _Block:
    """One block of a wrapped backbone: a function of its named parameters and its input."""

    def __init__(
        self,
        call: Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor],
        params: dict[str, torch.Tensor],
        buffers: dict[str, torch.Tensor],
    ) -> None:
        self.call, self.params, self.buffers = call, params, buffers


def _module_block(module: nn.Module) -> _Block:
    params = dict(module.named_parameters())
    buffers = dict(module.named_buffers())

    def call(values: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(module, values, (x,))

    return _Block(call, params, buffers)


class ModuleLearner(Learner):
    """A feature extractor you write, with a linear head, as an attnopt learner.

    Args:
        backbone: an ``nn.Module`` mapping images (n, C, H, W) to features (n, F), or a pair
            ``(function, params)``: ``function(params, images) -> features`` with ``params``
            a dict of named float tensors (e.g. ``torch.func.functional_call`` of a module).
            Its current parameter values are the initial θ (the head's are drawn here).
        in_channels, n_class, image_size: the images' channels and side, N logits.
        cross_attention, attn_block, amp_dtype, adapt: as for the built-in learners; the
            cross-attention follows block ``attn_block`` (1-based; an ``nn.Sequential``'s
            children are its blocks) with that block's output width.

    Raises UserError when the backbone breaks the contract (see :mod:`attnopt.models.wrap`).
    """

    def __init__(
        self,
        backbone: nn.Module | tuple[Callable[..., torch.Tensor], Mapping[str, torch.Tensor]],
        in_channels: int,
        n_class: int,
        image_size: int,
        cross_attention: bool = False,
        attn_block: int = 1,
        amp_dtype: torch.dtype | None = None,
        adapt: str = "all",
    ) -> None:
        super().__init__(n_class, cross_attention, attn_block, amp_dtype, adapt)
        self.in_channels, self.image_size = in_channels, image_size
        self._context = _Context()
        blocks = self._blocks(backbone)
        if cross_attention and not 1 <= attn_block <= len(blocks):
            raise UserError(
                f"the cross-attention cannot follow block {attn_block}: the backbone has "
                f"{len(blocks)} block{'s' * (len(blocks) != 1)} (an nn.Sequential's children are "
                "its blocks; any other module is one); choose attn_block accordingly"
            )
        for block in blocks:
            for name, value in block.params.items():
                if not value.is_floating_point():
                    raise UserError(
                        f"backbone parameter {name!r} is {value.dtype}; every parameter becomes "
                        "a coordinate of θ and must be a float tensor (keep constants in buffers)"
                    )
        # the buffers are registered here so that .to(device) moves them (not saved: the
        # backbone's builder makes them)
        self._buffer_keys: list[dict[str, str]] = []
        for b, block in enumerate(blocks):
            keys = {}
            for i, (name, value) in enumerate(block.buffers.items()):
                keys[name] = f"_block{b}_buffer{i}"
                self.register_buffer(keys[name], value.detach().clone(), persistent=False)
            self._buffer_keys.append(keys)
        self._block_fns = blocks
        self._initial = [
            {name: value.detach().clone().float() for name, value in block.params.items()}
            for block in blocks
        ]
        widths = self._check_contract(backbone)
        feature_dim = widths[-1]
        shapes = [
            [(f"block{b}.{name}", tuple(v.shape)) for name, v in block.params.items()]
            for b, block in enumerate(blocks)
        ]
        head = [("head.weight", (n_class, feature_dim)), ("head.bias", (n_class,))]
        self._set_layout(shapes, head, widths[attn_block - 1] if cross_attention else 0)
        self.feature_dim = feature_dim

    def _blocks(self, backbone: Any) -> list[_Block]:
        if isinstance(backbone, nn.Module):
            module = _support_norms(backbone, self._context)
            children = list(module.children()) if isinstance(module, nn.Sequential) else [module]
            return [_module_block(child) for child in children]
        if not (isinstance(backbone, tuple) and len(backbone) == 2 and callable(backbone[0])):
            raise UserError(
                f"a backbone is an nn.Module or a pair (function, params), not a "
                f"{type(backbone).__name__}"
            )
        function, params = backbone
        if not isinstance(params, Mapping) or not all(
            isinstance(v, torch.Tensor) for v in params.values()
        ):
            raise UserError("a function backbone's params must be a dict of named tensors")
        return [_Block(function, dict(params), {})]

    def _buffers_of(self, b: int) -> dict[str, torch.Tensor]:
        return {name: getattr(self, key) for name, key in self._buffer_keys[b].items()}

    def _call_block(
        self, b: int, params: dict[str, torch.Tensor], h: torch.Tensor, n_support: int, bn: str
    ) -> torch.Tensor:
        """Block ``b`` of one task: params (named, unbatched), h (n, ...)."""
        self._context.n_support, self._context.bn = n_support, bn
        return self._block_fns[b].call({**params, **self._buffers_of(b)}, h)

    def _check_contract(self, backbone: Any) -> list[int]:
        """Run the backbone on a probe batch; UserError where it breaks the contract. Returns
        every block's output width (channels of a map, or the length of feature vectors)."""
        n = PROBE_SUPPORT + PROBE_QUERY
        g = torch.Generator().manual_seed(0)
        x = torch.randn((n, self.in_channels, self.image_size, self.image_size), generator=g)
        blocks = range(len(self._block_fns))
        buffers = [{k: v.clone() for k, v in self._buffers_of(b).items()} for b in blocks]
        with torch.no_grad():
            first = self._probe(x)
            _check_features(first[-1], x.shape)
            self._check_buffers_kept(buffers)
            self._check_per_image(x, first[-1], g)
            self._batched = self._vmap_works(x)
        return self._block_widths(first)

    def _probe(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Every block's output for a probe batch (its first PROBE_SUPPORT images the support
        set); UserError naming the block that fails."""
        outputs, h = [], images
        for b in range(len(self._block_fns)):
            try:
                h = self._call_block(b, self._initial[b], h, PROBE_SUPPORT, "support")
            except UserError:
                raise
            except Exception as e:
                raise UserError(
                    f"the backbone failed on a batch of images of shape {tuple(images.shape)} "
                    f"(block {b + 1} of {len(self._block_fns)}): {type(e).__name__}: {e}"
                ) from e
            outputs.append(h)
        return outputs

    def _check_buffers_kept(self, before: list[dict[str, torch.Tensor]]) -> None:
        for b, saved in enumerate(before):
            for name, after in self._buffers_of(b).items():
                if not torch.equal(saved[name], after):
                    raise UserError(
                        f"backbone buffer {name!r} changed during a forward pass; buffers "
                        "must stay constant (state carried between calls would leak "
                        "information between tasks)"
                    )

    def _check_per_image(self, x: torch.Tensor, out: torch.Tensor, g: torch.Generator) -> None:
        """The same features on a second call, and an image's features independent of the
        other query images."""
        if not torch.equal(self._probe(x)[-1], out):
            raise UserError(
                "the backbone gives different features for the same images on two calls "
                "(dropout or other randomness); remove it: adaptation must be deterministic"
            )
        other = x.clone()
        other[-1] = torch.randn(x.shape[1:], generator=g)
        if not torch.allclose(self._probe(other)[-1][:-1], out[:-1], rtol=1e-4, atol=1e-5):
            raise UserError(
                "the backbone's features for one image depend on the other query images of "
                "the batch (a layer that mixes images, or a normalisation over the batch "
                "that is not an nn.BatchNorm layer); each image must be processed on its own"
            )

    def _block_widths(self, outputs: list[torch.Tensor]) -> list[int]:
        """Every block's output width; UserError where the cross-attention cannot follow."""
        widths = []
        for b, h in enumerate(outputs):
            if self.cross_attention and b == self.attn_block - 1 and h.dim() not in (2, 4):
                raise UserError(
                    f"the cross-attention after block {b + 1} needs feature maps (n, C, h, w) "
                    f"or vectors (n, F), got {tuple(h.shape)}; choose another attn_block"
                )
            widths.append(h.shape[1] if h.dim() > 1 else 0)
        return widths

    def _vmap_works(self, x: torch.Tensor) -> bool:
        """Whether ``torch.func.vmap`` carries two tasks through the backbone (and agrees with
        a loop over them); when not, tasks are run one after another."""
        p = {
            f"block{b}.{name}": value.expand(2, *value.shape)
            for b, params in enumerate(self._initial)
            for name, value in params.items()
        }
        tasks = torch.stack((x, x.flip(0)))
        try:
            batched = self._blocks_batched(p, tasks, PROBE_SUPPORT, "support", vmap=True)
        except Exception:  # any op without a batching rule
            return False
        looped = self._blocks_batched(p, tasks, PROBE_SUPPORT, "support", vmap=False)
        return torch.allclose(batched, looped, rtol=1e-4, atol=1e-5)

    def _blocks_batched(
        self, p: dict[str, torch.Tensor], h: torch.Tensor, n_support: int, bn: str, vmap: bool
    ) -> torch.Tensor:
        for b in range(len(self._block_fns)):
            h = self._run_block(b, p, h, n_support, bn, vmap)
        return h

    def _run_block(
        self,
        b: int,
        p: dict[str, torch.Tensor],
        h: torch.Tensor,
        n_support: int,
        bn: str,
        vmap: bool,
    ) -> torch.Tensor:
        """Block ``b`` of B tasks: p holds (B, *shape) tensors, h is (B, n, ...)."""
        prefix = f"block{b}."
        local = {k[len(prefix) :]: v for k, v in p.items() if k.startswith(prefix)}

        def one(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            return self._call_block(b, params, x, n_support, bn)

        if vmap:
            return torch.func.vmap(one)(local, h)
        return torch.stack([one({k: v[t] for k, v in local.items()}, h[t]) for t in range(len(h))])

    def _plain_init(self) -> torch.Tensor:
        backbone = [v.ravel() for params in self._initial for v in params.values()]
        head = nn.Linear(self.feature_dim, self.n_class)
        return torch.cat([*backbone, head.weight.detach().ravel(), head.bias.detach()])

    def _enter(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous()  # episodes come channels-last; vmap of some ops needs this

    def _stage(
        self, stage: str, p: dict[str, torch.Tensor], h: torch.Tensor, n_support: int, bn: str
    ) -> torch.Tensor:
        if stage == HEAD:
            return linear_head(p, h.to(p["head.weight"].dtype))
        with self._amp(h.device):
            return self._run_block(int(stage[5:]), p, h, n_support, bn, self._batched)

    def _tokens(self, h: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, int]:
        if h.dim() == 3:  # (B, n, F): one token per image
            return h.to(dtype), 1
        tasks, n, c, height, width = h.shape
        tokens = h.permute(0, 1, 3, 4, 2).reshape(tasks, n * height * width, c)
        return tokens.to(dtype), height * width

    def _from_tokens(self, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if like.dim() == 3:
            return y.to(like.dtype)
        tasks, n, c, height, width = like.shape
        return y.view(tasks, n, height, width, c).permute(0, 1, 4, 2, 3).to(like.dtype)


def _check_features(out: Any, shape: torch.Size) -> None:
    """UserError unless the backbone gave one float feature vector per image."""
    n = shape[0]
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != n:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(
            f"the backbone maps {n} images of shape {tuple(shape[1:])} to {got}; it must "
            f"give one feature vector per image, ({n}, F): end it with nn.Flatten() or "
            "a pooling layer"
        )
    if not out.is_floating_point():
        raise UserError(f"the backbone's features are {out.dtype}; they must be floats")


def learner_from_build(
    name: str, build: Callable[[int, int], Any], in_channels: int, n_class: int, image_size: int,
    **options: Any,
) -> ModuleLearner:  # fmt: skip
    """The learner of backbone ``name``, registered with :func:`attnopt.register_backbone`."""
    try:
        return ModuleLearner(build(in_channels, image_size), in_channels, n_class, image_size,
                             **options)  # fmt: skip
    except UserError as e:
        raise UserError(f"backbone {name!r}: {e}") from None
