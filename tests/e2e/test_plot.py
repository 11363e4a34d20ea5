"""The figures of ``attnopt plot``: the numbers they show and what they say, not their pixels."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnopt.config import Config
from attnopt.data.episodes import Episode
from attnopt.errors import UserError
from attnopt.figures.plot import (
    EpisodeAttention,
    class_share,
    draw_cross_attention,
    draw_gates,
    episode_attention,
    plot_gates,
    read_gates,
)
from attnopt.figures.stats import (
    ClassShare,
    deviation_from_layer_mean,
    same_class_shares,
    support_image_shares,
)
from attnopt.models.build import build_model

PNG = b"\x89PNG\r\n\x1a\n"


def test_same_class_share_matches_a_hand_computation() -> None:
    # One query, 2 positions, 4 support images of 2 positions each (classes 0, 0, 1, 1).
    weights = torch.zeros(1, 2, 4, 2)
    weights[0, 0, 0, 0] = 0.5  # position 0: half on image 0, half on image 1
    weights[0, 0, 1, 1] = 0.5
    weights[0, 1, 2, 0] = 1.0  # position 1: all on image 2
    shares = support_image_shares(weights)
    torch.testing.assert_close(shares, torch.tensor([[0.25, 0.25, 0.5, 0.0]]))
    support_y = torch.tensor([0, 0, 1, 1])
    assert same_class_shares(shares, support_y, torch.tensor([1])).item() == 0.5
    assert same_class_shares(shares, support_y, torch.tensor([0])).item() == 0.5
    shares = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.1, 0.1]])
    torch.testing.assert_close(
        same_class_shares(shares, support_y, torch.tensor([1, 0])), torch.tensor([0.7, 0.8])
    )


def _uniform_episode(n_class: int, n_shot: int, n_query: int) -> EpisodeAttention:
    support_y = torch.arange(n_class).repeat_interleave(n_shot)
    query_y = torch.arange(n_class).repeat_interleave(n_query)
    weights = torch.full((len(query_y), 9, len(support_y), 9), 1 / (9 * len(support_y)))
    return EpisodeAttention(support_image_shares(weights), support_y, query_y)


def test_uniform_attention_is_reported_as_uniform() -> None:
    episodes = [_uniform_episode(5, 5, 3), _uniform_episode(5, 5, 3)]
    summary = class_share(episodes, 5)
    torch.testing.assert_close(summary.shares, torch.full((30,), 0.2))
    assert summary.verdict == "uniform"
    sentence = "attention to the query's own class is indistinguishable from uniform"
    assert summary.sentence().startswith(sentence)
    fig = draw_cross_attention(episodes, summary, heat_maps=2, title="t")
    assert sentence.capitalize() in fig.get_suptitle()


@pytest.mark.parametrize(
    ("shares", "verdict"),
    [
        ([0.6, 0.7, 0.65, 0.62], "own class"),
        ([0.05, 0.02, 0.04, 0.03], "other classes"),
        ([0.21, 0.21, 0.21, 0.21], "uniform"),  # 5% above 1/N: within the tolerance
        ([0.0, 0.6, 0.0, 0.5], "uniform"),  # mean 27.5%, but the 95% interval holds 20%
        ([0.6], "own class"),  # one query: no interval, only the tolerance
    ],
)
def test_the_verdict_compares_the_mean_share_with_one_over_n(
    shares: list[float], verdict: str
) -> None:
    summary = ClassShare(torch.tensor(shares), n_class=5)
    assert summary.uniform == 0.2
    assert summary.verdict == verdict


def test_a_class_selective_attention_is_reported_with_its_ratio_to_uniform() -> None:
    summary = ClassShare(torch.tensor([0.6, 0.6, 0.6]), n_class=5)
    assert summary.ci95 == 0.0
    assert summary.sentence() == (
        "attention favours the query's own class: 60.0% ± 0.0% = 3× the uniform 1/N = 20.0%"
    )
    below = ClassShare(torch.tensor([0.05, 0.05]), n_class=4)
    assert below.sentence() == (
        "attention avoids the query's own class: 5.0% ± 0.0% = 0.2× the uniform 1/N = 25.0%"
    )


def test_episode_attention_does_not_depend_on_the_order_of_the_episode() -> None:
    torch.manual_seed(0)
    # batch_size = N·K: every inner step sees the whole support set, in any order
    config = Config(attention="learner", image_size=16, n_class=3, n_shot=2, epoch=2, batch_size=6)
    model = build_model(config, in_channels=3)
    g = torch.Generator().manual_seed(1)
    episode = Episode(
        torch.randn(6, 3, 16, 16, generator=g),
        torch.tensor([0, 1, 2, 0, 1, 2]),
        torch.randn(9, 3, 16, 16, generator=g),
        torch.tensor([2, 1, 0, 0, 1, 2, 2, 0, 1]),
    )
    s, q = torch.randperm(6, generator=g), torch.randperm(9, generator=g)
    shuffled = Episode(
        episode.support_x[s], episode.support_y[s], episode.query_x[q], episode.query_y[q]
    )
    a, b = episode_attention(model, episode, config), episode_attention(model, shuffled, config)
    assert torch.equal(a.support_y, torch.tensor([0, 0, 1, 1, 2, 2]))
    assert torch.equal(a.query_y, b.query_y)
    torch.testing.assert_close(a.shares.sum(1), torch.ones(9))
    share_a, share_b = class_share([a], 3).shares, class_share([b], 3).shares
    torch.testing.assert_close(share_a.sort().values, share_b.sort().values)


GATES_CSV = """episode,step,layer,input_gate,forget_gate
10,1,block0,0.01,0.99
10,1,head,0.03,0.98
10,2,block0,0.02,0.999
10,2,head,0.06,0.996
20,1,block0,0.1,0.9
"""


def test_gates_csv_is_read_into_episode_step_layer_tables(tmp_path: Path) -> None:
    (tmp_path / "gates.csv").write_text(GATES_CSV)
    table = read_gates(tmp_path / "gates.csv")
    assert (table.episodes, table.steps, table.layers) == ([10, 20], [1, 2], ["block0", "head"])
    inp = table.values["input_gate"]
    assert inp.shape == (2, 2, 2)
    torch.testing.assert_close(inp[0], torch.tensor([[0.01, 0.03], [0.02, 0.06]]))
    assert inp[1, 0, 0].item() == pytest.approx(0.1)
    assert torch.isnan(inp[1, 0, 1]) and torch.isnan(inp[1, 1]).all()  # rows never logged
    assert table.values["forget_gate"][0, 1, 1].item() == pytest.approx(0.996)


def test_layer_deviation_is_in_percent_of_the_mean_over_layers() -> None:
    values = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]])
    torch.testing.assert_close(
        deviation_from_layer_mean(values), torch.tensor([[-50.0, 0.0, 50.0], [0.0, 0.0, 0.0]])
    )


def test_gate_figure_states_how_much_the_layers_differ(tmp_path: Path) -> None:
    (tmp_path / "gates.csv").write_text(GATES_CSV)
    fig = draw_gates(read_gates(tmp_path / "gates.csv"))
    titles = [ax.get_title() for ax in fig.axes]
    # the last logged episode (20) has only block0's first step: nothing to compare
    assert "layers differ by up to 0.0% (episode 20)" in titles
    (tmp_path / "gates.csv").write_text(GATES_CSV.rsplit("20,1", 1)[0])  # drop episode 20
    fig = draw_gates(read_gates(tmp_path / "gates.csv"))
    titles = [ax.get_title() for ax in fig.axes]
    # input gates at step 2: 0.02 and 0.06, mean 0.04 -> ±50%
    assert "layers differ by up to 50.0% (episode 10)" in titles
    assert len(fig.legends) == 1 and [t.get_text() for t in fig.legends[0].texts] == [
        "block0",
        "head",
    ]
    assert all(ax.get_ylabel() for ax in fig.axes)
    assert plot_gates(tmp_path).read_bytes()[:8] == PNG


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (None, "does not exist"),
        ("episode,step,layer,input_gate,forget_gate\n", "has no rows yet"),
        ("episode,step,layer,input_gate,forget_gate\n1,1,head,x,0.9\n", "not an attnopt gates"),
        ("a,b\n1,2\n", "not an attnopt gates"),
    ],
)
def test_a_missing_empty_or_foreign_gates_file_is_a_user_error(
    tmp_path: Path, text: str | None, problem: str
) -> None:
    if text is not None:
        (tmp_path / "gates.csv").write_text(text)
    with pytest.raises(UserError, match=problem) as error:
        plot_gates(tmp_path)
    assert str(tmp_path / "gates.csv") in str(error.value)
    assert not (tmp_path / "gates.png").exists()


def test_import_attnopt_does_not_load_matplotlib() -> None:
    code = "import sys, attnopt; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
