"""The served memory plan's arithmetic (serving/served_memory.py) on numbers worked out by
hand: what each Triton model process holds, what the shared layout saves, and what a card
leaves a weight-streamed engine."""

import pytest

from cinema_trt.serving.served_memory import (
    GIB,
    PER_STAGE,
    SHARED,
    Assumptions,
    EngineFigures,
    ServedPlan,
    budget_on,
    choose,
    fits_table,
    parse_size,
    served_peak,
    streamed_bytes,
)

CONTEXT = Assumptions(cuda_context=5)


def _plan(streamed=None, rank=()):
    return ServedPlan("p", {
        "mllm": {"vision": EngineFigures(10, 7, io=1), "text": EngineFigures(20, 3, io=1)},
        "dit": {"dit": EngineFigures(100, 30, persistent=2, io=4, block_weights=10)},
        "decoder": {"step": EngineFigures(1, 40, io=2, state=6)},
    }, streamed=streamed, rank=rank)


def test_per_stage_is_a_process_per_stage_model_with_its_own_region_and_context():
    """The bug it catches: planning the served deployment as if its stages shared one
    activation region (the in-process pipeline's figure)."""
    peak = served_peak(_plan(), PER_STAGE, CONTEXT)
    # mllm: its two engines share the process's region (the larger, 7)
    assert peak.parts == {"weights": 10 + 20 + 100 + 2 + 1, "activations": 7 + 30 + 40,
                          "I/O": 2 + 4 + 2, "chunk state": 2 * 6, "CUDA contexts": 3 * 5}
    assert peak.processes == 3
    assert peak.peak == sum(peak.parts.values()) == 133 + 77 + 8 + 12 + 15


def test_shared_layout_keeps_one_activation_region_and_one_context():
    peak = served_peak(_plan(), SHARED, CONTEXT)
    assert peak.parts == {"weights": 133, "activations": 40, "I/O": 8, "chunk state": 12,
                          "CUDA contexts": 5}
    assert peak.processes == 1


def test_chunk_state_counts_twice_as_the_steps_input_and_output():
    """The bug it catches: the carried state counted once (or not at all), though the step
    graph reads one copy while writing the next."""
    without = served_peak(ServedPlan("a", {"d": {"s": EngineFigures(1, 1)}}), SHARED, CONTEXT)
    with_state = served_peak(ServedPlan("a", {"d": {"s": EngineFigures(1, 1, state=9)}}),
                             SHARED, CONTEXT)
    assert with_state.peak - without.peak == 18


def test_instances_multiply_every_process():
    one = served_peak(_plan(), PER_STAGE, CONTEXT)
    two = served_peak(_plan(), PER_STAGE, Assumptions(cuda_context=5, instances=2))
    assert two.peak == 2 * one.peak and two.processes == 6


def test_a_streamed_engine_plans_its_minimum_and_a_card_gives_it_the_rest():
    peak = served_peak(_plan(streamed="dit"), SHARED, CONTEXT)
    # two blocks of 10 resident instead of 100
    assert (peak.min_resident, peak.streamable) == (20, 100)
    assert peak.peak == served_peak(_plan(), SHARED, CONTEXT).peak - 80
    rest = peak.peak - 20
    assert budget_on(peak, rest + 19) is None
    assert budget_on(peak, rest + 20) == 20
    assert budget_on(peak, rest + 55) == 55 and streamed_bytes(peak, 55) == 45
    assert budget_on(peak, rest + 500) == 100 and streamed_bytes(peak, 100) == 0


def test_a_card_fits_up_to_its_last_byte():
    peak = served_peak(_plan(), SHARED, CONTEXT)
    assert budget_on(peak, peak.peak) == 0
    assert budget_on(peak, peak.peak - 1) is None


def test_choose_takes_the_preferred_plan_that_fits_not_the_smallest():
    big = served_peak(_plan(rank=(0,)), SHARED, CONTEXT)
    small = served_peak(ServedPlan("small", {"d": {"s": EngineFigures(1, 1)}}, rank=(1,)),
                        SHARED, CONTEXT)
    assert choose([small, big], big.peak).plan == "p"
    assert choose([small, big], big.peak - 1).plan == "small"
    assert choose([small, big], 1) is None


def test_a_streamed_graph_must_be_one_of_the_plans():
    with pytest.raises(ValueError, match="'nope' is not among"):
        _plan(streamed="nope")


@pytest.mark.parametrize("text, expected", [("24GiB", 24 * GIB), ("1.5 GiB", 3 * GIB // 2),
                                            ("512MiB", 512 * 2**20), ("16g", 16 * GIB)])
def test_sizes_parse_in_binary_units(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["24", "GiB", "-1GiB", "0GiB", "24 TB"])
def test_sizes_without_a_positive_number_and_unit_are_refused(text):
    with pytest.raises(ValueError, match="e.g. 24GiB"):
        parse_size(text)


def test_table_says_which_card_fits_and_what_a_streamed_plan_streams():
    peak = served_peak(ServedPlan("s", {"d": {"dit": EngineFigures(
        10 * GIB, GIB, block_weights=GIB)}}, streamed="dit"), SHARED, Assumptions(0))
    # resident 2 + activation 1 = 3 GiB at least; a 10 GiB card streams 10 - 9 = 1 GiB
    rows = fits_table([peak], cards_gib=(2, 10, 16))
    assert rows[-1] == "| s | shared | 3.0 | no | fits, streams 1.0 | fits |"
