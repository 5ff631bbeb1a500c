"""Cross-batch memory (XBM): a pair-based loss against the embeddings of past batches.

Wang, Zhang, Huang, Scott, "Cross-Batch Memory for Embedding Learning", CVPR 2020. The
embeddings drift slowly during training, so the (detached) embeddings of the last M
samples are a good stand-in for fresh ones: keeping them in a FIFO queue gives every
anchor M references (positives and hard negatives) at the cost of a ``B x M`` matrix.
The training objective of the paper's code is::

    L = batch_weight * L_pair(batch, batch) + memory_weight * L_pair(batch, memory)

where the memory is filled with the current batch *before* the second term is computed
(the paper's Algorithm 1: enqueue, then compute the loss with the memory), so the
current batch's own (detached) copies are references too; the pair of a sample with its
own copy is excluded. Defaults follow the paper's code: both weights 1, the memory term
from step ``start_step`` (the paper uses 1k iterations of warm-up on the large datasets;
default 0 here).

The wrapped loss must have the query / reference form
``loss(embeddings, labels, ref_embeddings=..., ref_labels=...)`` (see
:mod:`fairdml.losses.tuples`); for fairdml's ``contrastive``, which has none, this module
supplies it (:func:`contrastive_against_references`). If it also accepts ``ref_self_mask`` (a bool
``B x M`` mask of the "same sample" pairs), the memory term is exactly the paper's and
pytorch-metric-learning's ``CrossBatchMemory`` (with ``batch_weight=0``). Otherwise the
memory term is computed against the memory *before* the current batch is added (so no
self pair can appear), and the current batch is seen through the batch term only.

The queue is made of buffers (``embedding_memory``, ``label_memory``, ``memory_position``,
``memory_count``, ``step``), so it is saved in ``state_dict`` and restored with a
checkpoint. Only training-mode calls add to the memory and count steps.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from fairdml.losses import create, register
from fairdml.losses._common import (
    as_float32,
    check_embeddings_and_labels,
    mean_of_nonzero,
    normalized_euclidean_matrix,
)


def contrastive_against_references(loss: torch.nn.Module, embeddings: torch.Tensor,
                                   labels: torch.Tensor, ref_embeddings: torch.Tensor,
                                   ref_labels: torch.Tensor,
                                   ref_self_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The reference form of fairdml's ``contrastive`` loss, which has none of its own.

    Same formula as :class:`fairdml.losses.pairs.ContrastiveLoss` (reality-check form,
    Hadsell et al. 2006), on the ``B x R`` query-reference distances::

        L = mean_{+, >0} [d_ij - pos_margin]_+  +  mean_{-, >0} [neg_margin - d_ij]_+

    with ``d`` the Euclidean distance of the L2-normalised embeddings; the pairs marked in
    ``ref_self_mask`` (a sample and its own copy) are neither positive nor negative.
    """
    queries = as_float32(embeddings)
    distances = normalized_euclidean_matrix(queries, ref_embeddings.to(queries.dtype))
    same = labels[:, None] == ref_labels[None, :]
    valid = torch.ones_like(same) if ref_self_mask is None else ~ref_self_mask
    return (mean_of_nonzero(torch.relu(distances - loss.pos_margin), same & valid)
            + mean_of_nonzero(torch.relu(loss.neg_margin - distances), ~same & valid))


def _adapter_for(loss: torch.nn.Module):
    """A reference-form function for a registered loss that lacks one, or None."""
    from fairdml.losses.pairs import ContrastiveLoss

    if type(loss) is ContrastiveLoss:
        if getattr(loss, "miner", None) is not None:
            raise ValueError("cross_batch_memory: contrastive with a miner has no reference "
                             "form here; use it without a miner")
        return contrastive_against_references
    return None


def _forward_parameters(loss: torch.nn.Module) -> set[str]:
    try:
        return set(inspect.signature(loss.forward).parameters)
    except (TypeError, ValueError):
        return set()


@register("cross_batch_memory")
class CrossBatchMemory(torch.nn.Module):
    """XBM wrapper around a pair-based loss (Wang et al., CVPR 2020); see the module doc.

    Args:
        loss: registry name of the wrapped loss (e.g. ``"contrastive"``) or a loss module.
        memory_size: number of past embeddings kept (the paper sizes it to the data set,
            up to the whole training set; it must be at least the batch size).
        embedding_dim: size of the embeddings (passed by ``create(..., embedding_dim=)``).
        loss_params: parameters of the wrapped loss when ``loss`` is a name.
        miner: miner for the wrapped loss (name or instance), given to its constructor.
        memory_weight: weight of the batch-vs-memory term (paper: 1).
        batch_weight: weight of the in-batch term (paper's code: 1; 0 gives the value of
            pytorch-metric-learning's ``CrossBatchMemory``).
        start_step: training steps before the memory is filled and used (paper: 1000 on
            the large data sets; default 0).
    """

    def __init__(self, loss: str | torch.nn.Module = "contrastive", *, memory_size: int,
                 embedding_dim: int, loss_params: dict[str, Any] | None = None,
                 miner: Any = None, memory_weight: float = 1.0, batch_weight: float = 1.0,
                 start_step: int = 0) -> None:
        super().__init__()
        if not isinstance(memory_size, int) or memory_size < 1:
            raise ValueError(f"cross_batch_memory: memory_size must be an int >= 1, "
                             f"got {memory_size!r}")
        if not isinstance(embedding_dim, int) or embedding_dim < 1:
            raise ValueError(f"cross_batch_memory: embedding_dim must be an int >= 1, "
                             f"got {embedding_dim!r}")
        if memory_weight < 0 or batch_weight < 0 or memory_weight + batch_weight == 0:
            raise ValueError(
                f"cross_batch_memory: memory_weight and batch_weight must be >= 0 and not "
                f"both 0, got {memory_weight!r} and {batch_weight!r}")
        if not isinstance(start_step, int) or start_step < 0:
            raise ValueError(f"cross_batch_memory: start_step must be an int >= 0, "
                             f"got {start_step!r}")
        self.loss = self._build_loss(loss, loss_params, miner, embedding_dim)
        parameters = _forward_parameters(self.loss)
        self._adapter = None
        if not {"ref_embeddings", "ref_labels"} <= parameters:
            self._adapter = _adapter_for(self.loss)
        if self._adapter is not None:
            parameters = {"ref_embeddings", "ref_labels", "ref_self_mask"}
        elif not {"ref_embeddings", "ref_labels"} <= parameters:
            raise ValueError(
                f"cross_batch_memory: the wrapped loss {type(self.loss).__name__} has no "
                f"query/reference form; it needs forward(embeddings, labels, "
                f"ref_embeddings=None, ref_labels=None) (its forward takes {sorted(parameters)})")
        self.exact_self_exclusion = "ref_self_mask" in parameters
        self.memory_size = memory_size
        self.embedding_dim = embedding_dim
        self.memory_weight = float(memory_weight)
        self.batch_weight = float(batch_weight)
        self.start_step = start_step
        self.register_buffer("embedding_memory", torch.zeros(memory_size, embedding_dim))
        self.register_buffer("label_memory", torch.zeros(memory_size, dtype=torch.long))
        self.register_buffer("memory_position", torch.zeros((), dtype=torch.long))
        self.register_buffer("memory_count", torch.zeros((), dtype=torch.long))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    @staticmethod
    def _build_loss(loss: str | torch.nn.Module, loss_params: dict[str, Any] | None,
                    miner: Any, embedding_dim: int) -> torch.nn.Module:
        if isinstance(loss, torch.nn.Module):
            if loss_params or miner is not None:
                raise ValueError("cross_batch_memory: loss_params / miner apply to a loss given "
                                 "by name; configure the loss instance itself instead")
            return loss
        if not isinstance(loss, str):
            raise ValueError(f"cross_batch_memory: loss must be a registry name or a module, "
                             f"got {loss!r}")
        if loss == "cross_batch_memory":
            raise ValueError("cross_batch_memory cannot wrap itself")
        params = dict(loss_params or {})
        if miner is not None:
            params["miner"] = miner
        return create(loss, embedding_dim=embedding_dim, **params)

    @property
    def lr_multiplier(self) -> float:
        """The wrapped loss's learning-rate multiplier (for its own parameters, if any)."""
        return float(getattr(self.loss, "lr_multiplier", 1.0))

    def reset_memory(self) -> None:
        """Empty the queue (for example at the start of a new training run)."""
        self.memory_position.zero_()
        self.memory_count.zero_()
        self.step.zero_()

    def _stored(self) -> tuple[torch.Tensor, torch.Tensor]:
        count = int(self.memory_count)
        return self.embedding_memory[:count], self.label_memory[:count]

    def _enqueue(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Write the batch at the queue position (FIFO); returns the slots it took."""
        slots = (self.memory_position + torch.arange(len(labels), device=labels.device)
                 ) % self.memory_size
        self.embedding_memory[slots] = embeddings.detach().to(self.embedding_memory.dtype)
        self.label_memory[slots] = labels.to(self.label_memory.dtype)
        self.memory_position.copy_((self.memory_position + len(labels)) % self.memory_size)
        self.memory_count.clamp_(max=self.memory_size - len(labels)).add_(len(labels))
        return slots

    def _against(self, embeddings: torch.Tensor, labels: torch.Tensor,
                 references: torch.Tensor, reference_labels: torch.Tensor,
                 self_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The wrapped loss of the queries against the references."""
        references = references.to(embeddings.dtype)
        if self._adapter is not None:
            return self._adapter(self.loss, embeddings, labels, references, reference_labels,
                                 self_mask)
        if self_mask is None:
            return self.loss(embeddings, labels, ref_embeddings=references,
                             ref_labels=reference_labels)
        return self.loss(embeddings, labels, ref_embeddings=references,
                         ref_labels=reference_labels, ref_self_mask=self_mask)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_embeddings_and_labels(embeddings, labels)
        if embeddings.shape[1] != self.embedding_dim:
            raise ValueError(f"cross_batch_memory: embeddings have dimension "
                             f"{embeddings.shape[1]}, the memory holds {self.embedding_dim}")
        if len(labels) > self.memory_size:
            raise ValueError(f"cross_batch_memory: batch of {len(labels)} is larger than "
                             f"memory_size={self.memory_size}")
        embeddings = as_float32(embeddings)
        total = embeddings.sum() * 0.0
        if self.batch_weight:
            total = total + self.batch_weight * self.loss(embeddings, labels)
        use_memory = (not self.training) or int(self.step) >= self.start_step
        if self.training:
            self.step.add_(1)
        if not (self.memory_weight and use_memory):
            return total
        if self.training and self.exact_self_exclusion:
            slots = self._enqueue(embeddings, labels)
            references, reference_labels = self._stored()
            self_mask = slots[:, None] == torch.arange(len(reference_labels),
                                                       device=slots.device)[None, :]
            memory_term = self._against(embeddings, labels, references, reference_labels,
                                        self_mask)
        else:
            references, reference_labels = self._stored()
            # A copy: the enqueue below writes into the buffer before the backward pass.
            references, reference_labels = references.clone(), reference_labels.clone()
            memory_term = (self._against(embeddings, labels, references, reference_labels)
                           if len(reference_labels) else None)
            if self.training:
                self._enqueue(embeddings, labels)
            if memory_term is None:
                return total
        return total + self.memory_weight * memory_term


__all__ = ["CrossBatchMemory"]
