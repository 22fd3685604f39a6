"""A reader of R's serialization format (XDR, versions 2 and 3), enough for data packages.

Design choices:
- Only what data needs: vectors (logical, integer, double, complex, character, raw, list),
  attributes, pairlists, symbols, environments and references. Byte code is refused; the
  compact ALTREP sequences R writes for ``1:n`` are expanded, other ALTREP classes refused.
- Values map onto Python: a vector is an ``RVector`` (a list with ``attrs``), a pairlist a list
  of ``(tag, value)`` pairs, a symbol an ``RSymbol`` (a str), ``NULL`` and ``NA`` are None.
- ``lazyload_db`` reads the ``.rdx``/``.rdb`` pair R packages keep their data sets in: the
  index is a gzip'd serialized list (``variables``: name -> offset and length in the ``.rdb``;
  ``compressed``), each record a 4-byte big-endian length and a zlib stream (or a type byte and
  a bzip2/xz/raw stream when ``compressed`` is 2 or 3).
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import zlib
from typing import Any

__all__ = ["RSymbol", "RVector", "lazyload_db", "unserialize"]

_PAIRLISTS = {2, 3, 5, 6, 17, 239, 240}  # LIST, CLOS, PROM, LANG, DOTS, ATTRLIST, ATTRLANG
_SPECIAL = {254: None, 253: "<globalenv>", 252: "<unbound>", 251: "<missing>",
            250: "<basenamespace>", 242: "<emptyenv>", 241: "<baseenv>"}  # fmt: skip
_NA_INT = -(2**31)


class RVector(list):
    """An R vector: its elements, and its attributes (``names``, ``class``, ...)."""

    def __init__(self, items=(), attrs: dict[str, Any] | None = None):
        super().__init__(items)
        self.attrs = attrs or {}

    @property
    def names(self) -> list[str] | None:
        return self.attrs.get("names")


class RSymbol(str):
    """An R symbol (a pairlist tag, a name)."""


class REnvironment:
    """An R environment; its contents are kept but not interpreted."""

    def __init__(self):
        self.enclos = self.frame = self.hashtab = None
        self.attrs: dict[str, Any] = {}


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos, self.refs = data, 0, []

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("R data ends early")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def int(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def length(self) -> int:
        n = self.int()
        if n == -1:  # a long vector: the length as two more ints
            hi, lo = self.int(), self.int()
            n = (hi << 32) | lo
        return n

    def strings(self) -> list[str | None]:
        if self.int() != 0:
            raise ValueError("bad R persistent-name record")
        return [self.item() for _ in range(self.int())]

    def item(self) -> Any:
        return self.dispatch(self.int())

    def dispatch(self, flags: int) -> Any:
        kind, levels, has_attr = flags & 0xFF, flags >> 12, flags & (1 << 9)
        if kind in _SPECIAL:
            return _SPECIAL[kind]
        if kind == 255:  # a reference to an earlier symbol or environment
            index = flags >> 8 or self.int()
            return self.refs[index - 1]
        if kind in (247, 248, 249):  # persistent, package, namespace: names only
            value = RVector(self.strings())
            self.refs.append(value)
            return value
        if kind == 1:
            value = RSymbol(self.item() or "")
            self.refs.append(value)
            return value
        if kind == 4:
            self.int()  # locked
            env = REnvironment()
            self.refs.append(env)
            env.enclos, env.frame, env.hashtab = self.item(), self.item(), self.item()
            env.attrs = _attr_dict(self.item())
            return env
        if kind in _PAIRLISTS:
            return self.pairlist(flags)
        if kind == 9:  # CHARSXP
            n = self.int()
            if n == -1:
                return None
            raw = self.take(n)
            return raw.decode("latin-1" if levels & 4 else "utf-8", errors="replace")
        if kind in (10, 13):  # logical, integer
            n = self.length()
            ints = struct.unpack(f">{n}i", self.take(4 * n))
            value = RVector(None if v == _NA_INT else v for v in ints)
        elif kind == 14:
            n = self.length()
            value = RVector(struct.unpack(f">{n}d", self.take(8 * n)))
        elif kind == 15:
            n = self.length()
            parts = struct.unpack(f">{2 * n}d", self.take(16 * n))
            value = RVector(complex(a, b) for a, b in zip(parts[::2], parts[1::2], strict=True))
        elif kind in (16, 19, 20):  # character, list, expression
            value = RVector(self.item() for _ in range(self.length()))
        elif kind == 24:
            value = RVector(self.take(self.length()))
        elif kind == 25:  # S4: attributes only
            value = RVector()
        elif kind in (7, 8):  # special, builtin: a name
            return RSymbol(self.take(self.int()).decode())
        elif kind == 22:  # external pointer
            value = RVector()
            self.refs.append(value)
            self.item(), self.item()
        elif kind == 23:  # weak reference
            value = RVector()
            self.refs.append(value)
        elif kind == 238:
            return self.altrep()
        else:
            raise ValueError(f"unsupported R object type {kind}")
        if has_attr:
            value.attrs = _attr_dict(self.item())
        return value

    def pairlist(self, flags: int) -> list[tuple[str | None, Any]]:
        # Read the CDR chain in a loop: a long pairlist must not recurse once per element.
        out = []
        while flags & 0xFF in _PAIRLISTS:
            if flags & (1 << 9):
                self.item()  # a pairlist cell's own attributes: not needed
            tag = self.item() if flags & (1 << 10) else None
            out.append((tag, self.item()))
            flags = self.int()
        tail = self.dispatch(flags)
        if tail is not None:
            out.append((None, tail))
        return out

    def altrep(self) -> RVector:
        info, state, attrs = self.item(), self.item(), self.item()
        cls = info[0][1] if info else ""
        if cls in ("compact_intseq", "compact_realseq"):
            n, start, step = state
            value = RVector(start + i * step for i in range(int(n)))
            if cls == "compact_intseq":
                value = RVector(int(v) for v in value)
        elif str(cls).startswith("wrap_"):
            value = RVector(state[0])
        else:
            raise ValueError(f"unsupported R ALTREP class {cls!r}")
        value.attrs = _attr_dict(attrs)
        return value


def _attr_dict(pairs) -> dict[str, Any]:
    return {str(tag): v for tag, v in pairs or []}


def unserialize(data: bytes) -> Any:
    """The object in ``data``: R's XDR serialization (what ``serialize``/``saveRDS`` write,
    uncompressed), format version 2 or 3."""
    reader = _Reader(data)
    if reader.take(2) != b"X\n":
        raise ValueError("not R XDR serialization (only the XDR format is read)")
    version = reader.int()
    reader.int(), reader.int()  # the writer's R version, the oldest reader's
    if version == 3:
        reader.take(reader.int())  # the writer's native encoding
    elif version != 2:
        raise ValueError(f"unsupported R serialization version {version}")
    return reader.item()


def lazyload_db(rdx: bytes, rdb: bytes) -> dict[str, Any]:
    """Every variable of an R lazy-load database (``Rdata.rdx`` + ``Rdata.rdb``), by name."""
    index = unserialize(gzip.decompress(rdx))
    fields = dict(zip(index.names, index, strict=True))
    compressed = fields.get("compressed", RVector([1]))[0]
    variables = fields["variables"]
    out = {}
    for name, (offset, size) in zip(variables.names, variables, strict=True):
        record = rdb[offset : offset + size]
        if compressed in (2, 3):
            kind, body = record[4:5], record[5:]
            payload = {b"Z": lzma.decompress, b"2": bz2.decompress, b"0": bytes}[kind](body)
        elif compressed:
            payload = zlib.decompress(record[4:])
        else:
            payload = record
        out[name] = unserialize(payload)
    return out
