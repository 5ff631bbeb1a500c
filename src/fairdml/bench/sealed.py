"""The sealed test split: the only object of a benchmark that holds test data.

`SealedTest` is created by the benchmark runner from the full table and handed only to
the final evaluation of finished repeats and to the baselines. The search and model
selection code (`fairdml.bench.search`) receives the training split alone, so it cannot
obtain a test item; a test in tests/bench proves that a search reads no test item.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fairdml.config import RunConfig, evaluation_options
from fairdml.data.table import SampleTable


class SealedTest:
    """Evaluates finished models on the test split; exposes no test items."""

    def __init__(self, table: SampleTable) -> None:
        self.__table = table.with_split("test")
        if len(self.__table) == 0:
            raise ValueError(f"data set {table.name!r} has no test split")

    def __repr__(self) -> str:
        return f"SealedTest({self.__table.name!r}, {len(self.__table)} items)"

    def _embed(self, run_dir: Path, config: RunConfig) -> torch.Tensor:
        from fairdml.train.final import embed_split
        from fairdml.train.trainer import resolve_device

        return embed_split(run_dir, config, self.__table, resolve_device(config.train.device))

    def _metrics(self, embeddings: torch.Tensor, config: RunConfig) -> dict[str, Any]:
        from fairdml.train.final import evaluate_table

        return evaluate_table(embeddings, self.__table,
                              {**evaluation_options(config.eval), "progress": False})

    def evaluate_repeat(self, run_dirs: list[Path], config: RunConfig
                        ) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
        """Test metrics of each fold model, their mean ("separated"), and "concatenated".

        Concatenated: each model's test embeddings are L2-normalised and concatenated, so
        k models of dimension d give one k*d embedding (Musgrave et al. 2020).
        """
        embeddings = [self._embed(run_dir, config) for run_dir in run_dirs]
        per_fold = [self._metrics(e, config) for e in embeddings]
        separated = {key: float(np.mean([m[key] for m in per_fold])) for key in per_fold[0]}
        joined = torch.cat([torch.nn.functional.normalize(e, dim=1) for e in embeddings], dim=1)
        return per_fold, separated, self._metrics(joined, config)

    def evaluate_untrained(self, config: RunConfig, *, head: bool) -> dict[str, Any]:
        """Baselines: the untrained trunk (pooled features) or trunk + untrained head."""
        from fairdml.train.final import embed_table
        from fairdml.train.trainer import build_model, resolve_device, seed_everything

        if not head:
            config = dataclasses.replace(
                config, model=dataclasses.replace(config.model, embedding_dim=None))
        seed_everything(config.train.seed)
        device = resolve_device(config.train.device)
        model = build_model(config).to(device)
        embeddings = embed_table(model, config, self.__table, device, flip_average=False)
        return self._metrics(embeddings, config)
