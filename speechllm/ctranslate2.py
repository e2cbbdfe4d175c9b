"""Reader for CTranslate2's ``model.bin`` container (binary versions 4-6), numpy only.

Layout (little endian), as written by CTranslate2's ``model_spec.py`` serializer::

    uint32 binary_version
    string model_name            # strings: uint16 length incl. the NUL, bytes, NUL
    uint32 revision
    uint32 num_variables
    num_variables x (string name, uint8 rank, rank x uint32 dims, uint8 dtype id,
                     uint32 num_bytes, num_bytes raw bytes)
    uint32 num_aliases
    num_aliases x (string alias, string target)

Scalars (rank 0) hold model attributes such as ``encoder/num_heads`` (int16) or flags
(int8). bfloat16 variables, which numpy lacks, are widened to float32.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SUPPORTED_VERSIONS = (4, 5, 6)  # variable records are identical since version 4

# CTranslate2's DataType enum (include/ctranslate2/types.h)
DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
    5: np.dtype("<u2"),  # bfloat16 bits, widened to float32 on read
}
BFLOAT16_ID = 5


class Ct2FormatError(ValueError):
    """A file that is not a readable CTranslate2 model; the message names the file."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        super().__init__(f"{path}: not a readable CTranslate2 model.bin ({reason})")


@dataclass(frozen=True)
class Ct2Model:
    name: str
    revision: int
    binary_version: int
    variables: dict[str, np.ndarray]  # aliases included, sharing their target's array
    aliases: dict[str, str]


class _Cursor:
    def __init__(self, data: bytes, path: Path):
        self.data, self.path, self.pos = data, path, 0

    def take(self, n: int) -> int:
        """Advance by n bytes; return the start offset."""
        start = self.pos
        if n < 0 or start + n > len(self.data):
            raise Ct2FormatError(self.path, f"truncated at byte {start}, wanted {n} more")
        self.pos += n
        return start

    def scalar(self, fmt: str) -> int:
        return struct.unpack_from(fmt, self.data, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.scalar("<H")
        raw = self.data[self.take(n) : self.pos]
        if n == 0 or raw[-1] != 0:
            raise Ct2FormatError(self.path, f"bad string at byte {self.pos - n}")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as e:
            raise Ct2FormatError(self.path, f"bad string at byte {self.pos - n}") from e


def _read_variable(cur: _Cursor) -> tuple[str, np.ndarray]:
    name = cur.string()
    rank = cur.scalar("<B")
    shape = tuple(cur.scalar("<I") for _ in range(rank))
    type_id = cur.scalar("<B")
    num_bytes = cur.scalar("<I")
    if type_id not in DTYPES:
        raise Ct2FormatError(cur.path, f"variable {name!r} has unknown dtype id {type_id}")
    dtype = DTYPES[type_id]
    count = int(np.prod(shape, dtype=np.int64))
    if count * dtype.itemsize != num_bytes:
        raise Ct2FormatError(cur.path, f"variable {name!r}: shape {shape} does not fit {num_bytes} bytes")
    array = np.frombuffer(cur.data, dtype=dtype, count=count, offset=cur.take(num_bytes)).reshape(shape)
    if type_id == BFLOAT16_ID:
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return name, array


def read_ct2_model(path: str | Path) -> Ct2Model:
    """Read every variable of a CTranslate2 ``model.bin`` (or of the folder holding it).

    Arrays are read-only numpy views on one read of the file (no per-tensor copies).
    Raises :class:`Ct2FormatError` (a ``ValueError``) naming the file when it is truncated,
    garbage or of an unsupported binary version; ``FileNotFoundError`` when missing.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    data = path.read_bytes()
    cur = _Cursor(data, path)
    version = cur.scalar("<I")
    if version not in SUPPORTED_VERSIONS:
        raise Ct2FormatError(path, f"binary version {version}, supported: {SUPPORTED_VERSIONS}")
    name = cur.string()
    revision = cur.scalar("<I")
    variables = dict(_read_variable(cur) for _ in range(cur.scalar("<I")))
    aliases = dict((cur.string(), cur.string()) for _ in range(cur.scalar("<I")))
    if cur.pos != len(data):
        raise Ct2FormatError(path, f"{len(data) - cur.pos} unexpected trailing bytes")
    for alias, target in aliases.items():
        if target not in variables:
            raise Ct2FormatError(path, f"alias {alias!r} points to missing variable {target!r}")
        variables[alias] = variables[target]
    return Ct2Model(name=name, revision=revision, binary_version=version, variables=variables,
                    aliases=aliases)
