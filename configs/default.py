"""Base configuration: every field of a run, with the values the variants start from.

Variants call `get_config()` here and override a few fields; any field can also be overridden on
the command line: `--config.train.global_batch_size=4096 --config.loss.mining.mode=both`.
"""
import ml_collections
from ml_collections import config_dict

from emocap_jax.models.config import variant


def model_config(name: str, **overrides) -> ml_collections.ConfigDict:
    """The architecture `name` ("ViT-B-16", "tiny", ...) as a ConfigDict, so each of its fields is
    overridable (`--config.model.vision.image_size=336`)."""
    cfg = variant(name).to_dict()
    cfg.update(overrides)
    # eot_token_id is None (argmax pooling) for CLIP BPE: an int placeholder, so that it can still
    # be set to a token id (`--config.model.text.eot_token_id=2`).
    if cfg["text"]["eot_token_id"] is None:
        cfg["text"]["eot_token_id"] = config_dict.placeholder(int)
    return ml_collections.ConfigDict(cfg)


def get_config():
    config = ml_collections.ConfigDict()
    config.model_name = "ViT-B-16"
    config.model = model_config("ViT-B-16")
    # "clip" (CLIP BPE, OpenAI vocabulary) or a sentencepiece `.model` path.
    config.tokenizer = "clip"

    # Initialisation: "" for random, or any checkpoint emocap_jax.load understands (open_clip or
    # Hugging Face weights, a `python -m emocap_jax.convert` folder, a training workdir).
    config.init_from = ""
    # Regexes over parameter paths ("visual/proj", "text/.*") to keep at their random init.
    config.init_exclude = ()

    # ----- data
    config.data = ml_collections.ConfigDict()
    config.data.train_dir = ""        # a dataset folder written by data_prep.captions
    config.data.max_local_sentences = 8       # R: local sentence slots per face
    config.data.local_sentences_per_step = 4  # K of the R sampled each step
    config.data.worker_count = 2              # Grain worker processes (0: in-process)
    config.data.worker_buffer_size = 2        # batches each worker prepares ahead
    config.data.read_threads = 2              # threads per process, each making whole batches
    # "skip": count corrupt records; their rows stay in the batch, blank and masked out of the losses.
    config.data.on_corrupt = "raise"
    # Augmentation: random resized crop, horizontal flip, colour jitter, random grayscale.
    config.data.crop_scale = (0.6, 1.0)
    config.data.flip_prob = 0.5
    config.data.color_jitter = 0.2            # brightness, contrast and saturation strength
    config.data.grayscale_prob = 0.1
    config.data.shuffle_seed = 0
    # Records with a label but no global caption (benchmark converters, image folders) train on
    # captions built from the label (emocap_jax/data/label_captions.py); False makes them an error.
    config.data.captions_from_labels = True
    # Synthetic-faces corpus generated into the workdir when train_dir is empty (demo, tests).
    # au_drop_probability > 0 leaves out each action unit of a face's class (key ones included)
    # with that probability, so a class's movements stop coming together: the fine-tuning corpus
    # on which the local term learns which region each sentence names (ABLATIONS.md).
    # appearance_captions adds what each face looks like (skin, hair, tilt, light, background,
    # clothes) to its global sentence, as real captions do: words that tell faces of one emotion
    # apart, whose false negatives mining is meant to remove (same images, ABLATIONS.md).
    config.data.synthetic = ml_collections.ConfigDict(
        dict(num=0, seed=0, size=96, eval_per_class=40, au_drop_probability=0.0,
             appearance_captions=False))

    # ----- losses (emocap_jax/train_step.py, emocap_jax/losses.py)
    config.loss = ml_collections.ConfigDict()
    config.loss.impl = "sharded"      # "single" | "sharded" | "chunked"
    # Columns per chunk for impl=chunked, a divisor of the step's batch (unused by the others).
    config.loss.chunk_size = 0
    config.loss.summary_weight = 1.0
    # The local term's negatives are not the whole batch but a group of faces on one device
    # (losses.sharded_local_loss; cost B x B*R x P x D per device): its value and gradient depend
    # on the group's size.
    config.loss.local_weight = 1.0
    # Faces per group of the local term's negatives. 0: each device's share of a (micro-)batch,
    # global_batch_size / (devices x optim.grad_accum_steps), fixed at the run's start; the run
    # then records it here (WORKDIR/config.json and every checkpoint), so a run resumed on
    # another mesh keeps the same groups, and a mesh that cannot hold them is refused. Setting it
    # (a divisor of that share, at least 2: one face has no negatives) gives the same objective
    # on every mesh whose share it divides; setting another value than a resumed run's is
    # accepted, with a warning, as a deliberate change of the objective.
    config.loss.local_group_size = 0
    config.loss.local_pool_temperature = 0.1
    # Weight of the local term's within-image part: an image's own sentences told apart by what it
    # pools for each (losses.local_region_sentence_loss). Without it the maps need not localise.
    config.loss.local_within_image_weight = 0.0
    # Label positives (UniCL): pairs whose records share a label_id >= 0 are positives of the
    # global and summary terms, each row's target spread over its same-label columns.
    config.loss.label_positives = False
    # Mined positives (emocap_jax/mining.py MiningConfig). guide: which sentence
    # embeddings judge similarity ("summary" or "global"). threshold: absolute cosine floor (-1:
    # none); top_k: at most this many mined positives per row (0: no cap); relative_threshold: z,
    # a pair must reach its row's mean + z * std of guide similarity (unset: off); min_spread:
    # rows whose guide similarities have a smaller std mine nothing; image_threshold: the cosine
    # floor of the image guide (modes "image" and "both"; unset: `threshold`, although image-image
    # cosines have another range than sentence-sentence ones). The cap, the relative threshold
    # and the spread gate keep mining from merging the batch at random init, where every guide
    # embedding looks alike and a fixed threshold alone would pass every pair. agreement_gate:
    # scale the mined weight by the in-batch agreement of the model's own pairs (about 1/N at
    # random init), so guessed positives cannot drown the true pair before the model has learnt.
    # mutual: a pair must be within both rows' top_k (mutual nearest neighbours), so a face whose
    # class is rare in the batch mines fewer of the nearest other class's faces. On: with mining
    # on the global term at threshold 0.9 it raised compound UAR at each of six seeds on the
    # synthetic corpora (mean +3.4 in the full model, +3.6 on captions that name the looks, where
    # the compound classes are the rare ones), cut the pairs mined across labels by a third to
    # two thirds, and was level on real faces (ABLATIONS.md, "A mutual cap on the synthetic
    # corpora"; RESULTS.md, "A mutual cap"). It needs a cap: with top_k=0 set mutual=False.
    config.loss.mining = ml_collections.ConfigDict(dict(
        mode="text", guide="summary", threshold=0.9, top_k=8, weight=1.0, warmup_steps=500,
        relative_threshold=config_dict.placeholder(float), min_spread=0.01,
        image_threshold=config_dict.placeholder(float), agreement_gate=False, mutual=True,
        # Which contrastive terms take the mined positives: ("global",), ("summary",) or both.
        # The global term alone: with the local term on (the full objective), mining on both
        # terms cost compound UAR on the synthetic corpus (78.6 +- 1.0 against 83.3 +- 2.7 on
        # the global term alone and 84.2 +- 1.8 without mining, three seeds each) and, where
        # action units come apart, zero-shot UAR (65.6 +- 2.8 against 78.2 +- 0.3), with AU F1
        # and grounding within the seed spread (ABLATIONS.md, "Mining's terms in the full model").
        terms=("global",)))

    # ----- optimisation
    config.optim = ml_collections.ConfigDict()
    config.optim.learning_rate = 5e-4
    config.optim.warmup_steps = 2000
    config.optim.end_learning_rate_fraction = 0.0
    config.optim.weight_decay = 0.2
    config.optim.b1 = 0.9
    config.optim.b2 = 0.98
    config.optim.eps = 1e-6
    config.optim.grad_clip_norm = 1.0
    # Per-parameter learning-rate multipliers: ((regex, multiplier), ...), first match wins;
    # multiplier 0 freezes (e.g. (("visual/.*", 0.0),) trains only the text tower).
    config.optim.lr_multipliers = ()
    # k > 1 splits each step's batch into k micro-batches (micro-batch j: faces j, j+k, j+2k, ...,
    # so every device keeps its own faces) and averages their losses and gradients. It saves
    # memory, not the batch: the global and summary terms' negatives (and the mined positives)
    # span one micro-batch of global_batch_size / k faces, the local term's a group of faces on one
    # device (loss.local_group_size; by default each device's share of the micro-batch, which
    # must hold at least 2 faces), so k micro-batches are not the contrastive loss of the whole
    # batch.
    config.optim.grad_accum_steps = 1

    # ----- training loop
    config.train = ml_collections.ConfigDict()
    config.train.num_steps = 10_000
    config.train.global_batch_size = 1024
    config.train.seed = 0
    config.train.log_every = 50
    config.train.checkpoint_every = 1000
    config.train.keep_checkpoints = 3
    config.train.on_nonfinite = "error"   # or "skip": drop the step's update and go on
    config.train.eval_every = 0           # periodic zero-shot eval (0: only at the end)
    # XLA's persistent compilation cache ("none" disables it); repeated and resumed runs start fast.
    config.train.compilation_cache_dir = "~/.cache/emocap_jax/jax_cache"
    # Orbax replica-parallel saving of replicated arrays: faster saves of big models on many hosts,
    # at the cost of compiling a slicing program per parameter shape.
    config.train.checkpoint_replica_parallel = False

    # ----- devices
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))  # -1: all remaining devices

    # ----- evaluation
    config.eval = ml_collections.ConfigDict()
    config.eval.zero_shot_dir = ""       # a labelled dataset folder (benchmark converter output)
    config.eval.batch_size = 256
    config.eval.classes = ()             # class names in label_id order ("" -> from metadata)
    # What --mode=eval runs, each "BENCHMARK:PROTOCOL[:DATA_DIR]" (benchmarks and protocols:
    # `python -m emocap_jax.evaluate --list`), e.g. ("synthetic:zero_shot",
    # "synthetic:linear_probe", "rafdb:zero_shot:/data/rafdb_tfrecords"). Synthetic benchmarks
    # need no DATA_DIR ("synthetic" is the zero_shot_dir / the corpus's held-out split); the
    # report goes to WORKDIR/eval/. Periodic evals during training stay zero-shot on zero_shot_dir.
    config.eval.benchmarks = ("synthetic:zero_shot",)
    return config


def clip_finetune_config(model_name: str, global_batch_size: int, num_steps: int,
                         learning_rate: float):
    """EmoCapCLIP training from pretrained CLIP weights on an accelerator (the paper's setting):
    bf16 compute, short warm-up, mining from the first step (CLIP's caption embeddings are already
    meaningful, so the warm-up that training from scratch needs is not). Blocks are remat'ed
    keeping their matmul outputs ("dots"): on an H200 that ViT-B/16 step was the fastest measured
    and used 13 GB at batch 256 against 46 GB without remat (PERFORMANCE.md)."""
    config = get_config()
    config.model_name = model_name
    config.model = model_config(model_name, dtype="bfloat16", remat=True, remat_policy="dots")
    config.train.global_batch_size = global_batch_size
    config.train.num_steps = num_steps
    config.optim.learning_rate = learning_rate
    config.optim.warmup_steps = 300
    config.optim.weight_decay = 0.1
    config.loss.mining.warmup_steps = 0
    return config
