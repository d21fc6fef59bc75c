"""TopK SAE training step: lmscope against EleutherAI's sparsify and SAELens at the same settings, on the same
batches: tokens/s and held-out FVU after the same number of steps.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sae_peers.py [--steps 40] [--batch 4096] [--d-in 576]
        [--d-sae 4608] [--k 32] [--lr 1e-3] [--device cuda] [--json FILE]

Data: synthetic sparse activations (each row a sum of 20 of 9216 random unit directions with exponential
magnitudes, plus Gaussian noise, scaled to unit mean squared norm), batch i drawn from seed i, the held-out set
from another seed: the same batches for every library. One step of each library: its own TopK forward and loss,
backward, Adam (the same learning rate for all), and its own decoder-norm handling (lmscope and sparsify: remove
the gradient parallel to decoder rows and renormalise; SAELens: rescale_acts_by_decoder_norm, its default). AuxK
is off for all (no latent can be dead within so few tokens). Steps interleave (step i of every library, in an
order rotated per step), so machine drift hits all alike. Reported: median step time -> tokens/s, per-step time
ratio to lmscope (median and 95% bootstrap interval), and FVU on 16384 held-out rows after the last step
(float64). A library that is not installed (the optional `bench` extra) is reported as missing.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import torch

from lmscope.sae.architectures import build_sae
from lmscope.sae.config import SAEConfig

N_TRUE, K_TRUE = 9216, 20


def dictionary(d_in: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(12345)
    d = torch.randn(N_TRUE, d_in, generator=g)
    return d / d.norm(dim=1, keepdim=True)


def batch(true_dict: torch.Tensor, rows: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(N_TRUE, (rows, K_TRUE), generator=g)
    mags = torch.empty(rows, K_TRUE).exponential_(1.0, generator=g)
    x = torch.einsum("rk,rkd->rd", mags, true_dict[idx]) + 0.05 * torch.randn(rows, true_dict.shape[1], generator=g)
    return x / (K_TRUE * 2 + 0.05 ** 2 * true_dict.shape[1]) ** 0.5      # about unit mean squared norm


def fvu(recon: torch.Tensor, x: torch.Tensor) -> float:
    x, recon = x.double(), recon.double()
    return float((x - recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def lmscope_sae(args, device):
    sae = build_sae(SAEConfig(architecture="topk", d_in=args.d_in, d_sae=args.d_sae, k=args.k)).to(device).train()
    opt = torch.optim.Adam(sae.parameters(), lr=args.lr)

    def step(x):
        out = sae(x, None, None)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        sae.remove_parallel_grad()
        opt.step()
        sae.normalize_decoder()

    def recon(x):
        sae.eval()
        with torch.no_grad():
            out = sae(x)[0]
        sae.train()
        return out
    return step, recon


def sparsify_sae(args, device):
    from sparsify import SparseCoder, SparseCoderConfig
    sae = SparseCoder(args.d_in, SparseCoderConfig(num_latents=args.d_sae, k=args.k), device=device)
    opt = torch.optim.Adam(sae.parameters(), lr=args.lr)

    def step(x):
        out = sae(x)
        opt.zero_grad(set_to_none=True)
        out.fvu.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        sae.set_decoder_norm_to_unit_norm()

    def recon(x):
        with torch.no_grad():
            return sae(x).sae_out
    return step, recon


def saelens_sae(args, device):
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=args.d_in, d_sae=args.d_sae, k=args.k, dtype="float32",
                                                device=str(device)))
    opt = torch.optim.Adam(sae.parameters(), lr=args.lr)
    coefficients = sae.get_coefficients() if hasattr(sae, "get_coefficients") else {}
    coefficients = {k: (v.value if hasattr(v, "value") else v) for k, v in coefficients.items()}
    count = [0]

    def step(x):
        out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients=coefficients, dead_neuron_mask=None,
                                                       n_training_steps=count[0], is_logging_step=False))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        count[0] += 1

    def recon(x):
        with torch.no_grad():
            return sae.decode(sae.encode(x))
    return step, recon


LIBRARIES = {"lmscope": lmscope_sae, "sparsify": sparsify_sae, "saelens": saelens_sae}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--d-sae", type=int, default=4608)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--libraries", default=",".join(LIBRARIES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    true_dict = dictionary(args.d_in)
    held_out = batch(true_dict, 16384, seed=10 ** 6).to(device)
    libs, missing = {}, {}
    for name in args.libraries.split(","):
        torch.manual_seed(0)
        try:
            libs[name] = LIBRARIES[name](args, device)
        except Exception as e:  # noqa: BLE001 - an optional peer: report why it is absent
            missing[name] = f"{type(e).__name__}: {e}"[:200]
            print(f"{name}: not measured ({missing[name]})", flush=True)
    names = list(libs)
    times = {n: [] for n in names}
    for i in range(args.steps):
        x = batch(true_dict, args.batch, seed=i).to(device)
        for name in names[i % len(names):] + names[:i % len(names)]:
            sync()
            start = time.perf_counter()
            libs[name][0](x)
            sync()
            times[name].append(time.perf_counter() - start)
    warm = min(3, args.steps - 1)                  # the first steps allocate: left out of the timing
    rows = {}
    for name in names:
        step_s = statistics.median(times[name][warm:])
        row = {"step_ms": round(step_s * 1e3, 2), "tokens_per_s": round(args.batch / step_s),
               "heldout_fvu": round(fvu(libs[name][1](held_out), held_out), 5)}
        if "lmscope" in libs:
            ratios = [t / b for t, b in zip(times[name][warm:], times["lmscope"][warm:])]
            rng = random.Random(0)
            meds = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(2000))
            row["time_ratio_to_lmscope"] = round(statistics.median(ratios), 3)
            row["ratio_ci95"] = [round(meds[50], 3), round(meds[1949], 3)]
        rows[name] = row
        print(f"{name:<9} {row['step_ms']:9.1f} ms/step  {row['tokens_per_s']:>8} tokens/s  held-out FVU "
              f"{row['heldout_fvu']:.4f}  time / lmscope {row.get('time_ratio_to_lmscope', float('nan')):.3f}",
              flush=True)
    report = {"settings": vars(args), "threads": torch.get_num_threads(), "missing": missing, "results": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
