"""Export to open_clip and Hugging Face (`python -m emocap_jax.convert --to`), without torch:

* export then import through our own importers gives the same architecture, the same parameters
  and identical outputs, which still match the peers' own outputs in the fixtures;
* the written files have the layout of the peers' own files in tests/fixtures (key names, shapes,
  tensors, config fields);
* the tokenizer files encode the fixture sentences to open_clip's ids;
* architectures a target cannot express are refused before anything is written;
* the model card says what the run was trained on, its evaluation and the vocabulary's licence.

bench/export_parity.py checks the written folders in open_clip and transformers themselves.
"""
import dataclasses
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import regex
from safetensors.numpy import load_file

import emocap_jax
from emocap_jax import convert, export
from emocap_jax.params_io import load_params, save_params
from emocap_jax.tokenizers import ClipBpeTokenizer, bytes_to_unicode
from tests.conftest import REPO_ROOT
from tests.inference_fixtures import make_tiny_export, tiny_model_config

PEERS = ["openclip_tiny_quickgelu", "openclip_tiny_gelu", "hf_clip_tiny"]
PEER_FILES = {"open_clip": ("openclip_tiny_gelu", "open_clip_model.safetensors"),
              "hf": ("hf_clip_tiny", "model.safetensors")}
WRITTEN_WEIGHTS = {"open_clip": "open_clip_model.safetensors", "hf": "model.safetensors"}


def _peer_io(folder):
    inputs, outputs = np.load(folder / "inputs.npz"), np.load(folder / "outputs.npz")
    return inputs["images_nchw"].transpose(0, 2, 3, 1), inputs["tokens"], outputs


def _flat(tree, prefix=""):
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}{k}/"))
        return out
    return {prefix[:-1]: np.asarray(tree)}


@pytest.fixture(scope="module")
def imported(fixtures_dir, tmp_path_factory):
    """Each peer fixture imported into an emocap_jax export folder."""
    root = tmp_path_factory.mktemp("imported")
    out = {}
    for name in PEERS:
        params, config, source = convert.convert(fixtures_dir / name)
        out[name] = save_params(root / name, params, config, None, source)
    return out


@pytest.fixture(scope="module")
def exported(imported, tmp_path_factory):
    """{(peer, target): the folder written by export_model}."""
    root = tmp_path_factory.mktemp("exported")
    return {(name, target): export.export_model(path, target, root / f"{name}-{target}")[0].parent
            for name, path in imported.items() for target in export.TARGETS}


@pytest.mark.parametrize("target", export.TARGETS)
@pytest.mark.parametrize("name", PEERS)
def test_export_then_import_gives_the_same_model(imported, exported, name, target):
    """The same architecture and bit-identical parameters, so the same function (the outputs are
    checked below on one model per target)."""
    params, config, _ = load_params(imported[name])
    back_params, back_config, _ = convert.convert(exported[name, target])
    assert back_config == config
    a, b = _flat(params), _flat(back_params)
    assert a.keys() == b.keys()
    for path in a:
        np.testing.assert_array_equal(a[path], b[path], err_msg=path)


# Each target from the other peer's fixture: HF's first-eos pooling through open_clip's
# pool_type "eos", open_clip's argmax pooling through transformers' eos_token_id 2.
@pytest.mark.parametrize("name, target", [("hf_clip_tiny", "open_clip"),
                                          ("openclip_tiny_quickgelu", "hf")])
def test_export_then_import_gives_identical_outputs(fixtures_dir, imported, exported, name,
                                                    target):
    images, tokens, peer = _peer_io(fixtures_dir / name)
    model = emocap_jax.load(imported[name])
    want_image, want_text = model.encode_image(images), model.encode_text(tokens)
    back = emocap_jax.load(exported[name, target])
    assert back.config == model.config
    # The same architecture runs the same compiled encoders: only the parameters are swapped
    # (compiling the towers again costs minutes on a busy 2-core machine).
    model.params = back.params
    image, text = model.encode_image(images), model.encode_text(tokens)
    np.testing.assert_array_equal(image, want_image)
    np.testing.assert_array_equal(text, want_text)
    # ... and so still the peer's own outputs (the independent reference).
    np.testing.assert_allclose(image, peer["image_features"], atol=1e-4)
    np.testing.assert_allclose(text, peer["text_features"], atol=1e-4)


@pytest.mark.parametrize("target", export.TARGETS)
@pytest.mark.parametrize("name", PEERS)
def test_written_weights_have_the_peers_own_layout(fixtures_dir, exported, name, target):
    """Keys and shapes of the peer's own file for this architecture; exported from that same
    peer's file, also its exact tensors."""
    written = load_file(str(exported[name, target] / WRITTEN_WEIGHTS[target]))
    peer_name, peer_file = PEER_FILES[target]
    peer = load_file(str(fixtures_dir / peer_name / peer_file))
    assert sorted(written) == sorted(peer)
    for key in peer:
        assert written[key].shape == peer[key].shape, key
        assert written[key].dtype == np.float32, key
    if name == peer_name:
        for key in peer:
            np.testing.assert_array_equal(written[key], peer[key], err_msg=key)


@pytest.mark.parametrize("name", ["openclip_tiny_quickgelu", "openclip_tiny_gelu"])
def test_open_clip_config_is_the_peers_own(fixtures_dir, exported, name):
    written = json.loads((exported[name, "open_clip"] / "open_clip_config.json").read_text())
    peer = json.loads((fixtures_dir / name / "open_clip_config.json").read_text())
    assert written["model_cfg"] == peer["model_cfg"]
    for field in ("mean", "std"):
        np.testing.assert_allclose(written["preprocess_cfg"][field], peer["preprocess_cfg"][field])
    assert written["preprocess_cfg"]["size"] == peer["model_cfg"]["vision_cfg"]["image_size"]


ARCHITECTURE_FIELDS = {
    "text_config": ("hidden_act", "hidden_size", "intermediate_size", "layer_norm_eps",
                    "max_position_embeddings", "model_type", "num_attention_heads",
                    "num_hidden_layers", "vocab_size", "eos_token_id", "attention_dropout"),
    "vision_config": ("hidden_act", "hidden_size", "image_size", "intermediate_size",
                      "layer_norm_eps", "model_type", "num_attention_heads", "num_channels",
                      "num_hidden_layers", "patch_size", "attention_dropout"),
}


def test_hf_config_is_the_peers_own(fixtures_dir, exported):
    written = json.loads((exported["hf_clip_tiny", "hf"] / "config.json").read_text())
    peer = json.loads((fixtures_dir / "hf_clip_tiny" / "config.json").read_text())
    for field in ("model_type", "projection_dim", "initializer_factor"):
        assert written[field] == peer[field], field
    assert written["logit_scale_init_value"] == pytest.approx(peer["logit_scale_init_value"],
                                                              abs=1e-3)
    for tower, fields in ARCHITECTURE_FIELDS.items():
        for field in fields:
            assert written[tower][field] == peer[tower][field], (tower, field)
    # Every field the peer's own config has is written (transformers_version is the writer's).
    for tower in ARCHITECTURE_FIELDS:
        assert set(peer[tower]) <= set(written[tower]) | {"bos_token_id", "pad_token_id"}
    preprocessor = json.loads(
        (exported["hf_clip_tiny", "hf"] / "preprocessor_config.json").read_text())
    assert preprocessor["crop_size"] == {"height": 32, "width": 32}
    assert preprocessor["size"] == {"shortest_edge": 32}


def test_argmax_pooling_is_written_as_transformers_legacy_eos_2(exported):
    # open_clip's argmax pooling: transformers pools at argmax(ids) exactly when eos_token_id == 2.
    written = json.loads((exported["openclip_tiny_gelu", "hf"] / "config.json").read_text())
    assert written["text_config"]["eos_token_id"] == 2
    assert written["text_config"]["hidden_act"] == "gelu"
    # HF's first-eos pooling (id 999) becomes open_clip's pool_type "eos".
    cfg = json.loads((exported["hf_clip_tiny", "open_clip"] / "open_clip_config.json").read_text())
    assert cfg["model_cfg"]["text_cfg"]["pool_type"] == "eos"
    assert cfg["model_cfg"]["text_cfg"]["eos_id"] == 999


def _reference_bpe_ids(text, vocab, merges):
    """CLIP BPE from the written vocab.json and merges.txt alone (the algorithm of OpenAI's
    simple_tokenizer, independent of emocap_jax.tokenizers' implementation)."""
    ranks = {tuple(m.split()): i for i, m in enumerate(merges)}
    byte_map = bytes_to_unicode()
    ids = [vocab["<|startoftext|>"]]
    text = " ".join(text.split()).lower()
    for word in regex.findall(r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+", text,
                              regex.IGNORECASE):
        symbols = [byte_map[b] for b in word.encode("utf-8")]
        symbols[-1] += "</w>"
        while len(symbols) > 1:
            pairs = [(ranks.get(p, float("inf")), i) for i, p in enumerate(zip(symbols, symbols[1:]))]
            rank, i = min(pairs)
            if rank == float("inf"):
                break
            symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]
        ids.extend(vocab[s] for s in symbols)
    return ids + [vocab["<|endoftext|>"]]


@pytest.fixture(scope="module")
def bpe_export(tmp_path_factory):
    """A tiny model with the CLIP BPE tokenizer, exported to Hugging Face."""
    root = tmp_path_factory.mktemp("bpe")
    source = make_tiny_export(root / "export")
    return source, export.export_model(source, "hf", root / "hf")[0].parent


def test_hf_tokenizer_files_encode_to_open_clips_ids(fixtures_dir, bpe_export):
    _, folder = bpe_export
    vocab = json.loads((folder / "vocab.json").read_text())
    lines = (folder / "merges.txt").read_text().split("\n")
    assert lines[0].startswith("#version")
    merges = [line for line in lines[1:] if line]
    assert len(vocab) == 49408 and len(merges) == 49152 - 256 - 2
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    fixture = json.loads((fixtures_dir / "clip_tokenizer" / "clip_tokenizer.json").read_text())
    checked = 0
    for sentence, ids in zip(fixture["sentences"], fixture["ids"]):
        ids = ids[:ids.index(49407) + 1]  # up to open_clip's end of text; padding after it
        if len(ids) == fixture["context_length"] or not sentence.isascii():
            continue  # cut to the context (cutting is the caller's), or needing ftfy's cleaning
        assert _reference_bpe_ids(sentence, vocab, merges) == ids, sentence
        checked += 1
    assert checked >= 5
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "CLIPTokenizer"
    assert config["model_max_length"] == tiny_model_config().text.context_length
    assert {config[k] for k in ("eos_token", "pad_token", "unk_token")} == {"<|endoftext|>"}
    hf = json.loads((folder / "config.json").read_text())["text_config"]
    assert (hf["bos_token_id"], hf["eos_token_id"]) == (ClipBpeTokenizer().sot_id, 2)


def _config(**changes):
    config = tiny_model_config()
    vision = dataclasses.replace(config.vision, **changes.pop("vision", {}))
    text = dataclasses.replace(config.text, **changes.pop("text", {}))
    return config.replace(vision=vision, text=text, **changes)


@pytest.mark.parametrize("target", export.TARGETS)
def test_convolutional_stem_is_refused_before_writing(tmp_path, target):
    source = make_tiny_export(tmp_path / "conv", config=_config(vision={"stem": "conv"}))
    with pytest.raises(export.ExportError, match=r"stem='conv'"):
        export.export_model(source, target, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()


@pytest.mark.parametrize("target", export.TARGETS)
def test_local_patch_head_is_refused(target):
    problems = export.expressibility_problems(_config(vision={"local_head": "patch_mlp"}), None,
                                              target)
    assert len(problems) == 1 and "local_head='patch_mlp'" in problems[0]


@pytest.mark.parametrize("tokenizer, target, message", [
    ({"type": "sentencepiece", "model_file": "captions.model"}, "open_clip", "sentencepiece"),
    ({"type": "sentencepiece", "model_file": "captions.model"}, "hf", "sentencepiece"),
    ({"type": "clip_bpe", "vocab_path": "my_vocab.txt.gz"}, "open_clip", "its own CLIP BPE"),
])
def test_tokenizers_a_target_cannot_load_are_refused(tokenizer, target, message):
    problems = export.expressibility_problems(tiny_model_config(), tokenizer, target)
    assert len(problems) == 1 and message in problems[0]


@pytest.mark.parametrize("target", export.TARGETS)
def test_imported_peer_tokenizer_is_refused_not_dropped(fixtures_dir, tmp_path, target):
    """An open_clip checkpoint whose config names another tokenizer (here a Hugging Face one)
    imports without a tokenizer, recording which it was. Its export cannot name it, and a folder
    naming none is tokenized with CLIP BPE (open_clip's get_tokenizer, and the model card's usage,
    would give the text tower other ids without a word): refused, nothing written."""
    peer = tmp_path / "peer"
    peer.mkdir()
    (peer / "open_clip_model.safetensors").write_bytes(
        (fixtures_dir / "openclip_tiny_gelu" / "open_clip_model.safetensors").read_bytes())
    cfg = json.loads((fixtures_dir / "openclip_tiny_gelu" / "open_clip_config.json").read_text())
    cfg["model_cfg"]["text_cfg"]["hf_tokenizer_name"] = "facebook/xlm-v-base"
    (peer / "open_clip_config.json").write_text(json.dumps(cfg))
    params, config, source = convert.convert(peer)
    assert convert.default_tokenizer_config(config, source) is None
    imported = save_params(tmp_path / "imported", params, config, None, source)
    with pytest.raises(export.ExportError, match="hf_tokenizer_name='facebook/xlm-v-base'"):
        export.export_model(imported, target, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()


def test_pooling_each_target_can_and_cannot_express():
    gap = _config(vision={"pool": "gap"})
    assert any("pool='gap'" in p for p in export.expressibility_problems(gap, None, "hf"))
    assert export.expressibility_problems(gap, None, "open_clip") == []
    eos2 = _config(text={"eot_token_id": 2})
    assert any("eot_token_id=2" in p for p in export.expressibility_problems(eos2, None, "hf"))
    assert export.expressibility_problems(eos2, None, "open_clip") == []
    eps = tiny_model_config().replace(layer_norm_eps=1e-6)
    assert any("layer_norm_eps" in p for p in export.expressibility_problems(eps, None,
                                                                             "open_clip"))


def test_layer_norm_eps_round_trips_through_hf(tmp_path):
    """transformers can express another LayerNorm epsilon (config.json's layer_norm_eps), so the
    export writes it and our importer must read it back, not refuse it or assume CLIP's 1e-5."""
    config = tiny_model_config().replace(layer_norm_eps=1e-6)
    source = make_tiny_export(tmp_path / "eps", config=config)
    out = export.export_model(source, "hf", tmp_path / "hf")[0].parent
    written = json.loads((out / "config.json").read_text())
    assert {written[t]["layer_norm_eps"] for t in ("vision_config", "text_config")} == {1e-6}
    params, _, _ = load_params(source)
    back_params, back_config, _ = convert.convert(out)
    assert back_config == config
    a, b = _flat(params), _flat(back_params)
    for path in a:
        np.testing.assert_array_equal(a[path], b[path], err_msg=path)


def test_patch_mean_pooling_round_trips_through_open_clip(fixtures_dir, tmp_path):
    """vision.pool='gap' is open_clip's pool_type 'avg': written, read back, same outputs."""
    params, config, _ = convert.convert(fixtures_dir / "openclip_tiny_gelu")
    config = config.replace(vision=dataclasses.replace(config.vision, pool="gap"))
    source = save_params(tmp_path / "gap", params, config)
    out = export.export_model(source, "open_clip", tmp_path / "oc")[0].parent
    cfg = json.loads((out / "open_clip_config.json").read_text())["model_cfg"]
    assert cfg["vision_cfg"]["pool_type"] == "avg"
    model, back = emocap_jax.load(source), emocap_jax.load(out)
    assert back.config == model.config and back.config.vision.pool == "gap"
    images, _, peer = _peer_io(fixtures_dir / "openclip_tiny_gelu")
    want = model.encode_image(images)
    model.params = back.params  # same architecture, same compiled tower: only the weights differ
    np.testing.assert_array_equal(model.encode_image(images), want)
    # The patch mean, not the class token: no longer the peer's (class-token) features.
    assert np.abs(want - peer["image_features"]).max() > 1e-2


def test_output_folder_must_be_new_or_empty(imported, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("")
    with pytest.raises(export.ExportError, match="not an empty folder"):
        export.export_model(imported["openclip_tiny_gelu"], "hf", tmp_path / "taken")


def test_model_card_names_training_data_evaluation_and_licence(tmp_path):
    run = tmp_path / "run"
    make_tiny_export(run / "export")
    (run / "config.json").write_text(json.dumps({
        "model_name": "tiny", "init_from": "",
        "data": {"train_dir": "", "synthetic": {"num": 600, "seed": 3, "size": 64}},
        "train": {"global_batch_size": 32},
        "loss": {"summary_weight": 1.0, "local_weight": 0.0, "label_positives": True,
                 "mining": {"mode": "off"}}}))
    (run / "zero_shot.json").write_text(json.dumps({
        "dataset": "runs/x/data/eval", "num_examples": 320, "uar": 0.65625, "war": 0.5,
        "macro_f1": 0.6, "classes": ["neutral", "happy"]}))
    (run / "eval").mkdir()
    (run / "eval" / "report.md").write_text("# Evaluation report\n\n## Paper table\n\n| a |\n")
    for target in export.TARGETS:
        folder = export.export_model(run, target, tmp_path / target)[0].parent
        card = (folder / "README.md").read_text()
        assert f"library_name: {'open_clip' if target == 'open_clip' else 'transformers'}" in card
        assert "600 generated faces" in card and "seed 3" in card and "no real faces" in card
        assert "UAR 65.6%" in card and "runs/x/data/eval" in card
        assert "\n### Evaluation report\n" in card and "\n#### Paper table\n" in card
        assert "MIT" in card and "Copyright (c) 2021 OpenAI" in card
        assert "Permission is hereby granted" in card
        # The snippet runs from this folder as it is, and says what to write once it is on the
        # Hub (the absolute local path alone was wrong for every reader of an uploaded card).
        use = card[card.index("## Use"):card.index("## Training data")]
        if target == "open_clip":
            assert f'MODEL = "local-dir:{folder}"  # this folder; once it is on the Hugging ' \
                   'Face Hub: "hf-hub:USER/NAME"' in use
            assert "create_model_and_transforms(MODEL)" in use and "get_tokenizer(MODEL)" in use
        else:
            assert f'MODEL = "{folder}"  # this folder; once it is on the Hugging Face Hub: ' \
                   '"USER/NAME"' in use
            assert use.count("from_pretrained(MODEL)") == 2
        assert use.count(str(folder)) == 1
        if target == "hf":  # transformers cuts a prompt longer than the context only when asked
            assert "return_tensors=\"pt\", padding=True,\n" in card and "truncation=True)" in card


@pytest.mark.parametrize("target", export.TARGETS)
def test_model_card_usage_fits_a_model_without_tokenizer(exported, target):
    """hf_clip_tiny (a 1000-id vocabulary) records no tokenizer: open_clip's get_tokenizer would
    give it CLIP BPE ids up to 49407 and the hf folder holds no tokenizer files for CLIPProcessor,
    so the card must not tell the reader to use either."""
    folder = exported["hf_clip_tiny", target]
    card = (folder / "README.md").read_text()
    use = card[card.index("## Use"):card.index("## Training data")]
    assert "get_tokenizer" not in use and "CLIPProcessor" not in use
    assert "ids of the tokenizer the model was trained with" in use
    if target == "hf":
        assert not (folder / "vocab.json").exists()
        assert "CLIPImageProcessor.from_pretrained" in use


def test_model_card_says_which_features_are_normalised(bpe_export):
    """open_clip's encode_* give unnormalised features; transformers' CLIPModel output embeds are
    L2-normalised (CLIPModel.forward divides them by their norms)."""
    _, folder = bpe_export
    use = (folder / "README.md").read_text()
    assert "CLIPProcessor.from_pretrained" in use
    assert "`outputs.image_embeds` and `outputs.text_embeds` are L2-normalised" in use
    assert "Features are unnormalised" not in use


def test_convert_cli_exports_a_run(tmp_path):
    export_dir = make_tiny_export(tmp_path / "run" / "export")
    result = subprocess.run(
        [sys.executable, "-m", "emocap_jax.convert", "--to", "hf", "--input",
         str(export_dir.parent), "--output", str(tmp_path / "hf")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "model.safetensors" in result.stdout and "README.md" in result.stdout
    written = sorted(p.name for p in (tmp_path / "hf").iterdir())
    assert written == sorted(["config.json", "model.safetensors", "preprocessor_config.json",
                              "vocab.json", "merges.txt", "tokenizer_config.json",
                              "special_tokens_map.json", "README.md"])
    assert emocap_jax.load(tmp_path / "hf").config == tiny_model_config()


def test_params_are_written_and_read_as_float32(fixtures_dir, tmp_path):
    # CLIPConfig.dtype is the compute dtype; the parameters of an export are float32. 16-bit
    # arrays handed to save_params, or found in an export written with them, come back float32
    # (else init_from would fine-tune bfloat16 weights and optimizer moments).
    import jax
    import ml_dtypes
    import orbax.checkpoint as ocp

    params, config, _ = convert.convert(fixtures_dir / "openclip_tiny_gelu")
    half = jax.tree_util.tree_map(lambda x: np.asarray(x).astype(ml_dtypes.bfloat16), params)
    folder = save_params(tmp_path / "bf16", half, config)
    raw = ocp.StandardCheckpointer().restore(folder / "params")
    assert {np.asarray(x).dtype for x in jax.tree_util.tree_leaves(raw)} == {np.dtype(np.float32)}
    loaded, _, _ = load_params(folder)
    dtypes = {np.asarray(x).dtype for x in jax.tree_util.tree_leaves(loaded)}
    assert dtypes == {np.dtype(np.float32)}
    for (path, a), (_, b) in zip(convert._flatten_paths(loaded), convert._flatten_paths(half)):
        np.testing.assert_array_equal(a, np.asarray(b, np.float32), err_msg=path)


def _sentencepiece(root):
    from emocap_jax.tokenizers import SentencePieceTokenizer
    from tests.test_tokenizers import SP_VOCAB, caption_sentences

    return SentencePieceTokenizer.train(iter(caption_sentences(600)), root / "sp", SP_VOCAB,
                                        context_length=16, minloglevel=2)


def test_sentencepiece_export_carries_its_model_file(tmp_path):
    """A run's sentencepiece model lives beside its data on the machine that trained; an export
    that only named that path could not tokenize once copied elsewhere (FileNotFoundError in
    emocap_jax.load, init_from and --mode=eval). It holds its own copy, named relative to it."""
    import shutil

    from emocap_jax.tokenizers import tokenizer_from_config

    sp = _sentencepiece(tmp_path / "data")
    config = tiny_model_config()
    config = config.replace(text=dataclasses.replace(config.text, vocab_size=sp.vocab_size,
                                                     eot_token_id=sp.eot_id))
    params, _, _ = load_params(make_tiny_export(tmp_path / "random", config=config))
    save_params(tmp_path / "run" / "export", params, config, sp.to_config())
    written = json.loads((tmp_path / "run" / "export" / "model_config.json").read_text())
    assert written["tokenizer"]["model_file"] == "tokenizer.model"  # params_io.TOKENIZER_MODEL_FILE
    shutil.copytree(tmp_path / "run", tmp_path / "elsewhere")
    want = sp(["a smiling face and raised inner brows."])
    shutil.rmtree(tmp_path / "data")
    shutil.rmtree(tmp_path / "run")
    _, _, description = load_params(tmp_path / "elsewhere" / "export")
    assert description["tokenizer"]["model_file"] == str(
        tmp_path / "elsewhere" / "export" / "tokenizer.model")
    tokenizer = tokenizer_from_config(description["tokenizer"])  # its sha256 is checked here
    np.testing.assert_array_equal(tokenizer(["a smiling face and raised inner brows."]), want)


def test_sentencepiece_model_of_an_export_on_a_bucket_is_read_locally(tmp_path):
    """SentencePieceTokenizer opens local files only: the model file of an export on a bucket
    (memory:// standing in for gs://) is copied to a local file first."""
    import emocap_jax.storage as storage
    from emocap_jax.params_io import TOKENIZER_MODEL_FILE, _local_tokenizer

    sp = _sentencepiece(tmp_path)
    data = pathlib.Path(sp.model_file).read_bytes()
    url = f"memory://b{tmp_path.name}/export"
    storage.write_bytes(f"{url}/{TOKENIZER_MODEL_FILE}", data)
    try:
        local = _local_tokenizer(url, dict(sp.to_config(), model_file=TOKENIZER_MODEL_FILE))
    finally:
        storage.rmtree(url)
    assert pathlib.Path(local["model_file"]).read_bytes() == data
    # An export written before the file was bundled names an absolute path: kept as it is.
    assert _local_tokenizer(url, sp.to_config()) == sp.to_config()


def test_export_with_empty_or_partial_params_names_the_folder(tmp_path):
    """An export whose params/ is empty, or lacks Orbax's tree metadata or array data (a folder
    copied in part, an interrupted export), is an error naming the export and what to do, not
    Orbax's own message about its files."""
    import re
    import shutil

    from emocap_jax.params_io import IncompleteExportError

    complete = make_tiny_export(tmp_path / "complete")
    for case, remove, what in (("empty", "*", "its params/ folder is empty"),
                               ("no_metadata", "_METADATA", "its params/ folder is incomplete"),
                               ("no_data", "d", "its params/ folder is incomplete")):
        broken = tmp_path / case
        shutil.copytree(complete, broken)
        for path in (broken / "params").glob(remove):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        message = (re.escape(f"the emocap_jax export {broken} cannot be read: {what}") + ".*"
                   + "copy it again whole, or write it again")
        with pytest.raises(IncompleteExportError, match=message):
            emocap_jax.load(broken)
        with pytest.raises(ValueError, match=message):  # a UsageError: one line in the CLIs
            load_params(broken)
