"""The final test of a finished run: the only place that reads the test split.

Model selection happened on validation during training; here the selected checkpoint
(``checkpoints/best.pt``) embeds the test split once and `fairdml.evaluate` computes
every metric. The result is stored under ``"test"`` in ``metrics.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from fairdml import data
from fairdml.config import RunConfig, evaluation_options, from_dict
from fairdml.train import checkpoint
from fairdml.train.embeddings import compute_embeddings
from fairdml.train.trainer import BEST, build_model, build_transforms, resolve_device


def load_run_config(run_dir: Path) -> RunConfig:
    import yaml

    path = run_dir / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory: {path.name} is missing")
    return from_dict(RunConfig, yaml.safe_load(path.read_text()))


def load_selected_model(run_dir: Path, config: RunConfig,
                        device: torch.device) -> torch.nn.Module:
    state = checkpoint.load(run_dir / BEST)
    model = build_model(config).to(device)
    model.load_state_dict(state["model"])
    model.eval()
    return model


def embed_split(run_dir: Path, config: RunConfig, table: data.SampleTable,
                device: torch.device) -> torch.Tensor:
    from fairdml.data.dataset import TableDataset

    model = load_selected_model(run_dir, config, device)
    dataset = TableDataset(table, build_transforms(config, model, train=False))
    return compute_embeddings(model, dataset, device=device,
                              batch_size=config.eval.batch_size,
                              num_workers=config.data.num_workers,
                              flip_average=config.eval.flip_average)


def final_test(run_dir: str | Path, *, write: bool = True,
               options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate the selected checkpoint of ``run_dir`` on the test split.

    ``options`` are extra arguments of `fairdml.evaluate` (``metrics``, ``distance``,
    ``memory_budget``, ``progress``); recall@K and the k-means seeds come from the run's
    ``eval`` config unless given.
    """
    from fairdml import evaluate

    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    device = resolve_device(config.train.device)
    table = data.load(config.data.name, config.data.root).with_split("test")
    embeddings = embed_split(run_dir, config, table, device)
    options = {**evaluation_options(config.eval), **(options or {})}
    if table.is_query.all() and table.is_gallery.all():
        metrics = evaluate(embeddings, table.labels, **options)
    else:  # In-Shop style: query rows search the gallery rows only
        query_rows, gallery_rows = table.is_query, table.is_gallery
        metrics = evaluate(embeddings[torch.from_numpy(gallery_rows)], table.labels[gallery_rows],
                           queries=embeddings[torch.from_numpy(query_rows)],
                           query_labels=table.labels[query_rows], **options)
    if write:
        from fairdml.train.trainer import write_json_atomic

        path = run_dir / "metrics.json"
        summary = json.loads(path.read_text()) if path.is_file() else {}
        summary["test"] = metrics
        write_json_atomic(path, summary)
    return metrics


RUN_OPTIONS = ("metrics", "distance", "memory_budget", "progress", "rerank", "rerank_params")


def evaluate_run(run_dir: str | Path, **options: Any) -> dict[str, Any]:
    """`fairdml eval RUN_DIR`: test metrics of the selected checkpoint (written to metrics.json).

    Of the command's options, ``metrics`` (when given), ``distance``, ``memory_budget``,
    ``progress`` and ``rerank`` / ``rerank_params`` (when given, instead of the run's
    ``eval.rerank``) apply; recall@K and the k-means seeds are the run's own (``eval`` config),
    so that the numbers match those recorded at the end of training.
    """
    chosen = {key: options[key] for key in RUN_OPTIONS
              if key in options and not (key == "metrics" and options[key] is None)}
    return final_test(run_dir, options=chosen)
