"""``guidance pacs echo|store|fetch`` and ``verify --pacs``: DICOM networking with a PACS
(:mod:`guidance.pacs.network`, pynetdicom), its failures as one-line
:class:`~guidance.workflows.WorkflowError`, and the report of a store for people."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from guidance.pacs.network import (
    PacsAddress,
    PacsError,
    StoreOutcome,
    echo,
    fetch_study,
    store_files,
)
from guidance.workflows.shared import WorkflowError

__all__ = ["PacsReport", "echo_pacs", "fetch", "quiet_pynetdicom", "send_verification",
           "store"]


@dataclass(frozen=True)
class PacsReport:
    """What an exchange with a PACS did, for people (``lines``), and why it failed in
    part ('' when it did not): one line naming what, said after the lines."""

    lines: list[str]
    failure: str = ""


def quiet_pynetdicom(verbose: int) -> None:
    """pynetdicom logs every association at INFO and failures with tracebacks at ERROR;
    our one-line reports say what failed, so its log shows only with ``verbose`` >= 2."""
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG if verbose >= 2
                                             else logging.CRITICAL)


def echo_pacs(pacs: PacsAddress, *, calling_ae: str, timeout_s: float) -> PacsReport:
    """C-ECHO ``pacs`` as ``calling_ae``, each step within ``timeout_s`` seconds.

    Raises:
        WorkflowError: unreachable, association refused, no success status.
    """
    try:
        echo(pacs, calling_ae=calling_ae, timeout_s=timeout_s)
    except PacsError as e:
        raise WorkflowError(str(e)) from e
    return PacsReport([f"C-ECHO {pacs}: OK (as {calling_ae})"])


def store(paths: Sequence[str | Path], pacs: PacsAddress, *, calling_ae: str,
          timeout_s: float | None = None, later: str = "") -> PacsReport:
    """C-STORE the DICOM files (folders searched recursively) of ``paths`` to ``pacs``:
    one line per object and a total; refused objects make the failure.

    Args:
        later: appended to a failure's message (``"; " + later``): how to retry.

    Raises:
        WorkflowError: unreachable or association refused.
    """
    try:
        if timeout_s is None:
            outcomes = store_files(paths, pacs, calling_ae=calling_ae)
        else:
            outcomes = store_files(paths, pacs, calling_ae=calling_ae, timeout_s=timeout_s)
    except PacsError as e:
        raise WorkflowError(f"{e}; {later}" if later else str(e)) from e
    return _store_report(outcomes, pacs, later)


def _store_report(outcomes: Sequence[StoreOutcome], pacs: PacsAddress,
                  later: str) -> PacsReport:
    lines = []
    bad = 0
    for o in outcomes:
        lines.append(f"{'stored' if o.ok else 'NOT STORED'}: {o.path} "
                     f"({o.sop_instance_uid or '-'})"
                     + ("" if o.message == "stored" else f": {o.message}"))
        bad += not o.ok
    lines.append(f"{len(outcomes) - bad} of {len(outcomes)} object(s) stored to {pacs}")
    failure = f"{bad} object(s) not stored to {pacs} (listed above)" if bad else ""
    return PacsReport(lines, f"{failure}; {later}" if failure and later else failure)


def send_verification(files: Sequence[Path], out: str | Path, pacs: PacsAddress, *,
                      calling_ae: str) -> PacsReport:
    """``guidance verify --pacs``: store the DICOM objects written in ``out``; every file
    stays there whatever happens (failures say how to send them later).

    Raises:
        WorkflowError: nothing to send (the control CT is not DICOM), the PACS
            unreachable or refusing.
    """
    out = Path(out)
    later = (f"everything is kept in {out}; send it later with `guidance pacs store "
             f"{out / 'dicom'} --to {pacs}`")
    if not files:
        raise WorkflowError(f"--pacs: nothing to send (no DICOM objects: the control CT is "
                            f"not DICOM); {out} holds the JSON and HTML report")
    return store(files, pacs, calling_ae=calling_ae, later=later)


def fetch(pacs: PacsAddress, study_uid: str, out_dir: str | Path, *, calling_ae: str,
          move: bool, move_port: int, timeout_s: float) -> PacsReport:
    """Retrieve study ``study_uid`` into ``out_dir`` by C-GET, or C-MOVE to ourselves
    (storage SCP on ``move_port``) with ``move``; problems with single objects are listed
    and make the failure.

    Raises:
        WorkflowError: unreachable, association refused, the query failed.
    """
    try:
        result = fetch_study(pacs, study_uid, out_dir, calling_ae=calling_ae,
                             method="move" if move else "get", move_port=move_port,
                             timeout_s=timeout_s)
    except PacsError as e:
        raise WorkflowError(str(e)) from e
    lines = [f"retrieved {len(result.files)} object(s) of study {study_uid} from {pacs} into "
             f"{out_dir} ({'C-MOVE' if move else 'C-GET'})",
             *(f"  problem: {line}" for line in result.problems)]
    return PacsReport(lines, f"study {study_uid} retrieved only in part (see above)"
                      if result.problems else "")
