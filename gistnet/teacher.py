"""Loading the frozen teacher and its tokenizer, and running it on blocks.

Any Hugging Face causal-LM id or local folder goes through AutoTokenizer /
AutoModelForCausalLM (never remote code). A hub id that is neither cached nor reachable
fails at once, with the advice to point at a local folder, instead of hanging in retries.
"""

from __future__ import annotations

import functools
import inspect
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.utils.checkpoint

from gistnet.config import GistNetConfig
from gistnet.devices import resolve_device, torch_dtype, warn_if_emulated
from gistnet.errors import ConfigError, TeacherLoadError


def _looks_like_path(name: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else can only be meant as a folder.
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def _hub_reachable(timeout: float = 3.0) -> tuple[bool, str]:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False, "HF_HUB_OFFLINE is set"
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host, port = (
        url.hostname or "huggingface.co",
        url.port or (443 if url.scheme == "https" else 80),
    )
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True, ""
    except OSError as err:
        return False, f"{host} is unreachable ({err})"


def _resolve(name_or_path: str, what: str) -> tuple[str, bool]:
    """Return (name, local_files_only). A local folder wins; a hub id must be cached or reachable."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path), True
    if path.exists() or _looks_like_path(name_or_path):
        raise TeacherLoadError(
            f"{what} folder {name_or_path!r} does not exist; point it at a folder saved with "
            f"save_pretrained() (e.g. samples/teacher) or at a Hugging Face model id"
        )
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name_or_path, "config.json"), str):
        return name_or_path, True
    reachable, why = _hub_reachable()
    if not reachable:
        raise TeacherLoadError(
            f"{what} {name_or_path!r} is not a local folder, not in the Hugging Face cache, and "
            f"the hub cannot be reached: {why}. Download it on a machine with network access "
            f"and point the config at the local folder instead"
        )
    return name_or_path, False


def load_teacher_config(name_or_path: str):
    """The teacher's Hugging Face config, without its weights: a cheap check before queueing."""
    return _read_config(name_or_path, *_resolve(name_or_path, "teacher model"))


def _read_config(name_or_path: str, name: str, local_only: bool):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(
            name, local_files_only=local_only, trust_remote_code=False
        )
    except Exception as err:
        raise TeacherLoadError(
            f"could not read the config of teacher {name_or_path!r}: {err}"
        ) from err


# The families whose tiny random models tests/gistnet/test_families.py takes through every
# path (the substitution invariants, preparation, training, evaluation, /gist), by their
# Hugging Face model_type; docs/teachers.md lists them.
TESTED_FAMILIES = ("llama", "mistral", "qwen2", "gemma", "phi3", "gpt_neox", "opt", "gpt2")

# What the substituted-input path hands the teacher (gistnet.substitution): vectors where
# the block's embeddings were, at the block's positions.
_SUBSTITUTION_INPUTS = ("inputs_embeds", "position_ids")


def check_teacher_family(config) -> None:
    """A clear error for a teacher (its Hugging Face config) that cannot read a gist in
    place of a block: one transformers has no causal LM for, or whose causal LM's forward
    takes no `inputs_embeds` or no `position_ids`. Without position ids such a model would
    number the vectors and the horizon from 0 (learned positions) or ignore the number
    altogether, and every substituted condition would come out a wrong number instead of
    an error."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    family = getattr(config, "model_type", None) or type(config).__name__
    tested = ", ".join(TESTED_FAMILIES)
    try:
        model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except KeyError:
        raise ConfigError(
            f"teacher family {family!r} has no causal language model in transformers, so it "
            f"cannot be a teacher; bring a causal LM (tested families: {tested}; see "
            f"docs/teachers.md)"
        ) from None
    accepted = inspect.signature(model_class.forward).parameters
    missing = [name for name in _SUBSTITUTION_INPUTS if name not in accepted]
    if missing:
        raise ConfigError(
            f"teacher family {family!r} ({model_class.__name__}) is not supported: its forward "
            f"takes no {' and no '.join(missing)}, so the teacher cannot read a gist at its "
            f"block's positions. Supported are causal LMs that take inputs_embeds and "
            f"position_ids; tested families: {tested} (docs/teachers.md)"
        )


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    name, local_only = _resolve(name_or_path, "tokenizer")
    try:
        return AutoTokenizer.from_pretrained(
            name, local_files_only=local_only, trust_remote_code=False
        )
    except Exception as err:  # transformers raises OSError, ValueError, KeyError...
        raise TeacherLoadError(f"could not load tokenizer {name_or_path!r}: {err}") from err


class _FusedTanhGELU(torch.nn.Module):
    """GPT-2's tanh-approximated GELU as one fused kernel instead of five element-wise ops."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.gelu(x, approximate="tanh")


def _fuse_activations(model: torch.nn.Module) -> None:
    # transformers' NewGELUActivation spells the formula out op by op; on CPU that was 40%
    # of the teacher's forward. The fused kernel computes the same function (to ~1e-7).
    for module in list(model.modules()):
        for name, child in module.named_children():
            if type(child).__name__ == "NewGELUActivation":
                setattr(module, name, _FusedTanhGELU())


def _contiguous(_module, args):
    return (args[0].contiguous(), *args[1:])


def _contiguous_head_input(model) -> None:
    """The LM head reads its input contiguous. transformers slices the last positions
    before the head (`logits_to_keep`, as the substitution loss asks), and matmul cannot
    fold a strided slice that needs a gradient into one matrix product: it expands the
    (V, D) weight over the batch and copies it, B x V x D elements a call. On SmolLM2 at
    batch 8 the head's forward and backward over 32 positions took 0.70 s in bfloat16
    against 0.10 s contiguous (float32: 0.37 s against 0.22), and a bfloat16 training
    step went from about 2.7 s to 1.9 s; the copy of the slice costs B x k x D."""
    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(_contiguous)


def load_teacher(name_or_path: str, *, dtype: str = "float32", device: str | torch.device = "cpu"):
    """The causal LM, frozen: eval mode and no gradient to any of its weights."""
    from transformers import AutoModelForCausalLM

    name, local_only = _resolve(name_or_path, "teacher model")
    config = _read_config(name_or_path, name, local_only)
    check_teacher_family(config)  # before the weights: a refused family loads nothing
    device = device if isinstance(device, torch.device) else resolve_device(device)
    warn_if_emulated(dtype, device)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            name,
            config=config,
            dtype=torch_dtype(dtype),
            local_files_only=local_only,
            trust_remote_code=False,
        )
    except Exception as err:
        raise TeacherLoadError(f"could not load teacher model {name_or_path!r}: {err}") from err
    _fuse_activations(model)
    _contiguous_head_input(model)
    model.to(device).eval()
    model.requires_grad_(False)
    return model


def hidden_size_of(teacher) -> int:
    return int(teacher.get_input_embeddings().weight.shape[1])


def trunk_of(teacher) -> torch.nn.Module:
    """The module whose `last_hidden_state` the LM head reads: the base model for most
    families (GPT2Model in GPT2LMHeadModel), but OPT's causal LM calls the decoder inside
    its base model directly, so a hook on the base model would never fire there."""
    return teacher.get_decoder()


def decoder_layers(teacher) -> torch.nn.ModuleList:
    """The teacher's stack of decoder layers, found without naming it per family: the
    ModuleList among its trunk's children that holds one module per layer
    (LlamaModel.layers, GPT2Model.h, OPTDecoder.layers, GPTNeoXModel.layers, ...)."""
    count = layer_count(teacher.config)
    for child in trunk_of(teacher).children():
        if isinstance(child, torch.nn.ModuleList) and len(child) == count:
            return child
    raise TeacherLoadError(
        f"found no list of {count} decoder layers in the teacher's "
        f"{type(trunk_of(teacher)).__name__}: activation checkpointing cannot wrap its "
        f"layers; train with activation_checkpointing: false"
    )


def compile_for_training(teacher, model: torch.nn.Module, *, backend: str, mode: str | None):
    """torch.compile, in place, each of the teacher's decoder layers (None: no teacher
    runs) and `model`: the layers one by one, so that what runs around them (embeddings,
    the gist layout, the loss) stays eager and every family compiles alike."""
    options = {"backend": backend, **({"mode": mode} if mode else {})}
    if teacher is not None:
        for layer in decoder_layers(teacher):
            layer.compile(**options)
    model.compile(**options)


def _checkpointed(forward, *args, **kwargs):
    return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)


@contextmanager
def checkpointed_layers(teacher):
    """Inside this block each decoder layer of the teacher keeps only its inputs for the
    backward pass and runs its forward again there (torch.utils.checkpoint), so a long
    context's activations cost one layer's worth at a time rather than every layer's.

    Hugging Face's own `gradient_checkpointing_enable` acts only in train mode, and the
    teacher stays in eval mode (dropout would make the target noisy), so the layers'
    `forward` is wrapped here, for the forwards inside the block alone: the no-gradient
    full side outside it runs as always. The recomputation in the backward pass calls
    the forward captured at the time, so it may come after the block has ended. In eval
    mode the recomputed forward is the same function of the same inputs: the loss and
    the gradients are those without checkpointing."""
    layers = list(decoder_layers(teacher))
    # a forward already set on the instance (accelerate's device hooks) is put back
    own = [layer.__dict__.get("forward") for layer in layers]
    for layer in layers:
        layer.forward = functools.partial(_checkpointed, layer.forward)
    try:
        yield
    finally:
        for layer, forward in zip(layers, own, strict=True):
            if forward is None:
                del layer.forward
            else:
                layer.forward = forward


def _config_number(config, attributes: tuple[str, ...], purpose: str) -> int:
    """The first of `attributes` a Hugging Face config sets to a positive int (model
    families spell the same thing differently)."""
    for attribute in attributes:
        value = getattr(config, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    raise TeacherLoadError(
        f"the teacher's config ({type(config).__name__}) names no {attributes[0]}: cannot "
        f"tell {purpose}"
    )


_LAYER_WIDTHS = ("hidden_size", "n_embd", "d_model")


def config_hidden_size(config) -> int:
    """The teacher's width from its Hugging Face config, without loading the weights: that
    of its input embeddings and last-layer states. OPT may project both (word_embed_proj_dim)
    to and from wider layers (hidden_size)."""
    return _config_number(
        config, ("word_embed_proj_dim", *_LAYER_WIDTHS), "the width of its states"
    )


def layer_count(config) -> int:
    """The transformer blocks of a teacher with this Hugging Face config: its hidden
    states are numbered 0 (the embedding output) to this number (the last block's, after
    the final norm where it has one)."""
    return _config_number(
        config,
        ("num_hidden_layers", "n_layer", "num_layers"),
        "which hidden states teacher_layers may name",
    )


def check_teacher_layers(config, layers) -> None:
    """A clear error where `teacher_layers` names a hidden state the teacher of this
    Hugging Face config (`teacher.config`, or read without weights) lacks, or one of
    another width than the gists."""
    count = layer_count(config)
    if not layers:
        return
    width = config_hidden_size(config)
    layer_width = _config_number(config, _LAYER_WIDTHS, "the width of its layers")
    if layer_width != width:
        raise ConfigError(
            f"teacher_layers {list(layers)} cannot be read from this teacher: its layers are "
            f"{layer_width} wide but its embeddings and last-layer states (what the gists "
            f"match) {width}; leave teacher_layers empty for it"
        )
    if max(layers) > count:
        raise ConfigError(
            f"teacher_layers {list(layers)} names hidden state {max(layers)}, but this teacher "
            f"has {count} layers, so its hidden states are numbered 0 to {count}: pick "
            f"indices in that range"
        )


def check_tokenizer_fits(tokenizer, vocab_size: int, *, tokenizer_name, teacher_name) -> None:
    """A clear error where the tokenizer makes ids the teacher (its embedding table of
    `vocab_size` rows) has no embedding for: the two were not made for each other."""
    if len(tokenizer) > vocab_size:
        raise ConfigError(
            f"tokenizer {tokenizer_name!r} has {len(tokenizer)} tokens but teacher "
            f"{teacher_name!r} embeds only {vocab_size}: they do not belong together"
        )


def select_layers(hidden_states, layers, length: int) -> torch.Tensor:
    """The first `length` positions of the named hidden states (a model output's
    `hidden_states` tuple), side by side: (N, length, len(layers), D) float32."""
    if layers and max(layers) >= len(hidden_states):
        raise ConfigError(
            f"teacher_layers {list(layers)} names hidden state {max(layers)}, but the teacher "
            f"returned {len(hidden_states)} (0 to {len(hidden_states) - 1})"
        )
    return torch.stack([hidden_states[i][:, :length] for i in layers], dim=2).float()


def _block_states(
    teacher, input_ids: torch.Tensor, layers=()
) -> tuple[torch.Tensor, torch.Tensor | None]:
    device = teacher.get_input_embeddings().weight.device
    out = trunk_of(teacher)(
        input_ids=input_ids.to(device), use_cache=False, output_hidden_states=bool(layers)
    )
    states = out.last_hidden_state.float()
    if not layers:
        return states, None
    return states, select_layers(out.hidden_states, layers, input_ids.shape[1])


@torch.inference_mode()
def block_hidden_states(teacher, input_ids: torch.Tensor) -> torch.Tensor:
    """Last-layer hidden states of the block's tokens, float32, shape (N, T, D).

    For a causal teacher a block's states do not depend on the tokens after it, so the
    block alone is run, through the base model only: the LM head's (T, vocab) logits are
    never computed.
    """
    return _block_states(teacher, input_ids)[0]


@torch.no_grad()
def gistnet_inputs(
    teacher,
    block_ids: torch.Tensor,
    config: GistNetConfig,
    *,
    states: torch.Tensor | None = None,
    layer_states: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """What a GistNet built with `config` reads for blocks (N, T), as keyword arguments of
    its forward: `hidden`, the last-layer states (`states` where the caller has them,
    cached or from a forward it ran, else from one forward of the blocks); `embeddings`,
    the blocks' input embeddings, for a model with token_embeddings; `layer_states`
    (N, T, m, D) for one with teacher_layers (from the same forward). Ordinary tensors
    without gradient, so they may enter a training step's graph."""
    block_ids = block_ids.to(teacher.get_input_embeddings().weight.device)
    if states is None or (config.teacher_layers and layer_states is None):
        states, layer_states = _block_states(teacher, block_ids, config.teacher_layers)
    inputs = {"hidden": states}
    if config.token_embeddings:
        inputs["embeddings"] = teacher.get_input_embeddings()(block_ids).float()
    if config.teacher_layers:
        inputs["layer_states"] = layer_states
    return inputs
