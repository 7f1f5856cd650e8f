"""TOM / PyTom ``.em`` files (the EM "V-format" of the TOM toolbox, Nickell et al. 2005, J. Struct. Biol.
149:227): a 512-byte header followed by raw data.

Header layout (TOM's ``tom_emread.m``):

====== ======= ==============================================================================
offset size    field
====== ======= ==============================================================================
0      1 byte  machine code: 0 OS-9, 3 SGI, 5 Mac (big-endian); 6 PC (little-endian); 1 VAX, 2 Convex,
               4 Sun (not read here: VAX floats are not IEEE, TOM itself refuses Sun)
1      1 byte  general purpose (OS-9: 0 old / 1 new version)
2      1 byte  unused (1: "header abandoned" — TOM then returns only the data)
3      1 byte  data type: 1 int8, 2 int16, 4 int32, 5 float32, 8 complex64, 9 float64, 10 complex128
4      3 int32 nx, ny, nz
16     80      comment (text)
96     40 int32 parameters: [0] voltage (V... as written), [1] Cs (mm × 1000), [6] object pixel size
               (Å × 1000), [10] defocus (Å, underfocus negative), [18] tilt angle (deg × 1000), [19] tilt
               axis (deg × 1000), ...
256    256     user data (first 20 characters user name, then 8 characters date)
====== ======= ==============================================================================

The data follow with x fastest, then y, then z. :func:`read_em` returns them as a numpy array indexed
``[z, y, x]`` (C order), i.e. ``data[k, j, i]`` is voxel ``(x=i, y=j, z=k)`` — the order of every other map
in tomoguide (:mod:`tomoguide.compute.io.mrc`). (TOM in MATLAB and PyTom's ``vol2npy`` index the same
voxel as ``(i, j, k)``: transpose with ``data.T`` to get their order.)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from tomoguide.compute.io.errors import FormatError, problem

__all__ = ["EmFile", "EM_DTYPES", "describe", "read_em", "write_em"]

PathType = str | PathLike[str]

HEADER_BYTES = 512
#: TOM data type code -> numpy dtype (byte order added from the machine code)
EM_DTYPES: dict[int, str] = {1: "i1", 2: "i2", 4: "i4", 5: "f4", 8: "c8", 9: "f8", 10: "c16"}
_BIG = {0: "OS-9", 3: "SGI", 5: "Mac"}
_LITTLE = {6: "PC"}
_REFUSED = {1: "VAX", 2: "Convex", 4: "Sun"}


@dataclass
class EmFile:
    """An ``.em`` file: ``data`` indexed ``[z, y, x]`` in the file's dtype (native byte order), and header facts.

    Attributes:
        shape_xyz: (nx, ny, nz) from the header. machine_code: byte 0. byte_order: "little" or "big".
        dtype_code: byte 3. comment: the 80-character comment, stripped. params: (40,) int64 parameters.
        pixel_size_A: parameter 7 / 1000 (None when 0). user: user name of the user data, stripped.
    """

    path: Path
    data: np.ndarray
    shape_xyz: tuple[int, int, int]
    machine_code: int
    byte_order: str
    dtype_code: int
    comment: str = ""
    params: np.ndarray = field(default_factory=lambda: np.zeros(40, dtype=np.int64))
    user: str = ""

    @property
    def pixel_size_A(self) -> float | None:
        v = int(self.params[6])
        return v / 1000.0 if v > 0 else None

    @property
    def flavour(self) -> str:
        return f"TOM .em, {np.dtype(EM_DTYPES[self.dtype_code]).name}, {self.byte_order}-endian"


def _header(path: Path, head: bytes) -> tuple[int, int, str, tuple[int, int, int]]:
    if len(head) < HEADER_BYTES:
        raise FormatError(path, "header", f"{len(head)} bytes: an .em file starts with a 512-byte header (cut short?)")
    machine, dtype_code = head[0], head[3]
    if machine in _BIG:
        order = "big"
    elif machine in _LITTLE:
        order = "little"
    elif machine in _REFUSED:
        raise FormatError(path, "machine code", f"{machine} ({_REFUSED[machine]}): only PC (6) and OS-9/SGI/Mac "
                          "(0/3/5) .em files are read (not supported)")
    else:
        raise FormatError(path, "machine code", f"{machine} is not a TOM machine code (0-6): not an .em file")
    if dtype_code not in EM_DTYPES:
        raise FormatError(path, "data type", f"code {dtype_code} is not supported (TOM codes: 1 int8, 2 int16, "
                          "4 int32, 5 float32, 8 complex64, 9 float64, 10 complex128)")
    nx, ny, nz = struct.unpack_from("<3i" if order == "little" else ">3i", head, 4)
    if min(nx, ny, nz) < 1:
        raise FormatError(path, "dimensions", f"nx ny nz = {nx} {ny} {nz}: every size must be at least 1")
    return machine, dtype_code, order, (nx, ny, nz)


def read_em(path: PathType, *, strict: bool = True, header_only: bool = False) -> EmFile:
    """Read a TOM/PyTom ``.em`` file (layout in the module docstring).

    ``header_only``: skip the data (``data`` is then an empty array of the right dtype).

    Raises:
        FormatError: naming the file and field: a short header, an unknown or unsupported machine code or
            data type (naming the code), sizes < 1, or fewer data bytes than the header's sizes need (extra
            bytes after the data are an error in strict mode, a warning otherwise).
    """
    p = Path(path)
    with p.open("rb") as fh:
        head = fh.read(HEADER_BYTES)
        machine, dtype_code, order, (nx, ny, nz) = _header(p, head)
        dtype = np.dtype(EM_DTYPES[dtype_code]).newbyteorder("<" if order == "little" else ">")
        need = nx * ny * nz * dtype.itemsize
        size = p.stat().st_size - HEADER_BYTES
        if size < need:
            raise FormatError(p, "data", f"{size} bytes after the header, {nx} x {ny} x {nz} {dtype.name} values "
                              f"need {need} (cut short?)")
        if size > need:
            problem(strict, p, "data", f"{size - need} bytes after the {nx} x {ny} x {nz} {dtype.name} values")
        if header_only:
            data = np.zeros((0, 0, 0), dtype=dtype.newbyteorder("="))
        else:
            raw = np.frombuffer(fh.read(need), dtype=dtype)
            data = raw.reshape(nz, ny, nx).astype(dtype.newbyteorder("="))
    fmt = "<40i" if order == "little" else ">40i"
    params = np.asarray(struct.unpack_from(fmt, head, 96), dtype=np.int64)
    return EmFile(
        path=p, data=data, shape_xyz=(nx, ny, nz), machine_code=machine, byte_order=order, dtype_code=dtype_code,
        comment=head[16:96].split(b"\0", 1)[0].decode("latin-1").strip(), params=params,
        user=head[256:276].split(b"\0", 1)[0].decode("latin-1").strip(),
    )


def write_em(path: PathType, data: Any, *, pixel_size_A: float | None = None, byte_order: str = "little",
             comment: str = "") -> Path:
    """Write ``data`` (indexed ``[z, y, x]``; 2-D ``[y, x]`` is one section) as a TOM ``.em`` file.

    Machine code 6 (PC, little-endian) by default, 5 (big-endian) with ``byte_order="big"``; the data type
    code from the dtype (int8, int16, int32, float32, float64, complex64, complex128; other dtypes are
    refused); ``pixel_size_A`` goes into parameter 7 (× 1000). Written to a temporary file and renamed.
    """
    arr = np.asarray(data)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.size == 0:
        raise ValueError(f"write_em: data must be 2-D or 3-D and not empty, got shape {arr.shape}")
    codes = {np.dtype(v).name: k for k, v in EM_DTYPES.items()}
    if arr.dtype.name not in codes:
        raise ValueError(f"write_em: dtype {arr.dtype} has no .em data type code ({', '.join(codes)})")
    if byte_order not in ("little", "big"):
        raise ValueError(f"byte_order must be 'little' or 'big', got {byte_order!r}")
    e = "<" if byte_order == "little" else ">"
    nz, ny, nx = arr.shape
    head = bytearray(HEADER_BYTES)
    head[0] = 6 if byte_order == "little" else 5
    head[3] = codes[arr.dtype.name]
    struct.pack_into(e + "3i", head, 4, nx, ny, nz)
    c = comment.encode("latin-1")[:80]
    head[16:16 + len(c)] = c
    if pixel_size_A:
        struct.pack_into(e + "i", head, 96 + 6 * 4, int(round(pixel_size_A * 1000)))
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_bytes(bytes(head) + np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder(e)).tobytes())
    tmp.replace(p)
    return p


def describe(path: PathType, *, strict: bool = True) -> dict[str, Any]:
    """Facts for ``tomoguide inspect``: kind, flavour (dtype, byte order), sizes, pixel size, statistics."""
    em = read_em(path, strict=strict)
    nx, ny, nz = em.shape_xyz
    facts: dict[str, Any] = {
        "kind": "tom_em", "flavour": em.flavour, "shape_xyz": [nx, ny, nz],
        "machine_code": em.machine_code, "data_type_code": em.dtype_code,
        "pixel_size_A": em.pixel_size_A, "comment": em.comment,
    }
    if np.iscomplexobj(em.data):
        facts["abs_max"] = float(np.abs(em.data).max())
    else:
        d = em.data.astype(np.float64)
        facts.update(min=float(d.min()), max=float(d.max()), mean=float(d.mean()), std=float(d.std()))
    return facts
