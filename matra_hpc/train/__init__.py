"""matra_hpc.train stage."""
