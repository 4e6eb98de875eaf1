import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mmue_lib import records
from mmue_lib import t2ue as t2ue_module
from mmue_lib.data import make_synthetic_dataset
from mmue_lib.methods import method_config
from mmue_lib.photos import SHIPPED_GENERATOR
from mmue_lib.models import Tokenizer, create_clip
from mmue_lib.runs import data_spec, generator_corpus, load_protection, protection_run, training_run
from mmue_lib.t2ue import (CaptionBags, NoiseGenerator, generated_noise, load_generator, new_generator,
                           noise_similarity, train_generator)


@pytest.fixture(scope="module")
def small_set():
    return make_synthetic_dataset(48, 32, seed=0)


def quick(**overrides):
    values = dict(max_rounds=2, surrogate_steps=3, generator_steps=3, batch_size=16, device="cpu", stop_loss=None,
                  generator_width=16)
    values.update(overrides)
    return method_config("t2ue", **values)


@pytest.mark.parametrize("size", [32, 48, 40])
def test_generator_noise_has_the_protection_size_and_stays_within_eps(size):
    generator = NoiseGenerator(size, eps=8, vocabulary=CaptionBags.of(["a dog runs on the grass"]).ids, width=16)
    with torch.no_grad():
        generator.decode[-1].bias.fill_(50.0)  # saturate: the bound must come from the output layer
        noise = generator(CaptionBags.of(["a dog runs on the grass", "", "two children"]))
    assert noise.shape == (3, 3, size, size)
    assert noise.abs().max() <= 8
    rounded = generated_noise(generator, ["a dog runs on the grass", "a cat"])
    assert rounded.dtype == torch.int8 and rounded.shape == (2, 3, size, size) and rounded.abs().max() == 8


def test_caption_bags_pick_keeps_each_caption_whole():
    captions = ["a dog", "", "a man rides a red bicycle", "grass"]
    bags = CaptionBags.of(captions)
    picked = bags.pick(torch.tensor([2, 1, 3]))
    again = CaptionBags.of([captions[2], captions[1], captions[3]])
    assert torch.equal(picked.ids, again.ids) and torch.equal(picked.offsets, again.offsets)


def test_noise_depends_on_the_caption_only_and_an_unseen_word_moves_nothing(small_set):
    trained = train_generator(small_set, create_clip("RN-tiny", seed=0), quick(), progress=False)
    first = small_set.first_captions().captions
    seen = {token for caption in first for token in Tokenizer().encode(caption)}
    assert set(trained.generator.vocabulary.tolist()) == seen
    assert torch.equal(generated_noise(trained.generator, first[:4]), generated_noise(trained.generator, first)[:4])
    unseen = [f"{caption} zeppelin quokka" for caption in first[:4]]
    assert not {token for caption in unseen for token in Tokenizer().encode(caption)} <= seen
    assert torch.equal(generated_noise(trained.generator, unseen), generated_noise(trained.generator, first[:4]))
    assert not torch.equal(generated_noise(trained.generator, first[:1]), generated_noise(trained.generator, first[1:2]))


def test_noise_similarity_counts_only_pairs_of_different_images():
    patterns = torch.eye(4).reshape(4, 1, 2, 2)
    assert float(noise_similarity(patterns, torch.arange(4))) == pytest.approx(0.0)
    assert float(noise_similarity(torch.cat([patterns[:1], -patterns[:1]]), torch.tensor([0, 1]))) == pytest.approx(1.0)
    assert float(noise_similarity(torch.cat([patterns[:1], patterns[:1]]), torch.tensor([3, 3]))) == 0.0


def test_the_diversity_term_keeps_the_generators_noises_apart(small_set):
    plain, diverse = (train_generator(small_set, create_clip("RN-tiny", seed=0),
                                      quick(generator_steps=8, generator_lr=1e-2, generator_diversity=weight),
                                      progress=False) for weight in (0.0, 10.0))
    assert diverse.history[-1]["noise_similarity"] < plain.history[-1]["noise_similarity"]
    assert "generator_diversity" not in quick().keyed(), "an unset weight keys nothing: old runs keep their keys"
    with pytest.raises(ValueError, match="generator_diversity"):
        quick(generator_diversity=-1.0)


def test_training_is_deterministic_for_a_seed_and_differs_across_seeds(small_set):
    captions = small_set.first_captions().captions
    runs = [train_generator(small_set, create_clip("RN-tiny", seed=0), quick(seed=seed), progress=False)
            for seed in (0, 0, 1)]
    noises = [generated_noise(run.generator, captions) for run in runs]
    assert torch.equal(noises[0], noises[1])
    assert [h["noise_loss"] for h in runs[0].history] == [h["noise_loss"] for h in runs[1].history]
    assert not torch.equal(noises[0], noises[2])


def test_resume_after_kill_gives_the_same_generator(small_set, tmp_path, monkeypatch):
    config = quick(max_rounds=3)
    captions = small_set.first_captions().captions
    reference = train_generator(small_set, create_clip("RN-tiny", seed=0), config, progress=False)
    real_loss = t2ue_module.clip_loss
    calls = {"n": 0}

    def killed_in_round_two(*args):
        calls["n"] += 1
        if calls["n"] == 5:  # 3 generator steps per round: the 2nd step of round 2
            raise KeyboardInterrupt
        return real_loss(*args)

    checkpoint = tmp_path / "generator.ckpt"
    monkeypatch.setattr(t2ue_module, "clip_loss", killed_in_round_two)
    with pytest.raises(KeyboardInterrupt):
        train_generator(small_set, create_clip("RN-tiny", seed=0), config, checkpoint_path=checkpoint, progress=False)
    monkeypatch.setattr(t2ue_module, "clip_loss", real_loss)
    resumed = train_generator(small_set, create_clip("RN-tiny", seed=7), config, checkpoint_path=checkpoint,
                              progress=False)
    assert len(resumed.history) == 3
    assert torch.equal(generated_noise(resumed.generator, captions), generated_noise(reference.generator, captions))
    assert [h["noise_loss"] for h in resumed.history] == [h["noise_loss"] for h in reference.history]
    with pytest.raises(ValueError, match="another T2UE generator .generator_steps 3 saved, 4 now"):
        train_generator(small_set, create_clip("RN-tiny"), replace(config, generator_steps=4),
                        checkpoint_path=checkpoint)


def test_a_saved_generator_loads_as_it_was_and_a_wrong_file_is_named(small_set, tmp_path):
    trained = train_generator(small_set, create_clip("RN-tiny", seed=0), quick(max_rounds=1), progress=False)
    trained.save(tmp_path / "generator.pt", {"corpus": "synthetic"})
    loaded = load_generator(tmp_path / "generator.pt")
    captions = ["a dog", "a child in a red shirt"]
    assert torch.equal(generated_noise(loaded.generator, captions), generated_noise(trained.generator, captions))
    assert loaded.config == trained.config and loaded.history == trained.history
    (tmp_path / "other.pt").write_bytes(b"not a generator")
    with pytest.raises(ValueError, match="other.pt: not a T2UE generator"):
        load_generator(tmp_path / "other.pt")


def test_generator_settings_are_checked_before_any_compute():
    with pytest.raises(ValueError, match="trigger_len 0"):
        method_config("t2ue", trigger_len=3)
    with pytest.raises(ValueError, match="generator_width must be a multiple of 8"):
        method_config("t2ue", generator_width=12)
    assert new_generator(32, quick(), ["a dog"]).settings() == {"image_size": 32, "eps": 8, "embed_dim": 32, "width": 16}


def test_the_disjoint_corpus_never_holds_a_released_image():
    data = data_spec("synthetic", 32, max_train_images=40, max_test_images=20)
    released = generator_corpus(data, "released")
    disjoint = generator_corpus(data, "disjoint")
    assert released.num_images == 40
    released_bytes = {bytes(image.numpy()) for image in released.images}
    assert not released_bytes & {bytes(image.numpy()) for image in disjoint.images}
    assert disjoint.num_images > 0


def test_a_t2ue_protection_run_protects_from_captions_and_a_victim_trains_on_it(tmp_path):
    data = data_spec("synthetic", 32, max_train_images=48, max_test_images=20)
    settings = dict(max_rounds=1, surrogate_steps=2, generator_steps=2, batch_size=16, device="cpu",
                    generator_width=16)
    run = protection_run(data, "t2ue", "RN-tiny", 32, progress=False, **settings)
    assert run["spec"]["generator"]["config"]["generator_steps"] == 2
    assert run["seconds"] == pytest.approx(run["generator_seconds"] + run["noise_seconds"])
    protection = load_protection(run)
    assert protection.noise.shape == (48, 3, 32, 32) and protection.noise.abs().max() <= 8
    zero_contact = protection_run(data, "t2ue", "RN-tiny", 32, progress=False, generator_corpus="disjoint",
                                  **settings)
    assert zero_contact["spec"]["generator"] != run["spec"]["generator"]
    assert json.loads((Path(run["folder"]) / "spec.json").read_text())["method"] == "t2ue"
    records.write_run_records({"T2UE": {"protection": run}}, tmp_path, "t2ue")
    written = json.loads((tmp_path / "runs" / "t2ue.json").read_text())
    assert written["T2UE / protection / generator"]["kind"] == "generator", "a restore brings the generator too"
    assert written["T2UE / protection / generator"]["spec"] == run["spec"]["generator"]
    victim = training_run(data, "RN-tiny", 32, {"epochs": 1, "batch_size": 16, "device": "cpu"},
                          protection=zero_contact, progress=False)
    assert victim["final"]["i2t_MedR"] > 0


def test_the_shipped_generator_is_the_recorded_run_of_table_1():
    about = json.loads(SHIPPED_GENERATOR.with_suffix(".json").read_text())
    assert hashlib.sha256(SHIPPED_GENERATOR.read_bytes()).hexdigest() == about["sha256"]
    root = Path(__file__).resolve().parents[1]
    record = json.loads((root / about["run_records"]).read_text())[about["run"]]
    trained = load_generator(SHIPPED_GENERATOR)
    assert record["kind"] == "generator" and about["run"].endswith(f"[{record['key']}]")
    assert {name: getattr(trained.config, name) for name in record["spec"]["config"]} == record["spec"]["config"]
    assert trained.generator.image_size == record["spec"]["data"]["image_size"]
