"""The pipeline spec: the docs/product.md example loads; invalid specs name the field and the line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from app.config.routing import stream_stages, topic_plans
from app.config.spec import load_pipeline, parse_duration, parse_pipeline
from app.errors import SpecError
from tests.conftest import PAYMENTS, SHOP


def test_shop_example_loads_with_feature_names_as_written() -> None:
    p = load_pipeline(SHOP)
    assert list(p.streams) == ["orders", "clicks"]
    assert p.streams["orders"].dlq_topic == "orders.dlq"
    group = p.features["user"]
    assert group.period_ms == 600_000 and group.retention_ms == 86_400_000
    names = group.feature_names()
    assert names[:4] == ["spend_count_1h", "spend_count_24h", "spend_sum_1h", "spend_sum_24h"]
    assert "products_distinct_24h" in names and "clicks_count_10m" in names and len(names) == 16
    out = p.outputs["orders_enriched"]
    assert out.from_ == "orders" and [j.lookup for j in out.join] == ["users"] and out.join[0].prefix == ""
    topics = {t.name: t for t in topic_plans(p, 3, "g")}
    assert set(topics) == {
        "orders",
        "orders.dlq",
        "clicks",
        "clicks.dlq",
        "users",
        "users.dlq",
        "orders-enriched",
        "g-stream-orders-repartition",
        "g-stream-clicks-repartition",
        "g-lookup-users-repartition",
    }
    assert topics["g-stream-orders-repartition"].role == "repartition"
    assert topics["users"].compacted and not topics["orders"].compacted
    assert all(t.partitions == 3 for t in topics.values())


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("10m", 600_000),
        ("1h", 3_600_000),
        ("24h", 86_400_000),
        ("7d", 604_800_000),
        ("500ms", 500),
        ("30s", 30_000),
        ("2w", 1_209_600_000),
    ],
)
def test_durations(text: str, ms: int) -> None:
    assert parse_duration(text) == ms


@pytest.mark.parametrize("bad", ["10", "1y", "0m", "-5m", "m", "", True, 3.5])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError, match="bad duration"):
        parse_duration(bad)


SHOP_TEXT = SHOP.read_text()


def broken(old: str, new: str) -> str:
    assert old in SHOP_TEXT, old
    return SHOP_TEXT.replace(old, new, 1)


def line_of(text: str, needle: str) -> int:
    """1-based line of ``needle``; ``"anchor>>needle"`` finds the needle after the anchor's line."""
    anchor, _, needle = needle.rpartition(">>")
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if anchor in line) if anchor else 0
    return next(i for i, line in enumerate(lines, 1) if i > start and needle in line)


# Ten invalid specs: (the YAML, the message expected, the line it must name).
INVALID = [
    (
        broken("amount: float", "amount: flaot"),
        "streams.orders.fields.amount: unknown type 'flaot'",
        "amount: flaot",
    ),
    (
        broken("from: orders", "from: order"),
        "outputs.orders_enriched.from: unknown stream 'order'",
        "from: order",
    ),
    (
        broken("join: [users]", "join: [customers]"),
        "outputs.orders_enriched.join.0: unknown lookup 'customers'",
        "join: [customers]",
    ),
    (
        broken("    key: user_id              # entity key", "    key: customer_id       # entity key"),
        "streams.orders.key: key field 'customer_id' is not in fields",
        "key: customer_id",
    ),
    (
        broken("ops: [count], windows: [1h], where", "ops: [count], windows: [25m], where"),
        "features.user.aggregations.1.windows.0: window 25m is not a multiple of the period 10m",
        "windows: [25m]",
    ),
    (
        broken("period: 10m", "period: ten minutes"),
        "features.user.period: bad duration 'ten minutes'",
        "period: ten",
    ),
    (
        broken("ops: [distinct]", "ops: [distinct, median]"),
        "features.user.aggregations.2.ops.1: unknown op 'median'",
        "median",
    ),
    (
        broken("{name: clicks, stream: clicks,", "{name: spend, stream: clicks,"),
        "features.user.aggregations.3.name: duplicate aggregation name 'spend'",
        "{name: spend, stream: clicks",
    ),
    (
        broken("    time: ts                  # event time", "    time: when                # event time"),
        "streams.orders.time: time field 'when' is not in fields",
        "time: when",
    ),
    (
        broken("    topic: users\n", "    topic: users\n    partitions: 3\n"),
        "lookups.users.partitions: unknown field",
        "partitions: 3",
    ),
    (
        broken("features: [user]", "features: [users]"),
        "outputs.orders_enriched.features.0: unknown feature group 'users'",
        "features: [users]",
    ),
    (
        broken(
            "{name: products, stream: orders, field: product, ops: [distinct]",
            "{name: products, stream: orders, field: product, ops: [sum]",
        ),
        "features.user.aggregations.2.ops: sum: needs a numeric field; 'product' is a str",
        "ops: [sum]",
    ),
    (
        broken("join: [users]", "join: [users, {lookup: users, prefix: ''}]"),
        "outputs.orders_enriched.join.1: field 'country' of lookup 'users' collides with lookup users",
        "join: [users,",
    ),
    (
        broken("    topic: orders-enriched", "    topic: users"),
        "outputs.orders_enriched.topic: topic 'users' is already used by lookups.users",
        "orders_enriched:>>topic: users",
    ),
]


PAYMENTS_TEXT = PAYMENTS.read_text()


def broken_payments(old: str, new: str) -> str:
    assert old in PAYMENTS_TEXT, old
    return PAYMENTS_TEXT.replace(old, new, 1)


# Several entities per stream: group keys and joins on other fields (docs/pipeline.md).
INVALID += [
    (
        broken("field: product, ops: [distinct]", "field: product, ops: [distinct, last_n]"),
        "features.user.aggregations.2.n: last_n needs n",
        "{name: products,",
    ),
    (
        broken("field: product, ops: [distinct]", "field: product, n: 5, ops: [distinct]"),
        "features.user.aggregations.2.n: n is only read by the op last_n",
        "{name: products,",
    ),
    (
        broken(
            "field: amount, ops: [count], windows: [1h]", "field: amount, ops: [percentile], windows: [1h]"
        ),
        "features.user.aggregations.1.quantiles: percentile needs quantiles",
        "{name: failed,",
    ),
    (
        broken(
            "field: amount, ops: [count], windows: [1h]",
            "field: amount, ops: [percentile], quantiles: [0.5, 1.5], windows: [1h]",
        ),
        "features.user.aggregations.1.quantiles: 1.5 is not a quantile",
        "{name: failed,",
    ),
    (
        broken(
            "field: amount, ops: [count], windows: [1h]",
            "field: amount, ops: [percentile], quantiles: [0.5, 0.50], windows: [1h]",
        ),
        "features.user.aggregations.1.quantiles: duplicate quantile",
        "{name: failed,",
    ),
    (
        broken("field: product, ops: [distinct]", "field: product, ops: [percentile], quantiles: [0.5]"),
        "features.user.aggregations.2.ops: percentile: needs a numeric field",
        "{name: products,",
    ),
    (
        broken("field: product, ops: [distinct]", "field: product, ops: [top_k]"),
        "features.user.aggregations.2.k: top_k needs k",
        "{name: products,",
    ),
    (
        broken("field: product, ops: [distinct]", "field: product, k: 3, ops: [last_n], n: 2"),
        "features.user.aggregations.2.k: k is only read by the op top_k",
        "{name: products,",
    ),
    (
        broken("field: product, ops: [distinct]", "field: product, n: 5000, ops: [last_n]"),
        "features.user.aggregations.2.n: Input should be less than or equal to 1000",
        "{name: products,",
    ),
]
INVALID += [
    (
        broken_payments("key: [card_id, merchant_id]", "key: [card_id, shop_id]"),
        "features.card_merchant.aggregations.0.stream: stream 'payments' has no field 'shop_id' "
        "(the group's key)",
        "{name: pair,",
    ),
    (
        broken_payments("key: [card_id, merchant_id]", "key: [card_id, amount]"),
        "features.card_merchant.aggregations.0.stream: field 'amount' of stream 'payments' is a float; the "
        "group's key must be a str or int field",
        "{name: pair,",
    ),
    (
        broken_payments("key: [card_id, merchant_id]", "key: [card_id, card_id]"),
        "features.card_merchant.key: a key field is listed twice",
        "key: [card_id, card_id]",
    ),
    (
        broken_payments("on: merchant_id", "on: merchant"),
        "outputs.payments_enriched.join.0.on: stream 'payments' has no field 'merchant'",
        "on: merchant,",
    ),
    (
        broken_payments("on: merchant_id", "on: amount"),
        "outputs.payments_enriched.join.0.on: field 'amount' of stream 'payments' is a float; the key of "
        "lookup 'merchants' is a string: a join must be a str or int field",
        "on: amount",
    ),
    (
        broken_payments("features: [card, merchant", "features: [card, merchant, user"),
        "outputs.payments_enriched.features.2: unknown feature group 'user'",
        "features: [card",
    ),
]

# Feature services (docs/api.md): groups and features, entities, joins, column collisions, computed.
SERVICE_JOIN = (
    'on: merchant_id, prefix: m_}]\n    computed:\n      amount_vs_merchant: "amount / sales_avg_24h if s'
)
INVALID += [
    (
        broken_payments("      - merchant.sales_avg_24h", "      - merchant.sales_avg_2h"),
        "services.fraud.features.1: group 'merchant' has no feature 'sales_avg_2h' (features: sales_count_1h",
        "merchant.sales_avg_2h",
    ),
    (
        broken_payments("      - card.*", "      - cards.*"),
        "services.fraud.features.0: unknown feature group 'cards' (groups: card, merchant, device, "
        "card_merchant)",
        "cards.*",
    ),
    (
        broken_payments("entities: [card_id, merchant_id]", "entities: [card_id]"),
        "services.fraud.features.1: group 'merchant' is keyed by 'merchant_id': list it in entities",
        "merchant.sales_avg_24h",
    ),
    (
        broken_payments(
            "      - merchant.sales_avg_24h", "      - merchant.sales_avg_24h\n      - card.spend_sum_1h"
        ),
        "services.fraud.features.2: column 'spend_sum_1h' collides with group card; give a prefix",
        "card.spend_sum_1h",
    ),
    (
        broken_payments("request: {amount: float}", "request: {amount: float, card_id: str}"),
        "services.fraud.request.card_id: request field 'card_id' is also an entity field",
        "request: {amount",
    ),
    (
        broken_payments("request: {amount: float}", "request: {amount: decimal}"),
        "services.fraud.request.amount: unknown type 'decimal'",
        "request: {amount",
    ),
    (
        broken_payments(SERVICE_JOIN, SERVICE_JOIN.replace("merchant_id", "device_id")),
        "services.fraud.join.0.on: 'device_id' is not an entity field of the service (entities: card_id, "
        "merchant_id)",
        "on: device_id",
    ),
    (
        broken_payments(
            'amount_vs_merchant: "amount / sales_avg_24h if sales_avg_24h else',
            'amount_vs_merchant: "amount / sales_avg_1w if sales_avg_24h else',
        ),
        "services.fraud.computed.amount_vs_merchant: unknown name 'sales_avg_1w'",
        'amount_vs_merchant: "amount / sales_avg_1w',
    ),
]


@pytest.mark.parametrize(("text", "message", "needle"), INVALID, ids=[m.split(":")[0] for _, m, _ in INVALID])
def test_invalid_spec_names_field_and_line(text: str, message: str, needle: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_pipeline(text, "pipeline.yaml")
    problems = err.value.problems
    matching = [p for p in problems if p.startswith(message)]
    assert matching, f"{message!r} not in {problems}"
    assert matching[0].endswith(f"(line {line_of(text, needle)})"), matching[0]


def test_yaml_syntax_error_names_line() -> None:
    with pytest.raises(SpecError, match=r"YAML syntax: .* \(line \d+\)"):
        parse_pipeline("name: x\nstreams: {a: [}\n")


@pytest.mark.parametrize("text", ["? {a: {b: 1}}\n: 2\n", "streams:\n  ? {orders: [1]}\n  : x\n"])
def test_a_nested_mapping_key_is_named_not_a_crash(text: str) -> None:
    # ruamel raises TypeError hashing such a key (found by tests/reliability/test_fuzz.py)
    with pytest.raises(SpecError, match="YAML: a mapping key must be a plain value"):
        parse_pipeline(text)


def test_all_problems_reported_at_once() -> None:
    text = broken("from: orders", "from: order").replace("period: 10m", "period: 7m")
    with pytest.raises(SpecError) as err:
        parse_pipeline(text)
    assert len(err.value.problems) >= 3  # 'from' plus windows that are no multiple of 7m


def test_hydrant_check_exits_2_with_messages(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(INVALID[0][0])
    result = subprocess.run(
        [sys.executable, "-m", "app.tools.cli", "check", str(bad)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "streams.orders.fields.amount: unknown type 'flaot'" in result.stderr
    assert f"(line {line_of(INVALID[0][0], 'amount: flaot')})" in result.stderr

    ok = subprocess.run(
        [sys.executable, "-m", "app.tools.cli", "check", str(SHOP)], capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    assert "pipeline 'shop' is valid" in ok.stdout
    assert "orders.dlq" in ok.stdout and "lookup-users" in ok.stdout and "process_events" in ok.stdout

    missing = subprocess.run(
        [sys.executable, "-m", "app.tools.cli", "check", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and "cannot read the pipeline file" in missing.stderr


def test_payments_stages_visit_each_key_once_fewer_fields_first() -> None:
    p = load_pipeline(PAYMENTS)
    stages = stream_stages(p, "payments", "g")
    assert [(s.key, s.groups, s.reads, s.joins) for s in stages] == [
        (("card_id",), ("card",), ("card",), ()),
        (("merchant_id",), ("merchant",), ("merchant",), (("merchants", "merchant_id"),)),
        (("device_id",), ("device",), ("device",), ()),
        (("card_id", "merchant_id"), ("card_merchant",), ("card_merchant",), ()),
    ]
    assert [s.topic for s in stages] == [
        "g-stream-payments-repartition",
        "g-stream-payments-by-merchant_id-repartition",
        "g-stream-payments-by-device_id-repartition",
        "g-stream-payments-by-card_id-merchant_id-repartition",
    ]
    hops = {t.name for t in topic_plans(p, 4, "g") if t.role == "repartition"}
    assert {s.topic for s in stages} < hops
    # The shop: one key per stream, so one stage each and no hop topic beyond today's.
    shop = load_pipeline(SHOP)
    assert [len(stream_stages(shop, name, "g")) for name in shop.streams] == [1, 1]
