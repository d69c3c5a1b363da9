"""CT control scans: a slab of contiguous slices in, the needle in 3D, the patient's
motion, the safety decision, the procedure timeline (see :mod:`guidance.ctscan.result`)."""

from guidance.ctscan.result import CtScanResult, PatientMotion, SlabError, SlabNeedle

__all__ = ["CtScanResult", "PatientMotion", "SlabError", "SlabNeedle"]
