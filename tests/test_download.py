"""Downloading the real data sets: the real HTTP path, against a server on the loopback address.

The server serves a copy of the files under ``$DGL_IFLOW_DATA`` in the layout of a mirror
(``/<variant>/<folder>/<file name>``): intact (``good``), truncated, corrupted, oversized, and
cut off mid-transfer (``interrupted``).
No test needs the internet, and the shared data folder is only read.
"""
from __future__ import annotations

import functools
import http.server
import importlib
import os
import socket
import threading
from collections import Counter
from pathlib import Path

import pytest
import torch

from dgl_iflow.cli import main
from dgl_iflow.data import DataFileError, download_dataset, load_dataset, verify_dataset
from dgl_iflow.data.download import MIRROR_ENV_VAR

traffic_module = importlib.import_module("dgl_iflow.data.traffic")
solar_module = importlib.import_module("dgl_iflow.data.solar")
MODULES = {"traffic": traffic_module, "solar": solar_module}


class MirrorHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the mirror folder; ``/interrupted/...`` announces the whole file, sends half."""

    requests: Counter

    def do_GET(self) -> None:
        self.requests[self.path] += 1
        if not self.path.startswith("/interrupted/"):
            super().do_GET()
            return
        content = Path(self.translate_path(self.path.replace("/interrupted/", "/good/", 1))).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content[: len(content) // 2])
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, format: str, *args) -> None:  # keep the test output clean
        pass


class QuietServer(http.server.ThreadingHTTPServer):
    """Clients that hang up early (the tests make some) are no error worth printing."""

    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass


def build_mirror(source: Path, mirror: Path) -> None:
    """Copies of the published files, and a truncated, a corrupted and an oversized variant."""
    for name, module in MODULES.items():
        for spec in module.FILES:
            content = (source / module.FOLDER / spec.name).read_bytes()
            corrupted = bytearray(content)
            corrupted[len(content) // 2] ^= 0xFF
            for variant, data in (("good", content), ("truncated", content[:-100]),
                                  ("corrupted", bytes(corrupted)), ("oversized", content * 2)):
                target = mirror / variant / module.FOLDER / spec.name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Base URL of a threaded HTTP server on 127.0.0.1 and its per-path request counts."""
    source = Path(os.environ.get("DGL_IFLOW_DATA", ""))
    missing = [f"{module.FOLDER}/{spec.name}" for module in MODULES.values() for spec in module.FILES
               if not (source / module.FOLDER / spec.name).is_file()]
    if not os.environ.get("DGL_IFLOW_DATA") or missing:
        pytest.skip("DGL_IFLOW_DATA must point at the real data files to serve them")
    mirror = tmp_path_factory.mktemp("mirror")
    build_mirror(source, mirror)
    handler = functools.partial(type("Handler", (MirrorHandler,), {"requests": Counter()}),
                                directory=str(mirror))
    httpd = QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", handler.func.requests
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def assert_nothing_written(folder: Path) -> None:
    """No data file and no temporary left behind (an empty folder is allowed)."""
    assert not folder.exists() or list(folder.iterdir()) == []


@pytest.mark.data
def test_fresh_root_loads_traffic_through_the_download(server, tmp_path, monkeypatch):
    url, requests = server
    monkeypatch.setenv(MIRROR_ENV_VAR, f"{url}/good")
    root = tmp_path / "fresh"
    downloaded = load_dataset("traffic", root=root)
    reference = load_dataset("traffic", root=os.environ["DGL_IFLOW_DATA"])
    assert torch.equal(downloaded.x, reference.x) and torch.equal(downloaded.y, reference.y)
    folder = root / traffic_module.FOLDER
    assert sorted(p.name for p in folder.iterdir()) == sorted(s.name for s in traffic_module.FILES)
    assert all(report.ok for report in verify_dataset("traffic", root=root).values())
    before = sum(requests.values())
    load_dataset("traffic", root=root)
    assert sum(requests.values()) == before, "files present and intact are not fetched again"


@pytest.mark.data
def test_data_root_from_environment_and_all_files(server, tmp_path, monkeypatch):
    url, _ = server
    monkeypatch.setenv(MIRROR_ENV_VAR, f"{url}/good")
    monkeypatch.setenv("DGL_IFLOW_DATA", str(tmp_path / "env"))
    reports = download_dataset("solar", progress=False)
    assert len(reports) == len(solar_module.FILES) and all(r.ok for r in reports.values())
    assert all(r.path.parent == tmp_path / "env" / solar_module.FOLDER for r in reports.values())


@pytest.mark.data
@pytest.mark.parametrize("variant, message", [
    ("truncated", r"received \d+ of \d+ bytes \(truncated\)"),
    ("corrupted", "corrupted, sha256"),
    ("oversized", r"the server sent more than the published \d+ bytes"),
    ("interrupted", r"broke off after \d+ of \d+ bytes \(interrupted\)"),
])
def test_bad_download_leaves_nothing_and_names_file_and_url(server, tmp_path, variant, message):
    url, _ = server
    spec = traffic_module.FILES[0]
    with pytest.raises(DataFileError, match=message) as err:
        download_dataset("traffic", tmp_path, mirror=f"{url}/{variant}", progress=False)
    text = str(err.value)
    assert f"{url}/{variant}/{traffic_module.FOLDER}/{spec.name}" in text and spec.name in text
    assert_nothing_written(tmp_path / traffic_module.FOLDER)
    with pytest.raises(DataFileError, match="not found"):
        load_dataset("traffic", root=tmp_path, download=False)


@pytest.mark.data
def test_missing_file_on_the_server(server, tmp_path):
    url, _ = server
    with pytest.raises(DataFileError, match="HTTP 404"):
        download_dataset("traffic", tmp_path, mirror=f"{url}/nowhere", progress=False)
    assert_nothing_written(tmp_path / traffic_module.FOLDER)


@pytest.mark.data
def test_bad_local_file_is_kept_unless_replaced(server, tmp_path):
    url, _ = server
    folder = tmp_path / traffic_module.FOLDER
    download_dataset("traffic", tmp_path, mirror=f"{url}/good", progress=False)
    target = folder / traffic_module.NEIGHBORS.name
    target.write_bytes(b"\0" * traffic_module.NEIGHBORS.size)
    reports = download_dataset("traffic", tmp_path, mirror=f"{url}/good", progress=False)
    assert reports[target.name].status == "checksum mismatch"
    with pytest.raises(DataFileError, match="corrupted.*--replace"):
        load_dataset("traffic", root=tmp_path)
    reports = download_dataset("traffic", tmp_path, mirror=f"{url}/good", replace=True,
                               progress=False)
    assert all(report.ok for report in reports.values())
    assert sorted(p.name for p in folder.iterdir()) == sorted(s.name for s in traffic_module.FILES)


@pytest.mark.data
def test_cli_download_then_list(server, tmp_path, monkeypatch, capsys):
    url, _ = server
    monkeypatch.setenv(MIRROR_ENV_VAR, f"{url}/good")
    assert main(["datasets", "--data-root", str(tmp_path), "traffic", "--no-progress"]) == 0
    listing = capsys.readouterr().out
    assert "traffic          not downloaded" in listing and "--download" in listing
    assert main(["datasets", "--data-root", str(tmp_path), "--download", "--no-progress"]) == 0
    listing = capsys.readouterr().out
    for module in MODULES.values():
        for spec in module.FILES:
            line = next(line for line in listing.splitlines() if spec.name in line)
            assert f"{spec.size:,} bytes" in line and " ok " in line and spec.url in line
    assert "PROBLEM" not in listing


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("name", list(MODULES))
def test_offline_error_says_which_files_to_put_where(tmp_path, monkeypatch, name):
    module = MODULES[name]
    monkeypatch.setenv(MIRROR_ENV_VAR, f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("DGL_IFLOW_DATA", str(tmp_path / "root"))
    with pytest.raises(DataFileError) as err:
        load_dataset(name)
    text = str(err.value)
    folder = tmp_path / "root" / module.FOLDER
    assert f"put these files into folder {folder} (data root {tmp_path / 'root'} (from DGL_IFLOW_DATA))" in text
    assert all(f"{spec.name} ({spec.size} bytes, sha256 {spec.sha256}, from http://127.0.0.1:" in text
               for spec in module.FILES)
    assert not (tmp_path / "root").exists(), "a failed connection creates no folder"


@pytest.mark.data
def test_unwritable_folder_is_named(server, tmp_path):
    # A file where the data-set folder should be: no user, root included, can write into it.
    (tmp_path / traffic_module.FOLDER).write_text("not a folder")
    with pytest.raises(DataFileError, match=f"{traffic_module.TRAIN_FLOW.name} from .*FileExistsError"):
        download_dataset("traffic", tmp_path, mirror=f"{server[0]}/good", progress=False)
