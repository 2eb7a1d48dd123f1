"""The comparison's ``matching`` arm: no training; each held-out case segmented by carrying every labelled case's
label map onto it (``gvsl match``'s registration: network and refinement) and fusing them by vote, then scored as the
trained arms are (``gvsl.finetune.heldout``). It answers "what do my labels give through the matches alone?"."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import SimpleITK as sitk

from gvsl.finetune.cache import read_case
from gvsl.finetune.collection import CollectionMatcher, NetworkRegistration, UnlabelledScan, scan_name
from gvsl.finetune.data import Case
from gvsl.finetune.heldout import HeldOutDice, class_dice, mean_per_label
from gvsl.io import VOLUME, SeriesInfo, hash_id

#: Every carried label counts in the vote: nothing is left out of a segmentation.
KEEP_EVERY_VOXEL = 1e-6


def matching_dice(labelled: Sequence[Case], held_out: Sequence[Case], values: Sequence[int], names: Sequence[str],
                  folder: Path, checkpoint: Optional[str], device: str) -> HeldOutDice:
    """Dice per label (``names`` of ``values``) of each held-out case's image segmented by matching the ``labelled``
    cases onto it; the matches are kept in ``folder`` (computed once, as for ``--unlabelled``)."""
    taken: set[str] = set()
    series = [SeriesInfo(key=hash_id(str(case.image)), kind=VOLUME, files=[str(case.image)]) for case in held_out]
    scans = [UnlabelledScan(scan_name(s, taken), s) for s in series]
    matcher = CollectionMatcher(folder, NetworkRegistration(checkpoint, device), KEEP_EVERY_VOXEL)
    found = matcher.run(labelled, scans)
    if len(found.pseudo) != len(held_out):
        raise ValueError(f"matching arm: {'; '.join(found.notes)}")
    per_case = {}
    for case, carried in zip(held_out, found.pseudo):
        truth = read_case(case)[1]
        predicted = sitk.ReadImage(str(carried.label))
        scores = class_dice(sitk.GetArrayViewFromImage(predicted), sitk.GetArrayViewFromImage(truth), values)
        per_case[case.name] = dict(zip(names, scores))
    return HeldOutDice(mean_per_label(per_case, names), per_case)
