"""Screenshots of every view of `lmscope lab` on a model (default: the default model), into docs/lab_<view>.png.

    OMP_NUM_THREADS=1 python scripts/lab_screenshots.py [--model smollm2] [--out docs]

Prepares a runs folder first (a small TopK SAE at resid_post.12 trained with lmscope.sae on 32k wiki tokens), then
starts a real `lmscope lab`, drives it in headless Chromium (Playwright) and photographs each view once its result
is on the page. Takes a few minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

import lmscope
from lmscope.lab.testing import browser, lab_process

LONG = 600_000   # ms: jobs on a real model on a laptop


def prepare_runs(model, runs: Path, layer: int) -> None:
    from lmscope.sae import ModelSource, TrainConfig, train_sae
    site = f"resid_post.{layer}"
    train_sae(TrainConfig(out=str(runs / f"sae_resid_post_{layer}"), site=site, n_tokens=32_768, batch_size=1024,
                          expansion=4, k=16, seq_len=128, shuffle_buffer=8192, dead_tokens=16_384),
              ModelSource(model, site, "wiki", seq_len=128), progress=False)


def shoot(page, out: Path, name: str) -> None:
    page.wait_for_timeout(400)
    page.screenshot(path=str(out / f"lab_{name}.png"), full_page=True)
    print(f"wrote {out / f'lab_{name}.png'}", flush=True)


def tab(page, name: str) -> None:
    page.click(f"#tabs button[data-tab='{name}']")


def workbench(page, out):
    page.fill("#wb-prompt", "The capital of Japan is")
    page.fill("#wb-target", " Tokyo")
    page.click("#wb-lens")
    page.wait_for_selector("#wb-target-plot .scatterlayer", timeout=LONG)
    box = page.locator("#wb-lens-plot .nsewdrag").first.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.93, box["y"] + box["height"] * 0.1)
    page.wait_for_selector("#wb-hover table")
    shoot(page, out, "workbench")
    page.fill("#wb-layer", "4")
    page.click("#wb-attn")
    page.wait_for_selector("#wb-attn-plot .heatmaplayer", timeout=LONG)
    page.click("#wb-dla")
    page.wait_for_selector("#wb-dla-plots .plot .barlayer", timeout=LONG)
    page.click("#wb-recipes button[data-kind='python']")
    page.click("#wb-recipes button[data-kind='cli']")
    shoot(page, out, "workbench_attention_dla")


def steering(page, out, layer):
    tab(page, "steering")
    page.fill("#st-prompt", "I went to the new restaurant yesterday and the food was")
    page.select_option("#st-source", "set:sentiment")
    page.fill("#st-layer", str(layer))
    page.eval_on_selector("#st-coef", "e => { e.value = '-0.3'; e.dispatchEvent(new Event('input')); "
                                      "e.dispatchEvent(new Event('change')); }")
    page.wait_for_function("document.getElementById('st-kl').textContent.includes('coefficient -0.3')",
                           timeout=LONG)
    page.click("#st-recipes button[data-kind='cli']")
    shoot(page, out, "steering")


def neuron(page, out):
    tab(page, "neuron")
    page.fill("#ne-layer", "12")
    page.fill("#ne-index", "100")
    page.fill("#ne-tokens", "8000")
    page.fill("#ne-topk", "10")
    page.click("#ne-run")
    page.wait_for_selector("#ne-plots .plot .main-svg", timeout=LONG)
    shoot(page, out, "neuron")


def circuits(page, out):
    tab(page, "circuits")
    page.select_option("#ci-task", "ioi")
    page.select_option("#ci-method", "eap")
    page.fill("#ci-n", "24")
    page.fill("#ci-heads", "12")
    page.click("#ci-patch")
    page.wait_for_selector("#ci-patching .plot .heatmaplayer", timeout=LONG)
    page.click("#ci-find")
    page.wait_for_selector("#ci-graph[data-ready='1'] .scatterlayer", timeout=LONG)
    # the node traces come last: embed, head, mlp, logits; click a head
    marker = page.locator("#ci-graph .scatterlayer .trace:nth-last-child(3) .points path").first
    box = marker.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_selector("#ci-node[data-node]", timeout=10_000)
    page.wait_for_timeout(400)
    page.screenshot(path=str(out / "lab_circuits.png"), full_page=False)     # the graph; the page goes on
    print(f"wrote {out / 'lab_circuits.png'}", flush=True)
    page.locator("#ci-patching .plot").first.screenshot(path=str(out / "lab_circuits_patching.png"))
    print(f"wrote {out / 'lab_circuits_patching.png'}", flush=True)


def sae(page, out):
    tab(page, "sae")
    page.fill("#sae-tokens", "8192")
    page.click("#sae-open")
    page.wait_for_selector("#sae-list tr.feat", timeout=LONG)
    page.locator("#sae-list tr.feat").nth(3).click()
    page.wait_for_selector("#sae-dash[data-latent] .plot .main-svg", timeout=LONG)
    page.fill("#sae-value", "4")
    page.click("#sae-steer")
    page.wait_for_selector("#sae-steer-out pre", timeout=LONG)
    shoot(page, out, "sae")


def papers(page, out, layer):
    tab(page, "papers")
    page.fill("#pa-concepts", "ocean,music")
    page.fill("#pa-layers", str(layer))
    page.fill("#pa-strengths", "0.5")
    page.fill("#pa-new", "16")
    page.click("#pa-intro")
    page.wait_for_selector("#pa-transcripts table", timeout=LONG)
    shoot(page, out, "papers")


def runs_view(page, out):
    tab(page, "runs")
    page.wait_for_selector("#runs-cached table tr:nth-child(2) button", timeout=LONG)
    page.locator("#runs-cached table tr:nth-child(2) button").click()
    page.wait_for_selector("#runs-open .plot .main-svg", timeout=LONG)
    shoot(page, out, "runs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--out", default="docs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    model = lmscope.load(args.model)
    layer = model.n_layers * 2 // 5
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp)
        prepare_runs(model, runs, layer)
        del model
        with lab_process(args.model, runs, log=open(runs / "lab.log", "wb")) as url, browser((1500, 950)) as ctx:
            page = ctx.new_page()
            page.goto(url)
            page.wait_for_selector("body[data-plotly='1'][data-ready='1']", state="attached")
            workbench(page, out)
            steering(page, out, layer)
            neuron(page, out)
            circuits(page, out)
            sae(page, out)
            papers(page, out, layer)
            runs_view(page, out)


if __name__ == "__main__":
    main()
