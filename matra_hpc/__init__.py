"""matra-hpc: the Matra-Genoa generative crystal pipeline as HPC batch stages.

Data flows one way, each stage reading the previous stage's store:
structures -> token store (Zarr) -> checkpoint -> generated store (Zarr) ->
screened store -> VASP inputs -> DFT report.
"""

__version__ = "0.1.0"
