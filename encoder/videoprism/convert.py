"""Convert an official VideoPrism Flax checkpoint (``.npz``) to transformers' VideoPrism classes.

The official release publishes flat ``np.savez`` files whose keys are Flax parameter paths joined
with ``/`` under a leading ``params/`` (e.g. ``flax_base_f16r288_repeated.npz`` for a video encoder,
``flax_lvt_base_f16r288_repeated.npz`` for a video-text model). Layers are stored stacked
("repeated"): every array under ``.../x_layers/...`` has a leading layer axis.

Everything about the architecture is read from the array shapes (width, depths, heads, head size,
MLP width, position-embedding grid, vocabulary); nothing comes from a table of released models.
Three facts make the conversion exact:

* The text position table of transformers' ``VideoPrismTextEmbeddings`` is a persistent buffer;
  we write the official sinusoid (inverse timescales ``10000 ** (-i / (D/2 - 1))``) into it.
* transformers derives the attention-pooler head size from the vision ``intermediate_size``
  (``head_dim = intermediate_size / heads``). When the checkpoint's MLP width differs from the
  pooler's ``heads * head_dim``, the vision/auxiliary FFNs are zero-padded to that width. Padding
  is exact: the extra hidden units have zero weights and bias, GELU(0) = 0, and their output
  weights are zero.
* The attention logit cap (50) is not stored in the checkpoint; it is a constructor argument.

Weights are read with ``numpy.load(allow_pickle=False)``.
"""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import (
    VideoPrismClipModel,
    VideoPrismConfig,
    VideoPrismTextConfig,
    VideoPrismVisionConfig,
    VideoPrismVisionModel,
)

from encoder.common.errors import PrismVlmError

PATCH_CHANNELS = 3
LAYER_STACK = "x_layers"


class CheckpointFormatError(PrismVlmError, ValueError):
    """The file is not an official VideoPrism Flax checkpoint, or its arrays are inconsistent."""


@dataclass
class ConversionOptions:
    """Settings that the official checkpoint does not store.

    attn_logit_softcapping: the tanh cap on attention logits (50 in every released model).
    max_text_length: length of the text position table (the official tokenizer pads to 64).
    layer_norm_eps: epsilon of every LayerNorm (1e-6 in the official code).
    """

    attn_logit_softcapping: float = 50.0
    max_text_length: int = 64
    layer_norm_eps: float = 1e-6


def read_flax_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a flat official ``.npz`` into ``{path without 'params/': float32 array}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VideoPrism checkpoint not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: np.asarray(archive[name]) for name in archive.files}
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as error:  # corrupt or cut zip
        raise CheckpointFormatError(f"{path} is not a readable .npz checkpoint: {error}") from error
    params = {}
    for name, array in arrays.items():
        key = name[len("params/") :] if name.startswith("params/") else name
        params[key] = array.astype(np.float32)
    if not params:
        raise CheckpointFormatError(f"{path} holds no arrays")
    return params


def is_video_text_checkpoint(params: dict[str, np.ndarray]) -> bool:
    """True for a video-text (LVT) checkpoint: it has a text encoder and a vision encoder subtree."""
    return any(k.startswith("text_encoder/") for k in params) and any(k.startswith("vision_encoder/") for k in params)


def _subtree(params: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    prefix = prefix.rstrip("/") + "/"
    return {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}


def _require(tree: dict[str, np.ndarray], key: str, where: str) -> np.ndarray:
    if key not in tree:
        raise CheckpointFormatError(f"checkpoint is missing '{where}/{key}'")
    return tree[key]


# ---------------------------------------------------------------------------------------------
# Config inference
# ---------------------------------------------------------------------------------------------


@dataclass
class _StackShape:
    num_layers: int
    width: int
    num_heads: int
    head_dim: int
    mlp_width: int


def _stack_shape(tree: dict[str, np.ndarray], where: str) -> _StackShape:
    """Shapes of a stacked transformer: query w is [L, D, heads, head_dim], ffn1 kernel [L, D, F]."""
    query = _require(tree, f"{LAYER_STACK}/self_attention/query/w", where)
    ffn1 = _require(tree, f"{LAYER_STACK}/ff_layer/ffn_layer1/linear/kernel", where)
    if query.ndim != 4 or ffn1.ndim != 3:
        raise CheckpointFormatError(
            f"'{where}' is not a stacked ('repeated') layer tree: query/w has shape {query.shape}; "
            "expected [layers, width, heads, head_dim]"
        )
    num_layers, width, num_heads, head_dim = query.shape
    return _StackShape(num_layers, width, num_heads, head_dim, ffn1.shape[2])


def _vision_config(
    vision: dict[str, np.ndarray],
    options: ConversionOptions,
    intermediate_size: int,
    num_auxiliary_layers: int = 0,
) -> VideoPrismVisionConfig:
    kernel = _require(vision, "patch_projection/linear/kernel", "vision")
    patch_pixels, width = kernel.shape
    patch = math.isqrt(patch_pixels // PATCH_CHANNELS)
    if patch * patch * PATCH_CHANNELS != patch_pixels:
        raise CheckpointFormatError(f"patch projection kernel {kernel.shape} is not [p*p*3, D]")
    spatial_positions = _require(vision, "spatial_pos_emb/emb_var", "vision").shape[0]
    grid = math.isqrt(spatial_positions)
    if grid * grid != spatial_positions:
        raise CheckpointFormatError(f"spatial position table has {spatial_positions} rows, not a square grid")
    num_frames = _require(vision, "temporal_pos_emb/emb_var", "vision").shape[0]
    spatial = _stack_shape(_subtree(vision, "spatial_encoder/transformers_stack"), "spatial_encoder")
    temporal = _stack_shape(_subtree(vision, "temporal_encoder/transformers_stack"), "temporal_encoder")
    for stack, name in ((spatial, "spatial"), (temporal, "temporal")):
        if (stack.width, stack.num_heads, stack.head_dim) != (width, spatial.num_heads, width // spatial.num_heads):
            raise CheckpointFormatError(f"{name} encoder shapes {stack} disagree with model width {width}")
        if stack.mlp_width != spatial.mlp_width:
            raise CheckpointFormatError("spatial and temporal MLP widths differ; transformers needs one width")
    if intermediate_size < spatial.mlp_width:
        raise CheckpointFormatError(
            f"cannot represent MLP width {spatial.mlp_width} with intermediate size {intermediate_size}"
        )
    return VideoPrismVisionConfig(
        image_size=grid * patch,
        num_frames=num_frames,
        tubelet_size=[1, patch, patch],
        hidden_size=width,
        num_attention_heads=spatial.num_heads,
        intermediate_size=intermediate_size,
        num_spatial_layers=spatial.num_layers,
        num_temporal_layers=temporal.num_layers,
        num_auxiliary_layers=num_auxiliary_layers,
        attn_logit_softcapping=options.attn_logit_softcapping,
        layer_norm_eps=options.layer_norm_eps,
        hidden_act="gelu_python",
    )


def infer_config(
    params: dict[str, np.ndarray], options: ConversionOptions | None = None
) -> VideoPrismVisionConfig | VideoPrismConfig:
    """Build the transformers config of a checkpoint from its array shapes alone.

    Returns a ``VideoPrismVisionConfig`` for an encoder checkpoint and a ``VideoPrismConfig`` (vision
    + text) for a video-text checkpoint.
    """
    options = options or ConversionOptions()
    if not is_video_text_checkpoint(params):
        if "patch_projection/linear/kernel" not in params:
            raise CheckpointFormatError(
                "not a VideoPrism checkpoint: no 'params/patch_projection/linear/kernel' "
                "(encoder) and no 'params/vision_encoder/...' + 'params/text_encoder/...' (video-text)"
            )
        mlp = _stack_shape(_subtree(params, "spatial_encoder/transformers_stack"), "spatial_encoder").mlp_width
        return _vision_config(params, options, intermediate_size=mlp)

    vision = _subtree(params, "vision_encoder")
    pooler = _subtree(params, "contrastive_vision_pooler")
    pool_query = _require(pooler, "pooling_attention/query/w", "contrastive_vision_pooler")
    _, pool_heads, pool_head_dim = pool_query.shape
    auxiliary = _stack_shape(_subtree(params, "auxiliary_encoder/transformers_stack"), "auxiliary_encoder")
    pooler_width = pool_heads * pool_head_dim
    vision_config = _vision_config(
        vision,
        options,
        intermediate_size=max(pooler_width, auxiliary.mlp_width),
        num_auxiliary_layers=auxiliary.num_layers,
    )
    if pool_heads != vision_config.num_attention_heads or pooler_width != vision_config.intermediate_size:
        raise CheckpointFormatError(
            f"attention pooler ({pool_heads} heads x {pool_head_dim}) cannot be expressed in transformers' "
            f"VideoPrism, whose pooler uses the encoder's {vision_config.num_attention_heads} heads and "
            f"head size intermediate_size / heads"
        )
    if auxiliary.mlp_width > vision_config.intermediate_size:
        raise CheckpointFormatError("auxiliary MLP is wider than the attention pooler")

    text = _subtree(params, "text_encoder")
    vocab_size, text_width = _require(text, "token_emb/emb_var", "text_encoder").shape
    text_stack = _stack_shape(_subtree(text, "unimodal_transformer"), "text_encoder/unimodal_transformer")
    text_config = VideoPrismTextConfig(
        vocab_size=vocab_size,
        hidden_size=text_width,
        intermediate_size=text_stack.mlp_width,
        num_hidden_layers=text_stack.num_layers,
        num_attention_heads=text_stack.num_heads,
        max_position_embeddings=options.max_text_length,
        hidden_act="relu",
        layer_norm_eps=options.layer_norm_eps,
        attn_logit_softcapping=options.attn_logit_softcapping,
        pad_token_id=0,
    )
    return VideoPrismConfig(vision_config=vision_config.to_dict(), text_config=text_config.to_dict())


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------


def official_text_position_table(num_positions: int, width: int) -> torch.Tensor:
    """The official sinusoid: inv_timescale_i = 10000^(-i / (D/2 - 1)), [sin, cos] -> [P, D] float32."""
    half = width // 2
    log_increment = math.log(10000.0) / max(half - 1, 1)
    inv_timescales = np.exp(np.arange(half, dtype=np.float32) * np.float32(-log_increment)).astype(np.float32)
    scaled = np.arange(num_positions, dtype=np.float32)[:, None] * inv_timescales[None, :]
    table = np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1)
    if width % 2:
        table = np.pad(table, ((0, 0), (0, 1)))
    return torch.from_numpy(table.astype(np.float32))


def _t(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _pad_rows(array: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad axis 0 to ``size``."""
    return np.pad(array, [(0, size - array.shape[0])] + [(0, 0)] * (array.ndim - 1))


def _attention_weights(attention: dict[str, np.ndarray], index: int | None) -> dict[str, torch.Tensor]:
    """Flax (D, heads, head_dim) projections -> nn.Linear weights [out, in]."""
    pick = (lambda a: a[index]) if index is not None else (lambda a: a)
    out = {}
    for flax_name, torch_name in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
        w = pick(attention[f"{flax_name}/w"])  # [D, heads, head_dim]
        b = pick(attention[f"{flax_name}/b"])  # [heads, head_dim]
        out[f"{torch_name}.weight"] = _t(w.reshape(w.shape[0], -1).T)
        out[f"{torch_name}.bias"] = _t(b.reshape(-1))
    post_w = pick(attention["post/w"])  # [D, heads, head_dim], contracted over (heads, head_dim)
    out["o_proj.weight"] = _t(post_w.reshape(post_w.shape[0], -1))
    out["o_proj.bias"] = _t(pick(attention["post/b"]))
    return out


def _layer_stack_weights(stack: dict[str, np.ndarray], prefix: str, intermediate_size: int) -> dict[str, torch.Tensor]:
    """A stacked Flax transformer -> ``{prefix}{i}.*`` of transformers' ``VideoPrismLayer``s."""
    layers = _subtree(stack, LAYER_STACK)
    num_layers = layers["self_attention/query/w"].shape[0]
    state = {}
    for i in range(num_layers):
        p = f"{prefix}{i}."
        for name, tensor in _attention_weights(_subtree(layers, "self_attention"), i).items():
            state[p + "attention." + name] = tensor
        state[p + "layernorm_before.weight"] = _t(layers["layer_norm/scale"][i])
        state[p + "layernorm_before.bias"] = _t(layers["layer_norm/bias"][i])
        state[p + "layernorm_after.weight"] = _t(layers["ff_layer/layer_norm/scale"][i])
        state[p + "layernorm_after.bias"] = _t(layers["ff_layer/layer_norm/bias"][i])
        fc1_kernel = layers["ff_layer/ffn_layer1/linear/kernel"][i]  # [D, F]
        fc1_bias = layers["ff_layer/ffn_layer1/linear/bias"][i]  # [F]
        fc2_kernel = layers["ff_layer/ffn_layer2/linear/kernel"][i]  # [F, D]
        state[p + "mlp.fc1.weight"] = _t(_pad_rows(fc1_kernel.T, intermediate_size))
        state[p + "mlp.fc1.bias"] = _t(_pad_rows(fc1_bias, intermediate_size))
        state[p + "mlp.fc2.weight"] = _t(_pad_rows(fc2_kernel, intermediate_size).T)
        state[p + "mlp.fc2.bias"] = _t(layers["ff_layer/ffn_layer2/linear/bias"][i])
    return state


def _vision_state_dict(vision: dict[str, np.ndarray], config: VideoPrismVisionConfig) -> dict[str, torch.Tensor]:
    patch = config.tubelet_size[1]
    kernel = vision["patch_projection/linear/kernel"]  # [p*p*3, D], rows ordered (row, col, channel)
    conv = kernel.reshape(patch, patch, PATCH_CHANNELS, -1).transpose(3, 2, 0, 1)[:, :, None]  # [D, 3, 1, p, p]
    state = {
        "spatial_embeddings.patch_embeddings.projection.weight": _t(conv),
        "spatial_embeddings.patch_embeddings.projection.bias": _t(vision["patch_projection/linear/bias"]),
        "spatial_embeddings.position_embeddings": _t(vision["spatial_pos_emb/emb_var"][None]),
        "temporal_embeddings.position_embeddings": _t(vision["temporal_pos_emb/emb_var"][None]),
        "layernorm1.weight": _t(vision["spatial_ln/scale"]),
        "layernorm1.bias": _t(vision["spatial_ln/bias"]),
        "layernorm2.weight": _t(vision["temporal_ln/scale"]),
        "layernorm2.bias": _t(vision["temporal_ln/bias"]),
    }
    size = config.intermediate_size
    state.update(_layer_stack_weights(_subtree(vision, "spatial_encoder/transformers_stack"), "spatial_layers.", size))
    state.update(
        _layer_stack_weights(_subtree(vision, "temporal_encoder/transformers_stack"), "temporal_layers.", size)
    )
    return state


def convert_state_dict(
    params: dict[str, np.ndarray], config: VideoPrismVisionConfig | VideoPrismConfig
) -> dict[str, torch.Tensor]:
    """Map official arrays to the state dict of ``VideoPrismVisionModel`` or ``VideoPrismClipModel``."""
    if isinstance(config, VideoPrismVisionConfig):
        return _vision_state_dict(params, config)

    vision_config, text_config = config.vision_config, config.text_config
    state = {
        f"video_model.vision_model.{k}": v
        for k, v in _vision_state_dict(_subtree(params, "vision_encoder"), vision_config).items()
    }
    for k, v in _layer_stack_weights(
        _subtree(params, "auxiliary_encoder/transformers_stack"), "auxiliary_layers.", vision_config.intermediate_size
    ).items():
        state[f"video_model.{k}"] = v
    pooler = _subtree(params, "contrastive_vision_pooler")
    for k, v in _attention_weights(_subtree(pooler, "pooling_attention"), None).items():
        state[f"video_model.head.{k}"] = v
    state["video_model.head.per_dim_scale"] = _t(pooler["pooling_attention/per_dim_scale/per_dim_scale"])
    state["video_model.head.pooling_attention_query"] = _t(pooler["pooling_attention_query"].reshape(1, 1, -1))
    state["video_model.head_layernorm.weight"] = _t(pooler["pooling_attention_layer_norm/scale"])
    state["video_model.head_layernorm.bias"] = _t(pooler["pooling_attention_layer_norm/bias"])

    text = _subtree(params, "text_encoder")
    state["text_model.embeddings.token_embedding.weight"] = _t(text["token_emb/emb_var"])
    state["text_model.embeddings.cls_emb"] = _t(text["cls_emb"].reshape(1, 1, -1))
    state["text_model.embeddings.position_embedding"] = official_text_position_table(
        text_config.max_position_embeddings, text_config.hidden_size
    )
    state["text_model.embeddings.position_ids"] = torch.arange(text_config.max_position_embeddings)[None]
    state["text_model.layernorm.weight"] = _t(text["unimodal_ln/scale"])
    state["text_model.layernorm.bias"] = _t(text["unimodal_ln/bias"])
    state.update(
        _layer_stack_weights(
            _subtree(text, "unimodal_transformer"), "text_model.layers.", text_config.intermediate_size
        )
    )
    return state


def convert_checkpoint(
    path: str | os.PathLike, options: ConversionOptions | None = None
) -> VideoPrismVisionModel | VideoPrismClipModel:
    """Load an official ``.npz`` into a transformers model (eval mode, fp32), converted in memory."""
    params = read_flax_checkpoint(path)
    config = infer_config(params, options)
    model_class = VideoPrismVisionModel if isinstance(config, VideoPrismVisionConfig) else VideoPrismClipModel
    with torch.device("meta"):
        model = model_class(config)
    state = convert_state_dict(params, config)
    expected = set(model.state_dict())
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise CheckpointFormatError(
            f"conversion of {path} does not match {model_class.__name__}: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def save_converted(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    sentencepiece_model: str | os.PathLike | None = None,
    options: ConversionOptions | None = None,
) -> Path:
    """Convert ``checkpoint`` and write a transformers-format directory (config.json + model.safetensors).

    For a video-text checkpoint, ``sentencepiece_model`` (the official release's SentencePiece file,
    e.g. the c4_en vocabulary) is converted to a ``VideoPrismTokenizer`` saved beside the model.
    """
    model = convert_checkpoint(checkpoint, options)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    if sentencepiece_model is not None:
        if not isinstance(model, VideoPrismClipModel):
            raise CheckpointFormatError(
                "a tokenizer only makes sense for a video-text checkpoint (it has a text tower)"
            )
        from encoder.videoprism.text_tokenizer import save_videoprism_tokenizer

        save_videoprism_tokenizer(
            sentencepiece_model, out_dir, max_length=model.config.text_config.max_position_embeddings
        )
    return out_dir
