"""Command line of lecture part 1, one neuron: neuron, knowledge-neurons."""
from __future__ import annotations

from lmscope.cli.common import check_outputs, emit, load_model, model_options, numbers, output_options
from lmscope.core.checks import check_count
from lmscope.data.corpora import check_corpus
from lmscope.neurons.knowledge import SWEEP, number_agreement_experiment
from lmscope.neurons.profile import profile_neuron


def cmd_neuron(args) -> None:
    check_outputs(args)
    check_count("--tokens", args.tokens)
    check_count("--top-k", args.top_k)
    check_count("--seed", args.seed, 0)
    check_corpus(args.corpus)
    model = load_model(args)
    emit(args, profile_neuron(model, args.layer, args.index, args.corpus, n_tokens=args.tokens, k=args.top_k,
                              seed=args.seed, progress=not args.json))


def cmd_knowledge_neurons(args) -> None:
    check_outputs(args)
    check_count("--prompts", args.prompts)
    check_count("--steps", args.steps)
    model = load_model(args)
    emit(args, number_agreement_experiment(model, attribution_prompts=args.prompts, steps=args.steps,
                                           sweep=args.sweep))


def register(sub) -> None:
    p = sub.add_parser("neuron", help="one neuron: top contexts, statistics, ablation, dose-response")
    p.add_argument("layer", type=int, help="layer of the neuron (negative counts from the end)")
    p.add_argument("index", type=int, help="index of the neuron in the layer's MLP")
    model_options(p)
    p.add_argument("--corpus", default="wiki", help="wiki (default), wiki-fr, wiki-es, python, shakespeare, bible")
    p.add_argument("--tokens", type=int, default=100_000, help="corpus tokens to record (default 100000)")
    p.add_argument("--top-k", type=int, default=20, help="top contexts to keep (default 20)")
    p.add_argument("--seed", type=int, default=0, help="corpus order (default 0)")
    output_options(p)
    p.set_defaults(func=cmd_neuron)

    p = sub.add_parser("knowledge-neurons", help="knowledge-neuron attribution, re-examined on number agreement")
    p.add_argument("--task", default="number-agreement", choices=["number-agreement"],
                   help="the task (default number-agreement, the only one)")
    model_options(p)
    p.add_argument("--prompts", type=int, default=16, help="plural prompts used for attribution (default 16)")
    p.add_argument("--steps", type=int, default=10, help="integrated-gradient steps (default 10)")
    p.add_argument("--sweep", type=lambda t: numbers(t, int, "--sweep"), default=SWEEP,
                   help=f"k values: the top-k neurons suppressed, comma-separated "
                        f"(default {','.join(map(str, SWEEP))})")
    output_options(p)
    p.set_defaults(func=cmd_knowledge_neurons)
