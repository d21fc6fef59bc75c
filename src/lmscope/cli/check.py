"""`lmscope check [MODEL]`: a certificate that the model's sites read and edit exactly (the checks are in
lmscope.core.check; see its docstring). Exit code 0 when every check passes, 1 (EXIT_CHECK_FAILED) when one fails,
2 for bad input as everywhere.

    ModelCheck                 the result: one CheckItem (max |diff|, tolerance, pass) per check, and the verdict
    check_model(model)         runs the checks and builds it
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field

import plotly.graph_objects as go

from lmscope.cli.common import check_outputs, emit, load_model, model_options, output_options
from lmscope.core.check import DEFAULT_PROMPTS, CheckItem, run_checks
from lmscope.results import Result

EXIT_CHECK_FAILED = 1   # the model ran, and a check failed


@dataclass
class ModelCheck(Result, kind="model_check"):
    model: str
    family: str
    dtype: str
    n_layers: int
    parallel: bool
    prompts: list[str]
    n_tokens: int
    checks: list[CheckItem] = field(default_factory=list)
    passed: bool = False

    def summary(self) -> str:
        width = max(len(c.name) for c in self.checks)
        lines = [f"lmscope check: {self.model} ({self.family}, {self.n_layers} layers, {self.dtype}, "
                 f"{'parallel' if self.parallel else 'sequential'} blocks; {len(self.prompts)} prompts, "
                 f"{self.n_tokens} tokens)"]
        for c in self.checks:
            where = f"  [{c.where}]" if c.where and c.max_abs_diff > 0 else ""
            diff = "error" if c.max_abs_diff == float("inf") and c.where.startswith("error") else \
                f"{c.max_abs_diff:.3e}"
            lines.append(f"  {'PASS' if c.passed else 'FAIL'}  {c.name:<{width}}  max |diff| {diff}"
                         f"  tolerance {c.tolerance_text}{where}")
        failed = [c.name for c in self.checks if not c.passed]
        lines.append("certificate: every check passed" if self.passed else
                     f"certificate: FAILED ({', '.join(failed)}): the sites of this model do not mean what they say; "
                     f"its adapter names the wrong modules")
        return "\n".join(lines)

    def figure(self):
        names = [c.name for c in self.checks]
        fig = go.Figure()
        fig.add_bar(x=names, y=[max(c.max_abs_diff, 1e-45) for c in self.checks], name="max |diff|",
                    marker_color=["seagreen" if c.passed else "crimson" for c in self.checks])
        fig.add_scatter(x=names, y=[c.tolerance if c.tolerance > 0 else None for c in self.checks],
                        mode="markers", marker_symbol="line-ew-open", marker_size=30, name="tolerance")
        fig.update_layout(title=f"lmscope check: {self.model} ({'pass' if self.passed else 'FAIL'})",
                          yaxis_type="log", yaxis_title="max |diff| (0 shown at 1e-45)")
        return fig

    def page_body(self) -> str:
        return f"<pre>{html.escape(self.summary())}</pre>"



def check_model(model, prompts=DEFAULT_PROMPTS) -> ModelCheck:
    """Run every check of lmscope.core.check on `model`; the result says which passed (it never raises on a failed
    check)."""
    checks, n_tokens = run_checks(model, prompts)
    return ModelCheck(model.spec, model.adapter.family, str(model.dtype).replace("torch.", ""), model.n_layers,
                      model.parallel, list(prompts), n_tokens, checks, all(c.passed for c in checks))


def cmd_check(args) -> int:
    if args.spec:
        args.model = args.spec
    check_outputs(args)
    result = check_model(load_model(args))
    emit(args, result)
    return 0 if result.passed else EXIT_CHECK_FAILED


def register(sub) -> None:
    p = sub.add_parser("check", help="certify a model: its sites read and edit exactly (exit 1 if a check fails)")
    p.add_argument("spec", nargs="?", metavar="MODEL", help="the model to check, as --model (default: --model)")
    model_options(p)
    output_options(p)
    p.set_defaults(func=cmd_check)
