"""Building enriched output rows, pure: the event's fields, joined lookup fields (null when absent),
the groups' features, then computed columns in spec order (docs/product.md)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.config.expressions import Expression
from app.config.spec import OutputSpec, Pipeline
from app.records.decode import BadRecord

#: What an event's outputs read, gathered at the keys it visits: ``group_part(g)`` -> the group's
#: features at the event's time, ``join_part(lookup, on)`` -> the lookup's row; None or absent: nulls.
Parts = Mapping[str, Mapping[str, Any] | None]


def group_part(group: str) -> str:
    """The name of a group's features in :data:`Parts`."""
    return f"g:{group}"


def join_part(lookup: str, on: str) -> str:
    """The name of a lookup's row joined on stream field ``on`` in :data:`Parts`."""
    return f"l:{lookup}:{on}"


class OutputBuilder:
    """Everything needed to turn one decoded event and its :data:`Parts` into the row of one output."""

    def __init__(self, name: str, output: OutputSpec, pipeline: Pipeline) -> None:
        self.name = name
        self.topic = output.topic
        key = pipeline.streams[output.from_].key
        # (part name, ((lookup field, output column), ...)) per join
        self.joins = [
            (
                join_part(j.lookup, j.on or key),
                tuple((column, j.prefix + column) for column in pipeline.lookups[j.lookup].fields),
            )
            for j in output.join
        ]
        # (part name, {feature: None}) per group: its columns when the event did not reach it
        self.groups = [
            (group_part(g), dict.fromkeys(pipeline.features[g].feature_names())) for g in output.features
        ]
        self.computed = [(column, Expression(source)) for column, source in output.computed.items()]

    def build(self, fields: Mapping[str, Any], parts: Parts) -> dict[str, Any]:
        """The output row; BadRecord('expression') when a computed column fails."""
        row = dict(fields)
        get = parts.get
        for part, columns in self.joins:
            found = get(part)
            if found is None:
                for _, name in columns:
                    row[name] = None
            else:
                for column, name in columns:
                    row[name] = found.get(column)
        for part, nulls in self.groups:
            row.update(get(part) or nulls)
        for column, expression in self.computed:
            try:
                row[column] = expression.evaluate(row)
            except Exception as exc:  # any failure of user code: the event goes to the dead letters
                raise BadRecord(
                    "expression",
                    f"computed column {column!r} = {expression.source!r}: {type(exc).__name__}: {exc}",
                ) from None
        return row


def output_builders(pipeline: Pipeline, stream: str) -> list[OutputBuilder]:
    """The builders of every output fed by ``stream``, in spec order."""
    return [
        OutputBuilder(name, out, pipeline) for name, out in pipeline.outputs.items() if out.from_ == stream
    ]
