"""Training curves for TensorBoard, beside the JSON Lines metrics log (an optional extra).

``moescope lab --tensorboard`` (or ``train_run(..., tensorboard=True)``) mirrors every record
of a run's ``metrics.jsonl`` into TensorBoard event files under ``<run>/tensorboard/``; point
``tensorboard --logdir OUT/training/runs`` at them to compare the runs. The JSONL log stays
the record of truth (the lab's claims read it); this is a view of it.

Needs the ``tensorboard`` package: ``pip install 'moescope[tensorboard]'``. A resumed run
purges the events after its checkpoint's step, as the JSONL log is truncated there, so a
curve never shows the lost steps twice.
"""

from __future__ import annotations

from pathlib import Path

TENSORBOARD_DIR = "tensorboard"


class TensorBoardMissing(ValueError):
    """``--tensorboard`` was asked for but the ``tensorboard`` package is not installed (a bad
    option value here, so that the command line reports it as such)."""


def available() -> bool:
    """Whether the ``tensorboard`` package (which torch's SummaryWriter needs) is installed."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def require() -> None:
    """Raise :class:`TensorBoardMissing` with the install command when TensorBoard is missing."""
    if not available():
        raise TensorBoardMissing("--tensorboard needs the tensorboard package, which is not installed; "
                                 "install it with: pip install 'moescope[tensorboard]' (or drop --tensorboard: "
                                 "every metric is in each run's metrics.jsonl anyway)")


class CurveWriter:
    """Scalars of the training records of one run, written as TensorBoard events.

    Args:
        run_dir: the run's folder; events go to ``run_dir/tensorboard``.
        start_step: the step training resumes from (0 for a fresh run): events at or after it
            from an interrupted attempt are purged.
    """

    def __init__(self, run_dir: str | Path, start_step: int) -> None:
        require()
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(str(Path(run_dir) / TENSORBOARD_DIR), purge_step=start_step + 1)

    def add_record(self, record: dict) -> None:
        """One training record (``step``, ``loss``, ``total_loss``, ``lr``, ``grad_norm``, ``aux``, ``load_cv``)."""
        step = int(record["step"])
        for key in ("loss", "total_loss", "lr", "grad_norm"):
            if key in record:
                self._writer.add_scalar(f"train/{key}", float(record[key]), step)
        for name, value in record.get("aux", {}).items():
            self._writer.add_scalar(f"aux/{name}", float(value), step)
        for layer, cv in enumerate(record.get("load_cv", [])):
            self._writer.add_scalar(f"load_cv/layer{layer}", float(cv), step)

    def add_final(self, step: int, val_loss_by_domain: dict[str, float],
                  train_loss_by_domain: dict[str, float]) -> None:
        """The evaluation at the end of the run, by domain."""
        for domain, value in val_loss_by_domain.items():
            self._writer.add_scalar(f"val_loss/{domain}", float(value), step)
        for domain, value in train_loss_by_domain.items():
            self._writer.add_scalar(f"train_eval_loss/{domain}", float(value), step)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> CurveWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
