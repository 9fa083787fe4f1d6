"""The download code against a real HTTP server on 127.0.0.1 (no test reaches the internet).

The server speaks HTTP/1.1 with Range support and can be told, per path, to cut the
connection after N bytes (once), to ignore Range, to answer HTML, or to announce a huge
Content-Length, so each failure the user can meet is produced for real.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

from tests.synthetic import make_synthetic_dataset
from xray_core import download as dl

PROJECT_ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- local server


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        """Keep pytest output clean; requests are recorded in server.requests instead."""

    def do_GET(self):  # noqa: N802 - http.server's naming
        srv = self.server
        srv.requests.append({"path": self.path, "headers": dict(self.headers.items())})
        route = srv.routes.get(urlsplit(self.path).path)
        if route is None:
            self._plain(404, b"not found")
            return
        if "redirect" in route:
            self.send_response(302)
            self.send_header("Location", route["redirect"])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = route["body"]
        if "fake_length" in route:  # announce more than any disk holds, then hang up
            self.send_response(200)
            self.send_header("Content-Type", route.get("type", "application/zip"))
            self.send_header("Content-Length", str(route["fake_length"]))
            self.end_headers()
            self.close_connection = True
            return
        start = 0
        range_header = self.headers.get("Range")
        if range_header and not route.get("ignore_range"):
            start = int(re.fullmatch(r"bytes=(\d+)-", range_header).group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", route.get("type", "application/zip"))
        self.send_header("Content-Length", str(len(body) - start))
        self.send_header("ETag", route.get("etag", '"v1"'))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        cut = route.pop("cut_after", None)  # one request only
        if cut is not None:
            self.wfile.write(body[start:start + cut])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body[start:])

    def _plain(self, code: int, text: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.routes = {}
    httpd.requests = []
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


# --------------------------------------------------------------------------------- payloads


def _files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def kermany(tmp_path_factory):
    """(zip bytes, {relative path: bytes}) for a tiny ChestXRay2017.zip look-alike.

    Like the real archive: a top folder chest_xray/, train and test only, directory entries,
    macOS junk (__MACOSX/ resource forks, .DS_Store) that must not be unpacked.
    """
    src = make_synthetic_dataset(tmp_path_factory.mktemp("kermany_src") / "chest_xray",
                                 n_train=(3, 4), n_val=(0, 0), n_test=(2, 2), size=32, seed=3)
    files = {k: v for k, v in _files_of(src).items() if not k.startswith("val/")}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for folder in ("chest_xray/", "chest_xray/train/", "chest_xray/test/"):
            zf.writestr(folder, b"")
        zf.writestr("chest_xray/.DS_Store", b"\0\0\0\1Bud1")
        for rel, data in files.items():
            zf.writestr(f"chest_xray/{rel}", data)
            zf.writestr(f"__MACOSX/chest_xray/{os.path.dirname(rel)}/._{os.path.basename(rel)}",
                        b"\0\5\26\7 resource fork")
        zf.writestr("chest_xray/train/.DS_Store", b"\0\0\0\1Bud1")
    return buf.getvalue(), files


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return buf.getvalue()


def _pneumoniamnist_npz(size: int = 28, seed: int = 0) -> tuple[bytes, dict]:
    """An npz laid out like MedMNIST's: <split>_images (N, H, W) uint8, <split>_labels (N, 1)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", 6), ("val", 3), ("test", 4)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).astype(np.uint8).reshape(n, 1)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue(), arrays


def _leftovers(dest: Path) -> list[str]:
    """Hidden temporaries, parts or locks that a finished or failed call must not leave."""
    return sorted(p.name for p in dest.iterdir()
                  if p.name.startswith(".") or p.name.endswith((".part", ".part.json", ".lock")))


# ------------------------------------------------------------------------------------ tests


def test_full_download_unpacks_kermany_layout_and_skips_macos_junk(server, kermany, tmp_path):
    body, files = kermany
    server.routes["/ChestXRay2017.zip"] = {"body": body}
    reports: list[dl.DownloadProgress] = []
    root = dl.download(url=server.base + "/ChestXRay2017.zip", dest=tmp_path / "data",
                       progress=reports.append, timeout=5)

    assert root == tmp_path / "data" / "chest_xray"
    unpacked = _files_of(root)
    record = json.loads(unpacked.pop("download.json"))
    assert unpacked == files  # byte for byte, and nothing else (no __MACOSX, no .DS_Store)
    assert record["sha256"] == hashlib.sha256(body).hexdigest()
    assert record["bytes"] == len(body) and record["licence"] == "CC BY 4.0"
    assert "rscbjbr9sj" in record["citation"]
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["chest_xray"]  # zip deleted

    from xray_core.data import find_dataset, index_dataset
    assert find_dataset(tmp_path / "data") == root.resolve()
    df = index_dataset(root)
    assert len(df) == len(files) and set(df["split"]) == {"train", "test"}

    downloads = [r for r in reports if r.phase == "download"]
    assert downloads[-1].done == downloads[-1].total == len(body)
    assert downloads[-1].fraction == 1.0
    assert {"download", "verify", "unpack"} <= {r.phase for r in reports}
    unpacks = [r for r in reports if r.phase == "unpack"]
    assert unpacks[-1].done == unpacks[-1].total == sum(len(v) for v in files.values())

    # One calling convention: every callback gets a DownloadProgress, with plain byte counts.
    pairs = []
    dl.download(url=server.base + "/ChestXRay2017.zip", dest=tmp_path / "again",
                progress=lambda report: pairs.append((report.done, report.total)), timeout=5)
    assert (len(body), len(body)) in pairs and all(isinstance(d, int) for d, _ in pairs)

    # A second call finds the dataset and does not contact the server.
    n_requests = len(server.requests)
    assert dl.download(url=server.base + "/ChestXRay2017.zip", dest=tmp_path / "data") == root
    assert len(server.requests) == n_requests


def test_zip_without_top_folder_still_lands_in_chest_xray(server, kermany, tmp_path):
    _, files = kermany
    server.routes["/flat.zip"] = {"body": _zip(files)}
    root = dl.download(url=server.base + "/flat.zip", dest=tmp_path, timeout=5, keep_archive=True)
    assert root == tmp_path / "chest_xray"
    assert {k for k in _files_of(root) if k != "download.json"} == set(files)
    assert (tmp_path / "ChestXRay2017.zip").read_bytes() == _zip(files)  # kept on request
    assert _leftovers(tmp_path) == []


def test_resume_after_cut_connection_sends_range_and_is_byte_identical(server, kermany, tmp_path):
    body, files = kermany
    cut = 4000
    assert len(body) > 2 * cut
    server.routes["/ChestXRay2017.zip"] = {"body": body, "cut_after": cut, "etag": '"abc"'}
    url = server.base + "/ChestXRay2017.zip"

    with pytest.raises(dl.NetworkError, match="resumes from where it stopped") as err:
        dl.download(url=url, dest=tmp_path, timeout=5)
    assert isinstance(err.value, ValueError) and isinstance(err.value, OSError)
    part = tmp_path / "ChestXRay2017.zip.part"
    assert part.read_bytes() == body[:cut]
    assert not (tmp_path / "chest_xray").exists()
    assert "Range" not in server.requests[0]["headers"]

    root = dl.download(url=url, dest=tmp_path, timeout=5, keep_archive=True)
    second = server.requests[-1]["headers"]
    assert second["Range"] == f"bytes={cut}-"
    assert second["If-Range"] == '"abc"'
    assert (tmp_path / "ChestXRay2017.zip").read_bytes() == body
    assert not part.exists()
    assert {k: v for k, v in _files_of(root).items() if k != "download.json"} == files


def test_server_that_ignores_range_restarts_from_zero(server, kermany, tmp_path):
    body, _ = kermany
    route = {"body": body, "cut_after": 3000}
    server.routes["/z.zip"] = route
    url = server.base + "/z.zip"
    with pytest.raises(dl.NetworkError):
        dl.download(url=url, dest=tmp_path, timeout=5)
    route["ignore_range"] = True
    dl.download(url=url, dest=tmp_path, timeout=5, keep_archive=True)
    assert server.requests[-1]["headers"]["Range"] == "bytes=3000-"  # asked, got 200
    assert (tmp_path / "ChestXRay2017.zip").read_bytes() == body


def test_complete_part_answered_416_is_used_without_redownload(server, kermany, tmp_path):
    body, files = kermany
    server.routes["/z.zip"] = {"body": body}
    (tmp_path / "ChestXRay2017.zip.part").write_bytes(body)
    root = dl.download(url=server.base + "/z.zip", dest=tmp_path, timeout=5)
    assert server.requests[-1]["headers"]["Range"] == f"bytes={len(body)}-"
    assert {k for k in _files_of(root) if k != "download.json"} == set(files)


def test_wrong_checksum_deletes_the_file_and_says_so(server, kermany, tmp_path):
    body, _ = kermany
    server.routes["/z.zip"] = {"body": body}
    with pytest.raises(dl.ChecksumError, match="was deleted") as err:
        dl.download(url=server.base + "/z.zip", dest=tmp_path, timeout=5,
                    expected_sha256="0" * 64)
    assert hashlib.sha256(body).hexdigest() in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_published_pneumoniamnist_md5_applies_to_a_mirror(server, tmp_path):
    npz, _ = _pneumoniamnist_npz()
    server.routes["/pneumoniamnist.npz"] = {"body": npz, "type": "application/octet-stream"}
    with pytest.raises(dl.ChecksumError, match=dl.PNEUMONIAMNIST_FILES[28][1]):
        dl.download("pneumoniamnist", dest=tmp_path, size=28, timeout=5,
                    url=server.base + "/pneumoniamnist.npz")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content_type", ["text/html; charset=utf-8", "application/octet-stream"])
def test_html_answer_is_refused(server, tmp_path, content_type):
    page = b"<!DOCTYPE html><html><body>Please sign in to download</body></html>"
    server.routes["/file_downloaded"] = {"body": page, "type": content_type}
    with pytest.raises(dl.NotAnArchiveError, match="web page"):
        dl.download(url=server.base + "/file_downloaded", dest=tmp_path, timeout=5)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad_name", ["../evil.txt", "chest_xray/../../evil.txt",
                                      "/tmp/xray-core-evil.txt", "..\\evil.txt"])
def test_path_escaping_zip_entry_is_refused_before_writing(server, tmp_path, bad_name):
    dest = tmp_path / "data"
    body = _zip({"chest_xray/train/NORMAL/IM-0001-0001.jpeg": b"\xff\xd8 not really",
                 "chest_xray/train/PNEUMONIA/person1_virus_1.jpeg": b"\xff\xd8 not really",
                 bad_name: b"owned"})
    server.routes["/z.zip"] = {"body": body}
    with pytest.raises(dl.UnsafeArchiveError, match="nothing was unpacked"):
        dl.download(url=server.base + "/z.zip", dest=dest, timeout=5)
    assert list(dest.iterdir()) == []  # no dataset, no temp folder, bad archive deleted
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/xray-core-evil.txt").exists()


def test_offline_closed_port_is_a_clear_network_error(tmp_path, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(dl.NetworkError, match=f"Could not reach 127.0.0.1:{port}.*online"):
        dl.download(url=f"http://127.0.0.1:{port}/ChestXRay2017.zip", dest=tmp_path, timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_http_error_status_is_reported(server, tmp_path):
    with pytest.raises(dl.NetworkError, match="HTTP 404"):
        dl.download(url=server.base + "/missing.zip", dest=tmp_path, timeout=5)


def test_disk_space_is_checked_against_content_length(server, tmp_path):
    server.routes["/huge.zip"] = {"body": b"", "fake_length": 10**16}
    with pytest.raises(dl.DiskFullError, match="Not enough free disk space"):
        dl.download(url=server.base + "/huge.zip", dest=tmp_path, timeout=5)
    assert not (tmp_path / "ChestXRay2017.zip.part").exists()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full (ENOSPC)")
def test_disk_filling_up_mid_download_is_a_clear_error(server, kermany, tmp_path):
    body, _ = kermany
    server.routes["/z.zip"] = {"body": body}
    (tmp_path / "ChestXRay2017.zip.part").symlink_to("/dev/full")  # every write fails ENOSPC
    with pytest.raises(dl.DiskFullError, match="filled up"):
        dl.download(url=server.base + "/z.zip", dest=tmp_path, timeout=5)


def test_pneumoniamnist_npz_becomes_the_kermany_folder_layout(server, tmp_path):
    npz, arrays = _pneumoniamnist_npz(size=28)
    server.routes["/pneumoniamnist.npz"] = {"body": npz, "type": "application/octet-stream"}
    reports = []
    root = dl.download("pneumoniamnist", dest=tmp_path, size=28, url=server.base + "/pneumoniamnist.npz",
                       expected_md5=hashlib.md5(npz).hexdigest(), progress=reports.append, timeout=5)
    assert root == tmp_path / "pneumoniamnist_28"
    for split in ("train", "val", "test"):
        labels = arrays[f"{split}_labels"].reshape(-1)
        for label, class_name in enumerate(dl.CLASSES):
            names = sorted(p.name for p in (root / split / class_name).iterdir())
            expected = [f"pmnist-{split}-{i:05d}.png" for i in np.flatnonzero(labels == label)]
            assert names == expected
    img = np.asarray(Image.open(root / "val" / "PNEUMONIA" / "pmnist-val-00001.png"))
    assert np.array_equal(img, arrays["val_images"][1])
    assert [r for r in reports if r.phase == "unpack"][-1].unit == "images"

    from xray_core.data import index_dataset
    df = index_dataset(root)
    assert len(df) == 13 and df["patient_id"].is_unique  # each image is its own patient
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pneumoniamnist_28"]


def test_pneumoniamnist_size_mismatch_is_explained(server, tmp_path):
    npz, _ = _pneumoniamnist_npz(size=28)
    server.routes["/p.npz"] = {"body": npz}
    with pytest.raises(dl.ArchiveContentError, match="28x28 px images, but 64 px"):
        dl.download("pneumoniamnist", dest=tmp_path, size=64, url=server.base + "/p.npz",
                    expected_md5=hashlib.md5(npz).hexdigest(), timeout=5)
    assert not (tmp_path / "pneumoniamnist_64").exists() and _leftovers(tmp_path) == []


def test_existing_incomplete_target_is_not_overwritten(tmp_path):
    (tmp_path / "chest_xray" / "train").mkdir(parents=True)
    with pytest.raises(dl.ArchiveContentError, match="already exists but is not a complete"):
        dl.download(url="http://127.0.0.1:9/never-contacted.zip", dest=tmp_path)


def test_a_running_download_holds_a_lock(server, kermany, tmp_path):
    server.routes["/z.zip"] = {"body": kermany[0]}
    (tmp_path / ".ChestXRay2017.zip.lock").write_text(str(os.getpid()))
    with pytest.raises(dl.DownloadInProgressError, match="already running"):
        dl.download(url=server.base + "/z.zip", dest=tmp_path, timeout=5)
    assert server.requests == []
    (tmp_path / ".ChestXRay2017.zip.lock").write_text("999999999")  # a dead process's lock
    assert dl.download(url=server.base + "/z.zip", dest=tmp_path, timeout=5).is_dir()


def test_arguments_are_checked_with_sentences():
    with pytest.raises(ValueError, match="Choose one of: kermany, pneumoniamnist"):
        dl.download("nih")
    with pytest.raises(ValueError, match="not 100"):
        dl.target_path("pneumoniamnist", size=100)
    with pytest.raises(ValueError, match="only http"):
        dl.download(url="ftp://example.org/x.zip")
    with pytest.raises(ValueError, match="MD5 checksum"):
        dl.download(url="http://127.0.0.1:9/x.zip", expected_md5="xyz")
    assert dl.target_path("pneumoniamnist", dest="d") == Path("d") / "pneumoniamnist_128"
    for name, spec in dl.SOURCES.items():
        assert spec["licence"] == "CC BY 4.0" and spec["citation"] and spec["approx_size"], name


def test_progress_text_names_bytes_rate_and_eta():
    p = dl.DownloadProgress("download", 540_000_000, 1_200_000_000, 12_000_000.0, 55.0)
    assert p.describe() == "Downloading 540.0 MB of 1.2 GB (45%), 12.0 MB/s, 55 s left"
    out = io.StringIO()
    dl.TextProgress(out)(p)
    assert "Downloading:  45%" in out.getvalue() and "540M/1.20G" in out.getvalue()


@pytest.mark.skipif(importlib.util.find_spec("xray_core.commands") is None,
                    reason="xray_core.cli needs xray_core/commands.py, which is not in this checkout yet")
def test_cli_download_in_a_real_subprocess(server, kermany, tmp_path):
    body, files = kermany
    server.routes["/mirror/ChestXRay2017.zip"] = {"body": body}
    env = {**os.environ, "NO_PROXY": "127.0.0.1", "PYTHONPATH": str(PROJECT_ROOT)}
    cmd = [sys.executable, "-m", "xray_core", "download", "--url",
           server.base + "/mirror/ChestXRay2017.zip", "--dest", str(tmp_path / "d"), "--timeout", "5"]
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    root = (tmp_path / "d" / "chest_xray").resolve()
    assert f"export XRAY_DATA_DIR={root}" in proc.stdout
    assert "Downloading" in proc.stderr and "Unpacking" in proc.stderr and "100%" in proc.stderr
    assert "doi:10.17632/rscbjbr9sj.3" in proc.stderr
    assert {k for k in _files_of(root) if k != "download.json"} == set(files)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd[5] = f"http://127.0.0.1:{port}/ChestXRay2017.zip"
    cmd[7] = str(tmp_path / "offline")
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: Could not reach 127.0.0.1")
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------ the served app's URL allow-list


def _app_policy(monkeypatch, hosts: str = "", networks: str = "") -> dl.UrlPolicy:
    monkeypatch.setenv("XRAY_SECRETS_FILE", "/nonexistent/secrets.toml")
    monkeypatch.setenv("XRAY_DOWNLOAD_HOSTS", hosts)
    monkeypatch.setenv("XRAY_DOWNLOAD_PRIVATE_NETWORKS", networks)
    return dl.app_url_policy()


def test_app_policy_allows_the_catalogue_hosts_and_refuses_others_before_any_lookup(monkeypatch, tmp_path):
    policy = _app_policy(monkeypatch)
    assert {"data.mendeley.com", "zenodo.org"} <= policy.hosts
    with pytest.raises(dl.UrlNotAllowed, match="example.org is not one of them"):
        dl.download(url="https://example.org/ChestXRay2017.zip", dest=tmp_path, url_policy=policy)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("address, kind", [("192.168.7.7", "private"), ("10.20.30.40", "private"),
                                           ("169.254.169.254", "link-local"), ("127.0.0.1", "loopback")])
def test_app_policy_refuses_addresses_inside_the_network_even_for_an_allowed_host(
        monkeypatch, tmp_path, address, kind):
    policy = _app_policy(monkeypatch, hosts=address)
    with pytest.raises(dl.UrlNotAllowed, match=f"{re.escape(address)}, a {kind}"):
        dl.download(url=f"http://{address}/ChestXRay2017.zip", dest=tmp_path, url_policy=policy)
    assert list(tmp_path.iterdir()) == []


def test_app_policy_refuses_a_loopback_server_unless_its_network_is_allowed(server, kermany, monkeypatch, tmp_path):
    server.routes["/z.zip"] = {"body": kermany[0]}
    url = server.base + "/z.zip"
    with pytest.raises(dl.UrlNotAllowed, match="loopback"):
        dl.download(url=url, dest=tmp_path / "a", url_policy=_app_policy(monkeypatch, hosts="127.0.0.1"))
    assert server.requests == []  # refused before connecting
    allowed = _app_policy(monkeypatch, hosts="127.0.0.1", networks="127.0.0.1/32")
    assert dl.download(url=url, dest=tmp_path / "b", url_policy=allowed, timeout=5).is_dir()


@pytest.mark.parametrize("target", ["http://10.9.8.7/ChestXRay2017.zip", "http://127.0.0.2:{port}/z.zip",
                                    "http://[::1]:{port}/z.zip"])
def test_a_redirect_into_the_network_is_refused(server, kermany, monkeypatch, tmp_path, target):
    """The first hop (127.0.0.1) is allowed by the administrator; where it redirects is not."""
    port = server.server_address[1]
    server.routes["/z.zip"] = {"body": kermany[0]}
    server.routes["/moved.zip"] = {"body": b"", "redirect": target.format(port=port)}
    policy = _app_policy(monkeypatch, hosts="127.0.0.1", networks="127.0.0.1/32")
    with pytest.raises(dl.UrlNotAllowed, match="A redirect leads to"):
        dl.download(url=server.base + "/moved.zip", dest=tmp_path, url_policy=policy, timeout=5)
    assert [r["path"] for r in server.requests] == ["/moved.zip"]
    assert _leftovers(tmp_path) == [] and not (tmp_path / "chest_xray").exists()

    # A redirect to an allowed address is followed; the CLI's path (no policy) follows any.
    server.routes["/moved.zip"]["redirect"] = server.base + "/z.zip"
    assert dl.download(url=server.base + "/moved.zip", dest=tmp_path, url_policy=policy, timeout=5).is_dir()


def test_a_bad_allowed_network_is_a_sentence(monkeypatch):
    with pytest.raises(dl.UrlNotAllowed, match="is not a network"):
        _app_policy(monkeypatch, networks="intranet")


def test_the_connected_address_is_checked_too_not_only_the_name(server, monkeypatch):
    """Against a DNS answer that changes between the check and the connection: the policy's
    opener checks the socket's peer, so even a URL that skipped `check` cannot reach a loopback
    server, and no request is sent to it."""
    import urllib.error

    policy = _app_policy(monkeypatch, hosts="127.0.0.1")
    with pytest.raises(urllib.error.URLError) as err:
        policy.opener().open(server.base + "/z.zip", timeout=5)
    assert isinstance(err.value.reason, dl.UrlNotAllowed) and "loopback" in str(err.value.reason)
    assert server.requests == []
    allowed = _app_policy(monkeypatch, hosts="127.0.0.1", networks="127.0.0.0/8")
    with pytest.raises(urllib.error.HTTPError, match="404"):  # connected, asked, answered
        allowed.opener().open(server.base + "/z.zip", timeout=5)
    assert len(server.requests) == 1


def test_an_unknown_host_is_a_network_error_not_a_refusal(monkeypatch, tmp_path):
    policy = _app_policy(monkeypatch, hosts="no-such-host.invalid")  # .invalid never resolves (RFC 6761)
    with pytest.raises(dl.NetworkError, match="Could not look up no-such-host.invalid.*online") as err:
        dl.download(url="http://no-such-host.invalid/x.zip", dest=tmp_path, url_policy=policy)
    assert not isinstance(err.value, dl.UrlNotAllowed)
    assert list(tmp_path.iterdir()) == []
