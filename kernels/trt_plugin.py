"""TensorRT plugins for the Triton attention kernels: `register_plugins()` registers them
as TensorRT quickly deployable plugins (`tensorrt.plugin`, TRT >= 10.8) with a JIT `impl`
(Python callback running the PyTorch launcher) and, for the fp16/bf16 kernel, an
`aot_impl` (kernels/plugin_aot.py) so the engine runs without Python. The ONNX nodes that
select them come from kernels/plugin_onnx.py. TensorRT is imported only here; without it
this raises `TensorRTUnavailableError`.
"""

from __future__ import annotations

from cinema_trt.models.backends import TENSORRT, backend_of_module, sm_of
from cinema_trt.models.dtypes import lookup

from .plugin_aot import AotAttentionSpec, compile_attention, int_arg_values
from .plugin_onnx import ATTENTION_INT8_PLUGIN, ATTENTION_PLUGIN, PLUGIN_NAMESPACE, PLUGIN_VERSION
from .tuning import PLUGIN_TACTICS


class TensorRTUnavailableError(ImportError):
    """TensorRT (with `tensorrt.plugin`) is not installed or too old for these plugins."""


def check_plugin_support(module: str, version: str) -> None:
    """Raise TensorRTUnavailableError unless `module` (a TensorRT flavour) at `version`
    has the ahead-of-time Python plugins these kernels register through
    (models/backends.py `Backend.plugins_since`)."""
    from packaging.version import Version

    minimum = backend_of_module(module).plugins_since
    if not minimum:
        raise TensorRTUnavailableError(
            f"{module} {version} has no Python plugins (no {module}.plugin), so the Triton "
            f"attention plugins cannot be registered; export the DiT without "
            f"--attention-plugin (this builder fuses attention into its own MHA kernels)")
    if Version(version) < Version(minimum):
        raise TensorRTUnavailableError(f"TensorRT {version} is too old for ahead-of-time "
                                       f"Python plugins; need >= {minimum}")


def _import_tensorrt(module: str = TENSORRT.module):
    import importlib

    try:
        trt = importlib.import_module(module)
    except ImportError as exc:
        raise TensorRTUnavailableError(
            f"the Triton attention plugins need TensorRT >= {TENSORRT.plugins_since} with its "
            f"`tensorrt.plugin` module; install it with `pip install 'cinema-trt[gpu]'` on a "
            f"CUDA machine ({exc})") from exc
    check_plugin_support(module, trt.__version__)
    try:
        trtp = importlib.import_module(f"{module}.plugin")
    except ImportError as exc:
        raise TensorRTUnavailableError(f"{module} {trt.__version__} lacks its plugin module "
                                       f"({exc}); reinstall `pip install 'cinema-trt[gpu]'`"
                                       ) from exc
    return trt, trtp


def plugin_fingerprint() -> str:
    """sha256 of what a plugin engine bakes in at build time: the kernel sources, this
    module, the tactics and the Triton version. An engine cache keyed on the ONNX file alone
    would keep serving a stale kernel after any of them changed."""
    import hashlib
    from importlib import metadata
    from pathlib import Path

    digest = hashlib.sha256(f"{PLUGIN_VERSION}|triton {metadata.version('triton')}".encode())
    here = Path(__file__).parent
    for name in ("_common.py", "fused_attention.py", "int8_attention.py", "tuning.py",
                 "plugin_aot.py", "plugin_onnx.py", "trt_plugin.py"):
        digest.update((here / name).read_bytes())
    return digest.hexdigest()


_registered: set[str] = set()  # TensorRT modules the plugins are registered with


def register_plugins(module: str = TENSORRT.module) -> None:
    """Register `cinema::triton_attention` and `cinema::triton_attention_int8` (idempotent)
    with TensorRT module `module`.

    Call before parsing an ONNX file from `onnx_translation_table` or deserialising an
    engine that uses the JIT (non-AOT) plugin.
    """
    if module in _registered:
        return
    _, trtp = _import_tensorrt(module)
    _register_attention(trtp)
    _register_attention_int8(trtp)
    _registered.add(module)


def _torch_views(*tensors):
    """TensorRT plugin tensors -> zero-copy CUDA torch tensors."""
    import torch

    return [torch.as_tensor(t, device="cuda") for t in tensors]


def _current_arch() -> int:
    import torch

    return sm_of(torch.cuda.get_device_capability())


def _register_attention(trtp) -> None:
    plugin_id = f"{PLUGIN_NAMESPACE}::{ATTENTION_PLUGIN}"

    @trtp.register(plugin_id)
    def describe(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc,
                 kv_lens: trtp.TensorDesc, scale: float) -> trtp.TensorDesc:
        return q.like()

    @trtp.autotune(plugin_id)
    def autotune(q, k, v, kv_lens, outputs):
        combo = trtp.AutoTuneCombination()
        combo.pos([0, 1, 2, 4], "FP16|BF16")  # q, k, v and the output share one type
        combo.pos(3, "INT32")
        combo.tactics(sorted(PLUGIN_TACTICS))  # TensorRT times each config at build time
        return [combo]

    @trtp.impl(plugin_id)
    def run(q, k, v, kv_lens, scale: float, outputs, stream: int, tactic: int) -> None:
        import torch

        from .fused_attention import launch_attention
        from .reference import QKPrologue

        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            tq, tk, tv, lens, out = _torch_views(q, k, v, kv_lens, outputs[0])
            launch_attention(tq, tk, tv, out, lens, QKPrologue(), scale)

    @trtp.aot_impl(plugin_id)
    def compile_aot(q, k, v, kv_lens, scale: float, outputs, tactic: int):
        batch, heads, n_q, head_dim = q.shape_expr
        if not head_dim.is_constant:
            raise ValueError("the AOT attention kernel is specialised on head_dim; give the "
                             "ONNX input a static last dimension")
        spec = AotAttentionSpec(dtype=lookup(q.dtype).name, head_dim=head_dim.constant_value(),
                                scale=scale, config=PLUGIN_TACTICS[tactic], arch=_current_arch())
        compiled = compile_attention(spec)
        values = int_arg_values(batch, heads, n_q, k.shape_expr[2], spec.head_dim)
        extra_args = trtp.SymIntExprs.from_tuple(
            [trtp.SymInt32(values[name]) for name in compiled.int_args])
        launch = trtp.KernelLaunchParams()
        launch.grid_x = trtp.cdiv(n_q, spec.config.block_m)
        launch.grid_y = batch * heads
        launch.block_x = compiled.num_warps * 32
        launch.shared_mem = compiled.shared_bytes
        return compiled.name.encode(), compiled.ptx.encode(), launch, extra_args


def _register_attention_int8(trtp) -> None:
    plugin_id = f"{PLUGIN_NAMESPACE}::{ATTENTION_INT8_PLUGIN}"

    @trtp.register(plugin_id)
    def describe(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc,
                 kv_lens: trtp.TensorDesc, scale: float, q_block: int, k_block: int,
                 smooth_k: int) -> trtp.TensorDesc:
        return q.like()

    @trtp.autotune(plugin_id)
    def autotune(q, k, v, kv_lens, outputs):
        combo = trtp.AutoTuneCombination()
        combo.pos([0, 1, 2, 4], "FP16|BF16")
        combo.pos(3, "INT32")
        return [combo]

    @trtp.impl(plugin_id)
    def run(q, k, v, kv_lens, scale: float, q_block: int, k_block: int, smooth_k: int,
            outputs, stream: int) -> None:
        import torch

        from .int8_attention import launch_attention_int8

        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            tq, tk, tv, lens, out = _torch_views(q, k, v, kv_lens, outputs[0])
            launch_attention_int8(tq, tk, tv, out, lens, scale, q_block, k_block, bool(smooth_k))
