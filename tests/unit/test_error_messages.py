from __future__ import annotations

import io

from PIL import UnidentifiedImageError

from service.errors import describe_validation_errors, exception_text


def test_exception_text_drops_object_reprs():
    error = UnidentifiedImageError(f"cannot identify image file {io.BytesIO()!r}")

    assert exception_text(error) == "cannot identify image file"


def test_exception_text_of_a_bare_repr_names_the_error_type():
    assert exception_text(ValueError(f"{object()!r}")) == "ValueError"


def test_validation_problems_are_said_once_without_pydantic_prefixes():
    errors = [
        {
            "loc": ("query", "window"),
            "msg": "Input should be greater than or equal to 4",
            "input": "-1",
        },
        {"loc": ("query", "window"), "msg": "Input should be greater than or equal to 4"},
        {"loc": ("query", "target"), "msg": "Value error, 'x' is not a class id"},
        {"loc": (), "msg": "Field required"},
    ]

    assert describe_validation_errors(errors) == (
        "query.window: Input should be greater than or equal to 4; "
        "query.target: 'x' is not a class id; Field required"
    )
