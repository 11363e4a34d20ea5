#!/usr/bin/env bash
# The GPU checks in one go, most important first (about 8 minutes on one H100; Triton's
# compilation is most of it): throughput at mini-ImageNet shapes for the issue-5 targets
# (B = 32, bf16, eager vs --compile), the B / precision grid, MLAL's cost, evaluation speed and
# the GPU tests. Run from the repository root with the package installed:  bash benchmarks/gpu.sh
set -euo pipefail
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
tp() { python benchmarks/throughput.py --device cuda --updates 5 --repeats 3 "$@"; }
tp --config mini-5shot --config mini-1shot --meta-batch 32 --amp bf16 --compile none --compile all
tp --config mini-5shot --config mini-1shot --meta-batch 1 --meta-batch 8 --meta-batch 32 --amp none
tp --config mini-5shot --attention both --meta-batch 32 --amp bf16 --compile all
tp --config mini-5shot --attention both --attn-block 4 --meta-batch 32 --amp bf16 --compile all
python benchmarks/eval_speed.py --device cuda --config mini-5shot --eval-batch 20 \
  --eval-batch 100 --amp bf16
python benchmarks/eval_speed.py --device cuda --config mini-5shot --eval-batch 100 --amp bf16 \
  --compile
python -m pytest -q tests/unit/test_gpu.py tests/unit/test_batching.py tests/e2e/test_compile.py
