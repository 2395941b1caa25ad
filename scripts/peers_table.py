"""The peer comparison as one markdown table: the seed U-Net's forward per batch size, our paths
next to the peers (median ms), and the ratio of our best path to the best peer.

    python scripts/peers_table.py                          # time the forward groups once, here
    python scripts/peers_table.py --batches 1 4 --rounds 5 --precisions fp32 bf16
    python scripts/peers_table.py benchmarks/results/cpu/run.json   # from pytest-benchmark JSON

Timing here builds each benchmark workload (benchmarks/workloads.py), checks the fused path and
each peer against the reference as the suite does, warms each up twice and takes the median of
``--rounds`` runs. From JSON (``pytest benchmarks --benchmark-only --benchmark-json=...``), it
reads the unet-forward groups and the peers' sampling loops, one table per machine. A peer that
cannot run (missing package, no bf16) or fails says so in its cell; one that does not run in a
row's precision (ONNX Runtime and OpenVINO f32 in bf16, OpenVINO bf16 in fp32) has "-".
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from workloads import group_precision, precision_skip_reason  # noqa: E402

COLUMNS = [("reference", "eager"), ("fused", "fused"), ("fused+compile", "fused+compile"),
           ("compile-freezing", "compile-freezing"), ("compile-freezing-cpp", "compile-freezing-cpp"),
           ("onnxruntime", "ORT"), ("openvino", "OpenVINO f32"), ("openvino-bf16", "OpenVINO bf16")]
OURS = ("fused", "fused+compile")
PEERS = ("compile-freezing", "compile-freezing-cpp", "onnxruntime", "openvino", "openvino-bf16")


def _label(group):
    """'b64' for unet-forward-b64, 'bf16 b64' for unet-forward-bf16-b64, a loop by its group."""
    return group.removeprefix("unet-forward-").replace("-", " ") if group.startswith("unet-forward-") else group


def _group_key(group):
    """The forward rows first, fp32 then bf16, each by batch; then the loops by name."""
    if group.startswith("unet-forward-"):
        return (0, group_precision(group) != "fp32", int(group.rsplit("b", 1)[1]), group)
    return (1, False, 0, group)


def table(header, cells):
    """Markdown: ``cells[group][impl]`` is a median in seconds or a string (why there is none)."""
    lines = [f"**{header}**", "",
             "| batch | " + " | ".join(name for _, name in COLUMNS) + " | best ours vs best peer |",
             "|---|" + "---:|" * (len(COLUMNS) + 1)]
    for group in sorted(cells, key=_group_key):
        row = cells[group]
        times = {impl: v for impl, v in row.items() if isinstance(v, float)}
        texts = [f"{times[impl] * 1e3:.2f}" if impl in times else row.get(impl, "-") for impl, _ in COLUMNS]
        ours = min((i for i in OURS if i in times), key=times.get, default=None)
        peer = min((i for i in PEERS if i in times), key=times.get, default=None)
        ratio = (f"{times[peer] / times[ours]:.2f}x ({ours} vs {peer})" if ours and peer else "-")
        lines.append(f"| {_label(group)} | " + " | ".join(texts) + f" | {ratio} |")
    lines += ["", "Median ms per call (a sampling-loop row: the whole timed loop). Last column: the best peer's "
              "time over our best path's (fused or fused+compile); above 1x ours is faster."]
    return "\n".join(lines)


def from_json(files):
    """{header: {group: {impl: median}}} from pytest-benchmark JSON files."""
    from workloads import PEER_LOOP_GROUPS

    tables = {}
    for path in files:
        for bench in json.loads(Path(path).read_text())["benchmarks"]:
            group, extra = bench["group"], bench.get("extra_info", {})
            if not (group.startswith("unet-forward-") or group in PEER_LOOP_GROUPS):
                continue
            header = extra.get("device_name", "?")
            tables.setdefault(header, {}).setdefault(group, {})[extra.get("impl", "?")] = bench["stats"]["median"]
    return tables


def run_here(batches, rounds, precisions=("fp32",)):
    """{header: {group: {impl: median or why not}}}, timing the forward groups on this machine."""
    import torch

    import peers
    from workloads import BUILDERS
    from ddpm_fast import ops
    from ddpm_fast.ops.cpu_report import processor_name

    header = (f"CPU {processor_name()} x{torch.get_num_threads()} threads, ddpm_fast {ops.cpu_isa()}, "
              f"torch {torch.backends.cpu.get_cpu_capability()}")
    cells = {}
    groups = [f"unet-forward-b{batch}" if precision == "fp32" else f"unet-forward-{precision}-b{batch}"
              for precision in precisions for batch in batches]
    for group in groups:
        workload = BUILDERS[group](torch.device("cpu"))
        row = cells[group] = {}
        for impl, _ in COLUMNS:
            if precision_skip_reason(group, impl, "cpu"):
                continue  # "-": not run in this row's precision
            if impl.startswith("fused") and "cpu" not in ops.compiled_backends():
                row[impl] = "not built"
                continue
            if impl in peers.PEERS and peers.unavailable(impl):
                row[impl] = "n/a"
                print(f"{group} {impl}: skipped: {peers.unavailable(impl)}", file=sys.stderr)
                continue
            try:
                if impl == "fused":
                    workload.check()
                elif impl in peers.PEERS:
                    workload.check_peer(impl)
                fn = workload.make(impl)
                fn()
                fn()
            except AssertionError:
                raise
            except Exception as error:
                row[impl] = f"failed ({type(error).__name__})"
                print(f"{group} {impl}: failed: {type(error).__name__}: {error}", file=sys.stderr)
                continue
            times = []
            for _ in range(rounds):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            row[impl] = statistics.median(times)
            print(f"{group} {impl}: {row[impl] * 1e3:.2f} ms", file=sys.stderr)
    return {header: cells}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="pytest-benchmark JSON files (default: time here)")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4, 16, 64, 128])
    parser.add_argument("--rounds", type=int, default=5, help="timed runs per cell, when timing here")
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32"],
                        help="the precisions timed here (bf16: every path under bf16 autocast, OpenVINO in bf16)")
    args = parser.parse_args(argv)
    tables = from_json(args.files) if args.files else run_here(args.batches, args.rounds, args.precisions)
    if not tables:
        print("no unet-forward or peer sampling-loop rows in these files", file=sys.stderr)
        return 1
    print("\n\n".join(table(header, cells) for header, cells in tables.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
