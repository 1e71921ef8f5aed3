import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist (`-n N`, what `make test` runs) each worker is one process on one core: one intra-op
# thread each, so N workers do not oversubscribe N cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch
    torch.set_num_threads(1)
# Where torch sees no GPU, Triton kernels (the `cuda` target's) run in Triton's CPU interpreter. Set before
# anything imports a kernel: triton reads the variable when @triton.jit decorates one.
if os.environ.get("TRITON_INTERPRET") is None:
    import torch
    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"


def _zoo(name):
    from slimgraph import zoo
    if not zoo.available(name):
        msg = f"zoo model {name} not installed ({zoo.MODELS[name].install})"
        if os.environ.get("CI"):  # CI installs the models: a missing one is a failure, not a skip
            pytest.fail(msg)
        pytest.skip(msg)
    return zoo.load(name)


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer) for the real SmolLM2-135M-Instruct, loaded once per test session."""
    return _zoo("smollm2-135m")


@pytest.fixture(scope="session")
def minilm():
    return _zoo("minilm-l6")
