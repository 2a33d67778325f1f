"""Hash lists ("banks") of known content, loaded from the formats in circulation.

Accepted, one entry per line (blank lines and `#` comments ignored):
  - a bare hex hash;
  - `<signal_type> <hex>`;
  - ThreatExchange-style CSV `hash,indicator_id,descriptor_id,added_on,tags` (header optional, tags space-separated);
  - JSON lines `{"hash": ..., "signal_type": ..., "id": ..., "label": ..., "tags": [...], "added_on": ...}`.
`entry_id` is the list's id column when it has one, else the 1-based line number. A known video is several rows
with one id and a `frame_s` column (CSV with a header) or key (JSON lines): its frame hashes, about one a second.
A malformed line rejects the whole file, naming file and line: half a list is worse than a clear error.

A bank file is read only when it is a regular file of at most `max_bytes` (default 256 MiB), and neither it nor
its folder is a symbolic link unless `follow_symlinks` is on: a bank path that someone swapped for a link to a
secret file, a FIFO or /dev/zero is refused with its reason before a byte of it is parsed (or quoted in an error).
"""

from __future__ import annotations

import copy
import csv
import io
import json
import logging
import os
import stat
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from pipelines.errors import BankFormatError
from pipelines.fingerprint import DEFAULT_THRESHOLDS, SIGNAL_TYPES
from pipelines.hamming import CODE_BYTES, Codes, hex_to_code
from pipelines.index import HammingIndex, LinearIndex
from pipelines.mih import MultiIndexHashIndex

log = logging.getLogger(__name__)

CSV_COLUMNS = ("hash", "indicator_id", "descriptor_id", "added_on", "tags")
DEFAULT_MAX_BYTES = 256 * 2**20  # ~2.5M CSV rows with labels, ~4M bare hex lines; BankConfig.max_bytes changes it


@dataclass(frozen=True, slots=True)
class Entry:
    entry_id: str
    label: str | None = None
    tags: tuple[str, ...] = ()
    added_on: str | None = None
    frame_s: float | None = None  # set for frames of a known video: all frames of one video share entry_id


@dataclass(frozen=True, slots=True)
class BankMatch:
    entry: Entry
    distance: int


class Bank:
    """A named list of hashes of one signal type, with its match threshold.

    Immutable once built, so a lookup never sees a half-changed bank: a reload makes a new Bank and the
    matcher swaps the reference. A small change (`updated`) shares the big index of the old bank and adds
    an overlay (a few added rows scanned linearly, removed rows masked) instead of rebuilding it.
    """

    def __init__(
        self,
        name: str,
        signal_type: str,
        codes: Codes,
        entries: list[Entry],
        threshold: int | None = None,
    ) -> None:
        if signal_type not in SIGNAL_TYPES:
            raise ValueError(f"unknown signal type {signal_type!r}")
        self.name = name
        self.signal_type = signal_type
        self.threshold = DEFAULT_THRESHOLDS[signal_type] if threshold is None else threshold
        base = np.ascontiguousarray(codes, dtype=np.uint8).reshape(-1, CODE_BYTES)
        if len(base) != len(entries):
            raise ValueError("codes and entries differ in length")
        self._base_codes, self._base_entries = base, list(entries)
        self._index: HammingIndex = MultiIndexHashIndex(base, np.arange(len(base), dtype=np.int64))
        self._removed: frozenset[int] = frozenset()
        self._extra_codes = np.empty((0, CODE_BYTES), dtype=np.uint8)
        self._extra_entries: list[Entry] = []
        self._extra_index: HammingIndex = LinearIndex(self._extra_codes, np.empty(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self._base_entries) - len(self._removed) + len(self._extra_entries)

    @property
    def overlay_size(self) -> int:
        return len(self._removed) + len(self._extra_entries)

    def rows(self) -> list[tuple[Codes, Entry]]:
        """The bank's current content, base rows first."""
        out = [(self._base_codes[i], e) for i, e in enumerate(self._base_entries) if i not in self._removed]
        return out + list(zip(self._extra_codes, self._extra_entries, strict=True))

    @property
    def codes(self) -> Codes:
        rows = self.rows()
        return np.stack([c for c, _ in rows]) if rows else np.empty((0, CODE_BYTES), dtype=np.uint8)

    @property
    def entries(self) -> list[Entry]:
        return [e for _, e in self.rows()]

    def lookup(self, code: Codes) -> list[BankMatch]:
        """Entries within the bank's threshold, nearest first."""
        return self.lookup_many(np.asarray(code, dtype=np.uint8).reshape(1, CODE_BYTES))[0]

    def lookup_many(self, codes: Codes) -> list[list[BankMatch]]:
        """One result list per probe (the views and variants of one sample are searched in one batch)."""
        codes = np.ascontiguousarray(codes, dtype=np.uint8).reshape(-1, CODE_BYTES)
        extra = self._extra_index.search_batch(codes, self.threshold) if self._extra_entries else None
        out: list[list[BankMatch]] = []
        for i, (rows, dists) in enumerate(self._index.search_batch(codes, self.threshold)):
            hits = [BankMatch(self._base_entries[int(r)], int(d))
                    for r, d in zip(rows, dists, strict=True) if int(r) not in self._removed]
            if extra is not None:
                xr, xd = extra[i]
                hits += [BankMatch(self._extra_entries[int(r)], int(d)) for r, d in zip(xr, xd, strict=True)]
                hits.sort(key=lambda m: m.distance)
            out.append(hits)
        return out

    def updated(self, codes: Codes, entries: list[Entry], max_overlay: int | None = None) -> Bank:
        """This bank changed to (codes, entries): a small change gets an overlay, a large one a rebuild."""
        codes = np.ascontiguousarray(codes, dtype=np.uint8).reshape(-1, CODE_BYTES)
        limit = max_overlay if max_overlay is not None else max(1000, len(entries) // 20)
        want: Counter[tuple[bytes, Entry]] = Counter((c.tobytes(), e) for c, e in zip(codes, entries, strict=True))
        have: dict[tuple[bytes, Entry], list[tuple[str, int]]] = {}
        for i, e in enumerate(self._base_entries):
            if i not in self._removed:
                have.setdefault((self._base_codes[i].tobytes(), e), []).append(("base", i))
        for i, e in enumerate(self._extra_entries):
            have.setdefault((self._extra_codes[i].tobytes(), e), []).append(("extra", i))
        removed = set(self._removed)
        keep_extra: list[int] = []
        for key, places in have.items():
            keep = want.pop(key, 0)
            for where, i in places[keep:]:
                if where == "base":
                    removed.add(i)
            keep_extra += [i for where, i in places[:keep] if where == "extra"]
        added = [(np.frombuffer(k[0], dtype=np.uint8), k[1]) for k, n in want.items() for _ in range(n)]
        if len(removed) + len(keep_extra) + len(added) > limit:
            return Bank(self.name, self.signal_type, codes, entries, self.threshold)
        new = copy.copy(self)  # shares the base index: nothing big is copied or rebuilt
        new._removed = frozenset(removed)
        extra = [(self._extra_codes[i], self._extra_entries[i]) for i in sorted(keep_extra)] + added
        new._extra_codes = (np.stack([c for c, _ in extra]) if extra
                            else np.empty((0, CODE_BYTES), dtype=np.uint8))
        new._extra_entries = [e for _, e in extra]
        new._extra_index = LinearIndex(new._extra_codes, np.arange(len(extra), dtype=np.int64))
        return new


def load_bank(path: Path, name: str, signal_type: str = "pdq", threshold: int | None = None,
              previous: Bank | None = None, *, max_bytes: int = DEFAULT_MAX_BYTES,
              follow_symlinks: bool = False) -> Bank:
    """Parse a hash-list file; raises BankFormatError naming the file and line.

    With `previous` (the same bank as loaded before), a small change becomes an overlay on its index.
    """
    codes, entries = read_bank_file(path, name, signal_type, max_bytes=max_bytes, follow_symlinks=follow_symlinks)
    if previous is not None and previous.signal_type == signal_type and previous.threshold == (
            DEFAULT_THRESHOLDS[signal_type] if threshold is None else threshold):
        return previous.updated(codes, entries)
    return Bank(name, signal_type, codes, entries, threshold)


def _symlink_in(path: Path) -> Path | None:
    """The bank's folder or the file itself when it is a symbolic link (the file is also opened O_NOFOLLOW)."""
    current = Path(os.path.abspath(path))
    for part in (current.parent, current):
        if part.is_symlink():
            return part
    return None


def read_bank_text(path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES, follow_symlinks: bool = False) -> str:
    """The file's text, read with the bank rules (regular file, size cap, no links); BankFormatError otherwise."""
    where = str(path)
    if not follow_symlinks:
        link = _symlink_in(path)
        if link is not None:
            raise BankFormatError(where, None, f"{link} is a symbolic link; bank files are not read through links "
                                               "(set follow_symlinks: true on this bank to allow it)")
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)  # O_NONBLOCK: a FIFO must not hang the open; O_NOFOLLOW: no race on the check
    except OSError as exc:
        raise BankFormatError(where, None, f"cannot read: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise BankFormatError(where, None, "not a regular file")
        if st.st_size > max_bytes:
            raise BankFormatError(where, None, f"{st.st_size} bytes, more than this bank's max_bytes ({max_bytes})")
        try:
            raw = fh.read(max_bytes + 1)  # files that report no size (/proc) are capped here
        except OSError as exc:
            raise BankFormatError(where, None, f"cannot read: {exc.strerror or exc}") from None
    if len(raw) > max_bytes:
        raise BankFormatError(where, None, f"more than this bank's max_bytes ({max_bytes}) bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BankFormatError(where, None, "not a UTF-8 text file") from None


def read_bank_file(path: Path, name: str, signal_type: str, *, max_bytes: int = DEFAULT_MAX_BYTES,
                   follow_symlinks: bool = False) -> tuple[Codes, list[Entry]]:
    text = read_bank_text(path, max_bytes=max_bytes, follow_symlinks=follow_symlinks)
    codes, entries, skipped = parse_bank_text(text, str(path), signal_type)
    if skipped:
        log.warning("bank %s: %s: skipped entries of other signal types: %s", name, path, dict(skipped))
    if not entries:
        log.warning("bank %s: %s holds no %s entries", name, path, signal_type)
    return codes, entries


def parse_bank_text(text: str, source: str, signal_type: str) -> tuple[Codes, list[Entry], Counter[str]]:
    lines = text.splitlines()
    first = next((ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")), "")
    if first.startswith("{"):
        rows = _parse_jsonl(lines, source, signal_type)
    elif "," in first:
        rows = _parse_csv(text, source)
    else:
        rows = _parse_plain(lines, source)
    codes: list[Codes] = []
    entries: list[Entry] = []
    skipped: Counter[str] = Counter()
    for lineno, sig, hex_str, entry in rows:
        if sig is not None and sig != signal_type:
            skipped[sig] += 1
            continue
        try:
            codes.append(hex_to_code(hex_str))
        except ValueError:
            shown = hex_str if len(hex_str) <= 70 else hex_str[:67] + "..."
            raise BankFormatError(
                source, lineno, f"{shown!r} is not a {CODE_BYTES * 2}-digit hex {signal_type} hash"
            ) from None
        entries.append(entry)
    arr: npt.NDArray[np.uint8] = (
        np.stack(codes) if codes else np.empty((0, CODE_BYTES), dtype=np.uint8)
    )
    return arr, entries, skipped


_Row = tuple[int, str | None, str, Entry]


def _signal_name(token: str) -> str:
    t = token.strip().lower()
    return {"pdq_hash": "pdq", "photo_pdq": "pdq", "pdqhash": "pdq"}.get(t, t)


def _frame_time(value: object, source: str, lineno: int) -> float | None:
    if value is None or value == "":
        return None
    try:
        t = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise BankFormatError(source, lineno, f"frame_s {value!r} is not a number of seconds") from None
    if not t >= 0:
        raise BankFormatError(source, lineno, f"frame_s {value!r} must be >= 0")
    return t


def _parse_plain(lines: list[str], source: str) -> list[_Row]:
    rows: list[_Row] = []
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) == 1:
            rows.append((lineno, None, parts[0], Entry(str(lineno))))
        elif len(parts) == 2:
            rows.append((lineno, _signal_name(parts[0]), parts[1], Entry(str(lineno))))
        else:
            raise BankFormatError(source, lineno, "expected '<hex>' or '<signal_type> <hex>'")
    return rows


def _parse_csv(text: str, source: str) -> list[_Row]:
    rows: list[_Row] = []
    columns: tuple[str, ...] = CSV_COLUMNS
    # newline="": the csv module splits lines itself (a bare CR inside text passed in must not end a field badly)
    reader = csv.reader(io.StringIO(text, newline=""))
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:  # e.g. an unterminated quote: say where, as for every other bad line
            raise BankFormatError(source, reader.line_num, f"not valid CSV: {exc}") from None
        lineno = reader.line_num
        if not cells or not "".join(cells).strip() or cells[0].lstrip().startswith("#"):
            continue
        cells = [c.strip() for c in cells]
        if cells[0].lower() == "hash":  # header row: columns may come in any order
            columns = tuple(c.lower() for c in cells)
            continue
        if len(cells) > len(columns):
            raise BankFormatError(source, lineno, f"{len(cells)} columns, expected at most {len(columns)}")
        rec = dict(zip(columns, cells, strict=False))
        entry = Entry(
            entry_id=rec.get("indicator_id") or rec.get("id") or str(lineno),
            label=rec.get("label") or rec.get("descriptor_id") or None,
            tags=tuple(rec.get("tags", "").split()),
            added_on=rec.get("added_on") or None,
            frame_s=_frame_time(rec.get("frame_s"), source, lineno),
        )
        sig = rec.get("signal_type")
        rows.append((lineno, _signal_name(sig) if sig else None, rec.get("hash", ""), entry))
    return rows


def _parse_jsonl(lines: list[str], source: str, signal_type: str) -> list[_Row]:
    rows: list[_Row] = []
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BankFormatError(source, lineno, f"invalid JSON: {exc.msg}") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("hash"), str):
            raise BankFormatError(source, lineno, "expected an object with a string 'hash'")
        tags = rec.get("tags") or []
        if isinstance(tags, str):
            tags = tags.split()
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise BankFormatError(source, lineno, "'tags' must be a list of strings")
        ident = rec.get("id", rec.get("entry_id"))
        entry = Entry(
            entry_id=str(ident) if ident is not None else str(lineno),
            label=str(rec["label"]) if rec.get("label") is not None else None,
            tags=tuple(tags),
            added_on=str(rec["added_on"]) if rec.get("added_on") is not None else None,
            frame_s=_frame_time(rec.get("frame_s"), source, lineno),
        )
        sig = rec.get("signal_type")
        rows.append((lineno, _signal_name(str(sig)) if sig else None, rec["hash"], entry))
    return rows


def format_bank(codes: list[str], fmt: str, signal_type: str = "pdq", labels: list[str] | None = None,
                entries: list[Entry] | None = None) -> str:
    """Write hex hashes in one of the load formats (`monitor hash`, `monitor bank convert`).

    With `entries`, ids, labels, tags and dates travel too (CSV and JSON lines carry them; plain and typed
    formats cannot, and their ids become line numbers again).
    """
    if entries is None:
        entries = [Entry(str(i), labels[i - 1] if labels else None) for i in range(1, len(codes) + 1)]
    out = io.StringIO()
    videos = any(e.frame_s is not None for e in entries)
    if fmt == "csv":
        w = csv.writer(out, lineterminator="\n")
        w.writerow((*CSV_COLUMNS, "frame_s") if videos else CSV_COLUMNS)
        for h, e in zip(codes, entries, strict=True):
            row = [h, e.entry_id, e.label or "", e.added_on or "", " ".join(e.tags)]
            w.writerow([*row, "" if e.frame_s is None else f"{e.frame_s:g}"] if videos else row)
    elif fmt == "typed":
        out.writelines(f"{signal_type} {h}\n" for h in codes)
    elif fmt == "jsonl":
        for h, e in zip(codes, entries, strict=True):
            rec: dict[str, object] = {"hash": h, "signal_type": signal_type, "id": e.entry_id}
            if e.label:
                rec["label"] = e.label
            if e.tags:
                rec["tags"] = list(e.tags)
            if e.added_on:
                rec["added_on"] = e.added_on
            if e.frame_s is not None:
                rec["frame_s"] = e.frame_s
            out.write(json.dumps(rec) + "\n")
    elif fmt == "plain":
        out.writelines(f"{h}\n" for h in codes)
    else:
        raise ValueError(f"unknown bank format {fmt!r}")
    return out.getvalue()
