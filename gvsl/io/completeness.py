"""Whether a volume file holds all the voxels its header announces.

SimpleITK reads a NIfTI whose gzip stream was cut, or a cut NRRD, as a full volume padded with zeros, without an
error: a copy interrupted half-way would be cached as a usable scan. So the voxel data are found from the header
(NIfTI-1/2 ``vox_offset``; NRRD ``encoding``, ``data file``, ``byte skip``; MetaImage ``ElementDataFile``,
``CompressedData``, ``HeaderSize``), a compressed stream (one gzip/zlib/bzip2 stream) is decompressed to its end
marker, and the byte count is compared with size x bytes per voxel.
"""
from __future__ import annotations

import bz2
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO, Callable, Protocol

import numpy as np
import SimpleITK as sitk

_CHUNK = 1 << 20
#: Bytes per voxel component of each pixel type SimpleITK's readers return.
_COMPONENT_BYTES = {
    **dict.fromkeys(("UInt8", "Int8"), 1), **dict.fromkeys(("UInt16", "Int16"), 2),
    **dict.fromkeys(("UInt32", "Int32", "Float32"), 4), **dict.fromkeys(("UInt64", "Int64", "Float64"), 8),
}
_PIXEL_BYTES = {getattr(sitk, f"sitk{prefix}{name}"): n for name, n in _COMPONENT_BYTES.items()
                for prefix in ("", "Vector")}
_GZIP_OR_ZLIB = 32 + zlib.MAX_WBITS  # zlib detects a gzip or a zlib header itself


class IncompleteFileError(ValueError):
    """The file holds fewer voxel bytes than its header announces, or its compressed stream is cut or corrupt."""


def payload_bytes(reader: sitk.ImageFileReader) -> int | None:
    """Bytes of voxel data the header read by ``reader.ReadImageInformation()`` announces (None for a pixel type
    without a fixed size, e.g. complex)."""
    component = _PIXEL_BYTES.get(reader.GetPixelID())
    if component is None:
        return None
    return int(np.prod(reader.GetSize(), dtype=np.int64)) * reader.GetNumberOfComponents() * component


def check_volume_file(reader: sitk.ImageFileReader) -> np.ndarray | None:
    """``check_complete`` for the file of ``reader``, once ``reader.ReadImageInformation()`` has read its header."""
    expected = payload_bytes(reader)
    return None if expected is None else check_complete(reader.GetFileName(), expected)


def check_complete(path: str | os.PathLike, expected_bytes: int) -> np.ndarray | None:
    """Raise ``IncompleteFileError`` unless the volume file at ``path`` holds ``expected_bytes`` bytes of voxel data
    (size x components x bytes per component, from its header). Formats other than NIfTI, NRRD and MetaImage, and
    text encodings of NRRD, are not checked; a file that cannot be opened raises OSError.

    Returns, for a NIfTI file of float type, the positions of its NaN/Inf values in the order the file stores them
    (x fastest: for one component per voxel, indices into SimpleITK's [k, j, i] array raveled), found in its bytes
    because SimpleITK reads them as 0; None for other files.
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return _check_nifti(path, expected_bytes)
    if name.endswith((".nrrd", ".nhdr")):
        _check_keyed_header(path, expected_bytes, _nrrd_fields, separator=":")
    elif name.endswith((".mha", ".mhd")):
        _check_keyed_header(path, expected_bytes, _meta_fields, separator="=")
    return None


def _check_nifti(path: Path, expected_bytes: int) -> np.ndarray | None:
    """A .nii or .nii.gz: the header (348 bytes, NIfTI-1, or 540, NIfTI-2) then the voxels from ``vox_offset``;
    returns the positions of NaN/Inf values for float voxels."""
    compressed = path.name.lower().endswith(".gz")
    with open(path, "rb") as file:
        if compressed:
            head = zlib.decompressobj(_GZIP_OR_ZLIB).decompress(file.read(4096), 540)
            file.seek(0)
        else:
            head = file.read(540)
            file.seek(0)
        offset, dtype = _nifti_layout(head)
        found = _NonFiniteValues(offset, dtype, expected_bytes) if dtype is not None else None
        available = _stream_length(file, zlib.decompressobj(_GZIP_OR_ZLIB) if compressed else None, found)
    _compare(available - offset, expected_bytes)
    return found.positions() if found is not None else None


def _nifti_layout(head: bytes) -> tuple[int, np.dtype | None]:
    """(``vox_offset``, the voxels' dtype when they are floats, else None) of a NIfTI-1 header (sizeof_hdr 348,
    datatype at byte 70, vox_offset a float at 108) or NIfTI-2 header (540; datatype at 12, vox_offset an int64 at
    168), either byte order."""
    for order in "<>":
        if len(head) >= 348 and struct.unpack(order + "i", head[:4])[0] == 348:
            datatype, offset = struct.unpack(order + "h", head[70:72])[0], struct.unpack(order + "f", head[108:112])[0]
            break
        if len(head) >= 540 and struct.unpack(order + "i", head[:4])[0] == 540:
            datatype, offset = struct.unpack(order + "h", head[12:14])[0], struct.unpack(order + "q", head[168:176])[0]
            break
    else:
        raise IncompleteFileError("truncated file: the NIfTI header is incomplete")
    floats = {16: "f4", 64: "f8"}  # NIFTI_TYPE_FLOAT32, NIFTI_TYPE_FLOAT64
    return int(offset), (np.dtype(order + floats[datatype]) if datatype in floats else None)


class _NonFiniteValues:
    """Finds the NaN/Inf values among the ``dtype`` values in the ``length`` bytes that start ``offset`` bytes into a
    stream fed piece by piece."""

    def __init__(self, offset: int, dtype: np.dtype, length: int) -> None:
        self.skip, self.dtype, self.left = offset, dtype, length
        self.pending, self.seen, self.found = b"", 0, []

    def feed(self, data: bytes) -> None:
        cut = min(self.skip, len(data))
        self.skip -= cut
        data = self.pending + data[cut:cut + self.left]
        self.left -= len(data) - len(self.pending)
        whole = len(data) - len(data) % self.dtype.itemsize
        values = np.frombuffer(data[:whole], self.dtype)
        self.found.append(self.seen + np.flatnonzero(~np.isfinite(values)))
        self.seen += values.size
        self.pending = data[whole:]

    def positions(self) -> np.ndarray:
        """Indices (int64) of the NaN/Inf values fed so far, in stream order."""
        return np.concatenate(self.found) if self.found else np.zeros(0, np.int64)


def _check_keyed_header(path: Path, expected_bytes: int, fields: Callable[[dict[str, str]], tuple[str, str, int]],
                        separator: str) -> None:
    """NRRD or MetaImage: a text header of ``key<separator> value`` lines; ``fields`` turns it into (data file or ""
    for data attached after the header, encoding: "raw", "gzip", "bzip2" or another (unchecked), bytes to skip)."""
    with open(path, "rb") as file:
        header, header_end = _text_header(file, separator)
    data_file, encoding, skip = fields(header)
    if encoding not in ("raw", "gzip", "bzip2") or (encoding == "raw" and skip < 0):
        return  # skip -1 (NRRD byte skip, MetaImage HeaderSize): the voxels are the data file's last bytes
    data_path, start = (path.parent / data_file, 0) if data_file else (path, header_end)
    with open(data_path, "rb") as file:
        if encoding == "raw":
            _compare(os.fstat(file.fileno()).st_size - start - skip, expected_bytes)
            return
        file.seek(start)
        decompressor = zlib.decompressobj(_GZIP_OR_ZLIB) if encoding == "gzip" else bz2.BZ2Decompressor()
        _compare(_stream_length(file, decompressor) - max(skip, 0), expected_bytes)


def _text_header(file: BinaryIO, separator: str) -> tuple[dict[str, str], int]:
    """Keys (lower case, spaces removed) and values of a text header, and the byte where the data would begin: after
    an empty line (NRRD) or after the ``ElementDataFile`` line (MetaImage, its last line)."""
    header: dict[str, str] = {}
    while True:
        line = file.readline(65536)
        if not line or not line.strip():
            break
        key, found, value = line.decode("latin-1").partition(separator)
        if found:
            header[key.strip().lower().replace(" ", "")] = value.strip()
        if key.strip().lower() == "elementdatafile":
            break
    return header, file.tell()


def _nrrd_fields(header: dict[str, str]) -> tuple[str, str, int]:
    encoding = {"gz": "gzip", "bz2": "bzip2"}.get(header.get("encoding", "raw"), header.get("encoding", "raw"))
    data_file = header.get("datafile", header.get("data_file", ""))
    if data_file.startswith("LIST") or "%" in data_file:  # several data files: not checked
        encoding = "unchecked"
    return data_file, encoding, int(header.get("byteskip", "0"))


def _meta_fields(header: dict[str, str]) -> tuple[str, str, int]:
    data_file = header.get("elementdatafile", "LOCAL")
    encoding = "gzip" if header.get("compresseddata", "false").lower() == "true" else "raw"
    if data_file.upper().startswith("LIST") or "%" in data_file:
        encoding = "unchecked"
    return ("" if data_file.upper() == "LOCAL" else data_file), encoding, int(header.get("headersize", "0"))


class _Decompressor(Protocol):
    eof: bool

    def decompress(self, data: bytes) -> bytes: ...


def _stream_length(file: BinaryIO, decompressor: _Decompressor | None, found: _NonFiniteValues | None = None
                   ) -> int:
    """Bytes that reading ``file`` from its position gives, decompressed by ``decompressor`` when given, each piece
    fed to ``found``; IncompleteFileError if a compressed stream is cut before its end marker or corrupt."""
    total = 0
    try:
        while (chunk := file.read(_CHUNK)) and not (decompressor and decompressor.eof):
            data = decompressor.decompress(chunk) if decompressor else chunk
            total += len(data)
            if found is not None:
                found.feed(data)
    except (zlib.error, OSError, EOFError) as exc:  # bz2 raises OSError for invalid data
        raise IncompleteFileError(f"corrupt compressed data ({exc})") from exc
    if decompressor is not None and not decompressor.eof:
        raise IncompleteFileError("truncated file: the compressed voxel data end before their end marker")
    return total


def _compare(available: int, expected_bytes: int) -> None:
    if available < expected_bytes:
        raise IncompleteFileError(f"truncated file: {max(available, 0)} of {expected_bytes} voxel bytes")
