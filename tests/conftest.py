import os

import pytest

# No test may touch a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread; two threads on a busy 2-core machine spin for seconds per step."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def record_attend(monkeypatch):
    """`record_attend(module)`: replace `module.attend` by sdpa that records the backend of every call;
    returns the list of recorded backends (xformers itself needs CUDA, so sdpa stands in for it)."""
    from editkit import attention

    def install(module) -> list[str]:
        seen: list[str] = []

        def recording(q, k, v, attn_mask=None, *, scale=None, backend="sdpa"):
            seen.append(backend)
            return attention.attend(q, k, v, attn_mask, scale=scale)

        monkeypatch.setattr(module, "attend", recording)
        return seen

    return install
