"""Converters against the official code: fixtures made by running the official modules (tools/make_golden.py).

Each test reads the official checkpoint through the converter's command line, loads the result with
editkit's own `from_pretrained`, and matches the official output on the same inputs in fp32. A mapping
deliberately broken must break the match (so the fixture can fail).
"""

from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# -- PixWizard -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pixwizard_golden():
    folder = FIXTURES / "pixwizard_official"
    return folder / "consolidated_ema.00-of-01.pth", torch.load(folder / "io.pt", weights_only=True)


def _pixwizard_forward(model, io: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(hidden_states=io["x"], timestep=io["t"], encoder_hidden_states=io["cap_feats"],
                     encoder_attention_mask=io["cap_mask"], pooled_text_embeds=io["cap_pooled_feats"],
                     image_latents=io["input_x"], image_embeds=io["input_clip_x"], token_selection="topk",
                     return_dict=False)[0][:, : io["x"].shape[1]]  # learn_sigma: the official forward keeps this half


def test_pixwizard_official_checkpoint_converts_and_matches_the_official_forward(pixwizard_golden, tmp_path):
    from editkit.convert.pixwizard import main
    from editkit.modeling.pixwizard_transformer import PixWizardTransformer2DModel

    checkpoint, io = pixwizard_golden
    assert io["output"].abs().max() > 0.1 and io["input_clip_x"][2].abs().max() == 0  # real outputs, a null branch
    assert main([str(checkpoint), str(tmp_path / "transformer"), "--sample-tokens", "4", "--sample-size", "16"]) == 0
    model = PixWizardTransformer2DModel.from_pretrained(tmp_path / "transformer").eval()
    assert model.config.hidden_size == io["config"]["dim"] and model.config.num_kv_heads == io["config"]["n_kv_heads"]
    assert relative_error(_pixwizard_forward(model, io), io["output"]) <= 1e-4


# (the token sampler's y_pool_proj acts only through which CLIP tokens are picked, so zeroing it need not
# change the output; the broken mappings below are ones that always must)
@pytest.mark.parametrize("broken", ["swap_image_kv", "swap_k_norms", "drop_image_gate"])
def test_pixwizard_golden_fixture_catches_a_wrong_mapping(pixwizard_golden, broken):
    from editkit.convert.pixwizard import convert_state_dict, config_from_state_dict
    from editkit.modeling.pixwizard_transformer import PixWizardTransformer2DModel

    checkpoint, io = pixwizard_golden
    official = torch.load(checkpoint, weights_only=True)
    state = convert_state_dict(official)
    if broken == "swap_image_kv":
        a, b = "layers.1.to_k_image.weight", "layers.1.to_v_image.weight"
        state[a], state[b] = state[b], state[a]
    elif broken == "swap_k_norms":
        for p in ("weight", "bias"):
            a, b = f"layers.0.attn1.norm_k.{p}", f"layers.0.norm_k_image.{p}"
            state[a], state[b] = state[b], state[a]
    else:
        state["layers.0.gate_image"] = torch.zeros_like(state["layers.0.gate_image"])
    model = PixWizardTransformer2DModel(**config_from_state_dict(official, sample_tokens=4, sample_size=16))
    model.load_state_dict(state, strict=True)
    assert relative_error(_pixwizard_forward(model.eval(), io), io["output"]) > 1e-3
