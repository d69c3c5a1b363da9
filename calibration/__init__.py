"""Pure math (numpy/scipy only, no I/O): pivot and spin calibration, point registration with expected TRE, ultrasound probe calibration, temporal calibration, C-arm projection."""
