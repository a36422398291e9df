"""Weight import: parity with the peers' outputs, full-size shape logic, errors, resolution change."""
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import emocap_jax
from emocap_jax import convert
from emocap_jax.models.config import variant
from tests import clip_numpy_reference as ref

PEERS = ["openclip_tiny_quickgelu", "openclip_tiny_gelu", "hf_clip_tiny"]


def _peer_io(folder):
    inputs, outputs = np.load(folder / "inputs.npz"), np.load(folder / "outputs.npz")
    return inputs["images_nchw"].transpose(0, 2, 3, 1), inputs["tokens"], outputs


@pytest.mark.parametrize("name", PEERS)
def test_load_matches_peer_outputs(fixtures_dir, name):
    model = emocap_jax.load(fixtures_dir / name)
    images, tokens, out = _peer_io(fixtures_dir / name)
    np.testing.assert_allclose(model.encode_image(images), out["image_features"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(model.encode_text(tokens), out["text_features"], atol=1e-4, rtol=0)
    if "logit_scale_log" in out:
        assert model.logit_scale == pytest.approx(float(np.exp(out["logit_scale_log"])), rel=1e-6)


def test_activation_is_read_from_config(fixtures_dir):
    assert emocap_jax.load(fixtures_dir / "openclip_tiny_quickgelu").config.activation == "quick_gelu"
    assert emocap_jax.load(fixtures_dir / "openclip_tiny_gelu").config.activation == "gelu"
    hf = emocap_jax.load(fixtures_dir / "hf_clip_tiny").config
    assert hf.activation == "quick_gelu" and hf.text.eot_token_id == 999 and hf.vision.heads == 2


@pytest.mark.parametrize("name,source", [("openclip_tiny_gelu", "open_clip"), ("hf_clip_tiny", "hf")])
def test_convert_cli_then_load_matches_peer(fixtures_dir, tmp_path, name, source):
    out_dir = tmp_path / "converted"
    subprocess.run([sys.executable, "-m", "emocap_jax.convert", "--source", source,
                    "--input", str(fixtures_dir / name), "--output", str(out_dir)], check=True,
                   capture_output=True)
    description = json.loads((out_dir / "model_config.json").read_text())
    assert description["model"]["embed_dim"] == 24
    model = emocap_jax.load(out_dir)
    images, tokens, out = _peer_io(fixtures_dir / name)
    np.testing.assert_allclose(model.encode_image(images), out["image_features"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(model.encode_text(tokens), out["text_features"], atol=1e-4, rtol=0)


def test_safetensors_file_path_is_recognised(fixtures_dir, tmp_path):
    # A bare weights file with its config beside it, as downloaded from a hub.
    for f in ("open_clip_model.safetensors", "open_clip_config.json"):
        shutil.copy(fixtures_dir / "openclip_tiny_gelu" / f, tmp_path / f)
    model = emocap_jax.load(tmp_path / "open_clip_model.safetensors")
    assert model.config.activation == "gelu"


def test_weights_file_is_read_with_its_own_layouts_config(fixtures_dir, tmp_path):
    # Hub folders of open_clip models hold both layouts: open_clip_model.safetensors with
    # open_clip_config.json and model.safetensors with config.json. A model.safetensors given as a
    # file must be read with config.json (here: exact GELU, 2 heads), not with the open_clip
    # config that happens to lie beside it.
    from emocap_jax.export import export_model
    from emocap_jax.params_io import save_params

    params, config, _ = convert.convert(fixtures_dir / "openclip_tiny_gelu")
    save_params(tmp_path / "export", params, config)
    hub = export_model(tmp_path / "export", "hf", tmp_path / "hub")[0].parent
    shutil.copy(fixtures_dir / "openclip_tiny_gelu" / "open_clip_config.json", hub)
    model = emocap_jax.load(hub / "model.safetensors")
    assert model.config.activation == "gelu" and model.config.vision.heads == 2
    images, tokens, out = _peer_io(fixtures_dir / "openclip_tiny_gelu")
    np.testing.assert_allclose(model.encode_image(images), out["image_features"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(model.encode_text(tokens), out["text_features"], atol=1e-4, rtol=0)
    # And open_clip weights beside a Hugging Face config.json alone have no config of their own.
    oc_only = tmp_path / "oc_only"
    oc_only.mkdir()
    shutil.copy(fixtures_dir / "openclip_tiny_quickgelu" / "open_clip_model.safetensors", oc_only)
    shutil.copy(fixtures_dir / "hf_clip_tiny" / "config.json", oc_only)
    with pytest.raises(convert.ConversionError, match="--activation"):
        emocap_jax.load(oc_only / "open_clip_model.safetensors")


def test_patch_dropout_in_the_config_is_accepted(fixtures_dir, tmp_path):
    # Patch dropout is a training-time regulariser (open_clip's PatchDropout is the identity in
    # eval mode): a config trained with it describes the same inference model.
    cfg = json.loads((fixtures_dir / "openclip_tiny_gelu" / "open_clip_config.json").read_text())
    cfg["model_cfg"]["vision_cfg"]["patch_dropout"] = 0.5
    shutil.copy(fixtures_dir / "openclip_tiny_gelu" / "open_clip_model.safetensors", tmp_path)
    (tmp_path / "open_clip_config.json").write_text(json.dumps(cfg))
    model = emocap_jax.load(tmp_path)
    images, tokens, out = _peer_io(fixtures_dir / "openclip_tiny_gelu")
    np.testing.assert_allclose(model.encode_image(images), out["image_features"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("text_cfg,bpe", [
    ({}, True), ({"tokenizer_kwargs": {"clean": "lower"}}, True),
    ({"tokenizer_kwargs": {"clean": "canonicalize"}}, False),
    ({"hf_tokenizer_name": "bert-base-uncased"}, False),
    # open_clip's pre-v2.23 CLIPA key: "syntax" shortens long texts by part of speech, "first"
    # truncates as ClipBpeTokenizer does.
    ({"text_mask": "syntax"}, False), ({"text_mask": "block"}, False),
    ({"text_mask": "first"}, True)])
def test_open_clip_tokenizer_named_in_the_config_is_not_replaced_by_clip_bpe(tmp_path, text_cfg,
                                                                            bpe):
    # A CLIP-vocabulary (49408) text tower whose config names another tokenizer (open_clip's
    # SimpleTokenizer with clean="canonicalize", or a Hugging Face one) gives other ids than
    # ClipBpeTokenizer ("lower" cleaning): no tokenizer is better than the wrong one.
    shapes = dict(image_size=32, patch=8, v_width=64, v_layers=1, v_mlp=256, embed_dim=24, ctx=16,
                  vocab=49408, t_width=32, t_layers=1, t_mlp=128)
    save_file(_random_state_dict(ref.open_clip_shapes(**shapes)),
              str(tmp_path / "open_clip_model.safetensors"))
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {
        "embed_dim": 24, "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 1,
                       "head_width": 32},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2,
                     "layers": 1, **text_cfg}}}))
    model = emocap_jax.load(tmp_path)
    assert (model.tokenizer is not None) == bpe
    if not bpe:
        with pytest.raises(ValueError, match="no known tokenizer"):
            model.tokenize("a face")
        out = tmp_path / "converted"
        subprocess.run([sys.executable, "-m", "emocap_jax.convert", "--input", str(tmp_path),
                        "--output", str(out)], check=True, capture_output=True)
        assert json.loads((out / "model_config.json").read_text())["tokenizer"] is None


def test_open_clip_text_heads_default_is_open_clips(fixtures_dir):
    # A text_cfg without "heads" builds open_clip's default 8 heads (CLIPTextCfg.heads), whatever
    # the width: not width/64 (here 32/64, which is no head count at all).
    sd = load_file(str(fixtures_dir / "openclip_tiny_gelu" / "open_clip_model.safetensors"))
    cfg = json.loads((fixtures_dir / "openclip_tiny_gelu" / "open_clip_config.json").read_text())
    cfg["model_cfg"]["text_cfg"].pop("heads")
    assert convert.infer_open_clip_config(sd, cfg["model_cfg"]).text.heads == 8
    # A config without text_cfg (no open_clip model's) keeps the standard 64-wide guess.
    l14_text = dict(B16_SHAPES, t_width=768, t_mlp=3072)
    sd = {k: np.broadcast_to(np.float32(0), s) for k, s in ref.open_clip_shapes(**l14_text).items()}
    assert convert.infer_open_clip_config(sd, {"quick_gelu": True}).text.heads == 12
    assert convert.infer_open_clip_config(sd, {"text_cfg": {"heads": 12}}, "gelu").text.heads == 12


def test_hf_heads_default_is_transformers(fixtures_dir):
    # A config.json tower without num_attention_heads builds transformers' default (text 8,
    # vision 12), not width/64.
    state = load_file(str(fixtures_dir / "hf_clip_tiny" / "model.safetensors"))
    cfg = json.loads((fixtures_dir / "hf_clip_tiny" / "config.json").read_text())
    del cfg["text_config"]["num_attention_heads"]
    assert convert.infer_hf_config(state, cfg).text.heads == 8
    del cfg["vision_config"]["num_attention_heads"]  # 12 does not divide the width 64
    with pytest.raises(convert.ConversionError, match="num_attention_heads=12.*width 64"):
        convert.infer_hf_config(state, cfg)


def test_hf_eos_token_id_default_is_transformers(fixtures_dir):
    # transformers pools at argmax(ids) when eos_token_id is 2 and at the first eos_token_id
    # otherwise; a text_config without the key gets CLIPTextConfig's default, 49407, not 2.
    state = load_file(str(fixtures_dir / "hf_clip_tiny" / "model.safetensors"))
    cfg = json.loads((fixtures_dir / "hf_clip_tiny" / "config.json").read_text())
    assert convert.infer_hf_config(state, cfg).text.eot_token_id == 999
    cfg["text_config"]["eos_token_id"] = 2
    assert convert.infer_hf_config(state, cfg).text.eot_token_id is None
    del cfg["text_config"]["eos_token_id"]
    assert convert.infer_hf_config(state, cfg).text.eot_token_id == 49407
    # Without any config there is no transformers default to follow: CLIP's argmax rule.
    state = ref.open_clip_to_hf_names({k: np.broadcast_to(np.float32(0), s) for k, s in
                                       ref.open_clip_shapes(**B16_SHAPES).items()})
    assert convert.infer_hf_config(state, None, "gelu").text.eot_token_id is None
    # (patch_size: transformers' default is 32, and it would not load 16 px patch weights.)
    assert convert.infer_hf_config(state, {"vision_config": {"patch_size": 16},
                                           "text_config": {}}).text.eot_token_id == 49407


def _hf_tiny(fixtures_dir):
    state = load_file(str(fixtures_dir / "hf_clip_tiny" / "model.safetensors"))
    return state, json.loads((fixtures_dir / "hf_clip_tiny" / "config.json").read_text())


def test_hf_config_dicts_are_merged_as_transformers_does(fixtures_dir):
    """Configs written by transformers before 4.27 (openai/clip-vit-*) carry text_config_dict /
    vision_config_dict. transformers' CLIPConfig.__init__ does
    `text_config.update(CLIPTextConfig(**text_config_dict).to_dict())`: each field is the
    *_config_dict's value, or CLIPTextConfig's default where it has none, whatever text_config
    says (transliterated here for the fields that shape the model)."""
    state, cfg = _hf_tiny(fixtures_dir)
    sizes = ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size",
             "max_position_embeddings")
    text = cfg["text_config"]
    cfg["text_config_dict"] = {**{k: text[k] for k in sizes}, "num_attention_heads": 2,
                               "eos_token_id": 2}
    text.update(num_attention_heads=4, eos_token_id=999)  # stale: the *_dict wins
    config = convert.infer_hf_config(state, cfg)
    assert config.text.heads == 2 and config.text.eot_token_id is None  # eos 2: argmax pooling
    # A field the *_dict omits takes transformers' default, not text_config's value.
    del cfg["text_config_dict"]["eos_token_id"]
    assert convert.infer_hf_config(state, cfg).text.eot_token_id == 49407
    del cfg["text_config_dict"]["num_attention_heads"]
    assert convert.infer_hf_config(state, cfg).text.heads == 8  # not text_config's 4
    # The same for the image tower; a *_dict without a tower config at all works too.
    state, cfg = _hf_tiny(fixtures_dir)
    cfg["vision_config_dict"] = cfg.pop("vision_config")
    cfg["vision_config_dict"]["hidden_act"] = "gelu"
    cfg["text_config"]["hidden_act"] = "gelu"
    assert convert.infer_hf_config(state, cfg).activation == "gelu"
    del cfg["vision_config_dict"]["image_size"]  # default 224: not these weights' 32
    with pytest.raises(convert.ConversionError,
                       match=r"vision_config.image_size=224 \(absent: transformers' default\)"):
        convert.infer_hf_config(state, cfg)


@pytest.mark.parametrize("tower,key,value,message", [
    ("vision_config", "image_size", 64, r"vision_config.image_size=64 but the weights' position "
                                        r"table holds 1 \+ 4 x 4 patch positions, 32 px at 8 px"),
    ("vision_config", "patch_size", 16, r"vision_config.patch_size=16 but the weights have 8"),
    ("text_config", "max_position_embeddings", 77,
     r"text_config.max_position_embeddings=77 but the weights' text position table has 16 rows"),
    ("text_config", "vocab_size", 49408, r"text_config.vocab_size=49408 but the weights have 1000"),
    ("vision_config", "num_hidden_layers", 3, r"vision_config.num_hidden_layers=3 but the "
                                              r"weights have 2"),
    (None, "projection_dim", 512, r"projection_dim=512 but the weights' projections are 24"),
])
def test_hf_config_sizes_must_be_the_weights(fixtures_dir, tmp_path, tower, key, value, message):
    """transformers builds CLIPModel from config.json and refuses weights of other sizes (size
    mismatch in from_pretrained): an image_size whose patch grid is not the position table's was
    loaded here at the weights' size, silently, and is refused now, as is any other size."""
    state, cfg = _hf_tiny(fixtures_dir)
    (cfg[tower] if tower else cfg)[key] = value
    with pytest.raises(convert.ConversionError, match=message):
        convert.infer_hf_config(state, cfg)
    folder = tmp_path / "hf"
    folder.mkdir()
    shutil.copy(fixtures_dir / "hf_clip_tiny" / "model.safetensors", folder)
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(convert.ConversionError, match="size mismatch"):
        emocap_jax.load(folder)


def test_numpy_reference_matches_peers(fixtures_dir):
    # The reference used for full-size checks below must itself agree with open_clip.
    for name, quick in (("openclip_tiny_quickgelu", True), ("openclip_tiny_gelu", False)):
        sd = load_file(str(fixtures_dir / name / "open_clip_model.safetensors"))
        images, tokens, out = _peer_io(fixtures_dir / name)
        img = ref.encode_image(sd, images[0].transpose(2, 0, 1), heads=2, quick_gelu=quick)
        txt = ref.encode_text(sd, tokens[1], heads=2, quick_gelu=quick)
        np.testing.assert_allclose(img, out["image_features"][0], atol=1e-4)
        np.testing.assert_allclose(txt, out["text_features"][1], atol=1e-4)


def _random_state_dict(shapes, seed=0):
    rng = np.random.default_rng(seed)
    sd = {}
    for k, s in shapes.items():
        fan = s[-1] if len(s) > 1 else 1
        scale = 1.0 / np.sqrt(fan) if len(s) > 1 else 0.1
        sd[k] = (rng.standard_normal(s, dtype=np.float32) * scale).astype(np.float32)
        if k.endswith("ln_1.weight") or k.endswith("ln_2.weight") or ".ln_" in k and "weight" in k:
            sd[k] = 1.0 + sd[k]
    sd["logit_scale"] = np.array(np.log(1 / 0.07), np.float32)
    return sd


B16_SHAPES = dict(image_size=224, patch=16, v_width=768, v_layers=12, v_mlp=3072, embed_dim=512,
                  ctx=77, vocab=49408, t_width=512, t_layers=12, t_mlp=2048)


@pytest.fixture(scope="module")
def b16_state_dict():
    return _random_state_dict(ref.open_clip_shapes(**B16_SHAPES))


@pytest.mark.slow
def test_full_size_vit_b16_open_clip_layout(b16_state_dict, tmp_path):
    """A ViT-B/16 open_clip checkpoint converts to exactly the standard architecture and computes
    what open_clip's architecture computes (the NumPy reference) on random weights."""
    save_file(b16_state_dict, str(tmp_path / "open_clip_model.safetensors"))
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {
        "embed_dim": 512, "quick_gelu": True,
        "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8,
                     "layers": 12}}}))
    model = emocap_jax.load(tmp_path)
    assert model.config == variant("ViT-B-16")
    rng = np.random.default_rng(1)
    image = rng.standard_normal((1, 224, 224, 3), dtype=np.float32)
    tokens = model.tokenize(["a photo of a face with an expression of contempt."])
    np.testing.assert_allclose(
        model.encode_image(image)[0],
        ref.encode_image(b16_state_dict, image[0].transpose(2, 0, 1), 12, True), atol=1e-3, rtol=1e-3)
    np.testing.assert_allclose(
        model.encode_text(tokens)[0],
        ref.encode_text(b16_state_dict, tokens[0], 8, True), atol=1e-3, rtol=1e-3)


@pytest.mark.slow
def test_full_size_hf_layout_gives_same_params(b16_state_dict):
    params_oc = convert.state_dict_to_params(b16_state_dict, "open_clip", variant("ViT-B-16"))
    hf = ref.open_clip_to_hf_names(b16_state_dict)
    config = convert.infer_hf_config(hf, {"vision_config": {"num_attention_heads": 12,
                                                            "patch_size": 16},
                                          "text_config": {"num_attention_heads": 8,
                                                          "eos_token_id": 2}})
    assert config == variant("ViT-B-16")
    params_hf = convert.state_dict_to_params(hf, "hf", config)
    for (pa, a), (pb, b) in zip(convert._flatten_paths(params_oc), convert._flatten_paths(params_hf)):
        assert pa == pb
        np.testing.assert_array_equal(a, b, err_msg=pa)


def test_standard_shapes_infer_standard_architectures():
    for name, shapes in {
        "ViT-B-32": dict(B16_SHAPES, patch=32),
        "ViT-L-14": dict(image_size=224, patch=14, v_width=1024, v_layers=24, v_mlp=4096,
                         embed_dim=768, ctx=77, vocab=49408, t_width=768, t_layers=12, t_mlp=3072),
        "ViT-L-14-336": dict(image_size=336, patch=14, v_width=1024, v_layers=24, v_mlp=4096,
                             embed_dim=768, ctx=77, vocab=49408, t_width=768, t_layers=12,
                             t_mlp=3072),
    }.items():
        # Only shapes matter for inference: zero-size-free stand-ins via np.broadcast_to.
        sd = {k: np.broadcast_to(np.float32(0), s) for k, s in ref.open_clip_shapes(**shapes).items()}
        assert convert.infer_open_clip_config(sd, activation="quick_gelu") == variant(name), name


@pytest.mark.parametrize("name,v_width,v_mlp,t_width,embed_dim", [
    ("ViT-H-14", 1280, 5120, 1024, 1024), ("ViT-g-14", 1408, 6144, 1024, 1024),
    ("ViT-bigG-14", 1664, 8192, 1280, 1280)])
def test_big_image_towers_without_config_get_their_16_heads(name, v_width, v_mlp, t_width,
                                                            embed_dim):
    # open_clip's ViT-H/g/bigG image towers have 80/88/104-wide heads (16 heads), not 64-wide:
    # width/64 would give 20/22/26 heads and silently other features. Their text towers are 64.
    shapes = dict(image_size=224, patch=14, v_width=v_width, v_layers=2, v_mlp=v_mlp,
                  embed_dim=embed_dim, ctx=77, vocab=49408, t_width=t_width, t_layers=2,
                  t_mlp=4 * t_width)
    sd = {k: np.broadcast_to(np.float32(0), s) for k, s in ref.open_clip_shapes(**shapes).items()}
    for config in (convert.infer_open_clip_config(sd, activation="gelu"),
                   convert.infer_hf_config(ref.open_clip_to_hf_names(sd), activation="gelu")):
        assert (config.vision.heads, config.text.heads) == (16, t_width // 64), name
    # A config still decides: open_clip's own default head_width is 64.
    with_cfg = convert.infer_open_clip_config(sd, {"vision_cfg": {"width": v_width}})
    assert with_cfg.vision.heads == v_width // 64


def test_shape_mismatch_names_parameter_and_both_shapes(fixtures_dir):
    sd = load_file(str(fixtures_dir / "openclip_tiny_gelu" / "open_clip_model.safetensors"))
    sd["transformer.resblocks.1.mlp.c_fc.weight"] = np.zeros((100, 32), np.float32)
    config = variant("tiny").replace(activation="gelu")
    with pytest.raises(convert.ConversionError,
                       match=r"text/transformer/blocks/mlp/fc/kernel \(from transformer.resblocks.1.mlp.c_fc"
                             r".weight\): checkpoint shape \(32, 100\) != model shape \(32, 128\)"):
        convert.state_dict_to_params(sd, "open_clip", config)


def test_unknown_tensors_fail_loudly(fixtures_dir):
    sd = load_file(str(fixtures_dir / "openclip_tiny_gelu" / "open_clip_model.safetensors"))
    sd["visual.attn_pool.query"] = np.zeros((4, 64), np.float32)
    with pytest.raises(convert.ConversionError, match="visual.attn_pool.query"):
        convert.state_dict_to_params(sd, "open_clip", variant("tiny").replace(activation="gelu"))


def test_missing_config_requires_activation_and_standard_heads(fixtures_dir, tmp_path):
    shutil.copy(fixtures_dir / "openclip_tiny_gelu" / "open_clip_model.safetensors",
                tmp_path / "weights.safetensors")
    with pytest.raises(convert.ConversionError, match="--activation"):
        emocap_jax.load(tmp_path / "weights.safetensors")
    # The tiny model's 32-wide heads differ from the standard 64: without its config, say so.
    with pytest.raises(convert.ConversionError, match="attention heads.*config"):
        emocap_jax.load(tmp_path / "weights.safetensors", activation="gelu")
    # The same for Hugging Face weights without their config.json: transformers' default
    # (quick_gelu) says nothing about a checkpoint (LAION's are gelu), so it is not assumed.
    shutil.copy(fixtures_dir / "hf_clip_tiny" / "model.safetensors", tmp_path / "hf.safetensors")
    with pytest.raises(convert.ConversionError, match="--activation"):
        emocap_jax.load(tmp_path / "hf.safetensors")
    sd = {k: np.broadcast_to(np.float32(0), s) for k, s in ref.open_clip_shapes(**B16_SHAPES).items()}
    with pytest.raises(convert.ConversionError, match="--activation"):
        convert.infer_hf_config(ref.open_clip_to_hf_names(sd))
    assert convert.infer_hf_config(ref.open_clip_to_hf_names(sd), activation="gelu") == \
        variant("ViT-B-16").replace(activation="gelu")


def test_unsupported_open_clip_architecture_is_refused(fixtures_dir, tmp_path):
    cfg = json.loads((fixtures_dir / "openclip_tiny_gelu" / "open_clip_config.json").read_text())
    cfg["model_cfg"]["vision_cfg"]["attentional_pool"] = True
    shutil.copy(fixtures_dir / "openclip_tiny_gelu" / "open_clip_model.safetensors", tmp_path)
    (tmp_path / "open_clip_config.json").write_text(json.dumps(cfg))
    with pytest.raises(convert.ConversionError, match="attentional_pool"):
        emocap_jax.load(tmp_path)
    # A text tower without the causal mask (open_clip's text_cfg.no_causal_mask) computes other
    # features from the same tensors: refused, not merely logged as an ignored key.
    cfg["model_cfg"]["vision_cfg"].pop("attentional_pool")
    cfg["model_cfg"]["text_cfg"]["no_causal_mask"] = True
    (tmp_path / "open_clip_config.json").write_text(json.dumps(cfg))
    with pytest.raises(convert.ConversionError, match="no_causal_mask"):
        emocap_jax.load(tmp_path)
    # A 64 x 16 image of 8 px patches has 8 x 2 = 16 positions, as many as the 4 x 4 grid:
    # the shapes alone would load it as a square 32 px model.
    cfg["model_cfg"]["text_cfg"].pop("no_causal_mask")
    cfg["model_cfg"]["vision_cfg"]["image_size"] = [64, 16]
    (tmp_path / "open_clip_config.json").write_text(json.dumps(cfg))
    with pytest.raises(convert.ConversionError, match=r"image_size=\[64, 16\].*non-square"):
        emocap_jax.load(tmp_path)
    cfg["model_cfg"]["vision_cfg"]["image_size"] = [32, 32]  # a square pair is fine
    (tmp_path / "open_clip_config.json").write_text(json.dumps(cfg))
    assert emocap_jax.load(tmp_path).config.vision.image_size == 32


def test_checkpoints_that_are_not_clip_vits_say_so(fixtures_dir, tmp_path):
    # Keys the architecture is read from are missing: a one-line error at the command line, not a
    # KeyError traceback.
    sd = load_file(str(fixtures_dir / "openclip_tiny_gelu" / "open_clip_model.safetensors"))
    resnet = {k: v for k, v in sd.items() if k != "visual.positional_embedding"}
    resnet["visual.attnpool.positional_embedding"] = sd["visual.positional_embedding"]
    save_file(resnet, str(tmp_path / "rn50.safetensors"))
    hf = load_file(str(fixtures_dir / "hf_clip_tiny" / "model.safetensors"))
    save_file({k: v for k, v in hf.items() if not k.startswith("text_model.")},
              str(tmp_path / "vision_only.safetensors"))
    for name, message in (("rn50", "image tower is a ResNet"),
                          ("vision_only", "no tensor text_model.embeddings.token_embedding.weight")):
        with pytest.raises(convert.ConversionError, match=message):
            emocap_jax.load(tmp_path / f"{name}.safetensors", activation="gelu")
        result = subprocess.run(
            [sys.executable, "-m", "emocap_jax.convert", "--activation", "gelu", "--input",
             str(tmp_path / f"{name}.safetensors"), "--output", str(tmp_path / name)],
            capture_output=True, text=True)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert "not a CLIP ViT checkpoint" in result.stderr


def test_hf_layer_norm_eps_is_checked_with_activation_given(fixtures_dir):
    # --activation overrides hidden_act; it must not also skip the layer_norm_eps check (towers
    # with different epsilons cannot be one CLIPConfig.layer_norm_eps).
    state = load_file(str(fixtures_dir / "hf_clip_tiny" / "model.safetensors"))
    cfg = json.loads((fixtures_dir / "hf_clip_tiny" / "config.json").read_text())
    cfg["vision_config"]["layer_norm_eps"] = 1e-6
    for activation in (None, "quick_gelu"):
        with pytest.raises(convert.ConversionError, match="layer_norm_eps"):
            convert.infer_hf_config(state, cfg, activation)


@pytest.mark.skipif("torch" in sys.modules, reason="only meaningful without torch")
def test_torch_file_without_torch_explains_safetensors(tmp_path):
    try:
        import torch  # noqa: F401
        pytest.skip("torch is installed")
    except ImportError:
        pass
    path = tmp_path / "open_clip_pytorch_model.bin"
    path.write_bytes(b"not really a torch file")
    with pytest.raises(convert.ConversionError, match="safetensors"):
        convert.read_state_dict(path)


def test_paths_that_are_not_models_say_what_to_give(tmp_path):
    import re

    from tests.inference_fixtures import make_tiny_export

    # A training workdir with a checkpoint and no export/ yet, and its parts.
    run = tmp_path / "run"
    step = run / "checkpoints" / "300"
    step.mkdir(parents=True)
    (step / "_CHECKPOINT_METADATA").write_text("{}")
    (run / "config.json").write_text(json.dumps({"model": {}, "train": {"num_steps": 500}}))
    no_export = (re.escape(f"{run} is a training workdir with no export/ yet (newest checkpoint: "
                           f"step 300 of 500)") + ".*"
                 + re.escape(f"`python -m emocap_jax.main --config=CONFIG --workdir={run}`"))
    for path in (run, run / "checkpoints", step, run / "config.json"):
        with pytest.raises(convert.ConversionError, match=no_export):
            emocap_jax.load(path)
    with pytest.raises(FileNotFoundError, match=no_export):
        emocap_jax.load(run, source="emocap")
    # Once the run has exported: its checkpoints and the export's parts point at what loads.
    export = make_tiny_export(run / "export")
    for path in (step, run / "checkpoints", run / "config.json"):
        with pytest.raises(convert.ConversionError, match=re.escape(f"give the run folder {run}")):
            emocap_jax.load(path)
    for path in (export / "params", export / "model_config.json"):
        with pytest.raises(convert.ConversionError, match=re.escape(f"export {export}: give {export}")):
            emocap_jax.load(path)
    # Only .safetensors / .bin / .pt / .pth files are weights (a JSON file is not a torch file).
    (tmp_path / "notes.json").write_text("{}")
    with pytest.raises(convert.ConversionError, match=r"notes.json: not a weights file \(expected "
                                                      r"\.safetensors, \.bin, \.pt, \.pth\)"):
        emocap_jax.load(tmp_path / "notes.json")


def test_load_at_another_image_size(fixtures_dir):
    base = emocap_jax.load(fixtures_dir / "openclip_tiny_gelu")
    bigger = emocap_jax.load(fixtures_dir / "openclip_tiny_gelu", image_size=48)
    assert bigger.config.vision.image_size == 48
    pos = np.asarray(bigger.params["visual"]["pos_embedding"])
    assert pos.shape == (1 + 6 * 6, 64)
    # The class-token row is kept as it was.
    np.testing.assert_array_equal(pos[0], np.asarray(base.params["visual"]["pos_embedding"])[0])
    images = np.random.default_rng(0).standard_normal((2, 48, 48, 3), dtype=np.float32)
    feats = bigger.encode_image(images)
    assert feats.shape == (2, 24) and np.all(np.isfinite(feats))
    with pytest.raises(ValueError, match="32x32"):
        base.encode_image(images)
    with pytest.raises(ValueError, match="multiple"):
        emocap_jax.load(fixtures_dir / "openclip_tiny_gelu", image_size=50)


@pytest.mark.parametrize("size", [0, -8, 50, 0.0, 32.0, "32", True, False])
def test_load_refuses_an_image_size_the_model_cannot_run_at(fixtures_dir, size):
    # Not silently ignored (0, 0.0, False were falsy and kept 32 px): a ValueError naming
    # image_size, as for any other size that is not a positive multiple of the 8 px patch.
    with pytest.raises(ValueError, match=re.escape(f"image_size={size!r}: must be a positive "
                                                   f"multiple of the model's patch size 8")):
        emocap_jax.load(fixtures_dir / "openclip_tiny_gelu", image_size=size)


def test_load_image_size_none_or_its_own_keeps_the_model(fixtures_dir):
    base = emocap_jax.load(fixtures_dir / "openclip_tiny_gelu", image_size=None)
    same = emocap_jax.load(fixtures_dir / "openclip_tiny_gelu", image_size=np.int64(32))
    assert base.image_size == same.image_size == 32
    np.testing.assert_array_equal(same.params["visual"]["pos_embedding"],
                                  base.params["visual"]["pos_embedding"])


@pytest.mark.parametrize("dtype", ["", "float16", "bf16"])
def test_load_refuses_an_unknown_dtype(fixtures_dir, dtype):
    # "" was falsy and silently kept float32; every other unknown name is refused the same way.
    with pytest.raises(ValueError, match=re.escape(f"model.dtype={dtype!r}: expected one of")):
        emocap_jax.load(fixtures_dir / "openclip_tiny_gelu", dtype=dtype)


@pytest.mark.parametrize("size", ["50", "0", "-8"])
def test_convert_cli_refuses_an_impossible_image_size(fixtures_dir, tmp_path, size):
    # Not a positive multiple of the 8 px patch: one line and status 2, not a traceback (50), not
    # silently ignored (0), not a concatenation error from a negative grid (-8).
    result = subprocess.run(
        [sys.executable, "-m", "emocap_jax.convert", "--input",
         str(fixtures_dir / "openclip_tiny_gelu"), "--output", str(tmp_path / "out"),
         f"--image-size={size}"], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "positive multiple of the model's patch size 8" in result.stderr
    assert not (tmp_path / "out").exists()


def test_load_at_another_image_size_resizes_the_fine_local_head(tmp_path):
    # vision.local_head="patch_fine" has its own position table on a grid twice as fine as the
    # ViT's, with no class-token row; it is resized with the same bicubic resampling.
    import dataclasses

    from tests.inference_fixtures import make_tiny_export, tiny_model_config

    config = tiny_model_config()
    config = config.replace(vision=dataclasses.replace(config.vision, local_head="patch_fine"))
    export = make_tiny_export(tmp_path / "export", config=config)
    base = emocap_jax.load(export)
    bigger = emocap_jax.load(export, image_size=48)
    local = np.asarray(base.params["visual"]["local_pos_embedding"])
    width = local.shape[-1]
    assert local.shape == (8 * 8, width)  # 32 px / 4 px squares
    resized = np.asarray(bigger.params["visual"]["local_pos_embedding"])
    assert resized.shape == (12 * 12, width)
    with_row = convert.resize_pos_embedding(np.concatenate([np.zeros((1, width)), local]), 12)
    np.testing.assert_allclose(resized, with_row[1:], atol=1e-6)
    maps = bigger.explain(np.zeros((1, 48, 48, 3), np.uint8), ["open mouth"])
    assert maps.shape == (1, 1, 12, 12) and np.all(np.isfinite(maps))


def test_resize_pos_embedding_interpolates_smooth_tables():
    # A table that is linear in the grid coordinates must stay linear (away from the border,
    # where bicubic resampling clamps) and keep its range; same size is the identity.
    g, w = 8, 3
    yy, xx = np.meshgrid(np.arange(g), np.arange(g), indexing="ij")
    grid = np.stack([xx, yy, xx + yy], -1).reshape(g * g, w).astype(np.float32)
    pos = np.concatenate([np.full((1, w), 7.0, np.float32), grid])
    np.testing.assert_array_equal(convert.resize_pos_embedding(pos, g), pos)
    big = convert.resize_pos_embedding(pos, 16)[1:].reshape(16, 16, w)
    row = big[8, 5:11, 0]
    np.testing.assert_allclose(np.diff(row), np.full(5, 0.5), atol=1e-5)
    assert big[..., 0].min() >= -0.3 and big[..., 0].max() <= 7.3


@pytest.mark.parametrize("old,new", [(8, 4), (14, 10), (4, 6), (7, 16)])
def test_resize_pos_embedding_matches_open_clips_antialiased_bicubic(old, new):
    # open_clip resizes with F.interpolate(mode="bicubic", antialias=True, align_corners=False),
    # which reproduces Pillow's bicubic resize; a smaller grid (another --image-size below the
    # checkpoint's) must be low-pass filtered as there, not merely sampled.
    from PIL import Image

    rng = np.random.default_rng(old * 100 + new)
    grid = rng.standard_normal((old, old, 3)).astype(np.float32)
    pos = np.concatenate([np.full((1, 3), 5.0, np.float32), grid.reshape(old * old, 3)])
    want = np.stack([np.asarray(Image.fromarray(grid[..., c]).resize(
        (new, new), Image.BICUBIC)) for c in range(3)], -1).reshape(new * new, 3)
    got = convert.resize_pos_embedding(pos, new)
    np.testing.assert_array_equal(got[0], pos[0])
    np.testing.assert_allclose(got[1:], want, atol=1e-5, rtol=0)


def _torch_linear_resize(rows, new):
    """PyTorch's F.interpolate(mode="linear", align_corners=False, antialias=False) along the
    first axis, written from its definition in plain Python: output j samples the input at
    (j + 0.5) * old / new - 0.5, clamped below at 0, between rows floor(src) and the next one (the
    last row when there is none)."""
    old = len(rows)
    out = []
    for j in range(new):
        src = max((j + 0.5) * old / new - 0.5, 0.0)
        i0 = int(src)
        i1 = i0 + 1 if i0 < old - 1 else i0
        w1 = src - i0
        out.append([(1 - w1) * a + w1 * b for a, b in zip(rows[i0], rows[i1])])
    return out


@pytest.mark.parametrize("old,new", [(16, 20), (20, 16), (77, 64), (5, 77), (77, 32), (3, 3)])
def test_resize_text_pos_embedding_matches_open_clips_linear_interpolation(old, new):
    rng = np.random.default_rng(old * 100 + new)
    pos = rng.standard_normal((old, 4)).astype(np.float32)
    got = convert.resize_text_pos_embedding(pos, new)
    assert got.shape == (new, 4)
    np.testing.assert_allclose(got, _torch_linear_resize(pos.tolist(), new), atol=1e-5, rtol=0)


def test_open_clip_config_sizes_win_as_in_open_clip(fixtures_dir, tmp_path):
    # open_clip builds the model from its config and resizes the checkpoint's position tables to
    # it on load; here the config asks 48 px (a 6 x 6 grid of the 8 px patches) and 20 tokens
    # where the weights hold a 4 x 4 grid and 16 positions.
    source = fixtures_dir / "openclip_tiny_gelu"
    shutil.copy(source / "open_clip_model.safetensors", tmp_path)
    cfg = json.loads((source / "open_clip_config.json").read_text())
    cfg["model_cfg"]["vision_cfg"]["image_size"] = 48
    cfg["model_cfg"]["text_cfg"]["context_length"] = 20
    (tmp_path / "open_clip_config.json").write_text(json.dumps(cfg))
    model = emocap_jax.load(tmp_path)
    assert model.config.vision.image_size == 48 and model.config.text.context_length == 20
    state = load_file(str(source / "open_clip_model.safetensors"))
    np.testing.assert_array_equal(model.params["visual"]["pos_embedding"],
                                  convert.resize_pos_embedding(state["visual.positional_embedding"],
                                                               6))
    np.testing.assert_allclose(model.params["text"]["pos_embedding"],
                               _torch_linear_resize(state["positional_embedding"].tolist(), 20),
                               atol=1e-5, rtol=0)
    tokens = np.zeros((2, 20), np.int32)
    tokens[:, :3] = [1, 5, 999]
    assert model.encode_text(tokens).shape == (2, 24)
    assert model.encode_image(np.zeros((1, 48, 48, 3), np.uint8)).shape == (1, 24)


@pytest.mark.parametrize("section,key,value,message", [
    ("vision_cfg", "image_size", 36, "vision_cfg.image_size=36 is not a multiple of the 8 px patch"),
    ("vision_cfg", "width", 96, "vision_cfg.width=96 but the weights have 64"),
    ("vision_cfg", "patch_size", 16, "vision_cfg.patch_size=16 but the weights have 8"),
    ("text_cfg", "layers", 3, "text_cfg.layers=3 but the weights have 2"),
    ("text_cfg", "vocab_size", 2000, "text_cfg.vocab_size=2000 but the weights have 1000"),
    ("vision_cfg", "mlp_ratio", 2.0, "vision_cfg.mlp_ratio=2.0 (MLP width 128) but the weights' "
                                     "MLP is 256 wide"),
    (None, "embed_dim", 32, "embed_dim=32 but the weights have 24")])
def test_open_clip_config_sizes_the_weights_cannot_have_are_refused(fixtures_dir, tmp_path,
                                                                     section, key, value, message):
    source = fixtures_dir / "openclip_tiny_gelu"
    shutil.copy(source / "open_clip_model.safetensors", tmp_path)
    cfg = json.loads((source / "open_clip_config.json").read_text())
    (cfg["model_cfg"][section] if section else cfg["model_cfg"])[key] = value
    (tmp_path / "open_clip_config.json").write_text(json.dumps(cfg))
    with pytest.raises(convert.ConversionError, match=re.escape(message)):
        emocap_jax.load(tmp_path)


def test_open_clip_config_without_sizes_takes_open_clips_defaults(fixtures_dir, tmp_path, caplog):
    """open_clip builds the model of a model_cfg that omits a size with CLIPVisionCfg /
    CLIPTextCfg's default (image_size 224, context_length 77, patch_size 16, ...) and resizes the
    checkpoint's position tables to it (load_checkpoint), or refuses other shapes; the weights'
    own sizes were taken here instead."""
    source = fixtures_dir / "openclip_tiny_gelu"
    state = load_file(str(source / "open_clip_model.safetensors"))

    def load(edit):
        folder = tmp_path / f"m{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        shutil.copy(source / "open_clip_model.safetensors", folder)
        cfg = json.loads((source / "open_clip_config.json").read_text())
        edit(cfg["model_cfg"])
        (folder / "open_clip_config.json").write_text(json.dumps(cfg))
        return emocap_jax.load(folder)

    def without_sizes(cfg):
        del cfg["vision_cfg"]["image_size"], cfg["text_cfg"]["context_length"]

    with caplog.at_level("WARNING", logger=convert.log.name):
        model = load(without_sizes)
    assert model.config.vision.image_size == 224 and model.config.text.context_length == 77
    assert "vision_cfg.image_size=224 (absent: open_clip's default)" in caplog.text
    assert "text_cfg.context_length=77 (absent: open_clip's default)" in caplog.text
    np.testing.assert_array_equal(model.params["visual"]["pos_embedding"],
                                  convert.resize_pos_embedding(state["visual.positional_embedding"],
                                                               224 // 8))
    np.testing.assert_allclose(model.params["text"]["pos_embedding"],
                               _torch_linear_resize(state["positional_embedding"].tolist(), 77),
                               atol=1e-5, rtol=0)
    # Sizes open_clip cannot resize: its default is refused as a given value would be.
    with pytest.raises(convert.ConversionError, match=re.escape(
            "vision_cfg.patch_size=16 (absent: open_clip's default) but the weights have 8")):
        load(lambda cfg: cfg["vision_cfg"].pop("patch_size"))
    with pytest.raises(convert.ConversionError, match=re.escape(
            "text_cfg.vocab_size=49408 (absent: open_clip's default) but the weights have 1000")):
        load(lambda cfg: cfg["text_cfg"].pop("vocab_size"))
    # CLIP(embed_dim, vision_cfg, text_cfg): open_clip cannot build a model without them.
    with pytest.raises(convert.ConversionError, match="open_clip config has no embed_dim"):
        load(lambda cfg: cfg.pop("embed_dim"))


def _with_attn_mask(fixtures_dir, tmp_path, mask):
    source = fixtures_dir / "openclip_tiny_gelu"
    state = load_file(str(source / "open_clip_model.safetensors"))
    tmp_path.mkdir()
    save_file(dict(state, attn_mask=mask), str(tmp_path / "open_clip_model.safetensors"))
    shutil.copy(source / "open_clip_config.json", tmp_path)
    return tmp_path


def test_attn_mask_tensor_is_dropped_only_when_it_is_the_causal_mask(fixtures_dir, tmp_path):
    # open_clip rebuilds the text tower's causal mask (build_causal_mask: -inf above the
    # diagonal); a checkpoint that stores one loads as without it. A mask that lets a token see
    # the tokens after it describes another model and is refused, naming the tensor.
    base = emocap_jax.load(fixtures_dir / "openclip_tiny_gelu")
    causal = np.triu(np.full((16, 16), -np.inf, np.float32), 1)
    for mask in (causal, np.triu(np.ones((16, 16), bool), 1)):
        folder = _with_attn_mask(fixtures_dir, tmp_path / str(mask.dtype), mask)
        model = emocap_jax.load(folder)
        np.testing.assert_array_equal(model.params["text"]["pos_embedding"],
                                      base.params["text"]["pos_embedding"])
    for name, mask in (("bidirectional", np.zeros((16, 16), np.float32)),
                       ("transposed", causal.T.copy()), ("flat", np.zeros(16, np.float32))):
        folder = _with_attn_mask(fixtures_dir, tmp_path / name, mask)
        with pytest.raises(convert.ConversionError, match=r"tensor attn_mask \(shape .*\) is not "
                                                           r"the causal text mask"):
            emocap_jax.load(folder)


def test_encode_text_refuses_rows_without_the_pooling_token(fixtures_dir):
    """A tower pooling at the first eot_token_id (hf_clip_tiny: 999) reads a row without it at
    position 0, as transformers and open_clip do: there the causal tower has seen only the start
    token, so every such row gets the same embedding. encode_text refuses such rows instead."""
    hf = emocap_jax.load(fixtures_dir / "hf_clip_tiny")
    assert hf.config.text.eot_token_id == 999
    rows = np.array([[998, 5, 6, 999, 0, 0], [998, 5, 6, 7, 8, 0], [998, 9, 999, 0, 0, 0]])
    with pytest.raises(ValueError, match=r"rows \[1\] hold no end-of-text token 999"):
        hf.encode_text(rows)
    np.testing.assert_allclose(hf.encode_text(rows[[0, 2]])[1], hf.encode_text(rows[2:])[0],
                               atol=1e-6)
    # What the check prevents: without EOT, two different sentences pool to one embedding.
    jitted = hf._encode_text
    a, b = (np.asarray(jitted(hf.params, np.array([r], np.int32)))[0]
            for r in ([998, 5, 6, 7, 8, 0], [998, 1, 2, 3, 4, 5]))
    np.testing.assert_allclose(a, b, atol=1e-6)
    # CLIP's argmax rule (eot_token_id None) pools every row somewhere, as open_clip does.
    oc = emocap_jax.load(fixtures_dir / "openclip_tiny_gelu")
    assert oc.config.text.eot_token_id is None
    assert oc.encode_text(rows).shape == (3, 24)
    # Ids outside the vocabulary would be clamped by the embedding lookup.
    with pytest.raises(ValueError, match=r"outside the text tower's vocabulary \[0, 1000\) "
                                         r"\(row 1: 1000\)"):
        oc.encode_text(np.array([[998, 5, 999], [998, 1000, 999]]))
    with pytest.raises(ValueError, match=r"row 0: -1"):
        hf.encode_text(np.array([[998, -1, 999]]))


def test_hf_weights_file_is_read_with_a_config_without_model_type(fixtures_dir, tmp_path):
    # A config.json without model_type (hand-written or from an older exporter) is still a
    # CLIPModel config when it has tower configs: given the weights file itself it was ignored
    # and the load asked for --activation although the config lay beside the weights.
    cfg = json.loads((fixtures_dir / "hf_clip_tiny" / "config.json").read_text())
    cfg.pop("model_type", None)
    shutil.copy(fixtures_dir / "hf_clip_tiny" / "model.safetensors", tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    from_file = emocap_jax.load(tmp_path / "model.safetensors")
    from_folder = emocap_jax.load(tmp_path)
    assert from_file.config == from_folder.config
    # Another model's config beside the weights is not read as this one's.
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "model_type": "siglip"}))
    for path in (tmp_path / "model.safetensors", tmp_path):
        with pytest.raises(convert.ConversionError, match="--activation"):
            emocap_jax.load(path)
