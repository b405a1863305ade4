"""matra_hpc.dft stage."""
