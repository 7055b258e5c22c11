"""Capture real traffic of the three protocols and replay it against fresh backends: ``python -m testbeds.replay``."""
