"""How the VAE decoder runs, chosen on the command line where it matters: `generate` (the
in-process decode), `build` (the decoder engine's profile is one call's shape) and `repo`
(the served orchestrator's config). One flag set, parsed into `models.presets.Decoding`,
which each command applies over its config's `sampler.decode_chunk` / `decode_tiles`."""

from __future__ import annotations

import argparse

from cinema_trt.models.presets import Decoding, Tiling


def add_decoding(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "decoding", "how the VAE decoder runs (default: the config's sampler, one latent "
                    "frame per call over whole frames); an engine's decoder profile is one "
                    "call's shape, so build, repository and generate must agree")
    group.add_argument("--decode-chunk", type=int, metavar="N",
                       help="latent frames per decoder call (each gives 4 video frames); "
                            "exact at any N, activations grow with it")
    group.add_argument("--decode-tile", type=int, metavar="N",
                       help="decode spatial tiles of N x N latent pixels (8N pixels), seams "
                            "blended (approximate: models/vae_tiles.py); 0: whole frames")
    group.add_argument("--decode-overlap", type=int, metavar="N",
                       help=f"latent pixels neighbouring tiles share (default "
                            f"{Tiling.overlap}); needs --decode-tile")


def decoding(args: argparse.Namespace) -> Decoding:
    """The flags as a `Decoding` (a bad value fails here, naming the flag's field)."""
    return Decoding(chunk=args.decode_chunk, tile=args.decode_tile,
                    overlap=args.decode_overlap)
