"""matra_hpc.model stage."""
