"""What decides an exit: head architectures and placement, self-supervised head training,
confidence metrics, threshold calibration, per-head statistics and the exit policy.

May import from ``earlyexit.data`` and ``earlyexit.model``.
"""
