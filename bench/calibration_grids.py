"""Calibration's grids at the 100k case's shapes, timed in process (CPU and wall).

The grids of 12 sources of 3,072 neurons (8,192 calibration tokens each) and of a
65,536-feature TopK SAE (k 32 over the same tokens), from synthetic activations: the
part of calibration that is not the forward pass. Run it against two installs side by
side (e.g. PYTHONPATH pointing at an older copy of the package) to compare them.

Usage:
  .venv/bin/python bench/calibration_grids.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import time

import torch

N_LAYERS, D_MLP, D_SAE, SAE_K = 12, 3072, 65536, 32
SEQUENCES, CTX, HIST_BINS, TOP_K = 64, 128, 512, 20


def main() -> None:
    from actscope.indexer.accumulate.calibrate import _dense_grid, _sparse_grid
    from actscope.indexer.kinds.neuron import NeuronKind
    from actscope.indexer.kinds.sae import SaeKind

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    neurons = torch.nn.functional.gelu(torch.randn(SEQUENCES, CTX, D_MLP))
    n_values = SEQUENCES * (CTX - 1) * SAE_K
    units = torch.randint(0, D_SAE, (n_values,))
    values = torch.rand(n_values) * 4
    _dense_grid(neurons[:2], D_MLP, HIST_BINS, TOP_K, NeuronKind.band_levels)  # the kernel compiled or loaded
    for _ in range(args.rounds):
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(N_LAYERS):
            _dense_grid(neurons, D_MLP, HIST_BINS, TOP_K, NeuronKind.band_levels)
        dense = (time.perf_counter() - wall, time.process_time() - cpu)
        wall, cpu = time.perf_counter(), time.process_time()
        _sparse_grid([(units, values)], D_SAE, HIST_BINS, TOP_K, SaeKind.band_levels)
        sparse = (time.perf_counter() - wall, time.process_time() - cpu)
        print(
            f"{N_LAYERS} x {D_MLP:,} neurons: {dense[0]:.2f} s wall, {dense[1]:.2f} s CPU; "
            f"{D_SAE:,} SAE features: {sparse[0]:.2f} s wall, {sparse[1]:.2f} s CPU"
        )


if __name__ == "__main__":
    main()
