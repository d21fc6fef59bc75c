"""Circuit files: a found circuit as JSON, tied to the model it was found on.

    {"format": "lmscope-circuit/1", "model": spec, "config_hash": the model's config_sha256 (lmscope.core.fingerprint;
     files written before it moved there hold 16 hex digits of an older hash and still load), "n_layers",
     "n_heads", "task", "method", "ablation", "means": how the ablation means are obtained, "heads": [[l, h], ...],
     "mlps": [l, ...], "metrics": {...}, "scores": optional per-head scores}

No means are stored: evaluating a circuit recomputes the task means from the prompts it is evaluated on
(lmscope.circuits.means), so a circuit can be checked on another prompt file. Files are written atomically and an
existing file is never replaced unless asked.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lmscope.core.errors import InputError
from lmscope.core.fingerprint import config_sha256, same_config
from lmscope.results.files import write_atomic
from lmscope.results.output import check_output
from lmscope.circuits.nodes import Node, parse_node

FORMAT = "lmscope-circuit/1"
MEANS_NOTE = "recomputed from the evaluated prompts: per template-and-length group and position, clean and corrupt"


@dataclass
class CircuitFile:
    model: str
    config_hash: str
    n_layers: int
    n_heads: int
    task: str
    method: str
    ablation: str
    heads: list[list[int]]
    mlps: list[int]
    metrics: dict = field(default_factory=dict)
    scores: "dict | None" = None
    means: str = MEANS_NOTE
    format: str = FORMAT

    @classmethod
    def from_result(cls, model, result, scores: "dict | None" = None) -> "CircuitFile":
        keys = ("n_prompts", "metric_name", "metric_full", "metric_empty", "metric_circuit", "faithfulness",
                "necessity_drop", "random_faithfulness", "random_std", "accuracy_full", "accuracy_circuit")
        metrics = {k: getattr(result, k) for k in keys}
        if result.curve:
            metrics["curve"] = result.curve
        return cls(model.spec, config_sha256(model), model.n_layers, model.n_heads, result.task, result.method,
                   result.ablation, [list(h) for h in result.heads], list(result.mlps), metrics, scores)

    def nodes(self, model) -> list[Node]:
        return [parse_node(model, h) for h in self.heads] + [parse_node(model, f"mlp.{m}") for m in self.mlps]

    def to_json(self) -> dict:
        d = asdict(self)
        return {"format": d.pop("format"), **d}

    def save(self, path, *, overwrite: bool = False) -> Path:
        path = check_output(path, overwrite=overwrite, suffixes=(".json",), what="circuit file")
        return write_atomic(path, json.dumps(self.to_json(), indent=1))


def load_circuit(path, model) -> CircuitFile:
    """Read a circuit file and check it belongs to `model` (same config hash) and names only real nodes."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"circuit file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is not a circuit file (not JSON: {e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(f"{path} is not a circuit file (format is not {FORMAT!r})")
    if not same_config(data.get("config_hash"), model):
        raise InputError(f"{path} is a circuit of {data.get('model')!r} (config {str(data.get('config_hash'))[:16]}), "
                         f"not of {model.spec!r} (config {config_sha256(model)[:16]})")
    try:
        circuit = CircuitFile(**{k: data[k] for k in CircuitFile.__dataclass_fields__ if k in data})
    except TypeError as e:
        raise InputError(f"{path}: missing field ({e})") from None
    if not isinstance(circuit.heads, list) or not isinstance(circuit.mlps, list):
        raise InputError(f"{path}: 'heads' and 'mlps' must be lists")
    circuit.nodes(model)  # every node must exist in this model: one clear error otherwise
    return circuit
