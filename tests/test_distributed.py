"""Two gloo processes train exactly like one process on the same global batch."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from conftest import write_ham_layout

from medssl.data.spec import DataSpec
from medssl.train.pretrain import PretrainConfig, pretrain


def _config(root, out) -> PretrainConfig:
    return PretrainConfig(
        data=DataSpec("ham10000", str(root)).to_dict(), out=str(out), method="micle",
        backbone="resnet18", image_size=16, epochs=2, batch_size=8, warmup_epochs=1,
        num_workers=0, progress=False, lr=0.3, cache_dir=str(root / "cache"),
        channels_last=False,
    )  # fmt: skip


def _worker(rank: int, world: int, port: int, root, out, result_file) -> None:
    os.environ.update(
        {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
         "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world)}
    )  # fmt: skip
    torch.set_num_threads(1)
    metrics = pretrain(_config(root, out))
    if rank == 0:
        with open(result_file, "w") as fh:
            json.dump(metrics, fh)
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process(tmp_path):
    root = write_ham_layout(tmp_path / "ham", n_lesions=30)
    single = pretrain(_config(root, tmp_path / "single"))
    result = tmp_path / "ddp.json"
    mp.spawn(
        _worker, args=(2, _free_port(), root, tmp_path / "ddp", str(result)), nprocs=2, join=True
    )
    double = json.loads(result.read_text())
    # the same global pairs and augmentations, global negatives and global batch norm:
    # the loss curve and the final weights agree up to float summation order
    assert double["loss"] == pytest.approx(single["loss"], rel=1e-4)
    from medssl.models.checkpoint import load_backbone_state

    a = load_backbone_state(tmp_path / "single")
    b = load_backbone_state(tmp_path / "ddp")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=1e-4, msg=key)
    log_single = (tmp_path / "single" / "log.csv").read_text().splitlines()
    log_double = (tmp_path / "ddp" / "log.csv").read_text().splitlines()
    assert len(log_single) == len(log_double) == 3
