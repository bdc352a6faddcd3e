"""Text for head training, calibration and the default runs: corpora, token streams, data paths.

The bottom layer: imports nothing else from ``earlyexit``.
"""
