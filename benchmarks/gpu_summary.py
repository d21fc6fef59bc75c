"""The table of benchmarks/gpu.sh: absolute figures and model FLOP utilisation from the files its steps wrote.

    python benchmarks/gpu_summary.py OUT_FOLDER --peak-tflops 989

MFU = achieved FLOP/s / peak FLOP/s. Forward: 2 FLOPs per parameter per token (the matrix products; attention's
own products are left out, a small share at these lengths). SAE step: 6 * d_in * d_sae per token (the dense encoder
product forward and its two backward products; the sparse decoder of k latents is negligible).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def _json(path: Path):
    if not path.exists():
        return None
    text = path.read_text()
    for start in (0, text.find("{")):
        try:
            return json.loads(text[start:]) if start >= 0 else None
        except json.JSONDecodeError:
            continue
    lines = [line for line in text.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--peak-tflops", type=float, required=True)
    args = parser.parse_args()
    out, peak = Path(args.out), args.peak_tflops * 1e12
    lines = [f"peak assumed: {args.peak_tflops:g} TFLOP/s", ""]
    for name in ("trace_fp32", "trace_fast"):
        rep = _json(out / f"{name}.json")
        if not rep:
            lines.append(f"{name}: no result (see {name}.err)")
            continue
        lines += [f"### tracing overhead, {rep['device']}, {rep['dtype']} ({rep['model']}, {rep['rounds']} rounds)",
                  "| shape | contender | median ms | tokens/s | MFU | ratio to bare [95% CI] | logits equal |",
                  "|---|---|---|---|---|---|---|"]
        for shape, rows in rep["shapes"].items():
            b, length = map(int, shape.split("x"))
            for who, r in rows.items():
                tps = b * length / (r["median_ms"] / 1e3)
                lines.append(f"| {shape} | {who} | {r['median_ms']:.3f} | {tps:,.0f} | "
                             f"{tps * 2 * rep['n_params'] / peak:.2%} | {r['ratio_median']:.3f} "
                             f"[{r['ratio_ci95'][0]:.3f}, {r['ratio_ci95'][1]:.3f}] | {r['equal']} |")
        lines.append("")
    h = _json(out / "harvest.out")
    if h:
        lines += ["### harvest", f"{h['model']} ({h['model_dtype']}, {h['device']}), {h['tokens']} tokens: harvest "
                  f"{h['harvest_tokens_per_s']:,.0f} tokens/s (MFU {h['harvest_tokens_per_s'] * 2 * h['n_params'] / peak:.2%}"
                  f" of a full forward's FLOPs), bare forward {h['bare_forward_tokens_per_s']:,.0f} tokens/s, ratio "
                  f"{h['ratio_harvest_to_bare']:.3f}", ""]
    s = _json(out / "sae.json")
    if s:
        st = s["settings"]
        lines += [f"### SAE TopK step, d_in {st['d_in']}, d_sae {st['d_sae']}, k {st['k']}, batch {st['batch']}",
                  "| library | ms/step | tokens/s | MFU | held-out FVU |", "|---|---|---|---|---|"]
        for who, r in s["results"].items():
            lines.append(f"| {who} | {r['step_ms']} | {r['tokens_per_s']:,} | "
                         f"{r['tokens_per_s'] * 6 * st['d_in'] * st['d_sae'] / peak:.2%} | {r['heldout_fvu']} |")
        lines += [f"missing: {s['missing']}" if s["missing"] else "", ""]
    e = _json(out / "eapig.json")
    if e:
        lines += [f"### EAP-IG, old path vs new path ({e['model']}, {e['dtype']}, {e.get('device', 'cpu')}, "
                  f"{e['rounds']} rounds)", "| row | old s | new s | speed-up (median) |", "|---|---|---|---|"]
        for r in e["rows"]:
            lines.append(f"| {r['what']} | {r['old_s']} | {r['new_s']} | {r['speedup_median']}x |")
        lines.append("")
    status = (out / "status.txt").read_text() if (out / "status.txt").exists() else ""
    lines += ["### steps", "```", status.strip(), "```"]
    for name in ("ddp_harvest", "ddp_sae"):
        rep = _json(out / f"{name}.out")
        if rep:
            keys = {k: rep[k] for k in ("tokens_per_s", "world_size", "n_tokens", "tokens", "wall_s", "final")
                    if k in rep}
            lines.append(f"{name}: {json.dumps(keys)[:300]}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
