"""Distributed jobs for tests/test_lightning.py, each run as a subprocess (spawned ranks need a
``__main__`` guard and a time bound): ``python tests/lightning_jobs.py JOB OUT``. Each job
writes its measurements to ``OUT`` (``torch.save`` of a dict of tensors and numbers)."""

from __future__ import annotations

import copy
import os
import sys
import tempfile
from pathlib import Path

import lightning
import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DistributedSampler

import pvae
from pvae.data import ArrayDataset
from pvae.infer import TrainStep, make_objective
from pvae.lightning import DistributedTrainingError, distributed_bounds, fit_distributed, load_checkpoint, step_seed
from pvae.models import VAE

LR, SEED, B = 1e-2, 5, 8


def _data() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return (torch.rand(64, 12, generator=g) < 0.4).float()


def _vae() -> VAE:
    torch.manual_seed(1)
    return VAE(12, latent_dim=2, hidden_dims=(8,))


def equal(out: Path) -> None:
    """Two ranks with batch B against one process with batch 2B (two micro-batches, each
    drawing the noise its rank drew): same parameters, same per-datum ELBO."""
    x = _data()
    vae = _vae()
    init = copy.deepcopy(vae.state_dict())
    loader = ArrayDataset(x).loader(batch_size=B)  # Lightning shards it with a DistributedSampler (seed 0)
    result = fit_distributed(vae, loader, strategy="ddp_spawn", devices=2, num_epochs=2, learning_rate=LR,
                             seed=SEED, kl_warmup=2)
    captured = _vae()  # the captured step of pvae.fit(compile=True), inside each rank
    fit_distributed(captured, loader, strategy="ddp_spawn", devices=2, num_epochs=2, learning_rate=LR, seed=SEED,
                    compile=True, kl_warmup=2)
    ref = _vae()
    ref.load_state_dict(init)
    params = [p for p in ref.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=LR, fused=True)  # pvae.fit's Adam
    step = TrainStep(ref, make_objective("elbo"), params)
    losses = []
    shards = [DistributedSampler(range(64), num_replicas=2, rank=rank, shuffle=True, seed=0) for rank in range(2)]
    for s in range(2 * 4):  # 2 epochs x 4 steps of 8 rows per rank
        epoch, k = divmod(s, 4)
        grads, loss = [], 0.0
        for rank in range(2):
            shards[rank].set_epoch(epoch)
            rows = torch.tensor(list(shards[rank]))[k * B:(k + 1) * B]
            torch.manual_seed(step_seed(SEED, rank, s))
            kl_weight = min(1.0, (epoch + k / 4) / 2)  # KL warm-up over 2 epochs, per step
            loss += float(step((x[rows],), kl_weight).loss) / (2 * B)
            grads.append([p.grad.clone() for p in params])
        for p, g0, g1 in zip(params, *grads):
            p.grad = (g0 + g1) / 2
        opt.step()
        losses.append(loss)
    diff = max(float((a - b).abs().max()) for a, b in zip(vae.state_dict().values(), ref.state_dict().values()))
    diff_captured = max(float((a - b).abs().max())
                        for a, b in zip(captured.state_dict().values(), ref.state_dict().values()))
    moved = max(float((a - b).abs().max()) for a, b in zip(vae.state_dict().values(), init.values()))
    elbo_ddp = distributed_bounds(vae, x, "elbo", num_particles=4, batch_size=16, seed=0)
    elbo_ref = distributed_bounds(ref, x, "elbo", num_particles=4, batch_size=16, seed=0)
    torch.save({"diff": diff, "diff_captured": diff_captured, "moved": moved, "elbo_ddp": elbo_ddp, "elbo_ref": elbo_ref,
                "history_loss": [r["loss"] for r in result.history],
                "ref_epoch_loss": [sum(losses[:4]) / 4, sum(losses[4:]) / 4]}, out)


def _bounds_rank(rank: int, world: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    vae = _vae()
    x = torch.cat([_data(), _data()[:36]])  # 100 rows: 7 chunks of 16, the last partial
    iwae = distributed_bounds(vae, x, "iwae", num_particles=8, batch_size=16, seed=3)
    elbo = distributed_bounds(vae, x, "elbo", num_particles=2, batch_size=16, seed=3)
    evidence = distributed_bounds(vae, x, "log_evidence", num_particles=64, batch_size=16, seed=3)
    if rank == 0:
        torch.save({"iwae": iwae, "elbo": elbo, "log_evidence": evidence}, out)
    dist.destroy_process_group()


def bounds(out: Path) -> None:
    """distributed_bounds on two ranks (torch.multiprocessing, gloo) and on one process."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    two = str(out) + ".two"
    mp.spawn(_bounds_rank, args=(2, port, two), nprocs=2, join=True)
    vae = _vae()
    x = torch.cat([_data(), _data()[:36]])
    single = {"iwae": distributed_bounds(vae, x, "iwae", num_particles=8, batch_size=16, seed=3),
              "elbo": distributed_bounds(vae, x, "elbo", num_particles=2, batch_size=16, seed=3),
              "log_evidence": distributed_bounds(vae, x, "log_evidence", num_particles=64, batch_size=16, seed=3)}
    other_seed = distributed_bounds(vae, x, "iwae", num_particles=8, batch_size=16, seed=4)
    torch.save({"two": torch.load(two, weights_only=True), "one": single, "other_seed": other_seed}, out)


class KillRank(lightning.Callback):
    """Ends rank 1's process abruptly at the start of an epoch (a machine lost mid-run)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, module) -> None:
        if trainer.global_rank == 1 and trainer.current_epoch == self.epoch:
            os._exit(7)


def killed(out: Path) -> None:
    """A rank dies in epoch 2: a clear error, the epoch-1 checkpoint loadable, resume finishes the run."""
    x = _data()
    ckpt = Path(tempfile.mkdtemp(prefix="pvae-killed-"))
    message = ""
    try:
        fit_distributed(_vae(), x, strategy="ddp_spawn", devices=2, num_epochs=4, batch_size=B, learning_rate=LR,
                        seed=SEED, checkpoint_dir=ckpt, callbacks=[KillRank(2)], timeout=30)
    except DistributedTrainingError as err:
        message = str(err)
    fresh = _vae()
    saved = load_checkpoint(ckpt, fresh)
    resumed = _vae()
    result = fit_distributed(resumed, x, strategy="ddp_spawn", devices=2, num_epochs=4, batch_size=B,
                             learning_rate=LR, seed=SEED, checkpoint_dir=ckpt, resume=True, validation_data=x[:16])
    torch.save({"message": message, "saved_epoch": int(saved["epoch"]), "saved_rows": len(saved["pvae_history"]),
                "epochs": [int(r["epoch"]) for r in result.history],
                "finite": all(np.isfinite(r["loss"]) for r in result.history),
                "val_elbo": [r.get("val_elbo") for r in result.history]}, out)


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class _PeakRSS:
    """The largest VmRSS seen, sampled every 5 ms by a thread, while in the ``with`` block."""

    def __enter__(self) -> "_PeakRSS":
        import threading

        self.peak, self._stop = _rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_mb())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def stream(out: Path) -> None:
    """One epoch over a memory-mapped .npy of SIZE_MB (argv[3]; rows of 64 float32): the growth
    of the resident set over the epoch, with the pages handed back (ArrayDataset) and without."""
    size_mb = float(sys.argv[3]) if len(sys.argv) > 3 else 300.0
    rows = int(size_mb * 2**20 / (64 * 4))
    path = Path(tempfile.mkdtemp(prefix="pvae-stream-")) / "x.npy"
    data = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, 64))
    for start in range(0, rows, 1 << 18):  # written in blocks, never held whole
        stop = min(rows, start + (1 << 18))
        data[start:stop] = (np.random.default_rng(start).random((stop - start, 64)) < 0.3)
    data.flush()
    del data
    os.system(f"cat {path} > /dev/null")  # in the page cache, as a second epoch would find it
    vae = VAE(64, latent_dim=2, hidden_dims=(16,))
    pvae.fit(vae, torch.zeros(64, 64), num_epochs=1, progress=False, diagnostics_every=None)  # lazy set-up
    results = {"file_mb": path.stat().st_size / 2**20, "rows": rows}
    for release in (True, False):
        dataset = ArrayDataset(np.load(path, mmap_mode="r"))
        if not release:
            dataset._read_mapped = lambda a, index: np.array(a[index])  # a plain memory map's reads
        loader = dataset.loader(batch_size=4096, shuffle=True)
        before = _rss_mb()
        with _PeakRSS() as peak:
            result = pvae.fit(vae, loader, num_epochs=1, progress=False, diagnostics_every=None)
        results[f"growth_{'released' if release else 'kept'}"] = peak.peak - before
        results["loss"] = result.history[-1]["loss"]
        del dataset, loader
    torch.save(results, out)
    path.unlink()


if __name__ == "__main__":
    torch.set_num_threads(1)
    {"equal": equal, "bounds": bounds, "killed": killed, "stream": stream}[sys.argv[1]](Path(sys.argv[2]))
