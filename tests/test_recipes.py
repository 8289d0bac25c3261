"""--recipe {paper,fast}: named sets of training options; options written on the command line win."""
import json

import pytest

from minires import train

FAST = {"epochs": 50, "schedule": "cosine", "nesterov": True, "weight_decay": 5e-4, "label_smoothing": 0.1,
        "normalization": "channel"}


def parse(*argv):
    return train.parse_args(train.build_parser(), [str(a) for a in argv])


def settings(args, keys):
    return {k: getattr(args, k) for k in keys}


def test_fast_is_the_50_epoch_run_of_issue_18():
    """The run started for issue 18: --schedule cosine --nesterov --weight-decay 5e-4 --epochs 50
    --label-smoothing 0.1 --normalization channel, lr 0.1, batch 128, momentum 0.9."""
    args = parse("--recipe", "fast")
    assert settings(args, FAST) == FAST
    assert (args.lr, args.batch_size, args.momentum, args.depth) == (0.1, 128, 0.9, 20)


def test_a_flag_written_on_the_command_line_wins_over_the_recipe():
    for argv in (["--recipe", "fast", "--epochs", 3], ["--epochs", 3, "--recipe", "fast"]):
        args = parse(*argv)
        assert args.epochs == 3
        assert settings(args, FAST) == {**FAST, "epochs": 3}
    # also when the written value is the parser's default (the paper's)
    assert parse("--recipe", "fast", "--weight-decay", "1e-4").weight_decay == 1e-4
    assert parse("--recipe", "fast", "--normalization", "pixel_mean").normalization == "pixel_mean"
    assert parse("--recipe", "fast", "--no-nesterov").nesterov is False  # a recipe's switch can be turned off


def test_paper_is_the_default_and_the_parsers_defaults():
    plain = train.build_parser().parse_args([])
    for args in (parse(), parse("--recipe", "paper")):
        assert args.recipe == "paper"
        assert settings(args, train.RECIPES["paper"]) == train.RECIPES["paper"]
        assert vars(args) == vars(plain)


def test_every_recipe_sets_the_same_options_and_each_is_a_real_one():
    options = vars(train.build_parser().parse_args([]))
    keys = set(train.RECIPES["paper"])
    for name, values in train.RECIPES.items():
        assert set(train.recipe_defaults(name)) == set(train.recipe_defaults("paper")) >= keys, name  # nothing left behind
        assert set(values) <= set(options)
        for key, value in values.items():
            assert options[key] is None or type(value) is type(options[key]), (name, key)


def test_switching_recipes_on_one_parser_leaves_nothing_behind():
    parser = train.build_parser()
    train.parse_args(parser, ["--recipe", "fast"])
    assert settings(train.parse_args(parser, []), train.RECIPES["paper"]) == train.RECIPES["paper"]


def test_help_prints_each_recipes_settings(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # argparse wraps lines at the terminal's width, also inside a flag
    with pytest.raises(SystemExit):
        train.main(["--help"])
    text = capsys.readouterr().out
    assert "--recipe {paper,fast,keras}" in text
    assert "fast: --epochs 50 --schedule cosine --nesterov --weight-decay 0.0005 --label-smoothing 0.1 " \
           "--normalization channel" in text
    assert "paper: --epochs 164 --schedule multistep --no-nesterov --weight-decay 0.0001 --label-smoothing 0 " \
           "--normalization pixel_mean" in text


def test_the_recipe_is_saved_in_config_json_and_kept_by_resume(tiny_cifar10_dir, tmp_path, _leave_globals_alone):
    out = tmp_path / "run"
    tiny = ["--depth", 8, "--limit-train", 64, "--limit-test", 32, "--batch-size", 32, "--no-progress",
            "--data-dir", tiny_cifar10_dir]
    assert train.main([str(a) for a in tiny + ["--recipe", "fast", "--epochs", 1, "--out", out]]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["recipe"] == "fast"
    assert settings_of(config) == {**FAST, "epochs": 1}
    # --resume alone takes the run's recipe and its written --epochs; a new --epochs extends it
    assert train.main(["--resume", str(out), "--epochs", "2", "--no-progress"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["recipe"] == "fast" and settings_of(config) == {**FAST, "epochs": 2}


def test_resume_keeps_a_switch_that_was_turned_off_against_the_recipe(tmp_path):
    """--recipe fast --no-nesterov: resuming inherits --recipe fast, which must not turn it on again."""
    config = vars(parse("--recipe", "fast", "--no-nesterov"))
    parser = train.build_parser()
    inherited = train.config_defaults(parser, config, tmp_path)
    assert inherited["recipe"] == "fast" and inherited["nesterov"] is False
    assert train.parse_args(parser, ["--resume", str(tmp_path)], inherited).nesterov is False


def settings_of(config):
    return {k: config[k] for k in FAST}


def test_recipes_are_sgds_and_leave_adams_weight_decay_alone():
    assert parse("--optimizer", "adamw").weight_decay == 0.01
    assert parse("--optimizer", "adam").weight_decay == 1e-4
    fast_adamw = parse("--recipe", "fast", "--optimizer", "adamw")
    assert (fast_adamw.weight_decay, fast_adamw.lr, fast_adamw.epochs) == (0.01, 1e-3, 50)
    assert parse("--recipe", "fast", "--optimizer", "adamw", "--weight-decay", "0.05").weight_decay == 0.05
    assert parse("--recipe", "fast").weight_decay == 5e-4


def test_a_recipe_other_than_the_papers_gets_its_own_default_folder(tiny_cifar10_dir, tmp_path, _leave_globals_alone):
    """The quick start's paper run (runs/resnet8) and a fast run started after it do not collide."""
    tiny = ["--depth", 8, "--limit-train", 64, "--limit-test", 32, "--batch-size", 32, "--no-progress",
            "--data-dir", tiny_cifar10_dir, "--epochs", 1]
    assert train.main([str(a) for a in tiny]) == 0
    assert train.main([str(a) for a in tiny + ["--recipe", "fast"]]) == 0
    assert json.loads((tmp_path / "runs" / "resnet8" / "config.json").read_text())["recipe"] == "paper"
    assert json.loads((tmp_path / "runs" / "resnet8-fast" / "config.json").read_text())["recipe"] == "fast"
