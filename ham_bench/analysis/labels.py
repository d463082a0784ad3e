"""Method labels and the paper's row order, shared by the tables, the plots and the ranking.

Labels are spelled as the HAM paper's tables spell them (``Random``, ``AC/DC``, ``RiGL``, ``STR``,
``PILoT``; ``+Sign-In`` and ``+HAM`` suffixes; ``baseline`` and ``HAM`` for the dense rows).
Methods the paper does not have (plugins) keep their own name and sort after the paper's.
"""

from __future__ import annotations

import re

METHOD_LABELS = {"dense": "baseline", "random": "Random", "snip": "SNIP", "synflow": "SynFlow", "gmp": "GMP",
                 "imp": "IMP", "lrr": "LRR", "acdc": "AC/DC", "rigl": "RiGL", "set": "SET", "mest": "MEST",
                 "cs": "CS", "spred": "spred", "pilot": "PILoT", "str": "STR", "nm": "N:M (SR-STE)"}
FAMILIES = {"random": "PaI", "snip": "PaI", "synflow": "PaI", "gmp": "DtS", "imp": "DtS", "lrr": "DtS",
            "acdc": "DtS", "rigl": "DST", "set": "DST", "mest": "DST", "cs": "Cont.", "spred": "Cont.",
            "pilot": "Cont.", "str": "Cont.", "nm": "N:M"}
OPTIMIZER_LABELS = {"sam": "SAM", "adamw": "AdamW", "sgd": "SGD"}
# the paper's table order (its families: PaI, dense-to-sparse, DST, continuous), the methods it only names
# placed in their family
BASE_ORDER = ["dense", "random", "snip", "synflow", "gmp", "imp", "lrr", "acdc", "rigl", "set", "mest", "cs",
              "spred", "pilot", "str", "nm"]
FAMILY_ORDER = ["Dense", "PaI", "DtS", "DST", "Cont.", "N:M", "other"]


def base_order(base: str) -> tuple:
    """Sort key of a base method in the paper's order; unknown (plugin) methods last, by name."""
    return (BASE_ORDER.index(base) if base in BASE_ORDER else len(BASE_ORDER), base)


def variant_order(signin: bool, ham_on: bool) -> tuple:
    """Sort key of a method's variants in the paper's order: alone, +Sign-In, +HAM, then +Sign-In+HAM."""
    return signin and ham_on, ham_on, signin


def method_label(base: str, signin: bool, ham: str) -> str:
    """Row label in the paper's spelling: Random, Random+Sign-In, AC/DC+HAM, baseline, HAM, ..."""
    if base == "dense":
        label = "baseline" if ham == "off" else "HAM"
        return label + (" (HYP)" if ham == "hyp" else "")
    label = METHOD_LABELS.get(base, base)
    if signin:
        label += "+Sign-In"
    if ham != "off":
        label += "+HAM" + (" (HYP)" if ham == "hyp" else "")
    return label


def family(base: str) -> str:
    return "Dense" if base == "dense" else FAMILIES.get(base, "other")


def parse_label(label: str) -> tuple[str, str, bool, str]:
    """(family, base, signin, ham) of a row label such as ``RiGL+Sign-In`` or ``HAM``."""
    if label in ("baseline", "HAM"):
        return "Dense", "dense", False, "off" if label == "baseline" else "hyp_star"
    name = label.split("+")[0]
    base = next((key for key, value in METHOD_LABELS.items() if value == name), name)
    return FAMILIES.get(base, "other"), base, "Sign-In" in label, "hyp_star" if "HAM" in label else "off"


def natural(label: str) -> tuple:
    """Numbers in a label compare as numbers: ``alpha=5`` before ``alpha=20``."""
    parts = re.split(r"(\d+(?:\.\d+)?(?:e-?\d+)?)", label)
    return tuple((0, float(part), "") if index % 2 else (1, 0.0, part) for index, part in enumerate(parts))


def row_order(label: str, family_name: str, base: str, signin: bool, ham: str) -> tuple:
    """Paper order: family, then base method, then base / +Sign-In / +HAM; numbers in labels as numbers."""
    family_index = FAMILY_ORDER.index(family_name) if family_name in FAMILY_ORDER else len(FAMILY_ORDER)
    return family_index, base_order(base), variant_order(signin, ham != "off"), ham, natural(label)
