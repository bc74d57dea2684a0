"""app/config/changes.py: what a spec change does to each feature group and aggregation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.config.changes import definitions, plan_changes, render_changes
from app.config.spec import parse_pipeline

SHOP = (Path(__file__).parents[3] / "examples" / "shop" / "pipeline.yaml").read_text()


def spec(text: str) -> dict[str, Any]:
    return definitions(parse_pipeline(text))


def test_an_unchanged_spec_changes_nothing() -> None:
    changes = plan_changes(spec(SHOP), spec(SHOP))
    assert [(g.name, g.kind, g.refused) for g in changes] == [("user", "unchanged", "")]
    assert {a.kind for a in changes[0].aggregations} == {"unchanged"}


def test_new_changed_removed_aggregations() -> None:
    v2 = (
        SHOP.replace(
            "ops: [count, sum, avg, min, max, stddev], windows: [1h, 24h]}",
            "ops: [count, sum, avg, min, max, stddev], windows: [1h, 24h, 7d]}",
        )
        .replace("where: \"status == 'failed'\"}", "where: \"status != 'paid'\"}")
        .replace("      - {name: clicks, stream: clicks, ops: [count], windows: [10m, 1h]}\n", "")
    ).replace(
        "      - {name: products, stream: orders, field: product, ops: [distinct], windows: [24h]}\n",
        "      - {name: products, stream: orders, field: product, ops: [distinct], windows: [24h]}\n"
        "      - {name: big, stream: orders, field: amount, ops: [count], windows: [24h],"
        ' where: "amount > 100"}\n',
    )
    (user,) = plan_changes(spec(SHOP), spec(v2))
    assert user.kind == "changed" and not user.refused
    assert [(a.name, a.kind, a.detail) for a in user.aggregations] == [
        ("spend", "changed", "windows [1h, 24h] -> [1h, 24h, 7d]"),
        ("failed", "changed", "where \"status == 'failed'\" -> \"status != 'paid'\""),
        ("products", "unchanged", ""),
        ("big", "new", ""),
        ("clicks", "removed", ""),
    ]
    lines = render_changes([user])
    assert lines[0] == "  group user: changed"
    assert lines[1].startswith(
        "    spend                changed (windows [1h, 24h] -> [1h, 24h, 7d]): its state under the old"
    )
    assert lines[4].startswith("    big                  new: applied from now on; the history")
    assert lines[5] == (
        "    clicks               removed: no longer served; its values are dropped from buckets as they "
        "are rewritten"
    )


def test_a_period_or_key_change_is_refused_with_the_ways_out() -> None:
    period = SHOP.replace("period: 10m ", "period: 5m  ")
    (user,) = plan_changes(spec(SHOP), spec(period))
    assert user.refused == (
        "feature group 'user': its period changed from 10m to 5m, so its stored state cannot be reused. "
        "Rename the group (it starts with new, empty state), or stop the workers and run "
        "`hydrant state reset user --yes` (it deletes the group's state; the workers then rebuild it from "
        "the history the topics hold)"
    )
    assert render_changes([user]) == [f"  group user: REFUSED: {user.refused}"]
    key = SHOP.replace("  user:\n    key: user_id", "  user:\n    key: [user_id, product]").replace(
        "      - {name: clicks, stream: clicks, ops: [count], windows: [10m, 1h]}\n", ""
    )
    (user,) = plan_changes(spec(SHOP), spec(key))
    assert "its key changed from user_id to user_id + product" in user.refused


def test_new_and_removed_groups() -> None:
    renamed = (
        SHOP.replace("features:                     # sliding", "features:  # x")
        .replace("  user:\n    key: user_id", "  buyer:\n    key: user_id")
        .replace("features: [user]", "features: [buyer]")
    )
    changes = plan_changes(spec(SHOP), spec(renamed))
    assert [(g.name, g.kind) for g in changes] == [("buyer", "new"), ("user", "removed")]
    assert {a.kind for a in changes[0].aggregations} == {"new"}
    assert {a.kind for a in changes[1].aggregations} == {"removed"}
