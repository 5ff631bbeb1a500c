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


def embed_table(model: torch.nn.Module, config: RunConfig, table: data.SampleTable,
                device: torch.device, *, flip_average: bool | None = None) -> torch.Tensor:
    """Embeddings of every item of ``table`` with the test transform of ``config``.

    ``flip_average`` defaults to ``config.eval.flip_average``.
    """
    from fairdml.data.dataset import TableDataset

    dataset = TableDataset(table, build_transforms(config, model, train=False))
    return compute_embeddings(model, dataset, device=device,
                              batch_size=config.eval.batch_size,
                              num_workers=config.data.num_workers,
                              flip_average=(config.eval.flip_average if flip_average is None
                                            else flip_average))


def embed_split(run_dir: Path, config: RunConfig, table: data.SampleTable,
                device: torch.device) -> torch.Tensor:
    """Embeddings of ``table`` by the selected checkpoint of ``run_dir``."""
    return embed_table(load_selected_model(run_dir, config, device), config, table, device)


def evaluate_table(embeddings: torch.Tensor, table: data.SampleTable,
                   options: dict[str, Any]) -> dict[str, Any]:
    """`fairdml.evaluate` of ``table``'s embeddings: same-set, or In-Shop style where the
    query rows search the gallery rows only."""
    from fairdml import evaluate

    if table.is_query.all() and table.is_gallery.all():
        return evaluate(embeddings, table.labels, **options)
    query_rows, gallery_rows = table.is_query, table.is_gallery
    return evaluate(embeddings[torch.from_numpy(gallery_rows)], table.labels[gallery_rows],
                    queries=embeddings[torch.from_numpy(query_rows)],
                    query_labels=table.labels[query_rows], **options)


def final_test(run_dir: str | Path, *, write: bool = True,
               options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate the selected checkpoint of ``run_dir`` on the test split.

    ``options`` are extra arguments of `fairdml.evaluate` (``metrics``, ``distance``,
    ``memory_budget``, ``progress``); recall@K and the k-means seeds come from the run's
    ``eval`` config unless given.
    """
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    device = resolve_device(config.train.device)
    table = data.load(config.data.name, config.data.root).with_split("test")
    embeddings = embed_split(run_dir, config, table, device)
    metrics = evaluate_table(embeddings, table,
                             {**evaluation_options(config.eval), **(options or {})})
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
