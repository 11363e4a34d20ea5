"""What an autograd graph keeps alive: the measure behind the meta-graph's memory figures
(benchmarks/graph_memory.py) and the test that the inner steps' activations are not kept."""

from __future__ import annotations

import torch


def saved_bytes(output: torch.Tensor) -> int:
    """Bytes of the distinct storages that the autograd graph of ``output`` keeps (also on the
    meta device, where storages have no data pointer)."""
    seen, total, stack, visited = set(), 0, [output.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in visited:
            continue
        visited.add(node)
        for name in dir(node):
            if not name.startswith("_saved_"):
                continue
            value = getattr(node, name)
            for t in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(t, torch.Tensor):
                    storage = t.untyped_storage()
                    key = storage._cdata if t.device.type == "meta" else storage.data_ptr()
                    if key not in seen:
                        seen.add(key)
                        total += storage.nbytes()
        stack.extend(next_node for next_node, _ in node.next_functions)
    return total
