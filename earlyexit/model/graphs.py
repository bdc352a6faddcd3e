"""Replaying the engine's segments and the exit heads as captured graphs.

Why: at batch 1 an eager decode step is bound by Python and kernel launches, not by
bandwidth (DESIGN.md, "Measured on an H100"), so a segment (the layers between two heads)
and a head are each captured once per shape and replayed. Why not
`torch.compile(mode="reduce-overhead")`: it failed on transformers' static cache there,
and a segment's shapes change with the row count and KV length, which would recompile;
here each (segment, rows, KV bucket) is captured explicitly with `torch.cuda.graph`.

A graph reads its inputs from fixed ("static") tensors and writes a fixed output tensor,
so every call copies its inputs in, replays, and copies the output out: the engine keeps
exited tokens' hidden states across later replays of the same graph. KV lengths are
rounded up to a power of two (masked keys cost a little attention, not a capture per
length). `ReplayCapture` is the CPU stand-in the tests use: it re-runs the captured
closure on the static tensors, with the same copy-in / copy-out contract, so it catches
inputs that bypass the static tensors, but not CUDA-only capture errors.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Protocol

import torch

Body = Callable[[], torch.Tensor]


class Graph(Protocol):
    """A captured computation: `replay()` recomputes `output` from the static inputs."""

    output: torch.Tensor

    def replay(self) -> None: ...


class CudaGraph:
    """A `torch.cuda.CUDAGraph` of `body`, warmed up on a side stream as PyTorch requires."""

    def __init__(self, body: Body, warmup: int = 2) -> None:
        # Warm-up runs outside capture: lazy initialisation (cuBLAS handles, kernel choice)
        # must not happen during capture. It executes the body for real, which is safe here
        # because the static inputs already hold the call's real inputs (KV writes repeat).
        stream = _warmup_stream(torch.cuda.current_device())
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                body()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = body()

    def replay(self) -> None:
        self.graph.replay()


@cache
def _warmup_stream(device_index: int) -> torch.cuda.Stream:
    # One side stream for every warm-up: cuBLAS keeps a workspace per stream, so a fresh
    # stream per capture would hold up to the stream pool's 32 of them.
    return torch.cuda.Stream(device_index)


class ReplayCapture:
    """CPU stand-in for `CudaGraph` with the same static-tensor contract (for tests)."""

    def __init__(self, body: Body) -> None:
        self.body = body
        self.output = body().clone()

    def replay(self) -> None:
        self.output.copy_(self.body())


Capture = Callable[[Body], Graph]


def default_capture(device: torch.device | str) -> Capture:
    """`CudaGraph` on a CUDA device; anything else has no graphs to capture."""
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"CUDA graphs need a CUDA device, got {device.type!r}")
    return CudaGraph


def kv_bucket(length: int, max_len: int, smallest: int = 64) -> int:
    """The KV length a graph attends over: `length` rounded up to a power of two, capped."""
    if length > max_len:
        raise ValueError(f"KV length {length} exceeds the cache of {max_len}")
    bucket = max(smallest, 1 << (length - 1).bit_length())
    return min(bucket, max_len)


class GraphCache:
    """Captured graphs by key, each with its static input tensors; captures on first use."""

    def __init__(self, capture: Capture) -> None:
        self.capture = capture
        self.graphs: dict[tuple, tuple[tuple[torch.Tensor, ...], Graph]] = {}
        self.replays = 0

    def run(
        self,
        key: tuple,
        inputs: tuple[torch.Tensor, ...],
        fn: Callable[..., torch.Tensor],
    ) -> torch.Tensor:
        """`fn(*inputs)`, computed by replaying the key's graph (captured on first use).

        The inputs are copied into the key's static tensors and the output is copied out.
        `fn` may read nothing that changes between calls except its arguments.
        """
        entry = self.graphs.get(key)
        if entry is None:
            static = tuple(x.clone() for x in inputs)
            entry = self.graphs[key] = (static, self.capture(lambda: fn(*static)))
        static, graph = entry
        for dst, src in zip(static, inputs, strict=True):
            dst.copy_(src)
        graph.replay()
        self.replays += 1
        return graph.output.clone()

    def __len__(self) -> int:
        return len(self.graphs)
