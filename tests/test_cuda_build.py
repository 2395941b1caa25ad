"""How the CUDA part is built and checked, on any machine: the toolkit setup.py builds with,
the architectures it embeds, and that a GPU machine cannot pass tests/test_cuda.py without the
CUDA kernels."""

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import cuda_build

ROOT = Path(__file__).resolve().parents[1]


def executable(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def fake_toolkit(root):
    """A toolkit whose nvcc answers --version and --dryrun as the real one does."""
    executable(root / "bin" / "nvcc", textwrap.dedent(f"""\
        #!/bin/sh
        case "$*" in
          *--dryrun*) echo '#$ _HERE_={root}/bin' >&2 ;;
          *--version*) echo 'Cuda compilation tools, release 13.0, V13.0.88' ;;
        esac
        """))
    (root / "include").mkdir()
    (root / "include" / "cuda_runtime.h").write_text("")
    return root


def test_the_toolkit_is_the_one_the_nvcc_on_the_path_runs(tmp_path):
    # The PATH's nvcc is a wrapper script elsewhere (as on the team's machines): the toolkit is
    # where the real nvcc lives, not the wrapper's parent directory.
    toolkit = fake_toolkit(tmp_path / "cuda-13.0")
    executable(tmp_path / "wrappers" / "nvcc", f'#!/bin/sh\nexec {toolkit}/bin/nvcc "$@"\n')
    found = cuda_build.find_cuda_toolkit({"PATH": str(tmp_path / "wrappers")})
    assert found == str(toolkit)
    assert cuda_build.nvcc_version(found) == "13.0"
    assert cuda_build.cuda_include_dir(found) == str(toolkit / "include")


def test_cuda_home_wins_and_no_toolkit_is_none(tmp_path):
    toolkit = fake_toolkit(tmp_path / "cuda")
    assert cuda_build.find_cuda_toolkit({"CUDA_HOME": str(toolkit), "PATH": ""}) == str(toolkit)
    assert cuda_build.find_cuda_toolkit({"PATH": str(tmp_path / "empty")}) is None


def test_the_default_architectures_embed_ptx_for_newer_gpus():
    # Without PTX, a GPU newer than the newest listed architecture finds "no kernel image".
    assert cuda_build.DEFAULT_ARCH_LIST.split(";")[-1].endswith("+PTX")


def test_a_gpu_without_the_cuda_kernels_fails_the_cuda_tests(tmp_path):
    # Simulates a GPU machine whose build silently fell back to CPU-only: test_cuda.py must fail
    # there, not skip (a skipped GPU round looks like a passed one).
    (tmp_path / "pretend_gpu.py").write_text(textwrap.dedent("""\
        import torch
        from ddpm_fast import ops
        torch.cuda.is_available = lambda: True
        ops.loading._BACKENDS = ("cpu",)
        """))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "pretend_gpu",
         "-k", "test_linear_attention_half_precision", str(ROOT / "tests" / "test_cuda.py")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert result.returncode == 1, result.stdout[-2000:]
    assert "skipped" not in result.stdout.splitlines()[-1]
    assert "has no CUDA kernels" in result.stdout


def test_libcudart_is_found_in_the_toolkit_or_beside_torch(tmp_path):
    # torch's CUDA wheels bring libcudart in a package of their own (nvidia/cu13/lib for CUDA 13),
    # holding only the versioned file; a toolkit has lib64/libcudart.so.
    toolkit = fake_toolkit(tmp_path / "cuda")
    site_packages = tmp_path / "site-packages"
    runtime = site_packages / "nvidia" / "cu13" / "lib" / "libcudart.so.13"
    runtime.parent.mkdir(parents=True)
    runtime.write_text("")
    assert cuda_build.find_cudart(toolkit, site_packages) == str(runtime)
    (toolkit / "lib").mkdir()
    (toolkit / "lib" / "libcudart.so").write_text("")
    assert cuda_build.find_cudart(toolkit, site_packages) == str(toolkit / "lib" / "libcudart.so")
    (toolkit / "lib64").mkdir()
    (toolkit / "lib64" / "libcudart.so").write_text("")
    assert cuda_build.find_cudart(toolkit, site_packages) == str(toolkit / "lib64" / "libcudart.so")
    assert cuda_build.find_cudart(None, tmp_path / "empty") is None
