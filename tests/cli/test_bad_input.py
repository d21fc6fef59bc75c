"""The bad-input battery (issue 14): distinct bad inputs across every subcommand, each on a random model.

Every case must end with exit code 2, exactly one line on stderr starting "lmscope: error:", no traceback, and
nothing written: the folder the case runs in (every output it names lies there) is byte-for-byte as before.
"""
import json
import shlex
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import lmscope
import lmscope.lenses.cli as lenses_cli
from lmscope.cli import main
from lmscope.cli.main import build_parser
from lmscope.core.fingerprint import config_sha256
from lmscope.directions import Direction, save_vector
from lmscope.sae.architectures import build_sae
from lmscope.sae.config import SAEConfig
from lmscope.sae.interop import save_sae

M = "--model random:llama"
ICL = "--task antonyms"
# (id, command line): {d} is the world folder, {M} the random model
CASES = [
    # the model
    ("sites-bad-spec", "sites --model nonsense:x"),
    ("sites-bad-family", "sites --model random:nosuchfamily"),
    ("sites-bad-dtype", "sites {M} --dtype float8"),
    ("sites-missing-hf-path", "sites --model hf:{d}/nothing_here"),
    ("sites-missing-gguf", "sites --model gguf:{d}/nothing.gguf"),
    ("sites-unknown-flag", "sites {M} --bogus"),
    ("sites-hf-empty-folder", "sites --model hf:{d}/emptydir"),
    ("sites-hf-a-file", "sites --model hf:{d}/afile"),
    ("sites-device-missing", "sites {M} --device nosuchdevice"),
    ("sites-html-missing-folder", "sites {M} --html {d}/missing/s.html"),
    ("check-bad-spec", "check nonsense:x"),
    ("check-bad-dtype", "check {M} --dtype int4"),
    ("check-json-missing-folder", "check {M} --json {d}/missing/c.json"),
    ("check-html-exists", "check {M} --html {d}/existing.html"),
    ("check-hf-empty-folder", "check hf:{d}/emptydir"),
    ("no-command", ""),
    ("unknown-command", "frobnicate"),
    # part 1
    ("neuron-layer-range", "neuron 99 0 {M}"),
    ("neuron-index-range", "neuron 0 999999 {M}"),
    ("neuron-layer-not-int", "neuron x 0 {M}"),
    ("neuron-tokens-zero", "neuron 0 0 {M} --tokens 0"),
    ("neuron-tokens-negative", "neuron 0 0 {M} --tokens -5"),
    ("neuron-top-k-zero", "neuron 0 0 {M} --top-k 0"),
    ("neuron-bad-corpus", "neuron 0 0 {M} --corpus nosuch"),
    ("neuron-html-missing-folder", "neuron 0 0 {M} --html {d}/missing/x.html"),
    ("neuron-html-bad-suffix", "neuron 0 0 {M} --html {d}/x.txt"),
    ("neuron-json-parent-is-file", "neuron 0 0 {M} --json {d}/afile/x.json"),
    ("neuron-html-exists", "neuron 0 0 {M} --html {d}/existing.html"),
    ("neuron-missing-args", "neuron {M}"),
    ("kn-prompts-zero", "knowledge-neurons {M} --prompts 0"),
    ("kn-steps-zero", "knowledge-neurons {M} --steps 0"),
    ("kn-sweep-words", "knowledge-neurons {M} --sweep a,b"),
    ("kn-sweep-negative", "knowledge-neurons {M} --sweep -1"),
    ("kn-bad-task", "knowledge-neurons {M} --task other"),
    ("kn-html-is-folder", "knowledge-neurons {M} --html {d}/emptydir"),
    # part 2: directions
    ("extract-no-set", "direction extract {M}"),
    ("extract-unknown-set", "direction extract nosuch {M}"),
    ("extract-positive-not-utf8", "direction extract {M} --positive {d}/bin.txt --negative {d}/neg.txt"),
    ("extract-positive-missing", "direction extract {M} --positive {d}/missing.txt --negative {d}/neg.txt"),
    ("extract-positive-empty", "direction extract {M} --positive {d}/empty.txt --negative {d}/neg.txt"),
    ("extract-positive-folder", "direction extract {M} --positive {d}/emptydir --negative {d}/neg.txt"),
    ("extract-positive-bad-jsonl", "direction extract {M} --positive {d}/bad.jsonl --negative {d}/neg.txt"),
    ("extract-negative-not-utf8", "direction extract {M} --positive {d}/neg.txt --negative {d}/bin.txt"),
    ("extract-layers-range", "direction extract harmful {M} --layers 99"),
    ("extract-test-fraction-big", "direction extract harmful {M} --test-fraction 1.5"),
    ("extract-test-fraction-nan", "direction extract harmful {M} --test-fraction nan"),
    ("extract-save-bad-suffix", "direction extract harmful {M} --save {d}/v.txt --layer 0"),
    ("extract-save-no-layer", "direction extract harmful {M} --save {d}/v.safetensors"),
    ("extract-bad-method", "direction extract harmful {M} --method nosuch"),
    ("extract-last-k-zero", "direction extract harmful {M} --last-k 0"),
    ("extract-positions-words", "direction extract harmful {M} --positions x"),
    ("extract-batch-zero", "direction extract harmful {M} --batch-size 0"),
    ("extract-empty-concept", "direction extract concept: {M}"),
    ("direction-no-subcommand", "direction"),
    ("sweep-no-tokens", "direction sweep harmful {M}"),
    ("sweep-empty-tokens", "direction sweep harmful {M} --tokens ,"),
    ("sweep-max-kl-nan", "direction sweep harmful {M} --tokens a --max-kl nan"),
    ("sweep-n-eval-zero", "direction sweep harmful {M} --tokens a --n-eval 0"),
    ("sweep-neutral-not-utf8", "direction sweep harmful {M} --tokens a --neutral {d}/bin.txt"),
    ("sweep-layer-fraction", "direction sweep harmful {M} --tokens a --max-layer-fraction 2"),
    ("sweep-multi-token", "direction sweep harmful {M} --tokens abc"),
    ("orth-vector-missing", "direction orthogonalize {M} --vector {d}/missing.safetensors --out {d}/o"),
    ("orth-vector-garbage", "direction orthogonalize {M} --vector {d}/garbage.safetensors --out {d}/o"),
    ("orth-vector-nan", "direction orthogonalize {M} --vector {d}/nan.safetensors --out {d}/o"),
    ("orth-out-is-file", "direction orthogonalize {M} --vector {d}/good.safetensors --out {d}/afile"),
    ("orth-out-missing-parent", "direction orthogonalize {M} --vector {d}/good.safetensors --out {d}/missing/o"),
    ("orth-out-not-empty", "direction orthogonalize {M} --vector {d}/good.safetensors --out {d}/nonempty"),
    ("orth-vector-other-model", "direction orthogonalize --model random:gpt2 --vector {d}/good.safetensors "
                                "--out {d}/o"),
    ("steer-no-vector", "steer hello {M}"),
    ("steer-vector-missing", "steer hello {M} --vector {d}/missing.safetensors"),
    ("steer-vector-nan", "steer hello {M} --vector {d}/nan.safetensors"),
    ("steer-vector-garbage", "steer hello {M} --vector {d}/garbage.safetensors"),
    ("steer-prompts-file-not-utf8", "steer {M} --prompts-file {d}/bin.txt --vector {d}/good.safetensors"),
    ("steer-prompts-file-missing", "steer {M} --prompts-file {d}/missing.txt --vector {d}/good.safetensors"),
    ("steer-set-no-layer", "steer hello {M} --set harmful"),
    ("steer-set-layer-range", "steer hello {M} --set harmful --layer 99"),
    ("steer-coefs-nan", "steer hello {M} --vector {d}/good.safetensors --coefs nan"),
    ("steer-coefs-words", "steer hello {M} --vector {d}/good.safetensors --coefs a"),
    ("steer-max-new-zero", "steer hello {M} --vector {d}/good.safetensors --max-new-tokens 0"),
    ("steer-kl-tokens-zero", "steer hello {M} --vector {d}/good.safetensors --dose --kl-tokens 0"),
    ("steer-dose-ablate", "steer hello {M} --vector {d}/good.safetensors --dose --mode ablate"),
    ("steer-at-layers-range", "steer hello {M} --vector {d}/good.safetensors --at-layers 99"),
    ("steer-positive-not-utf8", "steer hello {M} --positive {d}/bin.txt --negative {d}/neg.txt --layer 0"),
    ("steer-unknown-set", "steer hello {M} --set nosuch --layer 0"),
    ("steer-empty-prompt", "steer '' {M} --vector {d}/good.safetensors"),
    ("steer-vector-other-model", "steer hello --model random:gpt2 --vector {d}/good.safetensors"),
    # part 2: ICL and truth
    ("fv-no-task", "fv {M}"),
    ("fv-unknown-task", "fv {M} --task nosuch"),
    ("fv-pairs-not-utf8", "fv {M} --pairs {d}/bin.jsonl"),
    ("fv-pairs-not-json", "fv {M} --pairs {d}/bad.jsonl"),
    ("fv-pairs-missing-keys", "fv {M} --pairs {d}/missingkeys.jsonl"),
    ("fv-pairs-missing", "fv {M} --pairs {d}/missing.jsonl"),
    ("fv-shots-zero", "fv {M} {ICL} --shots 0"),
    ("fv-heads-zero", "fv {M} {ICL} --heads 0"),
    ("fv-heldout-big", "fv {M} {ICL} --heldout 1.5"),
    ("fv-layers-range", "fv {M} {ICL} --layers 99"),
    ("fv-task-and-pairs", "fv {M} {ICL} --pairs {d}/neg.txt"),
    ("fv-mean-prompts-zero", "fv {M} {ICL} --mean-prompts 0"),
    ("truth-layers-range", "truth {M} --layers 99"),
    ("truth-fractions-too-big", "truth {M} --val-fraction 0.9 --test-fraction 0.9"),
    ("truth-top-k-zero", "truth {M} --top-k 0"),
    ("truth-batch-zero", "truth {M} --batch-size 0"),
    ("truth-val-nan", "truth {M} --val-fraction nan"),
    # part 2, automated: harvest and SAEs
    ("harvest-missing-required", "harvest {M}"),
    ("harvest-unknown-site", "harvest {M} --sites nosuch.0 --tokens 10 --out {d}/h2"),
    ("harvest-site-range", "harvest {M} --sites resid_post.99 --tokens 10 --out {d}/h2"),
    ("harvest-tokens-zero", "harvest {M} --sites resid_post.0 --tokens 0 --out {d}/h2"),
    ("harvest-out-is-file", "harvest {M} --sites resid_post.0 --tokens 10 --out {d}/afile"),
    ("harvest-out-missing-parent", "harvest {M} --sites resid_post.0 --tokens 10 --out {d}/missing/h"),
    ("harvest-out-not-empty", "harvest {M} --sites resid_post.0 --tokens 10 --out {d}/nonempty"),
    ("harvest-unknown-corpus", "harvest {M} --sites resid_post.0 --tokens 10 --out {d}/h2 --corpus nosuch"),
    ("harvest-seq-len-zero", "harvest {M} --sites resid_post.0 --tokens 10 --out {d}/h2 --seq-len 0"),
    ("harvest-batch-zero", "harvest {M} --sites resid_post.0 --tokens 10 --out {d}/h2 --batch-size 0"),
    ("harvest-shard-zero", "harvest {M} --sites resid_post.0 --tokens 10 --out {d}/h2 --shard-tokens 0"),
    ("harvest-bad-prefix", "harvest {M} --sites resid_post.0 --tokens 10 --out {d}/h2 --prefix abc"),
    ("harvest-prefix-range", "harvest {M} --sites resid_post.0 --tokens 10 --out {d}/h2 --prefix 999999"),
    ("harvest-bad-model-dtype", "harvest {M} --sites resid_post.0 --tokens 10 --out {d}/h2 --model-dtype float8"),
    ("harvest-bad-dtype", "harvest {M} --sites resid_post.0 --tokens 10 --out {d}/h2 --dtype int8"),
    ("check-missing", "harvest-check {d}/missing"),
    ("check-not-harvest", "harvest-check {d}/emptydir"),
    ("check-manifest-not-json", "harvest-check {d}/h_badjson"),
    ("check-manifest-not-utf8", "harvest-check {d}/h_bin"),
    ("check-manifest-list", "harvest-check {d}/h_list"),
    ("check-traversal", "harvest-check {d}/h_traversal"),
    ("check-absolute", "harvest-check {d}/h_absolute"),
    ("check-no-sha256", "harvest-check {d}/h_nosha"),
    ("check-shard-not-dict", "harvest-check {d}/h_shardlist"),
    ("check-is-file", "harvest-check {d}/afile"),
    ("train-no-out", "sae train {M} --site resid_post.0"),
    ("train-batch-zero", "sae train {M} --site resid_post.0 --out {d}/s --batch-size 0"),
    ("train-lr-nan", "sae train {M} --site resid_post.0 --out {d}/s --lr nan"),
    ("train-lr-negative", "sae train {M} --site resid_post.0 --out {d}/s --lr -1"),
    ("train-bad-architecture", "sae train {M} --site resid_post.0 --out {d}/s --architecture nosuch"),
    ("train-unknown-site", "sae train {M} --site nosuch.0 --out {d}/s"),
    ("train-site-range", "sae train {M} --site resid_post.99 --out {d}/s"),
    ("train-harvest-missing", "sae train {M} --site resid_post.0 --out {d}/s --harvest {d}/missing"),
    ("train-harvest-traversal", "sae train {M} --site resid_post.0 --out {d}/s --harvest {d}/h_traversal"),
    ("train-k-zero", "sae train {M} --site resid_post.0 --out {d}/s --k 0"),
    ("train-expansion-zero", "sae train {M} --site resid_post.0 --out {d}/s --expansion 0"),
    ("train-tokens-zero", "sae train {M} --site resid_post.0 --out {d}/s --n-tokens 0"),
    ("train-out-is-file", "sae train {M} --site resid_post.0 --out {d}/afile"),
    ("train-out-missing-parent", "sae train {M} --site resid_post.0 --out {d}/missing/s"),
    ("train-out-not-empty", "sae train {M} --site resid_post.0 --out {d}/nonempty"),
    ("train-decay-big", "sae train {M} --site resid_post.0 --out {d}/s --decay-frac 2"),
    ("train-l1-negative", "sae train {M} --site resid_post.0 --out {d}/s --l1-coeff -1"),
    ("train-site-out-range", "sae train {M} --site resid_post.0 --out {d}/s --site-out mlp_out.99"),
    ("train-checkpoint-negative", "sae train {M} --site resid_post.0 --out {d}/s --checkpoint-every -1"),
    ("train-auxk-nan", "sae train {M} --site resid_post.0 --out {d}/s --auxk-coeff nan"),
    ("eval-missing", "sae eval {d}/missing {M}"),
    ("eval-cfg-not-json", "sae eval {d}/sae_notjson {M}"),
    ("eval-cfg-list", "sae eval {d}/sae_list {M}"),
    ("eval-cfg-missing-keys", "sae eval {d}/sae_missingkeys {M}"),
    ("eval-cfg-not-utf8", "sae eval {d}/sae_bin {M}"),
    ("eval-weights-garbage", "sae eval {d}/sae_garbage {M}"),
    ("eval-not-sae", "sae eval {d}/emptydir {M}"),
    ("eval-tokens-zero", "sae eval {d}/sae {M} --tokens 0"),
    ("eval-other-model", "sae eval {d}/sae --model random:gpt2"),
    ("features-no-html", "sae features {d}/sae {M}"),
    ("features-html-is-file", "sae features {d}/sae {M} --html {d}/afile"),
    ("features-n-zero", "sae features {d}/sae {M} --html {d}/f --n 0"),
    ("features-latent-range", "sae features {d}/sae {M} --html {d}/f --latents 99999"),
    ("features-latent-words", "sae features {d}/sae {M} --html {d}/f --latents a"),
    ("features-top-k-zero", "sae features {d}/sae {M} --html {d}/f --top-k 0"),
    ("synthetic-features-zero", "sae synthetic --features 0"),
    ("synthetic-dim-zero", "sae synthetic --dim 0"),
    ("synthetic-k-zero", "sae synthetic --k 0"),
    ("synthetic-lr-nan", "sae synthetic --lr nan"),
    ("synthetic-batch-zero", "sae synthetic --batch-size 0"),
    ("synthetic-out-is-file", "sae synthetic --out {d}/afile"),
    ("synthetic-mean-active-negative", "sae synthetic --mean-active -1"),
    ("synthetic-alpha-nan", "sae synthetic --alpha nan"),
    ("steer-latent-range", "sae steer {d}/sae hello {M} --latent 99999 --value 1"),
    ("steer-value-nan", "sae steer {d}/sae hello {M} --latent 0 --value nan"),
    ("steer-value-inf", "sae steer {d}/sae hello {M} --latent 0 --value inf"),
    ("steer-latent-negative", "sae steer {d}/sae hello {M} --latent -1 --value 1"),
    ("sae-steer-max-new-zero", "sae steer {d}/sae hello {M} --latent 0 --value 1 --max-new-tokens 0"),
    ("sae-steer-empty-prompt", "sae steer {d}/sae '' {M} --latent 0 --value 1"),
    ("sae-no-subcommand", "sae"),
    # part 3: circuits
    ("task-unknown", "task nosuch {M}"),
    ("task-none", "task {M}"),
    ("task-pairs-not-utf8", "task {M} --pairs {d}/bin.jsonl"),
    ("task-pairs-not-json", "task {M} --pairs {d}/bad.jsonl"),
    ("task-pairs-missing-keys", "task {M} --pairs {d}/missingkeys.jsonl"),
    ("task-pairs-empty", "task {M} --pairs {d}/empty.txt"),
    ("task-n-zero", "task ioi {M} --n 0"),
    ("task-batch-zero", "task ioi {M} --batch-size 0"),
    ("task-template-range", "task ioi {M} --template 99"),
    ("task-and-pairs", "task ioi {M} --pairs {d}/pairs.jsonl"),
    ("patch-unknown-site", "patch ioi {M} --sites nosuch"),
    ("patch-layers-range", "patch ioi {M} --layers 99"),
    ("patch-n-zero", "patch ioi {M} --n 0"),
    ("patch-pairs-not-utf8", "patch {M} --pairs {d}/bin.jsonl"),
    ("patch-bad-direction", "patch ioi {M} --direction sideways"),
    ("attribute-steps-zero", "attribute ioi {M} --method eap-ig --steps 0"),
    ("attribute-bad-method", "attribute ioi {M} --method nosuch"),
    ("attribute-n-zero", "attribute ioi {M} --n 0"),
    ("attribute-pairs-not-json", "attribute {M} --pairs {d}/bad.jsonl"),
    ("circuit-unknown-task", "circuit nosuch {M}"),
    ("circuit-pairs-not-utf8", "circuit {M} --pairs {d}/bin.jsonl"),
    ("circuit-steps-zero", "circuit ioi {M} --steps 0"),
    ("circuit-lr-nan", "circuit ioi {M} --lr nan"),
    ("circuit-heads-negative", "circuit ioi {M} --heads -1"),
    ("circuit-draws-negative", "circuit ioi {M} --random-draws -1"),
    ("circuit-out-bad-suffix", "circuit ioi {M} --out {d}/c.txt"),
    ("circuit-out-missing-parent", "circuit ioi {M} --out {d}/missing/c.json"),
    ("circuit-graph-missing-parent", "circuit ioi {M} --graph {d}/missing/g.html"),
    ("circuit-train-zero", "circuit ioi {M} --train 0"),
    ("circuit-bad-method", "circuit ioi {M} --method nosuch"),
    ("eval-circuit-missing", "circuit eval {d}/missing.json --task ioi {M}"),
    ("eval-circuit-not-json", "circuit eval {d}/bad.json --task ioi {M}"),
    ("eval-circuit-not-utf8", "circuit eval {d}/bin.json --task ioi {M}"),
    ("eval-circuit-list", "circuit eval {d}/list.json --task ioi {M}"),
    ("eval-circuit-no-file", "circuit eval {M}"),
    # part 4: lenses
    ("lens-empty-prompt", "lens '' {M}"),
    ("lens-top-k-zero", "lens hello {M} --top-k 0"),
    ("lens-top-k-negative", "lens hello {M} --top-k -3"),
    ("lens-target-two-tokens", "lens hello {M} --target ab"),
    ("lens-no-prompt", "lens {M}"),
    ("dla-no-target", "dla hello {M}"),
    ("dla-target-two-tokens", "dla hello {M} --target ab"),
    ("dla-position-range", "dla hello {M} --target o --position 99"),
    ("dla-top-zero", "dla hello {M} --target o --top 0"),
    ("dla-empty-prompt", "dla '' {M} --target o"),
    ("patchscope-layers-range", "patchscope hello {M} --layers 99"),
    ("patchscope-position-range", "patchscope hello {M} --position 99"),
    ("patchscope-template-no-placeholder", "patchscope hello {M} --template 'no place here'"),
    ("patchscope-max-new-zero", "patchscope hello {M} --max-new-tokens 0"),
    ("patchscope-target-layers-range", "patchscope hello {M} --target-layers 99"),
    ("patchscope-empty-prompt", "patchscope '' {M}"),
    ("backpatch-layers-range", "backpatch {M} --layers 99"),
    ("backpatch-step-zero", "backpatch {M} --step 0"),
    ("backpatch-layers-words", "backpatch {M} --layers a"),
    ("tl-train-tokens-zero", "tuned-lens train {M} --tokens 0 --out {d}/t.safetensors"),
    ("tl-train-steps-zero", "tuned-lens train {M} --steps 0 --out {d}/t.safetensors"),
    ("tl-train-lr-nan", "tuned-lens train {M} --lr nan --out {d}/t.safetensors"),
    ("tl-train-validation-zero", "tuned-lens train {M} --validation-tokens 0 --out {d}/t.safetensors"),
    ("tl-train-out-bad-suffix", "tuned-lens train {M} --out {d}/t.txt"),
    ("tl-train-out-missing-parent", "tuned-lens train {M} --out {d}/missing/t.safetensors"),
    ("tl-train-bad-corpus", "tuned-lens train {M} --corpus nosuch --out {d}/t.safetensors"),
    ("tl-eval-missing", "tuned-lens eval {d}/missing.safetensors {M}"),
    ("tl-eval-garbage", "tuned-lens eval {d}/garbage.safetensors {M}"),
    ("tl-eval-vector-file", "tuned-lens eval {d}/good.safetensors {M}"),
    ("ll-same-languages", "latent-language {M} --src fr --dst fr"),
    ("ll-shots-negative", "latent-language {M} --shots -1"),
    ("ll-unknown-language", "latent-language {M} --src xx"),
    ("lre-none", "lre {M}"),
    ("lre-unknown-relation", "lre {M} --relation nosuch"),
    ("lre-pairs-not-utf8", "lre {M} --pairs {d}/bin.jsonl --template 'The capital of {{}} is'"),
    ("lre-pairs-no-template", "lre {M} --pairs {d}/lre.jsonl"),
    ("lre-template-no-placeholder", "lre {M} --pairs {d}/lre.jsonl --template 'no place'"),
    ("lre-layer-range", "lre {M} --relation country_capital --layer 99"),
    ("lre-beta-nan", "lre {M} --relation country_capital --beta nan"),
    ("lre-ranks-zero", "lre {M} --relation country_capital --ranks 0"),
    ("lre-train-zero", "lre {M} --relation country_capital --train 0"),
    ("lre-n-demo-negative", "lre {M} --relation country_capital --n-demo -1"),
    # papers
    ("icl-position-range", "icl-update {M} --position 999"),
    ("icl-empty-prompt", "icl-update {M} --prompt ''"),
    ("icl-orders-zero", "icl-update {M} --orders 0"),
    ("icl-one-line", "icl-update {M} --prompt 'one line only'"),
    ("icl-regression-seed-words", "icl-regression --seed x"),
    ("icl-regression-html-missing-parent", "icl-regression --tiny --html {d}/missing/x.html"),
    ("sparse-no-action", "sparse"),
    ("sparse-train-no-out", "sparse train --preset tiny"),
    ("sparse-train-bad-preset", "sparse train --preset huge --out {d}/sp"),
    ("sparse-train-steps-zero", "sparse train --preset tiny --steps 0 --out {d}/sp"),
    ("sparse-train-lr-nan", "sparse train --preset tiny --lr nan --out {d}/sp"),
    ("sparse-train-out-is-file", "sparse train --preset tiny --out {d}/afile"),
    ("sparse-train-out-not-empty", "sparse train --preset tiny --out {d}/nonempty"),
    ("sparse-tasks-missing", "sparse tasks {d}/missing"),
    ("sparse-tasks-not-a-model", "sparse tasks {d}/emptydir"),
    ("sparse-tasks-n-zero", "sparse tasks {d}/emptydir --n 0"),
    ("lab-port-words", "lab {M} --port abc"),
    ("lab-bad-model", "lab --model nonsense:x --port 0"),
    ("introspect-concepts-zero", "introspect {M} --concepts 0"),
    ("introspect-layers-range", "introspect {M} --layers 99"),
    ("introspect-strengths-nan", "introspect {M} --strengths nan"),
    ("introspect-max-new-zero", "introspect {M} --max-new-tokens 0"),
]

# what the one line must say, for the messages issue 14 found misleading (items 10, 11) and the refusals (item 9)
SAYS = {
    "extract-positive-not-utf8": "bin.txt is not UTF-8 text", "steer-prompts-file-not-utf8": "bin.txt is not UTF-8",
    "lre-pairs-not-utf8": "bin.jsonl is not UTF-8 text", "circuit-pairs-not-utf8": "bin.jsonl is not UTF-8 text",
    "fv-pairs-not-utf8": "bin.jsonl is not UTF-8 text", "eval-cfg-not-utf8": "cfg.json is not UTF-8 text",
    "check-manifest-not-utf8": "manifest.json", "neuron-top-k-zero": "--top-k", "lens-top-k-zero": "top_k",
    "orth-vector-nan": "NaN", "steer-vector-nan": "NaN", "check-traversal": "outside the harvest folder",
    "check-absolute": "outside the harvest folder", "train-harvest-traversal": "outside the harvest folder",
    "check-no-sha256": "sha256", "train-batch-zero": "--batch-size", "train-lr-nan": "--lr",
    "kn-prompts-zero": "--prompts", "eval-cfg-list": "JSON object", "eval-cfg-missing-keys": "d_in",
    "eval-cfg-not-json": "not valid JSON", "neuron-json-parent-is-file": "is a file, not a folder",
    "steer-value-nan": "--value", "sae-steer-max-new-zero": "--max-new-tokens",
}

NOT_UTF8 = b"caf\xe9 \xff\xfe not utf-8\n"


def _tree(root: Path) -> dict:
    """Every path under root with its size and contents hash (what 'nothing written' compares)."""
    out = {}
    for path in sorted(root.rglob("*")):
        out[str(path.relative_to(root))] = None if path.is_dir() else path.read_bytes()
    return out


def _vector_files(d: Path, model) -> None:
    vector = torch.randn(model.d_model, generator=torch.Generator().manual_seed(0))
    direction = Direction(vector, "resid_post.1", None, 4, 4, float(vector.double().norm()), "dom", model.spec,
                          config_sha256=config_sha256(model))
    save_vector(d / "good.safetensors", direction)
    good = d / "good.safetensors"
    with open(good, "rb") as f:                 # the same header, every value NaN: metadata intact
        raw = bytearray(f.read())
    n = int.from_bytes(raw[:8], "little")
    data = torch.full((model.d_model,), float("nan")).numpy().tobytes()
    (d / "nan.safetensors").write_bytes(bytes(raw[:8 + n]) + data)
    (d / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header at all")


def _sae_folders(d: Path, model) -> None:
    cfg = SAEConfig(architecture="topk", d_in=model.d_model, d_sae=16, k=2, model=model.spec,
                    model_config_hash=config_sha256(model), site_in="resid_post.1")
    save_sae(build_sae(cfg), d / "sae")
    for name, text in (("sae_notjson", "{not json"), ("sae_list", "[1, 2]"),
                       ("sae_missingkeys", json.dumps({"format": "lmscope-sae/1", "architecture": "topk"}))):
        (d / name).mkdir()
        (d / name / "cfg.json").write_text(text)
        (d / name / "sae.safetensors").write_bytes((d / "sae" / "sae.safetensors").read_bytes())
    (d / "sae_bin").mkdir()
    (d / "sae_bin" / "cfg.json").write_bytes(NOT_UTF8)
    (d / "sae_garbage").mkdir()
    (d / "sae_garbage" / "cfg.json").write_text((d / "sae" / "cfg.json").read_text())
    (d / "sae_garbage" / "sae.safetensors").write_bytes(b"garbage")


def _harvest_folders(d: Path) -> None:
    assert main(["harvest", "--model", "random:llama", "--corpus", "python", "--sites",
                 "resid_post.1", "--tokens", "40", "--seq-len", "16", "--shard-tokens", "40", "--out",
                 str(d / "h")]) == 0
    manifest = json.loads((d / "h" / "manifest.json").read_text())

    def variant(name, change=None, text=None, raw=None):
        folder = d / name
        folder.mkdir()
        for f in (d / "h").iterdir():
            (folder / f.name).write_bytes(f.read_bytes())
        if raw is not None:
            (folder / "manifest.json").write_bytes(raw)
            return
        m = json.loads(json.dumps(manifest))
        if change:
            change(m)
        (folder / "manifest.json").write_text(text if text is not None else json.dumps(m))

    (d / "outside.safetensors").write_bytes((d / "h" / manifest["shards"][0]["file"]).read_bytes())
    variant("h_traversal", lambda m: m["shards"][0].update(file="../outside.safetensors"))
    variant("h_absolute", lambda m: m["shards"][0].update(file=str(d / "outside.safetensors")))
    variant("h_nosha", lambda m: m["shards"][0].pop("sha256"))
    variant("h_shardlist", lambda m: m.update(shards=[["not", "a", "dict"]]))
    variant("h_badjson", text="{not json")
    variant("h_list", text="[1, 2, 3]")
    variant("h_bin", raw=NOT_UTF8)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad_input")
    model = lmscope.load("random:llama")
    (d / "bin.txt").write_bytes(NOT_UTF8)
    (d / "bin.jsonl").write_bytes(NOT_UTF8)
    (d / "bin.json").write_bytes(NOT_UTF8)
    (d / "empty.txt").write_text("")
    (d / "neg.txt").write_text("a calm day\nthe quiet sea\nsome plain words\nan ordinary line\n")
    (d / "bad.jsonl").write_text('{"input": "a", "output": "b"}\n{not json\n')
    (d / "missingkeys.jsonl").write_text('{"x": 1}\n{"y": 2}\n')
    (d / "pairs.jsonl").write_text(json.dumps({"clean": "ab", "corrupt": "ac", "answer": "d", "wrong": "e"}) + "\n")
    (d / "lre.jsonl").write_text("".join(json.dumps({"subject": s, "object": o}) + "\n"
                                         for s, o in (("a", "b"), ("c", "d"), ("e", "f"), ("g", "h"))))
    (d / "bad.json").write_text("{not json")
    (d / "list.json").write_text("[1, 2]")
    (d / "afile").write_text("a plain file")
    (d / "existing.html").write_text("<p>keep me</p>")
    (d / "emptydir").mkdir()
    (d / "nonempty").mkdir()
    (d / "nonempty" / "x.txt").write_text("keep")
    _vector_files(d, model)
    _sae_folders(d, model)
    _harvest_folders(d)
    return d


def test_the_battery_is_large_and_distinct():
    assert len(CASES) >= 120
    assert len({name for name, _ in CASES}) == len(CASES)
    assert len({line for _, line in CASES}) == len(CASES)


def test_the_battery_covers_every_subcommand():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    used = {shlex.split(line)[0] for _, line in CASES if line}
    assert set(sub.choices) <= used, f"no bad input for {sorted(set(sub.choices) - used)}"


@pytest.mark.parametrize("line", [line for _, line in CASES], ids=[name for name, _ in CASES])
def test_bad_input_is_one_line_and_exit_2(line, world, capsys, monkeypatch):
    monkeypatch.chdir(world)
    argv = shlex.split(line.format(d=world, M=M, ICL=ICL))
    before = _tree(world)
    try:
        code = main(argv)
    except SystemExit as exc:                   # argparse's usage errors leave through SystemExit(2)
        code = exc.code
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert code == 2, f"exit {code}; stderr: {captured.err[-2000:]}"
    assert len(err) == 1 and err[0].startswith("lmscope: error:"), captured.err[-2000:]
    assert "Traceback" not in captured.err + captured.out
    assert _tree(world) == before, "something was written"
    name = next(n for n, cmd in CASES if cmd == line)
    assert SAYS.get(name, "") in err[0], err[0]


def test_the_expected_messages_name_real_cases():
    assert set(SAYS) <= {name for name, _ in CASES}


def test_a_bug_still_shows_its_traceback(monkeypatch):
    """Only expected failures become one line: any other exception (a bug) propagates with its traceback."""
    def bug(args):
        raise KeyError("a bug")
    monkeypatch.setattr(lenses_cli, "cmd_lens", bug)
    with pytest.raises(KeyError):
        main(["lens", "hello", "--model", "random:llama"])


def test_an_os_error_from_a_users_file_is_one_line(monkeypatch, capsys, tmp_path):
    def unreadable(args):
        raise PermissionError(13, "Permission denied", str(tmp_path / "x.txt"))
    monkeypatch.setattr(lenses_cli, "cmd_lens", unreadable)
    assert main(["lens", "hello", "--model", "random:llama"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"lmscope: error: {tmp_path / 'x.txt'}: Permission denied"]
