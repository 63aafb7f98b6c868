from __future__ import annotations

import logging

import pytest

from service.http.access_log import RedactSecretsFilter, redact_query


@pytest.mark.parametrize(
    ("path", "logged"),
    [
        ("/predict?api_key=abc&detect=true", "/predict?api_key=***&detect=true"),
        ("/x?token=1&apikey=2&Key=3&x=4", "/x?token=***&apikey=***&Key=***&x=4"),
        ("/x?access_token=a%20b&password=&secret=s", "/x?access_token=***&password=***&secret=***"),
        ("/x?api%5Fkey=zz", "/x?api%5Fkey=***"),
        (
            "/insight/top-patches?layer=layer1&channel=7",
            "/insight/top-patches?layer=layer1&channel=7",
        ),
        ("/healthz", "/healthz"),
    ],
)
def test_key_like_query_values_are_redacted(path, logged):
    assert redact_query(path) == logged


def test_the_filter_rewrites_uvicorn_s_access_record():
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", "/model?api_key=hunter2", "1.1", 401),
        None,
    )

    assert RedactSecretsFilter().filter(record)
    assert "hunter2" not in record.getMessage()
    assert "/model?api_key=***" in record.getMessage()
