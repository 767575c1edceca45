import pytest
import torch

from editkit.conditioning import Condition, Conditioning
from editkit.guidance import (
    IP2P_GUIDANCE,
    Branch,
    ConditionDropout,
    GuidanceRule,
    Term,
    guided_prediction,
    ip2p_dropout,
)


def _cond(batch=2):
    g = torch.Generator().manual_seed(0)
    text = torch.randn(batch, 5, 8, generator=g)
    null_text = torch.randn(1, 5, 8, generator=g)
    image = torch.randn(batch, 4, 6, 6, generator=g)
    return Conditioning({"encoder_hidden_states": Condition(text, null_text, "text"), "image_latents": Condition.zeros_null(image, "image")})


def test_ip2p_weights_match_hand_formula():
    w = IP2P_GUIDANCE.weights({"guidance_scale": 7.5, "image_guidance_scale": 1.5})
    # uncond + 7.5 (full - image) + 1.5 (image - uncond)
    assert w == pytest.approx({"full": 7.5, "image": -6.0, "uncond": -0.5})
    assert sum(w.values()) == pytest.approx(1.0)


def test_promptfix_midpoint_rule_against_hand_computation():
    rule = GuidanceRule(
        branches=(Branch("full"), Branch("image", frozenset({"text"})), Branch("text", frozenset({"image"}))),
        base=(("image", 0.5), ("text", 0.5)),
        terms=(Term("s_t", "full", "image"), Term("s_i", "full", "text")),
    )
    g = torch.Generator().manual_seed(1)
    outs = {k: torch.randn(3, 4, generator=g) for k in ("full", "image", "text")}
    got = rule.combine(outs, {"s_t": 6.5, "s_i": 1.25})
    want = 0.5 * (outs["image"] + outs["text"]) + 6.5 * (outs["full"] - outs["image"]) + 1.25 * (outs["full"] - outs["text"])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # the collapsed weights give the same result
    w = rule.weights({"s_t": 6.5, "s_i": 1.25})
    torch.testing.assert_close(sum(w[k] * outs[k] for k in outs), want, rtol=0, atol=1e-5)


def test_zero_weight_branches_are_skipped():
    assert [b.name for b in IP2P_GUIDANCE.active_branches({"guidance_scale": 1.0, "image_guidance_scale": 1.0})] == ["full"]
    # image scale 1 makes the unconditional branch redundant
    names = [b.name for b in IP2P_GUIDANCE.active_branches({"guidance_scale": 5.0, "image_guidance_scale": 1.0})]
    assert names == ["full", "image"]


def test_guided_prediction_is_one_batched_forward_in_branch_order():
    cond = _cond(batch=2)
    calls = []

    def forward(x, c):
        calls.append((x.shape[0], c["encoder_hidden_states"].clone(), c["image_latents"].clone()))
        # a linear toy backbone so the combination is checkable
        return x * 0.0 + c["encoder_hidden_states"].mean(dim=(1, 2)).view(-1, 1, 1, 1) + c["image_latents"]

    x = torch.randn(2, 4, 6, 6)
    scales = {"guidance_scale": 7.5, "image_guidance_scale": 1.5}
    out = guided_prediction(IP2P_GUIDANCE, scales, cond, x, forward)
    assert len(calls) == 1 and calls[0][0] == 6
    text, image = calls[0][1], calls[0][2]
    # text slots [T, null, null], image slots [I, I, 0]
    torch.testing.assert_close(text[:2], cond["encoder_hidden_states"].value)
    torch.testing.assert_close(text[2:4], cond["encoder_hidden_states"].null.expand(2, -1, -1))
    torch.testing.assert_close(image[2:4], cond["image_latents"].value)
    assert image[4:].abs().max() == 0
    t_full = cond["encoder_hidden_states"].value.mean(dim=(1, 2)).view(-1, 1, 1, 1)
    t_null = cond["encoder_hidden_states"].null.mean().item()
    full, img, unc = t_full + cond["image_latents"].value, t_null + cond["image_latents"].value, t_null + torch.zeros_like(x)
    torch.testing.assert_close(out, unc + 7.5 * (full - img) + 1.5 * (img - unc))


def test_dropout_uses_the_same_nulls_and_rates():
    cond = _cond(batch=4000)
    drop = ip2p_dropout(0.05).sample(4000, torch.Generator().manual_seed(0))
    sel = cond.select(drop)
    text_dropped = (sel["encoder_hidden_states"] == cond["encoder_hidden_states"].null).flatten(1).all(1)
    image_dropped = (sel["image_latents"] == 0).flatten(1).all(1)
    assert torch.equal(text_dropped, drop["text"]) and torch.equal(image_dropped, drop["image"])
    rates = {
        "text_only": (text_dropped & ~image_dropped).float().mean().item(),
        "both": (text_dropped & image_dropped).float().mean().item(),
        "image_only": (~text_dropped & image_dropped).float().mean().item(),
    }
    for name, r in rates.items():
        assert abs(r - 0.05) < 0.015, (name, r)


def test_bad_rules_and_scales_are_reported():
    with pytest.raises(ValueError, match="undefined branches"):
        GuidanceRule(branches=(Branch("full"),), base=(("uncond", 1.0),), terms=())
    with pytest.raises(ValueError, match="missing guidance scale"):
        IP2P_GUIDANCE.weights({"guidance_scale": 7.5})
    with pytest.raises(ValueError, match="sum to <= 1"):
        ConditionDropout((frozenset({"text"}), frozenset({"image"})), (0.7, 0.6))
    with pytest.raises(ValueError, match="unknown condition group"):
        _cond().select({"audio"})
    with pytest.raises(ValueError, match="batch size"):
        Conditioning({"a": Condition.zeros_null(torch.zeros(2, 3), "x"), "b": Condition.zeros_null(torch.zeros(3, 3), "y")})
