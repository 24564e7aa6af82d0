"""Benchmarks of atop_core's speed and memory, run by `python -m bench [NAME ...]` (see
bench/README.md). Not part of the test suite: tests/test_speed_equivalence.py checks that the
speed-ups it measures leave results unchanged."""
