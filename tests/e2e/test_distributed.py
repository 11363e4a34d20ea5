"""torchrun: G processes x B/G tasks compute what one process with meta-batch B computes."""

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import attnopt.training.pipeline
from attnopt.adapt import adapt, query_logits
from attnopt.cli.commands import main
from attnopt.config import Config, resolve
from attnopt.data.episodes import TEST_STREAM, VAL_STREAM, EpisodeSampler
from attnopt.models.build import build_model
from attnopt.training import distributed
from attnopt.training.checkpoint import PRETRAINED, load_checkpoint

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed missing")

LR = 1e-3


def meta_gradient(tasks: slice, procs: distributed.Processes) -> dict[str, torch.Tensor]:
    """The meta-gradient of the query loss of ``tasks`` (of 2 fixed tasks), averaged over
    the processes."""
    torch.manual_seed(0)
    model = build_model(Config(image_size=16, n_class=3, attention="both"), 3)
    with torch.no_grad():
        model.learner.attn_scale.fill_(0.3)
        model.metalearner.attn_out.weight.normal_()
    g = torch.Generator().manual_seed(1)
    support_x, query_x = torch.randn(2, 6, 3, 16, 16, generator=g), torch.randn(2, 6, 3, 16, 16)
    support_y = query_y = torch.arange(3).repeat(2).expand(2, -1)
    theta = adapt(model.learner, model.metalearner, support_x[tasks], support_y[tasks], 2, 6)
    logits = query_logits(model.learner, theta, support_x[tasks], query_x[tasks])
    F.cross_entropy(logits.flatten(0, 1), query_y[tasks].flatten()).backward()
    distributed.average_gradients(model.parameters(), procs)
    return {name: p.grad for name, p in model.named_parameters()}


def _worker(rank: int, rendezvous: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=2)
    try:
        procs = distributed.Processes(rank, 2)
        torch.save(meta_gradient(slice(rank, rank + 1), procs), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_all_reduced_meta_gradient_of_2x1_tasks_equals_that_of_1x2(tmp_path: Path) -> None:
    out = str(tmp_path / "grad")
    mp.spawn(_worker, args=(f"file://{tmp_path / 'rendezvous'}", out), nprocs=2)
    together = meta_gradient(slice(0, 2), distributed.Processes())
    for rank in (0, 1):
        split = torch.load(f"{out}.{rank}", weights_only=True)
        for name, grad in together.items():
            scale = grad.abs().max().item()  # rounding differences relative to the largest
            torch.testing.assert_close(
                split[name], grad, rtol=1e-4, atol=1e-5 * scale, msg=lambda m, n=name: f"{n}: {m}"
            )


def flags(data: Path, save: Path) -> list[str]:
    return (
        f"train --data folder --data-root {data} --image-size 16 --n-class 3 --n-shot 2 "
        f"--n-eval 2 --epoch 1 --episode 4 --meta-batch 2 --log-freq 2 --val-freq 4 "
        f"--episode-val 2 --episode-test 2 --lr {LR} --save {save} --cpu --seed 5"
        " --no-pretrain"  # pre-trained with 1 thread or 2, c_I's features differ by rounding
    ).split()


def metric_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "elapsed_s"} for row in csv.DictReader(f)]


def test_torchrun_with_two_processes_trains_like_one_process(
    folder_dataset: Path, tmp_path: Path, isolated_cache: Path, capsys
) -> None:
    single, multi = tmp_path / "single", tmp_path / "multi"
    assert main(flags(folder_dataset, single)) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ATTNOPT_CACHE": str(isolated_cache)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = subprocess.run(
        [*command, "-m", "attnopt", *flags(folder_dataset, multi)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, (done.stdout[-1500:], done.stderr[-3000:])
    assert done.stdout.count("test accuracy") == 1  # rank 0 alone reports
    lines = [len((run / "train.log").read_text().splitlines()) for run in (single, multi)]
    assert lines[0] == lines[1]  # rank 1 logged nothing of its own
    a = torch.load(single / "ckpts" / "last.pt", weights_only=True)
    b = torch.load(multi / "ckpts" / "last.pt", weights_only=True)
    assert a["episode"] == b["episode"] == 4
    for name, value in a["model"].items():
        diff = (b["model"][name] - value).abs()
        # Equal meta-gradients up to rounding (test above); Adam's first steps move each
        # coordinate by about ±lr whatever the gradient's size, so a coordinate whose gradient
        # is at the rounding level may take the other sign: bounded by 2·lr per update.
        assert diff.max() <= 2 * LR * 2 + 1e-6, name
        assert (diff > 1e-6).float().mean() < 0.01, name
    rows_a, rows_b = metric_rows(single), metric_rows(multi)
    assert [(r["episode"], r["split"]) for r in rows_b] == [
        (r["episode"], r["split"]) for r in rows_a
    ]
    for ra, rb in zip(rows_a, rows_b, strict=True):
        if ra["loss"]:
            assert float(rb["loss"]) == pytest.approx(float(ra["loss"]), rel=1e-3)


def _recording_worker(rank: int, port: int, data: str, out: str) -> None:
    """One of two processes, started as torchrun would start it, recording which validation
    and test episodes it scores."""
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )  # fmt: skip
    torch.set_num_threads(1)
    seen: dict[int, list[int]] = {VAL_STREAM: [], TEST_STREAM: []}
    real = EpisodeSampler.episodes

    def episodes(self, indices, *args, **kwargs):
        if self.stream in seen:
            seen[self.stream].extend(indices)
        return real(self, indices, *args, **kwargs)

    EpisodeSampler.episodes = episodes
    attnopt.training.pipeline.draw_figures = lambda *a: None
    settings = "image_size=16 n_class=3 n_shot=2 n_eval=2 epoch=1 episode=4 meta_batch=2 "
    settings += "log_freq=2 val_freq=4 episode_val=5 episode_test=3 seed=5"
    config = resolve(
        {
            **{k: int(v) for k, v in (pair.split("=") for pair in settings.split())},
            **{"data": "folder", "data_root": data, "save": out, "cpu": True},
        }
    )
    attnopt.training.pipeline.train_and_test(config)
    Path(f"{out}.{rank}.json").write_text(json.dumps(seen))
    # The run left the process group entirely: gloo threads alive into interpreter shutdown
    # can abort the process after a successful run.
    assert gloo_threads() == [], gloo_threads()


def gloo_threads() -> list[str]:
    """The names of this process's gloo threads (Linux; elsewhere none are seen)."""
    tasks = Path("/proc/self/task")
    names = [(t / "comm").read_text().strip() for t in tasks.iterdir()] if tasks.is_dir() else []
    return [name for name in names if "gloo" in name]


def test_every_process_scores_its_share_of_validation_and_test_episodes(
    folder_dataset: Path, tmp_path: Path
) -> None:
    """No process waits while another evaluates alone (a long validation would outlast the
    process group's timeout): each scores a block of the episodes, and the blocks make up
    every episode exactly once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    mp.spawn(_recording_worker, args=(port, str(folder_dataset), str(out)), nprocs=2)
    seen = [json.loads(Path(f"{out}.{rank}.json").read_text()) for rank in (0, 1)]
    # one validation (at episode 4, the end) of 5 episodes, a test of 3
    assert (seen[0][str(VAL_STREAM)], seen[1][str(VAL_STREAM)]) == ([0, 1, 2], [3, 4])
    assert (seen[0][str(TEST_STREAM)], seen[1][str(TEST_STREAM)]) == ([0, 1], [2])
    assert json.loads((out / "test.json").read_text())["episodes"] == 3
    # --data folder pre-trained first, in both processes (none waited for the other), and
    # rank 0 alone wrote the features
    assert load_checkpoint(out / "pretrain" / "pretrained.pt")["kind"] == PRETRAINED
