"""The procedure-room overlay (PyQt5): live view, planning view, verification view.

Only this package imports Qt; the pipeline runs headless without it. The modules without
``qt`` in their role (:mod:`display`, :mod:`projection`, :mod:`live_model`,
:mod:`feed`, :mod:`planes`) are plain numpy/cv2 and are tested without a display.
"""
