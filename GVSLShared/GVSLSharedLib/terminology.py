"""Label table codes → Slicer's segment terminology (the ``TerminologyEntry`` tag of a segment).

A label table entry may give SNOMED CT (or other DICOM coding scheme) codes for the segmented property category and
type (``gvsl.labels``: ``"category"``/``"type"``, each ``{"scheme", "value", "meaning"}``). Slicer keeps a segment's
terminology as one string: context name, category, type, type modifier, anatomic context name, anatomic region and
its modifier, separated by ``~``, each code as ``scheme^value^meaning``. The codes come from DICOM's lists, so the
contexts named are Slicer's DICOM master lists. Imports no Slicer.
"""
from __future__ import annotations

from typing import Optional

CATEGORY_AND_TYPE_CONTEXT = "Segmentation category and type - DICOM master list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
NO_CODE = "^^"


def code_text(code: dict) -> str:
    """``scheme^value^meaning`` of a label table code (the separators ``^`` and ``~`` are kept out of its fields)."""
    return "^".join(str(code[key]).replace("^", " ").replace("~", " ") for key in ("scheme", "value", "meaning"))


def terminology_entry(entry: dict) -> Optional[str]:
    """Slicer's terminology string of a label table entry with codes (no modifier, no anatomic region); None for an
    entry without codes (the segment keeps Slicer's default)."""
    if "category" not in entry or "type" not in entry:
        return None
    return "~".join((CATEGORY_AND_TYPE_CONTEXT, code_text(entry["category"]), code_text(entry["type"]), NO_CODE,
                     ANATOMIC_CONTEXT, NO_CODE, NO_CODE))
