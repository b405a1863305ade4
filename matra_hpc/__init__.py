"""matra-hpc: the Matra-Genoa generative crystal pipeline as HPC batch stages.

Data flows one way, each stage reading the previous stage's store:
structures -> token store (Zarr) -> checkpoint -> generated store (Zarr) ->
screened store -> VASP inputs -> DFT report.
"""

import warnings

__version__ = "0.1.0"

# pymatgen sorts a formula's elements by Pauling electronegativity and warns, on every formula,
# for the elements that have none (He, Ne, Ar, superheavies), although it handles them itself.
# A data demo printed dozens of these; nothing in them is for a user to act on.
warnings.filterwarnings("ignore", message="No Pauling electronegativity", category=UserWarning)
