"""What the decoding probes share: a best-of-rounds timer, a state with a cache of ``context`` tokens to
time steps on, and the results file's ``meta`` block. (A probe run as ``python benchmarks/probes/X.py``
finds this module beside it.)"""

import os
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from speechllm.generation import open_state


def best_ms(fn: Callable[[], object], repeats: int) -> float:
    """Best of five rounds of ``repeats`` calls (after three to warm up), ms per call."""
    for _ in range(3):
        fn()
    rounds = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        rounds.append((time.perf_counter() - t0) / repeats * 1e3)
    return min(rounds)


def cached_state(llm: nn.Module, context: int, room: int = 8):
    """The engine's state for ``llm`` after a prompt of ``context`` tokens, with ``room`` more columns."""
    ids = torch.arange(100, 100 + context)[None]
    return open_state(llm, llm.get_input_embeddings()(ids), torch.ones_like(ids), torch.arange(context)[None],
                      capacity=context + room)


def one_step(state, token: int = 5) -> Callable[[], torch.Tensor]:
    """A decode step that leaves the cache as it found it (fed, then rolled back): its logits."""
    tokens = torch.tensor([token])

    def step() -> torch.Tensor:
        logits = state.step(tokens)
        state.rollback(1, state.logits)
        return logits
    return step


def meta(script: str, **fields) -> dict:
    """The command that made a results file, the given fields, and the machine's state."""
    return {"command": " ".join([f"python benchmarks/probes/{script}", *sys.argv[1:]]), **fields,
            "torch": torch.__version__, "cpus": os.cpu_count(), "load_average": os.getloadavg(),
            "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
