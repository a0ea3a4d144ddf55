"""Find the labelled and unlabelled images in a user's input, and their classes.

A folder and a zip are read the same way: first as a tree of relative file
and folder names (hidden ones, starting with ".", and a zip's `__MACOSX/`
left out), then one function decides the layout from that tree:

* class folders with any names, images at any depth inside them
  (`ROOT/<class>/**/<image>`, as Keras's `image_dataset_from_directory`);
* pre-split folders, `ROOT/{train, validation|val|valid, test}/<class>/...`:
  each image keeps the split of its folder (unless ingest is told to
  `resplit`);
* names that carry the class, `<class>.<n>.<ext>` (Kaggle's `cat.0.jpg`):
  any class word when every image of the flat folder follows that pattern;
  otherwise `cat`/`dog` names are still read and the rest skipped, as
  Kaggle's folder always was. Given as the folder itself or as its parent,
  whose `test1/` (or `test/`) then holds unlabelled images;
* a labels file (`ingest --labels FILE`, read by ingest.labels_file) names
  each image and its class, whatever the layout; images it does not name
  are excluded.

A single wrapper folder (Microsoft's `PetImages/`, a zip's top folder) is
looked through. INPUT may be a URL (s3://bucket/images/, gs://, memory://):
the driver only lists it through fsspec (names and sizes, no object read),
and whoever scans or decodes a file opens it by its URL, with the
credentials of its own environment. A zip at a URL is read in place with
ranged reads (its central directory, then each member). Here a label is the class *name* (None = unlabelled); the
plan turns names into indices once the class order is known.

Nothing here holds a Python object per file (see ingest.catalogue): the
file names go to local disk as they are listed, in name order, and each
file found is a row of `Source.found` with its label and split codes. Only
what is reported per file (skipped, excluded) is a list of dicts.
"""
import io
import os
import posixpath
import re
import stat
import zipfile
from dataclasses import dataclass, field

import numpy as np

from ingest.catalogue import NOT_AN_ITEM, SPLIT_CODES, FileList, Names
from ingest.catalogue import UNLABELED as _UNLABELED_CODE
from ingest.labels_file import read_labels_file
from shards import storage
from shards.errors import UserError
from shards.image import IMAGE_EXTENSIONS, file_kind, is_image_name

UNLABELED = -1
# <class>.<n>.<ext>: Kaggle's cat.0.jpg, generalised to any class word.
_NAMED = re.compile(r"^([A-Za-z][A-Za-z0-9_-]*)\.(\d+)\.([A-Za-z0-9]+)$")
_KAGGLE_WORDS = ("cat", "dog")
# Folder names of pre-split sets and the split each one means.
SPLIT_DIRS = {"train": "train", "validation": "val", "val": "val", "valid": "val", "test": "test"}
_UNLABELED_DIRS = ("test1", "test")
_NOT_IMAGE = f"not an image file name ({', '.join(IMAGE_EXTENSIONS)}, any case)"
_NO_CLASS = "no class in its name (<class>.<n>.<ext>) or folder"


class OverLimit(ValueError):
    """An object or zip member holds more bytes than --max-pixels allows reading."""


@dataclass(frozen=True, slots=True)  # slots: the driver holds one per file (250,000+)
class Item:
    name: str  # path relative to the input (member name inside a zip)
    # From discovery: the class name (str) or None (unlabelled). After
    # ingest.plan.index_classes: the class index, UNLABELED (-1) unlabelled.
    label: object
    # The split its folder gives (train, val, test) in a pre-split set, else None.
    split: str = None


@dataclass
class Source:
    """What was found: `path` and `kind` ("folder" or "zip") say how to read it.

    `path` is an absolute local path or a URL (without credentials: see
    shards.storage.check_url); either way it is all a worker needs.
    """

    path: str
    kind: str
    layout: str
    # Every file found, as rows (ingest.catalogue.FileList): label codes index
    # `label_names`; NOT_AN_ITEM for a file that is no image to ingest.
    found: object = None
    label_names: list = field(default_factory=list)
    _label_codes: dict = field(default_factory=dict, repr=False)  # class name -> its index in label_names
    skipped: list = field(default_factory=list)  # [{"name", "reason"}]
    # Class names met while scanning, an empty class folder's too.
    class_names: set = field(default_factory=set)
    # Usable images left out on purpose (not named by the labels file): [{"name", "reason"}].
    excluded: list = field(default_factory=list)
    # The labels file (absolute path) the labels came from, None when the layout gave them.
    labels: str = None

    @property
    def items(self):
        """The images found as a list of Item, in name order: for small inputs and tests (one object per file)."""
        found = self.found
        if found is None:
            return []
        rows = np.flatnonzero(found.label != NOT_AN_ITEM)
        return [Item(name, None if code == _UNLABELED_CODE else self.label_names[code], SPLIT_CODES[split])
                for name, code, split in zip(found.names.take(rows), found.label[rows].tolist(),
                                             found.split[rows].tolist())]

    @property
    def item_count(self):
        """How many images were found (labelled or not)."""
        return 0 if self.found is None else int(np.count_nonzero(self.found.label != NOT_AN_ITEM))

    def mark(self, row, label, split=None):
        """Row `row` of `found` is an image of class name `label` (None: unlabelled), in `split`."""
        if label is None:
            code = _UNLABELED_CODE
        else:
            if label not in self._label_codes:
                self._label_codes[label] = len(self.label_names)
                self.label_names.append(label)
            code = self._label_codes[label]
        self.found.label[row] = code
        self.found.split[row] = SPLIT_CODES.index(split)

    @property
    def remote(self):
        """Whether the files are objects at a URL (read with a size limit, as zip members are)."""
        return storage.is_url(self.path)

    def open(self, name, archive=None):
        """A binary file object of one item; pass an open ZipFile as `archive` for zips."""
        if self.kind == "zip":
            return archive.open(name)
        if self.remote:
            fs, inner = storage.filesystem(self.path)
            # No cache: a read of n bytes is one ranged request of n bytes.
            return fs.open(f"{inner.rstrip('/')}/{name}", "rb", cache_type="none")
        return open(os.path.join(self.path, name), "rb")

    def read(self, name, archive, limit):
        """The bytes of one object at a URL or zip member, never more than `limit` in memory.

        Raises OSError (or zipfile's errors) when it cannot be read, and
        OverLimit naming the limit when it holds more.
        """
        if self.remote and self.kind == "folder":
            fs, inner = storage.filesystem(self.path)
            # One ranged GET; no HEAD first (an object shorter than the range comes whole).
            data = fs.cat_file(f"{inner.rstrip('/')}/{name}", start=0, end=limit + 1)
        else:
            with self.open(name, archive) as f:
                data = f.read(limit + 1)
        if len(data) > limit:
            what = "zip member" if self.kind == "zip" else "object"
            raise OverLimit(f"{what} holds over {limit:,} bytes, the limit for --max-pixels")
        return data

    def size_of(self, name, archive=None, max_member_bytes=None):
        """(byte size, None), or (None, reason) for an item that must not be read.

        Only regular files are read (after following symbolic links): a FIFO
        would block the reader, a device never ends. A zip member is judged
        by its declared uncompressed size before a byte of it is inflated.
        """
        if self.remote and self.kind == "folder":
            # Listed with its size by the driver, which left out empty objects;
            # its bytes are read with a limit (Source.read).
            return None, None
        if self.kind == "zip":
            info = archive.getinfo(name)
            if info.flag_bits & 0x1:
                return None, "encrypted zip member (no password is ever asked for)"
            if max_member_bytes is not None and info.file_size > max_member_bytes:
                return None, (f"zip member declares {info.file_size:,} bytes uncompressed, over the limit of "
                              f"{max_member_bytes:,} bytes for --max-pixels (4 bytes a pixel plus 1 MiB)")
            return info.file_size, None
        try:
            found = os.stat(os.path.join(self.path, name))
        except OSError as exc:
            return None, f"unreadable: {exc.strerror or exc}"
        if not stat.S_ISREG(found.st_mode):
            return None, f"not a regular file ({file_kind(found.st_mode)})"
        return found.st_size, None


class _Tree:
    """Relative file and folder names ("a/b.jpg"), asked by folder.

    The file names, given in name order, go to disk (`names`, a Names):
    files are row numbers, and a folder's files are runs of rows (_Rows).
    """

    def __init__(self, files, dirs):
        self.names, self._runs = self._store(iter(files))
        self.dirs = set(dirs)
        self._dirs_in = {}
        for name in sorted(self.dirs):
            self._dirs_in.setdefault(posixpath.dirname(name), []).append(posixpath.basename(name))

    @classmethod
    def _store(cls, files):
        """(Names, {folder: runs of its files' rows}) of names arriving in name order."""
        names, previous, runs = Names(), None, {}
        for name in files:
            if previous is not None and name < previous:
                # Not in name order after all: sort in memory (correct, if not lean).
                everything = sorted([*names, name, *files])
                names.close()
                return cls._store(iter(everything))
            folder = posixpath.dirname(name)
            mine = runs.setdefault(folder, [])
            row = len(names)
            if mine and mine[-1][1] == row:
                mine[-1][1] = row + 1
            else:
                mine.append([row, row + 1])
            names.append(name)
            previous = name
        return names, runs

    def files_in(self, folder):
        return _Rows(self.names, self._runs.get(folder, []))

    def dirs_in(self, folder):
        return self._dirs_in.get(folder, [])

    def files_under(self, folder):
        """Every file below `folder`: one run of rows, names sharing the prefix being contiguous in name order."""
        start = folder + "/"
        runs = [run for name, mine in self._runs.items() if (name + "/").startswith(start) for run in mine]
        if not runs:
            return _Rows(self.names, [])
        return _Rows(self.names, [[min(r[0] for r in runs), max(r[1] for r in runs)]])

    @property
    def files(self):
        return _Rows(self.names, [[0, len(self.names)]])


class _Rows:
    """Some rows of a _Tree (runs of [start, stop)); iterates (row, name), names read in chunks."""

    def __init__(self, names, runs):
        self.names, self.runs = names, runs

    def __len__(self):
        return sum(stop - start for start, stop in self.runs)

    def __iter__(self):
        for start, stop in self.runs:
            for first, chunk in self.names.chunks(start=start, stop=stop):
                yield from enumerate(chunk, first)

    def __bool__(self):
        return bool(self.runs)


def _join(folder, name):
    return f"{folder}/{name}" if folder else name


def _walk_folder(path, source):
    """The _Tree of a folder. A folder that cannot be listed is skipped with its reason.

    Entries whose type cannot be read (a symbolic link to itself) count as
    files: the stat before hashing skips them with their reason. A folder
    reached a second time through a symbolic link is not walked again.
    """
    dirs, seen = [], set()

    def visit(folder, rel):
        """The files below `folder`, in name order of their relative paths, as they are listed."""
        real = os.path.realpath(folder)
        if real in seen:
            source.skipped.append({"name": rel, "reason": "a folder already listed (symbolic link loop?)"})
            return
        seen.add(real)
        try:
            with os.scandir(folder) as entries:
                # A folder sorts as its name plus "/", as the paths below it do: visiting in
                # this order lists every path of the tree in name order, with no sort of the
                # whole list (one folder's names at a time in memory).
                keys = [e.name + "/" if _is_dir(e) else e.name for e in entries if not e.name.startswith(".")]
        except OSError as exc:
            source.skipped.append({"name": rel or ".", "reason": f"cannot list folder: {exc.strerror or exc}"})
            return
        keys.sort()
        for key in keys:
            if key.endswith("/"):
                child = _join(rel, key[:-1])
                dirs.append(child)
                yield from visit(os.path.join(folder, key[:-1]), child)
            else:
                yield _join(rel, key)

    return _Tree(visit(path, ""), dirs)


def _is_dir(entry):
    try:
        return entry.is_dir()
    except OSError:  # ELOOP and friends: not a folder we can walk
        return False


class _RemoteZip(zipfile.ZipFile):
    """A zip archive read in place at a URL; closing it closes the object too."""

    def __init__(self, url):
        fs, inner = storage.filesystem(url)
        # Read-ahead caching: the central directory and each member are read
        # in few, larger ranged requests.
        self._object = fs.open(inner, "rb", block_size=storage.READ_AHEAD, cache_type="readahead")
        try:
            super().__init__(self._object)
        except BaseException:
            self._object.close()
            raise

    def close(self):
        try:
            super().close()
        finally:
            self._object.close()


def open_archive(path):
    """An open ZipFile of a local zip or of one at a URL."""
    return _RemoteZip(path) if storage.is_url(path) else zipfile.ZipFile(path)


def _zip_tree(path):
    try:
        with storage.remote_errors(path), open_archive(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise UserError(f"cannot read zip archive {storage.public(path)}: {exc}") from None
    files, dirs = [], set()
    for info in infos:
        name = info.filename.rstrip("/")
        parts = name.split("/")
        if not name or parts[0] == "__MACOSX" or any(p.startswith(".") or p == "" for p in parts):
            continue
        if info.is_dir():
            dirs.add(name)
        else:
            files.append(name)
        for depth in range(1, len(parts)):
            dirs.add("/".join(parts[:depth]))
    return _Tree(sorted(files), dirs)


def named_class(basename):
    """The class word of a `<class>.<n>.<ext>` name (lower case), else None."""
    match = _NAMED.match(basename)
    return match.group(1).lower() if match else None


def _flat_labels(rows):
    """A function giving the class (or None) of a flat folder's image names if they carry classes, else None.

    Every image named `<class>.<n>.<ext>`: those classes. Otherwise, if
    some are Kaggle's cat/dog names, those are read and the others get None
    (skipped). Otherwise the names carry no labels: None.
    """
    images, all_named, kaggle = False, True, False
    for _, name in rows:
        if is_image_name(name):
            images = True
            word = named_class(posixpath.basename(name))
            all_named = all_named and word is not None
            kaggle = kaggle or word in _KAGGLE_WORDS
    if not images:
        return None
    if all_named:
        return lambda name: named_class(posixpath.basename(name))
    if kaggle:
        return lambda name: _kaggle_word(named_class(posixpath.basename(name)))
    return None


def _kaggle_word(word):
    return word if word in _KAGGLE_WORDS else None


def _add(source, rows, label_of, split=None):
    for row, name in rows:
        if not is_image_name(name):
            source.skipped.append({"name": name, "reason": _NOT_IMAGE})
            continue
        label = label_of(name)
        if label is None:
            source.skipped.append({"name": name, "reason": _NO_CLASS})
        else:
            source.class_names.add(label)
            source.mark(row, label, split)


def _add_unlabeled(source, rows):
    for row, name in rows:
        if is_image_name(name):
            source.mark(row, None)


def _class_folders(tree, folder, source, split=None):
    """Each sub-folder of `folder` a class, its images at any depth."""
    for name in tree.dirs_in(folder):
        source.class_names.add(name)
        _add(source, tree.files_under(_join(folder, name)), lambda _, name=name: name, split)
    for _, name in tree.files_in(folder):
        if is_image_name(name):
            source.skipped.append({"name": name, "reason": "not inside a class folder"})


def _split_folder(tree, folder, split, source):
    """One split folder of a pre-split set: class folders, class names, or unlabelled images."""
    if tree.dirs_in(folder):
        _class_folders(tree, folder, source, split)
        return
    files = tree.files_in(folder)
    labels = _flat_labels(files)
    if labels is None:
        _add_unlabeled(source, files)
    else:
        _add(source, files, labels, split)


def _unwrap(tree):
    """The folder holding the data: through single wrapper folders (PetImages/, a zip's top folder)."""
    folder = ""
    while True:
        dirs = tree.dirs_in(folder)
        if (len(dirs) != 1 or any(is_image_name(n) for _, n in tree.files_in(folder))
                or dirs[0].lower() in SPLIT_DIRS or dirs[0].lower() in _UNLABELED_DIRS):
            return folder
        folder = _join(folder, dirs[0])


def _read_layout(tree, source):
    """Fill `source` from `tree`; set its layout ("" when nothing is recognised)."""
    root = _unwrap(tree)
    files = tree.files_in(root)
    labels = _flat_labels(files)
    if labels is not None:
        source.layout = "kaggle"
        _add(source, files, labels)
        return
    dirs = {name.lower(): _join(root, name) for name in tree.dirs_in(root)}
    if "train" in dirs:
        train = dirs["train"]
        train_labels = _flat_labels(tree.files_in(train))
        if train_labels is not None:  # Kaggle's parent folder: train/ and test1/
            source.layout = "kaggle"
            _add(source, tree.files_in(train), train_labels)
            for sub in _UNLABELED_DIRS:
                if sub in dirs:
                    _add_unlabeled(source, tree.files_in(dirs[sub]))
                    break
            return
        if tree.dirs_in(train):
            source.layout = "pre-split"
            for name, folder in sorted(dirs.items()):
                if name in SPLIT_DIRS:
                    _split_folder(tree, folder, SPLIT_DIRS[name], source)
                elif name in _UNLABELED_DIRS:
                    _add_unlabeled(source, tree.files_in(folder))
            return
    if dirs:
        source.layout = "class-folders"
        _class_folders(tree, root, source)


_ABSOLUTE = re.compile(r"^(/|[A-Za-z]:/)")
_NOT_LISTED = "not in labels file"


def _row_name(raw):
    """(relative name, None) of a labels-file path, or (None, reason) when it cannot be inside INPUT.

    Backslashes count as folder separators (files made on Windows); the
    path is normalised, so `./a.jpg` and `a/../a.jpg` both name `a.jpg`.
    """
    name = raw.replace("\\", "/")
    if _ABSOLUTE.match(name):
        return None, "an absolute path; paths in the labels file are relative to INPUT"
    name = posixpath.normpath(name)
    if name == ".." or name.startswith("../"):
        return None, "leads outside INPUT (..)"
    return name, None


def _row_split(split, name, root):
    """(split or None, None) of one row, or (None, reason) for a split column value that is no split.

    The split column wins; without one, a first folder named like a split
    (train/, val/, test/ ...) gives it, as in a pre-split set.
    """
    if split:
        if split.lower() not in SPLIT_DIRS:
            return None, f"split {split!r} is not one of {', '.join(SPLIT_DIRS)}"
        return SPLIT_DIRS[split.lower()], None
    inner = name[len(root) + 1:] if root and name.startswith(root + "/") else name
    first = inner.split("/", 1)[0].lower() if "/" in inner else ""
    return SPLIT_DIRS.get(first), None


def _resolve(tree, files, name, root):
    """The tree's name of a row's file (relative to INPUT, else to its wrapper folder), or (None, reason)."""
    for candidate in dict.fromkeys((name, _join(root, name))):
        if candidate in files:
            return candidate, None
    if name in tree.dirs:
        return None, "a folder, not an image file"
    return None, "not found under INPUT"


def _labels_layout(tree, source, rows):
    """Fill `source` from the labels file's rows: one Item per named image, the rest excluded.

    A row that cannot be used (no path, outside INPUT, missing, not an image
    name, a bad split) is skipped with its line and reason. An image named
    twice with one label and split is read once; with different ones it is
    skipped (nobody can tell which is right). An empty label is an
    unlabelled image.
    """
    source.layout = "labels-file"
    # A dict of every file name: a labels file is read whole anyway (its rows),
    # so this layout holds objects per file, unlike the others.
    files, root = {name: row for row, name in tree.files}, _unwrap(tree)
    claims = {}  # tree name -> [(label, split, line)]
    for row in rows:
        where = f"line {row.line} of the labels file"
        if not row.path:
            source.skipped.append({"name": f"({where})", "reason": f"{where}: no path"})
            continue
        name, reason = _row_name(row.path)
        if reason is None:
            name, reason = _resolve(tree, files, name, root)
        if reason is None and not is_image_name(name):
            reason = _NOT_IMAGE
        split = None
        if reason is None:
            split, reason = _row_split(row.split, name, root)
        if reason is not None:
            source.skipped.append({"name": row.path, "reason": f"{where}: {reason}"})
            continue
        claims.setdefault(name, []).append((row.label or None, split, row.line))
    for name, found in claims.items():
        if len({(label, split) for label, split, _ in found}) > 1:
            said = ", ".join(f"{label or 'no label'}/{split or 'no split'} (line {line})"
                             for label, split, line in found)
            source.skipped.append({"name": name,
                                   "reason": f"the labels file gives it different labels or splits: {said}"})
            continue
        label, split, _ = found[0]
        if label is not None:
            source.class_names.add(label)
        source.mark(files[name], label, split if label is not None else None)
    source.excluded += [{"name": name, "reason": _NOT_LISTED}
                        for _, name in tree.files if is_image_name(name) and name not in claims]


def _no_labelled_rows(path, labels, rows, source):
    first = next((entry for entry in source.skipped if entry["name"] in {row.path for row in rows}), None)
    hint = f"; first: {first['name']}: {first['reason']}" if first else ""
    return UserError(f"none of the {len(rows)} row(s) of labels file {labels} names a labelled image under "
                     f"{path}; paths must be relative to INPUT (a/b.jpg for {path}/a/b.jpg){hint}")


def discover(path, labels=None):
    """Scan `path` (folder or zip); return a Source with items sorted by name.

    With `labels` (a CSV file, see ingest.labels_file), that file gives the
    labels and the images it does not name are excluded. Raises UserError
    when the path is missing, empty or holds no labelled image: nothing can
    be ingested then.
    """
    path = storage.local_path(str(path))
    rows = read_labels_file(labels) if labels is not None else None
    if storage.is_url(path):
        source, tree = _url_source(path)
        return _finish(source, tree, path, labels, rows)
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(path):
        raise UserError(f"input not found: {path}")
    if os.path.isfile(path):
        if not zipfile.is_zipfile(path):
            raise UserError(f"input {path} is a file but not a zip archive; give a folder or a .zip")
        source = Source(path=path, kind="zip", layout="")
        tree = _zip_tree(path)
    else:
        try:
            empty = not os.listdir(path)
        except OSError as exc:
            raise UserError(f"cannot list folder {path}: {exc.strerror}") from None
        if empty:
            raise UserError(f"input folder {path} is empty")
        source = Source(path=path, kind="folder", layout="")
        tree = _walk_folder(path, source)
    return _finish(source, tree, path, labels, rows)


def _url_source(url):
    """(Source, _Tree) of a URL: a zip object, or the objects under a prefix, by one listing.

    Only names and sizes are asked for; empty objects are skipped here, as
    the scan would skip an empty file.
    """
    storage.check_url(url)
    fs, root = storage.filesystem(url)
    shown = storage.public(url).rstrip("/")
    root = root.rstrip("/")
    with storage.remote_errors(url, "list"):
        if fs.isfile(root):
            return Source(path=shown, kind="zip", layout=""), _zip_tree(shown)
        found = fs.find(root, detail=True, withdirs=False)
    source = Source(path=shown, kind="folder", layout="")
    files, dirs = [], set()
    for key, info in sorted(found.items()):
        name = key[len(root):].lstrip("/") if key.startswith(root) else None
        parts = name.split("/") if name else []
        if not parts or any(p.startswith(".") or p == "" for p in parts):
            continue
        if info.get("size") == 0:
            source.skipped.append({"name": name, "reason": "empty file (0 bytes)"})
            continue
        files.append(name)
        dirs.update("/".join(parts[:depth]) for depth in range(1, len(parts)))
    if not files and not source.skipped:
        raise UserError(f"input {shown} holds no files (or cannot be listed with the credentials of this "
                        "environment); give the folder of the images, e.g. s3://bucket/images/")
    return source, _Tree(files, dirs)  # in name order: the listing was sorted


def _finish(source, tree, path, labels, rows):
    """Read the layout (or the labels file's rows) from `tree` into `source`."""
    count = len(tree.names)
    source.found = FileList(tree.names, np.full(count, NOT_AN_ITEM, dtype=np.int32), np.zeros(count, dtype=np.int8))
    if rows is None:
        _read_layout(tree, source)
    else:
        source.labels = os.path.abspath(labels)
        _labels_layout(tree, source, rows)
    if source.kind == "zip":
        source.layout = f"zip:{source.layout}" if source.layout else "zip"
    if not (source.found.label >= 0).any():
        if rows is not None:
            raise _no_labelled_rows(path, labels, rows, source)
        raise UserError(
            f"no labelled images in {path}: expected one folder per class (ROOT/<class>/...), "
            "pre-split folders (ROOT/train/<class>/..., ROOT/test/<class>/...), files named "
            "<class>.<n>.jpg, or a zip of any of these; for other names give the labels in a CSV "
            "with --labels FILE")
    return source
