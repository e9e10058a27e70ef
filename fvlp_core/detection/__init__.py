"""Face detection for the clean stage: decoding, detector backends, crops, per-image measurements."""
