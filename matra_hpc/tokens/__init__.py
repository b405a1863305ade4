"""matra_hpc.tokens stage."""
