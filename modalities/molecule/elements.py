"""The atom vocabulary of QM9 (H, C, N, O, F): one place for type index <-> symbol <-> atomic number."""
from __future__ import annotations

QM9_ELEMENTS: tuple[str, ...] = ("H", "C", "N", "O", "F")
ATOMIC_NUMBERS: dict[str, int] = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}


def element_index(symbol: str, elements: tuple[str, ...] = QM9_ELEMENTS) -> int:
    """Type index of an element symbol; a clear error for one outside the vocabulary."""
    try:
        return elements.index(symbol.strip().capitalize())
    except ValueError:
        shown = symbol if len(symbol) <= 12 else symbol[:12] + "..."   # a garbage "symbol" may be long
        raise ValueError(f"element {shown!r} is not in the atom vocabulary {elements}") from None
