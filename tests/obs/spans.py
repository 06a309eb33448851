"""Finished spans as plain dicts, and an exporter appending them to a JSON-lines file.

The file exporter writes (and flushes) each span as it ends, so a process
killed with SIGKILL leaves every span it finished.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)


def as_dict(span: ReadableSpan) -> dict[str, Any]:
    """The parts of a span the tests look at; ids as hex strings."""
    return {
        "name": span.name,
        "trace_id": f"{span.context.trace_id:032x}",
        "span_id": f"{span.context.span_id:016x}",
        "parent_id": f"{span.parent.span_id:016x}" if span.parent is not None else None,
        "attributes": dict(span.attributes or {}),
        "status": span.status.status_code.name,
        "description": span.status.description,
        "events": [{"name": e.name, **dict(e.attributes or {})} for e in span.events],
        "start": span.start_time / 1e9,
        "end": span.end_time / 1e9,
    }


class JsonLinesExporter(SpanExporter):
    """Appends each exported span to ``path`` as one JSON line."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self.path.open("a") as f:
            for span in spans:
                f.write(json.dumps(as_dict(span)) + "\n")
                f.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def file_provider(path: str | Path) -> TracerProvider:
    """A tracer provider exporting every span, as it ends, to ``path``."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(path)))
    return provider


def read(path: str | Path) -> list[dict[str, Any]]:
    """The spans a :class:`JsonLinesExporter` wrote (a torn last line is dropped)."""
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
