"""The training loop: class-balanced batches -> embedder -> loss, validation, checkpoints.

`Trainer` sees only the *training* classes of a data set: it draws a class-disjoint
validation fold from them (``data.val_fold`` of ``data.num_folds``) and selects the best
epoch on validation ``eval.val_metric`` (MAP@R by default). The test split is not
reachable from here: `fairdml.train.final.final_test` evaluates a finished run once.

Everything needed to continue a killed run exactly is saved at the end of every epoch
(model, optimiser, schedule, loss state, random generators, history, early-stopping
state); ``resume=True`` continues from there and gives the same weights as an
uninterrupted run on CPU with a fixed seed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from fairdml import losses as loss_registry
from fairdml.config import ConfigError, RunConfig, save_config, to_dict
from fairdml.data.table import SampleTable
from fairdml.train import checkpoint, distributed
from fairdml.train.embeddings import compute_embeddings
from fairdml.train.optim import build_optimizer, build_scheduler, parameter_groups
from fairdml.train.progress import TrainingProgress

LAST = "checkpoints/last.pt"
BEST = "checkpoints/best.pt"


class RunDirectoryError(RuntimeError):
    """The run directory cannot be used as asked (it would overwrite earlier results)."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - seeds code that uses the global generator
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", distributed.local_rank())
        return torch.device("cpu")
    return torch.device(name)


def build_model(config: RunConfig) -> torch.nn.Module:
    from fairdml.models import create_embedder

    return create_embedder(**dataclasses.asdict(config.model))


def build_loss(config: RunConfig, num_classes: int, embedding_dim: int) -> torch.nn.Module:
    params = dict(config.loss.params)
    if config.loss.miner is not None:
        from fairdml.losses import miners

        params["miner"] = miners.create(config.loss.miner, **config.loss.miner_params)
    try:
        return loss_registry.create(config.loss.name, num_classes=num_classes,
                                    embedding_dim=embedding_dim, **params)
    except (KeyError, TypeError) as error:
        raise ConfigError(f"config section 'loss': {error.args[0]}") from None


def build_transforms(config: RunConfig, model: torch.nn.Module, *, train: bool):
    """The data preset's transform, following the trunk's declared preprocessing.

    With the ``standard`` preset, the trunk's mean, std and default crop/resize sizes apply
    (config values win when set). Trunks whose convention is not a plain normalisation of
    RGB in [0, 1] (BN-Inception: BGR, 0-255, mean subtraction) get their own ``normalize``
    as the last step.
    """
    from torchvision import transforms as T

    from fairdml.data import transforms

    options: dict[str, Any] = {"train": train, "crop_size": config.data.crop_size,
                               "resize_size": config.data.resize_size,
                               "in_channels": config.model.in_channels}
    preprocessing = getattr(model, "preprocessing", None)
    final_step = None
    if config.data.transform == "standard" and preprocessing is not None:
        if options["crop_size"] is None:
            options["crop_size"] = preprocessing.crop_size
        if options["resize_size"] is None:
            options["resize_size"] = preprocessing.resize_size
        if preprocessing.is_plain_normalize:
            options["mean"], options["std"] = preprocessing.mean, preprocessing.std
        else:
            channels = config.model.in_channels
            options["mean"], options["std"] = (0.0,) * channels, (1.0,) * channels
            final_step = preprocessing.normalize
    transform = transforms.create(config.data.transform, **options)
    if final_step is not None:
        transform = transforms.Preprocess(transform.name,
                                          T.Compose([transform.pipeline, final_step]),
                                          transform.image_mode)
    return transform


class Trainer:
    """Trains one embedder on the training classes of ``table`` and keeps the best epoch."""

    def __init__(self, config: RunConfig, train_table: SampleTable, run_dir: str | Path, *,
                 resume: bool = False) -> None:
        from fairdml.data.dataset import TableDataset, labels_to_indices
        from fairdml.data.samplers import ClassBalancedBatchSampler
        from fairdml.data.splits import fold_tables

        if (train_table.split != "train").any():
            raise ValueError("Trainer takes the training split only; the test split is sealed "
                             "until the final test (fairdml.train.final.final_test)")
        self.config = config
        self.run_dir = Path(run_dir)
        self.device = resolve_device(config.train.device)
        if config.train.threads is not None:
            torch.set_num_threads(config.train.threads)
        self._prepare_run_directory(resume)
        seed_everything(config.train.seed)

        if config.data.val_fold is None:
            self.fit_table, self.val_table = train_table, None
        else:
            self.fit_table, self.val_table = fold_tables(
                train_table, config.data.num_folds, config.data.val_fold,
                seed=config.data.fold_seed)
        targets, classes = labels_to_indices(self.fit_table.labels)
        self.classes = classes
        label_to_index = {label: i for i, label in enumerate(classes.tolist())}

        self.model = build_model(config).to(self.device)
        self.loss = build_loss(config, len(classes), self.model.embedding_dim).to(self.device)
        self.train_dataset = TableDataset(self.fit_table, build_transforms(config, self.model,
                                                                           train=True),
                                          label_to_index=label_to_index)
        self.val_dataset = None if self.val_table is None else TableDataset(
            self.val_table, build_transforms(config, self.model, train=False))
        self.sampler = ClassBalancedBatchSampler(
            targets, config.data.classes_per_batch, config.data.samples_per_class,
            seed=config.train.seed, num_replicas=distributed.world_size(),
            rank=distributed.rank())
        self.loader = DataLoader(self.train_dataset, batch_sampler=self.sampler,
                                 num_workers=config.data.num_workers,
                                 pin_memory=self.device.type == "cuda",
                                 persistent_workers=config.data.num_workers > 0)
        groups = dict(self.model.parameter_groups())
        groups["loss"] = list(self.loss.parameters())
        self.optimizer = build_optimizer(
            parameter_groups(groups, config.optim, config.loss,
                             loss_registry.lr_multiplier(self.loss)), config.optim)
        self.scheduler = build_scheduler(self.optimizer, config.optim, config.train.epochs)
        self.use_amp = config.train.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.epoch = 0
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"epoch": None, "value": -math.inf, "metrics": {}}
        self.stale_validations = 0
        self.stopped_early = False
        if resume:
            self._resume()

    # ------------------------------------------------------------------ run directory
    def _prepare_run_directory(self, resume: bool) -> None:
        last = self.run_dir / LAST
        if resume:
            if not last.is_file():
                raise RunDirectoryError(f"cannot resume: {last} does not exist")
            return
        if last.exists() or (self.run_dir / "metrics.json").exists():
            raise RunDirectoryError(
                f"run directory {self.run_dir} already holds a run; pass --resume to continue "
                "it or choose another --out (nothing was overwritten)")
        if distributed.is_main():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.config, self.run_dir / "config.yaml")

    def _resume(self) -> None:
        state = checkpoint.load(self.run_dir / LAST)
        checkpoint.check_compatible(state["config"], to_dict(self.config), self.run_dir / LAST)
        self.model.load_state_dict(state["model"])
        self.loss.load_state_dict(state["loss"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.history, self.best = state["history"], state["best"]
        self.stale_validations = state["stale_validations"]
        self.stopped_early = state.get("stopped_early", False)
        checkpoint.restore_random_state(state["random"])
        if distributed.is_main():  # a longer schedule (train.epochs) is allowed on resume
            save_config(self.config, self.run_dir / "config.yaml")

    def _state(self) -> dict[str, Any]:
        return {
            "config": to_dict(self.config),
            "model": self.model.state_dict(),
            "loss": self.loss.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "history": self.history,
            "best": self.best,
            "stale_validations": self.stale_validations,
            "stopped_early": self.stopped_early,
            "random": checkpoint.random_state(),
            "classes": self.classes.tolist(),
        }

    # ------------------------------------------------------------------ training
    def fit(self, progress_display: Any = None) -> dict[str, Any]:
        """Train until ``train.epochs`` or early stopping; return the validation summary.

        ``progress_display``: an existing rich Progress to add the training bars to.
        """
        config = self.config.train
        writer = self._tensorboard()
        progress = TrainingProgress(enabled=config.progress and distributed.is_main(),
                                    total_epochs=config.epochs, start_epoch=self.epoch,
                                    progress=progress_display)
        try:
            with progress:
                while self.epoch < config.epochs and not self.stopped_early:
                    record = self._train_epoch(progress, writer)
                    self.epoch += 1
                    record["epoch"] = self.epoch
                    if self.val_dataset is not None and (
                            self.epoch % config.val_every == 0 or self.epoch == config.epochs):
                        record["validation"] = self.validate()
                        self._update_best(record["validation"])
                        progress.validation(self.epoch, record["validation"],
                                            self.config.eval.val_metric, self.best["value"])
                    self.history.append(record)
                    if writer is not None:
                        self._log_epoch(writer, record)
                    self._save_epoch()
        finally:
            if writer is not None:
                writer.close()
        summary = self.summary()
        if distributed.is_main():
            write_json_atomic(self.run_dir / "metrics.json", summary)
        return summary

    def _train_epoch(self, progress: TrainingProgress, writer: Any) -> dict[str, Any]:
        config = self.config.train
        self.sampler.set_epoch(self.epoch)
        warmup = self.epoch < config.warmup_epochs
        self.model.train()
        losses, seen, started = [], 0, time.perf_counter()
        total = len(self.sampler) if config.iterations_per_epoch is None else min(
            len(self.sampler), config.iterations_per_epoch)
        progress.start_epoch(self.epoch + 1, total)
        for iteration, (images, targets) in enumerate(self.loader):
            if iteration >= total:
                break
            images = images.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
            value = self._train_step(images, targets, warmup)
            losses.append(value)
            seen += len(targets)
            self.step += 1
            throughput = seen / max(time.perf_counter() - started, 1e-9)
            progress.advance(value, throughput)
            if writer is not None and self.step % config.log_every == 0:
                writer.add_scalar("train/loss", value, self.step)
        if self.scheduler is not None:
            self.scheduler.step()
        elapsed = time.perf_counter() - started
        return {"loss": float(np.mean(losses)) if losses else float("nan"),
                "images_per_second": seen / max(elapsed, 1e-9), "seconds": elapsed,
                "warmup": warmup, "lr": [g["lr"] for g in self.optimizer.param_groups]}

    def _train_step(self, images: torch.Tensor, targets: torch.Tensor, warmup: bool) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.use_amp):
            if warmup:  # warm-up trains only the head and the loss parameters
                with torch.no_grad():
                    features = self.model.trunk(images)
                embeddings = self.model.head(features)
            else:
                embeddings = self.model(images)
            value = self.loss(embeddings.float(), targets)
        if not torch.isfinite(value):
            raise FloatingPointError(
                f"loss {self.config.loss.name!r} became {value.item()} at step {self.step}; "
                "lower optim.lr or enable train.grad_clip")
        self.scaler.scale(value).backward()
        if self.config.train.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            parameters = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(parameters, self.config.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(value.detach())

    # ------------------------------------------------------------------ validation
    def validate(self) -> dict[str, float]:
        """Metrics of the current model on the validation fold (training classes only)."""
        from fairdml import evaluate

        assert self.val_dataset is not None and self.val_table is not None
        embeddings = compute_embeddings(self.model, self.val_dataset, device=self.device,
                                        batch_size=self.config.eval.batch_size,
                                        num_workers=self.config.data.num_workers,
                                        flip_average=self.config.eval.flip_average)
        wanted = sorted({self.config.eval.val_metric, "recall@1", "map@r", "r_precision"})
        return evaluate(embeddings, self.val_table.labels, metrics=wanted,
                        recall_ks=(1,), progress=False)

    def _update_best(self, metrics: dict[str, float]) -> None:
        key = self.config.eval.val_metric
        if key not in metrics:
            raise ConfigError(f"config key 'eval.val_metric': {key!r} is not a metric; "
                              f"computed: {sorted(metrics)}")
        if metrics[key] > self.best["value"]:
            self.best = {"epoch": self.epoch, "value": metrics[key], "metrics": metrics}
            self.stale_validations = 0
            if distributed.is_main():
                checkpoint.save_atomic({"model": self.model.state_dict(),
                                        "epoch": self.epoch, "config": to_dict(self.config),
                                        "classes": self.classes.tolist(),
                                        "validation": metrics}, self.run_dir / BEST)
        else:
            self.stale_validations += 1
            patience = self.config.train.early_stopping_patience
            if patience is not None and self.stale_validations >= patience:
                self.stopped_early = True

    def _save_epoch(self) -> None:
        if distributed.is_main():
            checkpoint.save_atomic(self._state(), self.run_dir / LAST)
            if self.val_dataset is None:  # no validation: the last epoch is the model
                checkpoint.save_atomic({"model": self.model.state_dict(), "epoch": self.epoch,
                                        "config": to_dict(self.config),
                                        "classes": self.classes.tolist(), "validation": {}},
                                       self.run_dir / BEST)
        distributed.barrier()

    def summary(self) -> dict[str, Any]:
        return {"best_epoch": self.best["epoch"], "best_validation": self.best["metrics"],
                "val_metric": self.config.eval.val_metric, "epochs_trained": self.epoch,
                "stopped_early": self.stopped_early, "history": self.history}

    # ------------------------------------------------------------------ logging
    def _tensorboard(self) -> Any:
        if not (self.config.train.tensorboard and distributed.is_main()):
            return None
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=self.step)

    def _log_epoch(self, writer: Any, record: dict[str, Any]) -> None:
        writer.add_scalar("train/epoch_loss", record["loss"], record["epoch"])
        writer.add_scalar("train/images_per_second", record["images_per_second"],
                          record["epoch"])
        for key, value in record.get("validation", {}).items():
            if isinstance(value, (int, float)):
                writer.add_scalar(f"validation/{key}", value, record["epoch"])


def write_json_atomic(path: Path, values: dict[str, Any]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(values, indent=2, default=_json_default))
    temporary.replace(path)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
