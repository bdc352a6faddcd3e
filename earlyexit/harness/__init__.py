"""One experiment end to end: the runner, its caches, timing and decode measurement, lm-eval
tasks and the early-exit lm-eval model, baselines, the results store, loggers and reports.

The top layer: may import from every other ``earlyexit`` subpackage; nothing imports it.
"""
