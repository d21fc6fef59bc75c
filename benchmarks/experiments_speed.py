"""Experiments, old path against new path in the same run: wall time and the numbers each path reports.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/experiments_speed.py [--model smollm2] [--rounds 2]
        [--only patching,eap-ig,eap-ig-cli,eap-ig-edges,eap-ig-edges-cli,dose,patchscope,backpatch] [--json FILE]

Each experiment runs its old path (what main did before issue 15: a full forward from the embedding for every
patched run / factor, a clean pass and one interpolation step per pass over every position, one generation per
cell) and its new path (resume from the cached layer; EAP-IG: batched steps on each prompt's prefix cache, the
clean run from the last step; batched generations), alternating which goes first from round to round, so that a
drift in machine speed hits both alike. Reported per experiment: the median over rounds of old / new wall time
(each round's ratio is measured back to back), the absolute seconds, and the largest difference between the
numbers the two paths report (0.0 = bit for bit the same). Knowledge neurons, LRE and the function-vector CIE are
measured by benchmarks/resume_speedups.py.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import lmscope
from lmscope.circuits import load_circuit_task as load_task
from lmscope.circuits.attribution import attribute
from lmscope.circuits.patching import activation_patching
from lmscope.core.edits import replace
from lmscope.lenses.backpatch import answer_starts, backpatch, two_hop_items
from lmscope.lenses.patchscope import patch_edit, patchscope, placeholder_position, resolve_template
from lmscope.neurons import neuron_dose_response

DOSE_PROMPTS = ["The capital of Japan is", "Paris is the capital of", "The cat sat on the", "One, two, three,",
                "She opened the door and", "In 1492 Columbus sailed", "The opposite of hot is", "Water boils at"]


def _max_diff(a, b) -> float:
    ta, tb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    both = ~(ta.isnan() & tb.isnan())
    return float((ta[both] - tb[both]).abs().max()) if both.any() else 0.0


def patching(model, args):
    task = load_task(model, "ioi", n=args.prompts)
    kw = dict(sites=args.patch_sites.split(","), batch_size=args.prompts)
    old = lambda: activation_patching(model, task, resume=False, **kw)  # noqa: E731
    new = lambda: activation_patching(model, task, **kw)  # noqa: E731

    def compare(a, b):
        return {"max_abs_diff_raw": max(_max_diff(a.raw[k], b.raw[k]) for k in a.raw),
                "max_abs_diff_effects": max(_max_diff(a.effects[k], b.effects[k]) for k in a.effects),
                "n_forwards": [a.n_forwards, b.n_forwards],
                "top_old": a.top(next(iter(a.raw)), 3), "top_new": b.top(next(iter(b.raw)), 3)}
    return old, new, compare, f"IOI, {args.prompts} prompts, sites {args.patch_sites} (per position; z per head)"


def eap_ig(model, args):
    task = load_task(model, "ioi", n=args.prompts * 2)
    kw = dict(method="eap-ig", steps=5, batch_size=args.prompts * 2)
    return _eap_ig_nodes(model, task, kw, f"IOI, {args.prompts * 2} prompts, 5 steps, node scores")


def eap_ig_cli(model, args):
    """`lmscope attribute ioi --method eap-ig` as the README runs it: 32 prompts, batches of 16, 5 steps."""
    task = load_task(model, "ioi", n=32)
    return _eap_ig_nodes(model, task, dict(method="eap-ig", steps=5, batch_size=16),
                         "IOI, 32 prompts in batches of 16, 5 steps, node scores (the attribute command's defaults)")


def _eap_ig_nodes(model, task, kw, what):
    old = lambda: attribute(model, task, step_rows=0, prefix_cache=False, **kw)  # noqa: E731
    new = lambda: attribute(model, task, **kw)  # noqa: E731

    def compare(a, b):
        return {"max_abs_diff_heads": _max_diff(a.heads, b.heads), "max_abs_diff_mlps": _max_diff(a.mlps, b.mlps),
                "abs_diff_embed": abs(a.embed - b.embed),
                "max_abs_head_score": max(abs(v) for row in a.heads for v in row),
                "top_old": a.top_nodes(3), "top_new": b.top_nodes(3), "notes_new": b.notes}
    return old, new, compare, what


def eap_ig_edges(model, args):
    return _eap_ig_edges(model, load_task(model, "ioi", n=args.prompts),
                         dict(method="eap-ig", steps=3, edges=True, batch_size=args.prompts),
                         f"IOI, {args.prompts} prompts, 3 steps, node and edge scores")


def eap_ig_edges_cli(model, args):
    """`lmscope attribute ioi --method eap-ig --edges`: 32 prompts, batches of 16, 5 steps."""
    return _eap_ig_edges(model, load_task(model, "ioi", n=32), dict(method="eap-ig", steps=5, edges=True, batch_size=16),
                         "IOI, 32 prompts in batches of 16, 5 steps, node and edge scores (the attribute command's "
                         "defaults with --edges)")


def _eap_ig_edges(model, task, kw, what):
    old = lambda: attribute(model, task, step_rows=0, prefix_cache=False, **kw)  # noqa: E731
    new = lambda: attribute(model, task, **kw)  # noqa: E731

    def compare(a, b):
        flat = lambda r: [v if v is not None else float("nan") for row in r.edges for v in row]  # noqa: E731
        return {"max_abs_diff_edges": _max_diff(flat(a), flat(b)), "max_abs_diff_heads": _max_diff(a.heads, b.heads),
                "max_abs_diff_mlps": _max_diff(a.mlps, b.mlps),
                "max_abs_edge_score": max(abs(v) for v in flat(a) if v == v),
                "top_edges_old": a.top_edges(3), "top_edges_new": b.top_edges(3), "notes_new": b.notes}
    return old, new, compare, what


def dose(model, args):
    layer = model.n_layers * 2 // 3
    kw = dict(tokens=[" Tokyo", " the"], factors=[-2, -1, 0, 0.5, 1, 2, 4, 8])
    old = lambda: neuron_dose_response(model, layer, list(range(16)), DOSE_PROMPTS, resume=False, **kw)  # noqa
    new = lambda: neuron_dose_response(model, layer, list(range(16)), DOSE_PROMPTS, **kw)  # noqa: E731

    def compare(a, b):
        return {"max_abs_diff_probs": max(_max_diff(a.probs[t], b.probs[t]) for t in a.probs),
                "max_abs_diff_kl": _max_diff(a.kl, b.kl), "kl_new": b.kl}
    return old, new, compare, f"16 neurons of layer {layer}, 8 factors, 8 prompts"


def patchscope_row(model, args):
    source = "The Eiffel Tower is in the city of"
    layers = list(range(0, model.n_layers, 2))

    def old():
        template, placeholder = resolve_template("identity")
        tpos = placeholder_position(model, template, placeholder)
        acts = model.run(source, read=[f"resid_post.{s}" for s in layers]).acts
        return [model.generate(template, [patch_edit(s, acts[f"resid_post.{s}"][0, -1], tpos)],
                               max_new_tokens=5).text for s in layers]

    def new():
        return [c.text for c in patchscope(model, source, layers=layers, max_new_tokens=5).cells]

    def compare(a, b):
        return {"texts_equal": a == b, "differing_cells": sum(x != y for x, y in zip(a, b)), "cells": len(a)}
    return old, new, compare, f"identity template, {len(layers)} layers, 5 new tokens"


def backpatch_row(model, args):
    items = two_hop_items()[:4]
    layers = list(range(0, model.n_layers, 6))
    pairs = [(s, t) for s in layers for t in layers if s > t]

    def old():   # back-patching as on main before issue 15: one generation per (pair, donor)
        states = [torch.stack([model.run(x["query"], read=[f"resid_post.{s}"]).acts[f"resid_post.{s}"][0, -1]
                               for s in layers]) for x in items]
        out = []
        for index, x in enumerate(items):
            n_new = len(model.tokenizer(" " + x["answer"].strip(), add_special_tokens=False)["input_ids"]) + 1
            fixed = []
            if not answer_starts(model.generate(x["query"], max_new_tokens=n_new).text, x["answer"]):
                last = model.encode(x["query"])[0].shape[1] - 1
                for s, t in pairs:
                    for donor in (states[index], states[(index + 1) % len(items)]):
                        edit = replace(f"resid_post.{t}", donor[layers.index(s)], positions=[last])
                        text = model.generate(x["query"], edits=[edit], max_new_tokens=n_new).text
                        if donor is states[index] and answer_starts(text, x["answer"]):
                            fixed.append((s, t, text))
            out.append(fixed)
        return out

    def new():
        return [q.fixed_by for q in backpatch(model, items, layers=layers).queries]

    def compare(a, b):
        return {"fixed_by_equal": a == b, "n_fixed": sum(bool(x) for x in b)}
    return old, new, compare, f"4 queries, layers {layers}, own and control donors"


EXPERIMENTS = {"patching": patching, "eap-ig": eap_ig, "eap-ig-cli": eap_ig_cli, "eap-ig-edges": eap_ig_edges,
               "eap-ig-edges-cli": eap_ig_edges_cli, "dose": dose, "patchscope": patchscope_row,
               "backpatch": backpatch_row}


def timed(fn):
    _sync()
    start = time.perf_counter()
    out = fn()
    _sync()
    return time.perf_counter() - start, out


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=4, help="IOI prompts for patching (EAP-IG uses twice as many)")
    parser.add_argument("--only", default=",".join(EXPERIMENTS))
    parser.add_argument("--patch-sites", default="resid_pre,attn_out,mlp_out,z", help="site kinds of the heatmap")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = lmscope.load(args.model, dtype=args.dtype, device=args.device)
    rows = []
    for name in args.only.split(","):
        old, new, compare, what = EXPERIMENTS[name](model, args)
        times = {"old": [], "new": []}
        outs = {}
        for r in range(args.rounds):
            for path in (("old", "new") if r % 2 == 0 else ("new", "old")):
                seconds, outs[path] = timed(old if path == "old" else new)
                times[path].append(seconds)
        ratios = [o / n for o, n in zip(times["old"], times["new"])]
        row = {"experiment": name, "what": what, "old_s": [round(t, 2) for t in times["old"]],
               "new_s": [round(t, 2) for t in times["new"]], "speedup_per_round": [round(x, 2) for x in ratios],
               "speedup_median": round(statistics.median(ratios), 2), "results": compare(outs["old"], outs["new"])}
        rows.append(row)
        print(f"{name:<11} old {statistics.median(times['old']):8.2f}s  new {statistics.median(times['new']):8.2f}s"
              f"  speed-up x{row['speedup_median']:.2f}  ({what})", flush=True)
        print("            ", json.dumps(row["results"], default=str)[:400], flush=True)
    report = {"model": args.model, "dtype": args.dtype, "device": args.device, "threads": torch.get_num_threads(),
              "rounds": args.rounds,
              "elsewhere": ["knowledge neurons, LRE, FV CIE: benchmarks/resume_speedups.py"], "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=str)
    print(json.dumps(report, default=str))


if __name__ == "__main__":
    main()
