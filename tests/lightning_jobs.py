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
import pyro
import pyro.distributions as pdist
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DistributedSampler

import pvae
from pvae.data import ArrayDataset
from pvae.infer import TrainStep, elbo_terms, make_objective
from pvae.lightning import (DistributedTrainingError, PvaeModule, distributed_bounds, fit_distributed, load_checkpoint,
                            step_seed)
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
    odd = {n: distributed_bounds(vae, x[:n], "elbo", num_particles=2, batch_size=16, seed=3) for n in ODD_SIZES}
    if rank == 0:
        torch.save({"iwae": iwae, "elbo": elbo, "log_evidence": evidence, "odd": odd}, out)
    dist.destroy_process_group()


ODD_SIZES = (63, 33, 9, 1)  # 4 chunks, the last of 15 rows; 3 chunks (rank 1 one); one chunk (rank 1 none)


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
    single["odd"] = {n: distributed_bounds(vae, x[:n], "elbo", num_particles=2, batch_size=16, seed=3)
                     for n in ODD_SIZES}
    other_seed = distributed_bounds(vae, x, "iwae", num_particles=8, batch_size=16, seed=4)
    torch.save({"two": torch.load(two, weights_only=True), "one": single, "other_seed": other_seed}, out)


class PointVAE(torch.nn.Module):
    """A latent-variable program whose ELBO has no noise: the guide is a point mass
    ``Delta(encoder(x))``, so the ELBO is ``log p(x, z = encoder(x))``. Two runs that see the
    same rows agree to float rounding, whatever noise they draw."""

    def __init__(self, features: int = 12, latent: int = 2) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.latent = latent
        self.encoder, self.decoder = torch.nn.Linear(features, latent), torch.nn.Linear(latent, features)

    def model(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", pdist.Normal(x.new_zeros(self.latent), 1.0).to_event(1))
            pyro.sample("x", pdist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", pdist.Delta(self.encoder(x), event_dim=1))


def _one_process(program, steps: list[torch.Tensor], x: torch.Tensor) -> list[float]:
    """pvae.fit's step and Adam on each global batch ``x[rows]`` in turn; the loss totals."""
    params = [p for p in program.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=LR, fused=True)  # pvae.fit's Adam
    step = TrainStep(program, make_objective("elbo"), params)
    totals = []
    for rows in steps:
        with pyro.validation_enabled(False):
            totals.append(float(step((x[rows],), 1.0).loss))
        opt.step()
    return totals


def padded(out: Path) -> None:
    """65 training and 21 validation rows on 2 ranks: Lightning's DistributedSampler repeats a
    row of each to even out the shards (rank 1's last training batch is that repeat alone).
    Against one process taking, at every step, the data's own rows of both ranks' batches
    (each datum once an epoch): the same parameters, epoch losses and validation ELBO."""
    n, steps_per_epoch = 65, 5  # 33 rows per rank: batches of 8, 8, 8, 8, 1
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(n + 21, 12, generator=g) < 0.4).float()
    train, valid = x[:n], x[n:]
    program = PointVAE()
    result = fit_distributed(program, train, strategy="ddp_spawn", devices=2, num_epochs=2, batch_size=B,
                             learning_rate=LR, validation_data=valid, diagnostics_every=None)
    steps = []
    for epoch in range(2):
        shards = []
        for rank in range(2):  # the sampler Lightning injects (shuffled, seed 0); positions >= n repeat rows
            sampler = DistributedSampler(range(n), num_replicas=2, rank=rank, shuffle=True, seed=0)
            sampler.set_epoch(epoch)
            shards.append(list(sampler)[:len(range(rank, n, 2))])  # the data's own rows of this rank's share
        for k in range(steps_per_epoch):
            steps.append(torch.tensor(shards[0][k * B:(k + 1) * B] + shards[1][k * B:(k + 1) * B]))
    ref = PointVAE()
    totals = _one_process(ref, steps, train)
    with torch.no_grad(), pyro.validation_enabled(False):
        val = elbo_terms(program.model, program.guide, valid)
    diff = max(float((a - b).abs().max()) for a, b in zip(program.state_dict().values(), ref.state_dict().values()))
    per_epoch = [steps[:steps_per_epoch], steps[steps_per_epoch:]]
    torch.save({"diff": diff, "rows_per_epoch": [sorted(torch.cat(e).tolist()) for e in per_epoch],
                "last_step_rows": [len(e[-1]) for e in per_epoch],
                "history_loss": [r["loss"] for r in result.history],
                "ref_epoch_loss": [sum(totals[:steps_per_epoch]) / n, sum(totals[steps_per_epoch:]) / n],
                "val": {k: result.history[-1][f"val_{k}"] for k in ("elbo", "reconstruction", "kl")},
                "val_ref": {"elbo": float(val.elbo.mean()), "reconstruction": float(val.reconstruction.mean()),
                            "kl": float(val.kl.mean())}}, out)


class MeanProgram(torch.nn.Module):
    """``x ~ Normal(decoder(z), 1)`` with a point-mass guide at a learned ``z``: the program fits
    the data's mean, and no noise enters the loss."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.decoder, self.z = torch.nn.Linear(1, 4), torch.nn.Parameter(torch.zeros(1))

    def model(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", pdist.Normal(x.new_zeros(1), 1.0).to_event(1))
            pyro.sample("x", pdist.Normal(self.decoder(z), 1.0).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", pdist.Delta(self.z.expand(x.shape[0], 1), event_dim=1))


class RankRows(torch.utils.data.Sampler):
    """Rank r reads the rows ``rows[r]`` (in order), whatever the epoch."""

    def __init__(self, rows: list[list[int]]) -> None:
        self.rows = rows

    def __iter__(self):
        return iter(self.rows[torch.distributed.get_rank()])

    def __len__(self) -> int:
        return len(self.rows[0])


DIVERGE_LR, DIVERGE_FACTOR = 0.5, 1.5


def diverge(out: Path) -> None:
    """Rank 0 reads rows of zeros, rank 1 rows of eights: as the shared mean moves toward 4,
    rank 0's own loss per datum rises past 1.5x its first value while the loss of the global
    batch (the one process's) falls. The divergence guard must decide on the global batch, on
    every rank alike: the run finishes, with one process's epoch losses."""
    import json
    from datetime import timedelta

    from lightning.pytorch.strategies import DDPStrategy

    x = torch.zeros(16, 4)
    x[8:] = 8.0
    rows = [list(range(8)), list(range(8, 16))]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=4, sampler=RankRows(rows))
    root = Path(tempfile.mkdtemp(prefix="pvae-diverge-"))
    module = PvaeModule(MeanProgram(), learning_rate=DIVERGE_LR, divergence_factor=DIVERGE_FACTOR)
    trainer = lightning.Trainer(max_epochs=3, strategy=DDPStrategy(start_method="spawn", process_group_backend="gloo",
                                                                   timeout=timedelta(seconds=30)),
                                devices=2, accelerator="cpu", use_distributed_sampler=False, logger=False,
                                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                                default_root_dir=str(root), num_sanity_val_steps=0)
    message = ""
    try:
        trainer.fit(module, loader)
    except Exception as err:  # noqa: BLE001 (the test prints it)
        message = f"{type(err).__name__}: {err}"
    history = json.loads((root / "pvae_history.json").read_text()) if (root / "pvae_history.json").is_file() else []
    steps = [torch.tensor([*rows[0][k:k + 4], *rows[1][k:k + 4]]) for _ in range(3) for k in (0, 4)]
    ref = MeanProgram()
    params = [p for p in ref.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=DIVERGE_LR, fused=True)
    step = TrainStep(ref, make_objective("elbo"), params)
    own = [[], []]  # each rank's own loss per datum at every step, for the record
    totals = []
    for batch in steps:
        with torch.no_grad(), pyro.validation_enabled(False):
            for r in range(2):
                own[r].append(float(elbo_terms(ref.model, ref.guide, x[batch[4 * r:4 * r + 4]]).elbo.mean().neg()))
        with pyro.validation_enabled(False):
            totals.append(float(step((x[batch],), 1.0).loss))
        opt.step()
    torch.save({"message": message, "history_loss": [r["loss"] for r in history],
                "ref_epoch_loss": [(totals[2 * e] + totals[2 * e + 1]) / 16 for e in range(3)],
                "ref_step_loss": [t / 8 for t in totals], "own": own}, out)


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
    {"equal": equal, "bounds": bounds, "killed": killed, "stream": stream, "padded": padded,
     "diverge": diverge}[sys.argv[1]](Path(sys.argv[2]))
