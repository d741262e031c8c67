"""Bad uploads and a cancelled quantization, through the real browser (AppTest cannot upload files or
press a button while a script runs). Each case must end in a clear message, no exception element, and a
page that keeps working afterwards."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import ARTIFACTS

pytestmark = pytest.mark.e2e

BINARY = {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"\x00\x01\x02PK\x03\x04" * 64}
EMPTY = {"name": "empty.txt", "mimeType": "text/plain", "buffer": b""}
SHORT = {"name": "short.txt", "mimeType": "text/plain", "buffer": b"just a few words"}


def pick(page, label: str, option: str) -> None:
    select = page.locator("[data-testid='stSelectbox']").filter(has_text=label)
    select.locator("input").first.click()
    page.keyboard.type(option)
    page.get_by_role("option").filter(has_text=option).first.click()


def upload(page, label: str, payload: dict) -> None:
    uploader = page.locator("[data-testid='stFileUploader']").filter(has_text=label)
    uploader.locator("input[type='file']").set_input_files(payload)


def no_exception(page, where: str) -> None:
    assert page.locator("[data-testid='stException']").count() == 0, where


@pytest.mark.parametrize(
    "page_name,title,corpus_label",
    [("evaluate", "Evaluate", "Text (held-out"), ("outliers", "Outliers", "Text")],
)
def test_bad_text_uploads(server_url, browser, page_name, title, corpus_label):
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    console_errors: list[str] = []
    page.on("console", lambda message: message.type == "error" and console_errors.append(message.text))
    bad_responses: list[str] = []
    page.on("response", lambda r: r.status >= 400 and bad_responses.append(f"{r.request.method} {r.url}"))
    page.goto(server_url)  # from the root: a page URL makes the frontend probe /<page>/_stcore/* (404s)
    page.get_by_role("link", name=title).first.click(timeout=120_000)
    page.locator("[data-testid='stSelectbox']").filter(has_text=corpus_label).first.wait_for(timeout=120_000)
    pick(page, corpus_label, "Upload a text file")
    page.get_by_text("Upload a plain-text file").first.wait_for(timeout=30_000)
    for payload, expected in (
        (BINARY, "looks binary"),
        (EMPTY, "at least"),
        (SHORT, "at least"),
    ):
        upload(page, "Text file", payload)
        page.get_by_text(expected).first.wait_for(timeout=30_000)
        no_exception(page, f"{page_name}: {payload['name']}")
    page.screenshot(path=str(ARTIFACTS / f"upload-{page_name}.png"), full_page=True)
    pick(page, corpus_label, "Python documentation")  # the page keeps working
    page.get_by_text("looks binary").wait_for(state="detached", timeout=30_000)
    no_exception(page, page_name)
    assert not console_errors, (console_errors, bad_responses)
    page.close()


def test_hostile_config_uploads(server_url, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    page.goto(f"{server_url}/memory")
    page.get_by_text("Memory by component").first.wait_for(timeout=120_000)
    page.get_by_text("Upload config.json", exact=True).first.click()
    page.get_by_text("only the architecture is read").first.wait_for(timeout=30_000)
    cases = [
        (b"\xff\xfe\x00garbage", "not valid UTF-8 JSON"),
        (
            b'{"model_type": "llama", "hidden_size": -5, "num_hidden_layers": 2, '
            b'"num_attention_heads": 1, "vocab_size": 10}',
            "hidden_size must be positive",
        ),
        (b"[" * 5000, "not valid UTF-8 JSON"),
        (b'{"model_type": "llama", "num_hidden_layers": "many"}', "has no hidden_size"),
    ]
    for payload, expected in cases:
        upload(
            page, "config.json", {"name": "config.json", "mimeType": "application/json", "buffer": payload}
        )
        page.get_by_text(expected).first.wait_for(timeout=30_000)
        no_exception(page, expected)
    page.screenshot(path=str(ARTIFACTS / "upload-config.png"), full_page=True)
    page.get_by_text("Catalog", exact=True).first.click()  # back to a good config: the page still works
    page.get_by_text("8.030 B").first.wait_for(timeout=30_000)
    no_exception(page, "memory after bad uploads")
    page.close()


def test_cancel_a_quantization_midway(server_url, browser):
    """RTN finishes, GPTQ is stopped while it runs: RTN's result stays, GPTQ is offered again."""
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    page.goto(f"{server_url}/methods")
    page.get_by_role("button", name="Run").first.wait_for(timeout=120_000)
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("GPTQ (2/2)").first.wait_for(timeout=180_000)  # RTN is done, GPTQ has started
    page.get_by_role("button", name="Stop").click()
    page.get_by_text("Press Run to quantize with GPTQ").first.wait_for(timeout=120_000)
    page.get_by_text("Reference perplexity").first.wait_for(timeout=120_000)  # RTN's finished result
    page.get_by_role("button", name="Stop").wait_for(state="detached", timeout=60_000)
    no_exception(page, "methods after stop")
    page.wait_for_timeout(2000)  # let the table and charts draw
    page.screenshot(path=str(ARTIFACTS / "methods-stopped.png"), full_page=True)
    page.goto(f"{server_url}/memory")  # the server is still serving
    page.get_by_text("Memory by component").first.wait_for(timeout=60_000)
    no_exception(page, "memory after the stop")
    page.close()
