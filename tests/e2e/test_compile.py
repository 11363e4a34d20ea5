"""--compile: the compiled inner loop computes what the eager one does."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import error_line, tiny_flags

import attnopt
import attnopt.training.pipeline
from attnopt.adapt import adapt, query_logits
from attnopt.cli.commands import main
from attnopt.config import Config
from attnopt.data.episodes import Episode
from attnopt.errors import UserError
from attnopt.models.build import FewShotModel, build_model
from attnopt.objective import InnerLoop, score_episodes
from attnopt.runtime import compilation


def _meta_update(model: FewShotModel, episode: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """θ_T, the meta-loss and its gradient for every meta-parameter; then evaluation logits."""
    support_x, support_y, query_x, query_y = episode
    learner, metalearner = model.learner, model.metalearner
    theta = adapt(learner, metalearner, support_x, support_y, epochs=2, batch_size=3)
    logits = query_logits(learner, theta, support_x, query_x)
    loss = F.cross_entropy(logits.flatten(0, 1), query_y.flatten())
    grads = torch.autograd.grad(loss, list(model.parameters()))
    with torch.no_grad():  # evaluation: the compiled graphs without autograd
        eval_theta = adapt(learner, metalearner, support_x, support_y, 2, 3)
        eval_logits = query_logits(learner, eval_theta, support_x, query_x)
    return [theta.detach(), loss.detach(), *grads, eval_logits]


@pytest.mark.parametrize(
    "learner",
    [{}, {"backbone": "resnet12", "width": 2, "adapt": "last"}],
    ids=["conv4", "resnet12-last"],
)
def test_compiled_inner_loop_equals_eager_in_float64(
    learner: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every part that --compile can compile, on: same θ_T, meta-loss, meta-gradient and
    evaluation logits as eager to float64 rounding, for Conv-4 and for ResNet-12 under
    partial adaptation (the frozen stages computed once, outside the adapted graph).

    What is checked is our side: that TorchDynamo captures the parts (torch.func.grad inside,
    nested compiled forward, both attentions) and AOTAutograd differentiates them faithfully.
    Inductor's code generation is left out (the ``aot_eager`` backend): it costs ~100 s of C++
    compilation on 2 cores, and the CPU's Inductor path is run end to end by the next test.
    Checked once by hand with Inductor: equal to 3e-15 in float64; in float32 its fused
    reductions round differently, up to ~1e-3 relative on inner gradients behind the
    cross-attention.
    """
    compile_with = torch.compile  # fullgraph: a graph break (silent eager fallback) fails
    monkeypatch.setattr(
        torch, "compile", lambda f: compile_with(f, backend="aot_eager", fullgraph=True)
    )
    torch.manual_seed(0)
    config = Config(n_class=3, n_shot=2, image_size=16, attention="both", **learner)
    eager = build_model(config, 1).double()
    with torch.no_grad():  # switch both attentions on (both start as the plain model)
        eager.learner.attn_scale.fill_(0.5)
        eager.metalearner.attn_out.weight.normal_(0, 0.1)
    compiled = compilation.compile_model(copy.deepcopy(eager), compilation.PARTS)
    tasks, n, q = 2, 6, 6
    episode = (
        torch.randn(tasks, n, 1, 16, 16, dtype=torch.float64),
        torch.arange(3).repeat(2).expand(tasks, -1),
        torch.randn(tasks, q, 1, 16, 16, dtype=torch.float64),
        torch.arange(3).repeat(2).expand(tasks, -1),
    )
    expected, actual = _meta_update(eager, episode), _meta_update(compiled, episode)
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    for e, a in zip(expected, actual, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-12)


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_train_with_compile_matches_the_eager_run(
    trained_template: tuple[Path, str],
    folder_dataset: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The user's path, Inductor's kernels included: the same training and validation
    metrics as the eager run of the same seed (float32, so equal to rounding), and the test
    of the compiled run's checkpoint equals its eager test."""
    monkeypatch.setattr(attnopt.training.pipeline, "draw_figures", lambda *a: None)  # not compiled
    run = tmp_path / "compiled"
    flags = [*tiny_flags(folder_dataset, run), "--episode", "3", "--episode-test", "3"]
    assert main(["train", *flags, "--compile"]) == 0
    assert json.loads((run / "config.json").read_text())["compile"] is True
    # the same episodes 1..3 as the eager template run: the rows after episode 2 and at 3
    shared = [("2", "train"), ("3", "val")]
    eager_rows, rows = (
        [r for r in _rows(path) if (r["episode"], r["split"]) in shared]
        for path in (trained_template[0], run)
    )
    assert [(r["episode"], r["split"]) for r in rows] == shared
    assert [(r["episode"], r["split"]) for r in eager_rows] == shared
    for r, e in zip(rows, eager_rows, strict=True):
        for column in ("loss", "accuracy"):
            assert float(r[column]) == pytest.approx(float(e[column]), rel=1e-4, abs=1e-4)
    compiled_test = json.loads((run / "test.json").read_text())
    ckpt = str(run / "ckpts" / "best.pt")
    eager_test = attnopt.evaluate(ckpt, device="cpu", episode_test=3, compile=False)
    assert compiled_test["accuracy"] == pytest.approx(eager_test.accuracy, abs=1e-3)


def test_compiled_meta_updates_repeat_bit_for_bit() -> None:
    """Compiled kernels are as deterministic as eager ones on the CPU: no atomic adds whose
    order changes from run to run (the meta-learner's chunk embeddings once had one). The
    shapes are those of the tiny CLI run above, whose compiled kernels are then cached."""
    torch.manual_seed(0)
    model = build_model(Config(n_class=3, n_shot=2, image_size=16, attention="both"), 3)
    with torch.no_grad():
        model.learner.attn_scale.fill_(0.5)
        model.metalearner.attn_out.weight.normal_(0, 0.1)
    compiled = compilation.compile_model(model)
    g = torch.Generator().manual_seed(1)
    episode = Episode(
        torch.randn(1, 6, 16, 16, 3, generator=g).movedim(-1, 2),  # channels-last
        torch.arange(3).repeat(2)[None],
        torch.randn(1, 6, 16, 16, 3, generator=g).movedim(-1, 2),
        torch.arange(3).repeat(2)[None],
    )

    def meta_gradient() -> list[torch.Tensor]:
        score = score_episodes(compiled, episode, InnerLoop(epochs=8, batch_size=6))
        return [score.loss, *torch.autograd.grad(score.loss, list(compiled.parameters()))]

    for a, b in zip(meta_gradient(), meta_gradient(), strict=True):
        assert torch.equal(a, b)


def test_compile_without_a_cxx_compiler_is_a_user_error(
    folder_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(compilation.shutil, "which", lambda name: None)
    run = tmp_path / "run"
    assert main(["train", *tiny_flags(folder_dataset, run), "--compile"]) == 2
    assert "--compile needs a C++ compiler" in error_line(capsys)
    assert not run.exists()  # checked before anything is written


def test_compile_on_a_gpu_too_old_for_triton_is_a_user_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(compilation.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (6, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "Tesla P100")
    with pytest.raises(UserError, match="Tesla P100 is too old for Triton"):
        compilation.check_compiler(torch.device("cuda"))
