"""Pushes that survive the Hub: `minillava sft --push_to_hub` against a local Hub that answers 500, 503 (with
Retry-After), 429 and dropped connections retries until the push lands; when the Hub stays down, every failed push is
reported, the run exits 1 saying how to finish, and `minillava push DIR` finishes it later, idempotently. Nothing
pushed is a pickle or holds the token."""

import contextlib
import io
import logging

import pytest
from hub_server import TOKEN, USER, Fault, run_client, serve_hub


REPO_ID = f"{USER}/tiny-llava-faults"
SECRET = "hf_secretTokenThatMustNeverBePushed0123"
PICKLES = (".bin", ".pt", ".pth", ".pkl", ".pickle")


def minillava_client(argv: list[str]) -> dict:
    """Client process: `minillava ARGV...`; returns its exit code, its stderr and minillava's log messages."""
    from minillava.train.cli import main

    messages: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("minillava")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            main(argv)
            code = 0
        except SystemExit as exit:
            code = exit.code
    return {"code": code, "stderr": stderr.getvalue(), "log": messages}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    from sft_helpers import build_tiny_models, write_llava_dataset

    root = tmp_path_factory.mktemp("faults")
    model = build_tiny_models(root / "built")["llava-1.5"][0]
    data, images = write_llava_dataset(root / "data", num_samples=8)
    return model, data, images


def sft_argv(workdir, output_dir, **options) -> list[str]:
    model, data, images = workdir
    options = {
        "config": "tiny-cpu-align",
        "model_name_or_path": model,
        "dataset_name": data,
        "image_folder": images,
        "output_dir": output_dir,
        "max_steps": 4,
        "push_to_hub": "true",
        "hub_model_id": REPO_ID,
        "hub_token": SECRET,
        "hub_push_backoff": 0.01,
        **options,
    }
    return ["sft", *(item for key, value in options.items() for item in (f"--{key}", str(value)))]


def repo_files(api, revision: str | None = None) -> set[str]:
    return set(api.list_repo_files(REPO_ID, revision=revision))


def assert_nothing_unsafe_pushed(api, tmp_path) -> None:
    from huggingface_hub import hf_hub_download

    files = repo_files(api)
    assert not [name for name in files if name.endswith(PICKLES)], files
    for name in files:
        path = hf_hub_download(REPO_ID, name, endpoint=api.endpoint, cache_dir=tmp_path / "check", token=TOKEN)
        assert SECRET.encode() not in open(path, "rb").read(), f"{name} holds the token"


def test_retries_count_their_attempts_and_refusals_are_not_retried():
    from minillava.train.hub.push import with_retries

    calls = []

    def fail(error):
        calls.append(error)
        raise error

    with pytest.raises(PermissionError) as refused:
        with_retries(lambda: fail(PermissionError("403 Forbidden")), "Pushing", retries=5, backoff=0.0)
    assert len(calls) == 1 and refused.value.attempts == 1
    calls.clear()
    with pytest.raises(ConnectionError) as dropped:
        with_retries(lambda: fail(ConnectionError("reset")), "Pushing", retries=2, backoff=0.0)
    assert len(calls) == 3 and dropped.value.attempts == 3


def test_pushes_are_retried_through_500_503_429_and_dropped_connections(workdir, tmp_path):
    from huggingface_hub import HfApi

    faults = [
        Fault("commit", 500, times=3),
        Fault("commit", 503, times=8, retry_after=0),
        Fault("preupload", 429, times=1, retry_after=1),
        Fault("lfs_batch", 502, times=1),
        Fault("storage_put", None, times=2),  # connections dropped during LFS uploads
    ]
    out = tmp_path / "out"
    argv = sft_argv(workdir, out, save_strategy="steps", save_steps=2, hub_strategy="checkpoint",
                    hub_always_push="true", hub_push_retries=20)  # fmt: skip
    with serve_hub(tmp_path / "hub", faults=faults) as endpoint:
        result = run_client(endpoint, tmp_path / "home", minillava_client, argv)
        assert result["code"] == 0, result
        assert all(fault.served == fault.times for fault in faults), faults
        assert any("retrying in" in message for message in result["log"]), result["log"]
        api = HfApi(endpoint=endpoint, token=TOKEN)
        titles = [commit.title for commit in api.list_repo_commits(REPO_ID)]
        assert titles[0] == "End of training" and "Training in progress, step 2" in titles
        files = repo_files(api)
        assert {
            "model.safetensors",
            "config.json",
            "modeling_minillava.py",
            "README.md",
            "training_args.json",
        } <= files
        assert {"last-checkpoint/model.safetensors", "last-checkpoint/trainer_state.json"} <= files
        assert not [name for name in files if name.startswith("last-checkpoint/") and "optimizer" in name]
        assert_nothing_unsafe_pushed(api, tmp_path)


def test_a_hub_that_stays_down_is_reported_and_minillava_push_finishes_later(workdir, tmp_path):
    from huggingface_hub import HfApi

    faults = [Fault("commit", 503, times=10**6)]
    out = tmp_path / "out"
    argv = sft_argv(workdir, out, save_strategy="steps", save_steps=2, hub_always_push="true", hub_push_retries=2)
    with serve_hub(tmp_path / "hub", faults=faults) as endpoint:
        result = run_client(endpoint, tmp_path / "home", minillava_client, argv)
        assert result["code"] == 1
        assert f"the model is saved in {out}" in result["stderr"]
        assert f"minillava push {out} --hub_model_id {REPO_ID}" in result["stderr"]
        failed = [message for message in result["log"] if message.startswith("Push failed")]
        assert any("model at step 2" in message for message in failed), result["log"]
        # each failed on the Hub's 503 after its retries: with hub_always_push a push waits for the one before it,
        # so no upload ever reads a file that the next checkpoint is replacing (which fails its hash check)
        assert all("after 3 attempts" in message for message in failed), failed
        assert {"model.safetensors", "config.json", "README.md", "training_args.json"} <= {
            p.name for p in out.iterdir()
        }
        api = HfApi(endpoint=endpoint, token=TOKEN)
        assert "model.safetensors" not in repo_files(api)

        faults.clear()  # the Hub is back
        push = ["push", str(out), "--hub_model_id", REPO_ID, "--backoff", "0.01"]
        assert run_client(endpoint, tmp_path / "home", minillava_client, push)["code"] == 0
        commits = len(api.list_repo_commits(REPO_ID))
        assert {"model.safetensors", "config.json", "README.md", "modeling_minillava.py"} <= repo_files(api)
        assert_nothing_unsafe_pushed(api, tmp_path)

        again = run_client(endpoint, tmp_path / "home", minillava_client, push)
        assert again["code"] == 0
        assert len(api.list_repo_commits(REPO_ID)) == commits, "pushing the same folder again made a commit"
