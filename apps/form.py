"""multipart/form-data bodies (already read, size-bounded) -> fields and files, via python-multipart."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header


# python-multipart also logs every malformed body it rejects ("Expected boundary character 45 ...");
# the client gets a 400 naming the problem and the request log has the line, so keep stderr quiet.
logging.getLogger("python_multipart").addHandler(logging.NullHandler())
logging.getLogger("python_multipart").propagate = False


class FormError(ValueError):
    """The body is not a well-formed multipart/form-data message."""


@dataclass
class Upload:
    filename: str
    content_type: str
    data: bytes


@dataclass
class Form:
    fields: dict[str, list[str]] = field(default_factory=dict)
    files: dict[str, Upload] = field(default_factory=dict)

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self.fields.get(name)
        return values[-1] if values else default

    def get_all(self, name: str) -> list[str]:
        return list(self.fields.get(name, []))


def boundary_of(content_type: str) -> bytes:
    """The boundary of a multipart/form-data Content-Type header, or FormError."""
    ctype, params = parse_options_header(content_type)
    if ctype != b"multipart/form-data":
        raise FormError("Content-Type must be multipart/form-data")
    boundary = params.get(b"boundary")
    if not boundary:
        raise FormError("multipart/form-data without a boundary")
    return boundary


def parse_form(body: bytes, content_type: str, max_parts: int = 64) -> Form:
    boundary = boundary_of(content_type)
    form = Form()
    parts: list[dict] = []
    state: dict = {}

    def on_part_begin() -> None:
        if len(parts) >= max_parts:
            raise FormError(f"more than {max_parts} form parts")
        state.update(headers={}, field=b"", value=b"", chunks=[])

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["field"].decode("latin-1").lower()] = state["value"].decode("latin-1")
        state["field"], state["value"] = b"", b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        state["chunks"].append(data[start:end])

    def on_part_end() -> None:
        parts.append({"headers": state["headers"], "data": b"".join(state["chunks"])})

    parser = MultipartParser(boundary, callbacks={
        "on_part_begin": on_part_begin, "on_header_field": on_header_field,
        "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_part_data": on_part_data, "on_part_end": on_part_end,
    })
    try:
        parser.write(body)
        parser.finalize()
    except FormParserError as exc:
        raise FormError(f"malformed multipart body: {exc}") from None

    for part in parts:
        disp, params = parse_options_header(part["headers"].get("content-disposition", ""))
        if disp != b"form-data" or b"name" not in params:
            raise FormError("a form part has no Content-Disposition name")
        name = params[b"name"].decode("utf-8", "replace")
        if b"filename" in params:
            form.files[name] = Upload(
                filename=params[b"filename"].decode("utf-8", "replace"),
                content_type=part["headers"].get("content-type", "application/octet-stream"),
                data=part["data"],
            )
        else:
            form.fields.setdefault(name, []).append(part["data"].decode("utf-8", "replace"))
    return form
