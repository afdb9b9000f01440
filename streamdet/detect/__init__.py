"""Detect: the front end (log-mel), the scripted model and its artifact, the calibrated score, the hysteresis, and the per-source Detector that joins them."""
