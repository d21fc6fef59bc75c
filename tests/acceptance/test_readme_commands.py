"""Every `lmscope` command the README shows runs, in README order, through `lmscope.cli.main`, so the README cannot
drift from the CLI again (issue 18).

What counts as a command: a line of any fenced block or indented block that starts with `lmscope ` (after an optional
`$ `, `before:` / `after:`, `.venv/bin/`, leading `VAR=value` environment assignments or `... && `; backslash
continuations joined), a line running `-m lmscope.cli`, and an inline code span that starts with `lmscope `. Each one
is either run or listed in SKIP with its reason; both lists are checked against the README, so neither goes stale.

How they stay cheap: each command runs on a random-weight Llama of the default model's family and depth (30 layers,
so every layer the README names exists) but tiny width, with the default model's own tokenizer (so " Tokyo" is one
token and every bundled prompt set tokenizes as in the README). A `--model` naming a real model is replaced by it (a
`--model` naming a folder an earlier command wrote, or a `random:` model, is kept); a command that takes `--model`
and has none gets it. Costly flags are overridden by flags appended after the README's own (argparse: the later
flag wins), all in OVERRIDES. Commands run in one temporary folder in README order, so the files earlier commands
write (harvest -> sae train -> sae eval; circuit --out -> circuit eval; sparse train -> sparse prune ...) are there
for later ones. A command whose README output is `lmscope: error: ...` must exit 2 with that one line; every other
must exit 0 and write every file it names (--html, --json FILE, --out, --graph, --save).

The README's Python blocks outside the tour (test_readme.py runs the tour on the default model) then run on the same
tiny model, bound to `model`, in the same folder (the harvest block reads the harvest command's folder). The tests
depend on running in file order: select them with -k and a later command may miss an earlier one's files.

LMSCOPE_README=<file> runs the commands of another copy of the README (to try proposed README fixes)."""
from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

import lmscope

cli_main = importlib.import_module("lmscope.cli.main")   # the module (lmscope.cli.main is also the function)

README_PATH = Path(os.environ.get("LMSCOPE_README") or Path(__file__).resolve().parents[2] / "README.md")
README = README_PATH.read_text(encoding="utf-8")
TINY = "TINY"            # stands for hf:<the tiny model's folder> until the fixture has built it

# Shown in the README but not run, each with its reason (the normalised command text, comments dropped).
SKIP = {
    "lmscope ...": "placeholder for every later command",
    "lmscope <command> --help": "placeholder (a command name goes there)",
    "lmscope <command> --help shows a command's options. Errors: one line, exit code 2.":
        "output: the last line of `lmscope --help`",
    "lmscope check MODEL": "placeholder (MODEL)",
    "lmscope check: smollm2 (llama, 30 layers, float32, sequential blocks; 2 prompts, 27 tokens)":
        "output of `lmscope check --model smollm2`",
    "lmscope check: gemma3-270m (gemma, 18 layers, float32, sequential blocks; 2 prompts, 28 tokens)":
        "output of `lmscope check --model gemma3-270m`",
    "lmscope task T --n 200": "placeholder (T: a task of the table)",
    "lmscope lre --relation NAME --layer 6,12 --train 4 --model smollm2": "placeholder (NAME: a relation)",
    "lmscope fv --task NAME --json fv.json": "placeholder (NAME: a task of the table)",
    "lmscope sae train": "names the command in prose (its full lines run)",
    "lmscope harvest": "names the command in prose (its full line runs)",
    "lmscope sae": "names the command group in prose",
    "lmscope circuit": "names the command in prose (its full lines run)",
    "lmscope direction sweep": "names the command in prose (its full lines run)",
    "lmscope sparse train --preset cpu": "names the two `sparse train --preset cpu ... --out` lines, which run",
    "lmscope lab": "a server that runs until Ctrl-C; tests/lab and tests/cli/test_lab_command.py cover it",
    "torchrun --nproc_per_node 8 -m lmscope.cli sparse train --preset gpu --out runs/sparse_gpu":
        "needs 8 GPUs (torchrun, --preset gpu); tests/papers/weight_sparse covers the DDP path on CPU",
}

# Flags appended to a command (the later flag wins), keyed by the command's leading words (the longest key that
# starts the command applies). Each keeps the README's flags and makes the command fit a test on one CPU thread.
OVERRIDES = {
    "neuron": ["--tokens", "2000"],                                   # README: 100,000 corpus tokens
    "knowledge-neurons": ["--prompts", "4", "--steps", "2", "--sweep", "1,5"],   # 16 prompts, 10 IG steps, k to 500
    "steer": ["--max-new-tokens", "4", "--kl-tokens", "64"],          # 30 greedy tokens, 512 KL tokens
    "direction extract": ["--batch-size", "64", "--layers", "0,18,29"],   # 16 prompts a pass, all 30 layers
    "direction sweep": ["--n-eval", "2", "--batch-size", "64"],        # 16 selection prompts per side
    "fv": ["--mean-prompts", "4", "--cie-prompts", "2", "--layers", "13,17"],   # 32 + 20 prompts, every layer
    "harvest": ["--tokens", "4096", "--shard-tokens", "1024"],       # 2M tokens; several shards all the same
    "sae train": ["--n-tokens", "4096", "--batch-size", "512", "--expansion", "64"],   # 2M tokens, batch 4096;
    # d_sae = 72 x 64 = 4608, the README's (576 x 8), so `sae steer --latent 2144` names a latent that exists
    "sae eval": ["--tokens", "256"],                                  # 16,384 held-out tokens
    "sae features": ["--tokens", "1024"],                             # 50,000 held-out tokens
    "sae steer": ["--max-new-tokens", "4"],                           # 20 generated tokens
    "sae synthetic": ["--tokens", "4096"],                            # 150,000 samples
    "patch": ["--n", "4", "--layers", "0,12,29"],                     # 64 prompts, every layer
    "attribute": ["--n", "4"],                                        # 32 prompts (default)
    "circuit": ["--n", "16", "--steps", "3", "--random-draws", "2"],   # 200 prompts, 100 steps, 10 draws
    "circuit eval": ["--n", "16", "--random-draws", "2"],             # 200 prompts of a built-in task, 10 draws
    "patchscope": ["--max-new-tokens", "2"],                          # 4 tokens per cell
    "backpatch": ["--layers", "0,15,29"],                             # every 3rd layer (45 pairs)
    "lre": ["--beta", "1", "--ranks", "32"],                          # 4 betas, 3 ranks
    "tuned-lens train": ["--tokens", "512", "--steps", "4"],          # 8,000 tokens, 100 steps
    "tuned-lens eval": ["--tokens", "128"],                           # 512 tokens
    "icl-regression": ["--tiny"],                                     # 3,000 training steps (the smoke-test size)
    "introspect": ["--concepts", "2", "--max-new-tokens", "4"],       # 10 concepts, 24 tokens per answer
    "sparse train": ["--preset", "tiny", "--ctx", "64"],              # the cpu preset trains for ~50 min; ctx 64:
    # the windows of prune / bridge / compare (--ctx 64) must fit the model (the tiny preset has 32)
    "sparse tasks": ["--n", "10"],                                    # 200 prompts per task
    "sparse prune": ["--n", "8", "--steps", "4", "--reference", "4"],  # 200 prompts, 200-300 steps, 64 windows
    "sparse circuit": ["--n", "8", "--steps", "4", "--reference", "4"],
    "sparse bridge": ["--steps", "4", "--train-windows", "8", "--heldout-windows", "4", "--n", "8",   # 120-200 steps
                      "--circuit", "quote.json"],   # the circuit of `sparse prune` with the paper's target: the
    # tiny model is at chance, so "own loss + 0.1" (runs/ws_quote_circuit.json) is met by an empty circuit, which
    # has no node to flip
    "sparse compare": ["--n", "8", "--steps", "4", "--heldout-windows", "4", "--reference", "4",
                       # the tiny preset's 300-token tokenizer has single-token answers for these two tasks only
                       "--tasks", "single_double_quote,bracket_counting"],
}

# model specs that load real weights: replaced by the tiny model
REAL_MODELS = ("smollm2", "gemma3-270m")
OUTPUT_FLAGS = ("--html", "--out", "--graph", "--save", "--save-bridges")


@dataclass
class Command:
    line: int                 # 1-based line of the README
    text: str                 # as shown, comments dropped, continuations joined
    shown: list = field(default_factory=list)   # output lines the README shows right after it (blocks only)

    @property
    def expected_error(self) -> "str | None":
        return self.shown[0] if self.shown and self.shown[0].startswith("lmscope: error:") else None


_PREFIX = re.compile(r"^(?:\$\s+|before:\s+|after:\s+)?(?:.*&&\s+)?(?:[A-Z_][A-Z0-9_]*=\S+\s+)*(?:\.venv/bin/)?")


def _command_of(line: str) -> "str | None":
    """The command a block line runs (lmscope, or `mkdir -p DIR`, which the test runs too), or None."""
    mkdir = re.match(r"^(?:\$\s+)?(mkdir -p \S+)$", line.strip())
    if mkdir:
        return mkdir.group(1)
    if "-m lmscope.cli " in line:
        return re.sub(r"\s+", " ", re.split(r"\s+#\s", line.strip(), maxsplit=1)[0])
    rest = _PREFIX.sub("", line.strip(), count=1)
    if rest == "lmscope" or rest.startswith("lmscope "):
        return re.sub(r"\s+", " ", re.split(r"\s+#\s", rest, maxsplit=1)[0]).strip()
    return None


def readme_commands(text: str = README) -> list[Command]:
    """Every lmscope command the README shows, in README order, with the output lines shown after it."""
    lines = text.split("\n")
    found: list[Command] = []
    prose = []                      # the lines outside blocks (block lines blanked, so line numbers hold)
    fenced, block, command_block, i = False, 0, None, 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            fenced, block = not fenced, block + 1
            prose.append("")
            i += 1
            continue
        if not (fenced or line.startswith("    ")):
            prose.append(line)
            block += 1                  # a prose line ends an indented block
            i += 1
            continue
        j = i
        while lines[j].rstrip().endswith("\\") and j + 1 < len(lines):
            j += 1
        command = _command_of(" ".join(part.strip().rstrip("\\").strip() for part in lines[i:j + 1]))
        output = command is None or SKIP.get(command, "").startswith("output")
        if command is not None:
            found.append(Command(i + 1, command))
        if output and command_block == block:     # as shown: a fenced line whole, an indented one less its indent
            found[-1 - (command is not None)].shown.append(line.rstrip() if fenced else line[4:].rstrip())
        elif command is not None:
            command_block = block
        prose += [""] * (j + 1 - i)
        i = j + 1
    text_only = "\n".join(prose)
    for m in re.finditer(r"`([^`]+)`", text_only):
        span = re.sub(r"\s+", " ", m.group(1)).strip()
        if span == "lmscope" or span.startswith("lmscope "):
            found.append(Command(text_only.count("\n", 0, m.start()) + 1, span))
    return sorted(found, key=lambda c: c.line)


def to_run() -> list[Command]:
    """The commands to run: every command not in SKIP, each distinct text once, in README order."""
    first: dict = {}
    for command in readme_commands():
        if command.text in SKIP:
            continue
        if command.text in first:       # shown again: its output, if this occurrence shows it, is checked
            first[command.text].shown = first[command.text].shown or command.shown
            continue
        first[command.text] = command
    return list(first.values())


def override_key(text: str) -> "str | None":
    words = text.split()[1:]
    keys = [k for k in OVERRIDES if words[:len(k.split())] == k.split()]
    return max(keys, key=len) if keys else None


def leaf_parser(argv: list):
    parser = cli_main.build_parser()
    for token in argv:
        subs = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
        if not subs or token not in subs[0].choices:
            break
        parser = subs[0].choices[token]
    return parser


def argv_for(command: Command, tiny: str) -> list:
    """The README's argv, the model swapped for the tiny one, the overrides appended."""
    argv = shlex.split(command.text)[1:]
    if "--model" in argv:
        at = argv.index("--model") + 1
        if argv[at] in REAL_MODELS or argv[at].startswith("gguf:"):
            argv[at] = tiny
    elif "--model" in leaf_parser(argv)._option_string_actions:
        argv += ["--model", tiny]
    key = override_key(command.text)
    return argv + (OVERRIDES[key] if key else [])


def named_outputs(argv: list) -> list:
    """The files and folders a command names as its outputs (--json FILE too)."""
    out = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in OUTPUT_FLAGS]
    out += [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--json" and not argv[i + 1].startswith("-")]
    return out


def prints_json(argv: list) -> bool:
    """`--json` with no FILE after it: the result goes to stdout."""
    at = argv.index("--json") + 1 if "--json" in argv else 0
    return bool(at) and (at == len(argv) or argv[at].startswith("-"))


def error_pattern(shown: str) -> re.Pattern:
    """The README's error line as a pattern: another model's name and config hash may stand in the message, and a
    trailing ' ...' means the README cut the line."""
    text = re.escape(shown.removesuffix(" ..."))
    text = text.replace(re.escape("'smollm2'"), "'[^']+'")
    text = re.sub(r"config\\ [0-9a-f]+", r"config\\ [0-9a-f]+", text)
    return re.compile(text + (".*" if shown.endswith(" ...") else "") + "$")


def run_cli(argv: list) -> tuple:
    """main(argv) -> (exit code, stdout, stderr); torch's thread count is restored (`--threads` sets it)."""
    out, err, threads = io.StringIO(), io.StringIO(), torch.get_num_threads()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli_main.main(argv)
        except SystemExit as exc:          # --help
            code = exc.code
        finally:
            torch.set_num_threads(threads)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("readme_commands")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    """hf:<folder> of a random Llama with the default model's depth, heads and tokenizer, and a tiny width."""
    from transformers import LlamaConfig, LlamaForCausalLM
    real = lmscope.load("smollm2")
    # initializer_range 0.2 (10x the default): with near-uniform logits greater-than's P(later) - P(earlier) is
    # 0.0000 with and without ablation, and `circuit greater-than` rightly refuses ("nothing to keep")
    config = LlamaConfig(**{**real.hf.config.to_dict(), "hidden_size": 72, "num_attention_heads": 9,
                            "head_dim": 8, "num_key_value_heads": 3, "intermediate_size": 128,
                            "initializer_range": 0.2})
    assert config.num_hidden_layers == 30
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_smollm2")
    LlamaForCausalLM(config).save_pretrained(folder)
    real.tokenizer.save_pretrained(folder)
    del real
    return f"hf:{folder}"


def test_the_readme_shows_its_commands_and_every_skip_and_override_is_still_there():
    commands = readme_commands()
    texts = {c.text for c in commands}
    assert len(to_run()) >= 50, [c.text for c in to_run()]
    assert not sorted(set(SKIP) - texts), "SKIP names commands the README no longer shows"
    stale = [k for k in OVERRIDES if not any(override_key(t) == k for t in texts if t not in SKIP)]
    assert not stale, f"OVERRIDES keys that match no README command: {stale}"


@pytest.mark.parametrize("command", to_run(), ids=lambda c: f"L{c.line}-{'_'.join(c.text.split()[1:3])}")
def test_readme_command_runs(command: Command, tiny_model, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    # a model folder that is not there is not looked for on the Hub (no retries for minutes)
    monkeypatch.setattr(importlib.import_module("huggingface_hub.constants"), "HF_HUB_OFFLINE", True)
    if command.text.startswith("mkdir -p "):
        (workdir / command.text.split()[-1]).mkdir(parents=True, exist_ok=True)
        return
    argv = argv_for(command, tiny_model)
    start = time.perf_counter()
    code, out, err = run_cli(argv)
    print(f"{time.perf_counter() - start:.1f} s: lmscope {shlex.join(argv)}")
    if command.expected_error:
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, (code, err)
        assert error_pattern(command.expected_error).match(lines[0]), (command.expected_error, lines[0])
        return
    assert code == 0, f"README line {command.line}: exit {code}\n{err[-3000:]}"
    missing = [p for p in named_outputs(argv) if not (workdir / p).exists()]
    assert not missing, f"README line {command.line}: not written: {missing}"
    if prints_json(argv):
        json.loads(out)                 # --json without a file prints the result as strict JSON
    if argv == ["--help"]:
        assert out.rstrip("\n").split("\n") == command.shown, "the README's `lmscope --help` differs"


# The README's Python blocks outside the tour (tests/acceptance/test_readme.py runs the tour on the default model):
# each runs as written on the tiny model, bound to `model`, in the folder where the commands above ran (the harvest
# block reads their runs/harvest_l12). Costly arguments are replaced, each replacement in BLOCK_OVERRIDES.
PYTHON_BLOCKS = [b for b in re.findall(r"```python\n(.*?)```", README, flags=re.S)
                 if 'model = lmscope.load("smollm2")' not in b]
BLOCK_OVERRIDES = {
    "n_tokens=100_000": "n_tokens=2_000",        # record_neurons: 100,000 wiki tokens
    "concepts=10,": "concepts=2,",                # introspect: 10 concepts x 3 layers x 4 strengths, 24 tokens each
    "n=200)": "n=16)",                            # load_circuit_task: 200 IOI prompts
}


def test_every_block_override_is_still_in_the_readme():
    assert len(PYTHON_BLOCKS) >= 5
    assert all(any(old in b for b in PYTHON_BLOCKS) for old in BLOCK_OVERRIDES), BLOCK_OVERRIDES


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda b: b.split("\n", 1)[0][:40])
def test_readme_python_block_runs(block: str, tiny_loaded, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    for old, new in BLOCK_OVERRIDES.items():
        block = block.replace(old, new)
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(block, "README", "exec"), {"model": tiny_loaded})
    assert not tiny_loaded.has_hooks()


@pytest.fixture(scope="module")
def tiny_loaded(tiny_model) -> lmscope.Model:
    return lmscope.load(tiny_model)
