"""Adapters onto a base model: a fresh adapter attached for training (`attach_adapter`), and
existing adapters loaded onto the suite's base and switched between (their files are
inspected in harness/adapters.py first): adapters of one peft type load beside each other
on one base, another type unloads the others, and an adapter file that writes into the base's
own weights leaves the arms after it a freshly loaded base."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from harness.errors import ModelSourceError
from harness.run import adapters, modeling, peftconfig
from harness.suite.config import ModelSpec, Quantization, TrainSpec


def name_base(model, base: str) -> None:
    """What the adapter's ``adapter_config.json`` will say it was trained on: the base as the
    suite named it (``ModelSource.label``: a hub id, a local path, ``package:file``). peft
    would write the folder the weights loaded from, which for a packaged GGUF is the converted
    copy in this machine's model cache: meaningless anywhere else."""
    for cfg in model.peft_config.values():
        cfg.base_model_name_or_path = base


def attach_adapter(model, train: TrainSpec, quant: Quantization | None = None, *,
                   total_steps: int | None = None, base_folder: Path | None = None):
    """Wrap for training with the recipe's peft method; a model loaded with ``quant`` (QLoRA)
    is frozen first (fp16 compute: peft's k-bit preparation). ``total_steps``: AdaLoRA's
    schedule; ``base_folder``: the base's safetensors, which LoftQ reads."""
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import set_seed

    # LoRA's A matrices are drawn from torch's global generator when the adapter is attached,
    # before the Trainer seeds anything: unseeded, the adapter depended on what ran earlier in
    # the process (a cached baseline or a computed one gave losses 0.0374 vs 0.0402).
    set_seed(train.seed)
    if quant and quant.compute_dtype == "float16":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=train.gradient_checkpointing
        )
    else:
        if quant:
            _freeze_without_upcast(model)
        if train.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.enable_input_require_grads()
    try:
        wrapped = get_peft_model(model, peftconfig.peft_config(train, total_steps))
    except ValueError as e:
        raise ModelSourceError(f"train.target_modules: {e}") from e
    if train.method == "loftq":
        peftconfig.loftq_init(wrapped, base_folder)
    return wrapped


def _freeze_without_upcast(model) -> None:
    """peft's k-bit preparation casts every frozen non-4-bit weight (norms, embeddings, LM head)
    to fp32. With fp16 compute that keeps activations inside fp16's range; with bf16 or fp32
    compute it buys nothing (the values stay what they were) and makes every norm output fp32:
    on a TinyLlama-shaped model at 8 x 512 tokens that took QLoRA's peak from below LoRA's to
    15.1 GiB against LoRA's 13.2 GiB. So those weights stay in the load dtype; they are frozen
    all the same."""
    for param in model.parameters():
        param.requires_grad = False


def switch_adapter(model, source: str, name: str, revision: str | None, peft_type: str):
    """``model`` (the base, or a PeftModel around it) with adapter ``name`` active. Adapters
    of one peft type load beside each other; peft cannot hold two types at once (LoRA and
    IA3), so a new type first unloads the others, which gives back the untouched base
    modules. Either way the base's weights are never reloaded. A file whose tensors did not
    all land in the adapter, or that holds tensors the model has no place for, raises
    AdapterError: its arm would otherwise be scored with freshly initialised weights."""
    from peft import PeftModel

    kw = {"revision": revision} if revision else {}
    model = unload_other_type(model, peft_type)
    if not isinstance(model, PeftModel):
        model = _wrap(model, source, name, kw)
    _check_loaded(model.load_adapter(source, adapter_name=name, **kw), name,
                  model.peft_config[name].is_prompt_learning)
    model.set_adapter(name)
    model.eval()
    return model


def unload_other_type(model, peft_type: str):
    """``model`` ready for an adapter of ``peft_type``: a PeftModel of another type unloaded.
    Unloading hands back the base modules, except that a modules_to_save module comes back
    as the active adapter's copy (peft keeps it), so callers that need the untouched base
    check it (BaseWeights)."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        # peft annotates peft_type as str | None; a loaded adapter's is a PeftType enum
        current = str(model.peft_config[model.active_adapter].peft_type.value)  # type: ignore[union-attr]
        if current != peft_type:
            return model.unload()
    return model


def _wrap(model, source: str, name: str, kw: dict[str, Any]):
    """What PeftModel.from_pretrained builds before it loads the weights (whose load result
    it only warns about; load_adapter returns it)."""
    from peft import PeftConfig, PeftModel
    from peft.auto import MODEL_TYPE_TO_PEFT_MODEL_MAPPING

    cfg = PeftConfig.from_pretrained(source, **kw)
    cfg.inference_mode = True
    cls = MODEL_TYPE_TO_PEFT_MODEL_MAPPING.get(cfg.task_type, PeftModel)
    return cls(model, cfg, name)


def _check_loaded(result, name: str, prompt_learning: bool) -> None:
    """peft's load result: adapter tensors the file lacked (load_adapter keeps only those in
    missing_keys) and file tensors that landed nowhere (a prompt-learning adapter's
    `prompt_embeddings` load outside the model's state dict, so are not among them)."""
    extra = [] if prompt_learning else [k for k in result.unexpected_keys
                                        if not adapters.wrapper_copy(k)]
    for what, keys in (("lacks", result.missing_keys), ("holds", extra)):
        if keys:
            which = ("of the adapter's tensors" if what == "lacks"
                     else "tensors the model has no place for")
            raise adapters.AdapterError(f"adapters.{name}: its weights file {what} {len(keys)} "
                                        f"{which} ({adapters.first_keys(keys, name)})")


class BaseWeights:
    """What the shared base's parameters hold, to tell whether loading an adapter wrote into
    them: an adapter file may carry base weights (``lm_head.base_layer.weight``, which peft
    saves with a LoRA on an embedding or the head), and peft loads them into the base that
    every later arm shares. Names are the bare base's (the model under peft's wrapper,
    ``.base_layer``, ``.original_module`` taken out), so adapter tensors are never compared.

    Every in-place write bumps a tensor's version counter, and a replaced tensor is another
    object, so only parameters marked touched are hashed again (hashing all of SmolLM2-135M
    takes ~0.5 s on 2 CPU cores; a check that touched nothing, microseconds)."""

    def __init__(self, model) -> None:
        params = dict(_bare_params(model))
        self.digests = {n: _param_digest(p) for n, p in params.items()}
        self.marks = {n: _mark(p) for n, p in params.items()}

    def changed(self, model) -> list[str]:
        """Base parameters whose content is no longer what it was (a missing one counts)."""
        params = dict(_bare_params(model))
        out = []
        for n, digest in self.digests.items():
            p = params.get(n)
            if p is not None and _mark(p) == self.marks[n]:
                continue
            if p is None or _param_digest(p) != digest:
                out.append(n)
            else:  # written back with the same values (or a fresh load): same content
                self.marks[n] = _mark(p)
        return out


def _bare_params(model):
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft's
    for name, p in inner.named_parameters():
        for wrapper in (".base_layer.", ".original_module."):
            while wrapper in name:
                name = name.replace(wrapper, ".")
        yield name, p


def _mark(p) -> tuple[int, int, int]:
    return id(p), p.data_ptr(), p._version


def _param_digest(p) -> str:
    """CPU: sha1 of the bytes (exact). An accelerator: float32 sum and norm on the device
    (copying 14 GB of a 7B model to the host to hash it would cost more than the eval)."""
    import torch

    t = p.detach()
    if t.device.type == "cpu":
        return hashlib.sha1(t.contiguous().reshape(-1).view(torch.uint8).numpy()).hexdigest()
    x = t if t.is_floating_point() else t.float()  # 4-bit weights: packed uint8
    return f"{float(x.sum(dtype=torch.float32))}:{float(torch.linalg.vector_norm(x.float()))}"


def vocab_rows(model) -> int:
    return int(model.get_input_embeddings().weight.shape[0])


def adapter_params(model, name: str) -> int:
    """Parameters of adapter ``name`` inside a PeftModel (its layers' names carry the name)."""
    return sum(p.numel() for n, p in model.named_parameters() if f".{name}." in n
               or n.endswith(f".{name}"))


class SharedBase:
    """The one base the existing adapters are loaded onto, kept what the suite's model is for
    each of them. Two ways an arm can write into it: a file that carries base weights (peft
    loads `lm_head.base_layer.weight` into the base), and unloading for another peft type
    (a modules_to_save module comes back as the adapter's copy). Either way the next arm
    gets a freshly loaded base. ``label``: the suite's model as its warning names it;
    ``warn``: where that warning goes (the run's record and terminal)."""

    def __init__(self, base: modeling.LazyModel, label: str, warn: Callable[[str], None]
                 ) -> None:
        self.base, self.model, self.label, self.warn = base, None, label, warn
        self.pristine: BaseWeights | None = None

    def load(self, ad: adapters.ExistingAdapter) -> Any:
        if self.pristine is None:
            self.pristine = BaseWeights(self.base.get())
        try:
            model = switch_adapter(self._ready(ad.peft_type), ad.source, ad.name,
                                   ad.revision, ad.peft_type)
        except Exception:  # peft may have injected the failed adapter into the base's modules
            self._forget()
            raise
        self.model = model
        changed = self.pristine.changed(model)
        if changed:  # the next arm must not see these weights
            self._forget()
            self.warn(f"adapters.{ad.name}: its weights file also holds base-model weights "
                      f"that differ from {self.label} ({adapters.shown_names(changed)}); it is "
                      "evaluated with them, as peft loads it alone, and the arms after it "
                      "get a freshly loaded base")
        return model

    def _ready(self, peft_type: str) -> Any:
        if self.model is None:
            return self.base.get()
        assert self.pristine is not None
        model = unload_other_type(self.model, peft_type)
        if model is not self.model and self.pristine.changed(model):
            self._forget()
            return self.base.get()
        return model

    def _forget(self) -> None:
        self.model = None
        self.base.reset()


def origin(ad: adapters.ExistingAdapter, model: Any, folder: Path | None) -> dict[str, Any]:
    """Where an existing arm came from, enough to find the very same weights again."""
    return {"path": ad.source, "revision": ad.revision, "commit": ad.commit,
            "peft_type": ad.peft_type, "r": ad.rank, "target_modules": ad.target_modules,
            "base_model": ad.config.get("base_model_name_or_path"),
            "params": adapter_params(model, ad.name),
            "sha256": adapters.weights_sha256(folder) if folder else None}


class Loaded(NamedTuple):
    model: Any  # the base with the adapter active
    tokenizer: Any  # the one saved with the adapter, or None: the suite's
    folder: Path | None  # its files (None: a hub adapter not in the local cache)


def load(ad: adapters.ExistingAdapter, shared: SharedBase, spec: ModelSpec, path: str,
         device: str) -> Loaded:
    """``ad`` ready to evaluate. An adapter saved with its own tokenizer is scored with it;
    one that resized the embeddings (added tokens) gets its own resized copy of the base, so
    the shared base and the baseline stay unchanged."""
    folder = adapters.adapter_folder(ad.source, ad.revision)
    own_tok = adapters.adapter_tokenizer(folder)
    if own_tok is not None and len(own_tok) != vocab_rows(shared.base.get()):
        resized = modeling.load_model(spec, path, device)
        resized.resize_token_embeddings(len(own_tok))
        return Loaded(switch_adapter(resized, ad.source, ad.name, ad.revision, ad.peft_type),
                      own_tok, folder)
    return Loaded(shared.load(ad), own_tok, folder)
