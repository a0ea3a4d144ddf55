"""Read `ingest --labels FILE`: a CSV of image paths (relative to INPUT) and their labels.

Decisions, kept in one place (the --help and README say the same):

* The first non-blank row is a header when one of its cells is a known
  column name (any case; spaces and hyphens count as "_"): a path column
  (path, filename, file, image, ...) and a label column (label, class,
  category, ...) must then both be there, and an optional `split` column
  is read. Otherwise there is no header: column 1 is the path, column 2 the
  label, a third column, if any, is ignored.
* Comma-separated; a file whose first row holds tabs (or semicolons) and
  no comma is read with that delimiter instead. UTF-8, with or without a
  BOM; CRLF line ends, quoted fields and blank lines are fine.
* The file as a whole (missing, not UTF-8, no row, a header without a path
  or label column) is a UserError. A bad row never is: each one is judged
  later, with the images, and skipped with its reason.
"""
import csv
import io
from dataclasses import dataclass

from shards.errors import UserError

PATH_COLUMNS = ("path", "filepath", "file_path", "filename", "file_name", "file", "image", "image_path",
                "image_name", "img")
LABEL_COLUMNS = ("label", "class", "class_name", "category")
SPLIT_COLUMN = "split"


@dataclass(frozen=True)
class Row:
    line: int  # 1-based line number in the file, for messages
    path: str  # as written, surrounding whitespace removed
    label: str  # "" = no label: the image is unlabelled
    split: str = ""  # as written ("" = none given)


def _column_name(cell):
    return cell.strip().lower().replace(" ", "_").replace("-", "_")


def _delimiter(first_line):
    if "," not in first_line:
        for candidate in ("\t", ";"):
            if candidate in first_line:
                return candidate
    return ","


def _header_columns(cells, path):
    """(path index, label index, split index or None) if `cells` is a header row, else None."""
    names = [_column_name(cell) for cell in cells]
    known = set(PATH_COLUMNS) | set(LABEL_COLUMNS) | {SPLIT_COLUMN}
    if not any(name in known for name in names):
        return None

    def first(wanted, what):
        for i, name in enumerate(names):
            if name in wanted:
                return i
        if what is None:
            return None
        raise UserError(f"labels file {path}: its header row ({','.join(cells)}) names no {what} column; "
                        f"name one {' or '.join(wanted[:4])}, or leave the header out (then column 1 is "
                        "the path and column 2 the label)")

    return first(PATH_COLUMNS, "path"), first(LABEL_COLUMNS, "label"), first((SPLIT_COLUMN,), None)


def read_labels_file(path):
    """The rows of the labels file at `path`, blank rows left out; raises UserError for an unusable file."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            text = f.read()
    except OSError as exc:
        raise UserError(f"cannot read labels file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"labels file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8 CSV") from None
    first_line = next((line for line in text.splitlines() if line.strip()), "")
    try:
        records = list(csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(first_line)))
    except csv.Error as exc:
        raise UserError(f"labels file {path} is not valid CSV: {exc}") from None
    return _rows(records, path)


def _rows(records, path):
    """Rows of the parsed records; line numbers count physical lines (a quoted field may span several)."""
    numbered, line = [], 1
    for cells in records:
        numbered.append((line, cells))
        line += 1 + sum(cell.count("\n") for cell in cells)
    numbered = [(n, cells) for n, cells in numbered if any(cell.strip() for cell in cells)]
    if not numbered:
        raise UserError(f"labels file {path} holds no rows; expected a CSV of path,label rows")
    columns = _header_columns(numbered[0][1], path)
    if columns is None:
        columns = (0, 1, None)
    else:
        numbered = numbered[1:]
    path_at, label_at, split_at = columns

    def cell(cells, at):
        return cells[at].strip() if at is not None and at < len(cells) else ""

    return [Row(n, cell(cells, path_at), cell(cells, label_at), cell(cells, split_at)) for n, cells in numbered]
