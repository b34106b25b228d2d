"""`minillava web`: a web page to upload an image and chat with a model, its answers streamed as they are generated.

```bash
minillava web llava-1.5-7b                      # then open http://127.0.0.1:7860
minillava web me/llava-1.5-7b-lora --load_in_4bit --host 0.0.0.0 --port 8080
```

A light server of the standard library (`http.server`, no extra dependency): one page with an image upload, a text
box and a send button; the answer comes as Server-Sent Events on the response of a `fetch`, which the page reads as
it arrives. Each page load is a conversation of its own (kept in memory, the oldest dropped past `--max_sessions`);
an image goes with the next message. Bad images (not an image, too large) are refused with the reason, shown in the
page. It serves what `minillava chat` does (`minillava.train.chat.terminal`): the same loading, sampling flags, stop at the
template's turn separator (MiniGPT-4's `###`). It binds 127.0.0.1 unless `--host` says otherwise; it has no login:
bind another address only on a network you trust.
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import secrets
import sys
import threading
from collections import OrderedDict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .terminal import (
    ChatError,
    ChatModel,
    Conversation,
    add_model_arguments,
    chat_model_from_args,
    describe,
    open_image,
    sampling_from_args,
)


logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_MAX_SESSIONS = 64
# The largest JSON request (a message): a few pages of text.
MAX_JSON_BYTES = 1 << 20
# A too-large upload is read (and dropped) up to this many bytes, so that the browser gets the refusal instead of a
# reset connection; past it the connection is closed.
MAX_DRAIN_BYTES = 256 << 20


class WebDemo:
    """The state behind the page: the [`ChatModel`], one [`Conversation`] per page load (by session id, the oldest
    dropped past `max_sessions`), and the upload limit."""

    def __init__(
        self,
        chat: ChatModel,
        max_image_bytes: int,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        title: str = "minillava",
    ):
        self.chat = chat
        self.max_image_bytes = max_image_bytes
        self.max_sessions = max_sessions
        self.title = title
        self._sessions: OrderedDict[str, Conversation] = OrderedDict()
        self._lock = threading.Lock()

    def new_session(self) -> str:
        """A new conversation's session id."""
        session = secrets.token_urlsafe(16)
        with self._lock:
            self._sessions[session] = Conversation()
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        return session

    def conversation(self, session: Any) -> Conversation:
        """The conversation of `session`; raises [`ChatError`] for an unknown one."""
        with self._lock:
            conversation = self._sessions.get(session) if isinstance(session, str) else None
            if conversation is None:
                raise ChatError("this conversation is no longer on the server: reload the page")
            self._sessions.move_to_end(session)
        return conversation

    def page(self) -> bytes:
        """The chat page, with a new session id in it."""
        limit = self.max_image_bytes
        return (
            PAGE.replace("__TITLE__", html.escape(self.title))
            .replace("__MODEL__", html.escape(describe_model(self.chat)))
            .replace("__SESSION__", self.new_session())
            .replace("__MAX_IMAGE_BYTES__", str(limit))
            .replace("__MAX_IMAGE_MB__", f"{limit / 2**20:g}")
            .encode("utf-8")
        )


def describe_model(chat: ChatModel) -> str:
    """What the page says it talks to."""
    notes = ["sampling" if chat.sampling.do_sample else "greedy"]
    if chat.separator:
        notes.append(f"answers end at {chat.separator}")
    return f"{chat.name} ({', '.join(notes)})"


def make_handler(demo: WebDemo) -> type[BaseHTTPRequestHandler]:
    """The request handler class serving `demo`: `GET /` (the page), `POST /api/image?session=ID` (the raw image
    file as the body, its name URL-encoded in `X-Filename`), `POST /api/chat` (`{"session", "text"}`, answered as
    Server-Sent Events `{"token"}` ..., then `{"done", "answer"}` or `{"error"}`), `POST /api/reset` (`{"session"}`)
    and `GET /health`. Errors are JSON `{"error"}` with a 4xx status."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "minillava-web"
        protocol_version = "HTTP/1.0"  # a streamed answer ends when the connection closes

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (the base class's name)
            logger.info("%s %s", self.address_string(), format % args)

        # ---- responses

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, data: dict[str, Any]) -> None:
            self._send(status, json.dumps(data).encode("utf-8"), "application/json")

        def _error(self, status: int, message: str) -> None:
            self._json(status, {"error": message})

        # ---- requests

        def _length(self) -> int | None:
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                self._error(HTTPStatus.LENGTH_REQUIRED, "the request needs a Content-Length")
                return None
            if length < 0:
                self._error(HTTPStatus.BAD_REQUEST, "a negative Content-Length")
                return None
            return length

        def _drain(self, length: int) -> None:
            if length > MAX_DRAIN_BYTES:
                self.close_connection = True
                return
            while length > 0:
                chunk = self.rfile.read(min(length, 1 << 20))
                if not chunk:
                    break
                length -= len(chunk)

        def _read_json(self) -> dict[str, Any] | None:
            length = self._length()
            if length is None:
                return None
            if length > MAX_JSON_BYTES:
                self._drain(length)
                self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the message is over {MAX_JSON_BYTES} bytes")
                return None
            try:
                data = json.loads(self.rfile.read(length).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                self._error(HTTPStatus.BAD_REQUEST, f"the request is not JSON: {error}")
                return None
            if not isinstance(data, dict):
                self._error(HTTPStatus.BAD_REQUEST, "the request is not a JSON object")
                return None
            return data

        def do_GET(self) -> None:  # noqa: N802  (http.server's name)
            path = urlsplit(self.path).path
            if path in ("/", "/index.html"):
                self._send(HTTPStatus.OK, demo.page(), "text/html; charset=utf-8")
            elif path == "/health":
                self._json(HTTPStatus.OK, {"ok": True, "model": demo.chat.name})
            else:
                self._error(HTTPStatus.NOT_FOUND, f"no page {path}")

        def do_POST(self) -> None:  # noqa: N802
            url = urlsplit(self.path)
            try:
                if url.path == "/api/image":
                    self._image(parse_qs(url.query).get("session", [None])[0])
                elif url.path == "/api/chat":
                    self._chat()
                elif url.path == "/api/reset":
                    data = self._read_json()
                    if data is not None:
                        demo.conversation(data.get("session")).reset()
                        self._json(HTTPStatus.OK, {"ok": True})
                else:
                    self._error(HTTPStatus.NOT_FOUND, f"no endpoint {url.path}")
            except ChatError as error:
                self._error(HTTPStatus.BAD_REQUEST, str(error))
            except (BrokenPipeError, ConnectionResetError):
                logger.info("%s went away", self.address_string())

        def _image(self, session: str | None) -> None:
            length = self._length()
            if length is None:
                return
            name = unquote(self.headers.get("X-Filename", "")).strip() or "the uploaded image"
            if length > demo.max_image_bytes:
                self._drain(length)
                self._error(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    f"{name} is {length / 2**20:.1f} MiB, larger than the {demo.max_image_bytes / 2**20:g} MiB an "
                    "image may be (--max_image_mb)",
                )
                return
            body = self.rfile.read(length)
            conversation = demo.conversation(session)
            if not body:
                raise ChatError(f"{name} is empty")
            image = open_image(body, name=name, max_bytes=demo.max_image_bytes)
            conversation.set_image(image)
            self._json(HTTPStatus.OK, {"ok": True, "name": name, "width": image.width, "height": image.height})

        def _chat(self) -> None:
            data = self._read_json()
            if data is None:
                return
            conversation = demo.conversation(data.get("session"))
            text = data.get("text")
            if not isinstance(text, str):
                raise ChatError("the request has no text")
            reply = demo.chat.reply(conversation, text)
            try:
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", "text/event-stream; charset=utf-8")
                self.send_header("Cache-Control", "no-store")
                self.send_header("X-Accel-Buffering", "no")
                self.end_headers()
                try:
                    for piece in reply:
                        self._event({"token": piece})
                except ChatError as error:
                    self._event({"error": str(error)})
                    return
                self._event({"done": True, "answer": reply.answer})
            finally:
                reply.close()  # a browser that went away stops the generation

        def _event(self, data: dict[str, Any]) -> None:
            self.wfile.write(b"data: " + json.dumps(data).encode("utf-8") + b"\n\n")
            self.wfile.flush()

    return Handler


def make_server(demo: WebDemo, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> ThreadingHTTPServer:
    """The HTTP server of `demo`, bound to `host:port` (port 0: a free one; `server.server_address` tells)."""
    server = ThreadingHTTPServer((host, port), make_handler(demo))
    server.daemon_threads = True
    return server


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minillava web", description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST}: this machine)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: a free one)")
    parser.add_argument(
        "--max_sessions",
        "--max-sessions",
        type=int,
        default=DEFAULT_MAX_SESSIONS,
        help=f"conversations kept in memory, the oldest dropped past it (default {DEFAULT_MAX_SESSIONS})",
    )
    parser.add_argument("--title", default="minillava", help="the page's title")
    return parser


def main(argv: list[str] | None = None) -> None:
    """`minillava web MODEL [--host H] [--port P] [flags]`: serves until interrupted."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = make_parser()
    args = parser.parse_args(argv)
    sampling = sampling_from_args(parser, args)
    if not 0 <= args.port <= 65535:
        parser.error("--port must be in 0..65535")
    if args.max_sessions < 1:
        parser.error("--max_sessions must be at least 1")
    chat = chat_model_from_args(args, sampling, "minillava web")
    demo = WebDemo(chat, int(args.max_image_mb * 2**20), args.max_sessions, args.title)
    try:
        server = make_server(demo, args.host, args.port)
    except OSError as error:
        raise SystemExit(f"minillava web: cannot listen on {args.host}:{args.port}: {error}") from None
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in str(host) else host
    print(f"minillava web: {describe(chat, args)}")
    print(f"minillava web: serving on http://{shown}:{port}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("", file=sys.stderr)
    finally:
        server.server_close()


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 56rem; margin: 1.5rem auto; padding: 0 1rem; color: #222; }
  header { display: flex; align-items: baseline; gap: 1rem; flex-wrap: wrap; }
  header h1 { font-size: 1.3rem; margin: 0; }
  #model { color: #666; font-size: .9rem; }
  main { display: grid; grid-template-columns: 16rem 1fr; gap: 1rem; margin-top: 1rem; }
  #side { display: flex; flex-direction: column; gap: .5rem; }
  #preview { max-width: 100%; max-height: 16rem; border: 1px solid #ccc; border-radius: 4px; display: none; }
  #image-status { font-size: .85rem; color: #555; min-height: 1.2em; }
  #chat { border: 1px solid #ccc; border-radius: 6px; padding: .75rem; min-height: 20rem; max-height: 60vh;
          overflow-y: auto; display: flex; flex-direction: column; gap: .5rem; }
  .message { padding: .5rem .75rem; border-radius: 6px; white-space: pre-wrap; max-width: 85%; }
  .user { background: #e8f0fe; align-self: flex-end; }
  .assistant { background: #f1f3f4; align-self: flex-start; }
  .assistant.streaming::after { content: " \\25CD"; color: #999; }
  .message img { display: block; max-width: 8rem; max-height: 8rem; margin-bottom: .25rem; }
  #error { color: #b00020; min-height: 1.2em; margin: .5rem 0; }
  form { display: flex; gap: .5rem; margin-top: .5rem; }
  #text { flex: 1; min-height: 2.5rem; font: inherit; padding: .4rem; }
  button { font: inherit; padding: .4rem 1rem; }
  @media (max-width: 40rem) { main { grid-template-columns: 1fr; } }
</style>
</head>
<body>
<header><h1>__TITLE__</h1><span id="model">__MODEL__</span></header>
<main>
  <section id="side">
    <label for="image">Image (goes with your next message, at most __MAX_IMAGE_MB__ MiB)</label>
    <input type="file" id="image" accept="image/*">
    <img id="preview" alt="the image of your next message">
    <div id="image-status"></div>
    <button type="button" id="reset">New conversation</button>
  </section>
  <section>
    <div id="chat" aria-live="polite"></div>
    <div id="error" role="alert"></div>
    <form id="form">
      <textarea id="text" placeholder="Ask about the image (Enter sends, Shift+Enter: new line)"></textarea>
      <button type="submit" id="send">Send</button>
    </form>
  </section>
</main>
<script>
const SESSION = "__SESSION__";
const MAX_IMAGE_BYTES = __MAX_IMAGE_BYTES__;
const $ = (id) => document.getElementById(id);
let pendingImage = null, busy = false;

function clearImage(keepInput) {
  pendingImage = null;
  $("preview").style.display = "none";
  $("image-status").textContent = "";
  if (!keepInput) $("image").value = "";
}

function showError(message) { $("error").textContent = message || ""; }

function addMessage(role, text, imageUrl) {
  const div = document.createElement("div");
  div.className = "message " + role;
  if (imageUrl) { const img = document.createElement("img"); img.src = imageUrl; div.appendChild(img); }
  const span = document.createElement("span");
  span.className = "text";
  span.textContent = text;
  div.appendChild(span);
  $("chat").appendChild(div);
  $("chat").scrollTop = $("chat").scrollHeight;
  return div;
}

async function errorOf(response) {
  try { return (await response.json()).error || response.statusText; } catch (e) { return response.statusText; }
}

$("image").addEventListener("change", async () => {
  const file = $("image").files[0];
  showError("");
  clearImage(true);
  if (!file) return;
  if (file.size > MAX_IMAGE_BYTES) {
    showError(file.name + " is " + (file.size / 1048576).toFixed(1) + " MiB, larger than the " +
              (MAX_IMAGE_BYTES / 1048576) + " MiB an image may be");
    $("image").value = "";
    return;
  }
  $("image-status").textContent = "uploading " + file.name + "...";
  try {
    const response = await fetch("/api/image?session=" + encodeURIComponent(SESSION), {
      method: "POST", body: file,
      headers: {"Content-Type": file.type || "application/octet-stream", "X-Filename": encodeURIComponent(file.name)},
    });
    if (!response.ok) throw new Error(await errorOf(response));
    const info = await response.json();
    pendingImage = URL.createObjectURL(file);
    $("preview").src = pendingImage;
    $("preview").style.display = "block";
    $("image-status").textContent = "image ready: " + info.name + " (" + info.width + "x" + info.height +
                                    "), goes with your next message";
  } catch (error) {
    $("image-status").textContent = "";
    showError(error.message);
    $("image").value = "";
  }
});

async function send() {
  const text = $("text").value.trim();
  if (!text || busy) return;
  busy = true;
  $("send").disabled = true;
  showError("");
  const user = addMessage("user", text, pendingImage);
  const assistant = addMessage("assistant", "");
  assistant.classList.add("streaming");
  assistant.dataset.events = "0";
  const out = assistant.querySelector(".text");
  $("text").value = "";
  try {
    const response = await fetch("/api/chat", {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({session: SESSION, text: text}),
    });
    if (!response.ok) throw new Error(await errorOf(response));
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "", finished = false;
    while (!finished) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let end;
      while ((end = buffer.indexOf("\\n\\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        if (!event.startsWith("data: ")) continue;
        const data = JSON.parse(event.slice(6));
        if (data.token !== undefined) {
          out.textContent += data.token;
          assistant.dataset.events = String(Number(assistant.dataset.events) + 1);
          $("chat").scrollTop = $("chat").scrollHeight;
        } else if (data.error) {
          throw new Error(data.error);
        } else if (data.done) {
          out.textContent = data.answer;
          finished = true;
        }
      }
    }
    if (!finished) throw new Error("the answer was cut off");
  } catch (error) {
    showError(error.message);
    if (!out.textContent) { assistant.remove(); user.remove(); $("text").value = text; }  // the turn was not kept
  } finally {
    if (out.textContent) { clearImage(); }  // it went with this turn
    assistant.classList.remove("streaming");
    assistant.classList.add("done");
    busy = false;
    $("send").disabled = false;
  }
}

$("form").addEventListener("submit", (event) => { event.preventDefault(); send(); });
$("text").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); send(); }
});
$("reset").addEventListener("click", async () => {
  if (busy) return;
  showError("");
  const response = await fetch("/api/reset", {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify({session: SESSION}),
  });
  if (!response.ok) { showError(await errorOf(response)); return; }
  $("chat").textContent = "";
  clearImage();
});
</script>
</body>
</html>
"""


__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "PAGE", "WebDemo", "describe_model", "main", "make_handler", "make_server"]
