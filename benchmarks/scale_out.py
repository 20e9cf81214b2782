"""Scale-out: samples per second on 1 and 2 processes, and memory when streaming from disk.

**Throughput.** The MNIST-8k VAE of ``benchmarks/train_speed.py`` (784-400-50,
Bernoulli, Adam 1e-3) with the same *global* batch (``--batch``, default 256):
``pvae.fit`` in this process, then ``pvae.fit(strategy="ddp_spawn", devices=P)``
for P = 1 and 2 (gloo on loopback, one thread per process, per-process batch
``batch / P``). Samples per second = training rows / median epoch seconds
(epochs after the first; process start-up and spawning are not counted), with
``OMP_NUM_THREADS=1`` for the spawned ranks; the in-process run with 2 threads
is the whole machine used the other way.
Scaling efficiency = throughput(P = 2) / (2 x throughput(P = 1)). On a 2-core
machine the two ranks share the machine with nothing else; the all-reduce of
the gradients (1.3 M parameters, 5 MB) runs on the same cores.

**Memory.** One epoch over a float32 array of ``--stream-mb`` MB (default 2048; rows
of 784 binary pixels) in a fresh process each way: streamed from a memory map
(``ArrayDataset(numpy.load(path, mmap_mode="r")).loader()``) against loaded into
memory (``numpy.load(path)``, then a tensor). Reported: the resident set's growth
over the epoch (peak VmRSS, sampled every 5 ms, minus the VmRSS before it).

    .venv/bin/python benchmarks/scale_out.py
    .venv/bin/python benchmarks/scale_out.py --epochs 3 --stream-mb 512      # quick
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

import pvae
from pvae.data import ArrayDataset, mnist_10k_split
from pvae.models import VAE

DEFAULT_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def _vae() -> VAE:
    torch.manual_seed(0)
    return VAE(784, latent_dim=50, hidden_dims=(400,), likelihood="bernoulli")


def _samples_per_second(history, n: int) -> float:
    seconds = [row["seconds"] for row in history[1:]] or [history[0]["seconds"]]
    return n / statistics.median(seconds)


def throughput(x: torch.Tensor, batch: int, args) -> list[tuple[str, int, float]]:
    rows = []
    result = pvae.fit(_vae(), x, num_epochs=args.epochs, batch_size=batch, progress=False,
                      diagnostics_every=None, seed=0)
    rows.append(("pvae.fit, this process", 1, _samples_per_second(result.history, len(x))))
    torch.set_num_threads(2)
    result = pvae.fit(_vae(), x, num_epochs=args.epochs, batch_size=batch, progress=False,
                      diagnostics_every=None, seed=0)
    rows.append(("pvae.fit, this process, 2 threads", 1, _samples_per_second(result.history, len(x))))
    torch.set_num_threads(1)
    for devices in (1, 2):
        result = pvae.fit(_vae(), x, num_epochs=args.epochs, batch_size=batch // devices, seed=0,
                          strategy="ddp_spawn", devices=devices)
        rows.append((f"pvae.fit(strategy='ddp_spawn', devices={devices})", devices,
                     _samples_per_second(result.history, len(x))))
    return rows


# -- memory (a fresh process per measurement: python scale_out.py --memory-worker MODE PATH) --
def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def memory_worker(mode: str, path: str) -> None:
    torch.set_num_threads(1)
    vae = VAE(784, latent_dim=50, hidden_dims=(400,))
    pvae.fit(vae, torch.zeros(256, 784), num_epochs=1, progress=False, diagnostics_every=None)  # lazy set-up
    before = peak = _rss_mb()
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.wait(0.005):
            peak = max(peak, _rss_mb())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    tick = time.perf_counter()
    if mode == "stream":
        data = ArrayDataset(np.load(path, mmap_mode="r")).loader(batch_size=256)
    else:
        data = torch.from_numpy(np.load(path))
    pvae.fit(vae, data, num_epochs=1, batch_size=256, progress=False, diagnostics_every=None)
    seconds = time.perf_counter() - tick
    stop.set()
    watcher.join()
    print(json.dumps({"growth_mb": max(peak, _rss_mb()) - before, "seconds": seconds}))


def memory(args) -> list[tuple[str, float, float]]:
    rows_n = int(args.stream_mb * 2**20 / (784 * 4))
    path = Path(tempfile.mkdtemp(prefix="pvae-scale-out-")) / "pixels.npy"
    data = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows_n, 784))
    for start in range(0, rows_n, 1 << 16):
        stop = min(rows_n, start + (1 << 16))
        data[start:stop] = np.random.default_rng(start).random((stop - start, 784)) < 0.2
    data.flush()
    del data
    out = []
    for mode in ("stream", "load"):
        done = subprocess.run([sys.executable, __file__, "--memory-worker", mode, str(path)], capture_output=True,
                              text=True, timeout=3600)
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-3000:])
        res = json.loads(done.stdout.strip().splitlines()[-1])
        out.append((mode, res["growth_mb"], res["seconds"]))
    path.unlink()
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--memory-worker":
        memory_worker(sys.argv[2], sys.argv[3])
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(DEFAULT_MNIST))
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batches", type=int, nargs="+", default=[256, 1024],
                   help="global batch sizes (each split over the processes)")
    p.add_argument("--stream-mb", type=float, default=2048.0)
    p.add_argument("--skip-memory", action="store_true")
    args = p.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"  # spawned ranks: one thread each (else Lightning picks cores / ranks)
    torch.set_num_threads(1)
    train, _ = mnist_10k_split(args.data_dir, binarize="static")
    x = train.x
    print(f"torch {torch.__version__}, MNIST-8k ({len(x)} rows), VAE 784-400-50, {args.epochs} epochs (median "
          f"of epochs 2..{args.epochs}), 1 thread per process")
    print("\n| global batch | run | processes | samples / s | vs devices=1 | scaling efficiency |")
    print("|---|---|---|---|---|---|")
    for batch in args.batches:
        rows = throughput(x, batch, args)
        base = rows[2][2]
        for name, procs, sps in rows:
            eff = f"{sps / (procs * base):.2f}" if procs > 1 else ""
            print(f"| {batch} | {name} | {procs} | {sps:.0f} | {sps / base:.2f}x | {eff} |", flush=True)
    if args.skip_memory:
        return
    print(f"\nmemory: one epoch over a {args.stream_mb:.0f} MB float32 array (fresh process each)")
    print("\n| data | resident set growth (MB) | epoch seconds |")
    print("|---|---|---|")
    for mode, growth, seconds in memory(args):
        name = "memory map, ArrayDataset loader" if mode == "stream" else "numpy.load into memory"
        print(f"| {name} | {growth:.0f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
