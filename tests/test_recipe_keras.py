"""--recipe keras (issue 19, section 2): the training of Keras's CIFAR-10 ResNet example.

Adam (lr 1e-3, eps 1e-7), batch 32, 200 epochs, Keras's lr_schedule (``--schedule keras``),
ReduceLROnPlateau(factor sqrt(0.1), patience 5, min_lr 5e-7) on the test loss, and l2(1e-4) on
the Conv2D kernels. In that example the LearningRateScheduler sets the lr from the epoch at the
start of every epoch, after the plateau callback changed it at the end of the one before: a
reduction never reaches a batch. minires reproduces this, and the tests below check it.
"""
import json
import math

import numpy as np
import pytest

import minires.functional as F
import minires.train as train
from minires import Tensor, models, nn
from minires import rng as minires_rng
from minires.optim import Adam, PiecewiseLR
from minires.serialization import load

KERAS = {"epochs": 200, "batch_size": 32, "optimizer": "adam", "lr": 1e-3, "eps": 1e-7, "schedule": "keras",
         "weight_decay": 2e-4, "conv_decay_only": True, "no_bn_decay": False, "reduce_lr_on_plateau": 5,
         "plateau_factor": math.sqrt(0.1), "min_lr": 5e-7, "monitor": "loss", "nesterov": False,
         "label_smoothing": 0.0, "normalization": "pixel_mean"}


def keras_lr_schedule(epoch):
    """The example's lr_schedule, as written there."""
    lr = 1e-3
    if epoch > 180:
        lr *= 0.5e-3
    elif epoch > 160:
        lr *= 1e-3
    elif epoch > 120:
        lr *= 1e-2
    elif epoch > 80:
        lr *= 1e-1
    return lr


def parse(*argv, parser=None):
    return train.parse_args(parser or train.build_parser(), [str(a) for a in argv])


def settings(args, keys=KERAS):
    return {k: getattr(args, k) for k in keys}


# --- the options ------------------------------------------------------------------------------

def test_the_recipe_is_the_keras_examples_training():
    assert settings(parse("--recipe", "keras")) == KERAS


def test_flags_written_beside_the_recipe_win():
    for argv in (["--recipe", "keras", "--epochs", 3, "--batch-size", 64, "--lr", 0.01],
                 ["--epochs", 3, "--batch-size", 64, "--lr", 0.01, "--recipe", "keras"]):
        assert settings(parse(*argv)) == {**KERAS, "epochs": 3, "batch_size": 64, "lr": 0.01}
    assert parse("--recipe", "keras", "--schedule", "cosine").schedule == "cosine"
    assert parse("--recipe", "keras", "--no-conv-decay-only").conv_decay_only is False
    assert parse("--recipe", "keras", "--reduce-lr-on-plateau", 2).reduce_lr_on_plateau == 2
    assert parse("--recipe", "keras", "--eps", 1e-8).eps == 1e-8
    # another optimizer takes its own lr and weight decay, as with the SGD recipes
    sgd = parse("--recipe", "keras", "--optimizer", "sgd")
    assert (sgd.optimizer, sgd.lr, sgd.weight_decay, sgd.epochs, sgd.schedule) == ("sgd", 0.1, 1e-4, 200, "keras")
    adamw = parse("--recipe", "keras", "--optimizer", "adamw")
    assert (adamw.lr, adamw.weight_decay) == (1e-3, 0.01)


def test_switching_recipes_on_one_parser_leaves_nothing_of_keras_behind():
    plain = vars(train.build_parser().parse_args([]))
    parser = train.build_parser()
    parse("--recipe", "keras", parser=parser)
    assert vars(parse(parser=parser)) == plain
    parse("--recipe", "keras", parser=parser)
    fast = parse("--recipe", "fast", parser=parser)
    assert vars(fast) == vars(parse("--recipe", "fast"))
    assert (fast.optimizer, fast.batch_size, fast.reduce_lr_on_plateau, fast.conv_decay_only) == ("sgd", 128, None, False)


def test_help_prints_the_recipes_settings(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # argparse wraps lines at the terminal's width, also inside a flag
    with pytest.raises(SystemExit):
        train.main(["--help"])
    text = capsys.readouterr().out
    assert "--recipe {paper,fast,keras}" in text
    described = ("keras: --epochs 200 --schedule keras --no-nesterov --weight-decay 0.0002 --label-smoothing 0 "
                 "--normalization pixel_mean --optimizer adam --lr 0.001 --eps 1e-07 --batch-size 32 "
                 "--conv-decay-only --reduce-lr-on-plateau 5 --plateau-factor 0.31622776601683794 --min-lr 5e-07 "
                 "--monitor loss")
    assert described in text
    # the description, given as flags, is the recipe
    flags = described.split(": ", 1)[1].split()
    assert settings(parse(*flags)) == KERAS


# --- the learning rate over 200 epochs ----------------------------------------------------------

STEPS_PER_EPOCH = 3


def keras_run(tmp_path, epochs=200, resume=None, start=0):
    """The lr of every iteration of epochs ``start``..``epochs``-1 (one list per epoch) under the
    recipe's schedule and plateau extension, built as the CLI builds them, with a test loss that
    never improves after the first epoch, so that the plateau fires every 5 epochs; and the
    plateau's log lines and (schedule, plateau) states. ``resume``: such states to go on from."""
    args = parse("--recipe", "keras", "--epochs", epochs)
    weight = Tensor(np.zeros(3), requires_grad=True)
    optimizer = Adam([weight], lr=args.lr, eps=args.eps)
    schedule = train.build_schedule(args, optimizer, epochs * STEPS_PER_EPOCH)
    lines = []
    plateau = train.build_extensions(args, tmp_path, None, schedule)[0]
    plateau.log = lines.append
    if resume is not None:
        schedule.load_state_dict(resume[0])
        plateau.load_state_dict(resume[1])
    lrs = []
    for epoch in range(start, epochs):
        lrs.append([])
        for _ in range(STEPS_PER_EPOCH):
            lrs[-1].append(optimizer.param_groups[0]["lr"])
            schedule.step()
        plateau.on_epoch_end(None, {"epoch": epoch + 1, "test_loss": 2.0 if epoch == 0 else 2.5})
    return lrs, lines, (schedule.state_dict(), plateau.state_dict()), plateau


def test_the_lr_of_every_epoch_is_kerass_formula_though_the_plateau_fires(tmp_path):
    lrs, lines, _, plateau = keras_run(tmp_path)
    assert isinstance(plateau, train.ext.ReduceLROnPlateau) and plateau.reset_each_epoch
    assert lrs == [[keras_lr_schedule(epoch)] * STEPS_PER_EPOCH for epoch in range(200)]
    assert lrs[80][0] == 1e-3 and lrs[81][0] == 1e-4 and lrs[199][0] == 5e-7
    # Keras reduces after epochs 6, 11, ..., while the epoch's lr is above min_lr: up to epoch 181
    # (the 0-based epochs after 180 train at 5e-7 = min_lr, which Keras does not reduce)
    assert len(lines) == len(range(6, 182, 5)) == 36
    assert all("until the schedule sets it again at the next epoch's start" in line for line in lines)
    assert "lr 0.001 -> 0.0003162" in lines[0] and "lr 1e-06 -> 5e-07" in lines[-1]
    assert plateau.scale == 1.0


def test_without_the_keras_schedule_the_same_plateau_scales_the_lr_for_good(tmp_path):
    """What reset_each_epoch changes: with --schedule multistep the reductions accumulate."""
    args = parse("--recipe", "keras", "--schedule", "multistep")
    weight = Tensor(np.zeros(3), requires_grad=True)
    optimizer = Adam([weight], lr=args.lr)
    schedule = train.build_schedule(args, optimizer, 200 * STEPS_PER_EPOCH)
    plateau = train.build_extensions(args, tmp_path, None, schedule)[0]
    assert not plateau.reset_each_epoch
    for epoch in range(6):
        plateau.on_epoch_end(None, {"test_loss": 2.0 if epoch == 0 else 2.5})
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * math.sqrt(0.1))


def test_a_stopped_run_resumes_the_schedule_and_plateau_exactly(tmp_path):
    straight_lrs, straight_lines, end, _ = keras_run(tmp_path)
    first_lrs, first_lines, saved, _ = keras_run(tmp_path, epochs=103)  # stopped 2 epochs into a wait
    assert saved[1]["wait"] == 2
    rest_lrs, rest_lines, resumed_end, _ = keras_run(tmp_path, resume=saved, start=103)
    assert first_lrs + rest_lrs == straight_lrs
    assert first_lines + rest_lines == straight_lines
    assert resumed_end == end


def test_the_milestones_are_the_first_iterations_of_epochs_81_121_161_181():
    args = parse("--recipe", "keras")
    optimizer = Adam([Tensor(np.zeros(1), requires_grad=True)], lr=1e-3)
    schedule = train.build_schedule(args, optimizer, 200 * 7)
    assert isinstance(schedule, PiecewiseLR)
    assert schedule.milestones == [81 * 7, 121 * 7, 161 * 7, 181 * 7]
    assert [schedule.lr_at(s) for s in (81 * 7 - 1, 81 * 7, 181 * 7 - 1, 181 * 7)] == [1e-3, 1e-4, 1e-6, 5e-7]
    with pytest.raises(ValueError, match="one positive number per milestone"):
        PiecewiseLR(optimizer, [1, 2], [0.1])


# --- l2(1e-4) on the convolution kernels --------------------------------------------------------

def test_only_the_convolution_kernels_are_decayed():
    args = parse("--recipe", "keras", "--depth", 8)
    model = models.cifar_resnet(8)
    optimizer = train.build_optimizer(args, model)
    conv = {id(m.weight) for m in model.modules() if isinstance(m, nn.Conv2d)}
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == conv and len(conv) == 7  # not the dense layer's kernel, biases or BatchNorm
    assert {g["weight_decay"] for g in optimizer.param_groups} == {2e-4, 0.0}
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    assert all((g["eps"], g["lr"]) == (1e-7, 1e-3) for g in optimizer.param_groups)


def test_the_decay_is_kerass_l2_term_in_the_loss(monkeypatch):
    """Adam on cross-entropy with the recipe's weight decay takes the same steps as Adam without
    decay on cross-entropy + 1e-4 * sum(W^2) over the conv kernels (Keras's l2(1e-4)): the
    gradient of that term is 2e-4 * W. ResNet-8 in float64, 5 steps on a fixed batch."""
    monkeypatch.setattr(minires_rng, "_rng", minires_rng.get_rng())
    args = parse("--recipe", "keras", "--depth", 8)
    minires_rng.manual_seed(0)
    ours, keras = models.cifar_resnet(8), models.cifar_resnet(8)
    keras.load_state_dict(ours.state_dict())
    ours.astype(np.float64)
    keras.astype(np.float64)
    start = [p.data.copy() for p in ours.parameters()]
    optimizer = train.build_optimizer(args, ours)
    plain = Adam(list(keras.parameters()), lr=1e-3, eps=1e-7)
    kernels = [m.weight for m in keras.modules() if isinstance(m, nn.Conv2d)]
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 3, 16, 16)), np.array([3, 7, 1, 0])
    for _ in range(5):
        optimizer.zero_grad()
        F.cross_entropy(ours(Tensor(x)), y).backward()
        optimizer.step()
        plain.zero_grad()
        loss = F.cross_entropy(keras(Tensor(x)), y)
        for W in kernels:
            loss = loss + (W * W).sum() * 1e-4
        loss.backward()
        plain.step()
    for (name, a), b in zip(ours.named_parameters(), keras.parameters()):
        assert np.allclose(a.data, b.data, rtol=0, atol=1e-12), name
    assert max(np.abs(p.data - w).max() for p, w in zip(ours.parameters(), start)) > 1e-3  # it trained


# --- a run of the recipe from the command line --------------------------------------------------

def test_a_tiny_keras_run_on_real_cifar10(cifar10_dir, tmp_path, _leave_globals_alone):
    """64 real training images, 1 epoch of 2 batches of 32, into the recipe's own folder."""
    tiny = ["--recipe", "keras", "--depth", 8, "--limit-train", 64, "--limit-test", 32, "--no-progress",
            "--data-dir", cifar10_dir, "--epochs", 1]
    assert train.main([str(a) for a in tiny]) == 0
    out = tmp_path / "runs" / "resnet8-keras"
    config = json.loads((out / "config.json").read_text())
    assert {k: config[k] for k in KERAS} == {**KERAS, "epochs": 1}
    saved = load(out / "last.npz")
    assert saved["schedule"]["step"] == 2
    (row,) = saved["history"]
    assert row["lr"] == 1e-3 and np.isfinite(row["train_loss"]) and np.isfinite(row["test_loss"])
    assert saved["extensions"]["ReduceLROnPlateau"] == {"best": row["test_loss"], "wait": 0, "scale": 1.0}
