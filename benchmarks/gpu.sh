#!/usr/bin/env bash
# The GPU checks in one go (about 6 minutes on one H100): throughput at mini-ImageNet shapes
# for B = 1, 8, 32 in fp32 and bf16, MLAL's cost, evaluation speed, and the GPU tests.
# Run from the repository root with the package installed:  bash benchmarks/gpu.sh
set -euo pipefail
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python benchmarks/throughput.py --device cuda --config mini-5shot --config mini-1shot \
  --meta-batch 1 --meta-batch 8 --meta-batch 32 --amp none --amp bf16 --updates 5 --repeats 3
python benchmarks/throughput.py --device cuda --config mini-5shot --attention both \
  --meta-batch 32 --amp bf16 --updates 5 --repeats 3
python benchmarks/eval_speed.py --device cuda --config mini-5shot --eval-batch 20 \
  --eval-batch 100 --amp bf16
python -m pytest -q tests/test_gpu.py tests/test_batching.py
