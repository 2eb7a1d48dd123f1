"""Discovery (`gvsl scan`): series grouped by UID, never by folder; every bad case reported with its reason."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Messy, series_name
from pydicom.data import get_testdata_file

from gvsl.cli import main
from gvsl.io import ScanOptions, scan


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
