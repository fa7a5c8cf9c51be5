"""Test-wide settings: no network, few threads, seeded."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and far faster than on two when the cores are shared (use with
    `pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny_prior(tmp_path_factory):
    """A tiny random Stable Diffusion pipeline saved as a folder: the text-to-3D prior of the CLI tests."""
    from sdtoolkit.testing import tiny_sd_pipeline

    folder = tmp_path_factory.mktemp("prior")
    tiny_sd_pipeline().save_pretrained(folder)
    return folder
