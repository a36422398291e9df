"""Exported models in the peers themselves: open_clip and transformers load what
`python -m emocap_jax.convert --to open_clip|hf` writes and give the features `emocap_jax.load` gives.

    python bench/export_parity.py [--input RUN_OR_EXPORT] [--work DIR] [--tolerance 1e-4]

Needs torch, open_clip_torch and transformers, which the project does not install (the round-trip
tests in tests/test_export.py run without them). In a throwaway virtualenv:

    python -m venv --system-site-packages /tmp/peers
    /tmp/peers/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu \\
        open_clip_torch transformers
    /tmp/peers/bin/python bench/export_parity.py --input runs/demo

Without --input it exports a random-init model of the demo's architecture (configs/demo.py: 48 px,
CLIP BPE, 24-token context). It exports the model both ways, loads the folders with
`open_clip.create_model_and_transforms("local-dir:DIR")` / `open_clip.get_tokenizer` and
`transformers.CLIPModel` / `CLIPProcessor.from_pretrained(DIR)`, and prints the largest absolute
difference of each library's image and text features from ours on the same inputs (synthetic faces
and emotion prompts), then the same through each library's own tokenizer and image preprocessing
(informational: its resize is not Pillow's). Exits 1 when a same-input difference exceeds the
tolerance.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import pathlib
import sys
import tempfile

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402
from PIL import Image  # noqa: E402

# The peers are not the project's dependencies: without them --help still works and a run says
# what to install in one line.
try:
    import open_clip
    import torch
    import transformers
    MISSING_PEER = None
except ImportError as error:
    open_clip = torch = transformers = None
    MISSING_PEER = error.name

import emocap_jax  # noqa: E402
from emocap_jax import export, params_io  # noqa: E402
from emocap_jax.cli_errors import entry_point, float_in  # noqa: E402
from emocap_jax.config_utils import clip_config  # noqa: E402
from emocap_jax.data.synthetic.faces import render_face, sample_face_spec  # noqa: E402
from emocap_jax.models.clip import CLIP_MEAN, CLIP_STD, param_shapes  # noqa: E402
from emocap_jax.tokenizers import ClipBpeTokenizer  # noqa: E402

PROMPTS = ["This image portrays an expression of happiness.",
           "The face conveys sadness.",
           "A photo of a surprised face with raised eyebrows and an open mouth.",
           "anger",
           "This image portrays a high-intensity expression of happy surprise or excited "
           "elation, with the eyes wide open and the upper eyelids raised significantly."]
FACE_LABELS = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")


def random_demo_export(path: pathlib.Path, seed: int = 0, vision_pool: str = "token",
                       eot_token_id=None) -> pathlib.Path:
    """configs/demo.py's architecture with random weights (as tests/inference_fixtures.py draws
    them: no initialiser to compile), optionally with patch-mean image pooling or text pooling at
    the first end-of-text id."""
    from configs import demo

    config = clip_config(demo.get_config())
    config = config.replace(
        vision=dataclasses.replace(config.vision, pool=vision_pool),
        text=dataclasses.replace(config.text, eot_token_id=eot_token_id))
    rng = np.random.default_rng(seed)

    def draw(keypath, shape):
        name = jax.tree_util.keystr(keypath)
        if name == "['logit_scale']":
            return np.asarray(config.init_logit_scale, np.float32)
        if "['scale']" in name:
            return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        return (0.05 * rng.standard_normal(shape)).astype(np.float32)

    params = jax.tree_util.tree_map_with_path(
        draw, param_shapes(config), is_leaf=lambda x: isinstance(x, tuple))
    tokenizer = ClipBpeTokenizer(context_length=config.text.context_length)
    return params_io.save_params(path, params, config, tokenizer.to_config(),
                                 {"layout": "bench.export_parity", "seed": seed})


def faces(size: int = 64) -> list[Image.Image]:
    return [render_face(sample_face_spec(0, "eval", i, label, identity_index=i), size=size)
            for i, label in enumerate(FACE_LABELS)]


def max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def rows_until_eot(ids: np.ndarray, eot: int) -> list[list[int]]:
    out = []
    for row in np.asarray(ids):
        row = [int(i) for i in row]
        out.append(row[:row.index(eot) + 1] if eot in row else row)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", help="a training workdir or export folder (default: a "
                                        "random-init model of the demo's architecture)")
    parser.add_argument("--work", help="folder for the exports (default: a temporary one)")
    parser.add_argument("--tolerance", type=float_in(0, math.inf, high_open=True), default=1e-4,
                        help="largest absolute feature difference on the same inputs that passes; "
                             "above it the exit status is 1 (default: 1e-4)")
    parser.add_argument("--vision-pool", choices=("token", "gap"), default="token",
                        help="random model only: image pooling (gap: open_clip's pool_type avg)")
    parser.add_argument("--eot-pooling", action="store_true",
                        help="random model only: pool the text at the first end-of-text id "
                             "(open_clip's pool_type eos, transformers' eos_token_id) instead of "
                             "at the largest id")
    args = parser.parse_args(argv)
    if MISSING_PEER is not None:
        print(f"error: bench/export_parity.py needs torch, open_clip_torch and transformers "
              f"({MISSING_PEER} is not installed); see this script's docstring for a virtualenv "
              "that has them", file=sys.stderr)
        return 2
    torch.set_grad_enabled(False)
    work = pathlib.Path(args.work or tempfile.mkdtemp(prefix="export_parity_"))
    source = pathlib.Path(args.input) if args.input else work / "ours"
    if not args.input and not params_io.is_params_dir(source):
        random_demo_export(source, vision_pool=args.vision_pool,
                           eot_token_id=ClipBpeTokenizer().eot_id if args.eot_pooling else None)
    print(f"model: {source}\nexports in: {work}\n"
          f"open_clip {open_clip.__version__}, transformers {transformers.__version__}, "
          f"torch {torch.__version__}")

    ours = emocap_jax.load(source)
    size = ours.image_size
    pil_faces = faces()
    pixels = ours.preprocess(pil_faces)                                   # [N, S, S, 3] uint8
    normalised = ((pixels / 255.0 - np.asarray(CLIP_MEAN)) / np.asarray(CLIP_STD)
                  ).astype(np.float32)
    tokens = ours.tokenize(PROMPTS)
    image_ref, text_ref = ours.encode_image(normalised), ours.encode_text(tokens)
    nchw = torch.from_numpy(normalised.transpose(0, 3, 1, 2).copy())
    ids = torch.from_numpy(tokens.astype(np.int64))
    print(f"inputs: {len(pil_faces)} synthetic faces at {size} px, {len(PROMPTS)} prompts, "
          f"context {tokens.shape[1]}; feature scale: max |image feature| "
          f"{np.abs(image_ref).max():.3f}, max |text feature| {np.abs(text_ref).max():.3f}")
    worst = 0.0

    # ---------------------------------------------------------------- open_clip
    oc_dir = work / "open_clip"
    if exported(source, "open_clip", oc_dir):
        model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{oc_dir}")
        model.eval()
        oc_tokenizer = open_clip.get_tokenizer(f"local-dir:{oc_dir}")
        d_img = max_diff(model.encode_image(nchw).numpy(), image_ref)
        d_txt = max_diff(model.encode_text(ids).numpy(), text_ref)
        worst = max(worst, d_img, d_txt)
        print(f"open_clip  same inputs:        image {d_img:.2e}  text {d_txt:.2e}")
        oc_ids = oc_tokenizer(PROMPTS).numpy()
        same_ids = np.array_equal(oc_ids, tokens)
        own_img = torch.stack([preprocess(im) for im in pil_faces])
        e_img = max_diff(model.encode_image(own_img).numpy(), ours.encode_image(pixels))
        e_txt = max_diff(model.encode_text(torch.from_numpy(oc_ids)).numpy(), text_ref)
        print(f"open_clip  own preprocessing:  image {e_img:.2e}  text {e_txt:.2e}  "
              f"(tokenizer ids identical: {same_ids})")

    # ---------------------------------------------------------------- transformers
    hf_dir = work / "hf"
    if exported(source, "hf", hf_dir):
        hf = transformers.CLIPModel.from_pretrained(hf_dir)
        hf.eval()
        processor = transformers.CLIPProcessor.from_pretrained(hf_dir)
        h_img = max_diff(hf.get_image_features(pixel_values=nchw).pooler_output.numpy(), image_ref)
        h_txt = max_diff(hf.get_text_features(input_ids=ids).pooler_output.numpy(), text_ref)
        worst = max(worst, h_img, h_txt)
        print(f"transformers same inputs:      image {h_img:.2e}  text {h_txt:.2e}")
        batch = processor(text=PROMPTS, images=pil_faces, return_tensors="pt", padding="max_length",
                          max_length=tokens.shape[1], truncation=True)
        hf_ids = batch["input_ids"].numpy()
        eot = ClipBpeTokenizer().eot_id
        same_hf_ids = rows_until_eot(hf_ids, eot) == rows_until_eot(tokens, eot)
        f_img = max_diff(hf.get_image_features(pixel_values=batch["pixel_values"]).pooler_output
                         .numpy(), ours.encode_image(pixels))
        f_txt = max_diff(hf.get_text_features(input_ids=batch["input_ids"],
                                              attention_mask=batch["attention_mask"]).pooler_output
                         .numpy(), text_ref)
        print(f"transformers own processing:   image {f_img:.2e}  text {f_txt:.2e}  "
              f"(tokenizer ids identical up to end-of-text: {same_hf_ids})")

    return finish(worst, args.tolerance)


def exported(source, target, folder) -> bool:
    """Exports unless already there; a refusal (an architecture the target cannot express) is
    printed, and the target skipped."""
    if folder.exists():
        return True
    try:
        export.export_model(source, target, folder)
    except export.ExportError as e:
        print(f"{target:<12} refused: {e}")
        return False
    return True


def finish(worst: float, tolerance: float) -> int:
    ok = worst <= tolerance
    print(f"largest same-input difference {worst:.2e}: "
          f"{'within' if ok else 'ABOVE'} the tolerance {tolerance:g}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(entry_point(main)())
