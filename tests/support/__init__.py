"""Helpers shared by test files in different folders: ``tests/`` is on ``sys.path``, so ``from support.moto import
moto_server`` works from any of them."""
