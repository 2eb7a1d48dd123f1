"""Discovery (`gvsl scan`): series grouped by UID, never by folder; every bad case reported with its reason."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk
from conftest import Messy, series_name
from damaged_series import truncate, write_t1_series, write_truncated_duplicate
from nibabel.testing import data_path as nibabel_data_path
from pydicom.data import get_testdata_file

from gvsl.cli import main
from gvsl.io import ScanOptions, scan
from gvsl.sample_data import load_mni, synthetic_ct, tissue_labels


def test_discovery_finds_exactly_the_expected_series(messy: Messy):
    records = scan(messy.root)
    by_name = {series_name(r): r for r in records}
    assert len(by_name) == len(records), "two records with the same name"
    assert {n for n, r in by_name.items() if r.usable} == messy.usable
    assert {n: r.reason for n, r in by_name.items() if not r.usable}.keys() == messy.skipped.keys()
    for name, reason in messy.skipped.items():
        assert reason in by_name[name].reason, (name, by_name[name].reason)
    for name, n_files in messy.files.items():  # interleaved in one folder / spread over two folders
        assert by_name[name].n_instances == n_files
    assert {Path(f).parent.name for f in by_name["MESSY/Two folders"].files} == {"split", "cd2"}


def test_geometry_of_oblique_enhanced_and_split_series(messy: Messy):
    by_name = {series_name(r): r for r in scan(messy.root)}
    oblique = by_name["MESSY/Oblique T1"].geometry
    assert oblique.size == (40, 48, 14) and oblique.spacing == pytest.approx((2.5, 2.5, 6.0))
    assert "oblique" in oblique.describe()
    enhanced = by_name["MESSY/Enhanced T1"]
    assert enhanced.n_instances == 1 and enhanced.geometry.size == (24, 28, 12)
    assert enhanced.geometry.spacing == pytest.approx((4.0, 4.0, 5.0))
    axial, sagittal = by_name["MESSY/Mixed#1"].geometry, by_name["MESSY/Mixed#2"].geometry
    assert axial.direction == (1, 0, 0, 0, 1, 0, 0, 0, 1)
    assert abs(sagittal.direction[2]) == 1  # the sagittal stack's rows run along the z axis
    assert "part 2 of 2" in by_name["MESSY/Mixed#2"].note


def test_filters(messy: Messy):
    names = {series_name(r): r for r in scan(messy.root, ScanOptions(modalities=("MR",), description_regex="head|obl",
                                                                      max_series=2))}
    usable = sorted(n for n, r in names.items() if r.usable)
    assert usable == ["GVSL-SAMPLE-001/Sample MR head", "GVSL-SAMPLE-002/Sample MR head"]
    assert "modality CT" in names["GVSL-SAMPLE-001/Sample CT head"].reason
    assert "beyond the first 2" in names["MESSY/Oblique T1"].reason
    assert "does not match" in names["MESSY/Interleaved B"].reason
    strict = {series_name(r): r for r in scan(messy.root, ScanOptions(min_slices=15))}
    assert "too few slices (14 < 15)" in strict["MESSY/Two folders"].reason


def test_scan_command_table_and_json(messy: Messy, capsys):
    assert main(["scan", str(messy.root)]) == 0
    table = capsys.readouterr().out
    assert "13 usable of 22 series" in table and "localizer/scout" in table
    assert main(["scan", str(messy.root), "--json", "--modality", "CT"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert len(records) == 22 and all(r["modality"] != "MR" for r in records if r["usable"])
    assert {"key", "patient_id", "study_uid", "series_uid", "modality", "description", "n_instances", "size_bytes",
            "geometry", "usable", "reason"} <= records[0].keys()
    assert main(["scan", str(messy.root / "missing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_real_dicom_test_files_are_all_judged():
    """pydicom's own test files (malformed values, US/NM/RT objects, multi-frame, deflated, ...) never crash the
    scan: every series that is not usable says why."""
    records = scan(Path(get_testdata_file("CT_small.dcm")).parent)
    assert len(records) > 20
    assert all(r.reason for r in records if not r.usable)


def test_label_maps_are_skipped_and_integer_scans_kept(tmp_path):
    """A uint8 tissue segmentation is not an image; integer scans (the MNI T1 as int16, a real int16 MR from the
    nibabel wheel, a CT-like int16 head with partial-volume values at its tissue borders) are."""
    mni = load_mni(3.0)
    sitk.WriteImage(tissue_labels(mni), str(tmp_path / "tissues.nrrd"), useCompression=True)
    sitk.WriteImage(sitk.Cast(mni["t1"], sitk.sitkInt16), str(tmp_path / "t1_int16.nii.gz"))
    ct = synthetic_ct(mni)
    tilted = sitk.Euler3DTransform(ct.TransformContinuousIndexToPhysicalPoint([n / 2 for n in ct.GetSize()]), 0.1, 0, 0)
    sitk.WriteImage(sitk.Cast(sitk.Round(sitk.Resample(ct, ct, tilted, sitk.sitkLinear, -1000.0)), sitk.sitkInt16),
                    str(tmp_path / "ct_int16.nrrd"))
    shutil.copy(Path(nibabel_data_path) / "anatomical.nii", tmp_path / "anatomical.nii")
    records = {Path(r.files[0]).name: r for r in scan(tmp_path)}
    assert records["tissues.nrrd"].reason == "label map (3 distinct integer values), not an image"
    assert sorted(n for n, r in records.items() if r.usable) == ["anatomical.nii", "ct_int16.nrrd", "t1_int16.nii.gz"]


def test_truncated_duplicate_slice_is_skipped_and_the_series_kept(tmp_path):
    paths = write_t1_series(tmp_path)
    bad = write_truncated_duplicate(paths, 5)
    [record] = scan(tmp_path)
    assert record.usable, record.reason
    assert record.files == [str(p) for p in paths] and record.geometry.size[2] == 20
    assert "IM99999.dcm" in record.note and "IM00006.dcm" in record.note, record.note
    assert str(bad) not in record.files


def test_truncated_slice_without_duplicate_makes_a_gap(tmp_path):
    paths = write_t1_series(tmp_path)
    truncate(paths[5])
    [record] = scan(tmp_path)
    assert not record.usable
    assert record.reason.startswith("truncated file(s): 1 of 20 (IM00006.dcm)") and "gap" in record.reason, \
        record.reason


def _small_pipe() -> tuple[int, int]:
    """A pipe (read fd, write fd) holding one page, so that a writer fills it at once (Linux)."""
    fcntl = pytest.importorskip("fcntl")
    if not hasattr(fcntl, "F_SETPIPE_SZ"):
        pytest.skip("needs F_SETPIPE_SZ (Linux)")
    read_fd, write_fd = os.pipe()
    fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, 4096)
    return read_fd, write_fd


def test_scan_into_a_pipe_closed_early_exits_quietly(messy: Messy):
    """`gvsl scan --json DIR | head -1`: the reader takes one line and goes away; no traceback."""
    read_fd, write_fd = _small_pipe()
    process = subprocess.Popen([sys.executable, "-m", "gvsl", "scan", "--json", str(messy.root)], stdout=write_fd,
                               stderr=subprocess.PIPE)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as out:
        first = out.readline()
    errors = process.stderr.read().decode()
    process.stderr.close()
    assert process.wait(timeout=60) == 141  # 128 + SIGPIPE, as a shell reports tools that the closed pipe stopped
    assert first == b"[\n"
    assert errors == "", errors


def test_empty_folder_is_an_error_and_skipped_series_are_not(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    for args in ([], ["--json"]):
        assert main(["scan", str(tmp_path / "empty"), *args]) == 1
        out, err = capsys.readouterr()
        assert out == ""
        assert err == f"gvsl scan: no DICOM series or volume file (NIfTI, NRRD, MHA/MHD) found under " \
                      f"{tmp_path / 'empty'}\n"
    (tmp_path / "dicom").mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "dicom")
    assert main(["scan", str(tmp_path / "dicom")]) == 0  # a report of what was found and why it is skipped
    assert "0 usable of 1 series" in capsys.readouterr().out
