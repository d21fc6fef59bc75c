import pytest

from lmscope import SiteError
from lmscope.core.models.sites import Site, expand_sites, parse_site


@pytest.mark.parametrize("name, expected", [
    ("resid_post.5", Site("resid_post", 5)),
    ("resid_post.-1", Site("resid_post", 29)),
    ("neurons.-30", Site("neurons", 0)),
    ("blocks.5.hook_resid_post", Site("resid_post", 5)),
    ("blocks.3.hook_resid_pre", Site("resid_pre", 3)),
    ("blocks.3.hook_resid_mid", Site("resid_mid", 3)),
    ("blocks.3.hook_attn_out", Site("attn_out", 3)),
    ("blocks.3.hook_mlp_out", Site("mlp_out", 3)),
    ("blocks.5.mlp.hook_post", Site("neurons", 5)),
    ("blocks.5.attn.hook_z", Site("z", 5)),
    ("blocks.-1.attn.hook_pattern", Site("pattern", 29)),
    ("hook_embed", Site("embed")),
    ("ln_final.hook_normalized", Site("final_norm")),
    ("embed", Site("embed")),
    ("logits", Site("logits")),
])
def test_names_and_aliases(name, expected):
    assert parse_site(name, 30) == expected


@pytest.mark.parametrize("name, message", [
    ("resid_psot.3", "unknown site"),
    ("resid_post.30", "layer 30 out of range"),
    ("resid_post.-31", "out of range"),
    ("resid_post", "needs a layer"),
    ("embed.3", "takes no layer"),
    ("blocks.2.hook_nonsense", "unknown TransformerLens hook"),
])
def test_bad_names(name, message):
    with pytest.raises(SiteError, match=message):
        parse_site(name, 30)


def test_expand_wildcard_keeps_order_and_drops_duplicates():
    sites = expand_sites(["embed", "resid_post.*", "resid_post.1"], 3)
    assert [str(s) for s in sites] == ["embed", "resid_post.0", "resid_post.1", "resid_post.2"]


def test_order_follows_the_forward_pass():
    names = ["logits", "resid_post.1", "neurons.1", "resid_pre.1", "z.1", "attn_out.1", "resid_mid.1", "mlp_out.1",
             "final_norm", "resid_post.0", "embed"]
    ordered = sorted((parse_site(n, 2) for n in names), key=lambda s: s.order_key(2))
    assert [str(s) for s in ordered] == ["embed", "resid_post.0", "resid_pre.1", "z.1", "attn_out.1", "resid_mid.1",
                                         "neurons.1", "mlp_out.1", "resid_post.1", "final_norm", "logits"]


def test_resolve_position():
    from lmscope import InputError
    from lmscope.core.models.sites import resolve_position
    assert [resolve_position(p, 5) for p in (0, 4, -1, -5)] == [0, 4, 4, 0]
    for bad in (5, -6, 1.0, True, None):
        with pytest.raises(InputError, match=r"out of range for the prompt \(5 tokens: 0..4 or -5..-1\)"):
            resolve_position(bad, 5)
