"""Turn a recording of Open WebUI's requests into the replay fixtures of the end-to-end tests.

    .venv/bin/python scripts/openwebui_fixtures.py RECORDING.jsonl [--out tests/e2e/fixtures/openwebui]

RECORDING is what ``scripts/openwebui_check.py --record DIR`` wrote (``DIR/requests.jsonl``). The
first request of each kind is kept: the page's chat (with its built-in tools), the chat about an
uploaded file, the title, tags, follow-ups and retrieval-query tasks, the call after a tool ran,
and one embedding, for the Ollama (``/api``) and the OpenAI (``/v1``) connection each.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TASKS = {
    "title": "Generate a concise",
    "tags": "Generate 1-3 broad tags",
    "follow_ups": "follow-up questions",
    "queries": "search queries",
}
DESCRIPTIONS = {
    "chat": "chat sent from the page, with Open WebUI's built-in tools (native function calling)",
    "chat_rag": "a chat with an uploaded file: the retrieved chunk put in front of the question",
    "title": "title task", "tags": "tags task", "follow_ups": "follow-ups task", "queries": "retrieval query task",
    "tool_followup": "the call after Open WebUI ran a tool: assistant tool_calls and a tool message",
    "embed": "RAG embedding of one chunk",
}


def kind_of(path: str, body: dict[str, Any]) -> str | None:
    """Which fixture a recorded request is (``None`` for what the tests do not replay)."""
    if path == "/api/embed":
        return "embed"
    if path not in ("/api/chat", "/v1/chat/completions"):
        return None
    messages = body.get("messages") or []
    if any(m.get("role") == "tool" for m in messages):
        return "tool_followup"
    first = str(messages[0].get("content", "")) if messages else ""
    for kind, marker in TASKS.items():
        if first.startswith("### Task:") and marker in first:
            return kind
    last = str(messages[-1].get("content", "")) if messages else ""
    return "chat_rag" if "<source" in last or "<context>" in last else "chat"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recording", type=Path)
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "e2e" / "fixtures" / "openwebui")
    parser.add_argument("--version", default="0.12.4", help="the Open WebUI version recorded")
    options = parser.parse_args(argv)
    options.out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for line in options.recording.read_text().splitlines():
        entry = json.loads(line)
        body = entry.get("body")
        if entry.get("method") != "POST" or not isinstance(body, dict):
            continue
        kind = kind_of(entry["path"].split("?")[0], body)
        if kind is None:
            continue
        name = kind if kind == "embed" else f"{'ollama' if entry['path'].startswith('/api/') else 'openai'}_{kind}"
        if name == "embed":
            name = "ollama_embed"
        if name in written:
            continue
        fixture = {
            "captured_from": f"Open WebUI {options.version}, default settings, its page driven in headless Chromium",
            "what": DESCRIPTIONS[kind], "method": "POST", "path": entry["path"], "body": body,
        }
        written[name] = options.out / f"{name}.json"
        written[name].write_text(json.dumps(fixture, indent=1) + "\n")
    for name, path in sorted(written.items()):
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
