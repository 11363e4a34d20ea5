"""How an attnopt process runs: the allocator keeps freed memory, torch's threads sleep."""

from __future__ import annotations

import resource
import sys

import pytest
import torch

from attnopt.models.learner import Conv4Learner
from attnopt.runtime.device import keep_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_inner_steps_reuse_freed_memory_without_page_faults() -> None:
    """By default glibc maps blocks of over 32 MB afresh and unmaps them when freed: every
    inner step at 84x84 (40 images: 36 MB activations) then page-faults some 55,000 times."""
    assert keep_freed_memory()
    torch.manual_seed(0)
    learner = Conv4Learner(3, 5, 84)
    theta = learner.init_theta()[None]
    x, y = torch.randn(1, 40, 3, 84, 84), torch.arange(5).repeat(8)[None]
    for _ in range(4):  # the heap grows to what a step needs
        learner.loss_and_grad(theta, x, y)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(2):
        learner.loss_and_grad(theta, x, y)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before < 1000
