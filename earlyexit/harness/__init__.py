"""One experiment end to end: the runner's stages, the artifact cache, the results store,
loggers and reports.

The top layer: may import from every other ``earlyexit`` subpackage; nothing imports it.
"""
