"""Safe weights: pipelines read safetensors only by default; pickles are read in one place,
with `weights_only=True`, and a pickle that would run code is refused before it runs."""

import ast
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from editkit.convert import load_state_dict, save_state_dict
from editkit.pipeline_utils import check_model_dir, safe_loading_kwargs
from editkit.pipelines import InstructCVPipeline
from editkit.testing import tiny_instructcv_components

REPO = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickling this runs `os.system`, which creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_files(tmp_path: Path) -> tuple[Path, list[Path]]:
    marker = tmp_path / "PWNED"
    legacy = tmp_path / "legacy.bin"  # a plain pickle stream
    with open(legacy, "wb") as fh:
        pickle.dump({"weight": torch.zeros(2), "x": Payload(marker)}, fh)
    zipped = tmp_path / "zipped.pt"  # torch.save's zip format, payload inside data.pkl
    torch.save({"state_dict": {"weight": torch.zeros(2)}, "x": Payload(marker)}, zipped)
    return marker, [legacy, zipped]


def test_the_payload_is_real_when_unpickled_unsafely(tmp_path):
    # guards the tests below: the same file does run code without weights_only
    marker, (legacy, _) = _evil_files(tmp_path)
    with open(legacy, "rb") as fh:
        pickle.load(fh)
    assert marker.exists()


def test_load_state_dict_refuses_a_malicious_pickle_without_running_it(tmp_path):
    marker, files = _evil_files(tmp_path)
    for f in files:
        with pytest.raises(ValueError, match=rf"refusing to load .*{f.name}.*weights_only=True"):
            load_state_dict(f)
    assert not marker.exists()


def test_load_state_dict_reads_plain_checkpoints(tmp_path):
    state = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(3, dtype=torch.float16)}
    torch.save({"state_dict": {**state, "step": 7}}, tmp_path / "ok.ckpt")
    got = load_state_dict(tmp_path / "ok.ckpt")
    assert got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state)
    save_state_dict(got, tmp_path / "ok.safetensors")
    back = load_state_dict(tmp_path / "ok.safetensors")
    assert all(torch.equal(back[k], state[k]) for k in state)
    with pytest.raises(ValueError, match=r"expected a \.safetensors file"):
        (tmp_path / "w.pkl2").write_bytes(b"x")
        load_state_dict(tmp_path / "w.pkl2")


def _unpickling_calls(path: Path) -> list[str]:
    """Calls in `path` that unpickle: torch.load, pickle/dill/joblib load(s), or weights_only=False anywhere."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        if name in ("torch.load", "pickle.load", "pickle.loads", "dill.load", "dill.loads", "joblib.load", "pickle.Unpickler"):
            found.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)[:120]}")
        for kw in node.keywords:
            if kw.arg == "weights_only" and not (isinstance(kw.value, ast.Constant) and kw.value.value is True):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: weights_only={ast.unparse(kw.value)}")
    return found


def test_convert_is_the_only_place_that_unpickles():
    # every module of the package (converters included), the pipelines, the app, the trainer, the benchmarks
    allowed = REPO / "editkit" / "convert" / "__init__.py"
    calls = {}
    for folder in ("editkit", "pipelines", "app", "train", "benchmarks"):
        for path in (REPO / folder).rglob("*.py"):
            calls[path] = _unpickling_calls(path)
    offenders = [c for path, found in calls.items() if path != allowed for c in found]
    assert not offenders, offenders
    # and the one place does it once, with weights_only=True
    assert len(calls[allowed]) == 1 and "weights_only=True" in calls[allowed][0]


@pytest.fixture(scope="module")
def pickled_model(tmp_path_factory):
    """A pipeline folder whose components are saved as pickles (.bin), as old checkpoints are."""
    root = tmp_path_factory.mktemp("pickled")
    pipe = InstructCVPipeline(**tiny_instructcv_components())
    pipe.save_pretrained(root / "model", safe_serialization=False)
    return root / "model"


def test_safe_loading_kwargs_default_to_safetensors_only():
    assert safe_loading_kwargs({})["use_safetensors"] is True
    assert safe_loading_kwargs({"use_safetensors": True})["use_safetensors"] is True
    # an explicit opt-in becomes diffusers' default: safetensors where present, else weights_only pickle
    assert safe_loading_kwargs({"use_safetensors": False, "torch_dtype": torch.float16}) == {
        "use_safetensors": None,
        "torch_dtype": torch.float16,
    }


def test_pipeline_refuses_pickle_only_folders_by_default(pickled_model):
    for comp in ("unet", "vae"):  # (transformers 5 always writes safetensors for the text encoder)
        assert list((pickled_model / comp).glob("*.bin")) and not list((pickled_model / comp).glob("*.safetensors"))
    with pytest.raises(ValueError, match=r"component '(text_encoder|unet|vae)' has only pickle weights.*safetensors only.*pass use_safetensors=False"):
        InstructCVPipeline.from_pretrained(pickled_model)
    # the caller may opt in for a source they trust; diffusers then unpickles with weights_only=True
    pipe = InstructCVPipeline.from_pretrained(pickled_model, use_safetensors=False)
    assert pipe.unet.config.in_channels == 8


def test_pipeline_never_runs_a_malicious_component(pickled_model, tmp_path):
    model = tmp_path / "evil"
    shutil.copytree(pickled_model, model)
    marker = tmp_path / "PWNED"
    weights = model / "unet" / "diffusion_pytorch_model.bin"
    state = torch.load(weights, weights_only=True)
    with open(weights, "wb") as fh:
        pickle.dump({**state, "boom": Payload(marker)}, fh)
    with pytest.raises(ValueError, match="only pickle weights"):
        InstructCVPipeline.from_pretrained(model)
    # even when the caller opts in to pickle, loading is restricted (weights_only) and fails
    with pytest.raises(Exception, match=r"(?i)weights.only|unpickl|unsupported global|unable to load weights"):
        InstructCVPipeline.from_pretrained(model, use_safetensors=False)
    assert not marker.exists()


def test_safetensors_folders_and_the_shipped_model_load(tmp_path):
    pipe = InstructCVPipeline(**tiny_instructcv_components())
    pipe.save_pretrained(tmp_path / "safe")
    # a stray pickle next to safetensors is never read: safetensors win
    (tmp_path / "safe" / "unet" / "stray.bin").write_bytes(b"not even a pickle")
    check_model_dir(tmp_path / "safe", ("unet", "vae"))
    loaded = InstructCVPipeline.from_pretrained(tmp_path / "safe")
    assert all(torch.equal(a, b) for a, b in zip(loaded.unet.state_dict().values(), pipe.unet.state_dict().values()))
    shipped = InstructCVPipeline.from_pretrained(REPO / "editkit" / "models" / "instructcv-tiny")
    assert shipped.vae.config.latent_channels == 4
