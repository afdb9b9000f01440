"""Capture: sources (replay, microphone) write samples into a preallocated ring and say what they are with markers; decoding and resampling."""
