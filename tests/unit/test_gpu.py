"""On a GPU: the same results as on the CPU (skipped where there is none, as in CI)."""

import copy

import pytest
import torch
import torch.nn.functional as F

from attnopt.adapt import adapt, query_logits
from attnopt.config import Config
from attnopt.models.build import build_model
from attnopt.runtime.compilation import compile_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def meta_loss(model, device: torch.device, amp: str = "none") -> torch.Tensor:
    model = model.place(device)
    model.learner.amp_dtype = torch.bfloat16 if amp == "bf16" else None
    g = torch.Generator().manual_seed(0)
    support_x = torch.randn(4, 25, 3, 84, 84, generator=g).to(device)
    query_x = torch.randn(4, 75, 3, 84, 84, generator=g).to(device)
    support_y = torch.arange(5).repeat(5).expand(4, -1).to(device)
    query_y = torch.arange(5).repeat(15).expand(4, -1).to(device)
    theta = adapt(model.learner, model.metalearner, support_x, support_y, 8, 25)
    logits = query_logits(model.learner, theta, support_x, query_x)
    return F.cross_entropy(logits.flatten(0, 1), query_y.flatten())


def meta_gradients(model, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    """The meta-gradient of ``loss`` for every meta-parameter, on the CPU; grads reset."""
    model.zero_grad(set_to_none=True)
    loss.backward()
    grads = {name: p.grad.detach().cpu().clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("attention", ("none", "both"))
def test_gpu_meta_loss_and_meta_gradients_match_the_cpu(attention: str) -> None:
    torch.manual_seed(0)
    model = build_model(Config(image_size=84, attention=attention), 3)
    cpu = meta_loss(model, torch.device("cpu"))
    cpu_grads = meta_gradients(model, cpu)
    gpu = meta_loss(model, torch.device("cuda"))
    gpu_grads = meta_gradients(model, gpu)
    # TF32 matmuls and cuDNN's algorithms: agreement to about 1e-3 relative
    assert gpu.item() == pytest.approx(cpu.item(), rel=2e-3)
    for name, expected in cpu_grads.items():
        # every meta-parameter's gradient, to a few percent of its norm (float32 on both,
        # TF32 products and other reduction orders on the GPU)
        error = (gpu_grads[name] - expected).norm()
        assert error <= 3e-2 * expected.norm() + 1e-7, name
    bf16 = meta_loss(model, torch.device("cuda"), "bf16")
    assert bf16.item() == pytest.approx(cpu.item(), rel=2e-2)
    bf16.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("attention", ("none", "both"))
def test_compiled_gpu_meta_loss_matches_eager(attention: str) -> None:
    """--compile on a GPU (Triton kernels): the eager meta-loss, and finite meta-gradients."""
    torch.manual_seed(0)
    model = build_model(Config(image_size=84, attention=attention), 3)
    device = torch.device("cuda")
    eager = meta_loss(copy.deepcopy(model), device)
    compiled_model = compile_model(copy.deepcopy(model))
    for amp in ("none", "bf16"):
        compiled = meta_loss(compiled_model, device, amp)
        assert compiled.item() == pytest.approx(eager.item(), rel=2e-3 if amp == "none" else 2e-2)
    compiled.backward()
    assert all(torch.isfinite(p.grad).all() for p in compiled_model.parameters())


def test_deterministic_gpu_runs_are_identical(folder_dataset, tmp_path, capsys) -> None:
    from attnopt.cli.commands import main

    flags = (
        f"train --data folder --data-root {folder_dataset} --image-size 16 --n-class 3 "
        "--n-shot 2 --n-eval 2 --epoch 1 --episode 4 --meta-batch 2 --val-freq 4 "
        "--episode-val 2 --episode-test 2 --seed 3 --deterministic --amp bf16"
    ).split()
    states = []
    for name in ("a", "b"):
        assert main([*flags, "--save", str(tmp_path / name)]) == 0
        states.append(torch.load(tmp_path / name / "ckpts" / "last.pt", weights_only=True))
    for key, value in states[0]["model"].items():
        assert torch.equal(value, states[1]["model"][key]), key
