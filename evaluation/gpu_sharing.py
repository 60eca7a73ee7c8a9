"""How well several small training jobs share one GPU: time-sliced (the default) or under CUDA MPS.

Each of N processes runs the same small-kernel training loop (12 Linear(384, 384) + ReLU layers on a 2,560 x 384
batch, AdamW), the shape of work a MiniLM student's step launches; the script prints the steps per second of each
process and their sum. Run it once plainly and once after ``nvidia-cuda-mps-control -d`` to decide how to pack
`evaluation/grid.py`'s jobs (RESULTS.md, issue 7, second GPU session). Needs a CUDA GPU.

Usage:
    python evaluation/gpu_sharing.py 8 400          # 8 processes, 400 timed steps each
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import time


def train_loop(queue, steps: int) -> None:
    import torch

    torch.set_num_threads(1)
    layers = [torch.nn.Linear(384, 384).to("cuda") for _ in range(12)]
    optimizer = torch.optim.AdamW([p for layer in layers for p in layer.parameters()], lr=1e-4)
    batch = torch.randn(64 * 40, 384, device="cuda")

    def step() -> None:
        hidden = batch
        for layer in layers:
            hidden = torch.relu(layer(hidden))
        hidden.sum().backward()
        optimizer.step()
        optimizer.zero_grad()

    for _ in range(20):  # warm-up: CUDA context, kernels, allocator
        step()
    torch.cuda.synchronize()
    start = time.time()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    queue.put(steps / (time.time() - start))


def main(argv: list[str]) -> None:
    processes, steps = int(argv[0]), int(argv[1])
    context = mp.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=train_loop, args=(queue, steps)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    rates = [queue.get() for _ in workers]
    for worker in workers:
        worker.join()
    print(
        f"{processes} processes: steps/s per process min {min(rates):.1f} max {max(rates):.1f}, "
        f"together {sum(rates):.1f}",
        flush=True,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
