"""The column-wise projector's audit payload is json.dumps's, byte for byte."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memstream.projector.columnar import add_payload

VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.text(),
    st.text(alphabet="0123456789abcdefABCDEF:.+-_ TZ"),
    st.sampled_from(["2026-12-03", "2026-12-03T06:00:00+00:00", "e3b0c442" * 8, ""]),
)


@given(VALUES, VALUES, VALUES)
def test_add_payload_is_json_dumps(expiration: Any, immutable: Any, digest: Any) -> None:
    want = json.dumps({"expiration_date": expiration, "immutable": immutable, "hash": digest})
    assert add_payload(expiration, immutable, digest) == want


def test_the_common_case_takes_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not vacuous: a typical add's values are formatted without the encoder."""
    from memstream.projector import columnar

    digest = "e3b0c442" * 8
    want = json.dumps({"expiration_date": "2027-01-01", "immutable": False, "hash": digest})
    monkeypatch.setattr(columnar.json, "dumps", None)  # any call to the encoder fails
    assert add_payload("2027-01-01", False, digest) == want
    assert add_payload(None, True, digest) == (
        '{"expiration_date": null, "immutable": true, "hash": "' + digest + '"}'
    )
