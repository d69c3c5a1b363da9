"""DICOM networking with pynetdicom: C-ECHO, C-STORE, C-GET and C-MOVE.

Every failure is reported in one line naming the peer and what failed: an unreachable
host, an association rejected (with the reason the peer gave), an object the peer
refused (per object, the others still sent), a retrieve that got only part of a study.
Nothing is sent unless a function here is called.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guidance.io.labels_io import is_dicom_file

__all__ = [
    "DEFAULT_AE_TITLE",
    "FetchResult",
    "PacsAddress",
    "PacsError",
    "StoreOutcome",
    "echo",
    "fetch_study",
    "parse_pacs",
    "store_files",
]

log = logging.getLogger(__name__)

#: Our AE title unless configured (``--ae-title``).
DEFAULT_AE_TITLE = "GUIDANCE"
_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # no backslash, printable, <= 16


class PacsError(Exception):
    """A DICOM network operation that failed as a whole; the text is one line."""


@dataclass(frozen=True)
class PacsAddress:
    """A DICOM peer: ``AE_TITLE@HOST:PORT``."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def check_ae_title(title: str, what: str = "AE title") -> str:
    """An AE title: 1-16 printable characters, no backslash, not only spaces.

    Raises:
        ValueError: naming ``what``.
    """
    if not _AE_RE.match(title) or not title.strip():
        raise ValueError(f"{what} must be 1-16 printable characters without '\\', got "
                         f"{title!r}")
    return title


def parse_pacs(text: str) -> PacsAddress:
    """``AET@HOST:PORT`` (e.g. ``ORTHANC@127.0.0.1:4242``).

    Raises:
        ValueError: naming the part that is wrong.
    """
    aet, at, rest = text.partition("@")
    host, colon, port_s = rest.rpartition(":")
    if not at or not colon or not host:
        raise ValueError(f"a PACS is AE_TITLE@HOST:PORT, got {text!r}")
    check_ae_title(aet, "the PACS's AE title")
    try:
        port = int(port_s)
    except ValueError:
        raise ValueError(f"PACS port must be a number, got {port_s!r} in {text!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"PACS port must be 1..65535, got {port}")
    return PacsAddress(aet, host.strip("[]"), port)


def _ae(calling_ae: str, timeout_s: float) -> Any:
    from pynetdicom import AE

    ae = AE(ae_title=check_ae_title(calling_ae, "our AE title"))
    ae.acse_timeout = timeout_s
    ae.dimse_timeout = timeout_s
    ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    return ae


def _reachable(pacs: PacsAddress, timeout_s: float) -> None:
    """A plain TCP connection first: pynetdicom reports a refused or unreachable host as
    an aborted association; this names the network's own reason."""
    import socket

    try:
        with socket.create_connection((pacs.host, pacs.port), timeout=timeout_s):
            pass
    except OSError as e:
        reason = e.strerror or str(e) or type(e).__name__
        raise PacsError(f"{pacs}: cannot connect to {pacs.host}:{pacs.port} ({reason})"
                        ) from None


def _associate(ae: Any, pacs: PacsAddress, **kwargs: Any) -> Any:
    _reachable(pacs, float(ae.connection_timeout))
    assoc = ae.associate(pacs.host, pacs.port, ae_title=pacs.ae_title, **kwargs)
    if assoc.is_established:
        return assoc
    if assoc.is_rejected:
        raise PacsError(f"{pacs}: association rejected ({_rejection(assoc)}); is "
                        f"'{ae.ae_title}' known to the PACS and its AE title right?")
    if assoc.is_aborted:
        raise PacsError(f"{pacs}: association aborted by the peer")
    raise PacsError(f"{pacs}: cannot connect (no DICOM peer answering at "
                    f"{pacs.host}:{pacs.port} within {ae.connection_timeout:g} s)")


def _rejection(assoc: Any) -> str:
    try:
        primitive = assoc.acceptor.primitive
        result = getattr(primitive, "result_str", "")
        source = getattr(primitive, "source_str", "")
        reason = getattr(primitive, "reason_str", "")
        return ", ".join(x for x in (result, source, reason) if x) or "no reason given"
    except AttributeError:
        return "no reason given"


def echo(pacs: PacsAddress, *, calling_ae: str = DEFAULT_AE_TITLE,
         timeout_s: float = 10.0) -> None:
    """C-ECHO.

    Raises:
        PacsError: unreachable, rejected, or a non-success status.
    """
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = _ae(calling_ae, timeout_s)
    ae.add_requested_context(Verification)
    assoc = _associate(ae, pacs)
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if not status or int(status.Status) != 0:
        code = "no response" if not status else f"status 0x{int(status.Status):04X}"
        raise PacsError(f"{pacs}: C-ECHO failed ({code})")


@dataclass(frozen=True)
class StoreOutcome:
    """One object's C-STORE.

    Attributes:
        path: the file.
        sop_instance_uid: its SOPInstanceUID ("" when unreadable).
        ok: stored (success or warning status).
        message: "stored", "stored with warning 0xB000", or why not.
    """

    path: Path
    sop_instance_uid: str
    ok: bool
    message: str


def _dicom_files(paths: Iterable[str | Path]) -> list[Path]:
    """The files to send: every file given, and the DICOM files in every folder given
    (searched recursively; a report's HTML, PNG and JSON beside them are not sent)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file()
                           and not f.name.startswith("."))
            dicom = [f for f in found if is_dicom_file(f)]
            if len(dicom) < len(found):
                log.info("%s: %d non-DICOM file(s) not sent", p, len(found) - len(dicom))
            out.extend(dicom)
        elif p.is_file():
            out.append(p)
        else:
            raise PacsError(f"{p}: no such file or folder")
    return out


def store_files(paths: Sequence[str | Path], pacs: PacsAddress, *,
                calling_ae: str = DEFAULT_AE_TITLE, timeout_s: float = 30.0
                ) -> list[StoreOutcome]:
    """C-STORE every DICOM file in ``paths`` (files or folders, recursively) in one
    association. An object the peer refuses (or that is not DICOM) is reported and the
    others still go.

    Raises:
        PacsError: no DICOM file given, or the PACS unreachable or refusing the
            association (then nothing was stored).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    files = _dicom_files(paths)
    items: list[tuple[Path, Any]] = []
    outcomes: list[StoreOutcome] = []
    for f in files:
        try:
            ds = pydicom.dcmread(str(f))
            _ = (ds.SOPClassUID, ds.SOPInstanceUID)  # both must exist
        except (InvalidDicomError, OSError, EOFError, ValueError, AttributeError) as e:
            outcomes.append(StoreOutcome(f, "", False, f"not sent: not a DICOM object ({e})"))
            continue
        items.append((f, ds))
    if not items:
        raise PacsError("no DICOM object to store in " + ", ".join(map(str, paths)))
    ae = _ae(calling_ae, timeout_s)
    contexts: dict[tuple[str, str], None] = {}
    for _f, ds in items:
        contexts[(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))] = None
    for sop_class, ts in contexts:
        ae.add_requested_context(sop_class, [ts, "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
                                 if ts not in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
                                 else ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    assoc = _associate(ae, pacs)
    try:
        for f, ds in items:
            uid = str(ds.SOPInstanceUID)
            try:
                status = assoc.send_c_store(ds)
            except ValueError as e:  # no accepted context for this SOP class
                outcomes.append(StoreOutcome(f, uid, False, f"not sent: {e}"))
                continue
            if not status:
                outcomes.append(StoreOutcome(f, uid, False, "no response (timeout or abort)"))
                if not assoc.is_established:
                    break
                continue
            code = int(status.Status)
            if code == 0:
                outcomes.append(StoreOutcome(f, uid, True, "stored"))
            elif code in (0xB000, 0xB006, 0xB007):
                outcomes.append(StoreOutcome(f, uid, True, f"stored with warning 0x{code:04X}"))
            else:
                comment = str(getattr(status, "ErrorComment", "") or "")
                outcomes.append(StoreOutcome(
                    f, uid, False, f"refused: status 0x{code:04X}"
                    + (f" ({comment})" if comment else "")))
    finally:
        if assoc.is_established:
            assoc.release()
    sent = {o.path for o in outcomes}
    for f, ds in items:  # the association broke before these
        if f not in sent:
            outcomes.append(StoreOutcome(f, str(ds.SOPInstanceUID), False,
                                         "not sent: the association ended"))
    return outcomes


#: Storage SOP classes accepted when retrieving (C-GET needs them negotiated up front).
_RETRIEVE_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.2",      # CT Image
    "1.2.840.10008.5.1.4.1.1.2.1",    # Enhanced CT Image
    "1.2.840.10008.5.1.4.1.1.4",      # MR Image
    "1.2.840.10008.5.1.4.1.1.7",      # Secondary Capture
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
    "1.2.840.10008.5.1.4.1.1.66.4",   # Segmentation
    "1.2.840.10008.5.1.4.1.1.128",    # PET
    "1.2.840.10008.5.1.4.1.1.1",      # CR
    "1.2.840.10008.5.1.4.1.1.12.1",   # X-Ray Angiographic
    "1.2.840.10008.5.1.4.1.1.6.1",    # Ultrasound
)
_TRANSFER = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.4.70",
             "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5")


@dataclass
class FetchResult:
    """What a retrieve brought.

    Attributes:
        files: the files written (one per object, named by SOPInstanceUID).
        completed, failed, warning: the peer's final counts.
        problems: one line per object or status that was not a plain success.
    """

    files: list[Path] = field(default_factory=list)
    completed: int = 0
    failed: int = 0
    warning: int = 0
    problems: list[str] = field(default_factory=list)


def _save_handler(out: Path, result: FetchResult) -> Any:
    def handle(event: Any) -> int:
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            path = out / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
        except Exception as e:  # report, refuse this object, keep the association
            result.problems.append(f"could not save a received object: {e}")
            return 0xA700
        result.files.append(path)
        return 0x0000

    return handle


def _study_query(study_uid: str) -> Any:
    from pydicom.dataset import Dataset

    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyInstanceUID = study_uid
    return q


def _final_counts(responses: Iterable[tuple[Any, Any]], result: FetchResult,
                  pacs: PacsAddress, what: str) -> None:
    last = None
    for status, _identifier in responses:
        if not status:
            raise PacsError(f"{pacs}: {what} got no response (timeout or abort)")
        last = status
    if last is None:
        raise PacsError(f"{pacs}: {what} got no response")
    code = int(last.Status)
    result.completed = int(getattr(last, "NumberOfCompletedSuboperations", 0) or 0)
    result.failed = int(getattr(last, "NumberOfFailedSuboperations", 0) or 0)
    result.warning = int(getattr(last, "NumberOfWarningSuboperations", 0) or 0)
    if code not in (0x0000, 0xB000):
        comment = str(getattr(last, "ErrorComment", "") or "")
        raise PacsError(f"{pacs}: {what} failed with status 0x{code:04X}"
                        + (f" ({comment})" if comment else ""))
    if code == 0xB000 or result.failed:
        result.problems.append(f"{what}: {result.failed} object(s) failed, {result.warning} "
                               f"with warnings, {result.completed} completed")


def fetch_study(pacs: PacsAddress, study_uid: str, out_dir: str | Path, *,
                calling_ae: str = DEFAULT_AE_TITLE, method: str = "get",
                move_port: int = 0, timeout_s: float = 60.0) -> FetchResult:
    """Retrieve a study into ``out_dir`` (created): C-GET (default; no port of ours to
    open), or C-MOVE to ourselves (``method="move"``: a Storage SCP on ``move_port``
    for the duration, and the PACS must know ``calling_ae`` at this host and port).

    Raises:
        PacsError: unreachable, rejected, the study unknown (nothing retrieved) or a
            failed retrieve.
    """
    from pynetdicom import StoragePresentationContexts, build_role, evt
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        StudyRootQueryRetrieveInformationModelGet,
        StudyRootQueryRetrieveInformationModelMove,
    )

    if method not in ("get", "move"):
        raise ValueError(f"method must be 'get' or 'move', got {method!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = FetchResult()
    ae = _ae(calling_ae, timeout_s)
    handlers = [(evt.EVT_C_STORE, _save_handler(out, result))]
    if method == "get":
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        roles = []
        for uid in _RETRIEVE_CLASSES:
            ae.add_requested_context(uid, list(_TRANSFER))
            roles.append(build_role(uid, scp_role=True))
        assoc = _associate(ae, pacs, ext_neg=roles, evt_handlers=handlers)
        try:
            _final_counts(assoc.send_c_get(_study_query(study_uid),
                                           StudyRootQueryRetrieveInformationModelGet),
                          result, pacs, "C-GET")
        finally:
            if assoc.is_established:
                assoc.release()
    else:
        ae.supported_contexts = StoragePresentationContexts
        try:
            scp = ae.start_server(("0.0.0.0", move_port), block=False, evt_handlers=handlers)
        except OSError as e:
            raise PacsError(f"cannot listen on port {move_port} for C-MOVE: {e}") from e
        try:
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
            assoc = _associate(ae, pacs)
            try:
                _final_counts(assoc.send_c_move(_study_query(study_uid), calling_ae,
                                                StudyRootQueryRetrieveInformationModelMove),
                              result, pacs, "C-MOVE")
            finally:
                if assoc.is_established:
                    assoc.release()
        finally:
            scp.shutdown()
    if not result.files:
        raise PacsError(f"{pacs}: study {study_uid} retrieved nothing"
                        + (f" ({result.problems[-1]})" if result.problems else
                           " (unknown study?)"))
    return result
