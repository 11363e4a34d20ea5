"""Meta-batches: B tasks adapted together compute what B separate adaptations compute."""

import contextlib
import csv
import io
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from graph_memory import saved_bytes

from attnopt.adapt import adapt, query_logits
from attnopt.cli.commands import main
from attnopt.config import Config
from attnopt.data.episodes import EpisodeSampler
from attnopt.data.imageset import ImageSet
from attnopt.data.prefetch import prefetch
from attnopt.models.build import FewShotModel, build_model
from attnopt.training.evaluation import evaluate

TASKS, EPOCHS, BATCH = 3, 2, 5


def trained_looking(attention: str, seed: int = 0, **overrides) -> FewShotModel:
    """A model whose attention is switched on (as after meta-training), so every path counts."""
    torch.manual_seed(seed)
    config = Config(
        attention=attention, image_size=16, n_class=5, hidden_size=8, attn_chunk=16, **overrides
    )
    model = build_model(config, in_channels=3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "attn_out" in name or "attn_scale" in name:
                p.normal_(0.0, 0.5)
    return model


def tasks(seed: int = 1) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    support_x = torch.randn(TASKS, 10, 3, 16, 16, generator=g)
    support_y = torch.stack([torch.randperm(10, generator=g) % 5 for _ in range(TASKS)])
    query_x = torch.randn(TASKS, 15, 3, 16, 16, generator=g)
    query_y = torch.arange(5).repeat(3).expand(TASKS, -1)
    return support_x, support_y, query_x, query_y


@pytest.mark.parametrize("attention", ("none", "meta", "learner", "both"))
def test_batched_adaptation_equals_separate_adaptations(attention: str) -> None:
    model = trained_looking(attention)
    support_x, support_y, query_x, _ = tasks()
    with torch.no_grad():
        together = adapt(model.learner, model.metalearner, support_x, support_y, EPOCHS, BATCH)
        logits = query_logits(model.learner, together, support_x, query_x)
        for b in range(TASKS):
            alone = adapt(
                model.learner,
                model.metalearner,
                support_x[b][None],
                support_y[b][None],
                EPOCHS,
                BATCH,
            )[0]
            torch.testing.assert_close(together[b], alone, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(
                logits[b],
                query_logits(model.learner, alone[None], support_x[b][None], query_x[b][None])[0],
                rtol=1e-4,
                atol=1e-5,
            )


@pytest.mark.parametrize("attention", ("none", "both"))
def test_meta_gradient_of_a_batch_is_the_mean_of_the_tasks_meta_gradients(attention) -> None:
    model = trained_looking(attention)
    support_x, support_y, query_x, query_y = tasks()

    def meta_loss(sl: slice) -> torch.Tensor:
        theta = adapt(model.learner, model.metalearner, support_x[sl], support_y[sl], EPOCHS, BATCH)
        logits = query_logits(model.learner, theta, support_x[sl], query_x[sl])
        return F.cross_entropy(logits.flatten(0, 1), query_y[sl].flatten())

    params = list(model.parameters())
    together = torch.autograd.grad(meta_loss(slice(None)), params)
    separate = [torch.autograd.grad(meta_loss(slice(b, b + 1)), params) for b in range(TASKS)]
    for i, g in enumerate(together):
        mean = torch.stack([s[i] for s in separate]).mean(0)
        torch.testing.assert_close(g, mean, rtol=1e-4, atol=1e-6)


def test_bf16_autocast_changes_the_meta_loss_only_slightly() -> None:
    """The learner's convolutions in bfloat16 (θ and the meta-learner in fp32): on a fixed
    episode the meta-loss moves by less than 2% (bf16 keeps 8 bits of mantissa)."""
    support_x, support_y, query_x, query_y = tasks()
    losses = {}
    for amp in ("none", "bf16"):
        model = trained_looking("both", amp=amp)
        theta = adapt(model.learner, model.metalearner, support_x, support_y, EPOCHS, BATCH)
        assert theta.dtype == torch.float32
        logits = query_logits(model.learner, theta, support_x, query_x)
        assert logits.dtype == torch.float32
        losses[amp] = F.cross_entropy(logits.flatten(0, 1), query_y.flatten())
        losses[amp].backward()  # the meta-gradient flows through autocast
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert abs(losses["bf16"] - losses["none"]) / losses["none"] < 0.02
    assert losses["bf16"] != losses["none"]  # autocast did take effect


def imageset(classes: int = 6, per_class: int = 6, size: int = 16) -> ImageSet:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (classes * per_class, size, size, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(classes), per_class)
    return ImageSet(images, labels, [f"c{i}" for i in range(classes)], "memory")


def test_a_meta_batch_of_episodes_stacks_the_single_episodes() -> None:
    sampler = EpisodeSampler(imageset(), 3, 2, 2, seed=4)
    batch = sampler.episodes([5, 2, 9])
    for b, index in enumerate([5, 2, 9]):
        one = sampler.episode(index)
        for name in ("support_x", "support_y", "query_x", "query_y"):
            assert torch.equal(getattr(batch, name)[b], getattr(one, name)), name


def test_evaluation_does_not_depend_on_how_many_tasks_are_adapted_together() -> None:
    sampler = EpisodeSampler(imageset(), 3, 2, 2, seed=0)
    torch.manual_seed(0)
    model = build_model(Config(image_size=16, n_class=3, n_shot=2, batch_size=6), 3)
    results = [
        evaluate(
            model,
            sampler,
            Config(n_class=3, n_shot=2, epoch=2, batch_size=6, eval_batch=b),
            7,
            torch.device("cpu"),
        )
        for b in (1, 3, 7)
    ]
    for r in results[1:]:
        assert r.accuracy == pytest.approx(results[0].accuracy)
        assert r.ci95 == pytest.approx(results[0].ci95)


def test_evaluation_speed_leaves_out_the_first_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test-time estimate uses the speed after the first batch: under --compile that
    batch waits for the compiler (minutes), the others take what they will take."""
    import attnopt.training.evaluation as evaluation

    clock = iter(range(1000))
    scored = []
    real = evaluation.score_episodes

    def slow_first_batch(*args, **kwargs):
        scored.append(1)
        for _ in range(100 if len(scored) == 1 else 2):  # the first batch: 100 ticks, others 2
            next(clock)
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "score_episodes", slow_first_batch)
    monkeypatch.setattr(evaluation.time, "perf_counter", lambda: float(next(clock)))
    config = Config(n_class=3, n_shot=2, epoch=1, batch_size=6, eval_batch=2)
    model = build_model(Config(image_size=16, n_class=3, n_shot=2, batch_size=6), 3)
    sampler = EpisodeSampler(imageset(), 3, 2, 2, seed=0)
    result = evaluate(model, sampler, config, 7, torch.device("cpu"))
    # batches of 2, 2, 2 and 1 episodes; counting the first would give at least 100 / 7
    assert result.seconds > 100
    assert 6 / 5 <= result.seconds_per_episode < 3


def test_prefetch_keeps_the_order_and_raises_where_it_failed() -> None:
    assert list(prefetch(lambda i: i * i, range(7))) == [i * i for i in range(7)]

    def fail_at_three(i: int) -> int:
        if i == 3:
            raise ValueError("three")
        return i

    seen = []
    with pytest.raises(ValueError, match="three"):
        for value in prefetch(fail_at_three, range(10)):
            seen.append(value)
    assert seen == [0, 1, 2]


def run_flags(data: Path, save: Path, *extra: str) -> list[str]:
    flags = (
        f"--data folder --data-root {data} --image-size 16 --n-class 3 --n-shot 2 --n-eval 2 "
        f"--epoch 1 --episode-val 2 --episode-test 2 --save {save} --cpu --seed 3"
    )
    return ["train", *flags.split(), *extra]


def train_quietly(argv: list[str]) -> int:
    with contextlib.redirect_stdout(io.StringIO()):
        return main(argv)


def test_meta_batch_counts_episodes_and_logs_when_a_multiple_is_passed(
    folder_dataset: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    flags = "--meta-batch 2 --episode 5 --log-freq 3 --val-freq 4".split()
    assert train_quietly(run_flags(folder_dataset, run, *flags)) == 0
    with open(run / "metrics.csv", newline="") as f:
        rows = [(int(r["episode"]), r["split"]) for r in csv.DictReader(f)]
    # updates end at episodes 2, 4, 6: the log passes 3 at 4 and ends at 6; val passes 4 at 4
    assert rows == [(4, "train"), (4, "val"), (6, "train"), (6, "val")]
    assert torch.load(run / "ckpts" / "last.pt", weights_only=True)["episode"] == 6


def test_meta_batch_must_split_evenly_across_processes(monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", "--meta-batch", "3", "--save", str(tmp_path / "r"), "--cpu"]) == 2
    assert "--meta-batch 3 cannot be split across 2 processes" in capsys.readouterr().err


def test_the_meta_graph_keeps_no_activations_of_the_inner_steps() -> None:
    """The meta-gradient needs θ's trajectory, not the learner's activations of the inner
    steps: the graph of θ_T keeps as much for 16x16 as for 31x31 images (same P: both end in
    1x1 feature maps), although their activations differ almost 4-fold."""

    def kept(size: int) -> int:
        torch.manual_seed(0)
        config = Config(image_size=size, n_class=5, hidden_size=8, attention="both")
        model = build_model(config, in_channels=3)
        support_x = torch.randn(2, 10, 3, size, size)
        support_y = torch.arange(5).repeat(2).expand(2, -1)
        theta = adapt(model.learner, model.metalearner, support_x, support_y, 3, 5)
        return saved_bytes(theta)

    small, large = kept(16), kept(31)
    assert small > 0
    assert large == small
