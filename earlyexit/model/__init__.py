"""What runs the network and counts its work: family adapters, the exact KV cache, the layer
loop with exits (``engine``), CUDA-graph replay, analytic FLOPs, model loading.

May import from ``earlyexit.data`` only.
"""
