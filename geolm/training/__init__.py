"""Floor 5: optimisers, checkpoints, MPI data parallelism and the training loop `fit`."""
