"""A run's work: meta-training, evaluation, pre-training, checkpoints, the divergence guard,
several processes."""
