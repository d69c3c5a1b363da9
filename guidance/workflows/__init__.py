"""The before/after-procedure jobs that the CLI runs: calibrations (with live pose capture
over OpenIGTLink), planning, verification on a control CT, model training and evaluation,
PACS networking.

Each module reads its inputs, calls the domain packages (``calibration``,
``guidance.planning``, ``guidance.training``, ``guidance.pacs``...), writes its files and
returns a record of what it did; it never prints (the CLI prints, from that record) and
its refusals are :class:`WorkflowError` (a :class:`~guidance.session.SessionError`) or a
loader's :class:`~guidance.io.validate.InputError`: one line naming what.
"""

from guidance.workflows.shared import Progress, WorkflowError, no_progress

__all__ = ["Progress", "WorkflowError", "no_progress"]
