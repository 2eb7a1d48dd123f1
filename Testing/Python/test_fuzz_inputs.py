"""Damaged inputs never stop a collection: fuzzed DICOM headers, cut files, wrong tags, non-finite voxels, 2D/4D
images and a symlink loop next to two clean scans (``damaged_inputs``, seeded; ``GVSL_FUZZ_SEED`` picks another
seed). ``gvsl scan`` and ``gvsl prepare`` exit 0 without a traceback, the clean scans stay usable, nothing broken is
called usable, and the cache holds only complete, 3D, finite volumes."""
from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from damaged_inputs import CLEAN_CT, CLEAN_NIFTI, build_damaged_collection, case_of, write_ct_series
from nibabel.testing import data_path as nibabel_data_path

from gvsl.cli import main
from gvsl.data import open_cache, preprocess_image
from gvsl.io import read_image, read_volume, scan
from gvsl.io.completeness import IncompleteFileError, check_complete

SEED = int(os.environ.get("GVSL_FUZZ_SEED", "0"))


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    return build_damaged_collection(tmp_path_factory.mktemp("damaged") / "collection", seed=SEED)


def test_scan_and_prepare_judge_every_damaged_input(collection, tmp_path, capsys):
    assert main(["scan", str(collection.root), "--json"]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Warning" not in err, err
    records = json.loads(out)
    by_case: dict[str, list[dict]] = {}
    for record in records:
        by_case.setdefault(case_of(collection, record["files"][0]).name, []).append(record)
    for name in (CLEAN_CT, CLEAN_NIFTI, "deflated"):  # a deflated file is not mistaken for a cut one
        assert [r["usable"] for r in by_case[name]] == [True], by_case[name]
    for case in collection.cases:
        found = by_case.get(case.name, [])
        assert all(r["reason"] for r in found if not r["usable"])
        if case.broken:
            assert not any(r["usable"] for r in found), (case, found)
    assert by_case["nan_inf"][0]["note"].startswith("non-finite voxels: 3.3 %")
    assert "truncated file" in by_case["cut_nifti_gz"][0]["reason"]
    assert "UID is not a transfer syntax" in by_case["wrong_syntax"][0]["reason"]
    assert by_case["huge_spacing"][0]["reason"].startswith("implausible field of view 724667904 x 724667904 x 24 mm")

    assert main(["scan", str(collection.root)]) == 0  # the table a person reads
    assert "Traceback" not in capsys.readouterr().err

    cache = tmp_path / "cache"
    assert main(["prepare", str(collection.root), "--cache", str(cache), "--spacing", "4", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Warning" not in err, err
    key_to_case = {r["key"]: case_of(collection, r["files"][0]) for r in records}
    entries = open_cache(cache)
    cached = {key_to_case[e.key].name for e in entries}
    assert {CLEAN_CT, CLEAN_NIFTI, "deflated", "nan_inf"} <= cached
    assert not any(collection.case(name).broken for name in cached)
    for entry in entries:
        array = np.load(entry.path)  # read whole: a short file fails here
        assert array.ndim == 3 and list(array.shape) == entry.shape and array.dtype == np.uint16
        assert np.isfinite(entry.array()).all()


@pytest.mark.parametrize("name, compress", [("t.nii.gz", True), ("t.nii", False), ("t.nrrd", True),
                                            ("t.nrrd", False), ("t.mha", True), ("t.mhd", False)])
def test_a_cut_volume_file_is_refused_not_read_as_zeros(tmp_path, name, compress):
    image = sitk.ReadImage(str(Path(nibabel_data_path) / "anatomical.nii"), sitk.sitkFloat32)
    path = tmp_path / name
    sitk.WriteImage(image, str(path), useCompression=compress)
    data = path.with_suffix(".zraw" if compress else ".raw") if name.endswith(".mhd") else path
    assert read_image(path).GetSize() == image.GetSize()  # complete: read as before
    [record] = scan(tmp_path)
    assert record.usable, record.reason
    data.write_bytes(data.read_bytes()[: data.stat().st_size * 2 // 3])
    [record] = scan(tmp_path)
    assert not record.usable and record.reason.startswith("truncated file"), record.reason
    with pytest.raises(ValueError, match="truncated file"):
        read_image(path)


def test_nifti_nan_and_inf_are_found_in_the_file_though_simpleitk_reads_them_as_0(tmp_path):
    values = sitk.GetArrayFromImage(sitk.ReadImage(str(Path(nibabel_data_path) / "anatomical.nii"),
                                                   sitk.sitkFloat32))
    values[:2] = np.nan
    values[2, :3] = np.inf
    path = tmp_path / "holes.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(values), str(path))
    assert np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))).all()  # SimpleITK: 0 there
    payload = len(gzip.decompress(path.read_bytes())) - 352  # after the 348-byte header and its 4-byte extension
    positions = check_complete(path, payload)
    np.testing.assert_array_equal(positions, np.flatnonzero(~np.isfinite(values)))
    with pytest.raises(IncompleteFileError):
        check_complete(path, payload + 4)
    [record] = scan(tmp_path)
    read = sitk.GetArrayFromImage(read_volume(record))
    np.testing.assert_array_equal(np.isfinite(read), np.isfinite(values))
    np.testing.assert_array_equal(read[np.isfinite(values)], values[np.isfinite(values)])
    share = 100 * positions.size / values.size
    assert record.usable and record.note.startswith(f"non-finite voxels: {share:.1f} %"), record.note
    assert main(["prepare", str(tmp_path), "--cache", str(tmp_path / "cache"), "--spacing", "2", "--no-progress",
                 "--volume-modality", "MR"]) == 0
    [entry] = open_cache(tmp_path / "cache")
    assert entry.note.endswith(f"; {positions.size} NaN/Inf voxels set to 0") and np.isfinite(entry.array()).all()


def test_scan_table_escapes_control_characters_of_dicom_text(tmp_path, capsys):
    paths = write_ct_series(tmp_path / "series")
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.SeriesDescription = "../../etc\x1b[2J\x07"
        ds.save_as(path)
    assert main(["scan", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "\x1b" not in table and "\x07" not in table and "../../etc\\x1b[2J\\x07" in table


def test_a_symlink_loop_does_not_stop_the_scan(tmp_path):
    shutil.copy(Path(nibabel_data_path) / "anatomical.nii", tmp_path)
    (tmp_path / "loop").mkdir()
    (tmp_path / "loop" / "again").symlink_to(tmp_path, target_is_directory=True)
    [record] = scan(tmp_path)
    assert record.usable


def test_preprocessing_refuses_a_grid_it_cannot_hold_before_allocating_it():
    image = sitk.ReadImage(str(Path(nibabel_data_path) / "anatomical.nii"), sitk.sitkFloat32)
    image.SetSpacing((5661468.0, 5661468.0, 2.0))
    with pytest.raises(ValueError, match=r"the scan spans .* voxels at 1x1x1 mm \(damaged voxel size\?\)"):
        preprocess_image(image, "MR")


def test_an_unreadable_root_is_an_error_and_an_unreadable_subfolder_is_passed_over(tmp_path, monkeypatch, capsys):
    shutil.copy(Path(nibabel_data_path) / "anatomical.nii", tmp_path)
    (tmp_path / "locked").mkdir()
    listable = os.scandir

    def scandir(path="."):  # what listing a folder without read permission does (the suite may run as root)
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return listable(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert main(["scan", str(tmp_path / "locked")]) == 2
    assert "gvsl scan: [Errno 13] Permission denied" in capsys.readouterr().err
    assert main(["scan", str(tmp_path)]) == 0
    assert "1 usable of 1 series" in capsys.readouterr().out
    assert main(["prepare", str(tmp_path / "locked"), "--cache", str(tmp_path / "cache"), "--no-progress"]) == 1
    assert "gvsl prepare: [Errno 13] Permission denied" in capsys.readouterr().err
