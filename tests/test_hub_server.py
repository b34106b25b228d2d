"""The local Hub of hub_server.py against the real clients: huggingface_hub, transformers' push_to_hub/from_pretrained.

The functions at the top are client code: each runs in a fresh process through `run_client`, with HF_ENDPOINT
pointing at the server, and returns plain data for the test to check.
"""

from __future__ import annotations

import hashlib
import http.client
import json
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from hub_server import run_client, serve_hub
from safetensors.numpy import save_file


REPO = "testuser/tiny"


def digests(folder: str | Path) -> dict[str, str]:
    """sha256 of every file below `folder`, by path relative to it."""
    folder = Path(folder)
    files = [path for path in folder.rglob("*") if path.is_file()]
    return {path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest() for path in files}


def make_folder(folder: Path) -> dict[str, str]:
    """A small repo folder: safetensors weights, a json, a text file and a file in a subfolder."""
    (folder / "sub" / "deeper").mkdir(parents=True)
    save_file({"weight": np.arange(12, dtype=np.float32).reshape(3, 4)}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"hidden_size": 4}))
    (folder / "notes.txt").write_text("some notes\n")
    (folder / "sub" / "deeper" / "data.json").write_text('{"x": [1, 2, 3]}')
    return digests(folder)


# -- client code (runs in a child process) -----------------------------------------------------------------------


def upload_and_download(folder: str) -> dict:
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    api = HfApi()
    url = api.create_repo(REPO)
    commit = api.upload_folder(folder_path=folder, repo_id=REPO, commit_message="add files")
    files = api.list_repo_files(REPO)
    tree = {entry.path: getattr(entry, "lfs", None) is not None for entry in api.list_repo_tree(REPO, recursive=True)}
    info = api.model_info(REPO, files_metadata=True)
    downloads = {}
    for path in files:
        downloads[path] = hashlib.sha256(Path(hf_hub_download(REPO, path)).read_bytes()).hexdigest()
    return {
        "url": url,
        "repo_id": url.repo_id,
        "commit": commit.oid,
        "sha": info.sha,
        "files": files,
        "tree": tree,
        "sizes": {sibling.rfilename: sibling.size for sibling in info.siblings},
        "downloads": downloads,
        "snapshot": digests(snapshot_download(REPO)),
        "top_level": sorted(entry.path for entry in api.list_repo_tree(REPO)),
        "sub": sorted(entry.path for entry in api.list_repo_tree(REPO, path_in_repo="sub", recursive=True)),
    }


def overwrite_and_read_back(folder: str) -> dict:
    from huggingface_hub import HfApi, hf_hub_download

    api = HfApi()
    api.create_repo(REPO)
    first = api.upload_folder(folder_path=folder, repo_id=REPO).oid
    unchanged = api.upload_folder(folder_path=folder, repo_id=REPO).oid  # nothing changed: no new commit
    second = api.upload_file(path_or_fileobj=b'{"hidden_size": 8}', path_in_repo="config.json", repo_id=REPO).oid
    api.delete_file("notes.txt", repo_id=REPO)

    def read(revision: str) -> str:
        return Path(hf_hub_download(REPO, "config.json", revision=revision)).read_text()

    return {
        "first": first,
        "unchanged": unchanged,
        "second": second,
        "old": read(first),
        "new": read("main"),
        "old_files": api.list_repo_files(REPO, revision=first),
        "new_files": api.list_repo_files(REPO),
        "titles": [commit.title for commit in api.list_repo_commits(REPO)],
    }


def error_classes() -> dict:
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    api = HfApi()
    api.create_repo(REPO)
    api.create_repo("testuser/secret", private=True)
    raised = {}
    for name, call in {
        "missing_file": lambda: hf_hub_download(REPO, "nope.json"),
        "missing_repo": lambda: hf_hub_download("testuser/nope", "config.json"),
        "missing_revision": lambda: hf_hub_download(REPO, ".gitattributes", revision="nope"),
        "missing_repo_info": lambda: api.model_info("testuser/nope"),
        "existing_repo": lambda: api.create_repo(REPO),
        "anonymous_private": lambda: api.model_info("testuser/secret", token=False),
    }.items():
        try:
            call()
        except (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError, HfHubHTTPError) as error:
            raised[name] = type(error).__name__
    return {
        "raised": raised,
        "repo_exists": [api.repo_exists(REPO), api.repo_exists("testuser/nope")],
        "file_exists": [api.file_exists(REPO, ".gitattributes"), api.file_exists(REPO, "nope.json")],
        "exist_ok": api.create_repo(REPO, exist_ok=True).repo_id,
        "private": api.model_info("testuser/secret").private,
    }


def repos_branches_and_prs() -> dict:
    from huggingface_hub import HfApi, hf_hub_download

    api = HfApi()
    user = api.whoami()["name"]
    bare = api.create_repo("bare-name").repo_id  # the Trainer creates repos without a namespace
    dataset = api.create_repo("testuser/data", repo_type="dataset").repo_id
    api.upload_file(path_or_fileobj=b'{"a": 1}\n', path_in_repo="train.jsonl", repo_id=dataset, repo_type="dataset")
    api.create_branch(bare, branch="dev")
    api.create_branch(bare, branch="dev", exist_ok=True)
    api.upload_file(path_or_fileobj=b"on dev", path_in_repo="dev.txt", repo_id=bare, revision="dev")
    pr = api.upload_file(path_or_fileobj=b"in a PR", path_in_repo="pr.txt", repo_id=bare, create_pr=True)
    refs = api.list_repo_refs(bare, include_pull_requests=True)
    result = {
        "user": user,
        "bare": bare,
        "dataset_files": api.list_repo_files(dataset, repo_type="dataset"),
        "dataset_line": Path(hf_hub_download(dataset, "train.jsonl", repo_type="dataset")).read_text(),
        "branches": sorted(branch.name for branch in refs.branches),
        "pull_requests": [ref.ref for ref in refs.pull_requests],
        "pr_revision": pr.pr_revision,
        "pr_file": Path(hf_hub_download(bare, "pr.txt", revision=pr.pr_revision)).read_text(),
        "dev_file": Path(hf_hub_download(bare, "dev.txt", revision="dev")).read_text(),
        "main_files": api.list_repo_files(bare),
    }
    api.delete_repo(dataset, repo_type="dataset")
    api.delete_repo(dataset, repo_type="dataset", missing_ok=True)
    result["dataset_exists_after_delete"] = api.repo_exists(dataset, repo_type="dataset")
    return result


def push_and_pull_model() -> dict:
    import torch
    from huggingface_hub import HfApi
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4
    )
    model = LlamaForCausalLM(config)
    model.push_to_hub(REPO)
    loaded = AutoModelForCausalLM.from_pretrained(REPO)
    with torch.no_grad():
        model.model.norm.weight.add_(1.0)
    model.push_to_hub(REPO, revision="dev")
    loaded_dev = AutoModelForCausalLM.from_pretrained(REPO, revision="dev")

    def differences(other: torch.nn.Module) -> list[str]:
        theirs = other.state_dict()
        return [name for name, tensor in model.state_dict().items() if not torch.equal(tensor, theirs[name])]

    api = HfApi()
    return {
        "files": api.list_repo_files(REPO),
        "lfs": [entry.path for entry in api.list_repo_tree(REPO) if getattr(entry, "lfs", None)],
        "class": type(loaded).__name__,
        "main_differs": differences(loaded),
        "dev_differs": differences(loaded_dev),
    }


def push_and_pull_tokenizer() -> dict:
    from tiny import make_tokenizer
    from transformers import AutoTokenizer

    tokenizer = make_tokenizer()
    tokenizer.push_to_hub(REPO)
    loaded = AutoTokenizer.from_pretrained(REPO)
    text = "USER: <image> What is in the image? ASSISTANT: A red circle."
    return {
        "ids": [tokenizer(text).input_ids, loaded(text).input_ids],
        "vocab_equal": tokenizer.get_vocab() == loaded.get_vocab(),
        "special": [tokenizer.all_special_tokens, loaded.all_special_tokens],
    }


def push_and_load_datasets() -> dict:
    from datasets import Dataset, load_dataset
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo("testuser/json-data", repo_type="dataset")
    lines = b'{"text": "a", "label": 0}\n{"text": "b", "label": 1}\n'
    api.upload_file(
        path_or_fileobj=lines, path_in_repo="data/train.jsonl", repo_id="testuser/json-data", repo_type="dataset"
    )
    Dataset.from_dict({"x": [1, 2, 3], "y": ["a", "b", "c"]}).push_to_hub("testuser/parquet-data")
    return {
        "json": load_dataset("testuser/json-data")["train"].to_dict(),
        "parquet_files": api.list_repo_files("testuser/parquet-data", repo_type="dataset"),
        "parquet": load_dataset("testuser/parquet-data")["train"].to_dict(),
    }


# -- tests ---------------------------------------------------------------------------------------------------------


def test_upload_folder_list_and_download(tmp_path):
    local = make_folder(tmp_path / "folder")
    with serve_hub(tmp_path / "hub") as endpoint:
        result = run_client(endpoint, tmp_path / "home", upload_and_download, str(tmp_path / "folder"))
    assert result["url"] == f"{endpoint}/{REPO}"
    assert result["repo_id"] == REPO
    assert result["sha"] == result["commit"]
    assert sorted(result["files"]) == sorted([".gitattributes", *local])
    assert result["tree"] == {
        ".gitattributes": False,
        "config.json": False,
        "model.safetensors": True,  # stored with LFS: uploaded through the LFS batch API, downloaded by redirect
        "notes.txt": False,
        "sub": False,
        "sub/deeper": False,
        "sub/deeper/data.json": False,
    }
    assert result["sizes"]["model.safetensors"] == (tmp_path / "folder" / "model.safetensors").stat().st_size
    assert {path: result["downloads"][path] for path in local} == local
    assert {path: result["snapshot"][path] for path in local} == local
    assert result["top_level"] == [".gitattributes", "config.json", "model.safetensors", "notes.txt", "sub"]
    assert result["sub"] == ["sub/deeper", "sub/deeper/data.json"]


def test_new_commit_keeps_the_old_revision(tmp_path):
    make_folder(tmp_path / "folder")
    with serve_hub(tmp_path / "hub") as endpoint:
        result = run_client(endpoint, tmp_path / "home", overwrite_and_read_back, str(tmp_path / "folder"))
    assert result["unchanged"] == result["first"] != result["second"]
    assert json.loads(result["old"]) == {"hidden_size": 4}
    assert json.loads(result["new"]) == {"hidden_size": 8}
    assert "notes.txt" in result["old_files"] and "notes.txt" not in result["new_files"]
    assert result["titles"] == [
        "Delete notes.txt with huggingface_hub",
        "Upload config.json with huggingface_hub",
        "Upload folder using huggingface_hub",
        "initial commit",
    ]


def test_errors_are_the_hub_errors(tmp_path):
    with serve_hub(tmp_path / "hub") as endpoint:
        result = run_client(endpoint, tmp_path / "home", error_classes)
    assert result["raised"] == {
        "missing_file": "RemoteEntryNotFoundError",  # a subclass of EntryNotFoundError
        "missing_repo": "RepositoryNotFoundError",
        "missing_revision": "RevisionNotFoundError",
        "missing_repo_info": "RepositoryNotFoundError",
        "existing_repo": "HfHubHTTPError",
        "anonymous_private": "RepositoryNotFoundError",
    }
    assert result["repo_exists"] == [True, False]
    assert result["file_exists"] == [True, False]
    assert result["exist_ok"] == REPO
    assert result["private"] is True


def test_repo_types_branches_and_pull_requests(tmp_path):
    with serve_hub(tmp_path / "hub") as endpoint:
        result = run_client(endpoint, tmp_path / "home", repos_branches_and_prs)
    assert result["user"] == "testuser"
    assert result["bare"] == "testuser/bare-name"
    assert result["dataset_files"] == [".gitattributes", "train.jsonl"]
    assert result["dataset_line"] == '{"a": 1}\n'
    assert result["branches"] == ["dev", "main"]
    assert result["pull_requests"] == ["refs/pr/1"] and result["pr_revision"] == "refs/pr/1"
    assert (result["pr_file"], result["dev_file"]) == ("in a PR", "on dev")
    assert result["main_files"] == [".gitattributes"]
    assert result["dataset_exists_after_delete"] is False


def test_transformers_push_to_hub_and_from_pretrained(tmp_path):
    with serve_hub(tmp_path / "hub") as endpoint:
        result = run_client(endpoint, tmp_path / "home", push_and_pull_model)
    assert {"config.json", "generation_config.json", "model.safetensors", "README.md"} <= set(result["files"])
    assert result["lfs"] == ["model.safetensors"]
    assert result["class"] == "LlamaForCausalLM"
    assert result["main_differs"] == ["model.norm.weight"]  # changed after the first push, pushed to "dev" only
    assert result["dev_differs"] == []


def test_tokenizer_push_to_hub_and_from_pretrained(tmp_path):
    with serve_hub(tmp_path / "hub") as endpoint:
        result = run_client(endpoint, tmp_path / "home", push_and_pull_tokenizer)
    original, loaded = result["ids"]
    assert original == loaded
    assert result["vocab_equal"]
    assert result["special"][0] == result["special"][1]


def test_datasets_push_to_hub_and_load_dataset(tmp_path):
    pytest.importorskip("datasets")
    with serve_hub(tmp_path / "hub") as endpoint:
        result = run_client(endpoint, tmp_path / "home", push_and_load_datasets)
    assert result["json"] == {"text": ["a", "b"], "label": [0, 1]}
    assert result["parquet_files"] == [".gitattributes", "README.md", "data/train-00000-of-00001.parquet"]
    assert result["parquet"] == {"x": [1, 2, 3], "y": ["a", "b", "c"]}


def test_in_process_client_with_endpoint_argument(tmp_path):
    """In the test process, without HF_ENDPOINT: endpoint= and cache_dir= everywhere, and a server with lfs=False,
    since Xet may be on here. create_commit rather than upload_folder, which with Xet on opens an hf_xet session
    that writes logs under the HF_HOME of import time (~/.cache/huggingface)."""
    from huggingface_hub import CommitOperationAdd, HfApi, constants, hf_hub_download, snapshot_download

    if constants.HF_HUB_OFFLINE:
        pytest.skip("huggingface_hub was imported with HF_HUB_OFFLINE=1")
    local = make_folder(tmp_path / "folder")
    with serve_hub(tmp_path / "hub", lfs=False) as endpoint:
        api = HfApi(endpoint=endpoint, token="any-token")
        api.create_repo(REPO)
        operations = [CommitOperationAdd(name, tmp_path / "folder" / name) for name in local]
        api.create_commit(REPO, operations=operations, commit_message="add files")
        cache = tmp_path / "cache"
        path = hf_hub_download(REPO, "model.safetensors", endpoint=endpoint, cache_dir=cache, token="any-token")
        snapshot = snapshot_download(REPO, endpoint=endpoint, cache_dir=cache, token="any-token")
        assert all(entry.lfs is None for entry in api.list_repo_tree(REPO, recursive=True) if hasattr(entry, "lfs"))
    assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == local["model.safetensors"]
    assert {name: digest for name, digest in digests(snapshot).items() if name in local} == local


def test_state_survives_a_restart(tmp_path):
    from huggingface_hub import HfApi

    with serve_hub(tmp_path / "hub", lfs=False) as endpoint:
        HfApi(endpoint=endpoint, token="any-token").create_repo(REPO)
    with serve_hub(tmp_path / "hub") as endpoint:
        assert HfApi(endpoint=endpoint, token="any-token").list_repo_files(REPO) == [".gitattributes"]


def test_chunked_request_body_keeps_the_connection_in_step(tmp_path):
    with serve_hub(tmp_path / "hub") as endpoint:
        connection = http.client.HTTPConnection(urlsplit(endpoint).netloc)
        body = iter([b'{"name": "chun', b'ked"}'])  # no length: http.client sends it chunked
        connection.request("POST", "/api/repos/create", body=body, headers={"Authorization": "Bearer any-token"})
        assert json.loads(connection.getresponse().read())["url"] == f"{endpoint}/testuser/chunked"
        connection.request("GET", "/api/models/testuser/chunked")  # the same keep-alive connection
        assert json.loads(connection.getresponse().read())["id"] == "testuser/chunked"
        connection.close()
