import pytest
import torch

from mmue_lib.models import (Tokenizer, create_clip, encode_images, encode_text, encode_texts, list_model_names, load_clip,
                             model_context_length, model_image_size, normalize_pixels, save_clip)

SMALL_MODELS = ["RN-tiny", "RN-tiny-wide", "ViT-tiny", "RN-small", "RN-medium", "ViT-small"]


def test_paper_and_small_architectures_are_registered():
    names = set(list_model_names())
    assert {"RN50", "RN101", "ViT-B-32", *SMALL_MODELS} <= names


@pytest.mark.parametrize("name", SMALL_MODELS)
def test_small_models_run_forward(name):
    model = create_clip(name, seed=0)
    size, length = model_image_size(model), model_context_length(model)
    images = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    tokens = Tokenizer().tokenize(["a red circle", "two shapes"], length)
    image_features, text_features, logit_scale = model(normalize_pixels(images), tokens)
    assert image_features.shape == text_features.shape and image_features.shape[0] == 2
    assert torch.allclose(image_features.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_overrides_of_image_size_and_context_length():
    model = create_clip("RN-tiny", image_size=64, context_length=16)
    assert model_image_size(model) == 64 and model_context_length(model) == 16
    features = encode_images(model, torch.zeros(3, 3, 64, 64, dtype=torch.uint8))
    assert features.shape == (3, 64)


def test_seed_makes_initialisation_reproducible():
    first, second = create_clip("ViT-tiny", seed=1), create_clip("ViT-tiny", seed=1)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))


def test_checkpoint_round_trip(tmp_path):
    model = create_clip("RN-tiny", context_length=24, seed=0)
    path = tmp_path / "clip.pt"
    save_clip(model, path, meta={"note": "test"})
    restored = load_clip(path)
    assert model_context_length(restored) == 24
    tokens = Tokenizer().tokenize(["a blue square"], 24)
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert torch.allclose(encode_texts(model, tokens), encode_texts(restored, tokens))
    assert torch.allclose(encode_images(model, images), encode_images(restored, images))
    # The same file also loads through open_clip's own checkpoint loader.
    via_open_clip = create_clip("RN-tiny", context_length=24, pretrained=path)
    assert torch.allclose(encode_texts(via_open_clip, tokens), encode_texts(model, tokens))


def test_no_downloads_and_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no downloads"):
        create_clip("RN50", pretrained="openai")
    with pytest.raises(ValueError, match="unknown model"):
        create_clip("RN-huge")
    bogus = tmp_path / "x.pt"
    torch.save({"a": torch.zeros(1)}, bogus)
    with pytest.raises(ValueError, match="not an mmue checkpoint"):
        load_clip(bogus)


def test_tokenizer_places_prefix_after_start_and_keeps_end_token():
    tok = Tokenizer()
    caption = "a dog runs on the grass near a lake"
    ids = tok.encode(caption)
    prefix = torch.tensor([tok.encode("the")[0]] * 3).repeat(2, 1)
    tokens = tok.tokenize([caption, "cat"], 8, prefix=prefix)
    assert tokens[0].tolist() == [tok.sot, *prefix[0].tolist(), *ids[:3], tok.eot]
    cat = tok.encode("cat")
    assert tokens[1].tolist() == [tok.sot, *prefix[1].tolist(), *cat, tok.eot] + [0] * (8 - 5 - len(cat))
    assert tok.decode(tokens[1]) == "the the the cat"
    with pytest.raises(ValueError, match="no room"):
        tok.tokenize(["x"], 5, prefix=prefix[:1])


@pytest.mark.parametrize("name", ["RN-tiny", "ViT-tiny"])
def test_trimmed_text_encoder_matches_open_clip(name):
    model = create_clip(name, seed=0).eval()
    tokens = Tokenizer().tokenize(["a red circle !", "two shapes on a gray background, both blue !!"], 32)
    with torch.no_grad():
        expected = model.encode_text(tokens)
        assert torch.allclose(encode_text(model, tokens), expected, atol=1e-5)
        embeddings = model.token_embedding(tokens)
        assert torch.allclose(encode_text(model, tokens, embeddings), expected, atol=1e-5)


@pytest.mark.parametrize("name", ["RN50", "ViT-B-32"])
def test_paper_architectures_build_at_224(name):
    model = create_clip(name, seed=0)
    assert model_image_size(model) == 224 and model_context_length(model) == 77
    features = encode_images(model, torch.zeros(1, 3, 224, 224, dtype=torch.uint8))
    assert features.shape == (1, 1024 if name == "RN50" else 512)


def test_tokenize_puts_the_prefix_before_a_given_word_and_says_where():
    tokenizer = Tokenizer()
    captions, prefix = ["a dog runs in the park", "two kids"], torch.tensor([[7, 8], [9, 10]])
    at_start = tokenizer.tokenize(captions, 16, prefix)
    assert torch.equal(at_start, tokenizer.tokenize(captions, 16, prefix, [0, 0]))
    inside, slots = tokenizer.place(captions, 16, prefix, [2, 5])
    assert torch.equal(inside, tokenizer.tokenize(captions, 16, prefix, [2, 5]))
    assert tokenizer.place(captions, 16, prefix)[1].tolist() == [1, 1]
    assert slots.tolist() == [1 + len(tokenizer.encode("a dog")), 1 + len(tokenizer.encode("two kids"))]
    assert [inside[row, slot:slot + 2].tolist() for row, slot in enumerate(slots.tolist())] == prefix.tolist()
    assert tokenizer.decode(inside[0]) == tokenizer.decode(tokenizer.encode("a dog") + [7, 8] +
                                                           tokenizer.encode("runs in the park"))
