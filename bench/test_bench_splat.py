"""pytest-benchmark: forward and forward+backward of every available implementation at the first
CPU headline size. Run with ``pytest bench/ --benchmark-only`` (not part of the unit tests in tests/)."""

from __future__ import annotations

import pytest
import torch

from bench.cases import implementations, make_case, modes_of
from bench.harness import synchronize
from bench.presets import HEADLINE as HEADLINE_SIZES

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
HEADLINE = HEADLINE_SIZES[0]
IMPLEMENTATIONS, EXCLUDED = implementations(DEVICE)
ROUNDS = 10


@pytest.mark.parametrize("implementation, mode", [(name, mode) for name in IMPLEMENTATIONS for mode in modes_of(name)])
def test_splat_render(benchmark, implementation, mode):
    torch._dynamo.reset()
    case = make_case(implementation, mode, HEADLINE, DEVICE)

    def call():
        case()
        synchronize(DEVICE)

    benchmark.group = f"{HEADLINE.label()} {mode} on {DEVICE.type}"
    benchmark.extra_info.update(pairs=HEADLINE.pairs, excluded=EXCLUDED)
    # one warm-up round: torch.compile's first call compiles
    benchmark.pedantic(call, rounds=ROUNDS, iterations=1, warmup_rounds=1)
