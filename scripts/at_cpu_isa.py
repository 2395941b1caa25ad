"""Runs a command as a processor with only the given instruction-set level would: ddpm_fast's
CPU kernels (DDPM_FAST_CPU_ISA) and torch's own kernels (ATen's ATEN_CPU_CAPABILITY, oneDNN's
ONEDNN_MAX_CPU_ISA, MKL's MKL_ENABLE_INSTRUCTIONS) all held to that level, so that the fused
path and the reference are compared as a user of such a processor would see them.

    python scripts/at_cpu_isa.py avx2 -- pytest benchmarks --benchmark-only
    python scripts/at_cpu_isa.py default -- python scripts/cpu_isa_table.py

Levels: avx512, avx2, default (baseline x86-64: SSE4 for torch's libraries, SSE2 for ours).

Each level also gets its own torch.compile cache (TORCHINDUCTOR_CACHE_DIR, unless set): with
one cache shared between levels, the whole-U-Net fused+compile benchmark at AVX-512 aborted
(SIGABRT) in code compiled by an earlier AVX2 run, twice; with a cache per level it passes.
"""

import getpass
import os
import sys
import tempfile

ENVIRONMENTS = {
    "avx512": {"DDPM_FAST_CPU_ISA": "avx512", "ATEN_CPU_CAPABILITY": "avx512",
               "ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "MKL_ENABLE_INSTRUCTIONS": "AVX512"},
    "avx2": {"DDPM_FAST_CPU_ISA": "avx2", "ATEN_CPU_CAPABILITY": "avx2",
             "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "default": {"DDPM_FAST_CPU_ISA": "default", "ATEN_CPU_CAPABILITY": "default",
                "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
}


def main(argv):
    if len(argv) < 3 or argv[0] not in ENVIRONMENTS or argv[1] != "--":
        sys.exit(f"usage: python scripts/at_cpu_isa.py {{{','.join(ENVIRONMENTS)}}} -- COMMAND...")
    level = argv[0]
    cache = os.path.join(tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}_{level}")
    os.execvpe(argv[2], argv[2:], {"TORCHINDUCTOR_CACHE_DIR": cache, **os.environ, **ENVIRONMENTS[level]})


if __name__ == "__main__":
    main(sys.argv[1:])
