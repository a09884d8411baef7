"""Loading original-format LLaVA checkpoints into HF Llava, checked against a hand-written forward."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from vistrace.adapters import get_adapter
from vistrace.capture.generate import _encode
from vistrace.data import Example
from vistrace.models.llava_original import (
    VICUNA_V1_SYSTEM,
    convert_original_llava_config,
    convert_original_llava_state_dict,
    is_original_llava,
    load_original_llava,
)
from vistrace.models.loading import load
from vistrace.runs.evaluate import _Runner

pytestmark = [pytest.mark.integration, pytest.mark.contract]

VOCAB = 100
IMAGE_SIZE, PATCH = 336, 14
N_PATCHES = (IMAGE_SIZE // PATCH) ** 2
ROPE_THETA = 500.0
PROMPT = "What is in image?"

TEXT_FIELDS: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "vocab_size": VOCAB,
    "max_position_embeddings": 1024,
    "rms_norm_eps": 1e-5,
    "hidden_act": "silu",
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "tie_word_embeddings": False,
}


def _reference_text_config() -> LlamaConfig:
    return LlamaConfig(**TEXT_FIELDS, rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA})


def _original_config(tower: str, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "architectures": ["LlavaLlamaForCausalLM"],
        "model_type": "llava_llama",
        **TEXT_FIELDS,
        "rope_theta": ROPE_THETA,
        "rope_scaling": None,
        "pretraining_tp": 1,
        "torch_dtype": "float16",
        "use_cache": True,
        "mm_vision_tower": tower,
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "mm_projector_type": "mlp2x_gelu",
        "mm_hidden_size": 16,
        "image_aspect_ratio": "pad",
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "mm_patch_merge_type": "flat",
    }
    config.update(overrides)
    return config


def _save_tokenizer(directory: Path) -> None:
    words = ["<unk>", "<s>", "</s>", *VICUNA_V1_SYSTEM.replace(".", " .").replace(",", " ,").split()]
    words += ["USER", "ASSISTANT", ":", "What", "is", "in", "image", "?"]
    words = list(dict.fromkeys(words))
    words += [f"w{i}" for i in range(VOCAB - len(words))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.decoder = decoders.WordPiece()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(directory)


@pytest.fixture(scope="module")
def tower_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("clip_tower")
    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
    )
    CLIPVisionModel(config).save_pretrained(directory)
    CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    ).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def original_weights() -> dict[str, torch.Tensor]:
    """Original LLaVA key names: Llama keys plus ``model.mm_projector.{0,2}``."""
    torch.manual_seed(1)
    sd = {k: v.clone() for k, v in LlamaForCausalLM(_reference_text_config()).state_dict().items()}
    sd["model.mm_projector.0.weight"] = torch.randn(32, 16) * 0.2
    sd["model.mm_projector.0.bias"] = torch.randn(32) * 0.2
    sd["model.mm_projector.2.weight"] = torch.randn(32, 32) * 0.2
    sd["model.mm_projector.2.bias"] = torch.randn(32) * 0.2
    return sd


def _write_checkpoint(
    directory: Path, weights: dict[str, torch.Tensor], fmt: str, config: dict[str, Any]
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    _save_tokenizer(directory)
    if fmt == "safetensors":
        save_file(weights, str(directory / "model.safetensors"))
        return directory
    keys = sorted(weights)
    shards = {"pytorch_model-00001-of-00002.bin": keys[::2], "pytorch_model-00002-of-00002.bin": keys[1::2]}
    for name, shard_keys in shards.items():
        torch.save({k: weights[k] for k in shard_keys}, directory / name)
    weight_map = {k: name for name, shard_keys in shards.items() for k in shard_keys}
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return directory


@pytest.fixture(scope="module", params=["safetensors", "bin"])
def checkpoint(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    tower_dir: Path,
    original_weights: dict[str, torch.Tensor],
) -> Path:
    directory = tmp_path_factory.mktemp(f"llava_{request.param}")
    return _write_checkpoint(directory, original_weights, request.param, _original_config(str(tower_dir)))


@pytest.fixture(scope="module")
def loaded(checkpoint: Path) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    return load_original_llava(checkpoint)


def _chat(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


def _reference_logits(
    weights: dict[str, torch.Tensor],
    tower_dir: Path,
    input_ids: torch.Tensor,
    pixel_values: torch.Tensor,
    image_id: int,
) -> torch.Tensor:
    """LLaVA forward from the raw original tensors.

    ``input_ids (T,)`` with the image positions expanded, ``pixel_values (1, 3, S, S)`` → ``(1, T, V)``.
    """
    llama = LlamaForCausalLM(_reference_text_config()).eval()
    llama.load_state_dict({k: v for k, v in weights.items() if not k.startswith("model.mm_projector")})
    tower = CLIPVisionModel.from_pretrained(tower_dir).eval()
    with torch.no_grad():
        patches = tower(pixel_values, output_hidden_states=True).hidden_states[-2][0, 1:]
        hidden = F.gelu(
            F.linear(patches, weights["model.mm_projector.0.weight"], weights["model.mm_projector.0.bias"])
        )
        features = F.linear(
            hidden, weights["model.mm_projector.2.weight"], weights["model.mm_projector.2.bias"]
        )
        positions = (input_ids == image_id).nonzero().flatten()
        start, end = int(positions[0]), int(positions[-1]) + 1
        assert end - start == features.shape[0] == positions.numel()
        embed = weights["model.embed_tokens.weight"]
        inputs_embeds = torch.cat([embed[input_ids[:start]], features, embed[input_ids[end:]]])
        return llama(inputs_embeds=inputs_embeds[None]).logits


def test_logits_match_reference_forward(
    loaded: tuple[LlavaForConditionalGeneration, LlavaProcessor],
    tower_dir: Path,
    original_weights: dict[str, torch.Tensor],
) -> None:
    model, processor = loaded
    image = Image.new("RGB", (40, 30), (200, 30, 90))
    prompt = processor.apply_chat_template(_chat(PROMPT), add_generation_prompt=True, tokenize=False)
    inputs = processor(text=prompt, images=image, return_tensors="pt")
    image_id = model.config.image_token_id
    assert image_id == VOCAB
    assert int((inputs.input_ids == image_id).sum()) == N_PATCHES
    assert int(inputs.input_ids[0, 0]) == 1
    with torch.no_grad():
        logits = model(**inputs).logits
    ref = _reference_logits(original_weights, tower_dir, inputs.input_ids[0], inputs.pixel_values, image_id)
    assert logits.shape == (*ref.shape[:2], VOCAB + 1)
    torch.testing.assert_close(logits[..., :VOCAB], ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits[..., VOCAB], ref.mean(-1), atol=1e-5, rtol=1e-5)


def test_bin_shards_are_loaded_weights_only(checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    real_load = torch.load

    def recording_load(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    load_original_llava(checkpoint)
    expected = 0 if (checkpoint / "model.safetensors").exists() else 2
    assert len(calls) == expected
    assert all(call.get("weights_only") is True for call in calls)


def test_chat_template_is_byte_exact(loaded: tuple[LlavaForConditionalGeneration, LlavaProcessor]) -> None:
    _, processor = loaded
    prompt = processor.apply_chat_template(_chat(PROMPT), add_generation_prompt=True, tokenize=False)
    assert prompt == f"{VICUNA_V1_SYSTEM} USER: <image>\n{PROMPT} ASSISTANT:"
    conversation = [
        *_chat("q1"),
        {"role": "assistant", "content": [{"type": "text", "text": "a1"}]},
        {"role": "user", "content": "q2"},
    ]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    assert prompt == f"{VICUNA_V1_SYSTEM} USER: <image>\nq1 ASSISTANT: a1</s>USER: q2 ASSISTANT:"
    with_system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q"}]
    prompt = processor.apply_chat_template(with_system, add_generation_prompt=True, tokenize=False)
    assert prompt == "Be brief. USER: q ASSISTANT:"


def test_processor_metadata(loaded: tuple[LlavaForConditionalGeneration, LlavaProcessor]) -> None:
    model, processor = loaded
    assert type(processor.image_processor).__name__ == "LlavaImageProcessorPil"
    assert processor.image_processor.do_pad is True
    assert model.config.image_seq_length == N_PATCHES
    assert model.config.vision_feature_layer == -2
    assert model.config.vision_feature_select_strategy == "default"
    assert model.config.get_text_config().rope_parameters["rope_theta"] == ROPE_THETA
    assert processor.tokenizer.pad_token == "<unk>"
    assert model.generation_config.suppress_tokens == [VOCAB]


def test_cls_patch_keeps_cls_position(
    tmp_path: Path, tower_dir: Path, original_weights: dict[str, torch.Tensor]
) -> None:
    config = _original_config(str(tower_dir), mm_vision_select_feature="cls_patch")
    directory = _write_checkpoint(tmp_path / "ckpt", original_weights, "safetensors", config)
    model, processor = load_original_llava(directory)
    assert model.config.vision_feature_select_strategy == "full"
    inputs = processor(text="<image>", images=Image.new("RGB", (8, 8)), return_tensors="pt")
    assert int((inputs.input_ids == model.config.image_token_id).sum()) == N_PATCHES + 1
    with torch.no_grad():
        model(**inputs)
    geometry = get_adapter(model).geometry(model, processor, (8, 8))
    assert geometry.num_features == N_PATCHES + 1
    assert geometry.kinds[0] == "cls" and np.isnan(geometry.boxes[0]).all()
    assert geometry.grids[0].first == 1 and set(geometry.kinds[1:]) == {"patch"}


def test_vision_tower_relative_and_explicit(
    tmp_path: Path, tower_dir: Path, original_weights: dict[str, torch.Tensor]
) -> None:
    directory = tmp_path / "ckpt"
    _write_checkpoint(directory, original_weights, "safetensors", _original_config("tower"))
    (directory / "tower").symlink_to(tower_dir, target_is_directory=True)
    model, _ = load_original_llava(directory)
    model_explicit, _ = load_original_llava(directory, vision_tower=tower_dir)
    torch.testing.assert_close(
        model.model.vision_tower.state_dict(), model_explicit.model.vision_tower.state_dict()
    )


def test_missing_vision_tower_is_a_clear_error(
    tmp_path: Path, original_weights: dict[str, torch.Tensor]
) -> None:
    config = _original_config("openai/clip-vit-large-patch14-336")
    directory = _write_checkpoint(tmp_path / "ckpt", original_weights, "safetensors", config)
    with pytest.raises(FileNotFoundError, match=r"openai/clip-vit-large-patch14-336.*--vision-tower DIR"):
        load_original_llava(directory)


def test_unsupported_projector_is_a_clear_error(
    tmp_path: Path, tower_dir: Path, original_weights: dict[str, torch.Tensor]
) -> None:
    config = _original_config(str(tower_dir), mm_projector_type="linear")
    directory = _write_checkpoint(tmp_path / "ckpt", original_weights, "safetensors", config)
    with pytest.raises(ValueError, match=r"mm_projector_type='linear'.*supported values: \['mlp2x_gelu'\]"):
        load_original_llava(directory)
    for overrides, message in (
        ({"image_aspect_ratio": "anyres"}, r"config.json: image_aspect_ratio='anyres' is not supported"),
        ({"mm_patch_merge_type": "spatial_unpad"}, r"config.json: mm_patch_merge_type='spatial_unpad'"),
        ({"mm_vision_select_layer": [-2, -1]}, r"config.json: mm_vision_select_layer=\[-2, -1\]"),
    ):
        config = _original_config(str(tower_dir), **overrides)
        directory = _write_checkpoint(tmp_path / str(len(message)), original_weights, "safetensors", config)
        with pytest.raises(ValueError, match=message):
            load_original_llava(directory)
    vision = CLIPVisionConfig.from_pretrained(tower_dir)
    with pytest.raises(ValueError, match=r"mm_vision_select_feature='cls'.*'patch', 'cls_patch'"):
        convert_original_llava_config(_original_config("x", mm_vision_select_feature="cls"), vision)


def test_mismatched_weights_are_one_clear_error(
    tmp_path: Path, tower_dir: Path, original_weights: dict[str, torch.Tensor]
) -> None:
    weights = {**original_weights, "model.image_newline": torch.zeros(32)}
    weights["model.mm_projector.0.weight"] = torch.zeros(32, 8)
    del weights["model.mm_projector.2.bias"]
    directory = _write_checkpoint(tmp_path / "ckpt", weights, "safetensors", _original_config(str(tower_dir)))
    expected = (
        r"missing: \['model.multi_modal_projector.linear_2.bias'\]; "
        r"unexpected: \['model.image_newline'\]; "
        r"mismatched: \['model.multi_modal_projector.linear_1.weight \(32, 8\) != \(32, 16\)'\]"
    )
    with pytest.raises(ValueError, match=expected):
        load_original_llava(directory)


def test_vision_weights_in_checkpoint_override_the_tower(
    tmp_path: Path, tower_dir: Path, original_weights: dict[str, torch.Tensor]
) -> None:
    tuned = {k: v + 1.0 for k, v in CLIPVisionModel.from_pretrained(tower_dir).state_dict().items()}
    weights = {
        **original_weights,
        **{f"model.vision_tower.vision_tower.vision_model.{k}": v for k, v in tuned.items()},
    }
    directory = _write_checkpoint(tmp_path / "ckpt", weights, "safetensors", _original_config(str(tower_dir)))
    model, _ = load_original_llava(directory)
    torch.testing.assert_close(model.model.vision_tower.state_dict(), tuned)


def test_state_dict_renames() -> None:
    t = torch.zeros(1)
    renamed = convert_original_llava_state_dict(
        {
            "model.embed_tokens.weight": t,
            "model.layers.3.self_attn.q_proj.weight": t,
            "model.layers.3.self_attn.rotary_emb.inv_freq": t,
            "model.norm.weight": t,
            "lm_head.weight": t,
            "model.mm_projector.0.weight": t,
            "model.mm_projector.2.bias": t,
            "model.vision_tower.vision_tower.vision_model.embeddings.class_embedding": t,
        }
    )
    assert sorted(renamed) == [
        "lm_head.weight",
        "model.language_model.embed_tokens.weight",
        "model.language_model.layers.3.self_attn.q_proj.weight",
        "model.language_model.norm.weight",
        "model.multi_modal_projector.linear_1.weight",
        "model.multi_modal_projector.linear_2.bias",
        "model.vision_tower.embeddings.class_embedding",
    ]


def test_is_original_llava(checkpoint: Path, tmp_path: Path) -> None:
    assert is_original_llava(checkpoint)
    assert is_original_llava(checkpoint / "config.json")
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(
        json.dumps({"model_type": "llava", "text_config": {}, "vision_config": {}})
    )
    assert not is_original_llava(hf)
    assert not is_original_llava(tmp_path / "absent")


def _pad_color(mean: Sequence[float]) -> tuple[int, int, int]:
    """LLaVA's background: ``tuple(int(x * 255) for x in image_processor.image_mean)``."""
    r, g, b = (int(x * 255) for x in mean)
    return (r, g, b)


def _expand2square(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """LLaVA's ``expand2square``: centre on a square of the long side, offset ``(long - short) // 2``."""
    width, height = image.size
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), background)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def _hand_pixels(image: Image.Image, tower_dir: Path) -> torch.Tensor:
    """Pad → resize → CLIP normalisation by hand, ``(1, 3, S, S)``: LLaVA's ``process_images`` with
    ``image_aspect_ratio: pad`` (the CLIP crop is a no-op on a square resized to S)."""
    settings = json.loads((tower_dir / "preprocessor_config.json").read_text())
    mean, std = np.array(settings["image_mean"]), np.array(settings["image_std"])
    square = _expand2square(image, _pad_color(settings["image_mean"]))
    resized = square.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
    pixels = (np.asarray(resized, dtype=np.float32) * np.float32(1 / 255) - mean) / std
    return torch.from_numpy(pixels.astype(np.float32)).permute(2, 0, 1)[None]


def test_pad_helpers_match_llava() -> None:
    colour = _pad_color(CLIPImageProcessorPil().image_mean)
    assert colour == (122, 116, 104)
    square = _expand2square(Image.new("RGB", (5, 2), (255, 0, 0)), colour)
    assert square.size == (5, 5)
    assert [square.getpixel((0, y)) for y in range(5)] == [colour, (255, 0, 0), (255, 0, 0), colour, colour]


def test_original_and_hf_copies_pad_a_non_square_image_like_llava(
    checkpoint: Path, tower_dir: Path, original_weights: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    """``image_aspect_ratio: pad`` reaches every path through the processor: the original-format
    checkpoint and its HF-format copy give the same logits on a 200x100 image, equal to LLaVA's
    pad -> resize -> CLIP done by hand, and not to the centre crop the CLIP processor alone makes;
    evaluation batches and the Volcano loop's conversations get the same pixels as ``prepare``
    (which trace, attend and check use)."""
    if not (checkpoint / "model.safetensors").exists():
        pytest.skip("one weight format is enough")
    noise = np.random.default_rng(0).integers(0, 256, (100, 200, 3), dtype=np.uint8)
    image = Image.fromarray(noise)
    original = load(checkpoint)
    copy_dir = tmp_path / "hf"
    original.model.save_pretrained(copy_dir)
    original.processor.save_pretrained(copy_dir)
    copy = load(copy_dir)
    assert not is_original_llava(copy_dir) and copy.processor.image_processor.do_pad
    logits = []
    for loaded_model in (original, copy):
        prepared = loaded_model.adapter.prepare(loaded_model.model, loaded_model.processor, image, PROMPT)
        with torch.no_grad():
            logits.append(loaded_model.model(**prepared.inputs).logits)
    torch.testing.assert_close(logits[0], logits[1], atol=1e-5, rtol=0)

    hand = _hand_pixels(image, tower_dir)
    torch.testing.assert_close(prepared.inputs["pixel_values"], hand, atol=1e-5, rtol=0)
    image.save(tmp_path / "wide.png")
    runner = _Runner(original, "jsonl", 42, 2, tmp_path)
    batch = runner.encode([runner.prepare(Example(id="1", image=tmp_path / "wide.png", question=PROMPT))])
    conversation = _encode(original, image, _chat(PROMPT))
    for pixels in (batch["pixel_values"], conversation.inputs["pixel_values"]):
        torch.testing.assert_close(pixels, hand, atol=1e-5, rtol=0)
    image_id = original.model.config.image_token_id
    ids = prepared.inputs["input_ids"][0]
    reference = _reference_logits(original_weights, tower_dir, ids, hand, image_id)
    torch.testing.assert_close(logits[0][..., :VOCAB], reference, atol=1e-5, rtol=0)

    cropped = CLIPImageProcessorPil.from_pretrained(tower_dir)(image, return_tensors="pt")["pixel_values"]
    crop_reference = _reference_logits(original_weights, tower_dir, ids, cropped, image_id)
    assert (crop_reference - reference).abs().max() > 1e-3

    geometry = original.adapter.geometry(original.model, original.processor, image.size)
    side = IMAGE_SIZE // PATCH
    assert geometry.kinds[:side] == ("padding",) * side
    middle = geometry.boxes[(side // 2) * side]
    assert middle[0] == 0.0 and middle[2] == pytest.approx(200 * PATCH / IMAGE_SIZE)


def test_real_llava_15_7b_structure_on_meta(tmp_path: Path) -> None:
    orig = {
        "architectures": ["LlavaLlamaForCausalLM"],
        "model_type": "llava",
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "max_length": 4096,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "vocab_size": 32000,
        "pad_token_id": 0,
        "torch_dtype": "float16",
        "tune_mm_mlp_adapter": False,
        "use_mm_proj": True,
        "mm_hidden_size": 1024,
        "mm_projector_type": "mlp2x_gelu",
        "mm_use_im_patch_token": False,
        "mm_use_im_start_end": False,
        "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2,
        "mm_vision_tower": "openai/clip-vit-large-patch14-336",
        "image_aspect_ratio": "pad",
    }
    (tmp_path / "config.json").write_text(json.dumps(orig))
    assert is_original_llava(tmp_path)
    vision = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
    )
    config = convert_original_llava_config(orig, vision)
    assert (config.image_token_id, config.image_seq_length, config.vision_feature_layer) == (32000, 576, -2)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in LlavaForConditionalGeneration(config).state_dict().items()}
    assert shapes["model.multi_modal_projector.linear_1.weight"] == (4096, 1024)
    assert shapes["model.multi_modal_projector.linear_2.weight"] == (4096, 4096)
    assert shapes["model.language_model.embed_tokens.weight"] == shapes["lm_head.weight"] == (32001, 4096)
    assert "model.language_model.layers.31.mlp.down_proj.weight" in shapes
    assert shapes["model.vision_tower.embeddings.position_embedding.weight"] == (577, 1024)
