"""Building enriched output rows, pure: the event's fields, joined lookup fields (null when absent),
the groups' features, then computed columns in spec order (docs/product.md)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from app.config.expressions import Expression
from app.config.spec import OutputSpec, Pipeline
from app.records.decode import BadRecord

LookupFn = Callable[[str, str], Mapping[str, Any] | None]
FeaturesFn = Callable[[str, str, int], Mapping[str, Any]]


class OutputBuilder:
    """Everything needed to turn one decoded event into the row of one output."""

    def __init__(self, name: str, output: OutputSpec, pipeline: Pipeline) -> None:
        self.name = name
        self.topic = output.topic
        # (lookup, ((lookup field, output column), ...)) per join
        self.joins = [
            (j.lookup, tuple((column, j.prefix + column) for column in pipeline.lookups[j.lookup].fields))
            for j in output.join
        ]
        self.groups = tuple(output.features)
        self.computed = [(column, Expression(source)) for column, source in output.computed.items()]

    def build(
        self,
        key: str,
        event_time: int,
        fields: Mapping[str, Any],
        lookup: LookupFn,
        features: FeaturesFn | None = None,
    ) -> dict[str, Any]:
        """The output row; BadRecord('expression') when a computed column fails."""
        row = dict(fields)
        for lookup_name, columns in self.joins:
            found = lookup(lookup_name, key)
            if found is None:
                for _, name in columns:
                    row[name] = None
            else:
                for column, name in columns:
                    row[name] = found.get(column)
        if features is not None:
            for group in self.groups:
                row.update(features(group, key, event_time))
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
