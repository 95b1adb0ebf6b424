"""The CUDA paths: bf16 autocast, fp16 loss scaling, torch.compile, SyncBatchNorm under NCCL,
batch views on the GPU, page-locked host batches, and runs resumed across devices.

Marked ``cuda`` and skipped where ``torch.cuda.is_available()`` is False, which includes CI:
run them on a machine with a GPU with ``pytest -m cuda`` (scripts/gpu/README.md). They use
the same tiny runs as the CPU tests (:mod:`helpers.runs`), on the GPU.
"""

from __future__ import annotations

import csv
import math
import socket
from pathlib import Path

import pytest
import torch
import torchvision
import yaml
from torch.nn.modules.batchnorm import _BatchNorm

from helpers.data import write_ham_layout
from helpers.runs import (
    interrupted_finetune,
    interrupted_pretrain,
    tiny_finetune_config,
    tiny_pretrain_config,
)
from medssl.augment import PRESETS, AugmentConfig, view_transform
from medssl.models.backbones import build_backbone
from medssl.models.checkpoint import load_backbone_state
from medssl.models.heads import SimCLRModel
from medssl.train import distributed as dist
from medssl.train.finetune import Finetuner, finetune
from medssl.train.pretrain import Pretrainer, pretrain

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs a CUDA GPU (torch.cuda.is_available() is False); run with -m cuda there",
    ),
]

LAST = Path("checkpoints") / "last.pt"


@pytest.fixture(scope="module")
def ham_root(tmp_path_factory):
    return write_ham_layout(tmp_path_factory.mktemp("ham"), n_lesions=30)


@pytest.fixture
def no_tf32(monkeypatch):
    """Full fp32 matrix and convolution arithmetic, for comparisons between two runs."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


def _log_rows(run: Path) -> list[dict[str, str]]:
    with (run / "log.csv").open(newline="") as fh:
        return [row for row in csv.DictReader(fh) if row["epoch"] != "0"]


def _saved_config(run: Path) -> dict:
    return yaml.safe_load((run / "config.yaml").read_text())


def _assert_backbone_loads_into_torchvision(run: Path) -> None:
    """The exported backbone is a plain torchvision ResNet-18 (no wrapper or compile prefix)."""
    model = torchvision.models.resnet18()
    missing, unexpected = model.load_state_dict(load_backbone_state(run), strict=False)
    assert not unexpected
    assert set(missing) == {"fc.weight", "fc.bias"}


def _tensors(state: dict) -> list[torch.Tensor]:
    return [v for v in state.values() if isinstance(v, torch.Tensor)]


# --- precision and compilation -------------------------------------------------------------


def test_bf16_autocast_pretraining_keeps_fp32_weights_and_a_finite_loss(ham_root, tmp_path):
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    trainer = Pretrainer(tiny_pretrain_config(ham_root, tmp_path / "run", device="cuda",
                                              precision="auto"))  # fmt: skip
    assert (trainer.cfg.precision, trainer.device.type) == ("bf16", "cuda")  # auto on a GPU
    conv = next(m for m in trainer.model.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    seen: set[torch.dtype] = set()
    conv.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
    metrics = trainer.fit()

    assert seen == {torch.bfloat16}  # the convolutions ran in bf16 ...
    assert math.isfinite(metrics["loss"])
    assert [int(r["skipped_steps"]) for r in _log_rows(tmp_path / "run")] == [0, 0]
    state = torch.load(tmp_path / "run" / LAST, map_location="cpu", weights_only=True)
    weights = [t for t in _tensors(state["model"]) if t.is_floating_point()]
    assert {t.dtype for t in weights} == {torch.float32}  # ... on fp32 master weights
    assert all(torch.isfinite(t).all() for t in weights)
    assert _saved_config(tmp_path / "run")["precision"] == "bf16"


def test_fp16_pretraining_scales_its_loss_and_resumes_on_the_same_scale(
    ham_root, tmp_path, monkeypatch
):
    """fp16 (``--precision auto`` on GPUs without bf16) trains through a GradScaler."""
    config = tiny_pretrain_config(ham_root, tmp_path / "run", device="cuda", precision="fp16")
    interrupted_pretrain(config, monkeypatch, at_epoch=1)
    state = torch.load(tmp_path / "run" / LAST, map_location="cpu", weights_only=True)
    scale = state["grad_scaler"]["scale"]
    assert 0 < scale <= 2.0**16
    trainer = Pretrainer(tiny_pretrain_config(ham_root, tmp_path / "run", device="cuda",
                                              precision="fp16", resume=True))  # fmt: skip
    assert trainer.guard.scaler is not None and trainer.guard.scaler.get_scale() == scale
    metrics = trainer.fit()
    assert math.isfinite(metrics["loss"])


def test_compiled_pretraining_saves_and_exports_plain_weights(ham_root, tmp_path):
    pytest.importorskip("triton")
    config = tiny_pretrain_config(ham_root, tmp_path / "run", device="cuda", epochs=1,
                                  compile=True, precision="auto")  # fmt: skip
    metrics = pretrain(config)
    assert math.isfinite(metrics["loss"])
    state = torch.load(tmp_path / "run" / LAST, map_location="cpu", weights_only=True)
    backbone, dim = build_backbone("resnet18")
    assert set(state["model"]) == set(SimCLRModel(backbone, dim).state_dict())  # no _orig_mod.
    _assert_backbone_loads_into_torchvision(tmp_path / "run")


# --- global batch norm under NCCL ------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sync_batchnorm_under_nccl_on_one_gpu_trains_like_one_process(
    ham_root, tmp_path, monkeypatch, no_tf32
):
    """A one-rank NCCL group takes the distributed path (SyncBatchNorm, DDP on the GPU).

    ``torchrun --nproc_per_node 1`` alone does not: ``init_from_env`` starts a process group
    only for ``WORLD_SIZE`` > 1, so the group is made here as a launcher would. With one rank
    SyncBatchNorm is batch norm and DDP averages over one process, so the run must train
    like the plain one, and its checkpoint must have the plain model's layout.
    """
    if not torch.distributed.is_nccl_available():
        pytest.skip("this torch build has no NCCL")
    plain = pretrain(tiny_pretrain_config(ham_root, tmp_path / "plain", device="cuda", epochs=1))
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0",
           "LOCAL_RANK": "0", "WORLD_SIZE": "1"}  # fmt: skip
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    torch.cuda.set_device(0)
    torch.distributed.init_process_group("nccl", init_method="env://")
    try:
        trainer = Pretrainer(
            tiny_pretrain_config(ham_root, tmp_path / "nccl", device="cuda", epochs=1)
        )
        backend = torch.distributed.get_backend()
        norms = [m for m in trainer.model.modules() if isinstance(m, _BatchNorm)]
        ddp = trainer.ddp
        metrics = trainer.fit()
    finally:
        dist.cleanup()

    assert backend == "nccl"
    assert norms and all(isinstance(m, torch.nn.SyncBatchNorm) for m in norms)
    assert isinstance(ddp, torch.nn.parallel.DistributedDataParallel) and ddp.device_ids == [0]
    assert metrics["loss"] == pytest.approx(plain["loss"], rel=1e-3)
    state = torch.load(tmp_path / "nccl" / LAST, map_location="cpu", weights_only=True)
    backbone, dim = build_backbone("resnet18")
    SimCLRModel(backbone, dim).load_state_dict(state["model"])  # strict: the plain layout
    _assert_backbone_loads_into_torchvision(tmp_path / "nccl")


# --- batch views on the GPU ----------------------------------------------------------------


def _image_batch(batch: int, size: int = 48) -> torch.Tensor:
    """``batch`` copies of one structured uint8 image (a colour gradient with texture), so
    that crops, flips, jitter and blur all change what the view looks like."""
    g = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0, 1, size)
    base = torch.stack([ramp.view(1, -1).expand(size, size), ramp.view(-1, 1).expand(size, size),
                        torch.full((size, size), 0.4)])  # fmt: skip
    noisy = (base + 0.15 * torch.rand(3, size, size, generator=g)).clamp(0, 1)
    return (noisy * 255).to(torch.uint8).expand(batch, -1, -1, -1).contiguous()


def _view_statistics(views: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-view numbers that each random step moves: channel means (jitter), spatial
    spread (crop scale, contrast), spread across channels (saturation, grayscale),
    left-right asymmetry (flip) and pixel-to-pixel detail (blur)."""
    v = views.float().cpu()
    half = v.shape[-1] // 2
    return {
        "mean_r": v[:, 0].mean((1, 2)),
        "mean_g": v[:, 1].mean((1, 2)),
        "mean_b": v[:, 2].mean((1, 2)),
        "spatial_std": v.std((2, 3)).mean(1),
        "channel_spread": v.std(1).mean((1, 2)),
        "left_minus_right": v[..., :half].mean((1, 2, 3)) - v[..., half:].mean((1, 2, 3)),
        "detail": (v[..., 1:] - v[..., :-1]).abs().mean((1, 2, 3)),
    }


def test_batch_views_on_cuda_are_cuda_tensors_of_the_cpu_family():
    pytest.importorskip("kornia")
    from scipy.stats import ks_2samp

    from medssl.batch_augment import BatchViewAugment

    config = PRESETS["derm"]
    cuda, cpu = BatchViewAugment(config, 32).to("cuda"), BatchViewAugment(config, 32)
    x = _image_batch(512)
    x_cuda = x.to("cuda").contiguous(memory_format=torch.channels_last)
    cpu_rng, cuda_rng = torch.get_rng_state(), torch.cuda.get_rng_state()
    first = cuda(x_cuda, generator=torch.Generator().manual_seed(7))

    assert first.device.type == "cuda" and first.dtype == torch.float32
    assert first.shape == (512, 3, 32, 32)
    assert first.is_contiguous(memory_format=torch.channels_last)
    assert torch.isfinite(first).all() and first.min() >= -2.2 and first.max() <= 2.7
    # the trainer's CPU generator seeds the GPU's draws, and no global RNG moves
    assert torch.equal(torch.get_rng_state(), cpu_rng)
    assert torch.equal(torch.cuda.get_rng_state(), cuda_rng)
    assert torch.equal(cuda(x_cuda, generator=torch.Generator().manual_seed(7)), first)
    assert not torch.equal(cuda(x_cuda, generator=torch.Generator().manual_seed(8)), first)

    # the same family: each statistic distributed alike on both devices (two-sample KS)
    on_cpu = _view_statistics(cpu(x, generator=torch.Generator().manual_seed(7)))
    on_cuda = _view_statistics(first)
    p_values = {k: ks_2samp(on_cpu[k].numpy(), on_cuda[k].numpy()).pvalue for k in on_cpu}
    assert min(p_values.values()) > 1e-4, p_values  # a step left out gives < 1e-7


def test_batch_views_with_randomness_off_equal_on_both_devices():
    """With every random step switched off a view is the resized, normalised image: the
    CUDA kernels must then compute what the CPU computes."""
    pytest.importorskip("kornia")
    from medssl.batch_augment import BatchViewAugment

    off = AugmentConfig().with_overrides({
        "crop_scale_min": 1.0, "crop_scale_max": 1.0, "hflip_p": 0.0, "jitter_p": 0.0,
        "grayscale_p": 0.0, "blur_p": 0.0, "rotation_degrees": 0.0,
    })  # fmt: skip
    x = _image_batch(4, size=32)
    on_cuda = BatchViewAugment(off, 32).to("cuda")(x.to("cuda"))
    on_cpu = BatchViewAugment(off, 32)(x)
    torch.testing.assert_close(on_cuda.cpu(), on_cpu, atol=1e-4, rtol=0)
    expected = torch.stack([view_transform(off, 32)(img) for img in x])
    torch.testing.assert_close(on_cuda.cpu(), expected, atol=1e-4, rtol=0)


# --- host batches ---------------------------------------------------------------------------


def test_host_batches_are_page_locked_for_a_gpu(ham_root, tmp_path):
    trainer = Pretrainer(tiny_pretrain_config(ham_root, tmp_path / "pre", device="cuda"))
    try:
        assert trainer.cfg.pin_memory is True and trainer.loader.pin_memory
        view_a, view_b, _ = next(iter(trainer.loader))
        assert view_a.is_pinned() and view_b.is_pinned()
        assert _saved_config(tmp_path / "pre")["pin_memory"] is True
    finally:
        trainer.run.close()
    unpinned = Pretrainer(tiny_pretrain_config(ham_root, tmp_path / "off", device="cuda",
                                               pin_memory=False))  # fmt: skip
    try:  # the option is honoured
        assert not next(iter(unpinned.loader))[0].is_pinned()
    finally:
        unpinned.run.close()

    tuner = Finetuner(tiny_finetune_config(ham_root, tmp_path / "ft", device="cuda"))
    try:
        loader = tuner._loader(0)
        images, _targets, _ = next(iter(loader))
        assert loader.pin_memory and images.is_pinned()
    finally:
        tuner.run.close()


# --- resuming across devices ----------------------------------------------------------------


def _device_types(tensors: list[torch.Tensor]) -> set[str]:
    return {t.device.type for t in tensors}


@pytest.mark.parametrize(("first", "then"), [("cuda", "cpu"), ("cpu", "cuda")])
def test_pretraining_resumes_on_the_other_device(ham_root, tmp_path, monkeypatch, first, then):
    run = tmp_path / "run"
    interrupted_pretrain(tiny_pretrain_config(ham_root, run, device=first), monkeypatch, at_epoch=1)
    # the checkpoint is written from the device that trained, and reads back without pickle
    saved = torch.load(run / LAST, weights_only=True)
    assert saved["epoch"] == 1 and _device_types(_tensors(saved["model"])) == {first}
    first_epoch = _log_rows(run)[0]

    trainer = Pretrainer(tiny_pretrain_config(ham_root, run, device=then, resume=True))
    assert trainer.start_epoch == 1 and trainer.device.type == then
    assert _device_types(list(trainer.model.parameters())) == {then}
    momentum = [s["momentum_buffer"] for s in trainer.optimizer.state.values()]
    assert momentum and _device_types(momentum) == {then}  # LARS state moved with the model
    assert trainer.cfg.pin_memory is (then == "cuda")
    metrics = trainer.fit()

    assert metrics["epochs"] == 2 and math.isfinite(metrics["loss"])
    rows = _log_rows(run)
    assert [r["epoch"] for r in rows] == ["1", "2"] and rows[0] == first_epoch
    assert trainer.scheduler.last_epoch == 2 * len(trainer.loader)  # the schedule went on
    final = torch.load(run / LAST, map_location="cpu", weights_only=True)
    assert final["epoch"] == 2
    assert all(torch.isfinite(t).all() for t in _tensors(final["model"]) if t.is_floating_point())
    assert _saved_config(run)["device"] == then
    _assert_backbone_loads_into_torchvision(run)


def test_bf16_finetuning_on_cuda_resumes_on_the_cpu_in_bf16(ham_root, tmp_path, monkeypatch):
    """The run keeps the precision it began with (``auto`` meant bf16 on the GPU)."""
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    out = tmp_path / "ft"
    config = tiny_finetune_config(ham_root, out, device="cuda", precision="auto")
    interrupted_finetune(config, monkeypatch, at_epoch=1)
    assert _saved_config(out)["precision"] == "bf16"

    metrics = finetune(tiny_finetune_config(ham_root, out, device="cpu", precision="auto",
                                            resume=True))  # fmt: skip
    saved = _saved_config(out)
    assert (saved["device"], saved["precision"]) == ("cpu", "bf16")
    assert [r["epoch"] for r in _log_rows(out)] == ["1", "2"]
    assert metrics["label_fraction"] == 1.0
    best = torch.load(out / "best.pt", map_location="cpu", weights_only=True)
    assert best["epoch"] in (1, 2)
    assert all(torch.isfinite(t).all() for t in _tensors(best["model"]) if t.is_floating_point())
