"""Two gloo processes train like one process on the same global batch.

Global negatives (NT-Xent over gathered projections), global batch norm (GlobalBatchNorm on
CPU, since torch's SyncBatchNorm refuses CPU tensors) and the rank-sharded pair sampler
together make a 2-process step equal a 1-process step on the combined batch.
"""

from __future__ import annotations

import csv
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from conftest import write_ham_layout
from medssl.data.spec import DataSpec
from medssl.losses import NTXentLoss
from medssl.models.backbones import build_backbone
from medssl.models.heads import SimCLRModel
from medssl.train import distributed as dist
from medssl.train.pretrain import PretrainConfig, pretrain


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join_world(rank: int, world: int, port: int) -> None:
    os.environ.update(
        {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
         "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world)}
    )  # fmt: skip
    torch.set_num_threads(1)
    dist.init_from_env()


def _model() -> SimCLRModel:
    torch.manual_seed(0)
    backbone, dim = build_backbone("resnet18")
    return SimCLRModel(backbone, dim)


def _views() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 16, 16, generator=g), torch.randn(8, 3, 16, 16, generator=g)


def _grad_worker(rank: int, port: int, out: str) -> None:
    _join_world(rank, 2, port)
    model = dist.convert_batchnorm_for_distributed(_model())
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    a, b = _views()
    z_a, z_b = ddp(torch.cat([a[rank::2], b[rank::2]])).chunk(2)
    loss = NTXentLoss(0.1)(z_a, z_b)
    loss.backward()
    total = dist.all_reduce_mean(loss.detach())
    if rank == 0:
        grads = {k: p.grad for k, p in model.named_parameters()}
        torch.save({"loss": total, "grads": grads}, out)
    dist.cleanup()


def test_one_step_gradients_match_one_process(tmp_path):
    """ResNet + projection head with global BN and gathered negatives, wrapped in DDP."""
    model = _model()
    a, b = _views()
    z_a, z_b = model(torch.cat([a, b])).chunk(2)
    loss = NTXentLoss(0.1)(z_a, z_b)
    loss.backward()
    out = tmp_path / "ddp.pt"
    mp.spawn(_grad_worker, args=(_free_port(), str(out)), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=True)
    torch.testing.assert_close(ddp["loss"], loss.detach(), rtol=1e-5, atol=1e-6)
    for name, p in model.named_parameters():
        scale = p.grad.abs().max().item()
        torch.testing.assert_close(
            ddp["grads"][name], p.grad, rtol=1e-3, atol=1e-4 * scale, msg=name
        )


def _config(root, out) -> PretrainConfig:
    # a small learning rate keeps the comparison about correctness: NT-Xent on a toy batch
    # with a large step amplifies float summation-order noise (1e-6) into visible drift
    return PretrainConfig(
        data=DataSpec("ham10000", str(root)).to_dict(), out=str(out), method="micle",
        backbone="resnet18", image_size=16, epochs=2, batch_size=8, warmup_epochs=1,
        num_workers=0, progress=False, lr=0.001, cache_dir=str(root / "cache"),
        channels_last=False,
    )  # fmt: skip


def _pretrain_worker(rank: int, port: int, root, out) -> None:
    _join_world(rank, 2, port)
    pretrain(_config(root, out))
    dist.cleanup()


def _losses(run) -> list[float]:
    with open(run / "log.csv") as fh:
        return [float(row["loss"]) for row in csv.DictReader(fh)]


def test_pretrain_loss_curve_matches_one_process(tmp_path):
    root = write_ham_layout(tmp_path / "ham", n_lesions=30)
    pretrain(_config(root, tmp_path / "single"))
    mp.spawn(_pretrain_worker, args=(_free_port(), root, tmp_path / "ddp"), nprocs=2, join=True)
    single, double = _losses(tmp_path / "single"), _losses(tmp_path / "ddp")
    assert len(single) == len(double) == 2
    assert double == pytest.approx(single, rel=1e-3)
    assert (tmp_path / "ddp" / "backbone.safetensors").is_file()  # rank 0 exported
