"""Bad input: one clear error, and the model is left with no hooks."""
import pytest
import torch

import lmscope
from lmscope import EditError, InputError, ModelSpecError, SiteError
from lmscope.cli import main
from conftest import random_model


@pytest.fixture
def llama():
    m = random_model("llama")
    yield m
    assert not m.has_hooks()


BAD_EDITS = [
    (lambda m: [lmscope.add("resid_psot.1", torch.zeros(m.d_model))], SiteError, "unknown site"),
    (lambda m: [lmscope.add("resid_post.3", torch.zeros(m.d_model))], SiteError, "layer 3 out of range"),
    (lambda m: [lmscope.zero("neurons.1", neurons=[m.d_mlp])], EditError, "neuron 96 out of range"),
    (lambda m: [lmscope.zero("z.1", heads=[4])], EditError, "head 4 out of range"),
    (lambda m: [lmscope.add("resid_post.1", torch.zeros(m.d_model + 1))], EditError, r"shape \(65,\) does not fit"),
    (lambda m: [lmscope.add("neurons.1", torch.zeros(m.d_model))], EditError, r"ends in \(96,\)"),
    (lambda m: [lmscope.add("resid_post.1", torch.zeros(m.d_model, dtype=torch.float64))], EditError,
     "dtype torch.float64 does not match"),
    (lambda m: [lmscope.add("resid_post.1", torch.zeros(m.d_model, dtype=torch.long))], EditError, "dtype"),
    (lambda m: [lmscope.add("resid_post.1", [0.0] * m.d_model)], EditError, "needs a tensor"),
    (lambda m: [lmscope.zero("resid_post.1", heads=[0])], EditError, "heads= applies to z"),
    (lambda m: [lmscope.zero("pattern.1")], SiteError, "read-only"),
    (lambda m: [lmscope.project_out("resid_post.1", torch.zeros(m.d_model))], EditError, "zero norm"),
    (lambda m: [lmscope.zero("resid_post.1", positions="all")], EditError, "positions"),
    (lambda m: [lmscope.zero("resid_post.1", positions=[7])], EditError, "outside the sequence of 7 tokens"),
    (lambda m: [lmscope.replace("resid_post.1", torch.zeros(3, m.d_model))], EditError, "covers 3 positions"),
    (lambda m: ["not an edit"], EditError, "lmscope.add"),
]


@pytest.mark.parametrize("make, error, message", BAD_EDITS)
def test_bad_edits(llama, ids, make, error, message):
    clean = llama.run(ids).logits
    with pytest.raises(error, match=message):
        llama.run(ids, edits=make(llama))
    assert not llama.has_hooks()
    assert torch.equal(llama.run(ids).logits, clean)


@pytest.mark.parametrize("inputs, message", [("", "empty prompt"), ("   ", "empty prompt"), ([], "empty prompt"),
                                             (torch.zeros(1, 0, dtype=torch.long), "empty input"),
                                             (torch.tensor([[1, 99999]]), "token ids must be")])
def test_bad_inputs(llama, inputs, message):
    with pytest.raises(InputError, match=message):
        llama.run(inputs, read=["resid_post.0"])


def test_bad_read_site(llama, ids):
    with pytest.raises(SiteError, match="unknown site"):
        llama.run(ids, read=["resid_post.0", "mlp_hidden.0"])


@pytest.mark.parametrize("spec, message", [("gpt5", "unknown model spec"), ("random:transformerxl", "no random model"),
                                           ("gguf:/nonexistent.gguf", "not found"), ("", "empty model spec"),
                                           ("hf:/nonexistent/folder", "cannot load")])
def test_bad_model_specs(spec, message):
    with pytest.raises(ModelSpecError, match=message):
        lmscope.load(spec)


def test_unknown_architecture_names_the_supported_ones():
    import transformers as tf
    from lmscope.core.models.model import Model
    hf = tf.AutoModelForCausalLM.from_config(tf.OPTConfig(num_hidden_layers=1, hidden_size=16, num_attention_heads=2,
                                                          ffn_dim=32, vocab_size=50, word_embed_proj_dim=16))
    with pytest.raises(ModelSpecError, match="'opt'.*not supported; supported: .*gpt2.*llama.*To add one"):
        Model(hf, None, "opt")


def test_hooks_removed_when_the_body_raises(llama, ids):
    with pytest.raises(RuntimeError, match="boom"):
        with llama.trace(read=["resid_post.0"], edits=[lmscope.scale("mlp_out.1", 2.0)]):
            assert llama.has_hooks()
            raise RuntimeError("boom")
    assert not llama.has_hooks()


def test_pattern_read_restores_attention_even_on_error(llama, ids):
    before = llama.hf.config._attn_implementation
    with pytest.raises(EditError):
        llama.run(ids, read=["pattern.0"], edits=[lmscope.replace("resid_post.1", torch.zeros(3, llama.d_model))])
    assert llama.hf.config._attn_implementation == before


@pytest.mark.parametrize("argv, message", [
    (["lens", "", "--model", "random:llama"], "empty prompt"),
    (["lens", "hi", "--model", "nope"], "unknown model spec"),
    (["lens", "hi", "--model", "random:llama", "--top-k", "0"], "top_k must be an integer >= 1"),
    (["lens", "hi", "--model", "random:llama", "--target", "xyz"], "is 3 tokens"),
    (["lens", "hi", "--model", "random:llama", "--dtype", "float8"], "unknown dtype"),
    (["lens", "hi", "--model", "random:llama", "--html", "/nonexistent/dir/x.html"], "does not exist"),
])
def test_cli_errors_are_one_line_and_exit_2(capsys, argv, message):
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("lmscope: error:")
    assert "Traceback" not in captured.err and captured.out == ""
