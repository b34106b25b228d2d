"""TRL's SFTTrainer for minillava models: a connector learning rate, self-contained saves and pushes, a model card,
checkpoints that a kill or a full disk cannot leave half-written, and pushes that survive a failing Hub."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
from concurrent.futures import Future
from functools import partial
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import is_peft_model
from torch.utils.data import DataLoader
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, HubStrategy, SaveStrategy, seed_worker
from transformers.utils.hub import PushInProgress
from trl import SFTTrainer

from minillava.modeling import MiniVLMForConditionalGeneration
from minillava.processing import MiniLlavaProcessor

from ..checkpoints import PARTIAL_PREFIX
from ..hub.cards import CARD_NAME, model_card
from ..hub.push import is_ignored, upload_folder
from ..plots import LOSS_CURVE_NAME, save_loss_curve
from .build import save
from .packing import ModalityLengthGroupedSampler, PackedBatchSampler
from .recipes import arch_modules
from .tracking import resolve_report_to, stage_tensorboard


logger = logging.getLogger(__name__)

PICKLED_ARGS_NAME = "training_args.bin"  # transformers.trainer.TRAINING_ARGS_NAME: a pickle, never left in a folder
TRAINING_ARGS_NAME = "training_args.json"  # the arguments as JSON, secrets removed
SECRET_KEY = re.compile(r"secret|password|api_?key|access_key|_token$", re.IGNORECASE)


def training_args_json(args) -> str:
    """The training arguments as JSON without a secret: transformers' `to_dict` masks the `*_token` fields; other
    secret-named keys are masked too, and so is the value of every Hub token this process knows, wherever it is."""
    from huggingface_hub import get_token

    secrets = {value for value in (args.hub_token, os.environ.get("HF_TOKEN"), get_token()) if value}

    def scrub(value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            return {k: scrub(v, str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [scrub(v) for v in value]
        if SECRET_KEY.search(key) and value not in (None, "", False):
            return f"<{key.upper()}>"
        if isinstance(value, str):
            for secret in secrets:
                value = value.replace(secret, "<HF_TOKEN>")
        return value

    return json.dumps(scrub(args.to_dict()), indent=2, sort_keys=True, default=str) + "\n"


def save_training_args(args, folder: str | os.PathLike) -> None:
    """Writes `training_args.json` (see [`training_args_json`]) in `folder` and removes any pickled copy."""
    folder = Path(folder)
    partial_file = folder / f"_{TRAINING_ARGS_NAME}.tmp"
    partial_file.write_text(training_args_json(args), encoding="utf-8")
    os.replace(partial_file, folder / TRAINING_ARGS_NAME)
    (folder / PICKLED_ARGS_NAME).unlink(missing_ok=True)


def _out_of_space(error: BaseException) -> bool:
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        if isinstance(seen, RuntimeError) and ("write failed" in str(seen) or "No space left" in str(seen)):
            return True  # torch.save's zip writer reports a full disk as a RuntimeError
        seen = seen.__cause__ or seen.__context__
    return False


def _mib(size: float) -> str:
    return f"{size / 2**20:,.1f} MiB"


class MiniLlavaSFTTrainer(SFTTrainer):
    """[`~trl.SFTTrainer`] with what a minillava run needs on top:

    - `connector_lr`: a learning rate of its own for the connector (LLaVA's `--mm_projector_lr`);
    - every full-model save (final or checkpoint) goes through [`minillava.train.training.build.save`]: safetensors weights,
      processor, chat template and the code files, so each saved folder loads with `trust_remote_code=True`;
    - pushes during training also carry the code files (the Trainer only copies weights and configs);
    - a model card with the base model (a Hub id, never a local path), components, stage, data, hyperparameters,
      final metrics, the loss curve and how to load (see [`minillava.train.hub.cards`]); `save_loss_curve` writes
      `loss_curve.png` at the end of training;
    - `report_to: auto` (the shipped recipes) logs to TensorBoard where it is installed; a run that pushes during
      training writes those logs under `_tensorboard/` and moves them to `runs/` when training ends, so that no
      push uploads a growing event file (see [`minillava.train.training.tracking`]);
    - batches packed from the whole dataset (`packing`) or grouped by modality and length, from the dataset's
      `length` and `num_images` columns (see [`minillava.train.training.packing`]).

    Args:
        connector_lr (`float`, *optional*):
            Learning rate of the connector's parameters; the others use `args.learning_rate`.
        packing (`bool`, *optional*, defaults to `False`):
            Batches of `per_device_train_batch_size` rows of at most `args.max_length` tokens, filled by best-fit
            decreasing ([`PackedBatchSampler`]); the data collator must lay them out without padding
            ([`PaddingFreeCollator`]).
        group_by_modality_length (`bool`, *optional*, defaults to `False`):
            LLaVA's sampler: image and text-only samples in separate batches, similar lengths together.
        hub_push_retries (`int`, *optional*, defaults to 10), hub_push_backoff (`float`, *optional*, defaults to 2.0):
            How often a push is retried on transient Hub errors (5xx, 429, dropped connections), and the first wait
            in seconds (doubled each time; the server's `Retry-After` when it sends one).
        run_info (`dict`, *optional*):
            What the model card reports about the run: `stage`, `model_name_or_path`, `dataset_name`,
            `dataset_format`, `num_samples`, `num_skipped`, `quantization`, `tune_vision_tower`.
        *args, **kwargs: as for [`~trl.SFTTrainer`].
    """

    def __init__(
        self,
        *args,
        connector_lr: float | None = None,
        run_info: dict[str, Any] | None = None,
        packing: bool = False,
        group_by_modality_length: bool = False,
        hub_push_retries: int = 10,
        hub_push_backoff: float = 2.0,
        **kwargs,
    ):
        self.connector_lr = connector_lr
        self.hub_push_retries = hub_push_retries
        self.hub_push_backoff = hub_push_backoff
        self.failed_pushes: list[str] = []
        self._staging_root: Path | None = None
        self._deferred_push: str | None = None
        self.run_info = dict(run_info or {})
        self.packing = packing
        self.group_by_modality_length = group_by_modality_length
        if packing and group_by_modality_length:
            raise ValueError("Choose packing or group_by_modality_length: packed rows are filled across modalities.")
        training_args = kwargs.get("args", args[1] if len(args) > 1 else None)
        if training_args is not None:  # before the Trainer builds its reporting callbacks from it
            training_args.report_to = resolve_report_to(training_args.report_to)
        super().__init__(*args, **kwargs)
        stage_tensorboard(self)  # pushes during training never upload a growing event file
        if packing and self.args.max_length is None:
            raise ValueError("Packing needs max_length: it is the number of tokens of a packed row.")

    def _get_train_sampler(self, train_dataset=None):
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if self.group_by_modality_length:
            return ModalityLengthGroupedSampler(
                dataset["length"],
                [count > 0 for count in dataset["num_images"]],
                batch_size=self.args.per_device_train_batch_size,
                seed=self.args.seed,
            )
        return super()._get_train_sampler(train_dataset)

    def get_train_dataloader(self) -> DataLoader:
        """The Trainer's data loader; with `packing`, over the batches of a [`PackedBatchSampler`]."""
        if not self.packing:
            return super().get_train_dataloader()
        sampler = PackedBatchSampler(
            self.train_dataset["length"],
            max_length=self.args.max_length,
            rows_per_batch=self.args.per_device_train_batch_size,
            seed=self.args.seed,
            drop_last=self.args.dataloader_drop_last,
        )
        workers = self.args.dataloader_num_workers
        dataloader = DataLoader(
            self.train_dataset,
            batch_sampler=sampler,
            collate_fn=self.data_collator,
            num_workers=workers,
            pin_memory=self.args.dataloader_pin_memory,
            persistent_workers=self.args.dataloader_persistent_workers and workers > 0,
            prefetch_factor=self.args.dataloader_prefetch_factor if workers > 0 else None,
            worker_init_fn=partial(seed_worker, num_workers=workers, rank=self.args.process_index),
        )
        return self.accelerator.prepare(dataloader)

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """The Trainer's optimizer, with the connector's parameters in groups of their own at `connector_lr`."""
        if self.optimizer is not None or self.connector_lr is None:
            return super().create_optimizer(model)
        optimizer = super().create_optimizer(model)
        opt_model = self.model if model is None else model
        names = [name.rsplit(".", 1)[-1] for name in arch_modules(opt_model.config.model_type).connector]
        connector = {
            id(param)
            for name, param in opt_model.named_parameters()
            if param.requires_grad and any(f".{short}." in f".{name}." for short in names)
        }
        if not connector:
            raise ValueError(f"--connector_lr is set but no trainable parameter belongs to the connector ({names}).")
        groups = []
        for group in optimizer.param_groups:
            params = [param for param in group["params"] if id(param) in connector]
            if params:
                group["params"] = [param for param in group["params"] if id(param) not in connector]
                groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": params})
        optimizer.param_groups = [group for group in optimizer.param_groups if group["params"]]
        for group in groups:
            optimizer.add_param_group({**group, "lr": self.connector_lr})
        return optimizer

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        # On resume the Trainer loads an adapter with PEFT's `load_adapter`, which upcasts it to fp32, while TRL
        # trains the adapter of a quantized model in bf16: keep the dtypes the run started with, so that a resumed
        # QLoRA run continues exactly as the uninterrupted one.
        target = self.model if model is None else model
        dtypes = {name: param.dtype for name, param in target.named_parameters() if param.requires_grad}
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        for name, param in target.named_parameters():
            if name in dtypes and param.dtype != dtypes[name]:
                param.data = param.data.to(dtypes[name])

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self._staging_root is None and self.args.should_save:  # a final save: a checkpoint checked its space
            self._check_space(output_dir, self._weights_bytes())
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        full_model = isinstance(model, MiniVLMForConditionalGeneration) and not is_peft_model(model)
        if (
            full_model
            and state_dict is None
            and isinstance(self.processing_class, MiniLlavaProcessor)
            and not self.is_distributed_loading_by_transformers
        ):
            if self.args.should_save:
                save(model, self.processing_class, output_dir)
        else:
            super()._save(output_dir, state_dict)  # writes the arguments as a pickle, replaced below
        if self.args.should_save:
            save_training_args(self.args, output_dir)
            if is_peft_model(model):  # PEFT's card names the base by its local path: replaced by this run's
                self.create_model_card(folder=output_dir)

    # -- checkpoints: written under a hidden name, renamed to checkpoint-N once complete ----------------------------

    def _get_output_dir(self, trial) -> str:
        run_dir = super()._get_output_dir(trial)
        return str(self._staging_root) if self._staging_root is not None else run_dir

    def _weights_bytes(self) -> int:
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        if is_peft_model(model):  # the adapter and the modules trained in full
            tensors = [param for param in model.parameters() if param.requires_grad]
        else:
            tensors = list({tensor.data_ptr(): tensor for tensor in model.state_dict().values()}.values())
        return sum(tensor.numel() * tensor.element_size() for tensor in tensors)

    def _checkpoint_bytes(self) -> int:
        """What a checkpoint takes on disk: the saved weights and, unless `save_only_model`, the optimizer state."""
        size = self._weights_bytes()
        if not self.args.save_only_model and self.optimizer is not None:
            size += sum(
                value.numel() * value.element_size()
                for state in self.optimizer.state.values()
                for value in state.values()
                if torch.is_tensor(value)
            )
        return size

    @staticmethod
    def _check_space(folder: str | os.PathLike, size: int) -> None:
        """Refuses to start a save of `size` bytes (plus a tenth, and the small files) where they do not fit."""
        folder = Path(folder)
        existing = next((path for path in (folder, *folder.parents) if path.exists()), Path("."))
        need, have = int(size * 1.1) + 2**20, shutil.disk_usage(existing).free
        if need > have:
            raise OSError(errno.ENOSPC, f"no space left on {existing}: need {_mib(need)}, have {_mib(have)}")

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint, written to `.partial-checkpoint-N/` and renamed to `checkpoint-N` when it is
        complete: a kill or a full disk during the save leaves the previous checkpoint as the newest one. The free
        space is checked first; the push and the rotation of old checkpoints follow the rename."""
        run_dir = Path(super()._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging_root, final = run_dir / f"{PARTIAL_PREFIX}{name}", run_dir / name
        need, have = self._checkpoint_bytes(), None
        if self.args.should_save:
            shutil.rmtree(staging_root, ignore_errors=True)
            self._check_space(run_dir, need)
            have = shutil.disk_usage(run_dir).free
        self._staging_root, self._deferred_push = staging_root, None
        try:
            super()._save_checkpoint(model, trial)
            self.accelerator.wait_for_everyone()  # every rank has written its part
        except BaseException as error:
            # torch's zip writer may report a full disk as an iostream error: a disk left (nearly) full says it too
            full = _out_of_space(error) or (have is not None and shutil.disk_usage(run_dir).free < 2**20)
            if self.args.should_save:
                shutil.rmtree(staging_root, ignore_errors=True)
            if full:
                raise OSError(
                    errno.ENOSPC,
                    f"no space left on {run_dir}: need {_mib(need * 1.1)}, have {_mib(have or 0)}; "
                    f"{name} was not written, the previous checkpoint is still the one to resume from",
                ) from error
            raise
        finally:
            self._staging_root = None
        if self.args.should_save:
            self._publish_checkpoint(staging_root / name, final, staging_root)
        self.accelerator.wait_for_everyone()
        if self._deferred_push is not None:
            self._deferred_push = None
            self._push_from_checkpoint(str(final))
        if self.args.should_save:
            try:
                from transformers.trainer_utils import rotate_checkpoints
            except ImportError:  # transformers < 5: a method of the Trainer
                self._rotate_checkpoints(use_mtime=False, output_dir=str(run_dir))
            else:
                rotate_checkpoints(
                    output_dir=str(run_dir),
                    save_total_limit=self.args.save_total_limit,
                    best_model_checkpoint=self.state.best_model_checkpoint,
                    use_mtime=False,
                )

    def _publish_checkpoint(self, written: Path, final: Path, staging_root: Path) -> None:
        """Renames the complete checkpoint `written` to `final` (replacing an older save of the same step)."""
        state_path = written / "trainer_state.json"
        if self.state.best_model_checkpoint and str(staging_root) in self.state.best_model_checkpoint:
            self.state.best_model_checkpoint = str(final)
            self.state.save_to_json(str(state_path))
        if final.exists():
            old = final.with_name(f"{PARTIAL_PREFIX}old-{final.name}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(written, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(written, final)
        shutil.rmtree(staging_root, ignore_errors=True)

    # -- pushes: never a pickle, retried on transient errors, every failure reported ----------------------------------

    @property
    def hub_api(self):
        if getattr(self, "_hub_api", None) is None:
            from huggingface_hub import HfApi

            self._hub_api = HfApi(token=self.args.hub_token, library_name="minillava")
        return self._hub_api

    def _upload(self, folder: str | os.PathLike, message: str, path_in_repo: str | None = None, revision=None):
        return upload_folder(
            self.hub_api,
            folder,
            self.hub_model_id,
            message,
            revision=revision if revision is not None else self.args.hub_revision,
            path_in_repo=path_in_repo,
            retries=self.hub_push_retries,
            backoff=self.hub_push_backoff,
        )

    def _report_push(self, what: str, job: Future) -> None:
        error = job.exception()
        if error is not None:
            self.failed_pushes.append(f"{what}: {error}")
            attempts = getattr(error, "attempts", None)
            logger.error(
                "Push failed (%s)%s: %s. The files stay in %s; the next push, or `minillava push %s --hub_model_id "
                "%s`, uploads them.",
                what, f" after {attempts} attempts" if attempts and attempts > 1 else "", error,
                self.args.output_dir, self.args.output_dir, self.hub_model_id,
            )  # fmt: skip

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """As the Trainer's push during training (the model files of the checkpoint copied to `output_dir`, uploaded
        in the background; with `hub_strategy` checkpoint / all_checkpoints, the checkpoint folder too), with the code
        files, without pickles (the optimizer, scheduler and RNG states stay local), retried, failures reported.
        With `hub_always_push`, a push still reading `output_dir` is waited for before its files are replaced (a
        file changed under an upload fails its hash check or mixes two steps in one commit)."""
        if self._staging_root is not None:  # inside a checkpoint save: pushed once the checkpoint is renamed
            self._deferred_push = checkpoint_folder
            return
        if not self.is_world_process_zero() or self.args.hub_strategy == HubStrategy.END:
            return
        if not self.args.hub_always_push and self.push_in_progress is not None and not self.push_in_progress.is_done():
            return
        self._finish_current_push()
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        output_dir = Path(self.args.output_dir)
        for file in Path(checkpoint_folder).iterdir():
            if file.is_file() and not is_ignored(file.name) and file.name != "trainer_state.json":
                shutil.copy(file, output_dir / file.name)
        save_training_args(self.args, output_dir)
        step = f"step {self.state.global_step}"
        when = step if self.args.save_strategy == SaveStrategy.STEPS else f"epoch {int(self.state.epoch)}"
        message = f"Training in progress, {when}"
        jobs = [(f"model at {step}", self.hub_api.run_as_future(self._upload, output_dir, message))]
        if self.args.hub_strategy in (HubStrategy.CHECKPOINT, HubStrategy.ALL_CHECKPOINTS):
            in_repo = (
                "last-checkpoint" if self.args.hub_strategy == HubStrategy.CHECKPOINT else Path(checkpoint_folder).name
            )
            job = self.hub_api.run_as_future(self._upload, checkpoint_folder, message + ", checkpoint", in_repo)
            jobs.append((f"checkpoint at {step}", job))
        for what, job in jobs:
            job.add_done_callback(partial(self._report_push, what))
        if self.push_in_progress is None or self.push_in_progress.is_done():
            self.push_in_progress = PushInProgress([job for _, job in jobs])
        else:
            self.push_in_progress.jobs.extend(job for _, job in jobs)

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        **kwargs,
    ):
        """As [`~transformers.Trainer.push_to_hub`] (saves the model, writes the card, uploads `output_dir`),
        without pickles or checkpoints, retried on transient Hub errors; returns the commit (a future unless
        `blocking`)."""
        if token is not None and token != self.args.hub_token:
            self.args.hub_token, self._hub_api = token, None
        if self.hub_model_id is None:
            self.init_hf_repo(token=token)
        self._finish_current_push()  # before output_dir is rewritten: a push during training may still read it
        self.save_model(_internal_call=True)
        if not self.is_world_process_zero():
            return None
        model_name = kwargs.pop("model_name", None) or (self.args.hub_model_id or self.args.output_dir).split("/")[-1]
        self.create_model_card(model_name=model_name, **kwargs)
        message = commit_message or "End of training"
        if blocking:
            return self._upload(self.args.output_dir, message, revision=revision)
        return self.hub_api.run_as_future(self._upload, self.args.output_dir, message, None, revision)

    def create_model_card(
        self,
        model_name: str | None = None,
        dataset_name: str | None = None,
        tags: str | list[str] | None = None,
        folder: str | os.PathLike | None = None,
        **kwargs,
    ) -> None:
        """Writes `README.md` in `folder` (default `output_dir`; see [`minillava.train.hub.cards.model_card`]): base
        model as a Hub id, stage, data, hyperparameters, metrics, loss curve, usage."""
        if not self.is_world_process_zero():
            return
        folder = Path(folder if folder is not None else self.args.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        card = model_card(self, model_name=model_name, dataset_name=dataset_name, tags=tags, folder=folder)
        card.save(folder / CARD_NAME)

    def save_loss_curve(self) -> Path | None:
        """Writes `loss_curve.png` (training loss per step, evaluation loss if any) in `output_dir` on the main
        process; returns its path, or None where nothing was written (see [`save_loss_curve`])."""
        if not self.args.should_save:
            return None
        self._finish_current_push()  # a push during training may still read output_dir
        name = self.args.hub_model_id or Path(self.args.output_dir).name
        title = f"{name}: stage {self.run_info.get('stage', 'instruct')}, loss per step"
        Path(self.args.output_dir).mkdir(parents=True, exist_ok=True)
        return save_loss_curve(self.state.log_history, Path(self.args.output_dir) / LOSS_CURVE_NAME, title)


__all__ = ["MiniLlavaSFTTrainer", "model_card"]
