"""matra_hpc.screen stage."""
