"""Render random markers with every available backend, check each against the reference, time them.

    python python/op_demo.py [--batch 256 --markers 64 --size 28]
"""

import argparse
import time

import torch

import splatkern


def timed(fn, repeats=20):
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--markers", type=int, default=64)
    parser.add_argument("--size", type=int, default=28)
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    shape = (args.batch, args.markers)
    means = torch.rand(*shape, 2, generator=gen) * args.size
    sigmas = 0.5 + 2 * torch.rand(*shape, generator=gen)
    amps = torch.rand(*shape, generator=gen)
    render = {b: (lambda b=b: splatkern.splat_render(means, sigmas, amps, height=args.size, width=args.size,
                                                     backend=b, return_index=True))
              for b in splatkern.available_backends("cpu")}
    ref_image, ref_index = render["reference"]()
    print(f"B={args.batch} N={args.markers} {args.size}x{args.size}, float32, {torch.get_num_threads()} threads")
    for backend, fn in render.items():
        image, index = fn()
        ms = timed(fn, repeats=5 if backend == "reference" else 20)
        print(f"{backend:>10}: forward {ms:8.2f} ms | max |image - reference| {(image - ref_image).abs().max():.2e}"
              f" | winner agrees on {(index == ref_index).float().mean():.4%} of pixels")


if __name__ == "__main__":
    main()
