"""A rich progress display for training: epochs, iterations, loss, throughput, validation."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class TrainingProgress:
    """Two bars (epochs and the current epoch's iterations); silent when disabled.

    Given an external rich ``Progress`` (the benchmark's overall display), the bars are added
    to it and removed when training ends, since rich allows one live display at a time.
    """

    def __init__(self, *, enabled: bool, total_epochs: int, start_epoch: int = 0,
                 progress: Progress | None = None) -> None:
        self.enabled = enabled
        self._owned = progress is None
        self._progress = progress or create_progress(enabled)
        self._epochs = self._progress.add_task("  epochs", total=total_epochs,
                                               completed=start_epoch, status="")
        self._iterations: Any = None

    def __enter__(self) -> TrainingProgress:
        if self._owned:
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._owned:
            self._progress.__exit__(*exc)
        else:
            for task in (self._epochs, self._iterations):
                if task is not None:
                    self._progress.remove_task(task)

    def start_epoch(self, epoch: int, total: int) -> None:
        if self._iterations is not None:
            self._progress.remove_task(self._iterations)
        self._iterations = self._progress.add_task(f"  epoch {epoch}", total=total, status="")

    def advance(self, loss: float, images_per_second: float) -> None:
        self._progress.update(self._iterations, advance=1,
                              status=f"loss {loss:.4f}  {images_per_second:,.0f} img/s")

    def validation(self, epoch: int, metrics: dict[str, float], key: str, best: float) -> None:
        self._progress.update(self._epochs, completed=epoch,
                              status=f"val {key} {metrics.get(key, float('nan')):.4f} "
                                     f"(best {best:.4f})")


def create_progress(enabled: bool = True) -> Progress:
    """The project's progress display (on stderr, so that tables on stdout stay clean)."""
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
        console=Console(stderr=True), disable=not enabled, transient=False)
