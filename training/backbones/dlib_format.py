"""Reader for dlib's binary network files (``dlib::serialize`` of a ``dnn`` network).

Only the records that carry parameters are decoded; everything between them (tags, skips,
relu/pool layers, cached tensors) is stepped over by scanning for the next known record name.

Format (dlib's ``serialize.h`` / ``tensor.h``):

* an integer is one control byte -- low 4 bits: number of payload bytes, bit 7: negative --
  followed by that many little-endian bytes;
* a string is an integer length followed by the bytes;
* a tensor is an integer version (2), four integers ``n, k, nr, nc`` and ``n*k*nr*nc``
  little-endian float32 values.

Records, in file order from the input layer to the output layer:

* ``con_4``: parameter tensor (all filter weights, OIHW, then one bias per filter), then
  ``num_filters, nr, nc, stride_y, stride_x, pad_y, pad_x``;
* ``affine_``: parameter tensor holding ``gamma`` (one per channel) then ``beta``;
* ``fc_2``: ``num_outputs, num_inputs``, then a parameter tensor holding the weight matrix
  input-major (``num_inputs x num_outputs``); the face network's last layer has no bias.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class DlibFormatError(ValueError):
    """The file is not a dlib network file of the expected shape."""


@dataclass(frozen=True)
class ConvRecord:
    weight: np.ndarray  # (out, in, kh, kw) float32
    bias: np.ndarray  # (out,) float32
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass(frozen=True)
class AffineRecord:
    gamma: np.ndarray  # (C,) float32
    beta: np.ndarray  # (C,) float32


@dataclass(frozen=True)
class FcRecord:
    weight: np.ndarray  # (out, in) float32, PyTorch's Linear layout
    bias: np.ndarray | None


Record = ConvRecord | AffineRecord | FcRecord

_TAGS = (b"con_4", b"affine_", b"fc_2")


class _Reader:
    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def integer(self) -> int:
        if self.pos >= len(self.data):
            raise DlibFormatError("unexpected end of file while reading an integer")
        control = self.data[self.pos]
        size = control & 0x0F
        if size > 8:
            raise DlibFormatError(f"bad integer control byte 0x{control:02x} at offset {self.pos}")
        raw = self.data[self.pos + 1 : self.pos + 1 + size]
        if len(raw) != size:
            raise DlibFormatError("unexpected end of file inside an integer")
        self.pos += 1 + size
        value = int.from_bytes(raw, "little", signed=False)
        return -value if control & 0x80 else value

    def tensor(self) -> np.ndarray:
        version = self.integer()
        if version != 2:
            raise DlibFormatError(f"unsupported tensor version {version} at offset {self.pos}")
        shape = tuple(self.integer() for _ in range(4))
        count = int(np.prod(shape))
        end = self.pos + 4 * count
        if end > len(self.data):
            raise DlibFormatError("unexpected end of file inside a tensor")
        values = np.frombuffer(self.data, dtype="<f4", count=count, offset=self.pos)
        self.pos = end
        return values.astype(np.float32).reshape(shape)


def _encoded_tag(tag: bytes) -> bytes:
    return bytes([1, len(tag)]) + tag


def _next_tag(data: bytes, start: int) -> tuple[int, bytes] | None:
    hits = [(data.find(_encoded_tag(t), start), t) for t in _TAGS]
    hits = [(pos, tag) for pos, tag in hits if pos >= 0]
    return min(hits) if hits else None


def _read_conv(reader: _Reader) -> ConvRecord:
    params = reader.tensor().ravel()
    num_filters, nr, nc, stride_y, stride_x, pad_y, pad_x = (reader.integer() for _ in range(7))
    n_weights = params.size - num_filters
    if num_filters <= 0 or n_weights % (num_filters * nr * nc):
        raise DlibFormatError(
            f"conv parameter count {params.size} does not fit {num_filters}x{nr}x{nc}"
        )
    in_channels = n_weights // (num_filters * nr * nc)
    weight = params[:n_weights].reshape(num_filters, in_channels, nr, nc)
    return ConvRecord(weight, params[n_weights:].copy(), (stride_y, stride_x), (pad_y, pad_x))


def _read_affine(reader: _Reader) -> AffineRecord:
    params = reader.tensor().ravel()
    channels = params.size // 2
    return AffineRecord(params[:channels].copy(), params[channels:].copy())


def _read_fc(reader: _Reader) -> FcRecord:
    num_outputs, num_inputs = reader.integer(), reader.integer()
    params = reader.tensor().ravel()
    if params.size == num_inputs * num_outputs:
        bias = None
    elif params.size == (num_inputs + 1) * num_outputs:
        bias = params[num_inputs * num_outputs :].copy()
    else:
        raise DlibFormatError(
            f"fc parameter count {params.size} does not fit {num_inputs}->{num_outputs}"
        )
    weight = params[: num_inputs * num_outputs].reshape(num_inputs, num_outputs).T.copy()
    return FcRecord(weight, bias)


_READERS: dict[bytes, Callable[[_Reader], Record]] = {
    b"con_4": _read_conv,
    b"affine_": _read_affine,
    b"fc_2": _read_fc,
}


def read_records(path: str | Path) -> list[Record]:
    """All parameter records of a dlib network file, input layer first.

    Raises ``DlibFormatError`` when no record is found or one is malformed.
    """
    data = Path(path).read_bytes()
    records: list[Record] = []
    pos = 0
    while (hit := _next_tag(data, pos)) is not None:
        tag_pos, tag = hit
        reader = _Reader(data, tag_pos + len(_encoded_tag(tag)))
        records.append(_READERS[tag](reader))
        pos = reader.pos
    if not records:
        raise DlibFormatError(f"{path}: no dlib network layers found")
    return records


__all__ = ["AffineRecord", "ConvRecord", "DlibFormatError", "FcRecord", "read_records"]
