"""The FABA-Bench, Face-Human-Bench and FaceXBench converters on fabricated releases in the exact
structure of the files their authors publish (a handful of entries, images drawn here), including
missing images and malformed entries: the counts of images and questions written, skipped and
rejected, the prompts, and then the whole way through `emocap_jax.evaluate` into the report's rows.

Structures copied from: Face-Human-Bench/face-human-bench data/Face-Human-Bench/test/json/en/*.json
(and the authors' data/prepare_data.py for where images go), Kartik-3004/facexbench
benchmark/*.json, JackYFL/EmoLA README (FABAInstruct/eval) and emollava/eval/eval_FABA.py (labels).
"""
import csv
import io
import json
import pathlib
import warnings

import numpy as np
import pytest
from PIL import Image

from data_prep import benchmarks
from data_prep.benchmark_formats import LayoutError, faba, face_human_bench, facexbench
from emocap_jax.data import example_codec, shard_writer, tfrecord
from emocap_jax.evaluate import multiple_choice, registry, report, runner


def write_image(path, value=120, size=(24, 20)):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, 255 - value, value // 2)).save(
        path, format="JPEG" if path.suffix == ".jpg" else "PNG")
    return path


def write_json(path, obj):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=4), encoding="utf-8")
    return path


def convert(name, root, out, **kwargs):
    kwargs.setdefault("workers", 1)
    return benchmarks.convert_benchmark(name, root, out, progress=False, **kwargs)


def read_dataset(directory):
    directory = pathlib.Path(directory)
    records = {}
    for shard in shard_writer.shard_paths(directory):
        for _, data in tfrecord.iter_records(shard):
            rec = example_codec.decode_record(data)
            records[rec.id] = rec
    rejected = [json.loads(line) for line in
                (directory / shard_writer.REJECTED_FILE).read_text().splitlines()]
    return shard_writer.load_metadata(directory), records, {r["id"]: r["reason"] for r in rejected}


def read_questions(directory):
    lines = (pathlib.Path(directory) / "questions.jsonl").read_text().splitlines()
    return {q["qid"]: q for q in map(json.loads, lines)}


def code(reason):
    return reason.split(":", 1)[0]


# ---------------------------------------------------------------- Face-Human-Bench

def fhb_entry(qtype, question, options, answer, image_paths, source_paths=None, labels=None):
    """One entry of data/Face-Human-Bench/<split>/json/en/<type>.json."""
    return {"type": qtype, "QA": {"question": question, "options": options, "answer": answer},
            "image": {"image_paths": image_paths,
                      "source": {"dataset": "X", "paths": source_paths or {},
                                 "labels": labels or {}}}}


def fabricate_face_human_bench(root):
    """A clone of the repository with a few entries per type; prepared images (the authors'
    prepare_data.py output) in <split>/output/, one source copy under ROOT/raw_data/."""
    data = root / "data/Face-Human-Bench"
    prepared = data / "test/output"
    age = "eval_data/face/age/basic_10/{}/sample_{:04d}.jpg"
    ages = [
        fhb_entry("face_age_basic_10", "Which of the following ages is the most likely for the "
                  "person in the picture?", ["20", "30", "40", "50"], 0,
                  {"cropped": age.format("cropped", 1), "original": age.format("original", 1)},
                  {"original": "raw_data/face/UTKFace/part2/20_0_1_1.jpg"}),
        # cropped not prepared (rejected); original only as the raw_data copy (accepted)
        fhb_entry("face_age_basic_10", "Approximately how old is the person?",
                  ["30", "40", "50", "60"], 2,
                  {"cropped": age.format("cropped", 2), "original": age.format("original", 2)},
                  {"original": "raw_data/face/UTKFace/part1/50_1_0_2.jpg"}),
        # malformed: the answer is no option index -> both variants rejected
        fhb_entry("face_age_basic_10", "How old?", ["5", "10", "15", "20"], 7,
                  {"cropped": age.format("cropped", 3), "original": age.format("original", 3)}),
    ]
    write_image(prepared / age.format("cropped", 1), 10)
    write_image(prepared / age.format("original", 1), 20)
    write_image(root / "raw_data/face/UTKFace/part1/50_1_0_2.jpg", 30)
    en = data / "test/json/en"
    write_json(en / "face_age_basic_10.json", {"data": ages})
    write_json(en / "face_recognition_basic.json", {"data": [fhb_entry(
        "face_recognition_basic", "Do the individuals depicted in both images happen to be "
        "identical?", ["yes", "no"], 0,
        {"cropped": "eval_data/face/recognition/basic/cropped/sample_0002.jpg"},
        {"cropped_1": "raw_data/face/LFW/data/A/A_0001.jpg",
         "cropped_2": "raw_data/face/LFW/data/A/A_0002.jpg"}, ["positive"])]})
    attack = "eval_data/face/attack/physical_paper/cropped/sample_0002.jpg"
    write_json(en / "face_attack_physical_paper.json", {"data": [fhb_entry(
        "face_attack_physical_paper", "Is the face in the picture a physical spoof?",
        ["yes", "no"], 1, {"cropped": attack},
        {"cropped": "raw_data/face/SiW-Mv2/cropped/Live/Live_41/frame_0000.jpg"},
        ["Bona Fides"])]})
    write_image(prepared / attack, 40)
    count = "eval_data/human/spatial_relation/count_10/original/sample_{:04d}.jpg"
    write_json(en / "human_spatial_relation_count_10.json", {"data": [
        fhb_entry("human_spatial_relation_count_10", "How many individuals are in this picture?",
                  [2, 3, 4, 5], 3, {"original": count.format(1)}, labels=[5]),
        fhb_entry("human_spatial_relation_count_10", "How many individuals are in this picture?",
                  [6, 7, 8, 11], 1, {"original": count.format(2)}, labels=[7]),
    ]})
    write_image(prepared / count.format(1), 50)
    expr = "eval_data/face/expression/basic/{}/sample_0021.jpg"
    write_json(en / "face_expression_basic.json", {"data": [
        fhb_entry("face_expression_basic", "What is the facial expression of the person in "
                  "this image?", ["Fear", "Disgust", "Happiness", "Sadness"], 0,
                  {"original": expr.format("original"), "cropped": expr.format("cropped")},
                  {"original": "raw_data/face/RAF-DB/basic/Image/original/test_2279.jpg"}),
        "not an entry",
    ]})
    write_image(prepared / expr.format("cropped"), 60)
    corrupt = prepared / expr.format("original")
    corrupt.parent.mkdir(parents=True)
    corrupt.write_bytes(b"not an image")  # found, but decodes to a rejection
    (en / "broken.json").write_text("{\"data\": [", encoding="utf-8")
    # The Chinese files are not read.
    write_json(data / "test/json/zh/face_age_basic_10_zh.json", {"data": ages})
    dev = "eval_data/face/expression/basic/cropped/sample_0001.jpg"
    write_json(data / "dev/json/en/face_expression_basic.json", {"data": [fhb_entry(
        "face_expression_basic", "What is the facial expression?", ["Happiness", "Anger"], 1,
        {"cropped": dev})]})
    write_image(data / "dev/output" / dev, 70)


def test_face_human_bench_counts_prompts_and_reasons(tmp_path):
    root = tmp_path / "face-human-bench"
    fabricate_face_human_bench(root)
    summary = convert("face-human-bench", root, tmp_path / "out")
    test, dev = summary["datasets"]
    assert (test["split"], dev["split"]) == ("test", "dev")
    # images: 7 needed by scored questions, the corrupt one rejected
    assert (test["num_inputs"], test["num_written"], test["num_rejected"]) == (7, 6, 1)
    q = test["questions"]
    assert (q["num_questions"], q["num_scored"], q["num_skipped"], q["num_rejected"]) == \
        (14, 6, 2, 6)
    assert q["skipped_by_reason"] == {"counting": 1, "identity_comparison": 1}
    assert q["rejected_by_reason"] == {"image_not_found": 1, "image_not_written": 1,
                                       "malformed_entry": 4}
    assert q["by_task"]["face_age_basic_10-cropped"] == {"scored": 1, "skipped": 0,
                                                         "rejected": 2}

    meta, records, reasons = read_dataset(tmp_path / "out/test")
    assert meta["questions"] == q and meta["classes"] == []
    assert sorted(records) == sorted([
        "eval_data/face/age/basic_10/cropped/sample_0001",
        "eval_data/face/age/basic_10/original/sample_0001",
        "eval_data/face/age/basic_10/original/sample_0002",  # from the raw_data copy
        "eval_data/face/attack/physical_paper/cropped/sample_0002",
        "eval_data/human/spatial_relation/count_10/original/sample_0001",
        "eval_data/face/expression/basic/cropped/sample_0021"])
    assert all(r.label_id == -1 and not r.aus for r in records.values())
    # rejected.jsonl: the undecodable image, then every rejected question with its reason
    assert len(reasons) == 7
    assert code(reasons["eval_data/face/expression/basic/original/sample_0021"]) == "bad_image"
    assert code(reasons["face_expression_basic[0]:original"]) == "image_not_written"
    assert "bad_image" in reasons["face_expression_basic[0]:original"]
    missing = reasons["face_age_basic_10[1]:cropped"]
    assert code(missing) == "image_not_found" and "prepare_data.py" in missing
    assert "test/output/eval_data/face/age/basic_10/cropped/sample_0002.jpg" in missing
    assert "answer 7" in reasons["face_age_basic_10[2]:original"]
    assert "not an object" in reasons["face_expression_basic[1]"]
    assert "broken.json is not JSON" in reasons["broken"]

    questions = read_questions(tmp_path / "out/test")
    assert len(questions) == 8  # scored + skipped; the rejected are in rejected.jsonl only
    age = questions["face_age_basic_10[0]:cropped"]
    assert age["id"] == "eval_data/face/age/basic_10/cropped/sample_0001"
    assert age["task"] == "face_age_basic_10-cropped" and age["answer"] == 0
    assert age["prompts"][0] == "a photo of a 20-year-old person."
    assert questions["face_attack_physical_paper[0]:cropped"]["prompts"] == [
        "a photo of a printed paper photo of a face held up to the camera.",
        "a photo of a real, live person's face."]
    assert questions["human_spatial_relation_count_10[0]:original"]["options"] == \
        ["2", "3", "4", "5"]
    assert questions["human_spatial_relation_count_10[0]:original"]["prompts"][0] == \
        "a photo of 2 people."
    assert questions["human_spatial_relation_count_10[1]:original"]["skip"].startswith(
        "counting: counts up to 11")
    recognition = questions["face_recognition_basic[0]:cropped"]
    assert "id" not in recognition and code(recognition["skip"]) == "identity_comparison"
    assert "happiness" in questions["face_expression_basic[0]:cropped"]["prompts"][2]
    # The evaluator reads the file as written.
    loaded = multiple_choice.load_questions(tmp_path / "out/test/questions.jsonl")
    assert sum(1 for x in loaded if x.skip) == 2
    assert multiple_choice.option_texts(loaded[0]) == list(age["prompts"])

    assert dev["num_written"] == 1 and dev["questions"]["num_scored"] == 1
    assert convert("face-human-bench", root, tmp_path / "dev_only",
                   split="dev")["datasets"][0]["split"] == "dev"


def test_face_human_bench_layout_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LayoutError, match="data/Face-Human-Bench/test/json/en"):
        convert("face-human-bench", tmp_path / "empty", tmp_path / "out")


def test_face_human_bench_rules_cover_the_release_types():
    # The 25 English question types of the release (dev and test alike).
    released = {
        "face_age_basic_5", "face_age_basic_10", "face_age_basic_15",
        "face_attack_digital_expression_swap", "face_attack_digital_identity_swap",
        "face_attack_physical_paper", "face_attack_physical_replay", "face_attribute_compound",
        "face_expression_basic", "face_expression_compound", "face_recognition_basic",
        "face_recognition_cross_age", "face_recognition_cross_pose", "face_recognition_mask",
        "face_recognition_similar_looking", "human_action_basic", "human_attribute_compound",
        "human_attribute_compound_cropped", "human_reid_basic",
        "human_social_relation_occupation", "human_social_relation_relationship",
        "human_spatial_relation_count_10", "human_spatial_relation_count_100",
        "human_spatial_relation_count_100plus", "human_spatial_relation_location"}
    assert set(face_human_bench.PROMPT_RULES) == released
    rule = face_human_bench.PROMPT_RULES
    assert rule["face_expression_compound"]("?", ["Fearfully Surprised", "Sadly Angry"]) == (
        "This image portrays a compound expression of someone fearfully surprised.",
        "This image portrays a compound expression of someone sadly angry.")
    assert rule["human_social_relation_occupation"]("?", ["cook/chef", "barista"]) == (
        "a photo of a cook or chef.", "a photo of a barista.")
    assert rule["human_spatial_relation_count_100plus"]("?", ["100", "300"]).startswith(
        "counting")


# ---------------------------------------------------------------- FaceXBench

def fx_file(category, sub, dataset, num_images, questions):
    """benchmark/<name>.json of the release."""
    return {"category": category, "sub-category": sub, "dataset": dataset,
            "question_type": "MCQ", "num_images": num_images,
            "prepend_text": "You have to perform the task.",
            "postpend_text": "Please answer the question and provide only the correct option "
                             "letter, e.g., A, B, C, D.",
            "questions": questions}


def fx_question(paths, text, options, letter, answer=None):
    q = {"image_paths": paths, "question_text": text, "options": options,
         "correct_answer_option": letter}
    q["answer"] = options["ABCD".index(letter)] if answer is None and letter in "ABCD" \
        else answer
    return q


def fabricate_facexbench(root):
    bench = root / "benchmark"
    img = "images/affectnet_single_mcq/question_{}.png"
    write_image(bench / img.format(1), 10)
    expr = "Which expression is the person showing in the image?"
    write_json(bench / "affectnet_single_mcq.json", fx_file(
        "attributes_expression", "expression", "affectnet", "single", {
            "1": fx_question([img.format(1)], expr, ["happy", "sad", "neutral", "surprise"], "D"),
            "2": fx_question([img.format(2)], expr, ["fear", "sad", "neutral", "anger"], "B"),
            "3": fx_question([img.format(1)], expr, ["fear", "sad", "neutral", "anger"], "E",
                             answer="x"),
            "4": fx_question([img.format(1)], expr, ["fear", "sad", "neutral", "anger"], "A",
                             answer="anger"),
            "5": fx_question([img.format(1)], expr,
                             ["None of the above", "sad", "neutral", "anger"], "B"),
            "6": fx_question([img.format(1)], "What is the main expression of the person in "
                             "the image?", ["anger", "surprise", "contempt", "happy"], "B"),
        }))
    write_json(bench / "affectnet_multiple_mcq.json", fx_file(
        "attributes_expression", "expression", "affectnet", "multiple", {
            "1": fx_question(["images/affectnet_multiple_mcq/question_1_1.png",
                              "images/affectnet_multiple_mcq/question_1_2.png"],
                             "Which images have a person with the expression 'anger'?",
                             ["Image 2", "All of the images", "None of the images", "Image 1"],
                             "D")}))
    celeba = "images/celeba_single_mcq/question_{}.png"
    write_image(bench / celeba.format(3), 30)
    write_json(bench / "celeba_single_mcq.json", fx_file(
        "attributes_expression", "attributes", "celeba", "single", {
            "1": fx_question([celeba.format(1)], "Which of the following attributes is NOT "
                             "present in the image?", ["Bangs", "Rosy_Cheeks", "Young", "Male"],
                             "B"),
            "2": fx_question([celeba.format(2)], "How many attributes are present in the image?",
                             [8, 9, 10, 11], "B", answer="9"),
            "3": fx_question([celeba.format(3)], "Identify which of the following attributes is "
                             "present in the image.", ["Wearing_Hat", "Mustache", "Bangs",
                                                        "Goatee"], "A"),
        }))
    wmca = "data/WMCA/RGB/{}/Frame_25.png"
    write_image(bench / wmca.format("012_03_004_4_03"), 40)  # a source-dataset file, placed
    write_json(bench / "wmca_single_mcq.json", fx_file("fas_deepfakes", "fas", "wmca", "single", {
        "1": fx_question([wmca.format("012_03_004_4_03")],
                         "Is this image depicting a spoof attack?", ["Yes", "No"], "A"),
        "2": fx_question([wmca.format("012_03_004_4_03")],
                         "Is this image a bonafide person or its a spoof attack?",
                         ["Bonafide", "Attack"], "B"),
        "3": fx_question([wmca.format("021_01_000_0_00")],
                         "Is this image a bonafide person or its a spoof attack?",
                         ["Bonafide", "Attack"], "A"),
    }))
    write_json(bench / "biwi_single_mcq.json", fx_file(
        "face_localization", "headpose", "biwi", "single", {
            "1": fx_question(["images/biwi_single_mcq/question_1.png"],
                             "What is the pitch angle range of headpose orientation for the "
                             "person in this image?", ["0 to 10", "10 to 20", "-10 to 0",
                                                       "-20 to -10"], "C")}))
    tools = fx_file("tools_use", "tools_retrieval", "gpt4o", "zero", {
        "1": fx_question(["images/tools_retrieval/question_1.png"], "Which sequence of API "
                         "function calls would accomplish this?",
                         ["api_4-detect_spoofing", "api_1-predict_age", "api_2-classify_gender",
                          "api_10-detect_expression"], "D")})
    tools["context"] = "Ignore the black image provided."
    write_json(bench / "tools_retrieval.json", tools)
    write_json(bench / "garbage.json", [1, 2, 3])


def test_facexbench_counts_prompts_and_reasons(tmp_path):
    root = tmp_path / "facexbench"
    fabricate_facexbench(root)
    summary = convert("facexbench", root, tmp_path / "out")
    (data,) = summary["datasets"]
    assert data["split"] == "test" and data["output"] == str(tmp_path / "out/test")
    # three distinct images: affectnet question_1 serves two questions
    assert (data["num_inputs"], data["num_written"], data["num_rejected"]) == (3, 3, 0)
    q = data["questions"]
    assert (q["num_questions"], q["num_scored"], q["num_skipped"], q["num_rejected"]) == \
        (16, 4, 7, 5)
    assert q["skipped_by_reason"] == {
        "counting": 1, "negated_question": 1, "option_refers_to_options": 1,
        "several_images": 1, "task_not_scorable": 1, "text_only": 1, "yes_no_answer": 1}
    assert q["rejected_by_reason"] == {"image_not_found": 2, "malformed_entry": 3}
    assert q["by_task"]["expression"] == {"scored": 2, "skipped": 2, "rejected": 3}

    meta, records, reasons = read_dataset(tmp_path / "out/test")
    assert sorted(records) == ["data/WMCA/RGB/012_03_004_4_03/Frame_25",
                               "images/affectnet_single_mcq/question_1",
                               "images/celeba_single_mcq/question_3"]
    assert len(reasons) == 5 and meta["num_rejected"] == 5
    assert code(reasons["affectnet_single_mcq/2"]) == "image_not_found"
    assert "does not ship" not in reasons["affectnet_single_mcq/2"]
    assert "FaceXBench does not ship data/" in reasons["wmca_single_mcq/3"]
    assert "correct_answer_option 'E'" in reasons["affectnet_single_mcq/3"]
    assert "answer 'anger' is not option A" in reasons["affectnet_single_mcq/4"]
    assert "'questions' object" in reasons["garbage"]

    questions = read_questions(tmp_path / "out/test")
    assert len(questions) == 11
    assert questions["affectnet_single_mcq/1"]["prompts"] == [
        "This image portrays an expression of happiness.",
        "This image portrays an expression of sadness.",
        "This image portrays an expression of neutral.",
        "This image portrays an expression of surprise."]
    assert questions["affectnet_single_mcq/1"]["answer"] == 3
    assert questions["affectnet_single_mcq/6"]["id"] == "images/affectnet_single_mcq/question_1"
    assert questions["celeba_single_mcq/3"]["prompts"][0] == "a photo of a person, wearing hat."
    assert questions["wmca_single_mcq/2"]["prompts"][1].startswith(
        "a photo of a face presentation attack")
    assert code(questions["wmca_single_mcq/1"]["skip"]) == "yes_no_answer"
    assert code(questions["affectnet_multiple_mcq/1"]["skip"]) == "several_images"
    assert code(questions["tools_retrieval/1"]["skip"]) == "text_only"


def test_facexbench_rules_cover_the_release_sub_categories(tmp_path):
    # The 14 sub-categories of the release (aggregate_results.py's categories_subcategories).
    assert set(facexbench.PROMPT_RULES) == {
        "age", "gender", "race", "expression", "attributes", "headpose", "segmentation",
        "crowd_counting", "hr_fr", "lr_fr", "celebrity_identification", "fas", "deepfakes",
        "tools_retrieval"}
    rule = facexbench.PROMPT_RULES
    assert rule["age"]("?", ["30-39", "20-29"]) == ("a photo of a person aged 30-39.",
                                                    "a photo of a person aged 20-29.")
    assert rule["gender"]("?", ["Male", "Female"])[0] == "a photo of a male person."
    with pytest.raises(LayoutError, match="benchmark/\\*.json"):
        convert("facexbench", tmp_path, tmp_path.with_name(tmp_path.name + "_out"))


# ---------------------------------------------------------------- FABA-Bench

def faba_entry(image, label, id_=None):
    """One annotation of FABAInstruct/eval/eval_*_anno.json (keys of eval_FABA.py)."""
    entry = {"source": "AffectNet", "image": image, "label": label,
             "gpt4": "The person appears to ...", "landmark": image.replace(
                 "/images/", "/landmarks/").replace(".jpg", ".npy")}
    if id_ is not None:
        entry["id"] = id_
    return entry


def fabricate_faba(root):
    """ROOT is the folder holding FABAInstruct/ (eval_FABA.py's --data-dir)."""
    eval_dir = root / "FABAInstruct/eval"
    img = "FABAInstruct/eval/images/AffectNet/AffectNet_v2/{}/{}.jpg"
    for i in range(6):
        write_image(root / img.format(1, f"e{i}"), 20 * i)
        write_image(root / img.format(2, f"a{i}"), 20 * i + 5)
    write_json(eval_dir / "eval_emotion_anno.json", [
        faba_entry(img.format(1, "e0"), 0, "AffectNet/AffectNet_v2/1/e0"),
        faba_entry(img.format(1, "e1"), "Sadness", "AffectNet/AffectNet_v2/1/e1"),
        faba_entry(img.format(1, "e2"), "happy"),                  # alias; id from the path
        faba_entry(img.format(1, "e3"), 9, "bad_index"),
        faba_entry(img.format(1, "e4"), "Contempt", "unknown_class"),
        {"source": "AffectNet", "label": 1, "id": "no_image"},
        faba_entry(img.format(1, "missing"), 6, "missing_image"),
        "not an object",
        faba_entry(img.format(1, "e5"), "Fear", "AffectNet/AffectNet_v2/1/e0"),  # id repeated
    ])
    write_json(eval_dir / "eval_au_anno.json", [
        faba_entry(img.format(2, "a0"), "1, 2, 4", "a0"),
        faba_entry(img.format(2, "a1"), "", "a1"),               # no active AU
        faba_entry(img.format(2, "a2"), "AU12, AU25, 18", "a2"),  # 18 is outside the vocabulary
        faba_entry(img.format(2, "a3"), ["6", "12"], "a3"),
        faba_entry(img.format(2, "a4"), "1, x", "bad_au"),
        {"image": img.format(2, "a5"), "id": "no_label"},
        faba_entry(img.format(2, "gone"), "4", "missing_image"),
    ])


def test_faba_bench_emotion_and_au(tmp_path):
    root = tmp_path / "data"
    fabricate_faba(root)
    summary = convert("faba-bench", root, tmp_path / "out")
    emotion, au = summary["datasets"]
    assert (emotion["split"], au["split"]) == ("emotion", "au")
    assert (emotion["num_inputs"], emotion["num_written"], emotion["num_rejected"]) == (9, 3, 6)
    assert (au["num_inputs"], au["num_written"], au["num_rejected"]) == (7, 4, 3)
    assert "questions" not in emotion

    meta, records, reasons = read_dataset(tmp_path / "out/emotion")
    assert meta["classes"] == list(faba.EMOTION_CLASSES)
    assert {i: (r.label, r.label_id) for i, r in records.items()} == {
        "AffectNet/AffectNet_v2/1/e0": ("happiness", 0),
        "AffectNet/AffectNet_v2/1/e1": ("sadness", 1),
        "FABAInstruct/eval/images/AffectNet/AffectNet_v2/1/e2": ("happiness", 0)}
    assert {i: code(r) for i, r in reasons.items()} == {
        "bad_index": "label_out_of_range", "unknown_class": "unknown_class",
        "no_image": "malformed_entry", "missing_image": "image_not_found",
        "eval_emotion_anno.json[7]": "malformed_entry",
        "AffectNet/AffectNet_v2/1/e0": "duplicate_id"}
    assert meta["class_counts"] == {"happiness": 2, "sadness": 1, "surprise": 0, "anger": 0,
                                    "neutral": 0, "disgust": 0, "fear": 0}

    meta, records, reasons = read_dataset(tmp_path / "out/au")
    assert meta["classes"] == [] and sorted(records) == ["a0", "a1", "a2", "a3"]
    active = {i: sorted(k for k, v in r.aus.items() if v > 0) for i, r in records.items()}
    assert active == {"a0": ["AU1", "AU2", "AU4"], "a1": [], "a2": ["AU12", "AU18", "AU25"],
                      "a3": ["AU12", "AU6"]}
    assert set(records["a1"].aus) == {f"AU{c}" for c in faba.AU_VOCABULARY}
    assert {i: code(r) for i, r in reasons.items()} == {
        "bad_au": "bad_label", "no_label": "malformed_entry", "missing_image": "image_not_found"}

    # ROOT may be FABAInstruct/eval itself; one split alone needs only its annotation file.
    (root / "FABAInstruct/eval/eval_emotion_anno.json").unlink()
    (only_au,) = convert("faba-bench", root / "FABAInstruct/eval", tmp_path / "au_only",
                         split="au")["datasets"]
    assert (only_au["num_written"], only_au["num_rejected"]) == (4, 3)
    with pytest.raises(LayoutError, match="FABAInstruct/eval/eval_emotion_anno.json"):
        convert("faba-bench", root, tmp_path / "none")


def test_faba_annotation_file_that_is_not_utf8_names_line_and_byte(tmp_path):
    path = tmp_path / "FABAInstruct/eval/eval_emotion_anno.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(b'[\n  {"image": "a.jpg",\n   "label": "caf\xe9"}\n]\n')
    with pytest.raises(LayoutError, match=r"eval_emotion_anno\.json is not UTF-8 text: byte 16 "
                                          r"of line 3 \(0xe9\)"):
        convert("faba-bench", tmp_path, tmp_path.with_name(tmp_path.name + "_out"),
                split="emotion")
    assert not tmp_path.with_name(tmp_path.name + "_out").exists()


def test_faba_constants_match_the_registry():
    assert faba.EMOTION_CLASSES == registry.FABA_EMOTION_CLASSES
    assert faba.SCORED_AUS == registry.FABA_AUS
    assert set(faba.SCORED_AUS) <= set(faba.AU_VOCABULARY)
    for name, converter in (("faba-emotion", "faba-bench"), ("faba-au", "faba-bench"),
                            ("face-human-bench", "face-human-bench"),
                            ("facexbench", "facexbench")):
        spec = registry.get(name)
        assert spec.converter == converter
        assert spec.test_split in registry.LAYOUTS[converter].splits


def test_cli_prints_question_counts(tmp_path, capsys):
    assert benchmarks.main(["--list"]) == 0
    listed = capsys.readouterr().out
    assert all(n in listed for n in ("faba-bench", "face-human-bench", "facexbench"))
    root = tmp_path / "facexbench"
    fabricate_facexbench(root)
    assert benchmarks.main(["--name", "facexbench", "--root", str(root), "--output",
                            str(tmp_path / "out"), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "questions: 4 of 16 scored, 7 skipped, 5 rejected" in out
    assert "skipped several_images: 1" in out and "rejected image_not_found: 2" in out


# ---------------------------------------------------------------- checks every question gets

def test_generic_checks_and_counts():
    from data_prep.benchmark_formats import questions as mcq
    # Face-Human-Bench test human_attribute_compound.json#data[56] repeats a wrong option: its
    # two equal prompts make it duplicate_options; a repeated right option is the more specific
    # ambiguous_answer (the answer would be left to tie-breaking).
    options = ("short hair", "a face mask", "a face mask", "a hat")
    assert mcq.generic_skip("Which?", options, 0) == ""
    assert mcq.repeated_prompts(options, options) == (
        "duplicate_options: options 1, 2 ('a face mask', 'a face mask') all read 'a face mask'")
    assert mcq.repeated_prompts(("a", "b"), ("A  photo.", "a photo.")).startswith(
        "duplicate_options: options 0, 1")
    assert mcq.repeated_prompts(("a", "b"), ("a photo.", "a photograph.")) == ""
    assert mcq.generic_skip("Which?", options, 1).startswith("ambiguous_answer")
    assert mcq.generic_skip("Which?", ("Image 1", "Image 2"), 0).startswith(
        "option_refers_to_options")
    assert mcq.generic_skip("Which is NOT present?", ("hat", "beard"), 0).startswith(
        "negated_question")
    assert mcq.generic_skip("Is it?", ("Yes", "No"), 0).startswith("yes_no_answer")
    assert mcq.count_prompts(["1", "2", "3", "5"]) == (
        "a photo of 1 person.", "a photo of 2 people.", "a photo of 3 people.",
        "a photo of 5 people.")
    assert mcq.with_article("80") == "an 80" and mcq.with_article("East Asian") == "an East Asian"
    assert mcq.safe_relative("../x.png") is None and mcq.safe_relative("/x.png") is None
    assert mcq.safe_relative("images\\a/./b.png") == "images/a/b.png"


# ---------------------------------------------------------------- the questions file

def test_questions_file_prompts_and_skip(tmp_path):
    path = tmp_path / "questions.jsonl"
    lines = [{"qid": "a", "id": "img", "task": "t", "options": ["x", "y"], "answer": 1,
              "prompts": ["a photo of x.", "a photo of y."]},
             {"qid": "b", "task": "t", "options": ["yes", "no"], "answer": 0,
              "skip": "yes_no_answer: options ['yes', 'no']"},
             {"qid": "c", "task": "u", "options": ["1", "2"], "answer": 0,
              "skip": "identity_comparison: two faces"}]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    questions = multiple_choice.load_questions(path)
    assert [q.skip != "" for q in questions] == [False, True, True]
    assert multiple_choice.option_texts(questions[0], "{question} {option}") == \
        ["a photo of x.", "a photo of y."]
    out = multiple_choice.accuracy_report([1], questions[:1], questions[1:])
    assert out["accuracy"] == 1.0 and out["task_chance"] == {"t": 0.5}
    assert out["num_skipped"] == 2 and out["skipped_by_task"] == {"t": 1, "u": 1}
    assert out["skipped_by_reason"] == {"identity_comparison": 1, "yes_no_answer": 1}
    path.write_text(json.dumps({"id": "i", "options": ["a", "b"], "answer": 0,
                                "prompts": ["only one"]}) + "\n")
    with pytest.raises(ValueError, match=r"questions.jsonl:1: prompts must be a list of 2"):
        multiple_choice.load_questions(path)
    path.write_text(json.dumps({"options": ["a", "b"], "answer": 0}) + "\n")
    with pytest.raises(ValueError, match=r"missing \['id'\]"):
        multiple_choice.load_questions(path)


# ---------------------------------------------------------------- through the evaluator

class HashEncoder:
    """Deterministic stand-in for `features.Encoder` (no JAX compile): image features from the
    records' pixels, text features from the text's bytes. Accuracy means nothing here; the
    plumbing from the converters' output to the report is what is tested."""
    description = "hash-encoder"

    class mesh:  # noqa: N801 - mimics Encoder.mesh.devices.size
        class devices:  # noqa: N801
            size = 1

    def images(self, data_dir, num_frames=None):
        from emocap_jax.evaluate.features import ImageFeatures
        ids, feats, labels, groups, digests = [], [], [], [], []
        for shard in shard_writer.shard_paths(data_dir):
            for _, data in tfrecord.iter_records(shard):
                rec = example_codec.decode_record(data)
                pixels = np.asarray(Image.open(io.BytesIO(rec.images[0])), np.float32)
                ids.append(rec.id)
                labels.append(rec.label_id)
                feats.append(self._unit(np.resize(pixels.ravel(), 16) + 1.0))
                groups.append(rec.group)
                digests.append(np.frombuffer(example_codec.image_digest(rec.images), np.uint8))
        return ImageFeatures(np.stack(feats), np.asarray(labels, np.int32), ids, str(data_dir),
                             num_frames, groups, np.stack(digests))

    def tokenize(self, texts):
        # A text's bytes stand for its tokens: texts tokenize alike only when they are equal.
        width = max((len(t.encode()) for t in texts), default=0)
        return np.asarray([list(t.encode().ljust(width, b"\0")) for t in texts], np.int32)

    def texts(self, texts):
        return np.stack([self._unit(np.resize(np.frombuffer(t.encode() + b"pad", np.uint8), 16)
                                    .astype(np.float32) + 1.0) for t in texts])

    @staticmethod
    def _unit(x):
        return x / np.linalg.norm(x)


def test_converted_benchmarks_fill_the_report_rows(tmp_path):
    fabricate_face_human_bench(tmp_path / "fhb")
    fabricate_facexbench(tmp_path / "fx")
    fabricate_faba(tmp_path / "faba")
    convert("face-human-bench", tmp_path / "fhb", tmp_path / "fhb_out")
    convert("facexbench", tmp_path / "fx", tmp_path / "fx_out")
    convert("faba-bench", tmp_path / "faba", tmp_path / "faba_out")
    encoder, eval_dir = HashEncoder(), tmp_path / "eval"
    results = {}
    for benchmark, protocol, data in (
            ("face-human-bench", "multiple_choice", "fhb_out"),
            ("facexbench", "multiple_choice", "fx_out"),
            ("faba-emotion", "zero_shot", "faba_out"),
            ("faba-au", "au_detection", "faba_out")):
        result = runner.run(encoder, benchmark, protocol, tmp_path / data)
        report.write_result(eval_dir, result)
        results[benchmark] = result
    fhb = results["face-human-bench"]["folds"][0]
    assert (fhb["num_questions"], fhb["num_skipped"]) == (6, 2)
    assert fhb["skipped_by_task"] == {"face_recognition_basic-cropped": 1,
                                      "human_spatial_relation_count_10-original": 1}
    assert fhb["task_chance"]["face_age_basic_10-original"] == 0.25
    assert fhb["task_chance"]["face_attack_physical_paper-cropped"] == 0.5
    fx = results["facexbench"]["folds"][0]
    assert (fx["num_questions"], fx["num_skipped"]) == (4, 7)
    assert results["faba-emotion"]["report"]["num_examples"] == 3
    assert results["faba-au"]["folds"][0]["aus"] == [f"AU{c}" for c in registry.FABA_AUS]

    report.write_report(eval_dir, encoder.description)
    with open(eval_dir / "report.csv", newline="", encoding="utf-8") as f:
        rows = {row["benchmark"]: row for row in csv.DictReader(f)}
    for name in ("face-human-bench", "facexbench", "faba-emotion", "faba-au"):
        assert rows[name]["ours"] != "", name  # the paper's row is filled in
    markdown = (eval_dir / "report.md").read_text()
    assert "| face_recognition_basic-cropped | — | — | 0 | 1 |" in markdown
    assert "6 scored questions (chance" in markdown and "; 2 skipped" in markdown
    assert "skipped, by reason: counting 1, identity_comparison 1" in markdown


def write_labelled(directory, classes, per_class=4, group=lambda c, i: "",
                   colour=lambda c, i: (30 * c, 10 * i, 90)):
    """A labelled dataset of `per_class` plain faces per class, label_id in `classes` order;
    face i of class c has subject group(c, i) and colour colour(c, i). Faces of one colour are
    byte-identical (JPEG encoding is deterministic), in one dataset or two."""
    with shard_writer.ShardedRecordWriter(directory, 1, classes=list(classes)) as writer:
        for c, name in enumerate(classes):
            for i in range(per_class):
                image = io.BytesIO()
                Image.new("RGB", (8, 8), colour(c, i)).save(image, format="JPEG")
                writer.add(example_codec.FaceRecord(id=f"{name}_{i}", images=[image.getvalue()],
                                                    label=name, label_id=c, group=group(c, i)))
    return directory


def test_a_training_folders_subjects_keep_the_probes_c_carve_out_subject_independent(
        tmp_path):
    """With a training folder (--train-data), C was chosen on a carve-out drawn record by
    record, so a subject's faces sat on both sides; now by subject when the records have one.
    A folder where only some records name a subject is refused by the linear probe, naming the
    folder; few-shot (which draws no carve-out by subject) still runs on it."""
    from emocap_jax.data import class_orders

    classes = class_orders.RAFDB_BASIC
    test = write_labelled(tmp_path / "rafdb" / "test", classes,
                          colour=lambda c, i: (30 * c, 10 * i, 200))
    subjects = write_labelled(tmp_path / "train_subjects", classes, per_class=6,
                              group=lambda c, i: f"S{i}")
    plain = write_labelled(tmp_path / "train_plain", classes, per_class=6)
    partly = write_labelled(tmp_path / "train_partly", classes, per_class=6,
                            group=lambda c, i: f"S{i}" if (c, i) != (2, 3) else "")

    def probe(train, protocol="linear_probe"):
        return runner.run(HashEncoder(), "rafdb", protocol, test,
                          runner.Options(train_data=str(train), c_grid=(1.0, 10.0),
                                         shots=(1,), seeds=(0,)))

    assert probe(subjects)["folds"][0]["validation_by_subject"] is True
    assert probe(plain)["folds"][0]["validation_by_subject"] is False
    with pytest.raises(ValueError, match=rf"^{partly}: 1 of 42 records have no group \(subject\)"
                                         r".*the linear probe chooses C"):
        probe(partly)
    assert probe(partly, "few_shot")["shots"][1]["uar"]["mean"] >= 0.0


def test_a_fold_benchmark_whose_subjects_are_partly_missing_is_refused_naming_it(tmp_path):
    spec = registry.get("jaffe")
    data = write_labelled(tmp_path / "jaffe" / "all", spec.classes, per_class=6,
                          group=lambda c, i: f"S{i}" if (c, i) != (0, 0) else "")
    for protocol in ("linear_probe", "few_shot"):
        with pytest.raises(ValueError, match=rf"^{data}: 1 of 42 records have no group"):
            runner.run(HashEncoder(), "jaffe", protocol, tmp_path / "jaffe",
                       runner.Options(num_folds=3, c_grid=(1.0,), shots=(1,), seeds=(0,)))


def test_a_probe_with_more_folds_than_examples_per_class_names_the_classes_and_the_option(
        tmp_path):
    # scikit-learn said only "n_splits=10 cannot be greater than the number of members in each
    # class": neither the classes, their counts nor the option to change.
    spec = registry.get("jaffe")
    data = write_labelled(tmp_path / "jaffe" / "all", spec.classes, per_class=3)
    counts = ", ".join(f"{name} 3" for name in spec.classes)
    with pytest.raises(ValueError) as error:
        runner.run(HashEncoder(), "jaffe", "linear_probe", tmp_path / "jaffe",
                   runner.Options(c_grid=(1.0,)))
    message = str(error.value)
    assert message.startswith(f"{data}: 10 stratified folds need a class with at least 10 ")
    assert f"(examples per class: {counts}); use at most 3 folds" in message
    assert "(--num-folds 3; 10 is jaffe's default), or give a training split" in message
    with pytest.raises(ValueError, match=r"4 stratified folds .* \(--num-folds 3\), or give"):
        runner.run(HashEncoder(), "jaffe", "linear_probe", tmp_path / "jaffe",
                   runner.Options(num_folds=4, c_grid=(1.0,)))
    # What the message advises runs.
    result = runner.run(HashEncoder(), "jaffe", "linear_probe", tmp_path / "jaffe",
                        runner.Options(num_folds=3, c_grid=(1.0,)))
    assert len(result["folds"]) == 3 and result["report"]["num_examples"] == 3 * len(spec.classes)


def test_every_split_must_share_the_benchmarks_class_order(tmp_path):
    # label_id 0 is "surprise" in RAF-DB's order but "angry" in FER2013's: a probe trained on one
    # and tested on the other scores wrong classes, so a train folder (or a later official fold)
    # in another order is refused, naming it, instead of being evaluated.
    from emocap_jax.data import class_orders

    test = write_labelled(tmp_path / "rafdb" / "test", class_orders.RAFDB_BASIC)
    train = write_labelled(tmp_path / "fer_train", class_orders.FER2013)
    options = runner.Options(train_data=str(train), c_grid=(1.0,))
    for protocol in ("linear_probe", "few_shot"):
        with pytest.raises(ValueError, match=r"fer_train: the dataset's class order"):
            runner.run(HashEncoder(), "rafdb", protocol, test, options)
    same = runner.run(HashEncoder(), "rafdb", "linear_probe", test,
                      runner.Options(train_data=str(write_labelled(
                          tmp_path / "raf_train", class_orders.RAFDB_BASIC,
                          colour=lambda c, i: (30 * c, 10 * i, 200))), c_grid=(1.0,)))
    assert same["report"]["num_examples"] == 4 * len(class_orders.RAFDB_BASIC)

    for k in registry.get("dfew").official_folds:
        order = class_orders.DFEW if k != 3 else tuple(reversed(class_orders.DFEW))
        write_labelled(tmp_path / "dfew" / f"fold{k}" / "test", order, per_class=1)
    with pytest.raises(ValueError, match=r"fold3.test: the dataset's class order"):
        runner.run(HashEncoder(), "dfew", "video", tmp_path / "dfew")


def test_a_run_on_some_official_folds_says_so_beside_the_paper(tmp_path):
    # --fold 3 gives fold 3's UAR; the paper's DFEW number is the mean of 5 folds, so the table
    # and the summary line say which folds the value covers instead of passing it off as that.
    from emocap_jax.data import class_orders

    for k in registry.get("dfew").official_folds:
        write_labelled(tmp_path / "dfew" / f"fold{k}" / "test", class_orders.DFEW, per_class=1)
    # One frame per clip: the still faces record no frames_per_record (which would warn).
    one = runner.run(HashEncoder(), "dfew", "video", tmp_path / "dfew",
                     runner.Options(fold=3, frames=1))
    assert report.partial_folds(one) == "fold 3 of 5"
    assert ", fold 3 of 5 only (paper: EmoCapCLIP 42.2" in report.summary_line(one)
    report.write_result(tmp_path / "eval", one)
    report.write_report(tmp_path / "eval", HashEncoder.description)
    markdown = (tmp_path / "eval" / "report.md").read_text()
    assert f"| DFEW | video | UAR | {100 * one['value']:.1f} (fold 3 of 5) | 42.2 |" in markdown
    every = runner.run(HashEncoder(), "dfew", "video", tmp_path / "dfew", runner.Options(frames=1))
    assert report.partial_folds(every) == "" and "only" not in report.summary_line(every)


# ---------------------------------------------------------------- repeated JSON keys

def repeat_key(obj, key, first_value):
    """JSON text of `obj` with `key` written twice: `first_value` first, then obj's own value
    (which a plain json.loads keeps)."""
    text = json.dumps(obj)
    needle = f"{json.dumps(key)}: "
    assert text.count(needle) == 1
    return text.replace(needle, f"{needle}{json.dumps(first_value)}, {needle}")


def test_face_human_bench_entry_that_repeats_a_key_is_rejected_naming_it(tmp_path):
    # Each would otherwise be read with the last value: the other answer, or the other question
    # list, lost without a word.
    fhb = tmp_path / "fhb"
    en = fhb / "data/Face-Human-Bench/test/json/en"
    age = "eval_data/face/age/basic_10/cropped/sample_{:04d}.jpg"
    write_image(fhb / "data/Face-Human-Bench/test/output" / age.format(1))
    entries = [fhb_entry("face_age_basic_10", "How old?", ["20", "30"], 0,
                         {"cropped": age.format(i)}) for i in (1, 2)]
    en.mkdir(parents=True)
    (en / "face_age_basic_10.json").write_text(
        '{"data": [' + json.dumps(entries[0]) + ", " + repeat_key(entries[1], "answer", 1) + "]}")
    (en / "face_expression_basic.json").write_text(
        repeat_key({"data": [entries[0]]}, "data", []))
    (summary,) = convert("face-human-bench", fhb, tmp_path / "fhb_out", split="test")[
        "datasets"]
    assert summary["questions"]["rejected_by_reason"] == {"duplicate_key": 2}
    assert summary["questions"]["num_scored"] == 1
    _, _, reasons = read_dataset(tmp_path / "fhb_out/test")
    assert reasons["face_age_basic_10[1]"] == (
        "duplicate_key: face_age_basic_10.json#data[1]: key 'answer' appears more than once in "
        "QA; only the last of its values would be read")
    assert code(reasons["face_expression_basic"]) == "duplicate_key"
    assert "repeats the key 'data' at its top level" in reasons["face_expression_basic"]


def test_facexbench_question_that_repeats_a_key_is_rejected_naming_it(tmp_path):
    fx = tmp_path / "fx/benchmark"
    img = "images/affectnet_single_mcq/question_{}.png"
    write_image(fx / img.format(1))
    expr = "Which expression is the person showing in the image?"
    questions = {"1": fx_question([img.format(1)], expr, ["happy", "sad"], "A"),
                 "2": fx_question([img.format(1)], expr, ["fear", "sad"], "B")}
    text = json.dumps(fx_file("attributes_expression", "expression", "affectnet", "single",
                              questions))
    first_2 = fx_question([img.format(1)], expr, ["anger", "sad"], "A")
    text = text.replace('"2": ', f'"2": {json.dumps(first_2)}, "2": ')
    (fx / "affectnet_single_mcq.json").write_text(text)
    (fx / "celeba_single_mcq.json").write_text(repeat_key(fx_file(
        "attributes_expression", "expression", "celeba", "single",
        {"1": fx_question([img.format(1)], expr, ["happy", "sad"], "B")}), "options",
        ["sad", "happy"]))
    (summary,) = convert("facexbench", tmp_path / "fx", tmp_path / "fx_out")["datasets"]
    assert summary["questions"]["rejected_by_reason"] == {"duplicate_key": 2}
    _, _, reasons = read_dataset(tmp_path / "fx_out/test")
    assert reasons["affectnet_single_mcq/2"] == (
        "duplicate_key: affectnet_single_mcq.json#questions['2']: the question key '2' appears "
        "more than once in 'questions'; only the last of its questions would be read")
    assert reasons["celeba_single_mcq/1"] == (
        "duplicate_key: celeba_single_mcq.json#questions['1']: key 'options' appears more than "
        "once; only the last of its values would be read")
    assert list(read_questions(tmp_path / "fx_out/test")) == ["affectnet_single_mcq/1"]


def test_faba_annotation_that_repeats_a_key_is_rejected_naming_it(tmp_path):
    faba_root = tmp_path / "faba"
    eval_dir = faba_root / "FABAInstruct/eval"
    image = "FABAInstruct/eval/images/AffectNet/AffectNet_v2/1/{}.jpg"
    for name in ("e0", "e1"):
        write_image(faba_root / image.format(name))
    (eval_dir / "eval_emotion_anno.json").write_text(
        "[" + json.dumps(faba_entry(image.format("e0"), 0, "e0")) + ", " +
        repeat_key(faba_entry(image.format("e1"), 1, "e1"), "label", 3) + "]")
    (summary,) = convert("faba-bench", faba_root, tmp_path / "faba_out", split="emotion")[
        "datasets"]
    assert (summary["num_written"], summary["num_rejected"]) == (1, 1)
    _, records, reasons = read_dataset(tmp_path / "faba_out/emotion")
    assert list(records) == ["e0"]
    assert reasons == {"eval_emotion_anno.json[1]": "duplicate_key: eval_emotion_anno.json[1]: "
                       "key 'label' appears more than once; only the last of its values would "
                       "be read"}


# ---------------------------------------------------------------- options with one statement

def test_options_given_the_same_statement_are_skipped_and_counted_at_conversion(tmp_path):
    # "happy" and "happiness" both become "... happiness.": evaluation would skip the question
    # as duplicate_options; the converters' counts now say so (and the evaluator agrees).
    fx = tmp_path / "fx/benchmark"
    img = "images/affectnet_single_mcq/question_{}.png"
    write_image(fx / img.format(1))
    expr = "Which expression is the person showing in the image?"
    write_json(fx / "affectnet_single_mcq.json", fx_file(
        "attributes_expression", "expression", "affectnet", "single", {
            "1": fx_question([img.format(1)], expr, ["happy", "happiness", "sad", "anger"], "C"),
            "2": fx_question([img.format(1)], expr, ["happy", "fear", "sad", "anger"], "C")}))
    write_json(fx / "wmca_single_mcq.json", fx_file("fas_deepfakes", "fas", "wmca", "single", {
        "1": fx_question([img.format(1)], "Is this a spoof?", ["Real", "Genuine", "Attack"],
                         "C")}))
    (summary,) = convert("facexbench", tmp_path / "fx", tmp_path / "fx_out")["datasets"]
    assert summary["questions"]["skipped_by_reason"] == {"duplicate_options": 2}
    assert summary["questions"]["num_scored"] == 1
    questions = read_questions(tmp_path / "fx_out/test")
    assert questions["affectnet_single_mcq/1"]["skip"] == (
        "duplicate_options: options 0, 1 ('happy', 'happiness') all read 'This image portrays "
        "an expression of happiness.'")
    assert questions["wmca_single_mcq/1"]["skip"].startswith(
        "duplicate_options: options 0, 1 ('Real', 'Genuine') all read")
    loaded = multiple_choice.load_questions(tmp_path / "fx_out/test/questions.jsonl")
    assert [multiple_choice.skip_code(q) for q in loaded] == \
        ["duplicate_options", "", "duplicate_options"]

    fhb = tmp_path / "fhb"
    expr_image = "eval_data/face/expression/basic/cropped/sample_{:04d}.jpg"
    write_image(fhb / "data/Face-Human-Bench/test/output" / expr_image.format(1))
    write_json(fhb / "data/Face-Human-Bench/test/json/en/face_expression_basic.json", {"data": [
        fhb_entry("face_expression_basic", "What is the facial expression?",
                  ["Happiness", "Fear", "HAPPY", "Anger"], 1, {"cropped": expr_image.format(1)}),
        fhb_entry("face_expression_basic", "What is the facial expression?",
                  ["Happiness", "Fear", "Sadness", "Anger"], 1,
                  {"cropped": expr_image.format(1)})]})
    (summary,) = convert("face-human-bench", fhb, tmp_path / "fhb_out", split="test")[
        "datasets"]
    assert summary["questions"]["skipped_by_reason"] == {"duplicate_options": 1}
    assert summary["questions"]["num_scored"] == 1
    skip = read_questions(tmp_path / "fhb_out/test")["face_expression_basic[0]:cropped"]["skip"]
    assert skip.startswith("duplicate_options: options 0, 2 ('Happiness', 'HAPPY') all read")


def test_test_faces_copied_from_training_are_counted_and_reported(tmp_path):
    """Face 0 of every class in the test folder is the training folder's face 0, byte for byte:
    7 of 28 test faces. Both probe protocols count them (result, fold, warning, summary line,
    the report's Notes) and still run; a test folder of other faces counts 0."""
    from emocap_jax.data import class_orders

    classes = class_orders.RAFDB_BASIC
    train = write_labelled(tmp_path / "train", classes, per_class=6)
    copied = write_labelled(tmp_path / "copied" / "test", classes,
                            colour=lambda c, i: (30 * c, 10 * i, 90 if i == 0 else 200))
    fresh = write_labelled(tmp_path / "fresh" / "test", classes,
                           colour=lambda c, i: (30 * c, 10 * i, 200))
    options = runner.Options(train_data=str(train), c_grid=(1.0,), shots=(1,), seeds=(0,))
    for protocol in ("linear_probe", "few_shot"):
        with pytest.warns(UserWarning, match=rf"{copied} against {train}: 7 of 28 test faces "
                                             "are byte-identical copies of training faces"):
            result = runner.run(HashEncoder(), "rafdb", protocol, copied, options)
        assert result["train_test_copies"] == 7 and result["folds"][0]["train_test_copies"] == 7
        assert ", 7 test faces copied from training" in report.summary_line(result)
        report.write_result(tmp_path / "eval", result)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no copies: no warning
            none = runner.run(HashEncoder(), "rafdb", protocol, fresh, options)
        assert none["train_test_copies"] == 0 and none["folds"][0]["train_test_copies"] == 0
        assert ", 0 test faces copied from training" in report.summary_line(none)
    report.write_report(tmp_path / "eval", HashEncoder.description)
    notes = (tmp_path / "eval" / "report.md").read_text().split("## Notes")[1]
    notes = notes.split("## Details")[0]
    for protocol in ("linear_probe", "few_shot"):
        assert (f"RAF-DB {protocol}: 7 test faces are byte-identical copies of training faces"
                in notes), notes


def test_copies_across_cross_validation_folds_are_counted_per_fold(tmp_path):
    """Faces i and i + 3 of a class are one image under two subjects: a test face counts when
    its twin's subject trains in that fold, and the result holds the folds' sum."""
    spec = registry.get("jaffe")
    write_labelled(tmp_path / "jaffe" / "all", spec.classes, per_class=6,
                   group=lambda c, i: f"S{i}", colour=lambda c, i: (30 * c, 10 * (i % 3), 90))
    with pytest.warns(UserWarning, match="test faces are byte-identical"):
        result = runner.run(HashEncoder(), "jaffe", "linear_probe", tmp_path / "jaffe",
                            runner.Options(num_folds=3, c_grid=(1.0,)))
    total = 0
    for fold in result["folds"]:
        tested = set(fold["test_groups"])
        twins_training = sum(f"S{(i + 3) % 6}" not in tested for i in range(6) if f"S{i}" in
                             tested) * len(spec.classes)
        assert fold["train_test_copies"] == twins_training, fold["fold"]
        total += twins_training
    assert result["train_test_copies"] == total > 0


def test_cross_validation_without_subjects_keeps_copies_of_an_image_in_one_fold(tmp_path):
    """Records naming no subject (an image folder, FER2013's folders) were folded record by
    record, so byte-identical copies trained the probe on the faces it was then scored on (168
    of FER2013's 2,889 validation faces over 5 folds). The folds now keep each image's copies
    together: no fold tests a face whose copy it trained on, for the probe and few-shot."""
    spec = registry.get("jaffe")
    # Faces i and i + 3 of a class are one image; no record names a subject.
    write_labelled(tmp_path / "jaffe" / "all", spec.classes, per_class=6,
                   colour=lambda c, i: (30 * c, 10 * (i % 3), 90))
    for protocol, options in (("linear_probe", runner.Options(num_folds=3, c_grid=(1.0,))),
                              ("few_shot", runner.Options(num_folds=3, c_grid=(1.0,),
                                                          shots=(1,), seeds=(0,)))):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no copies: no warning
            result = runner.run(HashEncoder(), "jaffe", protocol, tmp_path / "jaffe", options)
        assert result["train_test_copies"] == 0, protocol
        assert [f["train_test_copies"] for f in result["folds"]] == [0, 0, 0], protocol
    # The folds themselves: record 6c + i and 6c + i + 3 are copies; each fold tests both or
    # neither, and subjects, where records name them, still decide the folds.
    digests = np.asarray([[c, i % 3] + [0] * 14 for c in range(7) for i in range(6)], np.uint8)
    groups, word = runner._fold_groups(np.full(42, ""), digests)
    assert word == "distinct images" and len(set(groups)) == 21
    for _, test in runner.linear_probe.cv_folds(np.repeat(np.arange(7), 6), groups, 3):
        tested = set(test.tolist())
        assert all((r in tested) == (r + 3 in tested) for r in range(42) if r % 6 < 3)
    subjects = np.asarray([f"S{i}" for _ in range(7) for i in range(6)])
    by_subject, word = runner._fold_groups(subjects, digests)
    assert word == "subjects" and (by_subject == subjects).all()


def test_zero_shot_modes_written_to_one_folder_keep_their_own_files(tmp_path):
    """The three prompt modes into one --output: each keeps its files (a later mode replaced the
    earlier one's, as one benchmark and protocol had one file name), the standard (embedding)
    run alone fills the paper table's cell beside the paper's number, and the others are named
    with their mode among the other evaluations."""
    from emocap_jax.data import class_orders

    data = tmp_path / "rafdb"
    write_labelled(data / "test", class_orders.RAFDB_BASIC)
    out = tmp_path / "eval"
    for mode in ("embedding", "description", "logits"):
        result = runner.run(HashEncoder(), "rafdb", "zero_shot", data,
                            runner.Options(zero_shot_mode=mode))
        report.write_result(out, result)
        checkpoint = result["checkpoint"]
        assert report.summary_line(result).startswith(
            "RAF-DB zero_shot" + ("" if mode == "embedding" else f" ({mode} prompts)"))
    assert sorted(p.name for p in (out / "results").iterdir()) == [
        "rafdb__zero_shot.json", "rafdb__zero_shot__description.json",
        "rafdb__zero_shot__logits.json"]
    assert len(list((out / "predictions").iterdir())) == 3
    values = {json.loads(p.read_text())["prompts"]["mode"]: json.loads(p.read_text())["value"]
              for p in (out / "results").iterdir()}
    summary = report.write_report(out, checkpoint)
    markdown = summary["markdown"].read_text()
    paper, others = markdown.split("## Other evaluations")
    paper_rows = [line for line in paper.splitlines() if "| RAF-DB | zero_shot |" in line]
    assert len(paper_rows) == 1 and f"| {100 * values['embedding']:.1f} |" in paper_rows[0]
    for mode in ("description", "logits"):
        assert f"| zero_shot ({mode} prompts) | UAR | {100 * values[mode]:.1f} |" in others
        assert f"— zero_shot ({mode} prompts)" in markdown  # its Details heading
    csv_rows = summary["csv"].read_text().splitlines()
    rafdb = [row for row in csv_rows if ",rafdb,RAF-DB," in row]
    assert len(rafdb) == 3 and sum(
        f",zero_shot,uar,{100 * values['embedding']:.2f},62.80," in row for row in rafdb) == 1
    assert {row.split(",")[3] for row in rafdb} == {
        "zero_shot", "zero_shot (description prompts)", "zero_shot (logits prompts)"}
