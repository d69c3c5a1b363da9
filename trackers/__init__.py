"""Where the needle and tools are: tracked-tool streams, the transform graph,
staleness, needle tracking from images (line fit + filter). Depends on ``calibration``
only."""
