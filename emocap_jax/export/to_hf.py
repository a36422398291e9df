"""A Hugging Face CLIP folder: `config.json` (CLIPConfig), `model.safetensors` (CLIPModel's keys),
`preprocessor_config.json` (CLIPImageProcessor) and, for a CLIP BPE model, the tokenizer files
(`vocab.json`, `merges.txt`, `tokenizer_config.json`, `special_tokens_map.json`), what
`transformers.CLIPModel.from_pretrained(DIR)` and `CLIPProcessor.from_pretrained(DIR)` read.

Text pooling: transformers pools at argmax(ids) when the text config's `eos_token_id` is 2 (the
value of CLIP configs written before it knew the real end token) and at the first `eos_token_id`
otherwise, so a model pooled at the largest id (`eot_token_id=None`, CLIP's rule) is written with
eos_token_id 2, as OpenAI's own CLIP configs on the Hub are.
"""
from __future__ import annotations

import json
import math
import pathlib

from emocap_jax.export.common import ExportSource, params_to_state_dict, write_safetensors
from emocap_jax.models.clip import CLIP_MEAN, CLIP_STD
from emocap_jax.models.config import CLIPConfig
from emocap_jax.tokenizers import ClipBpeTokenizer

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
ARGMAX_POOLING_EOS_ID = 2
# transformers' spelling of CLIP's special tokens (open_clip writes <start_of_text>, <end_of_text>).
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
_OPEN_CLIP_SPECIALS = {"<start_of_text>": BOS, "<end_of_text>": EOS}
# PIL's BICUBIC, the resample code CLIPImageProcessor takes.
_BICUBIC = 3


def _activation(config: CLIPConfig) -> str:
    return {"quick_gelu": "quick_gelu", "gelu": "gelu"}[config.activation]


def hf_config(config: CLIPConfig, tokenizer: dict | None) -> dict:
    """transformers' CLIPConfig for this architecture, with the fields its own files carry."""
    v, t = config.vision, config.text
    eos = ARGMAX_POOLING_EOS_ID if t.eot_token_id is None else t.eot_token_id
    special = {}
    if (tokenizer or {}).get("type") == "clip_bpe":
        special = {"bos_token_id": 49406, "pad_token_id": 49407}
    common = {"attention_dropout": 0.0, "hidden_act": _activation(config),
              "initializer_factor": 1.0, "initializer_range": 0.02,
              "layer_norm_eps": config.layer_norm_eps, "projection_dim": config.embed_dim}
    text_config = {**common, **special, "eos_token_id": eos, "hidden_size": t.width,
                   "intermediate_size": t.mlp_dim, "max_position_embeddings": t.context_length,
                   "model_type": "clip_text_model", "num_attention_heads": t.heads,
                   "num_hidden_layers": t.layers, "vocab_size": t.vocab_size}
    vision_config = {**common, "hidden_size": v.width, "image_size": v.image_size,
                     "intermediate_size": v.mlp_dim, "model_type": "clip_vision_model",
                     "num_attention_heads": v.heads, "num_channels": 3,
                     "num_hidden_layers": v.layers, "patch_size": v.patch_size}
    return {"architectures": ["CLIPModel"], "initializer_factor": 1.0,
            "logit_scale_init_value": round(math.log(1 / 0.07), 4), "model_type": "clip",
            "projection_dim": config.embed_dim, "text_config": text_config,
            "torch_dtype": "float32", "vision_config": vision_config}


def preprocessor_config(config: CLIPConfig) -> dict:
    size = config.vision.image_size
    return {"crop_size": {"height": size, "width": size}, "do_center_crop": True,
            "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
            "image_mean": list(CLIP_MEAN), "image_processor_type": "CLIPImageProcessor",
            "image_std": list(CLIP_STD), "processor_class": "CLIPProcessor",
            "resample": _BICUBIC, "rescale_factor": 1 / 255, "size": {"shortest_edge": size}}


def tokenizer_files(tokenizer: dict, context_length: int) -> dict[str, str]:
    """CLIPTokenizer's files for the CLIP BPE vocabulary the model was trained with: the same
    token ids as `emocap_jax.tokenizers.ClipBpeTokenizer` (vocab.json), the merges in rank order
    (merges.txt, after the header line transformers skips)."""
    bpe = ClipBpeTokenizer(context_length, vocab_path=tokenizer.get("vocab_path"))
    vocab = {_OPEN_CLIP_SPECIALS.get(token, token): i for token, i in bpe.encoder.items()}
    merges = sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.get)
    specials = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    config = {**specials, "tokenizer_class": "CLIPTokenizer", "processor_class": "CLIPProcessor",
              "model_max_length": context_length, "do_lower_case": True, "errors": "replace",
              "add_prefix_space": False, "clean_up_tokenization_spaces": False}
    return {
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
        "tokenizer_config.json": json.dumps(config, indent=2) + "\n",
        "special_tokens_map.json": json.dumps(specials, indent=2) + "\n",
    }


def write(source: ExportSource, output: pathlib.Path) -> list[pathlib.Path]:
    config = source.config
    state = params_to_state_dict(source.params, "hf", config)
    write_safetensors(state, output / WEIGHTS_FILE)
    written = [output / WEIGHTS_FILE]
    texts = {CONFIG_FILE: json.dumps(hf_config(config, source.tokenizer), indent=2) + "\n",
             PREPROCESSOR_FILE: json.dumps(preprocessor_config(config), indent=2) + "\n"}
    if (source.tokenizer or {}).get("type") == "clip_bpe":
        texts.update(tokenizer_files(source.tokenizer, config.text.context_length))
    for name, text in texts.items():
        (output / name).write_text(text, encoding="utf-8")
        written.append(output / name)
    return written
