"""gates.csv: the meta-learner's mean input and forget gates per inner step and learner layer.

Recorded on logging episodes during meta-training; ``attnopt plot`` draws them (the gate
figure of Ravi & Larochelle 2017).
"""

from __future__ import annotations

from pathlib import Path

import torch

from attnopt.models.base import Learner
from attnopt.models.metalearner import MetaState
from attnopt.runs.fileio import rows_until, write_csv

FIELDS = ("episode", "step", "layer", "input_gate", "forget_gate")


def layer_of(param_name: str) -> str:
    """'block2.conv.weight' -> 'block2'; 'head.bias' -> 'head'."""
    return param_name.split(".")[0]


class GateLog:
    """Appends one row per (inner step, layer) for each recorded episode.

    On resume (``keep_until`` = the checkpoint's episode) rows of later episodes are dropped.
    The file is rewritten atomically on every write, so a killed run never leaves half a row.
    """

    def __init__(self, path: Path, learner: Learner, keep_until: int | None = None) -> None:
        self.path = path
        # the gates exist for the adapted coordinates only (all of θ with --adapt all)
        specs = learner.adapted_specs
        self.layers = list(dict.fromkeys(layer_of(s.name) for s in specs))
        index = {name: i for i, name in enumerate(self.layers)}
        self._layer_of_coordinate = torch.cat(
            [torch.full((s.numel,), index[layer_of(s.name)]) for s in specs]
        )
        self._counts = torch.bincount(self._layer_of_coordinate).float()
        self._pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        self.rows = rows_until(path, keep_until)
        write_csv(path, FIELDS, self.rows)

    def _layer_means(self, gate: torch.Tensor) -> torch.Tensor:
        """(*tasks, P) gates -> (layers,) means over the layer's coordinates of every task."""
        gate = gate.reshape(-1, gate.shape[-1]).mean(0)
        if self._layer_of_coordinate.device != gate.device:
            self._layer_of_coordinate = self._layer_of_coordinate.to(gate.device)
            self._counts = self._counts.to(gate.device)
        sums = gate.new_zeros(len(self.layers)).index_add_(0, self._layer_of_coordinate, gate)
        return sums / self._counts

    def on_step(self, step: int, theta: torch.Tensor, state: MetaState) -> None:
        """An ``adapt(on_step=...)`` callback; keeps device tensors until :meth:`write`."""
        with torch.no_grad():
            self._pending.append((step, self._layer_means(state.i), self._layer_means(state.f)))

    def write(self, episode: int) -> None:
        """Append the recorded steps as rows for ``episode`` (one host sync)."""
        for step, input_gate, forget_gate in self._pending:
            for layer, i, fg in zip(
                self.layers, input_gate.tolist(), forget_gate.tolist(), strict=True
            ):
                self.rows.append(
                    dict(zip(FIELDS, (episode, step, layer, f"{i:.6g}", f"{fg:.6g}"), strict=True))
                )
        self._pending.clear()
        write_csv(self.path, FIELDS, self.rows)
