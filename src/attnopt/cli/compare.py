"""``attnopt compare``: paired comparisons of runs tested on the same episodes.

Validation and test episodes depend only on the data, N, K, Q, the split and a fixed seed, so
two runs tested alike scored the same tasks; the difference of their accuracies, episode by
episode, is far less noisy than two unpaired confidence intervals. Each record is compared
with the first: the mean paired difference, its 95% confidence interval and the paired
t-test's p-value (scipy).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from scipy import stats

from attnopt.errors import UserError
from attnopt.runs.records import TestRecord, read_test_record


def check_same_episodes(base: TestRecord, other: TestRecord) -> None:
    """UserError unless both records scored the same episodes."""
    ids = base.summary.get("episodes_id"), other.summary.get("episodes_id")
    if not all(ids):
        missing = base if not ids[0] else other
        raise UserError(
            f"{missing.path} does not say which episodes it scored (tested by an older "
            "version); rerun `attnopt test` on its checkpoint"
        )
    if ids[0] != ids[1] or len(base.accuracy) != len(other.accuracy):
        shape = "{n_class}-way {n_shot}-shot, {episodes} episodes"
        raise UserError(
            f"{other.path} ({shape.format(**other.summary)}) was not tested on the same "
            f"episodes as {base.path} ({shape.format(**base.summary)}): a paired comparison "
            "needs the same data, N, K, Q and number of test episodes; test both alike with "
            "`attnopt test --resume CKPT --episode-test ...`"
        )


def paired_difference(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float, float]:
    """Mean of b - a in percentage points, its 95% CI (low, high) and the paired t-test's
    two-sided p-value (NaN when the two agree on every episode)."""
    diff = (np.asarray(b, dtype=float) - np.asarray(a, dtype=float)) * 100.0
    if not diff.any():
        return 0.0, 0.0, 0.0, float("nan")
    test = stats.ttest_1samp(diff, 0.0)
    low, high = test.confidence_interval(0.95)
    return float(diff.mean()), float(low), float(high), float(test.pvalue)


def compare(paths: Sequence[str | os.PathLike]) -> str:
    """The comparison of every record in ``paths`` against the first, as text."""
    if len(paths) < 2:
        raise UserError("compare needs at least two runs or test records")
    records = [read_test_record(p) for p in paths]
    base = records[0]
    lines = [f"A = {base.path}: {_summary(base)}"]
    for other in records[1:]:
        check_same_episodes(base, other)
        mean, low, high, p = paired_difference(base.accuracy, other.accuracy)
        diff = np.asarray(other.accuracy) - np.asarray(base.accuracy)
        test = f"paired t-test p = {p:.3g}" if p == p else "identical on every episode"
        lines.append(
            f"B = {other.path}: {_summary(other)}\n"
            f"  B - A: {mean:+.2f} points (95% CI {low:+.2f} to {high:+.2f}), {test}; "
            f"B better on {int((diff > 0).sum())} episodes, worse on "
            f"{int((diff < 0).sum())}, equal on {int((diff == 0).sum())}"
        )
    return "\n".join(lines)


def _summary(record: TestRecord) -> str:
    s = record.summary
    return (
        f"{s['accuracy']:.2f}% ± {s['ci95']:.2f}% ({s['episodes']} episodes, "
        f"{s['n_class']}-way {s['n_shot']}-shot)"
    )
