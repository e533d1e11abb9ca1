"""Token traces: one row per routed token, streamed to a Parquet file (``moescope analyze --trace FILE``).

Each row is one real (unpadded) token of a text ``analyze`` routed: which ``document`` (the text's label)
it came from, its ``position`` in that text, its ``token_id`` and decoded ``token``, and for every
recorded MoE layer ``L`` four columns:

* ``L{L}.experts`` — the chosen experts, largest combine weight first (list of int16; -1 marks a slot
  a capacity limit dropped);
* ``L{L}.weights`` — their combine weights (list of float32);
* ``L{L}.entropy`` — the router's entropy in nats (:func:`~moescope.analysis.routing.router_entropy`);
* ``L{L}.margin`` — the relative margin between the k-th and (k+1)-th selection score
  (:func:`~moescope.analysis.routing.relative_margins`; below 2⁻⁸ is a near-tie), null when k = E.

The file is columnar (pyarrow), readable by pandas (``pd.read_parquet``) and polars. Memory stays flat
as tokens grow: finished batches are gathered into row groups of :data:`ROW_GROUP` rows and written (one
write per row group costs less than one per batch); only a layer-major run's chunk (whose layers finish
one after another) is held until its last layer is recorded.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from moescope.analysis.routing import relative_margins, router_entropy
from moescope.models.view import RoutingRecord

__all__ = ["ROW_GROUP", "TraceWriter", "layer_columns"]

ROW_GROUP = 16_384  # rows gathered before a write: about a MiB of columns, whatever the number of tokens


def layer_columns(layer: int) -> tuple[str, str, str, str]:
    """The four column names of MoE layer ``layer``."""
    return (f"L{layer}.experts", f"L{layer}.weights", f"L{layer}.entropy", f"L{layer}.margin")


class TraceWriter:
    """Writes token rows to ``path`` (Parquet) as batches complete; use as a context manager.

    Args:
        path: the ``.parquet`` file (written atomically: a temporary sibling renamed on close).
        layers: the MoE layer indices recorded (each record's ``layer``), in column order.
        decode: token id -> text.
        selection_bias: per layer, the selection bias (E,) the family adds before top-k, or None.
        top_k: per layer, k (for the margin).
    """

    def __init__(self, path: str | Path, layers: list[int], decode, *, top_k: list[int],
                 selection_bias: list | None = None) -> None:
        import pyarrow as pa

        self.path = Path(path)
        if self.path.suffix != ".parquet":
            raise ValueError(f"a trace is written as Parquet: give a path ending in .parquet; got {str(path)!r}")
        if not self.path.parent.is_dir():
            raise ValueError(f"cannot write the trace {self.path}: the folder {self.path.parent} does not exist")
        # a token's text is decoded once (a tokenizer call per token costs more than the forward's share of it)
        self.layers, self.decode = list(layers), functools.lru_cache(maxsize=None)(decode)
        self.top_k = dict(zip(layers, top_k, strict=True))
        self.bias = dict(zip(layers, selection_bias or [None] * len(layers), strict=True))
        fields = [pa.field("document", pa.string()), pa.field("position", pa.int64()),
                  pa.field("token_id", pa.int64()), pa.field("token", pa.string())]
        for layer in self.layers:
            experts, weights, entropy, margin = layer_columns(layer)
            fields += [pa.field(experts, pa.list_(pa.int16())), pa.field(weights, pa.list_(pa.float32())),
                       pa.field(entropy, pa.float32()), pa.field(margin, pa.float32())]
        self.schema = pa.schema(fields)
        self._tmp = self.path.with_name(f".{self.path.name}.tmp")
        self._writer = None
        self._pending: dict[object, dict] = {}
        self._tables: list = []            # finished batches not yet written (fewer than ROW_GROUP rows)
        self._held = 0
        self.rows = 0

    def __enter__(self) -> TraceWriter:
        import pyarrow.parquet as pq

        self._writer = pq.ParquetWriter(self._tmp, self.schema, compression="zstd")
        return self

    def __exit__(self, exc_type, *exc) -> None:
        try:
            if exc_type is None:
                self._flush()
        finally:
            self._writer.close()
        if exc_type is None:
            if self._pending:
                raise RuntimeError(f"{len(self._pending)} batches of the trace never received every layer")
            self._tmp.replace(self.path)
        else:
            self._tmp.unlink(missing_ok=True)

    def add(self, key: object, document: str, ids: torch.Tensor, mask: torch.Tensor, start: torch.Tensor,
            records: list[RoutingRecord]) -> None:
        """Records of batch ``key`` (any hashable); its rows are written once every layer has arrived.

        Args:
            document: the text's label.
            ids, mask: (B, S) token ids and attention mask of the batch.
            start: (B,) position in the document of each row's first token.
            records: this batch's records (all layers, or some: a layer-major run sends one at a time).
        """
        entry = self._pending.setdefault(key, {"document": document, "ids": ids, "mask": mask, "start": start,
                                               "layers": {}})
        for rec in records:
            if rec.layer in self.top_k:
                entry["layers"][rec.layer] = self._columns(rec)
        if len(entry["layers"]) == len(self.layers):
            self._write(self._pending.pop(key))

    def _columns(self, rec: RoutingRecord) -> dict:
        """The layer's columns for the batch's real tokens (compact numpy arrays until written)."""
        real = rec.mask.bool()
        return {"experts": rec.indices[real].to(torch.int16).numpy(), "weights": rec.weights[real].float().numpy(),
                "entropy": router_entropy(rec.scores[real]).float().numpy(),
                "margin": relative_margins(rec.ranked()[real], self.top_k[rec.layer], self.bias[rec.layer]).numpy()}

    def _write(self, entry: dict) -> None:
        import pyarrow as pa

        mask = entry["mask"].bool()
        b, s = mask.shape
        positions = (entry["start"].view(b, 1) + torch.arange(s).view(1, s))[mask].numpy()
        token_ids = entry["ids"][mask].numpy()
        n = len(token_ids)
        columns = {"document": pa.array([entry["document"]] * n, pa.string()),
                   "position": pa.array(positions, pa.int64()), "token_id": pa.array(token_ids, pa.int64()),
                   "token": self._tokens(token_ids)}
        for layer in self.layers:
            got = entry["layers"][layer]
            experts, weights, entropy, margin = layer_columns(layer)
            k = got["experts"].shape[1]
            offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32))
            columns[experts] = pa.ListArray.from_arrays(offsets, pa.array(got["experts"].reshape(-1), pa.int16()))
            columns[weights] = pa.ListArray.from_arrays(offsets, pa.array(got["weights"].reshape(-1), pa.float32()))
            columns[entropy] = pa.array(got["entropy"], pa.float32())
            margin_values = got["margin"]
            columns[margin] = pa.array(margin_values, pa.float32(), mask=np.isnan(margin_values))
        self._tables.append(pa.table(columns, schema=self.schema))
        self._held += n
        self.rows += n
        if self._held >= ROW_GROUP:
            self._flush()

    def _tokens(self, token_ids: np.ndarray):
        """The decoded texts of ``token_ids`` (n,) as a string array: each distinct id decoded once (cached)."""
        import pyarrow as pa

        distinct, inverse = np.unique(token_ids, return_inverse=True)
        return pa.array([self.decode(int(t)) for t in distinct], pa.string()).take(pa.array(inverse.reshape(-1)))

    def _flush(self) -> None:
        """Write the gathered batches as one row group."""
        import pyarrow as pa

        if self._tables:
            self._writer.write_table(pa.concat_tables(self._tables), row_group_size=max(self._held, 1))
            self._tables, self._held = [], 0
