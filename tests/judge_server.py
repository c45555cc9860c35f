"""A loopback server speaking the slice of the OpenAI chat API a served judge uses, over an
in-process `VQAJudge` (the tiny one in tests): what vLLM or sglang would answer, computed
by the same first-token logits. A helper for the scorer tests, not a test."""

from __future__ import annotations

import base64
import io
import json
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image


@contextmanager
def serve_judge(judge, model: str, whole: bool = False):
    """Yields the API's base URL; `model` is the name it serves (others get HTTP 404).
    `whole`: every token's log-probability, however few the request asks for."""
    lock = threading.Lock()  # one forward at a time through the shared tiny model

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def _send(self, code: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):  # noqa: N802 - http.server's name
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path != "/v1/chat/completions":
                return self._send(404, {"error": {"message": f"no route {self.path}"}})
            if body.get("model") != model:
                missing = f"The model `{body.get('model')}` does not exist."
                return self._send(404, {"error": {"message": missing}})
            content = body["messages"][0]["content"]
            url = next(c["image_url"]["url"] for c in content if c["type"] == "image_url")
            text = next(c["text"] for c in content if c["type"] == "text")
            image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")
            with lock:
                logprobs = judge.first_token_logits([image], [text])[0].log_softmax(-1)
            k = len(logprobs) if whole else min(int(body.get("top_logprobs", 0)), len(logprobs))
            top = logprobs.topk(k)
            entries = [{"token": judge.tokenizer.decode([int(i)]), "logprob": float(lp)}
                       for lp, i in zip(top.values, top.indices)]
            first = {**entries[0], "top_logprobs": entries}
            self._send(200, {"choices": [{"index": 0, "logprobs": {"content": [first]},
                                          "message": {"role": "assistant", "content": entries[0]["token"]}}]})

    class Server(ThreadingHTTPServer):
        request_queue_size = 128  # the client keeps 32 requests in flight
        daemon_threads = True

    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
