"""Open WebUI against the stack, in headless Chromium, as a new user would try it.

    make openwebui-check                       # installs Open WebUI (~7.5 GB, once), starts everything
    .venv-openwebui/bin/python scripts/openwebui_check.py --stack-url http://127.0.0.1:8000   # a running stack
    ... --record tests/e2e/fixtures/openwebui/captured   # also log every request Open WebUI sends

It starts the stack (``serve run config.yaml``) unless ``--stack-url`` names one, then Open WebUI
0.12.4 offline with default settings on both connections (Ollama at the stack's root; OpenAI at
``/v1`` with the prefix ``oai.``, since both list the same model ids), and drives the page with
Debian's Chromium through Playwright: pick the model, send a message, wait for the answer; in a
new chat upload a small text file, ask about it and wait for "Retrieved 1 source" and the answer.
Once per connection. Screenshots and ``result.json`` go to ``--shots``; the exit code says whether
every step passed. Needs ``playwright`` (the Python package; no browser download) and
``/usr/bin/chromium``. Not part of ``make test``: its install is several GB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from Open WebUI's venv: the repo is not installed there
from benchmarks.process_group import process_group  # noqa: E402 - needs the path above

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# From Open WebUI 0.12.4's built frontend (the Svelte sources ship in its .js.map files).
SELECTORS = {
    "chat_input": "#chat-input",
    "send_button": "#send-message-button",
    "model_button": "#model-selector-model-button",
    "model_search": "#model-search-input",
    "file_input": '#chat-container input[type="file"][multiple]:not(#camera-input)',
    "assistant": "div.chat-assistant",
    "copy_button": "button.copy-response-button",
    "new_chat": "#sidebar-new-chat-button, #new-chat-button",
}
MEMO = "Internal memo.\nThe secret code word for the project is pineapple.\nDo not share it.\n"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def wait_http(url: str, timeout_s: float, ready: Any = None) -> None:
    """Until ``url`` answers 200 (and ``ready(body)`` holds, when given)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:  # noqa: S310 - loopback only
                body = reply.read().decode()
                if reply.status == 200 and (ready is None or ready(body)):
                    return
        except OSError:
            pass
        time.sleep(2)
    raise TimeoutError(f"{url} not ready after {timeout_s:.0f} s")


def stack_ready(body: str) -> bool:
    models = json.loads(body)["models"]
    return bool(models) and all(m.get("state", "ready") == "ready" for m in models)


def openwebui_env(backend: str, data_dir: Path) -> dict[str, str]:
    """Open WebUI's settings for an offline run against ``backend`` on both connections."""
    return {
        "DATA_DIR": str(data_dir),
        "ENABLE_PERSISTENT_CONFIG": "False",  # read these on every start, not only the first
        "OFFLINE_MODE": "true", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "ENABLE_VERSION_UPDATE_CHECK": "false", "ANONYMIZED_TELEMETRY": "false", "DO_NOT_TRACK": "true",
        "SCARF_NO_ANALYTICS": "true", "WEBUI_AUTH": "False", "WEBUI_SECRET_KEY": "openwebui-check",
        "RAG_EMBEDDING_ENGINE": "ollama", "RAG_EMBEDDING_MODEL": "all-minilm:l6-v2",
        "OLLAMA_BASE_URL": backend, "OPENAI_API_BASE_URL": f"{backend}/v1", "OPENAI_API_KEY": "unused",
        # Both connections list the same ids; without a prefix the Ollama entry hides the OpenAI one.
        "OPENAI_API_CONFIGS": json.dumps({"0": {"enable": True, "prefix_id": "oai"}}),
    }


class Page:
    """The steps a user takes on Open WebUI's page."""

    def __init__(self, page: Any, shots: Path) -> None:
        self.page = page
        self.shots = shots
        self.count = 0

    async def shot(self, name: str) -> None:
        self.count += 1
        await self.page.screenshot(path=str(self.shots / f"{self.count:02d}_{name}.png"))

    async def dismiss_whats_new(self) -> None:
        button = self.page.get_by_role("button", name="Okay, Let's Go!")
        if await button.count() and await button.first.is_visible():
            await button.first.click()
            await self.page.wait_for_timeout(500)

    async def open(self, url: str) -> None:
        # Never wait for 'networkidle': socket.io keeps polling.
        await self.page.goto(url, wait_until="load", timeout=120_000)
        await self.page.wait_for_selector(SELECTORS["chat_input"], timeout=90_000)
        await self.page.wait_for_timeout(1000)
        await self.dismiss_whats_new()

    async def select_model(self, model_id: str) -> None:
        await self.page.click(SELECTORS["model_button"])
        await self.page.fill(SELECTORS["model_search"], model_id)
        option = self.page.locator(f'button[role="option"][data-value="{model_id}"]')
        await option.first.wait_for(state="visible", timeout=30_000)
        await option.first.click()
        await self.page.wait_for_timeout(300)

    async def send(self, text: str) -> None:
        await self.page.click(SELECTORS["chat_input"])
        await self.page.keyboard.type(text, delay=5)
        await self.page.wait_for_selector(SELECTORS["send_button"] + ":not([disabled])", timeout=30_000)
        await self.page.click(SELECTORS["send_button"])

    async def answer(self, timeout_s: float) -> str:
        """The newest assistant message once it is done (its copy button appears)."""
        assistants = self.page.locator(SELECTORS["assistant"])
        await assistants.first.wait_for(state="attached", timeout=timeout_s * 1000)
        message = assistants.last.locator('xpath=ancestor::div[starts-with(@id,"message-")][1]')
        await message.locator(SELECTORS["copy_button"]).wait_for(state="attached", timeout=timeout_s * 1000)
        return (await assistants.last.inner_text()).strip()

    async def new_chat(self, url: str) -> None:
        button = self.page.locator(SELECTORS["new_chat"])
        if await button.count() and await button.first.is_visible():
            await button.first.click()
        else:
            await self.page.goto(url, wait_until="load")
        await self.page.wait_for_selector(SELECTORS["chat_input"], timeout=60_000)
        await self.dismiss_whats_new()

    async def attach(self, path: Path) -> None:
        """Upload a file and wait until Open WebUI has extracted and embedded it."""
        file_input = self.page.locator(SELECTORS["file_input"])
        async with self.page.expect_response(lambda r: "/process/status" in r.url, timeout=300_000) as status:
            await file_input.set_input_files(str(path))
        await (await status.value).finished()
        for _ in range(240):
            if not await self.page.locator("#message-input-container .spinner_ajPY").count():
                return
            await self.page.wait_for_timeout(250)


async def drive(url: str, model_id: str, shots: Path, timeout_s: float, question: str) -> dict[str, Any]:
    """One connection's run: a chat, then a question about an uploaded file."""
    from playwright.async_api import async_playwright

    shots.mkdir(parents=True, exist_ok=True)
    memo = shots / "memo.txt"
    memo.write_text(MEMO)
    result: dict[str, Any] = {"model": model_id}
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        page = Page(await browser.new_page(viewport={"width": 1280, "height": 900}), shots)
        try:
            await page.open(url)
            await page.select_model(model_id)
            await page.shot("model_selected")
            started = time.monotonic()
            await page.send(question)
            result["chat_answer"] = await page.answer(timeout_s)
            result["chat_seconds"] = round(time.monotonic() - started, 1)
            await page.shot("chat_answer")
            await page.new_chat(url)
            await page.select_model(model_id)
            await page.attach(memo)
            await page.shot("file_attached")
            started = time.monotonic()
            await page.send("What is the secret code word in the attached memo?")
            status = page.page.get_by_text("Retrieved 1 source", exact=False)
            await status.first.wait_for(state="visible", timeout=timeout_s * 1000)
            result["rag_status"] = (await status.first.inner_text()).strip()
            result["rag_answer"] = await page.answer(timeout_s)
            result["rag_seconds"] = round(time.monotonic() - started, 1)
            await page.shot("rag_answer")
            result["ok"] = bool(result["chat_answer"]) and bool(result["rag_answer"])
        except Exception as exc:  # noqa: BLE001 - the verdict records it
            result.update(ok=False, error=f"{type(exc).__name__}: {exc}")
            await page.shot("failure")
        finally:
            await browser.close()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack-url", default=None, help="a running stack (default: start config.yaml's)")
    parser.add_argument("--port", type=int, default=8080, help="Open WebUI's port")
    parser.add_argument("--shots", type=Path, default=REPO / "openwebui-check" / time.strftime("%Y%m%d-%H%M%S"))
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for each answer")
    parser.add_argument("--question", default="What is the capital of France? Answer in one word.")
    parser.add_argument("--record", type=Path, default=None, help="log every request Open WebUI sends to this folder")
    parser.add_argument("--connections", default="ollama,openai")
    options = parser.parse_args(argv)
    options.shots.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        backend = options.stack_url
        if backend is None:
            log("starting the stack (serve run config.yaml)")
            # config.yaml's controller_options carry Serve's settings (as under `make run`).
            stack.enter_context(process_group([str(REPO / ".venv/bin/serve"), "run", "config.yaml"], options.shots / "stack.log",
                                              cwd=REPO))
            backend = "http://127.0.0.1:8000"
            wait_http(f"{backend}/api/tags", 900, stack_ready)
        if options.record is not None:
            from scripts.recording_proxy import recording_proxy

            backend = stack.enter_context(recording_proxy(backend, options.record / "requests.jsonl"))
            log(f"recording Open WebUI's requests through {backend}")
        data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="openwebui-")))
        openwebui = str(Path(sys.executable).parent / "open-webui")
        log("starting Open WebUI")
        started = time.monotonic()
        stack.enter_context(process_group([openwebui, "serve", "--host", "127.0.0.1", "--port", str(options.port)],
                                          options.shots / "openwebui.log", openwebui_env(backend, data_dir), cwd=REPO))
        wait_http(f"http://127.0.0.1:{options.port}/health", 300)
        log(f"Open WebUI up in {time.monotonic() - started:.0f} s")
        results = []
        for connection in options.connections.split(","):
            model = "smollm2:135m" if connection == "ollama" else "oai.smollm2:135m"
            log(f"driving the page on the {connection} connection ({model})")
            result = asyncio.run(drive(f"http://127.0.0.1:{options.port}", model, options.shots / connection,
                                       options.timeout, options.question))
            result["connection"] = connection
            log(json.dumps(result))
            results.append(result)
    verdict = {"ok": all(r["ok"] for r in results), "runs": results}
    (options.shots / "result.json").write_text(json.dumps(verdict, indent=2))
    log(f"{'PASSED' if verdict['ok'] else 'FAILED'}; screenshots and result.json in {options.shots}")
    return 0 if verdict["ok"] else 1


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
