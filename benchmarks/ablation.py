"""Paired ablations: any grid of settings over shots and seeds, each variant against a baseline.

Every run is ``attnopt train`` in a process of its own with one thread (OMP_NUM_THREADS=1),
``--jobs`` (2) at a time. Runs of the same shot are tested on the same test episodes, so each
variant is compared with the baseline of its shot and seed episode by episode
(:func:`attnopt.cli.compare.paired_difference`): one ``paired:`` line per comparison with the mean
difference, its 95% CI and the paired t-test's p-value, then one ``summary:`` line per variant
and shot over the seeds. The per-run CIs hold the test episodes' noise only; the summary's
``seeds_ci95`` is a t-interval over the seeds' mean differences, so it also holds what the
training seed changes (wide with few seeds: with two, 12.7 times their half-spread).

    python benchmarks/ablation.py --out /tmp/abl \\
        --set data=folder data_root=/work/data/emoji image_size=32 episode=500 attention=none \\
        --factor augment=auto,none --factor bn_train=same,transductive --shots 1 5 --seeds 0 1

``--set`` gives every run's settings (Config field names, ``-`` or ``_``); each ``--factor
NAME=A,B,...`` is a setting whose first value is the baseline's. By default the factors are
varied one at a time (the baseline and one run per other value); ``--grid`` runs every
combination. ``--variant "NAME=V NAME=V"`` adds a variant of its own and ``--baseline "..."``
names another baseline. A run folder that already holds a tested run with exactly the same
settings is reused, so a second call with more seeds or factors trains only what is new.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from attnopt.api import train_config
from attnopt.cli.commands import build_parser
from attnopt.cli.compare import check_same_episodes, paired_difference
from attnopt.config import Config, flag
from attnopt.errors import UserError
from attnopt.runs.records import read_test_record

Settings = tuple[tuple[str, str], ...]  # (name, value) pairs, sorted: a variant


def across_seeds(per_seed: Sequence[float]) -> tuple[float, float, float]:
    """Mean of the per-seed mean differences and its 95% t-interval over the seeds (NaN bounds
    for one seed). Unlike a single run's paired CI, which holds only the test episodes' noise,
    this treats the training seed as the unit, so it also holds what a seed changes."""
    means = np.asarray(per_seed, dtype=float)
    if len(means) < 2:
        return float(means.mean()), float("nan"), float("nan")
    if np.ptp(means) == 0:
        return float(means[0]), float(means[0]), float(means[0])
    low, high = stats.ttest_1samp(means, 0.0).confidence_interval(0.95)
    return float(means.mean()), float(low), float(high)


def parse_settings(words: Sequence[str]) -> Settings:
    """["augment=none", "data-root=/x"] -> (("augment", "none"), ("data_root", "/x"))."""
    names = {f.name for f in dataclasses.fields(Config)}
    pairs = []
    for word in words:
        name, sep, value = word.partition("=")
        name = name.strip().lstrip("-").replace("-", "_")
        if not sep or name not in names:
            raise UserError(f"{word!r} is not NAME=VALUE with NAME a setting of attnopt train")
        pairs.append((name, value))
    return tuple(sorted(dict(pairs).items()))


def label(variant: Settings, baseline: Settings = ()) -> str:
    """The settings of ``variant`` that differ from ``baseline``'s."""
    differ = [(k, v) for k, v in variant if dict(baseline).get(k) != v]
    return " ".join(f"{k}={v}" for k, v in differ) or ("baseline" if baseline else "defaults")


def command_flags(settings: dict[str, str]) -> list[str]:
    """Settings as ``attnopt train`` flags; switches (``cpu=true``) become bare flags."""
    kinds = {f.name: f.metadata["kind"] for f in dataclasses.fields(Config)}
    flags: list[str] = []
    for name, value in settings.items():
        if kinds[name] in ("switch", "toggle"):
            on = value.lower() in ("1", "true", "yes")
            if on or kinds[name] == "toggle":
                flags.append(flag(name) if on else "--no-" + flag(name)[2:])
        else:
            flags += [flag(name), value]
    return flags


@dataclass(frozen=True)
class Run:
    """One training run: a variant at one shot and seed, in its own folder."""

    variant: Settings
    shot: int
    seed: int
    folder: Path
    flags: tuple[str, ...]

    def config(self) -> Config:
        args = build_parser().parse_args(["train", *self.flags])
        names = (f.name for f in dataclasses.fields(Config) if f.name in args)
        return train_config({name: getattr(args, name) for name in names})


def make_run(out: Path, common: Settings, variant: Settings, shot: int, seed: int) -> Run:
    """The run of ``variant``; its folder is named by the settings that make it differ from
    ``common`` alone, so the same run has the same folder whatever the other variants."""
    settings = {**dict(common), **dict(variant), "n_shot": str(shot), "seed": str(seed)}
    settings.update(cpu="true", save=str(out))
    plain = {**dict(common), "n_shot": str(shot), "seed": str(seed), "cpu": "true"}
    base = Run((), shot, seed, out, tuple(command_flags({**plain, "save": str(out)}))).config()
    mine = Run(variant, shot, seed, out, tuple(command_flags(settings))).config()
    name = "-".join(f"{k}={v}" for k, v in variant if getattr(mine, k) != getattr(base, k)).replace(
        "/", "_"
    )
    folder = out / f"{shot}shot-seed{seed}" / (name or "baseline")
    settings["save"] = str(folder)
    return Run(variant, shot, seed, folder, tuple(command_flags(settings)))


def already_done(run: Run) -> bool:
    """Whether ``run.folder`` holds a tested run of exactly these settings. UserError when it
    holds a run of other settings (another --out is needed); False when nothing is there."""
    saved_path = run.folder / "config.json"
    if not (run.folder / "test.json").is_file() or not saved_path.is_file():
        return False
    saved = Config.from_dict(json.loads(saved_path.read_text())).to_dict()
    wanted = run.config().to_dict()
    differ = sorted(k for k in wanted if saved.get(k) != wanted[k])
    if differ:
        raise UserError(
            f"{run.folder} holds a run with other settings ({', '.join(differ)}); use another "
            "--out, or remove it"
        )
    return True


class LoadMeter:
    """The 1-minute load average sampled every ``every`` seconds while runs go on."""

    def __init__(self, every: float = 30.0) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(every,), daemon=True)
        self._thread.start()

    def _sample(self, every: float) -> None:
        while not self._stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self._stop.wait(every)

    def stop(self) -> str:
        self._stop.set()
        s = self.samples or [float("nan")]
        return f"{np.median(s):.1f} ({min(s):.1f}-{max(s):.1f})"


def execute(run: Run, baseline: Settings) -> str:
    """Train and test ``run`` (unless done already); its one-line result."""
    if already_done(run):
        return describe(run, baseline, "reused")
    run.config()  # bad settings fail here, before a process starts
    run.folder.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "attnopt", "train", *run.flags, "--overwrite"]
    start, meter = time.perf_counter(), LoadMeter()
    with open(run.folder.parent / f"{run.folder.name}.out", "w") as out:
        done = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    wall, load = time.perf_counter() - start, meter.stop()
    if done.returncode:
        raise UserError(
            f"{' '.join(command)} failed; see {run.folder.parent / run.folder.name}.out"
        )
    return describe(run, baseline, f"wall_s={wall:.0f} load={load}")


def describe(run: Run, baseline: Settings, timing: str) -> str:
    record = read_test_record(run.folder)
    s = record.summary
    rows = (run.folder / "metrics.csv").read_text().splitlines()[1:]
    train_s = max(float(r.split(",")[-1]) for r in rows if ",train," in r)
    return (
        f"run: shot={run.shot} seed={run.seed} variant=[{label(run.variant, baseline)}] "
        f"test={s['accuracy']:.2f}+-{s['ci95']:.2f} checkpoint_episode={s['episode']} "
        f"train_s={train_s:.0f} {timing} folder={run.folder}"
    )


def compared(base: Run, other: Run) -> tuple[str, float, float, float]:
    """The ``paired:`` line of ``other`` against ``base``, with the difference and its CI."""
    a, b = read_test_record(base.folder), read_test_record(other.folder)
    check_same_episodes(a, b)
    mean, low, high, p = paired_difference(a.accuracy, b.accuracy)
    line = (
        f"paired: shot={other.shot} seed={other.seed} "
        f"variant=[{label(other.variant, base.variant)}] "
        f"baseline=[{label(base.variant)}] diff={mean:+.2f} ci95=[{low:+.2f},{high:+.2f}] "
        f"p={p:.3g} variant_test={b.summary['accuracy']:.2f} "
        f"baseline_test={a.summary['accuracy']:.2f} episodes={len(a.accuracy)}"
    )
    return line, mean, low, high


def summary(
    variant: Settings, baseline: Settings, shot: int, results: list[tuple[float, float, float]]
) -> str:
    """Over the seeds: the mean difference with its 95% CI over the seeds
    (:func:`across_seeds`), each seed's, and whether every seed's CI lies on
    the same side of 0."""
    means = [m for m, _, _ in results]
    above = all(low > 0 for _, low, _ in results)
    below = all(high < 0 for _, _, high in results)
    verdict = "better" if above else "worse" if below else "not separated"
    per_seed = ",".join(f"{m:+.2f}" for m in means)
    mean, low, high = across_seeds(means)
    return (
        f"summary: shot={shot} variant=[{label(variant, baseline)}] seeds={len(results)} "
        f"mean_diff={mean:+.2f} seeds_ci95=[{low:+.2f},{high:+.2f}] per_seed=[{per_seed}] "
        f"every_seed_ci={verdict}"
    )


def variants(args: argparse.Namespace) -> tuple[Settings, list[Settings]]:
    """The baseline and the other variants (factors one at a time, or their grid)."""
    factors = []
    for text in args.factor:
        name, values = parse_settings([text.split(",")[0]])[0][0], text.partition("=")[2]
        factors.append([(name, v) for v in values.split(",")])
    first = tuple((f[0][0], f[0][1]) for f in factors)
    baseline = parse_settings(args.baseline.split()) if args.baseline else ()
    baseline = tuple(sorted({**dict(first), **dict(baseline)}.items()))
    others: list[Settings] = []
    if args.grid:
        for combo in itertools.product(*factors):
            others.append(tuple(sorted({**dict(baseline), **dict(combo)}.items())))
    else:
        for factor in factors:
            for pair in factor[1:]:
                others.append(tuple(sorted({**dict(baseline), pair[0]: pair[1]}.items())))
    others += [
        tuple(sorted({**dict(baseline), **dict(parse_settings(v.split()))}.items()))
        for v in args.variant
    ]
    return baseline, [v for v in dict.fromkeys(others) if v != baseline]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/attnopt-ablation"))
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE")
    parser.add_argument("--factor", action="append", default=[], metavar="NAME=A,B,...")
    parser.add_argument("--variant", action="append", default=[], metavar='"NAME=V ..."')
    parser.add_argument("--baseline", metavar='"NAME=V ..."', help="default: first values")
    parser.add_argument("--grid", action="store_true", help="every combination of the factors")
    parser.add_argument("--shots", nargs="+", type=int, default=[1, 5])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    args = parser.parse_args()
    common = parse_settings(args.set)
    baseline, others = variants(args)
    runs = {
        (v, shot, seed): make_run(args.out, common, v, shot, seed)
        for shot in args.shots
        for seed in args.seeds
        for v in (baseline, *others)  # the baseline of each shot and seed first
    }
    for run in runs.values():
        run.config()  # every bad setting fails before the first run starts
    results: dict[tuple[Settings, int], list[tuple[float, float, float]]] = {}
    done: set[tuple[Settings, int, int]] = set()
    failed = 0
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(execute, run, baseline): key for key, run in runs.items()}
        for future in as_completed(futures):
            try:
                print(future.result(), flush=True)
            except UserError as e:  # one failed run does not stop the others
                print(f"error: {e}", flush=True)
                failed += 1
                continue
            done.add(futures[future])
            variant, shot, seed = futures[future]
            pairs = [(variant, shot, seed)] if variant != baseline else []
            if variant == baseline:  # its variants that finished first
                pairs = [(v, shot, seed) for v in others if (v, shot, seed) in done]
            for v, s, sd in pairs:
                if (baseline, s, sd) in done:
                    line, *diff = compared(runs[baseline, s, sd], runs[v, s, sd])
                    print(line, flush=True)
                    results.setdefault((v, s), []).append(tuple(diff))
    for (variant, shot), per_seed in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        print(summary(variant, baseline, shot, per_seed), flush=True)
    if failed:
        raise UserError(f"{failed} runs failed (see their error lines)")


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
