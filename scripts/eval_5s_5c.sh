#!/usr/bin/env bash
# 5-shot, 5-class meta-testing (600 episodes, 15 queries per class) of the best
# checkpoint of scripts/train_5s_5c.sh. Pass --resume CKPT to test another checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
python main.py --mode test \
    --n-shot 5 --n-eval 15 --n-class 5 \
    --input-size 4 --hidden-size 20 \
    --epoch 8 --batch-size 25 \
    --image-size 84 --bn-eps 1e-3 \
    --data miniimagenet --data-root data/miniImagenet/ \
    --episode-test 600 \
    --resume logs/5s_5c/ckpts/best.pt \
    "$@"
