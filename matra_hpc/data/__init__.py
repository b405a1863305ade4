"""matra_hpc.data stage."""
