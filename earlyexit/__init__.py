"""earlyexit: how much inference early-exit heads and self-speculative decoding save, at what cost.

The subpackages follow the data flow, and each imports only from those before it:
``data`` (text) <- ``model`` (runs the network, counts its work) <- ``exits`` (decides an exit)
<- ``decoding`` (the modes) <- ``harness`` (one experiment: cache, measure, evaluate, record).
``tests/test_layering.py`` checks that direction.
"""
