"""peftc.testing: torch twins of peftc's models, shared by the test suite and the benchmarks.

Test and benchmark code only: peftc itself never imports this package (tests/test_layering.py
checks), so its modules may use torch and transformers, which peftc does not depend on.
"""
