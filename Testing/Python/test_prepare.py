"""The preprocessing cache (`gvsl prepare`): physical fidelity, incremental runs, bad input, no identifiers."""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import MESSY_SPACING, Messy, series_name
from damaged_series import write_t1_series, write_truncated_duplicate
from pydicom.data import get_testdata_file
from scipy.ndimage import map_coordinates

import gvsl.data.cache as cache_module
import gvsl.io
from gvsl.cli import main
from gvsl.data import (
    CacheWriteError,
    Normalisation,
    NoUsableDataError,
    PrepareConfig,
    open_cache,
    prepare_cache,
    preprocess_image,
)
from gvsl.io import read_volume, scan
from gvsl.sample_data import load_mni, tissue_labels

CONFIG = PrepareConfig(target_spacing=MESSY_SPACING)


@pytest.fixture(scope="module")
def prepared(messy: Messy, tmp_path_factory):
    cache = tmp_path_factory.mktemp("prepared") / "cache"
    return cache, prepare_cache(messy.root, cache, config=CONFIG, progress=False)


def test_summary_manifest_and_no_identifiers(prepared, messy: Messy):
    cache, summary = prepared
    assert summary.used == len(messy.usable) == 13 and summary.processed == 13
    assert summary.skipped == {"localizer/scout": 1, "truncated file(s)": 1, "irregular slice spacing": 1,
                               "non-image object": 1, "single 2D image": 2, "2D image": 1,
                               "corrupt or incomplete DICOM header": 1, "colour image": 1}
    entries = open_cache(cache)
    assert len(entries) == 13
    for entry in entries:
        assert entry.stored().dtype == np.uint16
        array = entry.array()
        assert array.dtype == np.float32 and list(array.shape) == entry.shape and entry.spacing == [2.0, 2.0, 2.0]
        assert np.isfinite(array).all() and 0.0 <= array.min() and array.max() <= 1.0
    assert any("NaN" in e.note for e in entries)
    text = summary.manifest_path.read_text()
    manifest = json.loads(text)
    assert len(manifest["entries"]) == 22 and manifest["preprocessing"]["ct_window"] == [-1024.0, 1024.0]
    for secret in ("MESSY", "GVSL-SAMPLE", "Sample^", "19700101", str(messy.root), "1CT1"):
        assert secret not in text, f"{secret!r} stored in the manifest"
    assert sorted(p.name for p in cache.iterdir()) == sorted([e.file for e in entries] + ["manifest.json"])


@pytest.mark.parametrize("name", ["GVSL-SAMPLE-001/Sample CT head", "MESSY/Oblique T1", "MESSY/Enhanced T1"])
def test_cached_volume_maps_physical_points_to_source_intensities(prepared, messy: Messy, name):
    """Source voxel centres (LPS) sampled in the cached volume give the source's normalised values."""
    cache, _ = prepared
    record = next(r for r in scan(messy.root) if series_name(r) == name)
    entry = next(e for e in open_cache(cache) if e.key == record.key)
    source = read_volume(record)
    values = sitk.GetArrayFromImage(source)
    if record.modality == "CT":  # stored with intercept -1024: read in HU, air at -1000
        assert values.min() == -1000.0 and entry.normalisation == {"method": "window", "lo": -1024.0, "hi": 1024.0}
    rng = np.random.default_rng(0)
    ijk = np.stack([rng.integers(1, n - 1, 3000) for n in source.GetSize()], axis=1)
    points = np.array([source.TransformIndexToPhysicalPoint([int(v) for v in p]) for p in ijk])
    expected = Normalisation(**entry.normalisation).apply(values[ijk[:, 2], ijk[:, 1], ijk[:, 0]])
    array = entry.array()

    def error(shift_mm: float) -> float:
        """Mean |cached - source| at the points moved by ``shift_mm`` along each axis."""
        xyz = (points + shift_mm - np.asarray(entry.origin)) / np.asarray(entry.spacing)  # identity direction
        return float(np.abs(map_coordinates(array, xyz[:, ::-1].T, order=1) - expected).mean())

    # interpolation only (2.5-6 mm source voxels resampled to 2 mm, read back by linear interpolation); misplacing
    # by one output voxel (2 mm) either way is clearly worse
    assert error(0.0) < 0.035 and error(0.0) < 0.6 * min(error(2.0), error(-2.0)), (error(0.0), error(2.0))


def test_incremental_rerun_processes_only_changed_series(prepared, messy: Messy, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(prepared[0], cache)
    again = prepare_cache(messy.root, cache, config=CONFIG, progress=False)
    assert (again.used, again.processed, again.reused) == (13, 0, 13)
    changed = next(r for r in scan(messy.root) if series_name(r) == "MESSY/Two folders")
    old_file = next(e.file for e in open_cache(cache) if e.key == changed.key)
    os.utime(changed.files[3], ns=(1, 1))
    third = prepare_cache(messy.root, cache, config=CONFIG, progress=False)
    assert (third.processed, third.reused) == (1, 12)
    assert not (cache / old_file).exists() and len(list(cache.glob("*.npy"))) == 13
    assert prepare_cache(cache, cache).used == 13  # an existing cache as the source: validated
    (cache / open_cache(cache)[0].file).unlink()
    checked = prepare_cache(cache, cache)
    assert checked.used == 12 and checked.skipped["cached array missing or damaged"] == 1


def test_full_disk_keeps_what_was_written(messy: Messy, tmp_path, monkeypatch):
    real_save, calls = np.save, []

    def save_then_fill_disk(fp, array):
        calls.append(1)
        if len(calls) == 2:
            fp.write(b"half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(fp, array)

    monkeypatch.setattr(cache_module.np, "save", save_then_fill_disk)
    with pytest.raises(CacheWriteError, match="No space left on device.*keeps everything written before"):
        prepare_cache(messy.root / "volumes", tmp_path / "cache", config=CONFIG, progress=False)
    entries = open_cache(tmp_path / "cache")
    assert len(entries) == 1 and entries[0].stored().shape == tuple(entries[0].shape)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted([entries[0].file, "manifest.json"])
    monkeypatch.setattr(cache_module.np, "save", real_save)
    leftover = tmp_path / "cache" / f".{entries[0].file}.k1ll3d.partial"  # what a killed writer leaves
    leftover.write_bytes(b"half")
    summary = prepare_cache(messy.root / "volumes", tmp_path / "cache", config=CONFIG, progress=False)
    assert (summary.processed, summary.reused) == (1, 1)
    assert not leftover.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_read_only_cache_folder(messy: Messy, tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(CacheWriteError, match="is not writable: Permission denied"):
            prepare_cache(messy.root / "volumes", tmp_path / "cache", progress=False)
    finally:
        tmp_path.chmod(0o700)


def test_unwritable_cache_and_nothing_usable(tmp_path, capsys):
    (tmp_path / "dicom").mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "dicom")
    (tmp_path / "file").write_text("")
    with pytest.raises(CacheWriteError, match="is not writable"):
        prepare_cache(tmp_path / "dicom", tmp_path / "file" / "cache", progress=False)
    with pytest.raises(NoUsableDataError, match=r"1 series found, all skipped \(1 x single 2D image\); .*cache "
                                                r"records this in its manifest and can be given to --cache again"):
        prepare_cache(tmp_path / "dicom", tmp_path / "cache", progress=False)
    sitk.WriteImage(load_mni(6.0)["t1"], str(tmp_path / "dicom" / "t1.nii.gz"))  # as the message says: used again
    assert prepare_cache(tmp_path / "dicom", tmp_path / "cache", progress=False).used == 1
    (tmp_path / "empty").mkdir()
    assert main(["prepare", str(tmp_path / "empty"), "--cache", str(tmp_path / "cache"), "--no-progress"]) == 1
    assert "no DICOM series or volume file" in capsys.readouterr().err


def test_prepare_command_with_workers(messy: Messy, tmp_path, capsys):
    args = ["prepare", str(messy.root / "volumes"), "--cache", str(tmp_path), "--workers", "2", "--no-progress",
            "--spacing", "3", "3", "3", "--mr-percentiles", "1", "99"]
    assert main(args) == 0
    assert "2 series used (2 processed, 0 unchanged), 1 skipped" in capsys.readouterr().out
    entries = {e.modality: e for e in open_cache(tmp_path)}
    assert entries.keys() == {"CT", "MR"}  # NIfTI/NRRD modality inferred from intensities
    assert entries["MR"].normalisation["method"] == "percentile" and entries["MR"].spacing == [3.0, 3.0, 3.0]


def test_preprocess_image_grid_and_errors():
    image = sitk.GaussianSource(sitk.sitkFloat32, [20, 24, 10], sigma=[20] * 3, mean=[20, 24, 10], scale=1000)
    image.SetSpacing([1.5, 1.5, 4.0])
    image.SetDirection(sitk.Euler3DTransform((0, 0, 0), 0.3, 0.0, 0.5).GetMatrix())
    result = preprocess_image(image, "MR", PrepareConfig(target_spacing=(1.0, 1.0, 1.0)))
    out = result.image
    assert out.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1) and out.GetSpacing() == (1.0, 1.0, 1.0)
    assert result.modality == "MR" and result.normalisation.method == "percentile"
    values = sitk.GetArrayViewFromImage(out)
    assert values.min() == 0.0 and values.max() <= 1.0
    centre = image.TransformContinuousIndexToPhysicalPoint([9.5, 11.5, 4.5])
    assert out.TransformPhysicalPointToIndex(centre) == tuple(int(n) // 2 for n in out.GetSize())
    with pytest.raises(ValueError, match="no finite voxel"):
        preprocess_image(image * float("nan"), "MR")
    with pytest.raises(ValueError, match="constant image"):
        preprocess_image(image * 0.0, "MR")


def test_label_map_is_skipped(tmp_path):
    mni = load_mni(3.0)
    sitk.WriteImage(tissue_labels(mni), str(tmp_path / "tissues.nrrd"), useCompression=True)
    sitk.WriteImage(sitk.Cast(mni["t1"], sitk.sitkInt16), str(tmp_path / "t1.nii.gz"))
    summary = prepare_cache(tmp_path, tmp_path / "cache", config=PrepareConfig(target_spacing=(3.0, 3.0, 3.0)),
                            progress=False)
    assert (summary.used, summary.skipped) == (1, {"label map": 1})
    manifest = json.loads(summary.manifest_path.read_text())
    assert "label map (3 distinct integer values), not an image" in [e["reason"] for e in manifest["entries"]]


def test_truncated_duplicate_is_not_read(tmp_path, monkeypatch):
    """The series is cached from its 20 good slices; the reader is never given the truncated extra copy."""
    paths = write_t1_series(tmp_path / "dicom")
    bad = write_truncated_duplicate(paths, 5)
    read = []

    def recording_read_volume(record):
        read.append(list(record.files))
        return read_volume(record)

    monkeypatch.setattr(gvsl.io, "read_volume", recording_read_volume)  # gvsl.data.cache reads through gvsl.io
    summary = prepare_cache(tmp_path / "dicom", tmp_path / "cache", config=PrepareConfig(target_spacing=(4.0,) * 3),
                            progress=False)
    assert summary.used == 1 and read == [[str(p) for p in paths]] and str(bad) not in read[0]
    [entry] = open_cache(tmp_path / "cache")
    assert entry.shape[0] == 20 and "IM99999.dcm" in entry.note


def test_scan_and_prepare_agree_on_an_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["scan", str(tmp_path / "empty")]) == 1
    scan_error = capsys.readouterr().err
    assert main(["prepare", str(tmp_path / "empty"), "--cache", str(tmp_path / "cache"), "--no-progress"]) == 1
    prepare_error = capsys.readouterr().err
    message = f"no DICOM series or volume file (NIfTI, NRRD, MHA/MHD) found under {tmp_path / 'empty'}"
    assert scan_error == f"gvsl scan: {message}\n"
    assert prepare_error == f"gvsl prepare: {message}; {tmp_path / 'cache'} records this in its manifest and can " \
                            "be given to --cache again\n"


def test_prepare_into_a_closed_pipe_exits_quietly(messy: Messy, tmp_path):
    """`gvsl prepare DIR --cache C | head -0`: the reader is gone before the summary; no traceback, the cache is
    written."""
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    done = subprocess.run([sys.executable, "-m", "gvsl", "prepare", str(messy.root / "volumes"), "--cache",
                           str(tmp_path / "cache"), "--spacing", "4", "--no-progress"], stdout=write_fd,
                          stderr=subprocess.PIPE, text=True, timeout=300)
    os.close(write_fd)
    assert done.returncode == 141 and done.stderr == "", done.stderr
    assert len(open_cache(tmp_path / "cache")) == 2
