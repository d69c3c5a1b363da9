"""Real-time interventional guidance assistant (research software, not a medical device).

Sub-packages: ``guidance.io`` (OpenIGTLink, DICOM/NIfTI, recording), ``guidance.sim``
(simulated scanner), ``guidance.pipeline`` (the live loop), ``guidance.planning``
(trajectory planning and safety checks), ``guidance.cli`` (the ``guidance`` command).
"""

__version__ = "0.1.0"
