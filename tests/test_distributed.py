"""Two gloo processes train like one process on the same global batch.

Global negatives (NT-Xent over gathered projections), global batch norm (GlobalBatchNorm on
CPU, since torch's SyncBatchNorm refuses CPU tensors) and the rank-sharded pair sampler
together make a 2-process step equal a 1-process step on the combined batch.
"""

from __future__ import annotations

import contextlib
import csv
import os
import socket
from dataclasses import replace

import pytest
import torch
import torch.multiprocessing as mp

from helpers.data import write_ham_layout
from helpers.runs import tiny_pretrain_config
from medssl.losses import NTXentLoss
from medssl.models.backbones import build_backbone
from medssl.models.heads import SimCLRModel
from medssl.train import distributed as dist
from medssl.train.pretrain import PretrainConfig, Pretrainer, pretrain


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


def _model(name: str = "resnet18") -> SimCLRModel:
    torch.manual_seed(0)
    backbone, dim = build_backbone(name, image_size=16, patch_size=8 if "vit" in name else 0)
    return SimCLRModel(backbone, dim)


def _views() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 16, 16, generator=g), torch.randn(8, 3, 16, 16, generator=g)


def _grad_worker(rank: int, port: int, out: str, name: str) -> None:
    _join_world(rank, 2, port)
    model = dist.convert_batchnorm_for_distributed(_model(name))
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


@pytest.mark.parametrize("backbone", ["resnet18", "timm:test_vit"])
def test_one_step_gradients_match_one_process(tmp_path, backbone):
    """ResNet + projection head with global BN and gathered negatives, wrapped in DDP; a
    timm ViT (layer norm: only its projection head has batch norm) the same way."""
    model = _model(backbone)
    a, b = _views()
    z_a, z_b = model(torch.cat([a, b])).chunk(2)
    loss = NTXentLoss(0.1)(z_a, z_b)
    loss.backward()
    out = tmp_path / "ddp.pt"
    mp.spawn(_grad_worker, args=(_free_port(), str(out), backbone), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=True)
    torch.testing.assert_close(ddp["loss"], loss.detach(), rtol=1e-5, atol=1e-6)
    # a gradient that is zero in exact arithmetic is rounding noise at any tolerance: the
    # ViT's final norm.bias, a constant shift the head's batch norm removes
    floor = 1e-2 * max(p.grad.abs().max().item() for p in model.parameters())
    for name, p in model.named_parameters():
        scale = max(p.grad.abs().max().item(), floor)
        torch.testing.assert_close(
            ddp["grads"][name], p.grad, rtol=1e-3, atol=1e-4 * scale, msg=name
        )


def _config(root, out) -> PretrainConfig:
    # a small learning rate keeps the comparison about correctness: NT-Xent on a toy batch
    # with a large step amplifies float summation-order noise (1e-6) into visible drift.
    # Per-sample views: each image's view is seeded by its row, whatever the world size;
    # batch views are seeded per rank's batch, so they reproduce only at a fixed world size.
    return tiny_pretrain_config(
        root, out, lr=0.001, channels_last=False, augment_mode="per-sample"
    )


class _Interrupted(Exception):
    """Raised in place of the second epoch: the run stops with one epoch checkpointed."""


def _stop_before_second_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    real = Pretrainer.train_epoch

    def train_epoch(self, epoch, max_steps=None):  # noqa: ANN001, ANN202
        if epoch == 1:
            raise _Interrupted
        return real(self, epoch, max_steps)

    monkeypatch.setattr(Pretrainer, "train_epoch", train_epoch)


def _pretrain_worker(rank: int, port: int, root, out, resume: bool, interrupt: bool) -> None:
    _join_world(rank, 2, port)
    with pytest.MonkeyPatch.context() as mp_:
        if interrupt:
            _stop_before_second_epoch(mp_)
        with contextlib.suppress(_Interrupted):
            pretrain(replace(_config(root, out), resume=resume))
    dist.cleanup()


def _two_processes(root, out, resume: bool = False, interrupt: bool = False) -> None:
    mp.spawn(
        _pretrain_worker, args=(_free_port(), root, out, resume, interrupt), nprocs=2, join=True
    )


def _losses(run) -> list[float]:
    with open(run / "log.csv") as fh:
        return [float(row["loss"]) for row in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def single_run(tmp_path_factory) -> tuple:
    """A tiny HAM-layout dataset and the loss curve of an uninterrupted 1-process run."""
    tmp = tmp_path_factory.mktemp("single")
    root = write_ham_layout(tmp / "ham", n_lesions=30)
    pretrain(_config(root, tmp / "single"))
    return root, _losses(tmp / "single")


def test_pretrain_loss_curve_matches_one_process(tmp_path, single_run):
    root, single = single_run
    _two_processes(root, tmp_path / "ddp")
    double = _losses(tmp_path / "ddp")
    assert len(single) == len(double) == 2
    assert double == pytest.approx(single, rel=1e-3)
    assert (tmp_path / "ddp" / "backbone.safetensors").is_file()  # rank 0 exported


def test_resume_across_world_sizes(tmp_path, single_run, monkeypatch):
    """A checkpoint from 2 processes resumes on 1 and vice versa, continuing the same run.

    The pair sampler draws one global order per epoch whatever the world size, and the
    checkpoint holds the unwrapped model, so only float summation order differs.
    """
    root, single = single_run
    _two_processes(root, tmp_path / "two-then-one", interrupt=True)
    assert len(_losses(tmp_path / "two-then-one")) == 1
    pretrain(replace(_config(root, tmp_path / "two-then-one"), resume=True))

    with monkeypatch.context() as m:
        _stop_before_second_epoch(m)
        with pytest.raises(_Interrupted):
            pretrain(_config(root, tmp_path / "one-then-two"))
    assert len(_losses(tmp_path / "one-then-two")) == 1
    _two_processes(root, tmp_path / "one-then-two", resume=True)

    for run in ("two-then-one", "one-then-two"):
        assert _losses(tmp_path / run) == pytest.approx(single, rel=1e-3), run
        assert (tmp_path / run / "backbone.safetensors").is_file()
