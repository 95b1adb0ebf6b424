"""Tests for NTXentLoss and the torch.distributed helpers it relies on."""

from __future__ import annotations

import gc
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

from medssl import dist as mdist
from medssl.losses import NTXentLoss


def reference_ntxent(z_a: Tensor, z_b: Tensor, temperature: float) -> Tensor:
    """Deliberately naive NT-Xent: explicit loops over anchors and candidates."""
    rows = [r / torch.sqrt((r * r).sum()) for r in list(z_a) + list(z_b)]
    n = z_a.shape[0]
    losses = []
    for i in range(2 * n):
        positive = i + n if i < n else i - n
        candidates = [k for k in range(2 * n) if k != i]
        logits = torch.stack([(rows[i] * rows[k]).sum() / temperature for k in candidates])
        log_denominator = torch.log(torch.exp(logits).sum())
        losses.append(log_denominator - (rows[i] * rows[positive]).sum() / temperature)
    return torch.stack(losses).mean()


@pytest.mark.parametrize(
    ("n", "dim", "temperature"),
    [(1, 4, 0.1), (2, 3, 0.5), (5, 8, 0.1), (16, 32, 0.05), (7, 16, 1.0)],
)
def test_matches_naive_reference(n: int, dim: int, temperature: float) -> None:
    gen = torch.Generator().manual_seed(n * 100 + dim)
    z_a = torch.randn(n, dim, generator=gen) * 3
    z_b = torch.randn(n, dim, generator=gen)
    expected = reference_ntxent(z_a.double(), z_b.double(), temperature)
    got = NTXentLoss(temperature)(z_a, z_b)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected.item(), abs=1e-5, rel=1e-5)


@pytest.mark.parametrize(("n", "dim", "temperature"), [(2, 3, 0.5), (6, 8, 0.1), (9, 5, 0.07)])
def test_gradient_matches_reference(n: int, dim: int, temperature: float) -> None:
    gen = torch.Generator().manual_seed(7 * n + dim)
    base_a = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    base_b = base_a + 0.3 * torch.randn(n, dim, generator=gen, dtype=torch.float64)

    ref_a, ref_b = base_a.clone().requires_grad_(), base_b.clone().requires_grad_()
    reference_ntxent(ref_a, ref_b, temperature).backward()

    # float32 path, the one used in training
    a32, b32 = base_a.float().requires_grad_(), base_b.float().requires_grad_()
    NTXentLoss(temperature)(a32, b32).backward()
    torch.testing.assert_close(a32.grad.double(), ref_a.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b32.grad.double(), ref_b.grad, atol=1e-5, rtol=1e-5)

    # float64 stays float64, so the comparison can be much tighter
    a64, b64 = base_a.clone().requires_grad_(), base_b.clone().requires_grad_()
    NTXentLoss(temperature)(a64, b64).backward()
    torch.testing.assert_close(a64.grad, ref_a.grad, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(b64.grad, ref_b.grad, atol=1e-10, rtol=1e-10)


def test_gradcheck() -> None:
    gen = torch.Generator().manual_seed(3)
    z_a = torch.randn(4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    z_b = torch.randn(4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(NTXentLoss(0.2), (z_a, z_b))


@pytest.mark.parametrize(("n", "temperature"), [(1, 0.1), (4, 0.5), (6, 0.1)])
def test_known_value_orthogonal_pairs(n: int, temperature: float) -> None:
    # Both views of pair i are e_i (scaled: the loss must normalise). Each anchor sees its
    # positive at cosine 1 and 2n - 2 negatives at cosine 0, so every anchor's loss is
    # -log(e^(1/t) / (e^(1/t) + 2n - 2)) = log(1 + (2n - 2) e^(-1/t)).
    eye = torch.eye(n, 8)
    scales = torch.arange(1, n + 1, dtype=torch.float32).unsqueeze(1)
    loss = NTXentLoss(temperature)(eye * scales, eye * 2.5)
    expected = math.log(1 + (2 * n - 2) * math.exp(-1 / temperature))
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_half_precision_inputs_computed_in_float32() -> None:
    gen = torch.Generator().manual_seed(0)
    z_a = torch.randn(8, 16, generator=gen)
    z_b = torch.randn(8, 16, generator=gen)
    loss_fn = NTXentLoss(0.1)
    for dtype in (torch.bfloat16, torch.float16):
        a, b = z_a.to(dtype), z_b.to(dtype)
        got = loss_fn(a, b)
        assert got.dtype == torch.float32
        assert got.item() == pytest.approx(loss_fn(a.float(), b.float()).item(), abs=1e-6)
    # autocast must not push the similarity matmul down to bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = loss_fn(z_a, z_b)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(loss_fn(z_a, z_b).item(), abs=1e-6)


@pytest.mark.parametrize(
    ("shape_a", "shape_b", "match"),
    [
        ((4, 8), (5, 8), "same shape"),
        ((4, 8), (4, 7), "same shape"),
        ((4, 8), (4, 8, 1), "batch, dim"),
        ((8,), (8,), "batch, dim"),
        ((0, 8), (0, 8), "at least one pair"),
    ],
)
def test_bad_shapes_raise(shape_a: tuple, shape_b: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        NTXentLoss()(torch.randn(shape_a), torch.randn(shape_b))


def test_bad_temperature_raises() -> None:
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(temperature=0.0)


def test_helpers_without_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not mdist.is_distributed()
    assert mdist.rank() == 0
    assert mdist.world_size() == 1
    assert mdist.is_main_process()
    x = torch.randn(3, 2, requires_grad=True)
    assert mdist.gather_with_grad(x) is x
    assert mdist.all_reduce_mean(x) is x
    mdist.barrier()
    mdist.cleanup()
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert mdist.init_from_env() is False
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert mdist.init_from_env() is False
    assert not mdist.is_distributed()


# --------------------------------------------------------------------------------------
# 1 process vs 2 processes
#
# The model has no batch norm: torch.nn.SyncBatchNorm only runs on GPU/XPU (on CPU it
# raises "SyncBatchNorm expected input tensor to be on GPU ..."), and per-process batch
# statistics would legitimately differ from those of the combined batch.

WORLD = 2
TEMPERATURE = 0.2


def _make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 5))


def _worker(rank: int, init_method: str, out_dir: str, x_a: Tensor, x_b: Tensor) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=WORLD)
    try:
        result: dict[str, object] = {
            "rank": mdist.rank(),
            "world_size": mdist.world_size(),
            "is_main": mdist.is_main_process(),
        }
        per_rank = x_a.shape[0] // WORLD
        part = slice(rank * per_rank, (rank + 1) * per_rank)
        loss_fn = NTXentLoss(TEMPERATURE)

        # Explicit gradient averaging, as DDP does it.
        model = _make_model()
        loss = loss_fn(model(x_a[part]), model(x_b[part]))
        loss.backward()
        for p in model.parameters():
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= WORLD
        result["loss"] = mdist.all_reduce_mean(loss.detach())
        result["grads"] = [p.grad.clone() for p in model.parameters()]

        # The same through DDP: its backward hooks must coexist with the all_reduce that
        # gather_with_grad issues during the backward pass.
        ddp = nn.parallel.DistributedDataParallel(_make_model())
        ddp_loss = loss_fn(ddp(x_a[part]), ddp(x_b[part]))
        ddp_loss.backward()
        result["ddp_grads"] = [p.grad.clone() for p in ddp.parameters()]

        # gather_with_grad on its own: values in rank order, gradients summed over ranks.
        x = torch.full((3, 2), float(rank + 1), requires_grad=True)
        gathered = mdist.gather_with_grad(x)
        weights = torch.arange(WORLD * 6, dtype=torch.float32).reshape(WORLD * 3, 2) * (rank + 1)
        (gathered * weights).sum().backward()
        result["gathered"] = gathered.detach()
        result["gather_grad"] = x.grad

        mdist.barrier()
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
        # DDP's reducer and gloo's pending work hold the group: freed before it is
        # destroyed, or a rank can abort at exit ("terminate called without an active
        # exception", once in a CI run under load)
        del ddp, ddp_loss, model, loss, gathered
        gc.collect()
        mdist.barrier()
    finally:
        mdist.cleanup()


def test_two_processes_match_one_process_on_combined_batch(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(1)
    x_a = torch.randn(8, 6, generator=gen)
    x_b = x_a + 0.5 * torch.randn(8, 6, generator=gen)

    init_method = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_worker, args=(init_method, str(tmp_path), x_a, x_b), nprocs=WORLD, join=True)

    model = _make_model()
    loss = NTXentLoss(TEMPERATURE)(model(x_a), model(x_b))
    loss.backward()
    expected_grads = [p.grad for p in model.parameters()]

    weights = torch.arange(WORLD * 6, dtype=torch.float32).reshape(WORLD * 3, 2)
    for r in range(WORLD):
        got = torch.load(tmp_path / f"rank{r}.pt")
        assert (got["rank"], got["world_size"], got["is_main"]) == (r, WORLD, r == 0)
        assert got["loss"].item() == pytest.approx(loss.item(), abs=1e-5)
        for name in ("grads", "ddp_grads"):
            assert len(got[name]) == len(expected_grads)
            for g, e in zip(got[name], expected_grads, strict=True):
                torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)
        expected_gathered = torch.cat([torch.full((3, 2), float(k + 1)) for k in range(WORLD)])
        torch.testing.assert_close(got["gathered"], expected_gathered)
        # each rank's weights are weights * (rank + 1): the sum over ranks is weights * 3
        torch.testing.assert_close(got["gather_grad"], 3 * weights[r * 3 : (r + 1) * 3])


def test_losses_import_nothing_from_the_training_layer() -> None:
    """losses.py sits below train/: its distributed helpers come from medssl.dist."""
    import subprocess
    import sys

    code = (
        "import sys, medssl.losses; "
        "print(sorted(m for m in sys.modules if m.startswith('medssl.train')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
