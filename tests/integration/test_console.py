"""The operator console in a real browser (issue 25, must-show 1): Debian's chromium, headless, driven by
Playwright, against a worker with the shop demo running and an API token set. Until the token is
entered the data calls fail (401 banner, no graph, the lookup form answers 401); then the graph
renders, the rates rise, a dead letter the test sends appears with its reason, and a lookup through
the form shows what the API answers. A screenshot is saved beside the test's logs."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import sync_playwright

from app.config.settings import load_settings
from app.config.spec import load_pipeline
from app.tools.demo import run_demo
from tests.support.broker import BrokerUnderTest
from tests.support.kafka import create_pipeline_topics_for, produce
from tests.support.tools import tool
from tests.support.worker import WorkerProcess, wait_for

TOKEN = "console-token-81d2"


@pytest.fixture
def demo(broker: BrokerUnderTest, shop_pipeline: Path, uid: str) -> Iterator[Callable[[], None]]:
    """The shop demo (users, then orders and clicks at ~40/s) in a thread, until the test ends or
    calls the function it is given."""
    create_pipeline_topics_for(broker.url, shop_pipeline, uid)
    settings = load_settings(broker=broker.url, pipeline=shop_pipeline, app_id=f"hydrant-test-{uid}")
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    thread = threading.Thread(
        target=loop.run_until_complete,
        args=(run_demo(settings, load_pipeline(shop_pipeline), stop, users=50, rate=40),),
        daemon=True,
    )
    thread.start()

    def halt() -> None:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=30)

    try:
        yield halt
    finally:
        halt()


def test_the_console_shows_the_pipeline_and_needs_the_token(
    broker: BrokerUnderTest,
    shop_pipeline: Path,
    uid: str,
    workers: Callable[..., WorkerProcess],
    demo: Callable[[], None],
    tmp_path: Path,
) -> None:
    chromium = tool("chromium")
    worker = workers(shop_pipeline, "w1", HYDRANT_API_TOKEN=TOKEN)
    worker.wait_ready(120)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 1000})
            page.goto(f"{worker.url}/ui")  # the page itself needs no token

            # Without the token: the 401 banner, no graph, and the lookup form answers 401.
            page.wait_for_selector("#auth:not([hidden])", timeout=10_000)
            assert page.locator("#graph g.node").count() == 0
            page.click("#lookup-form button")
            page.wait_for_selector('#lookup-result[data-status="401"]', timeout=10_000)

            page.fill("#token", TOKEN)
            page.click("#token-form button")
            page.wait_for_selector("#auth[hidden]", state="attached", timeout=10_000)
            # The graph: 2 streams and a lookup, the user group, the enriched output.
            page.wait_for_function("document.querySelectorAll('#graph g.node').length === 5", timeout=10_000)
            kinds = page.eval_on_selector_all(
                "#graph g.node", "nodes => nodes.map(n => n.getAttribute('class') + ' ' + n.dataset.name)"
            )
            assert sorted(kinds) == sorted(
                ["node stream orders", "node stream clicks", "node lookup users", "node group user",
                 "node output orders_enriched"]
            )  # fmt: skip
            assert page.locator("#graph path.edge").count() == 5

            # The rates rise: the orders topic's in/s above 0 on a later refresh.
            rising = """topic => [...document.querySelectorAll('#topics tbody tr')].some(row =>
                row.cells[0].textContent === topic && parseFloat(row.cells[3].textContent) > 0)"""
            page.wait_for_function(rising, arg=f"orders-{uid}", timeout=20_000)

            # A dead letter sent now appears with its reason and its source.
            bad = [(b"u0001", b"not json at all")]
            sender = threading.Thread(
                target=asyncio.run, args=(produce(broker.bootstrap, f"orders-{uid}", bad),)
            )
            sender.start()  # in a thread: Playwright's sync API runs an event loop in this one
            sender.join(30)
            page.wait_for_selector('#reasons [data-reason="decode"]', timeout=20_000)
            assert page.text_content('#reasons [data-reason="decode"]') == "decode: 1"
            cells = page.eval_on_selector_all("#dead tbody tr td", "tds => tds.map(td => td.textContent)")
            assert (
                cells[1] == "decode" and "invalid JSON" in cells[2] and cells[3].startswith(f"orders-{uid}/")
            )

            # A lookup through the form shows what the API gives for that key (the demo stopped and
            # its last events processed, so that both reads see the same state).
            key = "u0001"
            wait_for(
                lambda: httpx.get(f"{worker.url}/features/user/{key}", headers=auth).status_code == 200, key
            )
            demo()
            wait_for(lambda: worker.metric("hydrant_consumer_lag") == 0, "the demo's last events")
            page.select_option("#lookup-target", "group:user")
            page.fill("#lookup-key", key)
            page.click("#lookup-form button")
            page.wait_for_selector('#lookup-result[data-status="200"]', timeout=10_000)
            shown = json.loads(page.text_content("#lookup-result").split("\n", 1)[1])
            api = httpx.get(
                f"{worker.url}/features/user/{key}", params={"at": shown["at"]}, headers=auth
            ).json()
            assert shown == api
            page.select_option("#lookup-target", "table:users")
            page.click("#lookup-form button")
            page.wait_for_function("document.querySelector('#lookup-result').textContent.includes('segment')")
            page.screenshot(path=str(tmp_path / "console.png"), full_page=True)
        finally:
            browser.close()


def test_the_console_pages_a_pipeline_of_fifty_topics_and_a_thousand_partitions(tmp_path: Path) -> None:
    """The page stays usable on a large pipeline: 20 rows per table page, a pager, the whole graph.
    Its JSON is served by Playwright (no worker): 25 streams with their dead-letter topics, 1,000
    partitions spread over 3 workers."""
    chromium = tool("chromium")
    static = Path(__file__).resolve().parents[2] / "app" / "api" / "static"
    streams = {f"s{i:02d}": {"topic": f"t{i:02d}", "key": "k", "fields": {"k": "str"}} for i in range(25)}
    features = {
        f"g{i:02d}": {"key": "k", "period": "1h", "aggregations": [{"name": "n", "stream": f"s{i:02d}"}]}
        for i in range(30)
    }
    spec = {
        "name": "big",
        "streams": streams,
        "lookups": {},
        "features": features,
        "outputs": {},
        "services": {},
    }
    status = {
        "pipeline": "big",
        "group": "hydrant-big",
        "time": 1_796_000_000_000,
        "uptime_s": 5.0,
        "ready": True,
        "partitions": 1000,
        "topics": [
            {"topic": t, "role": r, "owner": s, "in": 10, "out": 0, "lag": 0, "lag_max": 0}
            for s, v in streams.items()
            for t, r in ((v["topic"], "stream"), (v["topic"] + ".dlq", "dead-letter"))
        ],
        "dead_letters": {"by_reason": {"decode": 0}, "last": []},
        "lookups": {},
        "groups": {
            g: {"keys": 1, "buckets": 1, "late": 0, "replay_left": 0, "incomplete": 0} for g in features
        },
        "recovery": {"active": 0, "standby": 0},
        "ingest": {},
        "workers": [
            {
                "url": f"http://w{w}:6066",
                "me": w == 0,
                "partitions": 333,
                "ranges": ",".join(map(str, range(w, 1000, 3))),
            }
            for w in range(3)
        ],
    }
    files = {"/ui": ("ui.html", "text/html"), "/ui/ui.js": ("ui.js", "application/javascript"),
             "/ui/ui.css": ("ui.css", "text/css")}  # fmt: skip

    def answer(route: Any) -> None:
        path = route.request.url.split("http://console.test", 1)[1]
        if path in files:
            name, kind = files[path]
            route.fulfill(body=(static / name).read_bytes(), content_type=kind)
        else:
            body = {"spec": spec} if path == "/pipeline" else status
            route.fulfill(body=json.dumps(body), content_type="application/json")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 1000})
            page.route("http://console.test/**", answer)
            page.goto("http://console.test/ui")
            page.wait_for_function("document.querySelectorAll('#graph g.node').length === 55", timeout=10_000)
            assert page.locator("#topics tbody tr").count() == 20
            assert "page 1 of 3 (50 rows)" in page.text_content('.pager[data-for="topics"]')
            page.click('.pager[data-for="topics"] button:has-text("next")')
            page.click('.pager[data-for="topics"] button:has-text("next")')
            assert page.locator("#topics tbody tr").count() == 10
            assert page.locator("#groups tbody tr").count() == 20
            ranges = page.eval_on_selector_all(
                "#workers tbody tr td:nth-child(3)", "tds => tds.map(t => t.textContent)"
            )
            assert len(ranges) == 3 and all(len(r) <= 120 for r in ranges)
            page.screenshot(path=str(tmp_path / "console-big.png"), full_page=True)
        finally:
            browser.close()
