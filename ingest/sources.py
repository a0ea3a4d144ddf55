"""Find the labelled and unlabelled images in a user's input.

Three layouts are understood:

* Kaggle's folder: `cat.N.jpg` / `dog.N.jpg` files, given as the `train/`
  folder itself or as its parent (whose `test1/` then holds unlabelled images);
* Kaggle's `train.zip` (or any zip with those names inside), read in place;
* one folder per class, such as Microsoft's `PetImages/Cat`, `PetImages/Dog`.

Labels follow the tutorial: cat = 1, dog = 0; unlabelled images get -1.
"""
import os
import re
import stat
import zipfile
from dataclasses import dataclass, field

from shards.errors import UserError
from shards.image import file_kind, is_image_name

CAT, DOG, UNLABELED = 1, 0, -1
_KAGGLE_NAME = re.compile(r"^(cat|dog)\.\d+\.[A-Za-z]+$", re.IGNORECASE)
_CLASS_DIRS = {"cat": CAT, "cats": CAT, "dog": DOG, "dogs": DOG}
_UNLABELED_DIRS = ("test1", "test")


@dataclass(frozen=True)
class Item:
    name: str  # path relative to the input (member name inside a zip)
    label: int


@dataclass
class Source:
    """What was found: `path` and `kind` ("folder" or "zip") say how to read it."""

    path: str
    kind: str
    layout: str
    items: list = field(default_factory=list)
    skipped: list = field(default_factory=list)  # [{"name", "reason"}]

    def open(self, name, archive=None):
        """A binary file object of one item; pass an open ZipFile as `archive` for zips."""
        if self.kind == "zip":
            return archive.open(name)
        return open(os.path.join(self.path, name), "rb")

    def size_of(self, name, archive=None, max_member_bytes=None):
        """(byte size, None), or (None, reason) for an item that must not be read.

        Only regular files are read (after following symbolic links): a FIFO
        would block the reader, a device never ends. A zip member is judged
        by its declared uncompressed size before a byte of it is inflated.
        """
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


def kaggle_label(basename):
    if not _KAGGLE_NAME.match(basename):
        return None
    return CAT if basename.lower().startswith("cat.") else DOG


def _list_files(folder, source, rel):
    """Non-directory entries of `folder`, sorted (broken links and loops included).

    An entry whose type cannot be read (a symbolic link to itself) is kept:
    the stat before hashing skips it with its reason. A folder that cannot
    be listed is recorded in `source.skipped` under `rel` and yields nothing.
    """
    try:
        with os.scandir(folder) as entries:
            return sorted(e.name for e in entries if not _is_dir(e))
    except OSError as exc:
        source.skipped.append({"name": rel or ".", "reason": f"cannot list folder: {exc.strerror or exc}"})
        return []


def _is_dir(entry):
    try:
        return entry.is_dir()
    except OSError:  # ELOOP and friends: not a folder we can walk
        return False


def _classify(names, label_of, source):
    for name in names:
        base = name.rsplit("/", 1)[-1]
        if not is_image_name(base):
            source.skipped.append({"name": name, "reason": "not an image file name (.jpg, .jpeg, .png)"})
            continue
        label = label_of(name)
        if label is None:
            source.skipped.append({"name": name, "reason": "no cat/dog label in its name or folder"})
        else:
            source.items.append(Item(name, label))


def _kaggle_folder(path, prefix, source):
    names = [f"{prefix}{n}" for n in _list_files(os.path.join(path, prefix) if prefix else path, source,
                                                  prefix.rstrip("/"))]
    _classify(names, lambda n: kaggle_label(n.rsplit("/", 1)[-1]), source)


def _unlabeled_folder(path, sub, source):
    for name in _list_files(os.path.join(path, sub), source, sub):
        if is_image_name(name):
            source.items.append(Item(f"{sub}/{name}", UNLABELED))


def _class_dirs(folder):
    try:
        with os.scandir(folder) as entries:
            return {e.name: _CLASS_DIRS[e.name.lower()] for e in entries
                    if e.name.lower() in _CLASS_DIRS and _is_dir(e)}
    except OSError:
        return {}


def _scan_folder(path):
    source = Source(path=path, kind="folder", layout="")
    top = _list_files(path, source, "")
    if any(kaggle_label(n) is not None for n in top):
        source.layout = "kaggle"
        _kaggle_folder(path, "", source)
        return source
    if os.path.isdir(os.path.join(path, "train")):
        source.layout = "kaggle"
        _kaggle_folder(path, "train/", source)
        for sub in _UNLABELED_DIRS:
            if os.path.isdir(os.path.join(path, sub)):
                _unlabeled_folder(path, sub, source)
                break
        return source
    for prefix in ("", "PetImages/"):
        dirs = _class_dirs(os.path.join(path, prefix) if prefix else path)
        if len(set(dirs.values())) == 2:
            source.layout = "class-folders"
            for name, label in sorted(dirs.items()):
                rel = f"{prefix}{name}"
                files = [f"{rel}/{n}" for n in _list_files(os.path.join(path, rel), source, rel)]
                _classify(files, lambda n, label=label: label, source)
            return source
    return source


def _zip_label(member):
    parts = member.split("/")
    label = kaggle_label(parts[-1])
    if label is None and len(parts) >= 2:
        label = _CLASS_DIRS.get(parts[-2].lower())
    if label is None and len(parts) >= 2 and parts[-2].lower() in _UNLABELED_DIRS:
        label = UNLABELED
    return label


def _scan_zip(path):
    source = Source(path=path, kind="zip", layout="zip")
    try:
        with zipfile.ZipFile(path) as archive:
            members = sorted(m.filename for m in archive.infolist() if not m.is_dir())
    except (zipfile.BadZipFile, OSError) as exc:
        raise UserError(f"cannot read zip archive {path}: {exc}") from None
    members = [m for m in members if not m.startswith("__MACOSX/")]
    _classify(members, _zip_label, source)
    return source


def discover(path):
    """Scan `path` (folder or zip); return a Source with items sorted by name.

    Raises UserError when the path is missing, empty or holds no labelled
    image: nothing can be ingested then.
    """
    path = os.path.abspath(os.path.expanduser(str(path)))
    if not os.path.exists(path):
        raise UserError(f"input not found: {path}")
    if os.path.isfile(path):
        if not zipfile.is_zipfile(path):
            raise UserError(f"input {path} is a file but not a zip archive; give a folder or a .zip")
        source = _scan_zip(path)
    else:
        try:
            empty = not os.listdir(path)
        except OSError as exc:
            raise UserError(f"cannot list folder {path}: {exc.strerror}") from None
        if empty:
            raise UserError(f"input folder {path} is empty")
        source = _scan_folder(path)
    source.items.sort(key=lambda item: item.name)
    if not any(item.label != UNLABELED for item in source.items):
        raise UserError(
            f"no labelled images in {path}: expected cat.N.jpg/dog.N.jpg files, a train/ folder "
            "of them, a zip of them, or Cat/ and Dog/ class folders")
    return source
