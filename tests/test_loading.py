"""Where a checkpoint comes from: a local folder, or a Hub id (snapshot_download, mocked here: no network)."""

from __future__ import annotations

from pathlib import Path

import httpx
import huggingface_hub
import pytest
from huggingface_hub.errors import RepositoryNotFoundError

from hydra_core.loading import resolve_checkpoint


@pytest.fixture
def hub(monkeypatch, tmp_path):
    calls = []

    def snapshot_download(repo_id, **kwargs):
        calls.append(repo_id)
        if repo_id == "owner/missing":
            request = httpx.Request("GET", f"https://huggingface.co/api/models/{repo_id}")
            raise RepositoryNotFoundError("404 Repository Not Found", response=httpx.Response(404, request=request))
        folder = tmp_path / "hub" / repo_id.replace("/", "--")
        folder.mkdir(parents=True, exist_ok=True)
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


def test_a_mistyped_relative_path_is_named_not_sent_to_the_hub(hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()  # runs/ exists, runs/tiny does not (yet)
    with pytest.raises(FileNotFoundError) as error:
        resolve_checkpoint("runs/tiny")
    assert str(tmp_path / "runs" / "tiny") in str(error.value) and "does not exist" in str(error.value)
    for local in ("./tiny", "runs/tiny/extra", str(tmp_path / "nowhere")):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            resolve_checkpoint(local)
    assert hub == []  # none of them went to the Hub


def test_hub_ids_still_go_to_snapshot_download(hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_checkpoint("someone/hydra-tiny") == tmp_path / "hub" / "someone--hydra-tiny"
    assert hub == ["someone/hydra-tiny"]
    with pytest.raises(FileNotFoundError, match="neither a local folder .* nor a Hub repository"):
        resolve_checkpoint("owner/missing")


def test_a_local_folder_is_used_as_it_is(hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "tiny").mkdir(parents=True)
    assert resolve_checkpoint("runs/tiny") == Path("runs/tiny")
    assert hub == []
