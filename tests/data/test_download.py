"""Verified, resumable download and safe extraction, against a local HTTP server."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import tarfile
import threading
import zipfile

import pytest
from standard_trees import build_cub

from fairdml.data import load
from fairdml.data.download import (
    ChecksumError,
    DownloadError,
    UnsafeArchiveError,
    download_file,
    safe_extract,
)
from fairdml.data.official import RemoteFile
from fairdml.data.sources import cub200 as cub_module

PAYLOAD = bytes(range(256)) * 400  # 102,400 bytes


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``files`` with Range support; ``/cut/...`` stops after half the bytes."""

    files: dict[str, bytes] = {}
    ranges: list[str | None] = []

    def do_GET(self):  # noqa: N802 - http.server API
        cut = self.path.startswith("/cut/")
        data = self.files.get(self.path.removeprefix("/cut").removeprefix("/norange"))
        if data is None:
            self.send_error(404)
            return
        header = self.headers.get("Range")
        self.ranges.append(header)
        if self.path.startswith("/norange/"):
            header = None  # a server that ignores range requests
        start = int(header.removeprefix("bytes=").rstrip("-")) if header else 0
        if start >= len(data) and header:
            self.send_error(416)
            return
        body = data[start:]
        self.send_response(206 if header else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if cut else body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    _Handler.files = {"/payload.bin": PAYLOAD}
    _Handler.ranges = []
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


SHA = hashlib.sha256(PAYLOAD).hexdigest()


def test_download_verifies_and_falls_back_to_a_mirror(server, tmp_path):
    dest = download_file(f"{server}/missing.bin", tmp_path / "p.bin", sha256=SHA,
                         size=len(PAYLOAD), mirrors=(f"{server}/payload.bin",), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "p.bin.part").exists()
    # a second call keeps the verified file without a request
    calls = len(_Handler.ranges)
    download_file(f"{server}/payload.bin", dest, sha256=SHA, progress=False)
    assert len(_Handler.ranges) == calls


def test_interrupted_download_is_resumed_with_a_range_request(server, tmp_path):
    dest = tmp_path / "p.bin"
    with pytest.raises(DownloadError, match="partial download is kept"):
        download_file(f"{server}/cut/payload.bin", dest, sha256=SHA, progress=False)
    kept = (tmp_path / "p.bin.part").stat().st_size
    assert 0 < kept < len(PAYLOAD)
    download_file(f"{server}/payload.bin", dest, sha256=SHA, size=len(PAYLOAD), progress=False)
    assert _Handler.ranges[-1] == f"bytes={kept}-"
    assert dest.read_bytes() == PAYLOAD


def test_server_without_range_support_restarts_from_zero(server, tmp_path):
    (tmp_path / "p.bin.part").write_bytes(PAYLOAD[:1000])
    download_file(f"{server}/norange/payload.bin", tmp_path / "p.bin", sha256=SHA,
                  progress=False)
    assert (tmp_path / "p.bin").read_bytes() == PAYLOAD


def test_complete_partial_file_of_unknown_size_is_accepted(server, tmp_path):
    (tmp_path / "p.bin.part").write_bytes(PAYLOAD)
    download_file(f"{server}/payload.bin", tmp_path / "p.bin", sha256=SHA, progress=False)
    assert _Handler.ranges[-1] == f"bytes={len(PAYLOAD)}-"
    assert (tmp_path / "p.bin").read_bytes() == PAYLOAD


def test_checksum_mismatch_keeps_nothing(server, tmp_path):
    with pytest.raises(DownloadError, match="SHA256"):
        download_file(f"{server}/payload.bin", tmp_path / "p.bin", sha256="0" * 64,
                      progress=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DownloadError, match="expected 5"):
        download_file(f"{server}/payload.bin", tmp_path / "p.bin", size=5, progress=False)
    with pytest.raises(DownloadError, match="MD5"):
        download_file(f"{server}/payload.bin", tmp_path / "p.bin", md5="0" * 32,
                      progress=False)


def test_existing_corrupt_file_is_refused(tmp_path):
    (tmp_path / "p.bin").write_bytes(b"short")
    with pytest.raises(ChecksumError, match="delete it"):
        download_file("http://127.0.0.1:9/none", tmp_path / "p.bin", sha256=SHA,
                      progress=False)


# ------------------------------------------------------------------------ extraction
def _tar(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name, data=b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _link(name, target, kind):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


@pytest.mark.parametrize(("member", "message"), [
    (_file("../evil.txt"), r"contains '\.\.'"),
    (_file("/tmp/evil.txt"), "absolute path"),
    (_file("data/../../evil.txt"), r"contains '\.\.'"),
    (_link("data/link", "../../etc/passwd", tarfile.SYMTYPE), "symbolic link.*outside"),
    (_link("data/link", "/etc/passwd", tarfile.SYMTYPE), "symbolic link.*outside"),
    (_link("data/hard", "../outside.txt", tarfile.LNKTYPE), "hard link.*outside"),
])
def test_malicious_tar_members_are_refused_before_writing(tmp_path, member, message):
    archive = _tar(tmp_path / "bad.tgz", [_file("data/good.txt"), member])
    target = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError, match=message):
        safe_extract(archive, target)
    assert list(target.iterdir()) == []
    assert not (tmp_path / "evil.txt").exists()


def test_links_inside_the_tree_are_allowed(tmp_path):
    archive = _tar(tmp_path / "ok.tgz", [_file("data/a.txt", b"abc"),
                                         _link("data/b.txt", "a.txt", tarfile.SYMTYPE)])
    assert safe_extract(archive, tmp_path / "out") == [tmp_path / "out" / "data"]
    assert (tmp_path / "out" / "data" / "b.txt").read_bytes() == b"abc"


@pytest.mark.parametrize(("name", "message"), [
    ("../evil.txt", r"contains '\.\.'"),
    ("/abs/evil.txt", "absolute path"),
    ("dir\\..\\evil.txt", "Windows path"),
])
def test_malicious_zip_members_are_refused(tmp_path, name, message):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("data/good.txt", b"x")
        zf.writestr(zipfile.ZipInfo(name), b"evil")
    with pytest.raises(UnsafeArchiveError, match=message):
        safe_extract(archive, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_zip_symlink_member_is_refused(tmp_path):
    archive = tmp_path / "link.zip"
    info = zipfile.ZipInfo("data/link")
    info.external_attr = (0o120777 << 16)
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(UnsafeArchiveError, match="symbolic link"):
        safe_extract(archive, tmp_path / "out")


def test_truncated_archive_leaves_no_half_written_tree(tmp_path):
    big = bytes(range(256)) * 4000
    archive = _tar(tmp_path / "a.tgz", [_file(f"data/{i}.bin", big) for i in range(4)])
    archive.write_bytes(archive.read_bytes()[:-2000])
    target = tmp_path / "out"
    with pytest.raises(ValueError, match="truncated"):
        safe_extract(archive, target)
    assert list(target.iterdir()) == []


def test_existing_entries_are_not_overwritten(tmp_path):
    archive = _tar(tmp_path / "a.tgz", [_file("data/a.txt")])
    (tmp_path / "out" / "data").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="overwrite"):
        safe_extract(archive, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == [tmp_path / "out" / "data"]


def test_zip_extracts(tmp_path):
    archive = tmp_path / "ok.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("Stanford_Online_Products/a/b.txt", b"hello")
    safe_extract(archive, tmp_path / "out")
    assert (tmp_path / "out/Stanford_Online_Products/a/b.txt").read_bytes() == b"hello"


# ------------------------------------------------------------------- end to end (CUB)
def test_cub_download_true_fetches_verifies_and_extracts(server, tmp_path, monkeypatch):
    source = tmp_path / "source"
    counts = build_cub(source)
    archive = tmp_path / "CUB_200_2011.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / "CUB_200_2011", arcname="CUB_200_2011")
    data = archive.read_bytes()
    _Handler.files["/CUB_200_2011.tgz"] = data
    remote = dataclasses.replace(cub_module.INFO.remote_files[0],
                                 urls=(f"{server}/gone.tgz", f"{server}/CUB_200_2011.tgz"),
                                 size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                                 md5=None)
    monkeypatch.setattr(cub_module, "INFO",
                        dataclasses.replace(cub_module.INFO, remote_files=(remote,)))
    root = tmp_path / "data"
    table = load("cub200", root, download=True, progress=False)
    assert len(table) == sum(counts.values())
    assert (root / "CUB_200_2011" / "images.txt").is_file()
    requests = len(_Handler.ranges)
    load("cub200", root, download=True, progress=False)  # already there: no request
    assert len(_Handler.ranges) == requests


def test_cub_download_with_wrong_checksum_extracts_nothing(server, tmp_path, monkeypatch):
    _Handler.files["/CUB_200_2011.tgz"] = b"corrupt"
    remote = RemoteFile(filename="CUB_200_2011.tgz", urls=(f"{server}/CUB_200_2011.tgz",),
                        provides="CUB_200_2011/images.txt", extract=True, sha256="1" * 64)
    monkeypatch.setattr(cub_module, "INFO",
                        dataclasses.replace(cub_module.INFO, remote_files=(remote,)))
    with pytest.raises(DownloadError, match="SHA256"):
        load("cub200", tmp_path, download=True, progress=False)
    assert list(tmp_path.iterdir()) == []
