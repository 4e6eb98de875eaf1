from dataclasses import replace

import pytest
import torch

import mmue_lib.runs as runs
from mmue_lib import defenses
from mmue_lib.data import PairDataset, make_synthetic_dataset
from mmue_lib.models import create_clip
from mmue_lib.train import PairEncoder, TokenizedPairs, TrainConfig, augmented_max_loss, train_clip


def captioned(*captions: str) -> PairDataset:
    return PairDataset(torch.zeros(len(captions), 3, 8, 8, dtype=torch.uint8), list(captions),
                       torch.arange(len(captions)))


def test_jpeg_keeps_shape_and_loses_more_at_low_quality():
    data = make_synthetic_dataset(6, 32, seed=1)
    errors = {}
    for quality in (95, 10):
        out = defenses.jpeg(data, quality)
        assert out.images.dtype == torch.uint8 and out.images.shape == data.images.shape
        assert out.captions == data.captions
        errors[quality] = (out.images.float() - data.images.float()).abs().mean()
    assert 0 < errors[95] < errors[10]
    with pytest.raises(ValueError, match="quality"):
        defenses.jpeg(data, 0)


def test_grayscale_has_equal_channels_and_keeps_gray_pixels():
    data = make_synthetic_dataset(4, 16, seed=2)
    gray = defenses.grayscale(data).images
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])
    flat = PairDataset(torch.full((1, 3, 8, 8), 77, dtype=torch.uint8), ["x"], torch.zeros(1))
    assert torch.equal(defenses.grayscale(flat).images, flat.images)


def test_blur_smooths_a_checkerboard_and_keeps_a_flat_image():
    board = ((torch.arange(16).view(1, -1) + torch.arange(16).view(-1, 1)) % 2 * 255).to(torch.uint8)
    data = PairDataset(board.expand(1, 3, 16, 16).clone(), ["x"], torch.zeros(1))
    assert defenses.blur(data, 1.0).images.float().std() < 0.5 * board.float().std()
    flat = PairDataset(torch.full((1, 3, 8, 8), 90, dtype=torch.uint8), ["x"], torch.zeros(1))
    assert torch.equal(defenses.blur(flat, 2.0).images, flat.images)


def test_caption_defenses_strip_rare_and_unknown_words():
    data = captioned("qz xv a dog runs.", "A dog sits", "a cat runs", "dog")
    assert defenses.strip_words(data, 2).captions == ["a dog runs.", "sits", "runs", ""]
    assert defenses.drop_rare_words(data, 2).captions == ["a dog runs.", "A dog", "a runs", "dog"]
    assert defenses.dictionary_filter(data, {"a", "dog"}).captions == ["a dog", "A dog", "a", "dog"]


def test_parse_and_apply_defenses_in_order_with_a_reference_corpus():
    assert defenses.parse_defenses(["grayscale", {"name": "jpeg", "quality": 30}]) == [
        {"name": "grayscale"}, {"name": "jpeg", "quality": 30}]
    chain = defenses.parse_defenses("strip_words(count: 3) + blur(sigma: 0.5, kernel_size: 3)")
    assert chain == [{"name": "strip_words", "count": 3}, {"name": "blur", "sigma": 0.5, "kernel_size": 3}]
    assert defenses.defense_label(chain) == "strip_words(count: 3) + blur(sigma: 0.5, kernel_size: 3)"
    for bad, message in ((["sharpen"], "one of"), ([{"name": "jpeg", "q": 3}], "unknown argument"),
                         (["jpeg(30"], "expected name"), (["jpeg(q 3)"], "key: value"),
                         ([{"name": "dictionary_filter", "dictionary": ["a"]}], "unknown argument"), ([3], "expected")):
        with pytest.raises(ValueError, match=message):
            defenses.parse_defenses(bad)
    data = captioned("zz a dog runs", "zz a cat sits")
    spec = "strip_words(count: 1) + dictionary_filter"
    out = defenses.apply_defenses(data, spec, reference=captioned("A dog runs.", "a cat"))
    assert out.captions == ["a dog runs", "a cat"]
    with pytest.raises(ValueError, match="dictionary_filter needs a clean reference split"):
        defenses.apply_defenses(data, spec)


def test_lowpass_keeps_what_is_below_its_cutoff_and_removes_what_is_above():
    size = 32
    rows = torch.arange(size).float().view(-1, 1).expand(size, size)
    slow = 128 + 40 * torch.cos(2 * torch.pi * 2 * rows / size)  # 2 cycles: 1/8 of Nyquist
    fast = 8 * torch.cos(torch.pi * rows)  # the Nyquist frequency: a one-pixel stripe
    images = (slow + fast).round().clamp(0, 255).to(torch.uint8).expand(2, 3, -1, -1).contiguous()
    data = PairDataset(images, ["a", "b"], torch.tensor([0, 1]))
    filtered = defenses.lowpass(data, cutoff=0.5).images.float()
    assert (filtered - slow).abs().max() <= 1, "what is below the cutoff stays; the stripe is gone"
    assert torch.equal(defenses.lowpass(data, cutoff=1.0).images, images)
    with pytest.raises(ValueError, match="cutoff"):
        defenses.lowpass(data, cutoff=0)


def test_a_denoiser_trained_on_clean_images_removes_noise_and_is_shared_through_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MMUE_CACHE", str(tmp_path))
    reference = defenses.blur(make_synthetic_dataset(24, 16, seed=1), sigma=1.0)  # smooth: noise is all that differs
    clean = defenses.blur(make_synthetic_dataset(8, 16, seed=2), sigma=1.0)
    noise = (torch.randn(clean.images.shape, generator=torch.Generator().manual_seed(0)) * 6).round()
    noisy = clean.with_images((clean.images.float() + noise).clamp(0, 255).to(torch.uint8))
    purified = defenses.apply_defenses(noisy, "denoise(sigma: 8, steps: 200)", reference=reference)
    before = (noisy.images.float() - clean.images.float()).pow(2).mean()
    after = (purified.images.float() - clean.images.float()).pow(2).mean()
    assert after < 0.75 * before
    assert len(list((tmp_path / "denoisers").glob("*.pt"))) == 1
    again = defenses.apply_defenses(noisy, "denoise(sigma: 8, steps: 200)", reference=reference)
    assert torch.equal(again.images, purified.images)
    with pytest.raises(ValueError, match="denoise needs a clean reference split"):
        defenses.apply_defenses(noisy, "denoise(sigma: 8)")


def test_noise_first_denoising_adds_seeded_gaussian_noise_of_the_given_std_before_the_denoiser(monkeypatch):
    monkeypatch.setattr(defenses, "trained_denoiser", lambda reference, sigma, steps, seed: (lambda images: images))
    released = make_synthetic_dataset(16, 32, seed=2).with_images(torch.full((16, 3, 32, 32), 128, dtype=torch.uint8))
    plain = defenses.apply_defenses(released, "denoise(sigma: 24)", reference=released)
    noised = defenses.apply_defenses(released, "denoise(sigma: 24, noise: 16)", reference=released)
    assert torch.equal(plain.images, released.images), "without noise the (identity) denoiser sees the image as released"
    added = noised.images.float() - 128
    assert abs(added.std().item() - 16) < 0.5 and abs(added.mean().item()) < 0.5
    again = defenses.apply_defenses(released, "denoise(sigma: 24, noise: 16)", reference=released)
    assert torch.equal(again.images, noised.images), "seeded"
    other_seed = defenses.apply_defenses(released, "denoise(sigma: 24, noise: 16, seed: 1)", reference=released)
    assert not torch.equal(other_seed.images, noised.images)
    with pytest.raises(ValueError, match="noise 32 must lie in"):
        defenses.apply_defenses(released, "denoise(sigma: 24, noise: 32)", reference=released)


def test_augment_batch_is_seeded_and_stays_in_range():
    images = make_synthetic_dataset(5, 32, seed=3).images

    def augmented(seed: int) -> torch.Tensor:
        return defenses.augment_batch(images, torch.Generator().manual_seed(seed))

    first = augmented(0)
    assert first.shape == images.shape and first.dtype == torch.float32
    assert 0 <= float(first.min()) and float(first.max()) <= 1
    assert torch.equal(first, augmented(0)) and not torch.equal(first, augmented(1))
    assert (first - images.float() / 255).abs().mean() > 0.01


def test_open_clip_crop_is_open_clips_training_crop_seeded_and_mild():
    images = make_synthetic_dataset(6, 32, seed=3).images
    crop = defenses.open_clip_train_crop(32)
    assert (tuple(crop.scale), crop.interpolation.value) == ((0.9, 1.0), "bicubic")

    def cropped(seed: int) -> torch.Tensor:
        return defenses.open_clip_crop(images, torch.Generator().manual_seed(seed))

    first = cropped(0)
    assert first.shape == images.shape and 0 <= float(first.min()) and float(first.max()) <= 1
    assert torch.equal(first, cropped(0)) and not torch.equal(first, cropped(1))
    change = (first - images.float() / 255).abs().mean()
    strong = (defenses.augment_batch(images, torch.Generator().manual_seed(0)) - images.float() / 255).abs().mean()
    assert 0 < change < strong


def test_augmentation_max_loss_is_at_least_the_first_views_loss():
    torch.manual_seed(0)
    model = create_clip("RN-tiny", image_size=32, context_length=32, seed=0)
    data = TokenizedPairs.from_dataset(make_synthetic_dataset(8, 32, seed=4), 32)
    pixels, tokens = data.images[data.row_image[:8]], data.tokens[:8]
    with torch.no_grad():
        single = augmented_max_loss(PairEncoder(model), pixels, tokens, 1, torch.Generator().manual_seed(5))
        worst = augmented_max_loss(PairEncoder(model), pixels, tokens, 3, torch.Generator().manual_seed(5))
    assert float(worst) > float(single)


def test_augmented_training_is_deterministic_and_checked():
    data = TokenizedPairs.from_dataset(make_synthetic_dataset(24, 32, seed=6), 32)
    config = TrainConfig(epochs=1, batch_size=12, augment="strong", augment_views=2, device="cpu")
    histories = [train_clip(create_clip("RN-tiny", image_size=32, seed=0), data, config, progress=False).history
                 for _ in range(2)]
    assert histories[0][0]["train_loss"] == histories[1][0]["train_loss"]
    open_clip_training = TrainConfig(epochs=1, batch_size=12, augment="open_clip", device="cpu")
    losses = [train_clip(create_clip("RN-tiny", image_size=32, seed=0), data, config, progress=False).history[0]
              for config in (open_clip_training, open_clip_training, replace(open_clip_training, augment="none"))]
    assert losses[0]["train_loss"] == losses[1]["train_loss"] != losses[2]["train_loss"]
    with pytest.raises(ValueError, match="augment='strong'"):
        TrainConfig(augment_views=2)
    with pytest.raises(ValueError, match="TrainConfig.augment must be one of 'none', 'strong', 'open_clip'; got 'storng'"):
        TrainConfig(augment="storng")


def test_training_run_applies_defenses_and_keys_them(tmp_path, monkeypatch):
    monkeypatch.setenv("MMUE_CACHE", str(tmp_path / "cache"))
    data = runs.data_spec("synthetic", 32, max_train_images=24, max_test_images=10)
    train = dict(epochs=1, batch_size=12, device="cpu")
    seen = []
    real_train = runs.train_clip
    monkeypatch.setattr(runs, "train_clip", lambda pairs_model, pairs, *a, **k: seen.append(pairs) or
                        real_train(pairs_model, pairs, *a, **k))
    plain = runs.training_run(data, "RN-tiny", 32, train, progress=False)
    defended = runs.training_run(data, "RN-tiny", 32, train, defenses=["grayscale", {"name": "strip_words", "count": 2}],
                                 progress=False)
    assert "defenses" not in plain["spec"] and defended["spec"]["defenses"][1] == {"name": "strip_words", "count": 2}
    assert plain["folder"] != defended["folder"]
    gray = seen[1].images
    assert torch.equal(gray[:, 0], gray[:, 2]) and not torch.equal(seen[0].images[:, 0], seen[0].images[:, 2])
    assert seen[1].tokens.ne(0).sum() < seen[0].tokens.ne(0).sum()


def test_settings_round_trip_through_their_label():
    settings = defenses.parse_settings("max_rounds: 6, stop_loss: null, shuffle_pgd: false, alpha: 1")
    assert settings == {"max_rounds": 6, "stop_loss": None, "shuffle_pgd": False, "alpha": 1}
    assert defenses.settings_label(settings) == "max_rounds: 6, stop_loss: null, shuffle_pgd: false, alpha: 1"
    assert defenses.parse_settings(defenses.settings_label(settings)) == settings
    with pytest.raises(ValueError, match="plain values"):
        defenses.parse_settings("eps: [1, 2]")


def test_differentiable_jpeg_is_close_to_libjpeg_and_lets_gradients_through():
    data = make_synthetic_dataset(16, 32, seed=8)
    clean = data.images.float() / 255
    for quality in (10, 30, 75):
        real = defenses.jpeg(data, quality).images.float() / 255
        ours = defenses.differentiable_jpeg(clean, quality)
        assert (ours - real).abs().mean() < 0.35 * (clean - real).abs().mean(), quality
    x = clean.clone().requires_grad_(True)
    defenses.differentiable_jpeg(x, torch.full((16,), 30.0)).sum().backward()
    assert (x.grad != 0).float().mean() > 0.9
    odd = make_synthetic_dataset(4, 24, seed=8)
    real = defenses.jpeg(odd, 30).images.float() / 255
    ours = defenses.differentiable_jpeg(odd.images.float() / 255, 30)
    untouched = (odd.images.float() / 255 - real).abs().mean()
    assert ours.shape == real.shape and (ours - real).abs().mean() < 0.35 * untouched


def test_collector_view_is_seeded_and_differentiable():
    x = (make_synthetic_dataset(8, 32, seed=9).images.float() / 255).requires_grad_(True)
    first = defenses.collector_view(x, torch.Generator().manual_seed(0))
    assert first.shape == x.shape and torch.equal(first, defenses.collector_view(x, torch.Generator().manual_seed(0)))
    assert not torch.equal(first, defenses.collector_view(x, torch.Generator().manual_seed(1)))
    first.sum().backward()
    assert x.grad.abs().sum() > 0


def test_a_detector_tells_protected_images_apart_and_the_collector_drops_what_it_flags():
    from mmue_lib.collector import detection_auc, flag_protected

    clean = make_synthetic_dataset(80, 32, seed=4)
    signs = torch.randint(0, 2, clean.images.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    protected = (clean.images.short() + 8 * signs).clamp(0, 255).to(torch.uint8)
    other_clean = make_synthetic_dataset(80, 32, seed=5).images
    assert detection_auc(protected, other_clean, examples=40, steps=60) > 0.9
    flagged = flag_protected(protected, other_clean, examples=40, steps=60)
    assert flagged[:40].all() and flagged[40:].float().mean() > 0.8
    released = clean.with_images(protected)
    kept = defenses.apply_defenses(released, "drop_detected(examples: 40, steps: 60)",
                                   reference=clean.with_images(other_clean))
    assert kept.num_images < 20 and set(kept.captions) <= set(released.captions)
    with pytest.raises(ValueError, match="examples 80"):
        flag_protected(protected, other_clean, examples=80, steps=1)


def test_a_collector_whose_detector_flags_every_image_trains_on_nothing_and_keeps_its_starting_model(monkeypatch):
    released = make_synthetic_dataset(12, 32, seed=4)
    monkeypatch.setattr(defenses, "flag_protected", lambda images, *args: torch.ones(len(images), dtype=torch.bool))
    kept = defenses.apply_defenses(released, "drop_detected(examples: 4, steps: 1)", reference=released)
    assert kept.num_images == 0 and kept.num_rows == 0
    model = create_clip("RN-tiny", image_size=32, seed=0)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    test = TokenizedPairs.from_dataset(make_synthetic_dataset(8, 32, seed=5), 32)
    result = train_clip(model, TokenizedPairs.from_dataset(kept, 32), TrainConfig(epochs=2, batch_size=4), test=test,
                        progress=False)
    assert [record["steps"] for record in result.history] == [0, 0] and "i2t_MedR" in result.history[-1]
    assert all(torch.equal(start[k], v) for k, v in model.state_dict().items())
    one_left = TokenizedPairs.from_dataset(released.subset([3]), 32)
    config = TrainConfig(epochs=1, batch_size=4, rows_per_epoch="one_per_image")
    assert train_clip(model, one_left, config, progress=False).history[0]["steps"] == 0, "one pair: nothing to contrast"


def test_the_retrieval_captioner_writes_each_image_its_nearest_pool_images_captions():
    pool = make_synthetic_dataset(6, 32, seed=6)
    released = pool.subset([4, 1])
    model = create_clip("RN-tiny", seed=0)
    recaptioned = defenses.apply_defenses(released, "recaption", reference=pool, model=model)
    rows = pool.rows_of_image()
    assert recaptioned.captions == [pool.captions[r] for r in rows[4] + rows[1]], "each image is its own nearest"
    with pytest.raises(ValueError, match="collector's own model"):
        defenses.apply_defenses(released, "recaption", reference=pool)
    with pytest.raises(ValueError, match="captioner="):
        runs.training_run(runs.data_spec("synthetic", 32, 24, 10), "RN-tiny", 32, {"epochs": 1}, defenses=["recaption"])
