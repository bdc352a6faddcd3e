"""How it is timed and priced: the interleaved protocol and paired bootstrap, timers, the cost
profile and model, heads chosen by priced time, and outside baselines.

Imports every layer below it (tasks included); never harness.
"""
