"""Block-size configurations for the attention kernels: data plus a filter.

The same list feeds `triton.autotune` (PyTorch path) and the TensorRT plugin's tactics, so a
config tried in one place is the config shipped in the other. Nothing here imports Triton:
`import cinema_trt.kernels` must stay cheap and work without a GPU.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class KernelConfig:
    """One launch configuration of a tiled attention kernel."""

    block_m: int  # query rows per program; Q stays on-chip for the whole key loop
    block_n: int  # key/value rows per loop step
    num_warps: int
    num_stages: int  # software-pipelining depth of the K/V loads


# Hopper (H100/H200) search space. BLOCK_M=128 feeds a full wgmma tile per warpgroup;
# BLOCK_N in 32..128 trades register pressure against loop overhead.
_BLOCK_M = (64, 128)
_BLOCK_N = (32, 64, 128)
_WARPS = (4, 8)
_STAGES = (2, 3, 4)

# Usable shared memory per SM on sm_90 is 227 KiB; leave room for the compiler's scratch.
_SMEM_BUDGET = 200 * 1024

# The interpreter runs each program in Python: one small config keeps CPU tests fast and
# skips autotune benchmarking entirely (a single config is never timed).
INTERPRETER_CONFIG = KernelConfig(block_m=32, block_n=32, num_warps=4, num_stages=1)


def interpreting() -> bool:
    """True when Triton kernels run in the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def shared_memory_bytes(config: KernelConfig, head_dim: int, q_bytes: int, k_bytes: int,
                        v_bytes: int) -> int:
    """Estimated shared memory: Q once plus `num_stages` buffers of one K and one V tile."""
    q_tile = config.block_m * head_dim * q_bytes
    kv_tiles = config.num_stages * config.block_n * head_dim * (k_bytes + v_bytes)
    return q_tile + kv_tiles


def keep_config(config: KernelConfig, head_dim: int, q_bytes: int = 2, k_bytes: int = 2,
                v_bytes: int = 2) -> bool:
    """The filter: drop configs that cannot fit or that waste a Hopper warpgroup.

    - shared memory over budget (head_dim 128 with deep pipelines and BLOCK_N=128);
    - 8 warps on tiles smaller than 128x128 leave warpgroups idle (same rule as Triton's
      06-fused-attention tutorial);
    - a 128x128 fp32 score tile spills registers with only 4 warps.
    """
    if shared_memory_bytes(config, head_dim, q_bytes, k_bytes, v_bytes) > _SMEM_BUDGET:
        return False
    if config.num_warps == 8 and config.block_m * config.block_n < 128 * 128:
        return False
    if config.num_warps == 4 and config.block_m * config.block_n >= 128 * 128:
        return False
    return True


def search_space() -> list[KernelConfig]:
    """Every config autotune may try; `keep_config` prunes it per shape at launch time."""
    if interpreting():
        return [INTERPRETER_CONFIG]
    grid = itertools.product(_BLOCK_M, _BLOCK_N, _WARPS, _STAGES)
    return [KernelConfig(m, n, w, s) for m, n, w, s in grid]


def triton_configs() -> list:
    """`search_space()` as `triton.Config`s (Triton imported here, not at module import)."""
    import triton

    return [triton.Config({"BLOCK_M": c.block_m, "BLOCK_N": c.block_n},
                          num_warps=c.num_warps, num_stages=c.num_stages) for c in search_space()]


def prune_triton_configs(configs: list, head_dim: int, q_bytes: int, k_bytes: int,
                         v_bytes: int) -> list:
    """`keep_config` over `triton.Config`s; never empty (autotune needs one config)."""
    kept = [c for c in configs
            if keep_config(KernelConfig(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps,
                                        c.num_stages), head_dim, q_bytes, k_bytes, v_bytes)]
    return kept or configs[:1]


# A short list for the TensorRT plugin: TensorRT times each tactic at engine build, so a
# handful of strong Hopper configs beats the full grid (each tactic is a separate compile).
PLUGIN_TACTICS: dict[int, KernelConfig] = {
    1: KernelConfig(block_m=128, block_n=64, num_warps=4, num_stages=3),
    2: KernelConfig(block_m=128, block_n=128, num_warps=8, num_stages=2),
    3: KernelConfig(block_m=64, block_n=64, num_warps=4, num_stages=3),
}
