"""Training: distribution seam, the one loop, optimizers, checkpoints, early stopping."""
