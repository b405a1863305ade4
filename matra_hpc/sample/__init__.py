"""matra_hpc.sample stage."""
