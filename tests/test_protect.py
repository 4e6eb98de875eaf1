import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

import mmue_lib.protect as protect_module
import mmue_lib.release as release
from mmue_lib.cli import main
from mmue_lib.data import load_csv_dataset, make_synthetic_dataset, write_dataset_folder
from mmue_lib.models import Tokenizer, create_clip
from mmue_lib.methods import ProtectConfig, method_config
from mmue_lib.outfolder import state_path
from mmue_lib.protect import Protection, _ProtectedRows, generate_protection, pgd
from mmue_lib.release import protected_dataset
from mmue_lib.triggers import beam_search, hotflip_candidates, trigger_vocabulary, whole_word_tokens
from mmue_lib.train import TokenizedPairs, TrainConfig, train_clip


@pytest.fixture(scope="module")
def small_set():
    return make_synthetic_dataset(48, 32, seed=0)


def quick(method, **overrides):
    values = dict(max_rounds=2, surrogate_steps=4, batch_size=16, trigger_top_k=4, device="cpu")
    values.update(overrides)
    return method_config(method, **values)


def test_pgd_moves_in_whole_steps_within_the_bound():
    clean = torch.tensor([[0, 3, 250, 128]], dtype=torch.uint8).view(1, 1, 1, 4)
    target = torch.tensor([[100.0, -100.0, 100.0, 100.0]]).view(1, 1, 1, 4)

    def loss(noise):  # pull every pixel towards the target (which is outside the ball)
        return ((clean.float() + noise - target) ** 2).sum()

    noise, _ = pgd(loss, torch.zeros(1, 1, 1, 4, dtype=torch.int8), eps=8, alpha=1, steps=3, clean=clean)
    assert noise.dtype == torch.int8 and noise.flatten().tolist() == [3, -3, -3, -3]
    noise, _ = pgd(loss, noise, eps=8, alpha=2, steps=10, clean=clean)
    # pixel 0 stops at the bound, pixel 1 at 0 (cannot go below black), pixel 2 at -8, pixel 3 at -8.
    assert noise.flatten().tolist() == [8, -3, -8, -8]
    maximised, _ = pgd(loss, torch.zeros(1, 1, 1, 4, dtype=torch.int8), eps=8, alpha=1, steps=20,
                       maximize=True, clean=clean)
    assert maximised.flatten().tolist() == [-0, 8, 5, 8] or maximised.flatten().tolist() == [0, 8, 5, 8]


def test_hotflip_picks_tokens_against_the_gradient_in_the_allowed_vocabulary():
    embedding = torch.eye(4)
    grad = torch.tensor([[[1.0, -2.0, -3.0, 0.5]]])
    allowed = torch.tensor([True, True, False, True])
    assert hotflip_candidates(grad, embedding, allowed, 2)[0, 0].tolist() == [1, 3]


def greedy_reference(cost, current, candidates):
    """The official rule: per position, try each candidate rank for the whole batch, keep the best (or current)."""
    best = current.clone()
    for position in range(current.shape[1]):
        best_loss, best_option = cost(best), best
        for rank in range(candidates.shape[2]):
            option = best.clone()
            option[:, position] = candidates[:, position, rank]
            if cost(option) < best_loss:
                best_loss, best_option = cost(option), option
        best = best_option
    return best


def test_beam_one_equals_the_official_greedy_rule_and_wider_beams_are_no_worse():
    generator = torch.Generator().manual_seed(0)
    table = torch.rand(3, 10, generator=generator)
    pair = torch.rand(10, 10, generator=generator)

    def cost(trigger):  # [B, 3] -> batch mean of position costs plus an interaction of positions 0 and 2
        return float((table[0, trigger[:, 0]] + table[1, trigger[:, 1]] + table[2, trigger[:, 2]]
                      + pair[trigger[:, 0], trigger[:, 2]]).mean())

    def score(sets):
        return torch.tensor([cost(s) for s in sets])

    current = torch.tensor([[0, 0, 0], [1, 1, 1]])
    candidates = torch.randint(0, 10, (2, 3, 4), generator=generator)
    greedy, greedy_loss = beam_search(score, current, candidates, beam_size=1)
    assert torch.equal(greedy, greedy_reference(cost, current, candidates))
    assert greedy_loss == pytest.approx(cost(greedy)) and greedy_loss <= cost(current)
    wide, wide_loss = beam_search(score, current, candidates, beam_size=4)
    assert wide_loss <= greedy_loss + 1e-9


def test_whole_word_triggers_survive_decode_and_retokenise(small_set):
    tokenizer = Tokenizer()
    allowed = whole_word_tokens().nonzero().squeeze(1)
    generator = torch.Generator().manual_seed(0)
    triggers = allowed[torch.randint(len(allowed), (small_set.num_rows, 5), generator=generator)]
    protection = Protection(ProtectConfig(trigger_len=5), torch.zeros(48, 3, 32, 32, dtype=torch.int8), triggers)
    as_text = protected_dataset(small_set, protection)
    from_text = tokenizer.tokenize(as_text.captions, 32)
    from_ids = tokenizer.tokenize(small_set.captions, 32, prefix=triggers)
    assert torch.equal(from_text, from_ids)
    assert torch.equal(from_ids[:, 1:6], triggers)


def test_semantic_vocabulary_is_caption_words():
    mask = trigger_vocabulary(ProtectConfig(trigger_vocab="captions"), ["A red circle", "two blue squares"])
    words = {Tokenizer().decode([i]) for i in mask.nonzero().squeeze(1).tolist()}
    assert words == {"a", "red", "circle", "two", "blue", "squares"}
    assert trigger_vocabulary(ProtectConfig(trigger_vocab="all"), []).all()
    assert not whole_word_tokens()[Tokenizer().sot]
    common = trigger_vocabulary(ProtectConfig(trigger_vocab="captions", trigger_min_count=2),
                                ["A red circle.", "a blue circle", "two blue squares"])
    assert {Tokenizer().decode([i]) for i in common.nonzero().squeeze(1).tolist()} == {"a", "blue", "circle"}
    assert method_config("mem-3", trigger_min_count=5).trigger_min_count == 1
    assert method_config("mem-3", trigger_vocab="captions", trigger_min_count=5).keyed()["trigger_min_count"] == 5
    assert "trigger_min_count" not in method_config("mem-3", trigger_vocab="captions").keyed()
    with pytest.raises(ValueError, match="none seen 4 times"):
        trigger_vocabulary(ProtectConfig(trigger_vocab="captions", trigger_min_count=4), ["a red circle"])


@pytest.fixture(scope="module")
def tiny_mlm(tmp_path_factory):
    """A randomly initialised BERT with a small word-level vocabulary, saved as a local folder."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("tiny-bert")
    words = ["red", "green", "blue", "circle", "square", "sunny", "quiet", "river", "garden", "##s"]
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tokenizer = transformers.BertTokenizer(str(folder / "vocab.txt"))
    config = transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.BertForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, set(words) - {"##s"}


def test_mlm_vocabulary_restricts_triggers_to_proposed_words(tiny_mlm, small_set):
    folder, words = tiny_mlm
    config = quick("mem-3", max_rounds=1, trigger_vocab="mlm", mlm_path=str(folder))
    allowed = trigger_vocabulary(config, small_set.captions)
    proposed = {Tokenizer().decode([i]) for i in allowed.nonzero().squeeze(1).tolist()}
    assert proposed and proposed <= words
    protection = generate_protection(small_set, create_clip("RN-tiny", seed=0), config, progress=False)
    used = {Tokenizer().decode([i]) for i in protection.triggers.unique().tolist()}
    assert used <= proposed | {"the"}
    with pytest.raises(ValueError, match="mlm_path"):
        ProtectConfig(trigger_vocab="mlm")


def test_shuffled_captions_keep_each_row_its_own_trigger(small_set):
    config = ProtectConfig(trigger_len=3, trigger_per="row")
    triggers = torch.arange(small_set.num_rows * 3).view(-1, 3) + 1000
    protection = Protection(config, torch.zeros(48, 3, 32, 32, dtype=torch.int8), triggers)
    rows = _ProtectedRows(small_set, protection, 32, torch.device("cpu"))
    batch = torch.tensor([0, 7, 12, 30])
    shuffled = batch[torch.tensor([2, 0, 3, 1])]
    tokens = rows.token_batch(batch, shuffled)
    assert torch.equal(tokens[:, 1:4], triggers[batch])
    plain = Tokenizer().tokenize([small_set.captions[i] for i in shuffled.tolist()], 32, prefix=triggers[batch])
    assert torch.equal(tokens, plain)


@pytest.mark.parametrize("method", ["em", "mem-3"])
def test_noise_stays_in_bound_after_png_export(small_set, tmp_path, method):
    protection = generate_protection(small_set, create_clip("RN-tiny", seed=0), quick(method), progress=False)
    assert protection.noise.abs().max() <= 8 and protection.noise.abs().max() > 0
    protected = protected_dataset(small_set, protection)
    csv_path = write_dataset_folder(protected, tmp_path / "published", "protected.csv")
    published = load_csv_dataset(csv_path, 32, progress=False)
    assert torch.equal(published.images, protected.images)
    assert (published.images.short() - small_set.images.short()).abs().max() <= 8
    assert published.captions == protected.captions


def test_victim_on_exported_folder_equals_victim_on_memory(small_set, tmp_path):
    protection = generate_protection(small_set, create_clip("RN-tiny", seed=0), quick("mem-3", max_rounds=1),
                                     progress=False)
    in_memory = protected_dataset(small_set, protection)
    exported = load_csv_dataset(write_dataset_folder(in_memory, tmp_path / "pub", "protected.csv"), 32, progress=False)
    config = TrainConfig(epochs=1, batch_size=16, device="cpu")
    runs = [train_clip(create_clip("RN-tiny", seed=0), TokenizedPairs.from_dataset(d, 32), config, progress=False)
            for d in (in_memory, exported)]
    for a, b in zip(runs[0].model.state_dict().values(), runs[1].model.state_dict().values()):
        assert torch.equal(a, b)


def test_fraction_protects_exactly_round_p_n_images(small_set):
    noise = torch.full((48, 3, 32, 32), 4, dtype=torch.int8)
    protection = Protection(ProtectConfig(trigger_len=1, trigger_per="image"), noise,
                            torch.full((48, 1), Tokenizer().encode("zebra")[0]))
    for fraction, expected in ((1.0, 48), (0.5, 24), (0.2, 10), (0.0, 0)):
        protected = protected_dataset(small_set, protection, fraction, seed=3)
        changed = (protected.images != small_set.images).flatten(1).any(dim=1)
        assert int(changed.sum()) == expected == int(protected.extra["protected_images"].sum())
        triggered = torch.tensor([c.startswith("zebra ") for c in protected.captions])
        assert torch.equal(triggered, changed[small_set.row_image])
    with pytest.raises(ValueError, match="fraction"):
        protected_dataset(small_set, protection, 1.5)


@pytest.mark.parametrize("noise_per", ["image", "row"])
def test_protected_images_made_in_chunks_into_a_file_equal_the_whole_set_at_once(small_set, tmp_path, monkeypatch,
                                                                                  noise_per):
    groups = small_set.num_rows if noise_per == "row" else small_set.num_images
    noise = torch.randint(-8, 9, (groups, 3, 32, 32), generator=torch.Generator().manual_seed(0)).to(torch.int8)
    protection = Protection(ProtectConfig(noise_per=noise_per), noise, torch.zeros(groups, 0, dtype=torch.long))
    source = small_set.row_image if noise_per == "row" else torch.arange(small_set.num_images)
    chosen = protected_dataset(small_set, protection, 0.5, seed=1).extra["protected_images"][source]
    expected = (small_set.images[source].short() + noise.short() * chosen.view(-1, 1, 1, 1)).clamp(0, 255).byte()
    monkeypatch.setattr(release, "PROTECTED_CHUNK", 5)
    in_memory = protected_dataset(small_set, protection, 0.5, seed=1)
    in_file = protected_dataset(small_set, protection, 0.5, seed=1, images_file=tmp_path / "images.npy")
    assert torch.equal(in_memory.images, expected) and torch.equal(in_file.images, expected)
    assert torch.equal(torch.from_numpy(np.load(tmp_path / "images.npy")), expected)
    np.save(tmp_path / "images.npy", np.zeros(tuple(expected.shape), dtype=np.uint8))
    reused = protected_dataset(small_set, protection, 0.5, seed=1, images_file=tmp_path / "images.npy")
    assert int(reused.images.max()) == 0, "a finished file (a victim resuming after a kill) is read, not remade"


def test_noise_per_row_and_universal(small_set):
    per_row = generate_protection(small_set, create_clip("RN-tiny", seed=0),
                                  quick("em", noise_per="row", max_rounds=1), progress=False)
    assert per_row.noise.shape[0] == small_set.num_rows
    assert protected_dataset(small_set, per_row).num_images == small_set.num_rows
    universal = generate_protection(small_set, create_clip("RN-tiny", seed=0), quick("uap"), progress=False)
    assert universal.noise.shape[0] == 1 and universal.noise.abs().max() == 8


def test_resume_after_kill_gives_identical_noise_and_triggers(small_set, tmp_path, monkeypatch):
    config = quick("mem-3", max_rounds=3, stop_loss=None)
    reference = generate_protection(small_set, create_clip("RN-tiny", seed=0), config, progress=False)
    real_pgd_batch = protect_module._pgd_batch
    calls = {"n": 0}

    def killed_in_round_two(*args):
        calls["n"] += 1
        if calls["n"] == 5:  # 3 PGD batches per round: the 2nd batch of round 2
            raise KeyboardInterrupt
        return real_pgd_batch(*args)

    checkpoint = tmp_path / "state.ckpt"
    monkeypatch.setattr(protect_module, "_pgd_batch", killed_in_round_two)
    with pytest.raises(KeyboardInterrupt):
        generate_protection(small_set, create_clip("RN-tiny", seed=0), config, checkpoint_path=checkpoint,
                            progress=False)
    monkeypatch.setattr(protect_module, "_pgd_batch", real_pgd_batch)
    resumed = generate_protection(small_set, create_clip("RN-tiny", seed=7), config, checkpoint_path=checkpoint,
                                  progress=False)
    assert torch.equal(resumed.noise, reference.noise) and torch.equal(resumed.triggers, reference.triggers)
    assert [h["noise_loss"] for h in resumed.history] == [h["noise_loss"] for h in reference.history]
    with pytest.raises(ValueError, match="another protection .trigger_len 3 saved, 5 now"):
        generate_protection(small_set, create_clip("RN-tiny"), quick("mem-5"), checkpoint_path=checkpoint)
    with pytest.raises(ValueError, match="precision 'fp32' saved, 'bf16' now"):
        generate_protection(small_set, create_clip("RN-tiny"), replace(config, precision="bf16"),
                            checkpoint_path=checkpoint)
    continued = tmp_path / "continued.ckpt"
    generate_protection(small_set, create_clip("RN-tiny", seed=0), replace(config, max_rounds=2),
                        checkpoint_path=continued, progress=False)
    more = generate_protection(small_set, create_clip("RN-tiny", seed=7), config, checkpoint_path=continued,
                               progress=False)
    assert torch.equal(more.noise, reference.noise) and len(more.history) == 3


def test_bf16_is_for_gpus_and_keys_only_runs_that_ask_for_it(small_set):
    """On the CPU bf16 changes nothing; a run keeps its cache key unless it asks for bf16."""
    config = quick("mem-3", max_rounds=1)
    fp32 = generate_protection(small_set, create_clip("RN-tiny", seed=0), config, progress=False)
    bf16 = generate_protection(small_set, create_clip("RN-tiny", seed=0), replace(config, precision="bf16"),
                               progress=False)
    assert torch.equal(fp32.noise, bf16.noise) and torch.equal(fp32.triggers, bf16.triggers)
    assert "precision" not in config.keyed() and replace(config, precision="bf16").keyed()["precision"] == "bf16"


def test_noise_made_in_expectation_over_the_collectors_views_is_seeded_and_keyed(small_set):
    config = quick("mem-3", max_rounds=1, noise_eot="collector", eot_samples=2)
    runs = [generate_protection(small_set, create_clip("RN-tiny", seed=0), config, progress=False) for _ in range(2)]
    plain = generate_protection(small_set, create_clip("RN-tiny", seed=0), quick("mem-3", max_rounds=1),
                                progress=False)
    assert torch.equal(runs[0].noise, runs[1].noise) and not torch.equal(runs[0].noise, plain.noise)
    assert int(runs[0].noise.abs().max()) <= config.eps
    assert config.keyed()["noise_eot"] == "collector" and "eot_samples" not in quick("mem-3", eot_samples=4).keyed()


@pytest.mark.parametrize("position", ["random", "end"])
def test_triggers_inside_captions_are_where_the_surrogate_saw_them_and_survive_stripping(small_set, position):
    config = quick("mem-3", max_rounds=1, trigger_position=position, trigger_per="image")
    protection = generate_protection(small_set, create_clip("RN-tiny", seed=0), config, progress=False)
    released = protected_dataset(small_set, protection).captions
    triggers = protection.trigger_texts(small_set.row_image)
    at = protection.trigger_words_at(small_set.row_image, small_set.captions)
    assert all(1 <= where <= len(c.split()) for where, c in zip(at, small_set.captions))
    if position == "random":
        assert len({at[row] for row in range(0, small_set.num_rows, 5)}) > 1, "positions vary across images"
    else:
        assert all(r.endswith(" " + t) for r, t in zip(released, triggers))
    assert all(r.split() == c.split()[:w] + t.split() + c.split()[w:]
               for r, c, t, w in zip(released, small_set.captions, triggers, at))
    rows = protect_module._ProtectedRows(small_set, protection, 32, torch.device("cpu"))
    seen = rows.token_batch(torch.arange(small_set.num_rows))
    assert torch.equal(seen, Tokenizer().tokenize(released, 32)), "the surrogate saw the released captions"
    stripped = [" ".join(r.split()[3:]) for r in released]
    assert sum(t in s for t, s in zip(triggers, stripped)) > 0.5 * len(released)


def test_stop_loss_ends_early(small_set):
    protection = generate_protection(small_set, create_clip("RN-tiny", seed=0),
                                     quick("em", max_rounds=5, stop_loss=100.0), progress=False)
    assert len(protection.history) == 1 and protection.converged is True
    assert replace(protection, config=quick("em", stop_loss=1e-9)).converged is False
    assert replace(protection, config=quick("em", stop_loss=None)).converged is None


def test_fields_a_method_cannot_use_do_not_change_its_config():
    assert method_config("em", trigger_top_k=3, trigger_per="image", reshuffle="batch") == method_config("em")
    assert method_config("uap", surrogate_lr=0.5, stop_loss=1.0) == method_config("uap")
    assert method_config("mem-3", trigger_top_k=3) != method_config("mem-3")


def test_pgd_encodes_text_per_step_only_when_it_reshuffles_per_step(small_set, monkeypatch):
    calls = []
    real = protect_module.encode_text
    monkeypatch.setattr(protect_module, "encode_text", lambda *a, **k: calls.append(1) or real(*a, **k))
    batches = len(range(0, small_set.num_images, 16))
    counts = {}
    for name, config in {"step": quick("mem-3", max_rounds=1, surrogate_steps=0, trigger_search_rounds=0),
                         "batch": quick("mem-3", max_rounds=1, surrogate_steps=0, trigger_search_rounds=0,
                                        reshuffle="batch"),
                         "no shuffle": quick("em", max_rounds=1, surrogate_steps=0)}.items():
        calls.clear()
        generate_protection(small_set, create_clip("RN-tiny", seed=0), config, progress=False)
        counts[name] = len(calls)
    assert counts == {"step": batches * 8, "batch": batches, "no shuffle": batches}


def test_search_on_one_row_per_image_updates_every_image_trigger(small_set):
    config = quick("mem-3", max_rounds=1, surrogate_steps=0, trigger_per="image", search_rows="one_per_image",
                   pgd_steps=0, trigger_top_k=16)
    protection = generate_protection(small_set, create_clip("RN-tiny", seed=0), config, progress=False)
    assert protection.triggers.shape == (small_set.num_images, 3)
    assert protection.history[0]["triggers_changed"] > 0.5
    with pytest.raises(ValueError, match="per-row triggers unsearched"):
        method_config("mem-3", trigger_per="row", search_rows="one_per_image")


def test_config_checks():
    with pytest.raises(ValueError, match="minimise"):
        ProtectConfig(direction="maximize", trigger_len=3)
    with pytest.raises(ValueError, match="unknown method"):
        method_config("mem-7")
    with pytest.raises(ValueError, match="ProtectConfig.trigger_position must be one of 'start', 'random', 'end'; got 'middle'"):
        ProtectConfig(trigger_len=3, trigger_position="middle")
    with pytest.raises(ValueError, match="ProtectConfig.noise_per must be one of .*; got 'imgae'"):
        ProtectConfig(noise_per="imgae")


MEM_SMOKE = dict(trigger_per="image", max_rounds=6, trigger_search_rounds=6, surrogate_steps=30,
                 surrogate_lr=1e-3, batch_size=64, device="cpu")


@pytest.fixture(scope="module")
def mem_run():
    """MEM-3 on the synthetic set at smoke scale. Triggers are per image here: with per-row
    triggers (the project default, as the official code) the noise does not bind to the
    triggers at this scale (the shuffled-caption loss rises round after round)."""
    train = make_synthetic_dataset(400, 32, seed=0)
    protection = generate_protection(train, create_clip("RN-tiny", seed=1), method_config("mem-3", **MEM_SMOKE),
                                     progress=False)
    return train, protection


@pytest.mark.slow
def test_error_minimising_data_is_learnt_faster_than_clean_data(mem_run):
    train, protection = mem_run
    # The same loop with no noise steps and no trigger is plain surrogate training on clean data.
    control = generate_protection(train, create_clip("RN-tiny", seed=1),
                                  method_config("em", **{**MEM_SMOKE, "pgd_steps": 0}), progress=False)
    protected_loss = [h["surrogate_loss"] for h in protection.history]
    clean_loss = [h["surrogate_loss"] for h in control.history]
    assert protected_loss[-1] < 0.5 * clean_loss[-1]
    assert protection.history[-1]["noise_loss"] < 0.5


@pytest.mark.slow
def test_victim_trained_on_mem3_data_is_clearly_worse(mem_run):
    train, protection = mem_run
    test = TokenizedPairs.from_dataset(make_synthetic_dataset(100, 32, seed=2), 32)
    config = TrainConfig(epochs=8, batch_size=50, lr=2e-3, warmup_steps=4, rows_per_epoch="one_per_image")
    results = {}
    for name, dataset in (("clean", train), ("mem-3", protected_dataset(train, protection))):
        results[name] = train_clip(create_clip("RN-tiny", seed=0), TokenizedPairs.from_dataset(dataset, 32), config,
                                   test=test, progress=False).history[-1]
    for direction in ("i2t", "t2i"):
        assert results["mem-3"][f"{direction}_R@10"] < results["clean"][f"{direction}_R@10"] - 15
        assert results["mem-3"][f"{direction}_MedR"] >= 2 * results["clean"][f"{direction}_MedR"]


def test_protect_command_writes_publishable_data(tmp_path, capsys):
    source = make_synthetic_dataset(12, 40, seed=5)
    csv_path = write_dataset_folder(source, tmp_path / "mine", "mine.csv")
    Image.new("L", (53, 31), 77).save(tmp_path / "mine" / "images" / "gray.jpg")
    with open(csv_path, "a") as f:
        f.write("images/gray.jpg,a gray photo of nothing\n")
    out = tmp_path / "out"
    args = ["protect", "--csv", str(csv_path), "--out", str(out), "--model", "RN-tiny", "--size", "32",
            "--max-rounds", "1", "--surrogate-steps", "2", "--batch-size", "8", "--device", "cpu"]
    assert main(args + ["--keep-state"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert len(report["images"]) == 13 and report["visibility"]["psnr_db"] > 30 and report["rounds"] == 1
    assert all((out / entry["file"]).is_file() and entry["max_abs_delta"] <= 8 for entry in report["images"])
    assert report["converged"] is False and "as expected for a small collection" in capsys.readouterr().err
    published = load_csv_dataset(out / "protected.csv", 32, progress=False)
    assert published.num_images == 13 and all(len(c.split()) > 3 for c in published.captions)
    assert not list(out.rglob("*.ckpt")) and state_path(out).is_file(), "the state is kept outside the published folder"
    assert main(args + ["--schedule", "official"]) == 2 and "other settings (alpha 2 saved, 1 now" in capsys.readouterr().err
    assert main(args + ["--force", "--schedule", "official"]) == 0
    assert not state_path(out).exists(), "without --keep-state the state goes when the protection finishes"
    config = json.loads((out / "report.json").read_text())["config"]
    assert (config["alpha"], config["trigger_per"], config["max_rounds"]) == (1, "row", 1), "options win over the schedule"
    assert main(["protect", "--csv", str(csv_path), "--out", str(tmp_path / "o2"), "--method", "uap"]) == 2
    assert "--surrogate" in capsys.readouterr().err


def test_the_shipped_study_vocabulary_is_the_flickr8k_train_captions(shared_data, tmp_path):
    from mmue_lib.triggers import STUDY_VOCABULARY, write_study_vocabulary

    write_study_vocabulary(shared_data / "flickr8k" / "train.csv", tmp_path / "words.tsv")
    assert (tmp_path / "words.tsv").read_text() == STUDY_VOCABULARY.read_text(), "rerun make vocabulary"
    mask = trigger_vocabulary(ProtectConfig(trigger_vocab="study", trigger_min_count=20), [])
    assert 900 < int(mask.sum()) < 1100

