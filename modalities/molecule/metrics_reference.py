"""EDM's stability check written literally, as its nested loops over atom pairs and dictionary lookups
(Hoogeboom et al. 2022, ``qm9/analyze.py::check_stability`` and ``bond_analyze.py::get_bond_order``).

O(n²) Python per molecule: it is the yardstick ``metrics.infer_bonds`` is tested against (same bond
orders) and benchmarked against (``benchmarks/molecule_metrics.py``), not a code path of the framework.
"""
from __future__ import annotations

import numpy as np

from modalities.molecule import metrics
from modalities.molecule.elements import QM9_ELEMENTS


def reference_bond_order(a: str, b: str, distance_angstrom: float) -> int:
    """EDM's get_bond_order, written as its nested ifs over the dictionaries."""
    d = 100 * distance_angstrom
    key = tuple(sorted((a, b), key=QM9_ELEMENTS.index))
    if d >= metrics.BONDS1[key] + metrics.MARGIN1:
        return 0
    if key in metrics.BONDS2 and d < metrics.BONDS2[key] + metrics.MARGIN2:
        if key in metrics.BONDS3 and d < metrics.BONDS3[key] + metrics.MARGIN3:
            return 3
        return 2
    return 1


def reference_valences(positions: np.ndarray, types: list[int]) -> list[int]:
    """Summed bond order of each atom of one molecule (positions [n, 3] Å, type indices)."""
    valence = [0] * len(types)
    for i in range(len(types)):
        for j in range(i + 1, len(types)):
            order = reference_bond_order(QM9_ELEMENTS[types[i]], QM9_ELEMENTS[types[j]],
                                         float(np.linalg.norm(positions[i] - positions[j])))
            valence[i] += order
            valence[j] += order
    return valence


def reference_stable_atoms(positions: np.ndarray, types: list[int]) -> list[bool]:
    """EDM's per-atom stability: summed bond order equal to the element's allowed valence."""
    return [v == metrics.ALLOWED_VALENCE[QM9_ELEMENTS[t]] for v, t in zip(reference_valences(positions, types), types)]
