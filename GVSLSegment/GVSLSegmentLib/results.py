"""Segmentation jobs: ``gvsl segment`` with a fine-tuned model, or an atlas segmentation carried onto the input by
``gvsl match --labels``, each on a volume node in the background; their label map becomes a segmentation node
through ``GVSLSharedLib.label_maps`` (which both modules use).

A volume loaded from Slicer's DICOM database can be segmented as its DICOM series, and then ``gvsl segment`` also
writes a DICOM SEG of the result that references that series (``--dicom-seg``).
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional

from GVSLSharedLib import match
from GVSLSharedLib.jobs import Job
from GVSLSharedLib.label_maps import import_label_map, label_table_path, read_label_map
from GVSLSharedLib.runs import BackgroundProcess
from GVSLSharedLib.volumes import write_volume_node

from .finetuning import segment_command
from .training_data import write_label_map

DICOM_INSTANCES_ATTRIBUTE = "DICOM.instanceUIDs"  # Slicer's DICOM readers list a volume's SOP Instance UIDs here
DICOM_DIR = "dicom"  # in a segmentation job's folder: the copied source series
SEG_NAME = "segmentation.seg.dcm"  # in a job's "seg" folder (a folder of its own, to import into the DICOM database)


def dicom_source_files(volume_node, file_for_instance: Callable[[str], str]) -> list[Path]:
    """The DICOM files a volume was loaded from, one per SOP Instance UID of its ``DICOM.instanceUIDs`` attribute.

    ``file_for_instance``: SOP Instance UID → file path, "" when unknown (Slicer's
    ``slicer.dicomDatabase.fileForInstance``). ValueError naming the volume when it was not loaded from DICOM or
    when a file is missing.
    """
    name = volume_node.GetName()
    uids = (volume_node.GetAttribute(DICOM_INSTANCES_ATTRIBUTE) or "").split()
    if not uids:
        raise ValueError(f"the volume {name!r} was not loaded from the DICOM database; a DICOM SEG references the "
                         "DICOM series it segments: load the series from the DICOM database")
    files = [Path(file_for_instance(uid) or "") for uid in uids]
    missing = [uid for uid, path in zip(uids, files) if not path.is_file()]
    if missing:
        raise ValueError(f"{len(missing)} of the {len(uids)} DICOM files of {name!r} are missing from the DICOM "
                         f"database (first: instance {missing[0]})")
    return files


def start_segmentation(volume_node, model: os.PathLike, folder: os.PathLike, device: str = "auto",
                       dicom_files: Optional[Sequence[os.PathLike]] = None) -> Job:
    """``gvsl segment`` on a volume node in the background, its input, log and output in ``folder``; returns the job
    with ``labels`` (the label map it writes), ``table`` (that map's label table), ``seg`` and ``inputNode``.

    Without ``dicom_files`` the node's voxels are segmented (written as ``input.nrrd``) and ``seg`` is None. With
    them (``dicom_source_files``) the files are copied into ``folder/dicom`` and segmented as that series, and
    ``seg`` is the DICOM SEG of the result, alone in ``folder/seg``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    labels, seg = folder / "segmentation.nrrd", None
    if dicom_files is None:
        image = folder / "input.nrrd"
        write_volume_node(volume_node, image, "input volume")
    else:
        image, seg = folder / DICOM_DIR, folder / "seg" / SEG_NAME
        image.mkdir()
        for number, path in enumerate(dicom_files):  # numbered: files from several database folders may share names
            shutil.copyfile(path, image / f"{number:05d}.dcm")
    process = BackgroundProcess(segment_command(image, model, labels, device or "auto", seg), folder / "segment.log")
    return Job(process, folder, labels=labels, table=label_table_path(labels), seg=seg, inputNode=volume_node)


def start_segmentation_by_matching(scene, input_node, atlas_node, atlas_segmentation_node,
                                   checkpoint: Optional[os.PathLike], folder: os.PathLike,
                                   device: str = "auto") -> Job:
    """``gvsl match INPUT ATLAS --labels ATLAS_LABELS`` in the background: the atlas segmentation carried onto the
    input through the match (``checkpoint`` None: an untrained network starts it and the refinement on the pair
    carries it); returns the job as ``start_segmentation`` does (no ``seg``; the table is the atlas segmentation's)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atlas_labels = write_label_map(scene, atlas_segmentation_node, atlas_node, folder / "atlas_labels.nrrd")
    job = match.start_match(input_node, atlas_node, checkpoint, folder, device, moving_labels=atlas_labels)
    return Job(job.process, folder, labels=job.outDir / match.PROPAGATED_LABELS_NAME,
               table=label_table_path(atlas_labels), seg=None, inputNode=input_node)


def segmentation_of_job(scene, job: Job, output_node=None, name: Optional[str] = None):
    """The segmentation node (``output_node`` refilled, or a new one called ``name``) of a finished segmentation
    job's label map, on its input volume, segments named and coloured from its table."""
    return import_label_map(scene, *read_label_map(job.labels, job.table), job.inputNode, output_node, name)
