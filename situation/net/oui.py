"""MAC address → vendor, from the IEEE registration authority's public listings.

The IEEE assigns MAC prefixes in three sizes: MA-L (24 bits, the classic OUI),
MA-M (28 bits) and MA-S (36 bits; the older IAB blocks are 36-bit too). A MAC
belongs to its longest registered prefix, so a lookup tries 36, then 28, then
24 bits.

Sources, first found wins:

1. a directory given explicitly (``--macvendor-registry``);
2. Debian's ``ieee-data`` package: ``/var/lib/ieee-data`` (refreshed by its
   ``update-ieee-data`` command), then ``/usr/share/ieee-data`` (as shipped).
   It carries all four listings: ``oui.txt`` (MA-L), ``mam.txt`` (MA-M),
   ``oui36.txt`` (MA-S), ``iab.txt`` (IAB);
3. the copies bundled with the ``netaddr`` package, a dependency, so that the
   agent has vendors wherever pip installs it: MA-L and IAB only (netaddr
   ships no MA-M or MA-S listing).

All are the IEEE's text format, read by one parser. The index is built in
memory once (the caller runs :func:`load_index` in a thread) and kept as
sorted integer arrays searched by bisection, the organisation names as one
UTF-8 buffer: about 2 MB for the ~46,000 assignments, where dicts of Python
ints and strings would take several times that.
"""

from __future__ import annotations

import re
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

IEEE_DATA_DIRECTORIES = ("/var/lib/ieee-data", "/usr/share/ieee-data")
LISTINGS = ("oui.txt", "mam.txt", "oui36.txt", "iab.txt")
PREFIX_BITS = (36, 28, 24)  # longest first

# "00-50-C2   (hex)   Org" opens a record; "7D5000-7D5FFF   (base 16)   Org" (a block
# inside that OUI) or "0050C2   (base 16)   Org" (the whole OUI) names what is assigned.
_HEX = re.compile(r"^\s*([0-9A-Fa-f]{2})-([0-9A-Fa-f]{2})-([0-9A-Fa-f]{2})\s+\(hex\)")
_BASE16 = re.compile(r"^\s*([0-9A-Fa-f]{6})(?:-([0-9A-Fa-f]{6}))?\s+\(base 16\)\s*(.*?)\s*$")


@dataclass(frozen=True)
class Assignment:
    bits: int  # 24, 28 or 36
    prefix: int  # the first ``bits`` bits of the MAC, as an integer
    organization: str


def parse_listing(lines: Iterable[str]) -> Iterator[Assignment]:
    """The assignments of one IEEE listing (oui.txt, mam.txt, oui36.txt or iab.txt)."""
    oui: int | None = None
    for line in lines:
        opened = _HEX.match(line)
        if opened:
            oui = int("".join(opened.groups()), 16)
            continue
        named = _BASE16.match(line)
        if not named or not named.group(3):
            continue
        start, end, organization = named.groups()
        if end is None:  # the whole 24-bit OUI
            yield Assignment(24, int(start, 16), organization)
        elif oui is not None:
            assignment = _block(oui, start, end, organization)
            if assignment:
                yield assignment


def _block(oui: int, start: str, end: str, organization: str) -> Assignment | None:
    """A block ``start-end`` inside ``oui``: its fixed leading digits extend the prefix."""
    fixed = 0
    while fixed < 6 and start[fixed].upper() == end[fixed].upper():
        fixed += 1
    bits = 24 + 4 * fixed
    if bits not in PREFIX_BITS or start[fixed:].strip("0") or end[fixed:].upper().strip("F"):
        return None  # not a block the registries assign
    return Assignment(bits, (oui << 4 * fixed) | int(start[:fixed], 16), organization)


class VendorIndex:
    """Longest-prefix lookup over the registries, in compact arrays."""

    def __init__(self, assignments: Iterable[Assignment], source: str = ""):
        self.source = source
        # Filled straight from the parser, so that building needs no per-entry
        # Python objects beyond the one being read (the peak stays near the result).
        prefixes = {bits: array("Q") for bits in PREFIX_BITS}
        names_of = {bits: array("I") for bits in PREFIX_BITS}
        text, self._ends = bytearray(), array("I")
        for assignment in assignments:
            prefixes[assignment.bits].append(assignment.prefix)
            names_of[assignment.bits].append(len(self._ends))
            text += assignment.organization.encode("utf-8")
            self._ends.append(len(text))
        self._text = bytes(text)
        self._prefixes: dict[int, array] = {}
        self._names_of: dict[int, array] = {}
        for bits in PREFIX_BITS:
            order = sorted(range(len(prefixes[bits])), key=prefixes[bits].__getitem__)
            self._prefixes[bits] = array("Q", (prefixes[bits][i] for i in order))
            self._names_of[bits] = array("I", (names_of[bits][i] for i in order))

    def __len__(self) -> int:
        return sum(len(p) for p in self._prefixes.values())

    def counts(self) -> dict[int, int]:
        """Assignments per prefix length."""
        return {bits: len(prefixes) for bits, prefixes in self._prefixes.items()}

    def _name(self, number: int) -> str:
        start = self._ends[number - 1] if number else 0
        return self._text[start : self._ends[number]].decode("utf-8")

    def lookup(self, mac: str) -> str | None:
        """The organisation a MAC's longest registered prefix belongs to, or None.

        Any common spelling is accepted (``aa:bb:cc:dd:ee:ff``, ``AA-BB-…``,
        ``aabb.ccdd.eeff``); a value too short for a prefix length, or not hex,
        matches nothing at that length.
        """
        digits = mac.replace(":", "").replace("-", "").replace(".", "")
        if not digits or not all(c in "0123456789abcdefABCDEF" for c in digits):
            return None
        for bits in PREFIX_BITS:
            width = bits // 4
            if len(digits) < width:
                continue
            prefix = int(digits[:width], 16)
            prefixes = self._prefixes[bits]
            at = bisect_left(prefixes, prefix)
            if at < len(prefixes) and prefixes[at] == prefix:
                return self._name(self._names_of[bits][at])
        return None


def registry_files(directory: str = "") -> list[Path]:
    """The listings to read: from ``directory`` when given, else the first source found."""
    if directory:
        return [p for p in (Path(directory) / name for name in LISTINGS) if p.is_file()]
    for candidate in IEEE_DATA_DIRECTORIES:
        found = [p for p in (Path(candidate) / name for name in LISTINGS) if p.is_file()]
        if found:
            return found
    return _netaddr_files()


def _netaddr_files() -> list[Path]:
    """netaddr's bundled listings, found without importing the package."""
    from importlib.util import find_spec

    spec = find_spec("netaddr")
    if spec is None or not spec.origin:
        return []
    bundled = Path(spec.origin).parent / "eui"
    return [p for p in (bundled / "oui.txt", bundled / "iab.txt") if p.is_file()]


def load_index(directory: str = "") -> VendorIndex | None:
    """The index over the current listings (blocking: run it in a thread); None when there are none.

    Cached while the files stay the same: a registry refreshed on disk (say by
    ``update-ieee-data``) is read again on the next call.
    """
    files = registry_files(directory)
    if not files:
        return None
    stamps = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files)
    return _build(stamps)


@lru_cache(maxsize=1)
def _build(stamps: tuple[tuple[str, int, int], ...]) -> VendorIndex:
    def assignments() -> Iterator[Assignment]:
        for path, _mtime, _size in stamps:
            with open(path, encoding="utf-8", errors="replace") as listing:
                yield from parse_listing(listing)

    return VendorIndex(assignments(), source=str(Path(stamps[0][0]).parent))
