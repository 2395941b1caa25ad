"""The peers of the benchmark suite: other ways to run the seed U-Net's forward on the CPU.

    onnxruntime           the forward exported to ONNX (torch.onnx.export, dynamo=True, dynamic
                          batch), run by an InferenceSession at ORT_ENABLE_ALL with torch's threads
    openvino              the same ONNX file compiled by OpenVINO for the CPU in f32: LATENCY hint
                          at batch 1; THROUGHPUT at larger batches, the batch split across the
                          compiled model's optimal number of infer requests
    openvino-bf16         the same in bf16, only where the CPU reports BF16 support
    compile-freezing      torch.compile of the reference model under inductor's freezing=True
    compile-freezing-cpp  the same with cpp_wrapper=True

Each runs in the precisions of :data:`PRECISIONS`: fp32, and bf16 where the tool has it (OpenVINO's
bf16 inference precision; inductor's compile of the model under bf16 ``torch.autocast``, as the
fused and reference paths run it). ONNX Runtime's CPU provider has no bf16 convolution.

(the ``[peers]`` extra: ``pip install -e ".[peers]"``). :func:`forward` returns the peer's
``forward(x, t) -> eps``; each workload checks it against the reference output within
:func:`tolerance` before timing it, and :func:`unavailable` says why a peer cannot run here.
Also here: the forward's FLOPs (torch's FlopCounterMode) and the machine's measured sgemm peak,
for the GFLOP/s of every U-Net forward row.
"""

import atexit
import copy
import importlib.util
import os
import shutil
import tempfile
import time
import warnings

import torch

PEERS = ("onnxruntime", "openvino", "openvino-bf16", "compile-freezing", "compile-freezing-cpp")
# The precisions each peer runs in: a bf16 group of the suite times openvino-bf16 and the
# compile peers under bf16 autocast; an fp32 group the rest.
PRECISIONS = {
    "onnxruntime": ("fp32",),
    "openvino": ("fp32",),
    "openvino-bf16": ("bf16",),
    "compile-freezing": ("fp32", "bf16"),
    "compile-freezing-cpp": ("fp32", "bf16"),
}
# The packages each peer needs; the ONNX exporter of torch.onnx.export(dynamo=True) needs onnx and
# onnxscript.
PACKAGES = {
    "onnxruntime": ("onnxruntime", "onnx", "onnxscript"),
    "openvino": ("openvino", "onnx", "onnxscript"),
    "openvino-bf16": ("openvino", "onnx", "onnxscript"),
    "compile-freezing": (),
    "compile-freezing-cpp": (),
}
# assert_close bounds against the reference output. The fp32 peers reorder sums (oneDNN,
# ORT's and OpenVINO's kernels, inductor's fusions): at most ~2e-6 apart on the seed U-Net's
# forward here, so 1e-4 leaves room for other kernels. bf16 keeps 8 bits of mantissa (a
# relative 4e-3 per rounding) through about 40 layers.
FP32_TOLERANCE = dict(atol=1e-4, rtol=1e-4)
BF16_TOLERANCE = dict(atol=1e-1, rtol=1e-1)
# A loop feeds each step's output to the next: errors grow a little with the steps.
LOOP_TOLERANCE = dict(atol=1e-3, rtol=1e-3)

_EXPORT = {}  # the one ONNX export of the process: its path
_CACHE = {}  # sessions and compiled models, built once per process


def tolerance(impl, loop=False, precision="fp32"):
    """assert_close keyword arguments for ``impl`` in ``precision`` against the fp32 reference."""
    if precision == "bf16" or impl.endswith("bf16"):
        return BF16_TOLERANCE
    return LOOP_TOLERANCE if loop else FP32_TOLERANCE


def unavailable(impl, device=torch.device("cpu")):
    """Why peer ``impl`` cannot run here (a missing package, a CPU without bf16), or None."""
    if torch.device(device).type != "cpu":
        return f"{impl} is a CPU peer"
    for package in PACKAGES[impl]:
        if importlib.util.find_spec(package) is None:
            return f"{impl} needs the '{package}' package: pip install -e \".[peers]\""
    if impl.startswith("openvino") and os.environ.get("ONEDNN_MAX_CPU_ISA"):
        # OpenVINO's CPU plugin picks its kernels by the processor, but its bundled oneDNN reads
        # this cap: with ONEDNN_MAX_CPU_ISA=AVX2 on an AVX-512 Zen 4 it died with SIGSEGV,
        # taking the whole suite with it.
        return (f"{impl} is not run with ONEDNN_MAX_CPU_ISA set (it is "
                f"{os.environ['ONEDNN_MAX_CPU_ISA']}): OpenVINO's CPU plugin crashes under a capped oneDNN")
    if impl == "openvino-bf16":
        capabilities = _openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        if "BF16" not in capabilities:
            return f"this CPU has no bf16 support in OpenVINO (OPTIMIZATION_CAPABILITIES: {', '.join(capabilities)})"
    return None


def _seed_weights(model):
    """Every peer is built once per process from the first model it is given (each workload
    builds the same seeded U-Net); a model with other weights raises."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if "seed-state" not in _CACHE:
        _CACHE["seed-state"] = state
        return
    first = _CACHE["seed-state"]
    if state.keys() != first.keys() or not all(torch.equal(v, first[k]) for k, v in state.items()):
        raise ValueError("the peers are built once per process from the seed U-Net; this model has other weights")


def onnx_path(model):
    """The seed U-Net's forward as an ONNX file with a dynamic batch, exported once per process
    to a temporary directory (removed at exit)."""
    _seed_weights(model)
    if _EXPORT:
        return _EXPORT["path"]
    directory = tempfile.mkdtemp(prefix="ddpm_fast-peers-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    path = os.path.join(directory, "unet.onnx")
    x = torch.randn(2, 1, 28, 28)
    t = torch.randint(0, 200, (2,))
    batch = torch.export.Dim("batch", min=1, max=4096)
    model = copy.deepcopy(model).cpu().eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x, t), path, dynamo=True, dynamic_shapes=({0: batch}, {0: batch}),
                          input_names=["x", "time"], output_names=["eps"], verbose=False)
    _EXPORT["path"] = path
    return path


def _openvino_core():
    if "openvino-core" not in _CACHE:
        import openvino

        _CACHE["openvino-core"] = openvino.Core()
    return _CACHE["openvino-core"]


def _onnxruntime_forward(model):
    if "onnxruntime" not in _CACHE:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = torch.get_num_threads()
        _CACHE["onnxruntime"] = onnxruntime.InferenceSession(onnx_path(model), options,
                                                             providers=["CPUExecutionProvider"])
    session = _CACHE["onnxruntime"]
    names = [i.name for i in session.get_inputs()]

    def forward(x, t):
        return torch.from_numpy(session.run(None, {names[0]: x.numpy(), names[1]: t.numpy()})[0])

    return forward


def _openvino_forward(model, batch, precision):
    """OpenVINO's compiled model: one synchronous request at batch 1 (LATENCY); at larger
    batches THROUGHPUT, whose streams each take one request: the batch is split across the
    compiled model's optimal number of requests, run at once, and gathered."""
    import openvino

    hint = "LATENCY" if batch == 1 else "THROUGHPUT"
    key = ("openvino", precision, hint)
    if key not in _CACHE:
        core = _openvino_core()
        config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": hint,
                  "INFERENCE_NUM_THREADS": torch.get_num_threads()}
        _CACHE[key] = core.compile_model(core.read_model(onnx_path(model)), "CPU", config)
    compiled = _CACHE[key]
    if hint == "LATENCY":
        request = compiled.create_infer_request()

        def forward(x, t):
            request.infer({0: x.numpy(), 1: t.numpy()})
            return torch.from_numpy(request.get_output_tensor(0).data.copy())

        return forward
    parts = min(batch, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
    queue = openvino.AsyncInferQueue(compiled, parts)
    queue.set_callback(lambda request, out: out.copy_(torch.from_numpy(request.get_output_tensor(0).data)))

    def forward(x, t):
        out = torch.empty_like(x)  # eps has the images' shape
        for xs, ts, outs in zip(x.tensor_split(parts), t.tensor_split(parts), out.tensor_split(parts)):
            queue.start_async({0: xs.numpy(), 1: ts.numpy()}, userdata=outs)
        queue.wait_all()
        return out

    return forward


def in_precision(forward, precision):
    """``forward`` run under bf16 ``torch.autocast`` on the CPU for "bf16" (the mixed precision of
    ``--precision bf16``), as it is for "fp32"."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    if precision == "fp32":
        return forward

    def run(x, t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return forward(x, t)

    return run


def compiled_forward(module, mode="default", dynamic=False, **inductor):
    """torch.compile of ``module`` in ``mode``, run under no_grad, with these inductor settings at every call
    (they must hold when a call compiles, and a new shape compiles again). One graph per batch
    size (dynamic=False); several of them on one U-Net forward pass dynamo's default limit of 8,
    past which it would run eager without saying so: here the limit is higher and hitting it
    raises."""
    compiled = torch.compile(module, mode=mode, dynamic=dynamic)

    def forward(x, t):
        with torch.no_grad(), torch._inductor.config.patch(**inductor), \
                torch._dynamo.config.patch(recompile_limit=64, fail_on_recompile_limit_hit=True):
            return compiled(x, t)

    return forward


def forward(impl, model, batch, precision="fp32"):
    """Peer ``impl``'s ``forward(x, t) -> eps`` for the reference ``model`` (the seed U-Net, eval,
    on the CPU) at ``batch`` (OpenVINO picks its hint from it, compile-freezing compiles for it;
    ONNX Runtime and OpenVINO run any batch) in ``precision`` (one of ``PRECISIONS[impl]``).
    Built once per process for each (impl, batch, precision)."""
    if impl not in PEERS:
        raise ValueError(f"impl must be one of {PEERS}, got {impl!r}")
    if precision not in PRECISIONS[impl]:
        raise ValueError(f"{impl} runs in {' or '.join(PRECISIONS[impl])}, not {precision}")
    _seed_weights(model)
    if impl == "onnxruntime":
        return _onnxruntime_forward(model)
    if impl in ("openvino", "openvino-bf16"):
        return _openvino_forward(model, batch, "bf16" if impl.endswith("bf16") else "f32")
    if impl in ("compile-freezing", "compile-freezing-cpp"):
        key = (impl, batch, precision)  # one graph per batch size, shared by the forward and loop workloads
        if key not in _CACHE:
            frozen = compiled_forward(copy.deepcopy(model), freezing=True, cpp_wrapper=impl.endswith("cpp"))
            _CACHE[key] = in_precision(frozen, precision)
        return _CACHE[key]


def flops_per_image(model, image_shape=(1, 28, 28)):
    """FLOPs of one image's forward (convolutions and matmuls, as FlopCounterMode counts them)."""
    from torch.utils.flop_counter import FlopCounterMode

    key = ("flops", id(model), tuple(image_shape))
    if key not in _CACHE:
        device = next(model.parameters()).device
        x = torch.randn(1, *image_shape, device=device)
        t = torch.zeros(1, dtype=torch.long, device=device)
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(x, t)
        _CACHE[key] = counter.get_total_flops()
    return _CACHE[key]


def sgemm_peak_gflops(n=2048, repeats=5, device="cpu"):
    """The machine's measured fp32 matmul rate: the best of ``repeats`` n x n torch.mm, in GFLOP/s."""
    key = ("sgemm", n, str(device))
    if key not in _CACHE:
        a = torch.randn(n, n, device=device)
        b = torch.randn(n, n, device=device)
        torch.mm(a, b)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            if torch.device(device).type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            torch.mm(a, b)
            if torch.device(device).type == "cuda":
                torch.cuda.synchronize(device)
            best = min(best, time.perf_counter() - start)
        _CACHE[key] = 2 * n**3 / best / 1e9
    return _CACHE[key]


def sample_loop(forward, sampler, x, generator=None, fused=None):
    """A plain Python loop of ``sampler`` around ``forward(x, t) -> eps`` from noise ``x``, with
    ddpm_fast's update (the loop of GaussianDiffusion._run_sampler); returns the last x."""
    from ddpm_fast import ops

    fused = ops.compiled_ops_loaded() if fused is None else fused
    b = x.shape[0]
    step = torch.empty(b, dtype=torch.long)
    t = torch.empty(b, dtype=torch.long)
    prev_x0 = None
    with torch.no_grad():
        for k, timestep in enumerate(sampler.timesteps.tolist()):
            step.fill_(k)
            t.fill_(timestep)
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype) if sampler.uses_noise else None
            eps = forward(x, t).to(x.dtype)
            x, x0 = sampler.step(x, eps, step, prev_x0, noise, fused=fused)
            prev_x0 = x0 if sampler.uses_prev_x0 else None
    return x
