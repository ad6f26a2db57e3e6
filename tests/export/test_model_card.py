"""Model cards of runs, checkpoints and exports describe a masked diffusion LM (sft/training/model_card.py),
their usage snippet loads the export with transformers, and `export --push-to-hub` uploads it.

A Dream LoRA run from the hub id, on a hub dataset, through the stand-in hub cache (offline); the push
goes through the real `HfApi` to a local HTTP server that speaks the hub's upload API."""

from __future__ import annotations

import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import ModelCard

from sft.cli import main
from sft.sampling.loading import load_for_sampling
from tests.e2e.test_recipes import CPU
from tests.hub_cache import SMOLTALK, use_hub_cache

DREAM = "Dream-org/Dream-v0-Instruct-7B"
PLACEHOLDERS = ("[More Information Needed]", 'pipeline("text-generation"', "TRL")


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, hub_cache_dir) -> Path:
    """Two LoRA steps of the Dream recipe on SmolTalk, saving a checkpoint at each step."""
    root = tmp_path_factory.mktemp("card_run")
    with pytest.MonkeyPatch.context() as patch:
        use_hub_cache(patch, hub_cache_dir, root / ".datasets_cache")
        overrides = [
            f"model.name_or_path={DREAM}",
            f"data.train={{name: {SMOLTALK}, config: everyday-conversations}}",
            "data.max_length=32",
            f"data.cache_dir={root / 'tokenized'}",
            f"training.output_dir={root / 'run'}",
            "training.max_steps=2",
            "training.per_device_train_batch_size=4",
            "training.gradient_accumulation_steps=1",
            "training.logging_steps=1",
            "training.save_steps=1",
            *CPU,
        ]
        assert main(["train", "recipes/dream-7b/sft_lora.yaml", *overrides]) == 0
    return root / "run"


def test_run_and_checkpoint_cards_describe_the_diffusion_lm_not_a_placeholder(lora_run, hub_cache, capsys):
    for directory in (lora_run, lora_run / "checkpoint-1", lora_run / "checkpoint-2"):
        text = (directory / "README.md").read_text()
        card = ModelCard.load(directory / "README.md")
        assert not any(p in text for p in PLACEHOLDERS), directory
        assert card.data.base_model == DREAM and card.data.datasets == [SMOLTALK]
        assert card.data.library_name == "peft" and card.data.pipeline_tag == "text-generation"
        assert {"dlm-sft", "diffusion-lm", "dream", "lora"} <= set(card.data.tags)
        assert "masked diffusion" in text and "hub_cache" not in text and "snapshots" not in text
        assert f"dlm-sft generate {directory}" in text
    final = (lora_run / "README.md").read_text()
    losses = [
        e["loss"]
        for e in json.loads((lora_run / "trainer_state.json").read_text())["log_history"]
        if "loss" in e
    ]
    assert f"| final train loss | {losses[-1]:.4f} |" in final and "recipes/dream-7b/sft_lora.yaml" in final
    assert "| optimizer steps | 2 |" in final
    # The card's `dlm-sft generate RUN` works: the adapter's base is the hub id, read from the cache.
    assert main(["generate", str(lora_run), "--prompt", "Sort 321", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.strip()


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


@pytest.mark.parametrize("layout", ["dream", "native"])
def test_export_card_snippet_loads_the_export_with_transformers(
    layout, lora_run, hub_cache, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    assert main(["export", str(lora_run), "--output", "exported", "--format", layout]) == 0
    card = ModelCard.load(tmp_path / "exported" / "README.md")
    assert card.data.base_model == DREAM and card.data.library_name == "transformers"
    assert "lora" in card.data.tags and not any(p in card.text for p in PLACEHOLDERS)

    namespace: dict = {}
    exec(python_blocks(card.text)[0], namespace)  # the card's first snippet, as a user runs it
    ids = torch.tensor([[1, 5, 9, 3, 3, 3]])
    reference = load_for_sampling(tmp_path / "exported", device="cpu")
    with torch.no_grad():
        expected = reference.model(ids).logits
        got = namespace["model"].eval()(ids).logits
    assert namespace["model"].config.is_causal is False
    assert torch.allclose(got, expected, atol=1e-5)  # the same bidirectional model dlm-sft samples
    assert "dlm-sft generate exported" in card.text


class FakeHub:
    """The hub's repo-creation and commit API on a local port: records what it receives."""

    def __init__(self) -> None:
        self.files: dict[str, dict[str, bytes]] = {}
        self.authorization: set[str | None] = set()
        self.card_metadata: dict = {}
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def reply(self, payload: dict, code: int = 200) -> None:
                body = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self.reply({"error": "not found"}, 404)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                host = f"http://{self.headers['Host']}"
                if self.path == "/api/repos/create":
                    spec = json.loads(body)
                    name = "/".join(p for p in (spec.get("organization"), spec["name"]) if p)
                    hub.files.setdefault(name, {})
                    return self.reply({"url": f"{host}/{name}"})
                hub.authorization.add(self.headers.get("authorization"))
                if self.path == "/api/validate-yaml":  # the card's metadata header must parse as YAML
                    header = json.loads(body)["content"].split("---")[1]
                    hub.card_metadata = yaml.safe_load(header)
                    return self.reply({"errors": [], "warnings": []})
                if "/preupload/" in self.path:
                    files = json.loads(body)["files"]
                    return self.reply(
                        {
                            "files": [
                                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                for f in files
                            ]
                        }
                    )
                if "/commit/" in self.path:
                    repo = self.path.removeprefix("/api/models/").split("/commit/")[0]
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            content = base64.b64decode(item["value"]["content"])
                            hub.files[repo][item["value"]["path"]] = content
                    return self.reply({"commitUrl": f"{host}/{repo}/commit/1", "commitOid": "1" * 40})
                self.reply({"error": "not found"}, 404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_export_push_to_hub_uploads_the_export_with_a_card_naming_the_repo(
    lora_run, hub_cache, tmp_path, monkeypatch, capsys
):
    from huggingface_hub import constants

    hub = FakeHub()
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    # Online, but the only server is the fake hub: the base model still resolves from the cache.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_pushtoken0123456789")

    out = tmp_path / "exported"
    assert main(["export", str(lora_run), "--output", str(out), "--push-to-hub", "me/dream-my-domain"]) == 0
    pushed = hub.files["me/dream-my-domain"]
    assert set(pushed) == {p.name for p in out.iterdir()}
    assert all(pushed[name] == (out / name).read_bytes() for name in pushed)
    assert hub.authorization == {"Bearer hf_pushtoken0123456789"}
    card = pushed["README.md"].decode()
    assert 'from_pretrained("me/dream-my-domain"' in card and "dlm-sft generate me/dream-my-domain" in card
    assert hub.card_metadata["base_model"] == DREAM and hub.card_metadata["pipeline_tag"] == "text-generation"
    assert "pushed to me/dream-my-domain" in capsys.readouterr().out
