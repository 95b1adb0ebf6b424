"""Tiny training runs for tests."""

from __future__ import annotations

from pathlib import Path


def tiny_pretrain_config(root: Path, out: Path, **overrides):  # noqa: ANN201 - PretrainConfig
    """A seconds-long MICLe run on a :func:`helpers.data.write_ham_layout` dataset (16 px, batch 8).

    fp32, because tests compare runs bit for bit (resume, world sizes) and oneDNN's bf16
    kernels on the CPU are not deterministic; ``precision="auto"`` is tested on its own.
    On the CPU also on a GPU machine, for the same reason (``tests/test_cuda.py`` passes
    ``device="cuda"``).
    """
    from medssl.data.spec import DataSpec
    from medssl.train.pretrain import PretrainConfig

    settings = dict(
        data=DataSpec("ham10000", str(root)).to_dict(), out=str(out), method="micle",
        backbone="resnet18", image_size=16, epochs=2, batch_size=8, warmup_epochs=1,
        num_workers=0, progress=False, lr=0.3, cache_dir=str(Path(root) / "cache"),
        precision="fp32", device="cpu",
    )  # fmt: skip
    settings.update(overrides)
    return PretrainConfig(**settings)


def tiny_finetune_config(root: Path, out: Path, **overrides):  # noqa: ANN201 - FinetuneConfig
    """A seconds-long fine-tune from random init on a ``write_ham_layout`` dataset (16 px,
    batch 8, fp32 and CPU for the reasons given in :func:`tiny_pretrain_config`)."""
    from medssl.data.spec import DataSpec
    from medssl.train.finetune import FinetuneConfig

    settings = dict(
        data=DataSpec("ham10000", str(root)).to_dict(), out=str(out), image_size=16, epochs=2,
        batch_size=8, num_workers=0, progress=False, precision="fp32", device="cpu",
        cache_dir=str(Path(root) / "cache"),
    )  # fmt: skip
    settings.update(overrides)
    return FinetuneConfig(**settings)


def interrupted_pretrain(config, monkeypatch, at_epoch: int) -> None:  # noqa: ANN001
    """Run the PretrainConfig ``config`` and kill it (KeyboardInterrupt) when epoch
    ``at_epoch`` starts, as a Ctrl-C or kill would; ``monkeypatch`` is pytest's fixture."""
    from medssl.train.pretrain import Pretrainer, pretrain

    _interrupted(Pretrainer, pretrain, config, monkeypatch, at_epoch)


def interrupted_finetune(config, monkeypatch, at_epoch: int) -> None:  # noqa: ANN001
    """:func:`interrupted_pretrain` for a FinetuneConfig."""
    from medssl.train.finetune import Finetuner, finetune

    _interrupted(Finetuner, finetune, config, monkeypatch, at_epoch)


def _interrupted(trainer, run, config, monkeypatch, at_epoch: int) -> None:  # noqa: ANN001
    import pytest

    original = trainer.train_epoch

    def crash(self, epoch, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if epoch == at_epoch:
            raise KeyboardInterrupt
        return original(self, epoch, *args, **kwargs)

    monkeypatch.setattr(trainer, "train_epoch", crash)
    with pytest.raises(KeyboardInterrupt):
        run(config)
    monkeypatch.setattr(trainer, "train_epoch", original)
