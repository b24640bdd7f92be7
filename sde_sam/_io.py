"""Files in a results folder: one atomic writer, validated readers, and the store of study cells.

Everything here is data, never code: tables are CSV (floats written by ``repr`` and read back as a round
trip, so every float is the one written, bit for bit), metadata is JSON; nothing is unpickled.

* :func:`atomic_write`: the one way a results folder is written. The bytes go to a temporary file with a
  unique name in the same folder, are flushed to disk, and replace the target with ``os.replace``; the
  temporary is removed on any failure. A reader (or a run killed mid-write) sees the old file or the new
  one, never part of one, and two writers of one file never see each other's temporaries.
* :func:`read_csv`, :func:`read_json`: readers that give every float back exactly and name the file when
  it is not what it should be.
* :class:`CellStore`: one finished cell of a study as ``<name>.csv`` (its table) and ``<name>.json`` (the
  spec it was computed for, its columns, dtypes, row count and the SHA-256 of the CSV). A cell is written
  only when its table reads back equal, dtype and bit for bit; on resume it is reused only when its JSON
  holds the same spec and its CSV the recorded checksum, columns and rows. Used by
  :func:`sde_sam.executors.grid` and :func:`sde_sam.weak_error` alike.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["atomic_write", "write_csv", "write_json", "read_csv", "read_json", "canonical", "CellStore",
           "ForeignCell", "CELL_FORMAT"]

CELL_FORMAT = "sde_sam cell"
CELL_VERSION = 1

# pandas < 3 parses floats with a fast, not round-trip, parser by default; pandas 3 round-trips by default and
# deprecates the argument.
_ROUND_TRIP = {"float_precision": "round_trip"} if int(pd.__version__.split(".")[0]) < 3 else {}

# mkstemp creates files readable by their owner only; a results file gets the mode a plain open() would give.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


# ---------------------------------------------------------------------------------------------- writing


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` atomically: a unique temporary file in the same folder (``tempfile``),
    flushed and fsync'ed, then ``os.replace``; the temporary is removed if anything fails. Returns ``path``."""
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.chmod(tmp, 0o666 & ~_UMASK)
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:  # Ctrl-C or a full disk included: never leave a temporary behind
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def csv_bytes(frame: pd.DataFrame) -> bytes:
    """The CSV pandas writes (no index, ``\\n`` line ends): floats by ``repr``, NaN as an empty field."""
    return frame.to_csv(index=False, lineterminator="\n").encode("utf-8")


def write_csv(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """``frame`` as CSV (no index), written atomically."""
    return atomic_write(path, csv_bytes(frame))


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """``obj`` as indented JSON, written atomically."""
    return atomic_write(path, json.dumps(obj, indent=2))


# ---------------------------------------------------------------------------------------------- reading


def read_csv(path: str | os.PathLike | io.BytesIO, **kwargs: Any) -> pd.DataFrame:
    """A CSV written by pandas, every float exactly as written."""
    return pd.read_csv(path, **_ROUND_TRIP, **kwargs)


def read_json(path: str | os.PathLike) -> Any:
    """The JSON in ``path``; a ``ValueError`` naming the file when it is not valid JSON (e.g. truncated)."""
    try:
        return json.loads(Path(path).read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{str(path)!r} is not valid JSON ({type(err).__name__}: {err})") from None


def canonical(obj: Any) -> str:
    """Canonical JSON (sorted keys, no spaces; tuples as lists): equal for equal specs in any process."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True)


# ---------------------------------------------------------------------------------------------- cell tables


class CellFormatError(ValueError):
    """A cell table that cannot be stored exactly, or a stored one that does not match its record."""


def _textual(dtype) -> bool:
    return dtype == object or isinstance(dtype, pd.StringDtype)


def _encode(frame: pd.DataFrame) -> tuple[bytes, dict]:
    """CSV bytes and the record needed to read them back exactly: column names, dtypes, rows, and the rows
    where a text column is missing (written as an empty field, which an empty string is too)."""
    names = list(frame.columns)
    if not all(isinstance(c, str) for c in names) or len(set(names)) != len(names):
        raise CellFormatError(f"column names must be distinct str, got {names!r}")
    columns, dtypes, missing = {}, [], {}
    for name in names:
        col = frame[name].reset_index(drop=True)
        dtypes.append(str(col.dtype))
        if col.dtype.kind == "f" and col.dtype.itemsize < 8:
            col = col.astype("float64")  # exact; float64's repr then reads back to this very value
        elif _textual(col.dtype):
            na = col.isna().to_numpy()
            if na.any():
                missing[name] = [int(i) for i in na.nonzero()[0]]
                col = col.astype(object).where(~na, "")
        columns[name] = col
    data = csv_bytes(pd.DataFrame(columns, columns=names)) if names else b""
    return data, {"columns": names, "dtypes": dtypes, "rows": len(frame), "missing": missing}


def _decode(data: bytes, record: dict) -> pd.DataFrame:
    """The table :func:`_encode` wrote, with its dtypes; :class:`CellFormatError` when it does not match."""
    names, dtypes, rows = record["columns"], record["dtypes"], record["rows"]
    if not names:
        return pd.DataFrame(index=pd.RangeIndex(rows))
    read_as, na_values = {}, {}
    for name, dtype in zip(names, dtypes):
        dt = pd.api.types.pandas_dtype(dtype)
        if dt.kind == "f":
            read_as[name], na_values[name] = "float64", [""]
        elif dt.kind in "iub":
            read_as[name] = dtype
        else:  # text (and anything else: cast below; _encode's check refuses what does not come back)
            read_as[name] = object
    frame = read_csv(io.BytesIO(data), dtype=read_as, keep_default_na=False, na_values=na_values)
    if list(frame.columns) != names or len(frame) != rows:
        raise CellFormatError(f"expected {rows} rows of columns {names}, found {len(frame)} rows of "
                              f"{list(frame.columns)}")
    for name, dtype in zip(names, dtypes):
        col = frame[name]
        if name in record["missing"]:
            col = col.astype(object)
            col.iloc[record["missing"][name]] = None
        if str(col.dtype) != dtype:
            col = col.astype(dtype)
        frame[name] = col
    return frame


def _same(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    try:
        pd.testing.assert_frame_equal(a.reset_index(drop=True), b, check_exact=True)
    except AssertionError:
        return False
    return True


class ForeignCell(ValueError):
    """An intact cell file that was computed for another spec (``saved_spec``)."""

    def __init__(self, path: Path, saved_spec: Any):
        self.path, self.saved_spec = path, saved_spec
        super().__init__(f"cell file {path} was computed for another spec: {saved_spec!r}")


class CellStore:
    """Finished cells of a study as ``directory/<name>.csv`` + ``directory/<name>.json``.

    The caller names each cell (a stable, file-safe name) and gives the spec it computes from: a JSON-able
    dict holding everything that changes one of its numbers. :meth:`save` writes the table and then its
    record (spec, columns, dtypes, rows, SHA-256 of the CSV), each atomically, so the record is the mark that
    the cell finished. :meth:`load` returns the table only when all of that checks out.

    Args:
        directory: the cells' folder (created on the first save).
    """

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)

    def paths(self, name: str) -> tuple[Path, Path]:
        """The table and the record of cell ``name``."""
        return self.dir / f"{name}.csv", self.dir / f"{name}.json"

    def save(self, name: str, spec: Any, frame: pd.DataFrame) -> bool:
        """Store ``frame`` as the cell ``name`` computed for ``spec``. A table that would not read back
        exactly (e.g. an object column of Python lists) is not stored: a warning says why and the study
        goes on with the table in memory (that cell is computed again on resume). Returns whether it was
        stored."""
        data_path, record_path = self.paths(name)
        try:
            data, record = _encode(frame)
            if not _same(frame, _decode(data, record)):
                raise CellFormatError("it does not read back from CSV exactly (dtypes or values differ)")
        except (CellFormatError, ValueError, TypeError) as err:
            warnings.warn(f"cell {name!r} ({spec!r}) is not saved in {self.dir}: {err}; cells are stored as CSV "
                          "of numbers, booleans and text, so this one will be computed again on resume",
                          stacklevel=3)
            return False
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write(data_path, data)
        atomic_write(record_path, json.dumps({"format": CELL_FORMAT, "version": CELL_VERSION, "spec": spec,
                                              **record, "sha256": hashlib.sha256(data).hexdigest()},
                                             indent=1, allow_nan=True))
        return True

    def load(self, name: str, spec: Any) -> pd.DataFrame | None:
        """The table of cell ``name`` if it was stored intact for ``spec``; else ``None`` (compute it).

        Absent: ``None``. Damaged (unreadable or truncated record, checksum, columns, rows or dtypes not as
        recorded), written by an older version (a table without a record, a ``.pkl``), or its record is
        not one of this format: a warning naming the file, and ``None``. A ``.pkl`` is never unpickled.

        Raises:
            ForeignCell: an intact record of another spec (the caller decides: recompute, or refuse the
                folder as another study's).
        """
        data_path, record_path = self.paths(name)
        pickled = self.dir / f"{name}.pkl"
        if not record_path.exists():
            if data_path.exists():
                self._damaged(data_path, "it has no record of the spec it was computed for (an interrupted "
                                         f"save, or written by an older version): {record_path.name} is missing")
            elif pickled.exists():
                warnings.warn(f"cell file {pickled} is a pickle (written by an older version); it is not read, "
                              "since unpickling can run code: recomputing the cell", stacklevel=3)
            return None
        if not data_path.exists():  # the table was removed (e.g. by hand to recompute it)
            return None
        try:
            record = read_json(record_path)
            if not isinstance(record, dict) or record.get("format") != CELL_FORMAT:
                raise CellFormatError(f"not an {CELL_FORMAT!r} record")
            if record.get("version") != CELL_VERSION:
                raise CellFormatError(f"format version {record.get('version')!r}, this version reads {CELL_VERSION}")
            if canonical(record.get("spec")) != canonical(spec):
                raise ForeignCell(record_path, record.get("spec"))
            data = data_path.read_bytes()
            if hashlib.sha256(data).hexdigest() != record.get("sha256"):
                raise CellFormatError(f"{data_path.name} does not match its recorded SHA-256 (truncated or changed)")
            frame = _decode(data, record)
            if [str(t) for t in frame.dtypes] != list(record["dtypes"]):
                raise CellFormatError(f"dtypes {[str(t) for t in frame.dtypes]} instead of {record['dtypes']}")
        except ForeignCell:
            raise
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, OSError) as err:
            self._damaged(record_path, f"{type(err).__name__}: {err}")
            return None
        return frame

    @staticmethod
    def _damaged(path: Path, why: str) -> None:
        warnings.warn(f"cell file {path} could not be read ({why}); recomputing the cell", stacklevel=4)
