"""Compute embeddings of a data set with a model, across ranks when distributed."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from fairdml.train import distributed


@torch.no_grad()
def compute_embeddings(model: torch.nn.Module, dataset: Dataset, *, device: torch.device,
                       batch_size: int = 256, num_workers: int = 0,
                       flip_average: bool = False) -> torch.Tensor:
    """Embeddings of every item of ``dataset`` in dataset order, as a float32 CPU tensor.

    With several ranks, each rank embeds the items ``rank::world_size`` and the rows are
    gathered and put back in dataset order, so every rank returns the same tensor.
    ``flip_average`` averages the embeddings of each image and its horizontal flip
    (test-time augmentation; done by the model's ``embed`` method when it has one).
    """
    world, rank = distributed.world_size(), distributed.rank()
    indices = list(range(rank, len(dataset), world))
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers)
    was_training = model.training
    model.eval()
    chunks = []
    for images, _ in loader:
        images = images.to(device, non_blocking=True)
        if hasattr(model, "embed"):
            embeddings = model.embed(images, flip_average=flip_average)
        else:
            embeddings = model(images)
        chunks.append(embeddings.float())
    model.train(was_training)
    local = torch.cat(chunks) if chunks else torch.zeros((0, _embedding_size(model)),
                                                         device=device)
    gathered = distributed.gather_rows(local)
    if world == 1:
        return gathered.cpu()
    # rank r holds items r, r + world, ...: interleave back into dataset order.
    counts = [len(range(r, len(dataset), world)) for r in range(world)]
    order = torch.cat([torch.arange(r, len(dataset), world) for r in range(world)])
    result = torch.empty_like(gathered)
    result[order] = gathered[: sum(counts)]
    return result.cpu()


def _embedding_size(model: torch.nn.Module) -> int:
    return int(getattr(model, "embedding_dim", None) or 0)
