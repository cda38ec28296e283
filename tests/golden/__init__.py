"""Golden payloads: one fixed update encoded with every named preset, committed with its bytes.

See :mod:`tests.golden.regenerate` for the files and how to regenerate them.
"""
