"""Benchmarks of the live loop and its parts, as percentiles (JSON + histogram PNG).

One module per benchmark, each with a ``run_*`` function that measures, writes the JSON
and the PNG and returns a :class:`~guidance.bench.measure.BenchReport`, whose lines for
people are :func:`guidance.bench.report.report_lines`; ``guidance bench``
(:mod:`guidance.cli.bench`) parses the arguments, calls one and prints those lines:

- :mod:`~guidance.bench.transport`: OpenIGTLink transport (ours vs pyigtl) and the
  pipeline end to end, against a sender process (:mod:`~guidance.bench.sender`);
- :mod:`~guidance.bench.tracked`: tracked navigation on the real CT, pose in -> tip out;
- :mod:`~guidance.bench.segment`: segmentation per model backend and grid size;
- :mod:`~guidance.bench.anatomy`: the ultrasound nerve and vessel check per frame;
- :mod:`~guidance.bench.ct`: CT control slabs through the live loop;
- :mod:`~guidance.bench.render`: drawing a frame with its overlays (the GUI's drawing
  is passed in by the caller: this package does not import the GUI).

Errors are :class:`guidance.session.SessionError` (what cannot be set up here: missing
data, model, backend) or :class:`guidance.io.validate.InputError` (a refused value).
"""
