"""The fp16/bf16 attention kernel compiled ahead of time for a TensorRT plugin: `_attn_fwd`
specialised and compiled to PTX without a GPU, the PTX made to take exactly the arguments
TensorRT passes, and the int32 runtime arguments for a launch.

The INT8 path has no AOT kernel: it is three launches (quantize Q, quantize K, attend) and
an AOT plugin returns one kernel, so its plugin runs through the Python `impl`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from cinema_trt.models.dtypes import lookup

from .reference import LOG2E
from .tuning import KernelConfig, interpreting

AOT_DTYPES = ("float16", "bfloat16")  # what the plugin's q, k, v and output may be


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
