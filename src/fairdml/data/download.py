"""Verified, resumable downloads and safe archive extraction.

``download_file`` fetches one file from a URL (falling back to mirrors), resumes a partial
download kept as ``<dest>.part``, shows a progress bar, and accepts the file only when its
size and checksums match the published values that are known. ``safe_extract`` unpacks a
``.tar``/``.tgz``/``.zip`` archive so that no member can land outside the target folder
(absolute names, ``..`` components, links pointing outside, device files are refused
before anything is written) and a failed extraction leaves nothing behind: members are
written to a temporary folder next to the target and moved in only when all succeeded.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath

CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60
USER_AGENT = "fairdml-downloader/0.1 (+https://pypi.org/project/fairdml)"


class DownloadError(RuntimeError):
    """No source delivered a file that matches the expected size and checksums."""


class ChecksumError(DownloadError):
    """A downloaded or existing file differs from its published size or checksum."""


class UnsafeArchiveError(ValueError):
    """An archive member would be written outside the target folder."""


# --------------------------------------------------------------------------- download
def download_file(url: str, dest: str | Path, *, sha256: str | None = None,
                  size: int | None = None, mirrors: Sequence[str] = (), progress: bool = True,
                  md5: str | None = None) -> Path:
    """Download ``url`` to ``dest`` and verify it; return ``dest``.

    An existing ``dest`` that matches the expected size and checksums is kept. A partial
    download from an earlier attempt (``dest`` + ``.part``) is resumed with an HTTP range
    request when the server supports it. Each URL in ``(url, *mirrors)`` is tried in turn;
    a network failure keeps the partial file for the next source, a checksum mismatch
    deletes it. Raises `DownloadError` listing what each source did when none succeeded.
    Checks that are ``None`` (unknown) are skipped; at least the size is checked when known.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        try:
            verify_file(dest, sha256=sha256, size=size, md5=md5)
            return dest
        except ChecksumError as error:
            raise ChecksumError(
                f"{dest} exists but does not match the published checksum ({error}); "
                "delete it to download it again"
            ) from error
    partial = dest.with_name(dest.name + ".part")
    failures = []
    for source in (url, *mirrors):
        try:
            _fetch(source, partial, size=size, progress=progress)
            verify_file(partial, sha256=sha256, size=size, md5=md5)
        except ChecksumError as error:
            partial.unlink(missing_ok=True)
            failures.append(f"{source}: {error}")
            continue
        except (urllib.error.URLError, OSError, ValueError) as error:
            failures.append(f"{source}: {type(error).__name__}: {error}")
            continue
        os.replace(partial, dest)
        return dest
    raise DownloadError(
        f"could not download {dest.name}; tried {len(failures)} source(s):\n  "
        + "\n  ".join(failures)
        + (f"\na partial download is kept in {partial} and resumed next time"
           if partial.exists() else "")
    )


def _fetch(url: str, partial: Path, *, size: int | None, progress: bool) -> None:
    """Append the missing bytes of ``url`` to ``partial`` (resuming when possible)."""
    offset = partial.stat().st_size if partial.exists() else 0
    if size is not None and offset > size:
        partial.unlink()
        offset = 0
    if size is not None and offset == size:
        return
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # nothing left to send: the partial file is whole
            return
        raise
    with response:
        status = getattr(response, "status", None)
        resumed = offset > 0 and status == 206
        if offset and not resumed:
            offset = 0  # the server ignored the range: start again from the first byte
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else size
        with partial.open("ab" if resumed else "wb") as out, \
                _progress_bar(partial.name, total, offset, enabled=progress) as advance:
            while True:
                chunk = response.read(CHUNK_BYTES)
                if not chunk:
                    break
                out.write(chunk)
                advance(len(chunk))
    received = partial.stat().st_size
    if length and length.isdigit() and received != offset + int(length):
        raise OSError(f"connection closed after {received:,} of {offset + int(length):,} bytes")


@contextlib.contextmanager
def _progress_bar(name: str, total: int | None, done: int, *,
                  enabled: bool) -> Iterator[Callable[[int], None]]:
    """A rich byte progress bar (or nothing); yields ``advance(n_bytes)``."""
    if not enabled:
        yield lambda n: None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn()) as bar:
        task = bar.add_task(f"download {name}", total=total, completed=done)
        yield lambda n: bar.update(task, advance=n)


def verify_file(path: Path, *, sha256: str | None = None, size: int | None = None,
                md5: str | None = None) -> None:
    """Raise `ChecksumError` when ``path`` differs from a known size or checksum."""
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        raise ChecksumError(f"{path.name} has {actual_size:,} bytes, expected {size:,}")
    if sha256 is None and md5 is None:
        return
    digests = {name: hashlib.new(name, usedforsecurity=False)
               for name, want in (("sha256", sha256), ("md5", md5)) if want is not None}
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK_BYTES):
            for digest in digests.values():
                digest.update(chunk)
    for name, want in (("sha256", sha256), ("md5", md5)):
        if want is not None and digests[name].hexdigest() != want.lower():
            raise ChecksumError(
                f"{path.name} has {name.upper()} {digests[name].hexdigest()}, expected {want} "
                "(truncated or corrupt download)"
            )


# --------------------------------------------------------------------------- extraction
def safe_extract(archive: str | Path, target: str | Path) -> list[Path]:
    """Extract ``archive`` (tar, tar.gz/tgz, zip) into ``target``; return the new top-level paths.

    Every member is checked before anything is written: absolute names, ``..`` components,
    symbolic or hard links whose target leaves the folder, and device or FIFO members are
    refused with `UnsafeArchiveError`. Members are written to a temporary folder inside
    ``target`` and the top-level entries are moved into place only after all succeeded;
    on any error the temporary folder is removed, so no half-written tree remains. A
    top-level entry that already exists in ``target`` is an error (nothing is overwritten).
    """
    archive, target = Path(archive), Path(target)
    if not archive.is_file():
        raise FileNotFoundError(f"archive {archive} does not exist")
    target.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".fairdml-extract-", dir=target))
    moved: list[Path] = []
    try:
        if archive.suffix.lower() == ".zip" or zipfile.is_zipfile(archive):
            _extract_zip(archive, staging)
        else:
            _extract_tar(archive, staging)
        entries = sorted(staging.iterdir())
        clashes = [entry.name for entry in entries if (target / entry.name).exists()]
        if clashes:
            raise FileExistsError(
                f"extracting {archive.name} into {target} would overwrite {clashes}; "
                "remove them first"
            )
        for entry in entries:
            destination = target / entry.name
            os.replace(entry, destination)
            moved.append(destination)
    except BaseException:
        for path in moved:
            _remove(path)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return moved


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _checked_member_path(archive: Path, name: str) -> PurePosixPath:
    """The member name as a relative path, or `UnsafeArchiveError` if it could escape."""
    if "\\" in name or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"{archive.name}: member {name!r} uses a Windows path")
    path = PurePosixPath(name)
    if path.is_absolute():
        raise UnsafeArchiveError(f"{archive.name}: member {name!r} has an absolute path")
    if ".." in path.parts:
        raise UnsafeArchiveError(f"{archive.name}: member {name!r} contains '..'")
    return path


def _link_stays_inside(member: PurePosixPath, link_target: str, *, hard: bool) -> bool:
    """True when a link at ``member`` pointing to ``link_target`` resolves inside the root."""
    target = PurePosixPath(link_target)
    if target.is_absolute():
        return False
    # hard-link targets are relative to the archive root, symlink targets to the link's folder
    parts = list(target.parts if hard else member.parent.parts + target.parts)
    depth = 0
    for part in parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                return False
        elif part not in ("", "."):
            depth += 1
    return True


def _extract_tar(archive: Path, staging: Path) -> None:
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                path = _checked_member_path(archive, member.name)
                if member.issym() or member.islnk():
                    if not _link_stays_inside(path, member.linkname, hard=member.islnk()):
                        kind = "hard link" if member.islnk() else "symbolic link"
                        raise UnsafeArchiveError(
                            f"{archive.name}: {kind} {member.name!r} -> {member.linkname!r} "
                            "points outside the target folder"
                        )
                elif not (member.isfile() or member.isdir()):
                    raise UnsafeArchiveError(
                        f"{archive.name}: member {member.name!r} is a device or FIFO"
                    )
            # second line of defence: the standard library's own "data" filter
            tar.extractall(staging, members=members, filter="data")
    except (tarfile.TarError, EOFError) as error:
        raise ValueError(f"{archive}: not a readable tar archive or truncated ({error})") \
            from error


def _extract_zip(archive: Path, staging: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:
                _checked_member_path(archive, info.filename)
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise UnsafeArchiveError(
                        f"{archive.name}: member {info.filename!r} is a symbolic link; "
                        "links are not extracted from zip archives"
                    )
            for info in infos:
                destination = staging.joinpath(*PurePosixPath(info.filename).parts)
                if info.is_dir():
                    destination.mkdir(parents=True, exist_ok=True)
                    continue
                destination.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as source, destination.open("xb") as out:
                    shutil.copyfileobj(source, out, CHUNK_BYTES)
    except (zipfile.BadZipFile, EOFError) as error:
        raise ValueError(f"{archive}: not a readable zip archive or truncated ({error})") \
            from error


__all__ = ["download_file", "safe_extract", "verify_file", "DownloadError", "ChecksumError",
           "UnsafeArchiveError"]
