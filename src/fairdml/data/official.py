"""What the four standard data sets share: facts, index parsing, locating and fetching trees.

Each standard source module (``cub200``, ``cars196``, ``sop``, ``inshop``) describes its
data set with an `OfficialDataset`: the index files that must exist, the official image
and class counts per split (REFERENCE.md; ``fairdml data check`` compares a tree with
them), and the files to download with their published sizes and checksums. The helpers
here turn malformed or missing files into errors that name the file, the line and what
was expected.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from fairdml.data.download import download_file, safe_extract


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    """One file of an official distribution.

    ``provides`` is the path (relative to the download root) whose presence shows that
    this file was already fetched (and extracted); ``checksum_source`` says where the
    size and checksums come from, or that none is published.
    """

    filename: str
    urls: tuple[str, ...]
    provides: str
    extract: bool
    size: int | None = None
    sha256: str | None = None
    md5: str | None = None
    checksum_source: str = "no published checksum is known"


@dataclasses.dataclass(frozen=True)
class OfficialDataset:
    """Facts about one standard data set (see the module docstring).

    ``expected`` maps split -> {count name -> value} with the count names of
    `SampleTable.summary` (``images``, ``classes``, ``queries``, ``gallery``).
    ``folder`` is the sub-folder the official archive extracts to (``""``: the root itself).
    """

    name: str
    description: str
    folder: str
    index_files: tuple[str, ...]
    expected: dict[str, dict[str, int]]
    remote_files: tuple[RemoteFile, ...] = ()
    manual_download: str = ""

    def locate(self, root: Path | None) -> Path:
        """The folder holding the index files: ``root`` itself or ``root/<folder>``.

        Raises FileNotFoundError naming what was expected when neither holds them.
        """
        if root is None:
            raise ValueError(
                f"data set {self.name!r} needs a root folder: pass root=... (the folder that "
                f"holds {self._layout()})"
            )
        root = Path(root).expanduser()
        candidates = [root] + ([root / self.folder] if self.folder else [])
        for candidate in candidates:
            if all((candidate / name).is_file() for name in self.index_files):
                return candidate
        best = max(candidates, key=lambda c: sum((c / n).is_file() for n in self.index_files))
        missing = [name for name in self.index_files if not (best / name).is_file()]
        where = f"{root}" + (f" or {root / self.folder}" if self.folder else "")
        raise FileNotFoundError(
            f"{self.name}: {where} does not look like the data set: missing {missing} in "
            f"{best}. Expected {self._layout()}; "
            f"pass download=True (or run `fairdml data prepare {self.name} --root {root} "
            "--download`) to fetch it"
            + (f", or {self.manual_download}" if self.manual_download else "")
        )

    def _layout(self) -> str:
        files = ", ".join(self.index_files)
        if self.folder:
            return f"{self.folder}/ with {files} (or that folder itself)"
        return files


def fetch(dataset: OfficialDataset, root: Path | None, *, progress: bool = True) -> None:
    """Download and extract the official files of ``dataset`` into ``root``.

    Files whose ``provides`` path already exists are skipped, so this is cheap to call on a
    prepared tree. Archives are kept next to the data after extraction.
    """
    if root is None:
        raise ValueError(f"download=True for {dataset.name!r} needs a root folder to write to")
    if not dataset.remote_files:
        raise RuntimeError(
            f"{dataset.name}: the official files cannot be downloaded automatically; "
            f"{dataset.manual_download}"
        )
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    for remote in dataset.remote_files:
        if (root / remote.provides).exists():
            continue
        path = download_file(remote.urls[0], root / remote.filename, sha256=remote.sha256,
                             size=remote.size, md5=remote.md5, mirrors=remote.urls[1:],
                             progress=progress)
        if remote.extract:
            safe_extract(path, root)


# --------------------------------------------------------------------------- index files
def index_lines(path: Path) -> list[tuple[int, str]]:
    """Non-empty lines of an index file as ``(1-based line number, text)``."""
    if not path.is_file():
        raise FileNotFoundError(f"index file {path} does not exist")
    with path.open(encoding="utf-8") as stream:
        return [(number, line.strip()) for number, line in enumerate(stream, start=1)
                if line.strip()]


def split_fields(path: Path, number: int, line: str, count: int, layout: str, *,
                 last_may_contain_spaces: bool = False) -> list[str]:
    """Split an index line into exactly ``count`` fields or raise naming the line."""
    fields = line.split(maxsplit=count - 1) if last_may_contain_spaces else line.split()
    if len(fields) != count:
        raise ValueError(
            f"{path}, line {number}: expected {count} fields `{layout}`, got {len(fields)}: "
            f"{line!r}"
        )
    return fields


def to_int(path: Path, number: int, value: str, what: str) -> int:
    """``int(value)`` or a ValueError naming file, line and field."""
    try:
        return int(value)
    except ValueError:
        raise ValueError(
            f"{path}, line {number}: {what} must be an integer, got {value!r}"
        ) from None


def check_header(path: Path, number: int, line: str, expected: Sequence[str]) -> None:
    """Raise when a header line differs from the official column names."""
    if line.split() != list(expected):
        raise ValueError(
            f"{path}, line {number}: expected the header `{' '.join(expected)}`, got {line!r}"
        )
