"""The model card (README.md) written beside exported weights: what the model is, how to load it
in the target library, what it was trained on, its evaluation report and the licence of its
vocabulary. Everything it states is read from the export and, for a training run, the run's
config.json, eval/report.md and zero_shot.json; what is not recorded is said to be unknown."""
from __future__ import annotations

import json
import pathlib
import re
from typing import Optional

from emocap_jax.data.shard_writer import load_metadata
from emocap_jax.export.common import ExportSource
from emocap_jax.models.clip import count_params
from emocap_jax.tokenizers import CLIP_BPE_VOCAB_PATH

NOTICE_FILE = CLIP_BPE_VOCAB_PATH.parent / "NOTICE.md"

_USAGE = {
    "open_clip": '''```python
import open_clip, torch
from PIL import Image

MODEL = "local-dir:{dir}"  # this folder; once it is on the Hugging Face Hub: "hf-hub:USER/NAME"
model, _, preprocess = open_clip.create_model_and_transforms(MODEL)
tokenizer = open_clip.get_tokenizer(MODEL)
image = preprocess(Image.open("face.jpg")).unsqueeze(0)
text = tokenizer(["This image portrays an expression of happiness."])
with torch.no_grad():
    image_features = model.encode_image(image)
    text_features = model.encode_text(text)
```''',
    "hf": '''```python
from PIL import Image
from transformers import CLIPModel, CLIPProcessor

MODEL = "{dir}"  # this folder; once it is on the Hugging Face Hub: "USER/NAME"
model = CLIPModel.from_pretrained(MODEL)
processor = CLIPProcessor.from_pretrained(MODEL)
inputs = processor(text=["This image portrays an expression of happiness."],
                   images=Image.open("face.jpg"), return_tensors="pt", padding=True,
                   truncation=True)  # a prompt longer than the text context is cut to it
outputs = model(**inputs)   # outputs.image_embeds, outputs.text_embeds
```''',
}
# A model that records no tokenizer: open_clip's get_tokenizer would hand it CLIP BPE ids, and the
# transformers folder has no tokenizer files for CLIPProcessor, so the text ids are the user's.
_USAGE_WITHOUT_TOKENIZER = {
    "open_clip": '''```python
import open_clip, torch
from PIL import Image

MODEL = "local-dir:{dir}"  # this folder; once it is on the Hugging Face Hub: "hf-hub:USER/NAME"
model, _, preprocess = open_clip.create_model_and_transforms(MODEL)
image = preprocess(Image.open("face.jpg")).unsqueeze(0)
text = ...  # [B, T] int64 ids of the tokenizer the model was trained with (not CLIP BPE)
with torch.no_grad():
    image_features = model.encode_image(image)
    text_features = model.encode_text(text)
```''',
    "hf": '''```python
from PIL import Image
from transformers import CLIPImageProcessor, CLIPModel

MODEL = "{dir}"  # this folder; once it is on the Hugging Face Hub: "USER/NAME"
model = CLIPModel.from_pretrained(MODEL)
image_processor = CLIPImageProcessor.from_pretrained(MODEL)
pixel_values = image_processor(images=Image.open("face.jpg"), return_tensors="pt").pixel_values
input_ids = ...  # [B, T] int64 ids of the tokenizer the model was trained with (none here)
outputs = model(input_ids=input_ids, pixel_values=pixel_values)
```''',
}
# What the snippet's features are: open_clip's encode_* leave them as they are (as
# emocap_jax.load's do); transformers' CLIPModel.forward divides image_embeds and text_embeds by
# their norms.
_FEATURES = {
    "open_clip": "`encode_image` / `encode_text` give unnormalised features (as "
                 "`emocap_jax.load`'s `encode_*` do); normalise them before taking cosine "
                 "similarities.",
    "hf": "`outputs.image_embeds` and `outputs.text_embeds` are L2-normalised by `CLIPModel`; "
          "`outputs.logits_per_image` is the logit scale times their cosine similarities.",
}
_LIBRARY = {"open_clip": "open_clip", "hf": "transformers"}


def _read_json(path: pathlib.Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _architecture(source: ExportSource) -> list[str]:
    config = source.config
    v, t = config.vision, config.text
    image_pool = "the mean of the patch tokens" if v.pool == "gap" else "the class token"
    text_pool = ("the largest token id (CLIP's end-of-text)" if t.eot_token_id is None
                 else f"the first token id {t.eot_token_id}")
    return [
        f"- image tower: ViT, {v.image_size} px input, {v.patch_size} px patches, width {v.width}, "
        f"{v.layers} layers, {v.heads} heads, MLP {v.mlp_dim}; pooled at {image_pool}",
        f"- text tower: context {t.context_length}, vocabulary {t.vocab_size}, width {t.width}, "
        f"{t.layers} layers, {t.heads} heads, MLP {t.mlp_dim}; pooled at {text_pool}",
        f"- embedding dimension {config.embed_dim}, activation {config.activation}, "
        f"{count_params(source.params):,} parameters",
    ]


def _dataset_line(path: str) -> str:
    try:
        meta = load_metadata(path)
    except (OSError, ValueError):
        return f"`{path}` (not readable here: its size and classes are not recorded in this card)"
    counts = meta.get("label_counts") or {}
    classes = ", ".join(f"{label} {count}" for label, count in counts.items())
    return (f"`{path}`: {meta.get('num_records', '?')} records"
            + (f" ({classes})" if classes else "")
            + (f", converted by {meta['created_by']}" if meta.get("created_by") else ""))


def _training(source: ExportSource) -> list[str]:
    step = source.description.get("source", {}).get("step")
    if source.run_dir is None:
        src = source.description.get("source") or {}
        if src.get("weights"):
            return [f"Weights imported from `{src['weights']}` ({src.get('layout')} layout); "
                    f"their training data is that checkpoint's publisher's to state."]
        return ["Not recorded: the export folder has no training run's config.json beside it."]
    run = _read_json(source.run_dir / "config.json") or {}
    data, train = run.get("data") or {}, run.get("train") or {}
    lines = [f"Trained with emocap_jax (run `{source.run_dir}`, config `{run.get('model_name')}`"
             + (f", {step} steps" if step is not None else "")
             + (f" of {train['global_batch_size']} images" if train.get("global_batch_size")
                else "") + ")."]
    if data.get("train_dir"):
        lines.append(f"- training data: {_dataset_line(data['train_dir'])}")
    elif (data.get("synthetic") or {}).get("num"):
        syn = data["synthetic"]
        lines.append(
            f"- training data: the embedded synthetic-faces corpus "
            f"(`emocap_jax.data.synthetic`): {syn['num']} generated faces of {syn.get('size')} px "
            f"with generated EmoCap-style captions, seed {syn.get('seed')}; no real faces")
    if run.get("init_from"):
        lines.append(f"- initialised from `{run['init_from']}`")
    loss = run.get("loss") or {}
    if loss:
        terms = [f"{k} {loss[k]}" for k in ("summary_weight", "local_weight") if k in loss]
        mining = (loss.get("mining") or {}).get("mode")
        lines.append("- loss: global contrastive" + (f", {', '.join(terms)}" if terms else "")
                     + (f", label positives {loss['label_positives']}"
                        if "label_positives" in loss else "")
                     + (f", positive mining {mining}" if mining else ""))
    return lines


def _evaluation(source: ExportSource) -> list[str]:
    if source.run_dir is None:
        return ["No evaluation report was found beside this model."]
    lines = []
    zero_shot = _read_json(source.run_dir / "zero_shot.json")
    if zero_shot and "uar" in zero_shot:
        classes = zero_shot.get("classes") or []
        lines.append(
            f"Zero-shot at the end of training on `{zero_shot.get('dataset', '?')}` "
            f"({zero_shot.get('num_examples')} faces, {len(classes)} classes: "
            f"{', '.join(classes)}): UAR {100 * zero_shot['uar']:.1f}%, WAR "
            f"{100 * zero_shot['war']:.1f}%, macro-F1 {100 * zero_shot['macro_f1']:.1f}%.")
    report = source.run_dir / "eval" / "report.md"
    if report.is_file():
        # The report's own headings two levels down, so they nest under this card's "## Evaluation".
        text = re.sub(r"(?m)^(#+) ", r"##\1 ", report.read_text().strip())
        lines += ["", f"The run's evaluation report (`{report}`):", "", text]
    if not lines:
        lines.append("The run has no evaluation report (`python -m emocap_jax.evaluate` writes "
                     "one into WORKDIR/eval).")
    return lines


def _tokenizer(source: ExportSource, target: str) -> list[str]:
    tok = source.tokenizer or {}
    if tok.get("type") != "clip_bpe":
        return ["The export records no tokenizer: the text tower's ids are the ones it was given "
                "in training, which this card cannot name. Tokenize with that tokenizer."]
    files = ("`vocab.json` and `merges.txt`" if target == "hf"
             else "open_clip's own bundled copy")
    lines = [f"OpenAI CLIP's byte-level BPE (`bpe_simple_vocab_16e6.txt.gz`, 49,408 ids), here as "
             f"{files}. Its licence is MIT, Copyright (c) 2021 OpenAI:"]
    notice = NOTICE_FILE.read_text() if NOTICE_FILE.is_file() else ""
    match = re.search(r"## MIT License \(OpenAI CLIP\)\s*```\n(.*?)```", notice, re.S)
    if match:
        lines += ["", "```", match.group(1).rstrip(), "```"]
    return lines


def model_card(source: ExportSource, target: str, output: pathlib.Path) -> str:
    name = (source.run_dir or source.export_dir).name
    known = (source.tokenizer or {}).get("type") == "clip_bpe"  # the only kind an export carries
    usage = (_USAGE if known else _USAGE_WITHOUT_TOKENIZER)[target]
    sections = [
        "---", f"library_name: {_LIBRARY[target]}",
        "tags:", "- clip", "- facial-expression-recognition", "- emocap_jax", "---", "",
        f"# {name}: an EmoCapCLIP-style CLIP exported from emocap_jax", "",
        "A two-tower CLIP trained for facial-emotion representations with emocap_jax (a JAX/Flax "
        "reconstruction of EmoCapCLIP, arXiv 2507.21015). Exported with `python -m "
        f"emocap_jax.convert --to {target}` from `{source.export_dir}`; loading it gives the "
        "same image and text features as `emocap_jax.load` on that folder.", "",
        "## Architecture", "", *_architecture(source), "",
        "## Use", "", usage.format(dir=output), "", _FEATURES[target], "",
        "## Training data", "", *_training(source), "",
        "## Evaluation", "", *_evaluation(source), "",
        "## Tokenizer and the licence of its vocabulary", "", *_tokenizer(source, target), "",
    ]
    return "\n".join(sections)
