import os
import sys
from pathlib import Path

import pytest

# Tests never touch a real hub, and never spend minutes retrying one.
os.environ.setdefault("HF_HUB_OFFLINE", "0")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# fixtures of a local hub (olah on 127.0.0.1): olah_mirror, olah_hub, hf_endpoint
pytest_plugins = ["tests.olah_fixture"]


class Downloads(list):
    """A Downloader for ensure_model(download=...) that records the repo of each weight
    download started (the small JSON files the download set depends on are fetched
    separately, before) and then downloads for real."""

    def __call__(self, *args, **kwargs):
        from validator.adapters import hub

        self.append(args[0])
        return hub.download_files(*args, **kwargs)


@pytest.fixture
def downloads() -> Downloads:
    return Downloads()
