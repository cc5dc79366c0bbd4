"""Bounded fuzzing of the stream v1 decoder (Hypothesis, a few hundred cases, well under 30 s on 2 cores).

Valid series are mutated (``tests/stream_fuzz.py``: bit flips, truncation, block
lengths and header fields set huge, garbage and wrong-typed JSON, parts and messages
dropped, duplicated or inserted); decoding must never raise or crash, and every input
either decodes to the right frame or comes back as a typed ``StreamError`` /
``CodecError``. The long campaign is ``bench/fuzz_stream.py``.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from stream_fuzz import Case, case_strategy, check_case

CI = settings(max_examples=300, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])


@CI
@given(case_strategy())
def test_mutated_series_decode_or_come_back_as_typed_errors(case: Case):
    check_case(case)


@settings(CI, max_examples=100)
@given(case_strategy(max_mutations=0))
def test_unmutated_series_decode_exactly(case: Case):
    check_case(case)
