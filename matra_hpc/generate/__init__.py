"""matra_hpc.generate stage."""
