"""GenEval2's VQA judge served behind an OpenAI-compatible chat endpoint (vLLM, sglang).

What peers run at scale: the 8 B judge on GPUs of its own, many requests in flight, the
policy's GPUs left to the policy. Each (image, question) is one chat request for one token
with the first token's top log-probabilities (`logprobs`, `top_logprobs`); the soft score
sums the probabilities of the accepted answer forms' first tokens among them and the hard
answer reads the most likely token, as `rewards.vqa.VQAJudge` does with the whole
distribution in process. The forms' first tokens come from the judge's own tokenizer
(`--judge`: a hub id or directory; only its tokenizer files are read here).

The two agree exactly when the server returns every token the forms start with; with
`top_logprobs = 20` (vLLM's default limit) a form outside the top 20 adds nothing, which
lowers a soft score by at most the 21st token's probability per form: for a trained
judge asked a yes/no or count question, negligible.

Start a server (on the judge's GPUs) and point the run at it:

    vllm serve Qwen/Qwen3-VL-8B-Instruct --max-logprobs 20
    bench run --model sd35 --judge Qwen/Qwen3-VL-8B-Instruct --judge-url http://HOST:8000/v1
"""

from __future__ import annotations

import base64
import io
import json
import math
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from flowarena.core.hub import load_pretrained
from flowarena.rewards.base import RewardError
from flowarena.rewards.judge import HOW_TO_GET, SUFFIX, Judge


def data_url(image: Image.Image) -> str:
    """A lossless PNG in a data URL: the server decodes the very pixels the in-process judge reads."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class ServedJudge(Judge):
    """`model` served at `url` (the API's base, e.g. http://host:8000/v1)."""

    def __init__(self, url: str, model: str, top_logprobs: int = 20, concurrency: int = 32,
                 timeout: float = 600.0):
        from transformers import AutoTokenizer

        if not url.startswith(("http://", "https://")):
            raise RewardError(f"--judge-url {url!r} must be an http:// or https:// address, "
                              "e.g. http://localhost:8000/v1")
        self.url, self.model = url.rstrip("/"), model
        self.top_logprobs, self.concurrency, self.timeout = top_logprobs, concurrency, timeout
        self.tokenizer = load_pretrained(AutoTokenizer.from_pretrained, model, f"VQA judge {model}",
                                         RewardError, HOW_TO_GET)
        self._forms = {}

    def _token(self, entry: dict) -> str:
        """vLLM's `return_tokens_as_token_ids` names a token `token_id:N`; others by its text."""
        token = entry["token"]
        if token.startswith("token_id:"):
            return self.tokenizer.decode([int(token.split(":", 1)[1])])
        return token

    def _post(self, request: urllib.request.Request, retries: int = 2) -> dict:
        """The reply's JSON; a dropped connection (a busy server's full queue) is tried again."""
        for attempt in range(retries + 1):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read())
            except (ConnectionResetError, urllib.error.URLError) as e:
                reason = e if isinstance(e, ConnectionResetError) else getattr(e, "reason", None)
                if isinstance(e, urllib.error.HTTPError) or not isinstance(reason, ConnectionResetError) \
                        or attempt == retries:
                    raise
                time.sleep(0.5 * 2**attempt)
        return {}

    def _ask(self, image: Image.Image, question: str) -> list[tuple[str, float]]:
        """The first answer token's top log-probabilities, most likely first."""
        body = {"model": self.model, "max_tokens": 1, "temperature": 0.0, "logprobs": True,
                "top_logprobs": self.top_logprobs,
                "messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": data_url(image)}},
                    {"type": "text", "text": question}]}]}
        request = urllib.request.Request(f"{self.url}/chat/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            reply = self._post(request)
        except urllib.error.HTTPError as e:
            detail = (e.read().decode(errors="replace").strip().splitlines() or [""])[0][:160]
            raise RewardError(f"served judge {self.url}: HTTP {e.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise RewardError(f"served judge {self.url}: cannot reach it ({reason}); start the server "
                              "or check --judge-url") from None
        except ValueError:
            raise RewardError(f"served judge {self.url}: the reply is not JSON") from None
        try:
            top = reply["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
            ranked = sorted(((self._token(t), float(t["logprob"])) for t in top), key=lambda t: -t[1])
        except (KeyError, IndexError, TypeError, ValueError):
            raise RewardError(f"served judge {self.url}: the reply has no top log-probabilities; the "
                              "server must allow logprobs (vLLM: --max-logprobs 20)") from None
        if not ranked:
            raise RewardError(f"served judge {self.url}: the reply's top log-probabilities are empty")
        return ranked

    def answer(self, images: list[Image.Image], questions: list[str], answers: list[str],
               suffix: str = SUFFIX) -> tuple[np.ndarray, np.ndarray]:
        with ThreadPoolExecutor(self.concurrency) as pool:  # the server batches what is in flight
            replies = list(pool.map(self._ask, images, [q + suffix for q in questions]))
        soft, hard = np.zeros(len(questions)), np.zeros(len(questions), dtype=bool)
        for j, (ranked, expected) in enumerate(zip(replies, answers)):
            ids, forms = self.accepted(expected)
            firsts = {self.tokenizer.decode([i]) for i in ids}  # as the server names tokens: their text
            soft[j] = sum(math.exp(lp) for token, lp in ranked if token in firsts)
            hard[j] = ranked[0][0].lower() in forms
        return soft, hard
