"""``guidance pacs echo|store|fetch``: DICOM networking with a PACS
(:mod:`guidance.workflows.pacs`). Exit 0: done; 2: the PACS unreachable, refusing, or
any object not stored/retrieved (each named on its own line), or a bad argument."""

from __future__ import annotations

import argparse
from typing import Any

from guidance.cli.common import path_arg, port_number, positive_float
from guidance.cli.main import UsageError

__all__ = ["ae_title", "pacs_address", "register"]


def pacs_address(text: str) -> Any:
    """argparse type: ``AET@HOST:PORT``."""
    from guidance.pacs.network import parse_pacs

    try:
        return parse_pacs(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def ae_title(text: str) -> str:
    """argparse type: our AE title."""
    from guidance.pacs.network import check_ae_title

    try:
        return check_ae_title(text, "--ae-title")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _run(args: argparse.Namespace) -> int:
    from guidance.workflows import pacs as wf

    wf.quiet_pynetdicom(args.verbose)
    if args.pacs_action == "echo":
        report = wf.echo_pacs(args.pacs, calling_ae=args.ae_title, timeout_s=args.timeout)
    elif args.pacs_action == "store":
        report = wf.store(args.paths, args.to, calling_ae=args.ae_title, timeout_s=args.timeout)
    else:
        report = wf.fetch(args.source, args.study, args.out, calling_ae=args.ae_title,
                          move=args.move, move_port=args.port, timeout_s=args.timeout)
    print("\n".join(report.lines))
    if report.failure:
        raise UsageError(report.failure)
    return 0


def _common(p: argparse.ArgumentParser, timeout: float) -> None:
    p.add_argument("--ae-title", type=ae_title, default="GUIDANCE",
                   help="our own AE title, as the PACS knows it (default GUIDANCE)")
    p.add_argument("--timeout", type=positive_float, default=timeout, metavar="S",
                   help=f"connection, association and response timeout, seconds "
                        f"(default {timeout:g})")
    p.set_defaults(func=_run)


def register(sub: Any) -> None:
    """Add the ``pacs`` sub-command."""
    p = sub.add_parser("pacs", help="DICOM networking with a PACS: echo, store, fetch",
                       description="C-ECHO, C-STORE and C-GET/C-MOVE with a PACS "
                                   "(pynetdicom). Nothing is sent unless asked.")
    actions = p.add_subparsers(dest="pacs_action", metavar="ACTION")
    actions.required = True
    e = actions.add_parser("echo", help="check that a PACS answers (C-ECHO)")
    e.add_argument("--pacs", required=True, type=pacs_address, metavar="AET@HOST:PORT",
                   help="the PACS, e.g. ORTHANC@127.0.0.1:4242")
    _common(e, 10.0)
    s = actions.add_parser("store", help="send DICOM files or folders (C-STORE)")
    s.add_argument("paths", nargs="+", type=path_arg("input_path"), metavar="PATH",
                   help="DICOM files or folders (searched recursively), e.g. OUTDIR/dicom "
                        "from guidance verify")
    s.add_argument("--to", required=True, type=pacs_address, metavar="AET@HOST:PORT",
                   help="the PACS")
    _common(s, 30.0)
    f = actions.add_parser("fetch", help="retrieve a study (C-GET, or C-MOVE with --move)")
    f.add_argument("--from", dest="source", required=True, type=pacs_address,
                   metavar="AET@HOST:PORT", help="the PACS")
    f.add_argument("--study", required=True, metavar="UID",
                   help="StudyInstanceUID of the study to retrieve")
    f.add_argument("--out", required=True, type=path_arg("output_dir"), metavar="DIR",
                   help="folder for the retrieved files (one per object, named by "
                        "SOPInstanceUID); `guidance plan --ct DIR` reads it")
    f.add_argument("--move", action="store_true",
                   help="C-MOVE to ourselves instead of C-GET (the PACS must know our AE "
                        "title at this host and --port)")
    f.add_argument("--port", type=port_number, default=11113,
                   help="with --move: port of our storage SCP (default 11113)")
    _common(f, 60.0)
