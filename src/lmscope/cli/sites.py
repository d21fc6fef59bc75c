"""`lmscope sites`: the model's shape and the names of its sites (the one naming scheme every method reads and edits).

    ModelSites                 the result: dimensions, adapter family, every site name, each site kind's shape
    model_sites(model)         builds it
"""
from __future__ import annotations

from dataclasses import dataclass

from lmscope.cli.common import check_outputs, emit, load_model, model_options, output_options
from lmscope.results import Result

WHOLE_MODEL = ("embed", "final_norm", "logits")    # site kinds without a layer


@dataclass
class ModelSites(Result, kind="sites"):
    """A model's dimensions and sites. `shapes` is the trailing (feature) shape of each site kind's activation
    [batch, seq, *shape]; null for the attention pattern, whose key length depends on the input."""
    model: str
    description: str                    # the model as Python prints it
    family: str                         # the adapter that says where each site lives
    adapter_notes: str
    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    d_mlp: int
    vocab_size: int
    parallel: bool                      # attention and MLP read the same residual stream (GPT-NeoX)
    sites: list[str]
    shapes: dict[str, "list[int] | None"]

    def summary(self) -> str:
        lines = [self.description, f"adapter: {self.family}" + (f" ({self.adapter_notes})" if self.adapter_notes
                                                               else "")]
        for kind, shape in self.shapes.items():
            layers = "" if kind in WHOLE_MODEL else f".0 .. {kind}.{self.n_layers - 1}"
            lines.append(f"  {kind}{layers}  [batch, seq, {', '.join(map(str, shape))}]" if shape is not None else
                         f"  {kind}{layers}  [batch, heads, query, key]")
        return "\n".join(lines)


def model_sites(model) -> ModelSites:
    sites = model.sites()
    shapes = {}
    for kind in dict.fromkeys(s.kind for s in sites):
        shape = model.site_shape(kind if kind in WHOLE_MODEL else f"{kind}.0")
        shapes[kind] = None if shape is None else list(shape)
    return ModelSites(model=model.spec, description=repr(model), family=model.adapter.family,
                      adapter_notes=model.adapter.notes, n_layers=model.n_layers, d_model=model.d_model,
                      n_heads=model.n_heads, d_head=model.d_head, d_mlp=model.d_mlp, vocab_size=model.vocab_size,
                      parallel=model.parallel, sites=[str(s) for s in sites], shapes=shapes)


def cmd_sites(args) -> None:
    check_outputs(args)
    emit(args, model_sites(load_model(args)))


def register(sub) -> None:
    p = sub.add_parser("sites", help="the model's shape and its site names")
    model_options(p)
    output_options(p, html=False)
    p.set_defaults(func=cmd_sites)
