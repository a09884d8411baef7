"""Dataset readers on the format examples, bad records, lazy images and the paper's prompts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from vistrace.data import (
    DEFAULT_MAX_NEW_TOKENS,
    DatasetError,
    Example,
    docvqa_prompt,
    example_prompt,
    generic,
    load_image,
    read_dataset,
    read_docvqa,
    read_hf_disk,
    read_json_records,
    read_mmhal,
    read_visual7w,
    read_vqav2,
    shuffle_options,
    visual7w_prompt,
    vqav2_prompt,
)

pytestmark = [pytest.mark.unit]

FORMATS = Path(__file__).resolve().parents[1] / "data" / "formats"
VQA_Q = FORMATS / "vqav2_questions_example.json"
VQA_A = FORMATS / "vqav2_annotations_example.json"


def _write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


# ---------------------------------------------------------------- VQAv2


def test_vqav2_format_example(tmp_path: Path) -> None:
    result = read_vqav2(VQA_Q, VQA_A, tmp_path)
    assert result.skipped == []
    assert [e.id for e in result.examples] == ["880001000", "880001001", "880002000", "880002001"]
    first, second = result.examples[0], result.examples[1]
    assert first.image == tmp_path / "COCO_val2014_000000880001.jpg"
    assert first.question == "Is the kite red?"
    assert first.answers == ("yes",) * 8 + ("no", "yes")
    assert first.category == "yes/no"
    assert first.dataset == "vqav2"
    assert first.choices is None
    assert first.extra["question_type"] == "is the"
    assert first.extra["multiple_choice_answer"] == "yes"
    assert first.extra["question_id"] == 880001000
    assert first.extra["image_id"] == 880001
    assert first.extra["answer_confidence"][8] == "maybe"
    assert second.answers == ("2", "2", "2", "2", "2", "2", "two", "3", "2", "1")
    assert [e.category for e in result.examples] == ["yes/no", "number", "other", "other"]


def test_vqav2_image_name_format_and_relative_images() -> None:
    result = read_vqav2(VQA_Q, VQA_A, image_name_format="COCO_train2014_%012d.jpg")
    assert result.examples[2].image == VQA_Q.parent.resolve() / "COCO_train2014_000000880002.jpg"


def test_vqav2_bad_records_are_skipped(tmp_path: Path) -> None:
    questions = json.loads(VQA_Q.read_text())
    annotations = json.loads(VQA_A.read_text())
    questions["questions"] += [
        7,
        {"image_id": 1, "question_id": 11},
        {"image_id": 1, "question": "   ", "question_id": 12},
        {"image_id": 1, "question": "Orphan?", "question_id": 13},
        {"image_id": 1, "question": "No answers?", "question_id": 14},
        {"image_id": "abc", "question": "Bad image id?", "question_id": 15},
        {"image_id": 880001, "question": "Dup?", "question_id": 880001000},
    ]
    annotations["annotations"] += [{"question_id": 14, "answer_type": "other"}, "junk", {"answers": []}]
    result = read_vqav2(_write(tmp_path / "q.json", questions), _write(tmp_path / "a.json", annotations))
    assert len(result.examples) == 4
    reasons = [s.reason for s in result.skipped]
    assert len(reasons) == 9
    assert all(str(tmp_path) in reason for reason in reasons)
    assert reasons[0] == f"{tmp_path / 'a.json'}: annotation 5: expected an object, found str"
    assert reasons[1] == f"{tmp_path / 'a.json'}: annotation 6: missing key 'question_id'"
    assert reasons[2] == f"{tmp_path / 'q.json'}: question 4: expected an object, found int"
    assert reasons[3].endswith("question 5 (id 11): missing key 'question'")
    assert reasons[4].endswith("question 6 (id 12): empty 'question'")
    assert "question 7 (id 13): no annotation" in reasons[5]
    assert reasons[6].endswith("question 8 (id 14): missing key 'answers'")
    assert reasons[7].endswith("question 9 (id 15): 'image_id' must be an integer, found 'abc'")
    assert reasons[8].endswith(
        "question 10 (id 880001000): duplicate id, also at question 0; the first is kept"
    )
    assert [s.id for s in result.skipped][2:] == [None, "11", "12", "13", "14", "15", "880001000"]
    assert all("\n" not in reason for reason in reasons)


def test_vqav2_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="file not found"):
        read_vqav2(tmp_path / "missing.json", VQA_A)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        read_vqav2(broken, VQA_A)
    with pytest.raises(DatasetError, match="key 'questions'"):
        read_vqav2(VQA_A, VQA_A)


# ---------------------------------------------------------------- Visual7W


def test_visual7w_format_example(tmp_path: Path) -> None:
    result = read_visual7w(FORMATS / "visual7w_example.json", tmp_path)
    assert result.skipped == []
    assert [e.id for e in result.examples] == ["5500004", "5500005"]
    who = result.examples[0]
    assert who.image == tmp_path / "v7w_9900002.jpg"
    assert who.answers == ("A woman in a green coat.",)
    assert who.choices == ("A woman in a green coat.", "A small child.", "A police officer.", "An old man.")
    assert who.category == "who"
    assert who.dataset == "visual7w"
    assert who.extra["split"] == "test"
    assert who.extra["image_id"] == 9900002
    train = read_visual7w(FORMATS / "visual7w_example.json", split="train")
    assert [e.category for e in train.examples] == ["what", "where", "when"]
    assert train.examples[0].image == FORMATS.resolve() / "v7w_9900001.jpg"
    assert len(read_visual7w(FORMATS / "visual7w_example.json", split=None)) == 5


def test_visual7w_bad_records(tmp_path: Path) -> None:
    qa = {
        "qa_id": 1,
        "type": "what",
        "question": "What?",
        "answer": "A.",
        "multiple_choices": ["B.", "C.", "D."],
    }
    data = {
        "images": [
            {
                "image_id": 3,
                "split": "test",
                "qa_pairs": [qa, {**qa, "qa_id": 2, "multiple_choices": ["B."]}],
            },
            {"image_id": 4, "split": "test"},
            {"image_id": 5, "split": "test", "qa_pairs": [{**qa, "qa_id": 6, "answer": ""}, "x"]},
        ]
    }
    result = read_visual7w(_write(tmp_path / "v7w.json", data), tmp_path)
    assert [e.id for e in result.examples] == ["1"]
    assert result.examples[0].image == tmp_path / "v7w_3.jpg"
    reasons = [s.reason for s in result.skipped]
    assert reasons[0].endswith(
        "image 0 qa_pair 1 (id 2): 'multiple_choices' must be a list of 3 wrong answers"
    )
    assert reasons[1].endswith("image 1: missing key 'qa_pairs'")
    assert reasons[2].endswith("image 2 qa_pair 0 (id 6): empty 'answer'")
    assert reasons[3].endswith("image 2 qa_pair 1: expected an object, found str")


# ---------------------------------------------------------------- DocVQA


def test_docvqa_format_example(tmp_path: Path) -> None:
    result = read_docvqa(FORMATS / "docvqa_example.json", tmp_path)
    assert result.skipped == []
    assert [e.id for e in result.examples] == ["990001", "990002", "990003", "990004"]
    first = result.examples[0]
    assert first.image == tmp_path / "documents" / "zzzz0001_1.png"
    assert first.answers == ("INV-2041", "INV 2041")
    assert first.dataset == "docvqa"
    assert [e.category for e in result.examples] == ["form", "handwritten", "table/list", "figure/diagram"]
    assert result.examples[1].categories == ("handwritten", "layout")
    assert result.examples[1].extra["question_types"] == ["handwritten", "layout"]
    assert first.extra["docId"] == 99001
    assert "answers" not in first.extra


def test_docvqa_without_question_types_and_bad_records(tmp_path: Path) -> None:
    good = {"questionId": 1, "question": "Q?", "image": "documents/a.png", "answers": ["x"]}
    data = {
        "data": [
            good,
            {**good, "questionId": 2, "answers": []},
            {**good, "questionId": 3, "image": 5},
            {**good, "questionId": 1},
            {"question": "no id", "image": "documents/b.png", "answers": ["y"]},
        ]
    }
    result = read_docvqa(_write(tmp_path / "val.json", data))
    assert [e.id for e in result.examples] == ["1"]
    assert result.examples[0].category is None
    assert result.examples[0].image == tmp_path / "documents" / "a.png"
    reasons = [s.reason for s in result.skipped]
    assert reasons[0].endswith("record 1 (id 2): empty 'answers'")
    assert reasons[1].endswith("record 2 (id 3): 'image' must be a string, found int")
    assert reasons[2].endswith("record 3 (id 1): duplicate id, also at record 0; the first is kept")
    assert reasons[3].endswith("record 4: missing key 'questionId'")


# ---------------------------------------------------------------- MMHal-Bench


def test_mmhal_format_example(tmp_path: Path) -> None:
    (tmp_path / "0000aaaa11112222_o.jpg").write_bytes(b"")
    result = read_mmhal(FORMATS / "mmhal_example.json", tmp_path)
    assert result.skipped == []
    assert [e.id for e in result.examples] == ["0", "1", "2"]
    first = result.examples[0]
    assert first.image == tmp_path / "0000aaaa11112222_o.jpg"
    assert first.image_url == "https://example.invalid/images/0000aaaa11112222_o.jpg"
    assert first.answers == ("The bicycle is green.",)
    assert first.category == "attribute"
    assert first.dataset == "mmhal"
    assert first.extra["image_id"] == "0000aaaa11112222"
    assert first.extra["image_src"] == first.image_url
    assert [e.category for e in result.examples] == ["attribute", "adversarial", "counting"]
    # without an images directory the base name is looked for beside the data file
    expected = FORMATS.resolve() / "0000bbbb55556666_o.jpg"
    assert read_mmhal(FORMATS / "mmhal_example.json").examples[2].image == expected


def test_mmhal_jsonl_gold_answer_local_paths_and_bad_lines(tmp_path: Path) -> None:
    lines = [
        json.dumps({"image_id": "a", "image_src": "imgs/a.jpg", "question": "Q1?", "gold_answer": "A1"}),
        "",
        json.dumps({"image_id": "b", "image_src": "/abs/b.jpg", "question": "Q2?", "gt_answer": "A2"}),
        "{broken",
        json.dumps({"image_id": "c", "image_src": "c.jpg", "question": "Q3?"}),
        json.dumps(
            {"image_id": "d", "image_src": "https://host.invalid/", "question": "Q4?", "gt_answer": "A"}
        ),
    ]
    path = tmp_path / "volcano.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = read_mmhal(path, tmp_path / "root")
    assert [e.id for e in result.examples] == ["0", "1"]
    assert result.examples[0].image == tmp_path / "root" / "imgs" / "a.jpg"
    assert result.examples[0].answers == ("A1",)
    assert result.examples[0].image_url is None
    assert result.examples[1].image == Path("/abs/b.jpg")
    reasons = [s.reason for s in result.skipped]
    assert reasons[0].startswith(f"{path}: line 4: not valid JSON")
    assert reasons[1].endswith("line 5 (id 3): missing key 'gt_answer' (or 'gold_answer')")
    assert reasons[2].endswith("line 6 (id 4): image URL https://host.invalid/ has no file name")


# ---------------------------------------------------------------- generic JSON / JSONL


def test_json_records_mapping(tmp_path: Path) -> None:
    records = [
        {"qid": 7, "img": "a.png", "q": "What?", "a": "cat", "kind": "animal", "note": 1},
        {"qid": 8, "img": "b.png", "q": "Which?", "a": ["dog", "puppy"], "kind": ["pet", "x"]},
        {"qid": 9, "q": "No image?", "a": "x"},
        {"qid": 10, "img": "c.png", "q": "Empty?", "a": [""]},
    ]
    mapping = {"id": "qid", "image": "img", "question": "q", "answers": "a", "category": "kind"}
    result = read_json_records(_write(tmp_path / "r.json", records), mapping, tmp_path, dataset="mine")
    assert [e.id for e in result.examples] == ["7", "8"]
    first, second = result.examples
    assert first.image == tmp_path / "a.png"
    assert first.answers == ("cat",)
    assert first.category == "animal"
    assert first.dataset == "mine"
    assert first.extra == {"qid": 7, "kind": "animal", "note": 1}
    assert second.answers == ("dog", "puppy")
    assert (second.category, second.categories) == ("pet", ("pet", "x"))
    reasons = [s.reason for s in result.skipped]
    assert reasons[0].endswith("record 2 (id 9): missing key 'img'")
    assert reasons[1].endswith("record 3 (id 10): empty 'a'")


def test_json_records_jsonl_records_key_and_defaults(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"img": "a.png", "q": "Q?"}\n[1, 2]\n')
    result = read_json_records(path, {"image": "img", "question": "q"})
    assert [e.id for e in result.examples] == ["0"]
    assert result.examples[0].answers == ()
    assert result.examples[0].image == tmp_path / "a.png"
    assert result.skipped[0].reason == f"{path}: line 2: expected an object, found list"
    wrapped = _write(tmp_path / "w.json", {"items": [{"img": "x.png", "q": "Q?", "opts": ["a", "b"]}]})
    mapping = {"image": "img", "question": "q", "choices": "opts"}
    example = read_json_records(wrapped, mapping, records_key="items").examples[0]
    assert example.choices == ("a", "b")
    with pytest.raises(ValueError, match="unknown mapping fields"):
        read_json_records(path, {"image": "img", "question": "q", "answer": "a"})
    with pytest.raises(ValueError, match="must name the source keys"):
        read_json_records(path, {"image": "img"})
    with pytest.raises(DatasetError, match="expected a JSON object with key 'data'"):
        read_json_records(wrapped, mapping, records_key="data")


# ---------------------------------------------------------------- HF datasets on disk


def test_hf_disk_without_libraries_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(generic, "_optional_import", lambda name: None)
    (tmp_path / "part.parquet").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"pip install pyarrow"):
        read_hf_disk(tmp_path, {"image": "image", "question": "question"})
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "state.json").write_text("{}")
    with pytest.raises(DatasetError, match=r"pip install datasets"):
        read_hf_disk(saved, {"image": "image", "question": "question"})
    with pytest.raises(DatasetError, match="not found"):
        read_hf_disk(tmp_path / "nowhere", {"image": "image", "question": "question"})


def _png_bytes(color: tuple[int, int, int] = (10, 20, 30)) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (4, 3), color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_hf_disk_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip(
        "pyarrow", reason="pyarrow is not installed: the parquet reader is not exercised"
    )
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "question_id": [1, 2],
            "image": [{"bytes": _png_bytes(), "path": "a.png"}, {"bytes": None, "path": "b.png"}],
            "question": ["Q1?", "Q2?"],
            "answers": [["x", "y"], ["z"]],
        }
    )
    (tmp_path / "data").mkdir()
    pq.write_table(table, tmp_path / "data" / "test-00000-of-00001.parquet")
    mapping = {"id": "question_id", "image": "image", "question": "question", "answers": "answers"}
    result = read_hf_disk(tmp_path, mapping, tmp_path / "imgs", split="test")
    assert [e.id for e in result.examples] == ["1", "2"]
    assert result.examples[0].answers == ("x", "y")
    assert load_image(result.examples[0]).size == (4, 3)
    assert result.examples[1].image == tmp_path / "imgs" / "b.png"


def test_hf_disk_saved_dataset(tmp_path: Path) -> None:
    hf = pytest.importorskip("datasets", reason="datasets is not installed: load_from_disk is not exercised")
    ds = hf.Dataset.from_dict(
        {"qid": ["a", "b"], "img": ["x.png", "y.png"], "q": ["Q1?", "Q2?"], "ans": ["1", "2"]}
    )
    hf.DatasetDict({"validation": ds}).save_to_disk(str(tmp_path / "saved"))
    mapping = {"id": "qid", "image": "img", "question": "q", "answers": "ans"}
    result = read_hf_disk(tmp_path / "saved", mapping, tmp_path)
    assert [e.id for e in result.examples] == ["a", "b"]
    assert result.examples[1].image == tmp_path / "y.png"


# ---------------------------------------------------------------- images


def test_load_image_converts_to_rgb(tmp_path: Path) -> None:
    Image.new("L", (5, 4), 128).save(tmp_path / "gray.png")
    example = Example(id="q1", image=Path("gray.png"), question="Q?")
    image = load_image(example, tmp_path)
    assert image.mode == "RGB"
    assert image.size == (5, 4)
    absolute = Example(id="q2", image=tmp_path / "gray.png", question="Q?")
    assert load_image(absolute, "/elsewhere").mode == "RGB"


def test_load_image_errors_name_file_and_id(tmp_path: Path) -> None:
    missing = Example(id="q7", image=tmp_path / "nope.jpg", question="Q?")
    with pytest.raises(DatasetError) as info:
        load_image(missing)
    message = str(info.value)
    assert str(tmp_path / "nope.jpg") in message and "q7" in message and "\n" not in message
    (tmp_path / "bad.jpg").write_bytes(b"not an image at all")
    corrupt = Example(id="q8", image=tmp_path / "bad.jpg", question="Q?")
    with pytest.raises(DatasetError, match="cannot decode image for example q8"):
        load_image(corrupt)
    (tmp_path / "cut.png").write_bytes(_png_bytes()[:40])
    with pytest.raises(DatasetError, match="q9"):
        load_image(Example(id="q9", image=tmp_path / "cut.png", question="Q?"))
    remote = read_mmhal(FORMATS / "mmhal_example.json", tmp_path).examples[1]
    with pytest.raises(DatasetError, match=r"0000aaaa33334444_o\.jpg.*example 1.*https://example\.invalid"):
        load_image(remote)


def test_load_image_embedded_bytes() -> None:
    example = Example(id="e", image=Path("e.png"), question="Q?", image_bytes=_png_bytes((1, 2, 3)))
    assert load_image(example).getpixel((0, 0)) == (1, 2, 3)
    broken = Example(id="f", image=Path("f.png"), question="Q?", image_bytes=b"xx")
    with pytest.raises(DatasetError, match=r"embedded image f\.png: cannot decode image for example f"):
        load_image(broken)


def test_example_round_trip_and_hash() -> None:
    example = read_visual7w(FORMATS / "visual7w_example.json", "/data/v7w").examples[0]
    data = example.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert Example.from_dict(data) == example
    assert hash(example) == hash(Example.from_dict(data))


# ---------------------------------------------------------------- prompts

VQAV2_EXPECTED = (
    "Look at the image carefully and answer this visual question. For yes/no questions, just "
    "respond Yes or No. If the answer is numeric, just respond with the number and nothing else. "
    "If the answer has multiple words, just respond with the words and absolutely nothing else. "
    "Never respond in a sentence or a phrase.\n Respond with as few words as possible.\n"
    " Question: Is the kite red?"
)
VISUAL7W_EXPECTED = (
    "Look at the image carefully and answer this visual question based on the provided choices. "
    "Respond with the correct answer only. Do not include any additional text.\n"
    " Question: Who is riding the bicycle?\n"
    " Choices: \n A small child.\n A woman in a green coat.\n An old man.\n A police officer."
)
DOCVQA_EXPECTED = (
    "Read the text in the image carefully and answer the question with the text as seen exactly "
    "in the image. For yes/no questions, just respond Yes or No. If the answer is numeric, just "
    "respond with the number and nothing else. If the answer has multiple words, just respond with "
    "the words and absolutely nothing else. Never respond in a sentence or a phrase.\n"
    " Question: What is the invoice number?"
)


def test_prompts_byte_exact() -> None:
    assert vqav2_prompt("Is the kite red?") == VQAV2_EXPECTED
    assert docvqa_prompt("What is the invoice number?") == DOCVQA_EXPECTED
    options = ["A small child.", "A woman in a green coat.", "An old man.", "A police officer."]
    assert visual7w_prompt("Who is riding the bicycle?", options) == VISUAL7W_EXPECTED
    assert vqav2_prompt("a {brace}?").endswith("Question: a {brace}?")
    with pytest.raises(ValueError, match="exactly 4 options"):
        visual7w_prompt("Q?", options[:3])


def test_shuffle_options_deterministic() -> None:
    choices = ("right", "w1", "w2", "w3")
    first = shuffle_options(choices, 42, "5500004")
    assert first == shuffle_options(list(choices), 42, "5500004")
    assert sorted(first) == sorted(choices)
    orders = {tuple(shuffle_options(choices, 42, str(i))) for i in range(50)}
    assert len(orders) > 1
    assert {tuple(shuffle_options(choices, seed, "x")) for seed in range(50)} != {tuple(first)}
    assert choices == ("right", "w1", "w2", "w3")


def test_example_prompt_dispatch() -> None:
    v7w = read_visual7w(FORMATS / "visual7w_example.json").examples[0]
    text, options = example_prompt(v7w, seed=42)
    assert options == shuffle_options(v7w.choices or (), 42, v7w.id)
    assert text == visual7w_prompt(v7w.question, options)
    vqa = read_vqav2(VQA_Q, VQA_A).examples[0]
    assert example_prompt(vqa) == (VQAV2_EXPECTED, None)
    doc = read_docvqa(FORMATS / "docvqa_example.json").examples[0]
    assert example_prompt(doc) == (DOCVQA_EXPECTED, None)
    with pytest.raises(ValueError, match="no paper prompt"):
        example_prompt(read_mmhal(FORMATS / "mmhal_example.json").examples[0])
    assert DEFAULT_MAX_NEW_TOKENS == {
        "vqav2": 25,
        "visual7w": 25,
        "docvqa": 512,
        "textvqa": 512,
        "chartqa": 512,
        "coco": 512,
    }


# ---------------------------------------------------------------- variants refused, splits


def _pointing(with_boxes: bool) -> dict[str, Any]:
    qa = {"qa_id": 7, "image_id": 3, "type": "which", "question": "Which is the cup?"}
    data: dict[str, Any] = {
        "images": [
            {
                "image_id": 3,
                "filename": "v7w_3.jpg",
                "split": "test",
                "qa_pairs": [{**qa, "answer": 101, "multiple_choices": [103, 104, 102]}],
            }
        ]
    }
    if with_boxes:
        data["boxes"] = [{"box_id": 101, "x": 1, "y": 2, "width": 3, "height": 4, "name": "cup"}]
    return data


@pytest.mark.parametrize("with_boxes", [True, False])
def test_visual7w_pointing_file_is_refused_in_one_line(tmp_path: Path, with_boxes: bool) -> None:
    path = _write(tmp_path / "dataset_v7w_pointing.json", _pointing(with_boxes))
    with pytest.raises(DatasetError) as raised:
        read_visual7w(path)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: a Visual7W pointing file")
    assert "box ids" in message and "dataset_v7w_telling.json" in message


def test_visual7w_numeric_answer_in_a_telling_file_is_skipped(tmp_path: Path) -> None:
    data = json.loads((FORMATS / "visual7w_example.json").read_text())
    data["images"][1]["qa_pairs"][0]["multiple_choices"][0] = 5
    result = read_visual7w(_write(tmp_path / "v7w.json", data))
    assert [e.id for e in result.examples] == ["5500005"]
    assert result.skipped[0].reason.endswith("'multiple_choices' must be a string, found int")


def test_visual7w_empty_split_lists_the_splits_present(tmp_path: Path) -> None:
    source = FORMATS / "visual7w_example.json"
    with pytest.raises(
        DatasetError, match=r"no QA pair in split 'val'; splits present: test \(2\), train \(3\)$"
    ):
        read_visual7w(source, split="val")
    train_only = json.loads(source.read_text())
    train_only["images"] = [i for i in train_only["images"] if i["split"] == "train"]
    with pytest.raises(DatasetError, match=r"split 'test'; splits present: train \(3\)"):
        read_visual7w(_write(tmp_path / "train.json", train_only))


def test_read_dataset_validates_names_splits_and_empty_files(tmp_path: Path) -> None:
    train = read_dataset("visual7w", FORMATS / "visual7w_example.json", split="train")
    assert [e.id for e in train.examples] == ["5500001", "5500002", "5500003"]
    assert len(read_dataset("vqav2", VQA_A, questions=VQA_Q)) == 4
    with pytest.raises(ValueError, match="--split applies to visual7w"):
        read_dataset("docvqa", FORMATS / "docvqa_example.json", split="val")
    with pytest.raises(ValueError, match="unknown dataset 'flickr30k'"):
        read_dataset("flickr30k", VQA_A)
    with pytest.raises(DatasetError, match=r"empty.json: no records$"):
        read_dataset("jsonl", _write(tmp_path / "empty.json", []))
    bad = _write(tmp_path / "bad.json", [{"id": 1, "question": "Q?", "answers": ["a"]}])
    with pytest.raises(DatasetError, match=r"no example could be read \(1 records skipped; first: .*'image'"):
        read_dataset("jsonl", bad)
