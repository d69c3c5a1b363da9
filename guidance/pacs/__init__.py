"""The patient's file: DICOM objects of the verification and the PACS network.

* :mod:`guidance.pacs.source` -- the control CT's own DICOM headers (identity, frame of
  reference, slice order): every object written copies them, nothing is invented.
* :mod:`guidance.pacs.objects` -- the verification as DICOM with highdicom: a
  Comprehensive 3D SR "Measurement Report" (TID 1500), a SEG of the needle, and the
  report's key images as Secondary Capture.
* :mod:`guidance.pacs.network` -- C-ECHO, C-STORE, C-GET / C-MOVE with pynetdicom.
"""
