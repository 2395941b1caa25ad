"""Fixtures of the CUDA emulation tests: the emulated library (built on first use, skipped only
when the CUDA toolkit headers are missing), guarded memory for every test, and a check that no
test leaves a fault unclaimed."""

import pytest

import emulation


@pytest.fixture(scope="session")
def emulated():
    """``torch.ops.ddpm_fast_emulated``: the CUDA kernels and binding, run on CPU tensors."""
    if emulation.cuda_headers() is None:
        pytest.skip("the CUDA toolkit headers (cuda_runtime.h) were not found: install the CUDA "
                    "toolkit, put its nvcc on the PATH or set CUDA_HOME")
    return emulation.emulated_ops()


@pytest.fixture(autouse=True)
def _guarded_and_fault_free(emulated):
    """Every tensor a test allocates is guarded and poisoned; a fault the test did not take
    (with emulation.take_faults()) fails it."""
    emulation.take_faults()
    emulation.configure()
    with emulation.guarded_memory():
        yield
    faults = emulation.take_faults()
    assert not faults, "the emulation reported:\n" + "\n".join(faults)
