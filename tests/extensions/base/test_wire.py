"""The one SSE parser and error reader that every client of a streaming API uses."""

from __future__ import annotations

import json

import pytest

from oraculo.extensions.base.wire import DONE, aiter_events, iter_events, read_error

STREAM = [
    ": a comment the server sends to keep the connection open",
    "id: 7",
    "event: step",
    'data: {"a": 1}',
    "",
    'data: {"choices": [{"delta": {"content": "Hi"}}]}',
    "",
    "event: error",
    'data: {"error": {"message": "quota", "type": "rate_limit_error", "code": "no_quota"}}',
    "",
    f"data: {DONE}",
    "",
    'data: {"after": "done"}',
    "",
]


def test_events_are_named_numbered_and_end_at_done() -> None:
    events = list(iter_events(STREAM))
    assert [(e.name, e.id) for e in events] == [
        ("step", "7"),
        ("", "7"),
        ("error", "7"),
    ]  # the last id persists (SSE spec)
    assert events[0].data == {"a": 1} and not events[0].is_error
    assert events[2].is_error
    assert read_error(502, events[2].data).type == "no_quota"


async def test_the_async_parser_gives_the_same_events() -> None:
    async def lines():  # type: ignore[no-untyped-def]
        for line in STREAM:
            yield line

    got = [e async for e in aiter_events(lines())]
    assert got == list(iter_events(STREAM))


def test_a_stream_cut_without_its_blank_line_still_delivers_its_last_event() -> None:
    (event,) = iter_events(['data: {"x": 1}'])
    assert event.data == {"x": 1}


def test_multi_line_data_is_joined() -> None:
    (event,) = iter_events(['data: {"x":', "data: 2}", ""])
    assert event.data == {"x": 2}


@pytest.mark.parametrize(
    ("body", "message", "kind"),
    [
        (
            {"message": "No such run", "reason": "Not found", "type": "not_found"},
            "No such run",
            "not_found",
        ),
        (
            {
                "error": {
                    "message": "too long",
                    "type": "invalid_request_error",
                    "code": "context_length_exceeded",
                }
            },
            "too long",
            "context_length_exceeded",
        ),
        (
            {"error": {"message": "bad", "type": "invalid_request_error", "code": None}},
            "bad",
            "invalid_request_error",
        ),
        ("<html>Bad gateway</html>", "HTTP 502", "error"),
    ],
)
def test_both_envelopes_are_read(body: object, message: str, kind: str) -> None:
    content = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    err = read_error(502, content)
    assert (err.message, err.type) == (message, kind)


def test_structured_fields_are_kept_and_retry_after_read() -> None:
    body = {
        "error": {
            "message": "This model's maximum context length is 256 tokens …",
            "type": "invalid_request_error",
            "param": "input",
            "code": "context_length_exceeded",
            "context_length": 256,
            "tokens": 300,
            "index": 3,
        }
    }
    err = read_error(400, json.dumps(body).encode(), {"Retry-After": "12"})
    assert err.param == "input"
    assert err.details == {"context_length": 256, "tokens": 300, "index": 3}
    assert err.retry_after == 12
