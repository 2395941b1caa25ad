"""What the CPU path runs on this machine: the processor, the instruction-set level of
ddpm_fast's kernels and of torch's, and which ops run fused."""

import platform
import subprocess

import torch

from . import isa, loading, policy


def processor_name():
    """The processor's model name as lscpu (or /proc/cpuinfo) reports it, e.g. 'AMD EPYC'."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_report():
    """A dict describing the CPU path: ``processor``, ``threads``, ``ddpm_fast_isa`` (the level
    ddpm_fast's CPU kernels run at: 'avx512', 'avx2' or 'default'), ``supported_isas``,
    ``torch_isa`` (torch's own kernels' level), ``intra_op_parallel`` and ``ops``: per op,
    'fused' or why it runs the reference. ``print(format_cpu_report())`` shows it as text."""
    report = dict(
        processor=processor_name(),
        threads=torch.get_num_threads(),
        ddpm_fast_isa=isa.cpu_isa(),
        supported_isas=list(isa.supported_cpu_isas()),
        torch_isa=torch.backends.cpu.get_cpu_capability(),
        intra_op_parallel=bool(loading.compiled_ops_loaded() and loading._C.intra_op_parallel),
        ops=policy.cpu_op_choices(),
    )
    if not loading.compiled_ops_loaded():
        report["load_error"] = loading.load_error()
    return report


def format_cpu_report(report=None):
    """cpu_report() as a few lines of text."""
    report = report or cpu_report()
    lines = [
        f"processor: {report['processor']}, {report['threads']} threads",
        f"ddpm_fast CPU kernels: {report['ddpm_fast_isa'] or 'not loaded'} "
        f"(this processor runs {', '.join(report['supported_isas']) or '-'}; set DDPM_FAST_CPU_ISA to choose)",
        f"torch's own CPU kernels: {report['torch_isa']}",
    ]
    if "load_error" in report:
        lines.append(f"compiled extension not loaded: {report['load_error']}")
    lines += [f"  {op}: {choice}" for op, choice in report["ops"].items()]
    return "\n".join(lines)
