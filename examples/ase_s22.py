"""Energies and forces of the ASE S22 set, shared by every copy of this script you start.

Run it as often as you like, e.g. four workers in the background:

    for i in 1 2 3 4; do python ase_s22.py & done; wait

Each configuration is computed by exactly one worker and written once to
frames.xyz. The EMT calculator stands in for a machine-learned potential such as
MACE (which needs a model download); swap in your own calculator.
"""

import ase.io
from ase.calculators.emt import EMT
from ase.collections import s22

from laufband import Laufband

calc = EMT()
worker = Laufband(list(s22), name="s22")

for atoms in worker:
    atoms.calc = calc
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    worker.iterator.set_description(f"{energy = :.3f} eV")
    with worker.lock:  # one writer at a time: frames never interleave
        ase.io.write("frames.xyz", atoms, append=True)
