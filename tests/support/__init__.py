"""Helpers of the test suite (not tests): generated data, the golden fixtures' rules and
replay, NumPy references, small training scripts, TF1 checkpoint writing."""
