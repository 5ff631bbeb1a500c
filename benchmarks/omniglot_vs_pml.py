"""Quality reference on the shared Omniglot subset: fairdml's default recipe vs a PML baseline.

Both sides train on the same training characters, with the same budget (epochs, 28x28
inputs, batch 64, the same augmentation) and 3 seeds, and are tested on the same test
characters with the same metric code (fairdml.evaluate):

* PML baseline: a 4-block conv net (64 channels, 3x3 conv, BatchNorm, ReLU, 2x2 max-pool;
  its 64 output features L2-normalised as the embedding), pytorch-metric-learning's
  MultiSimilarityLoss + MultiSimilarityMiner (library defaults) and MPerClassSampler
  (m=4, batch 64), Adam lr 1e-3, trained for all epochs on all training characters.
* fairdml: ``configs/omniglot.yaml`` as it is (trained with `fairdml.train.Trainer`,
  epoch selected on a class-disjoint validation fold of the training characters, then
  tested once).

Usage: python benchmarks/omniglot_vs_pml.py [--epochs 20] [--seeds 0 1 2] [--out DIR]
Writes DIR/omniglot_vs_pml.json and prints a markdown table for docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fairdml import data, evaluate
from fairdml.bench.statistics import format_interval
from fairdml.config import load_config
from fairdml.data import transforms
from fairdml.data.dataset import TableDataset, labels_to_indices
from fairdml.train.embeddings import compute_embeddings
from fairdml.train.final import final_test
from fairdml.train.trainer import Trainer, seed_everything

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "configs" / "omniglot.yaml"


class ConvNet4(nn.Module):
    """The classic few-shot 4-block conv net; 28x28 input -> 64 features."""

    def __init__(self) -> None:
        super().__init__()
        blocks, channels = [], 1
        for _ in range(4):
            blocks += [nn.Conv2d(channels, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                       nn.MaxPool2d(2)]
            channels = 64
        self.features = nn.Sequential(*blocks)
        self.embedding_dim = 64

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.features(images).flatten(1), dim=1)


def train_pml(table, epochs: int, seed: int) -> dict[str, float]:
    from pytorch_metric_learning import losses, miners, samplers

    seed_everything(seed)
    train = table.with_split("train")
    targets, _ = labels_to_indices(train.labels)
    dataset = TableDataset(train, transforms.create("omniglot", train=True, in_channels=1),
                           label_to_index={c: i for i, c in
                                           enumerate(labels_to_indices(train.labels)[1])})
    sampler = samplers.MPerClassSampler(targets, m=4, batch_size=64,
                                        length_before_new_iter=len(targets))
    loader = torch.utils.data.DataLoader(dataset, batch_size=64, sampler=sampler,
                                         drop_last=True)
    model = ConvNet4()
    loss, miner = losses.MultiSimilarityLoss(), miners.MultiSimilarityMiner()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        model.train()
        for images, labels in loader:
            optimizer.zero_grad()
            embeddings = model(images)
            value = loss(embeddings, labels, miner(embeddings, labels))
            value.backward()
            optimizer.step()
    test = table.with_split("test")
    embeddings = compute_embeddings(model, TableDataset(test, transforms.create(
        "omniglot", train=False, in_channels=1)), device=torch.device("cpu"))
    return evaluate(embeddings, test.labels, metrics=["recall@1", "map@r", "r_precision"],
                    recall_ks=(1,))


def train_fairdml(epochs: int, seed: int, out: Path) -> dict[str, float]:
    config = load_config(PRESET, [f"train.epochs={epochs}", f"train.seed={seed}",
                                  "train.progress=false", "train.tensorboard=false",
                                  f"data.root={ROOT.parent / 'shared/data/omniglot'}"
                                  "/images_background_small2.zip"])
    table = data.load(config.data.name, config.data.root)
    run_dir = out / f"fairdml-seed{seed}"
    Trainer(config, table.with_split("train"), run_dir).fit()
    metrics = final_test(run_dir)
    return {key: metrics[key] for key in ("recall@1", "map@r", "r_precision")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/omniglot_vs_pml"))
    args = parser.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"{args.out} is not empty; choose another --out")
    args.out.mkdir(parents=True, exist_ok=True)
    table = data.load("omniglot", ROOT.parent / "shared/data/omniglot/"
                                  "images_background_small2.zip")
    results: dict[str, list[dict[str, float]]] = {"pml_multi_similarity": [], "fairdml": []}
    seconds = {"pml_multi_similarity": 0.0, "fairdml": 0.0}
    for seed in args.seeds:
        for name in results:
            started = time.perf_counter()
            metrics = (train_pml(table, args.epochs, seed) if name != "fairdml"
                       else train_fairdml(args.epochs, seed, args.out))
            seconds[name] += time.perf_counter() - started
            results[name].append(metrics)
            print(name, seed, {k: round(v, 4) for k, v in metrics.items()}, flush=True)
    report = {"epochs": args.epochs, "seeds": args.seeds, "results": results,
              "seconds": seconds, "machine": platform.processor() or platform.machine(),
              "torch_threads": torch.get_num_threads()}
    (args.out / "omniglot_vs_pml.json").write_text(json.dumps(report, indent=2))
    print(f"\n| method | map@r | recall@1 | r_precision | wall time (s, {len(args.seeds)} "
          "seeds) |\n|---|---|---|---|---|")
    for name, runs in results.items():
        cells = [format_interval([r[m] for r in runs]) for m in ("map@r", "recall@1",
                                                                   "r_precision")]
        print(f"| {name} | " + " | ".join(cells) + f" | {seconds[name]:.0f} |")
    gain = np.mean([r["map@r"] for r in results["fairdml"]]) - np.mean(
        [r["map@r"] for r in results["pml_multi_similarity"]])
    print(f"\nfairdml - PML map@r (mean over seeds): {gain:+.4f}")


if __name__ == "__main__":
    main()
