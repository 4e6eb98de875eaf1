import math

import pytest
import torch

import mmue_lib.train as train_module
from mmue_lib.data import make_synthetic_dataset
from mmue_lib.metrics import random_metrics
from mmue_lib.models import create_clip, model_context_length
from mmue_lib.train import (ClipStepper, TokenizedPairs, TrainConfig, epoch_batches, evaluate_retrieval,
                            parameter_groups, train_clip)


@pytest.fixture(scope="module")
def synthetic():
    train = TokenizedPairs.from_dataset(make_synthetic_dataset(400, 32, seed=0), 32)
    test = TokenizedPairs.from_dataset(make_synthetic_dataset(60, 32, seed=1), 32)
    return train, test


def small_config(**overrides):
    values = dict(epochs=2, batch_size=50, lr=2e-3, warmup_steps=4, rows_per_epoch="one_per_image", device="cpu")
    values.update(overrides)
    return TrainConfig(**values)


def test_end_to_end_training_learns_the_synthetic_set(synthetic):
    train, test = synthetic
    model = create_clip("RN-tiny", seed=0)
    before = evaluate_retrieval(model, test)
    result = train_clip(model, train, small_config(epochs=8), test=test, progress=False)
    after = result.history[-1]
    chance = random_metrics(test.row_image)
    assert len(result.history) == 8
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"] - 0.5
    for direction in ("i2t", "t2i"):
        assert after[f"{direction}_R@10"] > 3 * chance[f"{direction}_R@10"]
        assert after[f"{direction}_MedR"] <= chance[f"{direction}_MedR"] / 4
        assert after[f"{direction}_MedR"] < before[f"{direction}_MedR"]


def test_training_is_deterministic(synthetic):
    train, _ = synthetic
    runs = [train_clip(create_clip("ViT-tiny", seed=0), train, small_config(), progress=False) for _ in range(2)]
    assert [h["train_loss"] for h in runs[0].history] == [h["train_loss"] for h in runs[1].history]
    for a, b in zip(runs[0].model.state_dict().values(), runs[1].model.state_dict().values()):
        assert torch.equal(a, b)


def test_resume_after_kill_matches_uninterrupted_run(synthetic, tmp_path, monkeypatch):
    train, _ = synthetic
    config = small_config(epochs=3, rows_per_epoch="all", batch_size=100)
    reference = train_clip(create_clip("RN-tiny", seed=0), train, config, progress=False)

    real_batches = train_module.epoch_batches

    def killed_in_third_epoch(pairs, cfg, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return real_batches(pairs, cfg, epoch)

    checkpoint = tmp_path / "run.ckpt"
    monkeypatch.setattr(train_module, "epoch_batches", killed_in_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_clip(create_clip("RN-tiny", seed=0), train, config, checkpoint_path=checkpoint, progress=False)
    monkeypatch.setattr(train_module, "epoch_batches", real_batches)
    resumed = train_clip(create_clip("RN-tiny", seed=5), train, config, checkpoint_path=checkpoint, progress=False)
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in reference.history]
    for a, b in zip(resumed.model.state_dict().values(), reference.model.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="another training config"):
        train_clip(create_clip("RN-tiny"), train, small_config(epochs=4), checkpoint_path=checkpoint, progress=False)
    state = torch.load(checkpoint, weights_only=True)
    state["config"] = {k: v for k, v in state["config"].items() if k not in ("augment", "augment_views")}
    torch.save(state, checkpoint)  # a checkpoint from before these settings existed, at their defaults
    finished = train_clip(create_clip("RN-tiny"), train, config, checkpoint_path=checkpoint, progress=False)
    assert finished.history == resumed.history


def test_learning_rate_schedule():
    stepper = ClipStepper(create_clip("RN-tiny"), TrainConfig(lr=1.0, warmup_steps=10), total_steps=110)
    assert stepper.lr_at(0) == pytest.approx(0.1) and stepper.lr_at(9) == pytest.approx(1.0)
    assert stepper.lr_at(60) == pytest.approx(0.5) and stepper.lr_at(110) == pytest.approx(0.0)
    constant = ClipStepper(create_clip("RN-tiny"), TrainConfig(lr=0.3, schedule="constant"), total_steps=5)
    assert constant.lr_at(4) == 0.3


def test_no_weight_decay_on_gains_biases_and_logit_scale():
    model = create_clip("RN-tiny")
    no_decay, decay = parameter_groups(model, 0.2)
    assert no_decay["weight_decay"] == 0 and decay["weight_decay"] == 0.2
    assert any(p is model.logit_scale for p in no_decay["params"])
    assert all(p.ndim >= 2 for p in decay["params"])
    assert len(no_decay["params"]) + len(decay["params"]) == len(list(model.parameters()))


def test_logit_scale_is_clamped(synthetic):
    train, _ = synthetic
    model = create_clip("RN-tiny")
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    ClipStepper(model, TrainConfig(lr=1e-3), 1).step(train.images[:8], train.tokens[:8])
    assert model.logit_scale.item() <= math.log(100) + 1e-6


def test_epoch_batches_cover_rows_or_one_row_per_image(synthetic):
    train, _ = synthetic
    all_rows = torch.cat(epoch_batches(train, TrainConfig(batch_size=100), 0))
    assert sorted(all_rows.tolist()) == list(range(train.num_rows))
    one = torch.cat(epoch_batches(train, TrainConfig(batch_size=100, rows_per_epoch="one_per_image"), 0))
    images = train.row_image[one]
    assert len(one) == train.num_images and len(set(images.tolist())) == train.num_images
    assert not torch.equal(one, torch.cat(epoch_batches(train, TrainConfig(batch_size=100, rows_per_epoch="one_per_image"), 1)))


def test_rejects_tokens_of_other_length(synthetic):
    train, _ = synthetic
    model = create_clip("RN-tiny", context_length=16)
    with pytest.raises(ValueError, match="expects 16"):
        train_clip(model, train, small_config(), progress=False)


@pytest.mark.parametrize("model_name, count", [("RN-tiny", 2), ("ViT-tiny", 2)])
def test_frozen_image_groups_keep_their_weights_and_statistics_while_the_rest_trains(model_name, count):
    from mmue_lib.models import image_groups

    data = make_synthetic_dataset(16, 32, seed=0)
    model = create_clip(model_name, seed=0)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    frozen_names = {name for name, _ in model.named_parameters()
                    if any(name.startswith(prefix) for prefix in _group_prefixes(model, image_groups(model)[:count]))}
    config = TrainConfig(epochs=1, batch_size=8, device="cpu", freeze_image_groups=count)
    train_clip(model, TokenizedPairs.from_dataset(data, model_context_length(model)), config, progress=False)
    after = model.state_dict()
    assert frozen_names and all(torch.equal(before[name], after[name]) for name in frozen_names)
    if model_name == "RN-tiny":
        assert torch.equal(before["visual.bn1.running_mean"], after["visual.bn1.running_mean"]), "statistics kept"
        assert not torch.equal(before["visual.layer3.0.bn1.running_mean"], after["visual.layer3.0.bn1.running_mean"])
    trained = [name for name, _ in model.named_parameters() if name not in frozen_names]
    assert any(not torch.equal(before[name], after[name]) for name in trained if name.startswith("visual."))
    with pytest.raises(ValueError, match="groups"):
        train_clip(create_clip(model_name), TokenizedPairs.from_dataset(data, model_context_length(model)),
                   TrainConfig(epochs=1, batch_size=8, device="cpu", freeze_image_groups=99), progress=False)


def _group_prefixes(model, groups) -> list[str]:
    """The state-dict names of the modules and parameters in `groups`."""
    names = {id(module): name for name, module in model.named_modules()}
    names.update({id(parameter): name for name, parameter in model.named_parameters()})
    return [names[id(item)] for group in groups for item in group]
