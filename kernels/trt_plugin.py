"""TensorRT plugins for the Triton attention kernels, and the ONNX nodes that select them.

Two pieces, usable separately:
- `onnx_translation_table()`: for `torch.onnx.export(..., custom_translation_table=...)`.
  It turns each `torch.ops.cinema.attention*` node into a custom ONNX node whose op type is
  the plugin name, with a `plugin_namespace` attribute — how TensorRT's ONNX parser finds
  a plugin in its registry — and `aot=1` where an ahead-of-time kernel exists. Needs
  onnxscript only, no TensorRT.
- `register_plugins()`: TensorRT quickly deployable plugins (`tensorrt.plugin`, TRT >= 10.8)
  with a JIT `impl` (Python callback running the PyTorch launcher) and, for the fp16/bf16
  kernel, an `aot_impl` that compiles the Triton kernel to PTX, so the engine runs without
  Python. TensorRT is imported only here; without it this raises `TensorRTUnavailableError`.

The INT8 path has no AOT kernel: it is three launches (quantize Q, quantize K, attend) and
an AOT plugin returns one kernel, so its plugin runs through the Python `impl`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from cinema_trt.models.dtypes import lookup

from .reference import LOG2E
from .tuning import PLUGIN_TACTICS, KernelConfig, interpreting

PLUGIN_NAMESPACE = "cinema"
ATTENTION_PLUGIN = "triton_attention"
ATTENTION_INT8_PLUGIN = "triton_attention_int8"
PLUGIN_VERSION = "1"
# TensorRT matches plugins by op type + plugin_namespace; the domain only keeps the node out
# of the default ONNX namespace (which has its own "Attention" since opset 23). "trt.plugins"
# is the domain ONNX Runtime's TensorRT provider uses for TensorRT plugins.
ONNX_DOMAIN = "trt.plugins"
# first version of each TensorRT flavour whose `<module>.plugin` has aot_impl. TensorRT-RTX
# (`tensorrt_rtx`, versions 1.x) ships no plugin module at all: its versions are never
# compared with TensorRT's (1.7 < 10.8 would misreport it as an old TensorRT)
MIN_VERSIONS = {"tensorrt": "10.8"}
MIN_TENSORRT = MIN_VERSIONS["tensorrt"]

AOT_DTYPES = ("float16", "bfloat16")  # what the plugin's q, k, v and output may be


class TensorRTUnavailableError(ImportError):
    """TensorRT (with `tensorrt.plugin`) is not installed or too old for these plugins."""


def check_plugin_support(module: str, version: str) -> None:
    """Raise TensorRTUnavailableError unless `module` (a TensorRT flavour) at `version`
    has the ahead-of-time Python plugins these kernels register through."""
    from packaging.version import Version

    minimum = MIN_VERSIONS.get(module)
    if minimum is None:
        raise TensorRTUnavailableError(
            f"{module} {version} has no Python plugins (no {module}.plugin), so the Triton "
            f"attention plugins cannot be registered; export the DiT without "
            f"--attention-plugin (this builder fuses attention into its own MHA kernels)")
    if Version(version) < Version(minimum):
        raise TensorRTUnavailableError(f"TensorRT {version} is too old for ahead-of-time "
                                       f"Python plugins; need >= {minimum}")


def _import_tensorrt(module: str = "tensorrt"):
    import importlib

    try:
        trt = importlib.import_module(module)
    except ImportError as exc:
        raise TensorRTUnavailableError(
            f"the Triton attention plugins need TensorRT >= {MIN_TENSORRT} with its "
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


# --- ONNX emission -------------------------------------------------------------------------


def _plugin_op(name: str, attributes: dict[str, str]):
    """An onnxscript op for plugin `name`: q, k, v (type T), kv_lens int32 -> out (T)."""
    import onnxscript
    from onnx.defs import OpSchema

    kinds = {"string": OpSchema.AttrType.STRING, "int": OpSchema.AttrType.INT,
             "float": OpSchema.AttrType.FLOAT}
    schema = OpSchema(
        name, ONNX_DOMAIN, 1,
        inputs=[OpSchema.FormalParameter(n, "T") for n in ("q", "k", "v")]
        + [OpSchema.FormalParameter("kv_lens", "tensor(int32)")],
        outputs=[OpSchema.FormalParameter("out", "T")],
        type_constraints=[("T", ["tensor(float16)", "tensor(bfloat16)", "tensor(float)"], "")],
        attributes=[OpSchema.Attribute(a, kinds[kind], "") for a, kind in attributes.items()])
    return onnxscript.values.Op(onnxscript.values.Opset(ONNX_DOMAIN, 1), name, schema)


def _full_lengths(k):
    """(B,) int32 of S_kv, built in-graph so it follows dynamic batch and sequence sizes."""
    from onnxscript import opset18 as op

    seq = op.Shape(k, start=2, end=3)
    batch = op.Shape(k, start=0, end=1)
    return op.Cast(op.Expand(seq, batch), to=6)  # 6: INT32


def onnx_translation_table() -> dict:
    """{custom op overload: onnxscript translation} for `torch.onnx.export`."""
    import torch

    from . import ops  # noqa: F401  registers torch.ops.cinema.*

    common = {"plugin_namespace": "string", "plugin_version": "string", "aot": "int",
              "scale": "float"}
    fp_op = _plugin_op(ATTENTION_PLUGIN, common)
    int8_op = _plugin_op(ATTENTION_INT8_PLUGIN, {**common, "q_block": "int", "k_block": "int",
                                                 "smooth_k": "int"})

    def attention(q, k, v, kv_lens, q_norm_weight, k_norm_weight, rope_cos, rope_sin,
                  scale, eps):
        if any(t is not None for t in (q_norm_weight, k_norm_weight, rope_cos, rope_sin)):
            raise ValueError("the TensorRT attention plugin has no fused RMS-norm/RoPE prologue; "
                             "apply them in the graph before exporting (QKPrologue=None)")
        lens = _full_lengths(k) if kv_lens is None else kv_lens
        return fp_op(q, k, v, lens, plugin_namespace=PLUGIN_NAMESPACE,
                     plugin_version=PLUGIN_VERSION, aot=1, scale=scale)

    def attention_int8(q, k, v, kv_lens, scale, q_block, k_block, smooth_k):
        lens = _full_lengths(k) if kv_lens is None else kv_lens
        return int8_op(q, k, v, lens, plugin_namespace=PLUGIN_NAMESPACE,
                       plugin_version=PLUGIN_VERSION, aot=0, scale=scale, q_block=q_block,
                       k_block=k_block, smooth_k=int(smooth_k))

    return {torch.ops.cinema.attention.default: attention,
            torch.ops.cinema.attention_int8.default: attention_int8}


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
                 "trt_plugin.py"):
        digest.update((here / name).read_bytes())
    return digest.hexdigest()


# --- ahead-of-time compilation ---------------------------------------------------------------


@dataclass(frozen=True)
class AotAttentionSpec:
    """What the AOT kernel is specialised on (everything else is a runtime argument)."""

    dtype: str  # "float16" or "bfloat16"
    head_dim: int
    scale: float
    config: KernelConfig
    arch: int = 90  # sm_90: Hopper


@dataclass(frozen=True)
class CompiledAttention:
    name: str  # kernel symbol in the PTX
    ptx: str
    num_warps: int
    shared_bytes: int
    int_args: tuple[str, ...]  # names of the runtime int32 arguments, in launch order


def _signature(arg_names: list[str], spec: AotAttentionSpec) -> tuple[dict, dict]:
    """Triton signature + constexprs: contiguous (B, H, S, D) I/O, kv_lens on, no prologue."""
    ty = lookup(spec.dtype).triton_lang
    constexprs = {
        "Q_NORM_W": None, "K_NORM_W": None, "COS": None, "SIN": None,
        "stride_qd": 1, "stride_kd": 1, "stride_vd": 1, "stride_od": 1,
        "stride_qwm": 0, "stride_kwm": 0, "stride_cb": 0, "stride_cm": 0,
        # TensorRT passes int32 scalars only, so floats become compile-time constants
        "qk_scale": spec.scale * LOG2E, "eps": 1e-6,
        "HEAD_DIM": spec.head_dim, "BLOCK_M": spec.config.block_m,
        "BLOCK_N": spec.config.block_n, "HAS_KV_LENS": True, "HAS_NORM": False,
        "HAS_ROPE": False, "INPUT_PRECISION": "tf32",
        # device-side TMA descriptors live in Triton's global scratch, which TensorRT does
        # not allocate: the plugin kernel keeps pointer loads
        "USE_TMA": False,
    }
    pointers = {"Q": f"*{ty}", "K": f"*{ty}", "V": f"*{ty}", "KV_LENS": "*i32", "Out": f"*{ty}"}
    signature = {name: "constexpr" if name in constexprs else pointers.get(name, "i32")
                 for name in arg_names}
    return signature, constexprs


def compile_attention(spec: AotAttentionSpec) -> CompiledAttention:
    """Compile `_attn_fwd` for `spec` to PTX. Needs no GPU (target given explicitly)."""
    if interpreting():
        raise RuntimeError("AOT compilation needs the real Triton compiler; unset "
                           "TRITON_INTERPRET (it replaces kernels with the CPU interpreter)")
    if spec.dtype not in AOT_DTYPES:
        raise ValueError(f"dtype={spec.dtype!r}: the AOT kernel supports {list(AOT_DTYPES)}")
    import triton
    from triton.backends.compiler import GPUTarget

    from .fused_attention import _attn_fwd

    kernel = _attn_fwd.fn  # the JITFunction beneath the autotuner
    signature, constexprs = _signature(kernel.arg_names, spec)
    # pointers and every non-unit stride of a (B, H, S, D) tensor with D >= 16 are multiples
    # of 16 elements: telling Triton lets it emit vectorised 128-bit loads
    aligned = [i for i, n in enumerate(kernel.arg_names)
               if signature[n].startswith("*")
               or (n.startswith("stride_") and signature[n] == "i32")]
    attrs = {(i,): [["tt.divisibility", 16]] for i in aligned}
    src = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constexprs,
                                    attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", spec.arch, 32),
                              options={"num_warps": spec.config.num_warps,
                                       "num_stages": spec.config.num_stages})
    if getattr(compiled.metadata, "global_scratch_size", 0) > 0:
        raise RuntimeError("the attention kernel needs Triton global scratch memory, which "
                           "TensorRT AOT plugins do not provide")
    int_args = tuple(n for n in kernel.arg_names if signature[n] == "i32")
    n_launch_args = sum(signature[n] != "constexpr" for n in kernel.arg_names)
    ptx = drop_unused_params(compiled.asm["ptx"], compiled.metadata.name, n_launch_args)
    return CompiledAttention(compiled.metadata.name, ptx, compiled.metadata.num_warps,
                             compiled.metadata.shared, int_args)


def drop_unused_params(ptx: str, kernel_name: str, n_params: int) -> str:
    """Remove kernel parameters past the first `n_params` from the PTX entry.

    Triton >= 3.3 appends global/profile scratch pointers to every kernel. TensorRT passes
    exactly inputs + extra args + outputs, so a launch would read two pointers past its
    argument array. The kernel never reads them when it needs no scratch (checked above),
    so their declarations are dropped; any use of a dropped parameter raises instead.
    """
    kept = []
    for line in ptx.split("\n"):
        match = re.search(rf"\b{re.escape(kernel_name)}_param_(\d+)\b", line)
        if match and line.lstrip().startswith(".param") and int(match.group(1)) >= n_params:
            if len(re.findall(rf"\b{match.group(0)}\b", ptx)) > 1:
                raise RuntimeError(f"{match.group(0)} is used by the kernel; cannot drop it")
            continue
        kept.append(line)
    last = re.escape(f"{kernel_name}_param_{n_params - 1}")
    return re.sub(rf"({last}),(\s*\))", r"\1\2", "\n".join(kept))


def int_arg_values(batch: Any, heads: Any, n_q: Any, n_kv: Any, head_dim: Any) -> dict[str, Any]:
    """Runtime int32 arguments for contiguous (B, H, S, D) tensors.

    Plain arithmetic, so it works on ints (tests) and on TensorRT shape expressions (hence
    `Any`: the two share no type).
    """
    values = {"H": heads, "N_CTX_Q": n_q, "N_CTX_KV": n_kv}
    for prefix, seq in (("q", n_q), ("k", n_kv), ("v", n_kv), ("o", n_q)):
        row = "m" if prefix in ("q", "o") else "n"
        values[f"stride_{prefix}{row}"] = head_dim
        values[f"stride_{prefix}h"] = seq * head_dim
        values[f"stride_{prefix}b"] = heads * seq * head_dim
    return values


# --- TensorRT registration -------------------------------------------------------------------

_registered: set[str] = set()  # TensorRT modules the plugins are registered with


def register_plugins(module: str = "tensorrt") -> None:
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

    major, minor = torch.cuda.get_device_capability()
    return major * 10 + minor


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
