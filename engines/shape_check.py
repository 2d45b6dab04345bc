"""Input checks a runner does before calling an engine, against its manifest's profiles.

TensorRT rejects an out-of-profile shape with a terse log line; this check names the
tensor, the dim, the allowed range and the profile key to widen.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from cinema_trt.export.manifest import Manifest
from cinema_trt.models.presets import CinemaConfig, Decoding

from .manifest import built, decoding_flags, with_decoding

if TYPE_CHECKING:
    from cinema_trt.models.stage import Graph

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


def check_serves(manifest: Manifest, graph: Graph, config: CinemaConfig) -> None:
    """Raise ValueError unless the engine takes `graph`'s calls under `config`'s decoding
    (sampler.decode_chunk, decode_tiles: the decoder's calls are one chunk of one tile),
    for `config`'s request (its sampler's frames and size), when that decoding is not the
    one the engine was built for (its manifest's config): what a repository checks before
    it serves an engine, naming both decodings and the two fixes. An engine called as it
    was built is left to its profile (the runner checks each call: `check_input_shapes`)."""
    from .shapes import default_shapes, request_at

    request = request_at(default_shapes(config), config, "max")
    engine = Decoding.of(CinemaConfig.from_dict(manifest.config).sampler)
    wanted = Decoding.of(config.sampler)
    shapes = graph.shapes(request, config)
    if wanted == engine or shapes == graph.shapes(request, engine.apply(config)):
        return  # called as it was built to be called
    try:
        check_input_shapes(manifest, shapes)
    except ValueError as error:
        s = config.sampler
        raise ValueError(
            f"{error}\nThe {graph.name} engine was built for decoding "
            f"{' '.join(decoding_flags(engine))}; this deployment ({s.frames} frames "
            f"{s.height}x{s.width}) decodes with {' '.join(decoding_flags(wanted))}. Serve "
            f"the engine with its own ({' '.join(decoding_flags(engine))}), or rebuild it "
            f"for this one: {with_decoding(built(manifest).rebuild_command, wanted)}"
            ) from None
