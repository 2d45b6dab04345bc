"""Input checks a runner does before calling an engine, against its manifest's profiles.

TensorRT rejects an out-of-profile shape with a terse log line; this check names the
tensor, the dim, the allowed range and the profile key to widen.
"""

from __future__ import annotations

from collections.abc import Mapping

from cinema_trt.export.manifest import Manifest

from .manifest import built

# symbolic dim (models/specs.py) -> the profiles.yaml key that sets its range
PROFILE_KEY = {"batch": "batch", "seq": "seq", "frames": "frames", "lframes": "frames",
               "height": "height", "lheight": "height", "width": "width", "lwidth": "width",
               "refs": "refs", "images": "refs", "patches": "refs"}


def check_input_shapes(manifest: Manifest, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Raise ValueError unless `shapes` name exactly the engine's inputs, within its profile."""
    stage, profiles = manifest.stage, built(manifest).profiles
    missing = sorted(set(profiles) - set(shapes))
    unexpected = sorted(set(shapes) - set(profiles))
    if missing or unexpected:
        raise ValueError(f"{stage}: inputs must be {sorted(profiles)}; missing {missing}, "
                         f"unexpected {unexpected}")
    symbols: dict[str, tuple] = {e.name: e.dims for e in manifest.inputs}
    for name, shape in shapes.items():
        low, high = profiles[name]["min"], profiles[name]["max"]
        if len(shape) != len(low):
            raise ValueError(f"{stage}: input {name!r} has shape {tuple(shape)} "
                             f"({len(shape)} dims); the engine expects {len(low)} dims")
        for i, value in enumerate(shape):
            if low[i] <= value <= high[i]:
                continue
            symbol = symbols.get(name, (None,) * len(shape))[i]
            label = f"dim {i} ({symbol})" if isinstance(symbol, str) else f"dim {i}"
            key = PROFILE_KEY.get(symbol) if isinstance(symbol, str) else None
            fix = (f"widen `{key}` in profiles.yaml and rebuild: "
                   f"{built(manifest).rebuild_command}"
                   if key else "the model fixes this dim; check how the input was made")
            raise ValueError(f"{stage}: input {name!r} {label} is {value}, outside the "
                             f"engine's profile range [{low[i]}, {high[i]}]; {fix}")
