"""Each command's defaults are its options dataclass's: flags left out give exactly the
dataclass built with only the required fields (a default changed in one place only)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cinema_trt.cli.main import build_parser
from cinema_trt.cli.options import from_args


def _parse(*argv: str):
    return build_parser().parse_args(list(argv))


def test_export_defaults():
    from cinema_trt.cli.export import ExportOptions

    args = _parse("export", "--out", "o")
    assert from_args(ExportOptions, args) == ExportOptions(out=Path("o"))


def test_generate_defaults():
    from cinema_trt.cli.generate import GenerateOptions

    args = _parse("generate", "--prompt", "p", "--ref", "a.png", "-o", "v.mp4")
    assert from_args(GenerateOptions, args, refs=tuple(args.refs)) == GenerateOptions(
        prompt="p", refs=(Path("a.png"),), output=Path("v.mp4"))


def test_demo_defaults():
    from cinema_trt.serving.demo import DemoOptions

    assert from_args(DemoOptions, _parse("demo")) == DemoOptions()


def test_repo_defaults_and_max_concurrency_defined_once():
    from cinema_trt.serving import protocol
    from cinema_trt.serving.repo import RepositoryOptions

    args = _parse("repo", "-o", "r")
    assert from_args(RepositoryOptions, args) == RepositoryOptions()
    assert RepositoryOptions().max_concurrency == protocol.MAX_CONCURRENCY
    assert from_args(RepositoryOptions, _parse("repo", "-o", "r", "--max-concurrency", "5"),
                     ).max_concurrency == 5


def test_a_derived_value_overrides_the_flag_of_the_same_name():
    from cinema_trt.cli.export import ExportOptions

    args = _parse("export", "--out", "o", "--quiet")
    assert from_args(ExportOptions, args, progress=not args.quiet).progress is False
    with pytest.raises(TypeError):  # a required field without a flag is not invented
        from_args(ExportOptions, _parse("demo"))


def test_bench_defaults():
    from cinema_trt.benchmarks.config import BenchConfig

    assert from_args(BenchConfig, _parse("bench")) == BenchConfig()


def test_serve_defaults_and_one_startup_timeout_for_serve_and_demo():
    from cinema_trt.serving.demo import DemoOptions
    from cinema_trt.serving.server import ServerConfig

    assert from_args(ServerConfig, _parse("serve", "--repository", "r")) == ServerConfig(
        repository=Path("r"))
    assert DemoOptions().startup_timeout == ServerConfig(Path("r")).startup_timeout
    flags = ("--startup-timeout", "60")
    assert from_args(ServerConfig, _parse("serve", "--repository", "r", *flags)
                     ).startup_timeout == 60
    assert from_args(DemoOptions, _parse("demo", *flags)).startup_timeout == 60
