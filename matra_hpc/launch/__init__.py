"""Launch layer: the one place that knows about Slurm, MPI and torchrun."""
