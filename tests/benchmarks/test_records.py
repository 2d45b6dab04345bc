"""Every committed record names what it measured the same way: the block that
`machine.Provenance.block()` writes (when, how long, which commit, which machine, which
library versions). The soak once said `git_commit` and the memory plan `git` while the
latency and fidelity records said `source`, so no one tool could read them all."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cinema_trt.benchmarks.machine import PROVENANCE_KEYS, Provenance

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
RECORDS = sorted(RESULTS.glob("*.json"))


def test_the_block_has_exactly_the_provenance_keys():
    block = Provenance.start().block()
    assert tuple(block) == PROVENANCE_KEYS
    assert re.fullmatch(r"[0-9a-f]{40}", block["source"]["commit"])  # run in a checkout
    assert block["machine"]["cores"] >= 1 and block["versions"]["torch"]


@pytest.mark.parametrize("path", RECORDS, ids=[p.name for p in RECORDS])
def test_every_committed_record_carries_the_same_provenance_block(path):
    record = json.loads(path.read_text())
    assert set(PROVENANCE_KEYS) <= set(record)
    assert not {"git", "git_commit", "commit", "created", "device"} & set(record)
    assert re.fullmatch(r"[0-9a-f]{40}", record["source"]["commit"])
    assert isinstance(record["source"]["dirty"], bool)
    assert record["machine"]["cpu"] and record["machine"]["cores"] >= 1
    assert record["versions"]["torch"]


def test_there_are_records_to_check():
    assert len(RECORDS) >= 4
