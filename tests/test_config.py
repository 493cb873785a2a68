"""The groups' schemas (configs/schema.py): Hydra refuses a value of the wrong type, a choice not offered or an
unknown key, naming it, as it composes; `check_training` refuses counts out of range, naming the key."""

import pytest

from configs.compose import ConfigError, compose
from configs.schema import check_training

BASE = ["tokenizer=unused"]


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("trainer.max_length=long", "trainer.max_length"),
        ("trainer.bad_steps.sigma=high", "trainer.bad_steps.sigma"),
        ("trainer.resume=maybe", "trainer.resume"),
        ("optim.lr=fast", "optim.lr"),
        ("optim.betas=[a,b]", "optim.betas"),
        ("eval.every=often", "eval.every"),
        ("eval.shuffled_images=perhaps", "eval.shuffled_images"),
        ("wandb.mode=loud", "wandb.mode"),
        ("data.workers=x", "data.workers"),
        ("data.slots=some", "data.slots"),
        ("stage.steps=x", "stage.steps"),
        ("trainer.bogus=1", "trainer.bogus"),
    ],
)
def test_a_badly_typed_value_or_unknown_key_of_each_training_group_is_refused_by_name(override, key):
    with pytest.raises(ValueError, match=f"full_key: {key}"):
        compose("pretrain", [*BASE, override])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("eval.batch=0", "eval.batch=0: expected a whole number >= 1"),
        ("trainer.keep_checkpoints=-1", "trainer.keep_checkpoints=-1: expected a whole number >= 0"),
        ("trainer.bad_steps.window=-3", "trainer.bad_steps.window=-3: expected a whole number >= 0"),
        ("optim.warmup_steps=-5", "optim.warmup_steps=-5: expected a whole number >= 0"),
        ("data.length_window=0", "data.length_window=0: expected a whole number >= 1"),
        ("stage.steps=0", "expected a whole number >= 1"),
    ],
)
def test_counts_out_of_range_are_refused_by_name(override, message):
    cfg = compose("pretrain", [*BASE, override])
    with pytest.raises(ConfigError, match=message):
        check_training(cfg)


def test_choices_keep_their_string_values():
    """A choice compares, formats and serialises as the word in the YAML (code written for strings keeps working)."""
    import json

    from omegaconf import OmegaConf

    cfg = compose("build", ["source=pdf", "input=a", "output=b", "image.format=webp", "executor=ray"])
    assert cfg.image.format == "webp" and f"{cfg.image.format}" == "webp" and str(cfg.executor) == "ray"
    assert json.loads(json.dumps(OmegaConf.to_container(cfg.image)))["format"] == "webp"
    assert {"ray": 1}[cfg.executor] == 1
    check_training(compose("pretrain", BASE))  # the defaults pass
