"""What is run: lm-eval tasks resolved to their data (offline too) and checked, the early-exit
lm-eval model, held-out scoring, the heads' training text, and generation workloads.

Imports data, model, exits and decoding; never measure or harness.
"""
