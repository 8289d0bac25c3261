"""The registry knows its models (issue 16, item 4): ModelInfo metadata, parametric names,
parameter counts without building, one-line refusals, and the CLIs that read them."""
import dataclasses

import pytest

from minires import models, nn, train
from minires.export import model_from_checkpoint
from minires.training import CheckpointError

FAMILIES = {"cifar_v1", "cifar_v2", "imagenet", "resnext", "wide_imagenet", "wrn"}

# REFERENCE.md, "Architectures and exact parameter counts": (name, kwargs, parameters)
REFERENCE = [
    ("resnet20", {}, 269_722), ("resnet20", {"shortcut": "B"}, 272_474),
    ("resnet110", {}, 1_727_962), ("resnet110", {"shortcut": "B"}, 1_730_714),
    ("resnet1202", {}, 19_421_274), ("resnet1202", {"shortcut": "B"}, 19_424_026),
    ("resnet56v2", {}, 1_663_338), ("resnet1001v2", {}, 30_347_658),
    ("resnet18", {}, 11_173_962), ("resnet18", {"num_classes": 1000}, 11_681_832),
    ("resnet18", {"stem": "imagenet"}, 11_689_512), ("resnet34", {"stem": "imagenet"}, 21_797_672),
    ("resnet50", {}, 23_520_842), ("resnet50", {"stem": "imagenet"}, 25_557_032),
    ("resnet101", {"stem": "imagenet"}, 44_549_160), ("resnet152", {"stem": "cifar", "num_classes": 1000}, 60_185_128),
    ("resnext50_32x4d", {"stem": "imagenet"}, 25_028_904), ("resnext101_32x8d", {"stem": "imagenet"}, 88_791_336),
    ("resnext101_64x4d", {"stem": "imagenet"}, 83_455_272), ("wide_resnet50_2", {"stem": "imagenet"}, 68_883_240),
    ("wide_resnet101_2", {"stem": "imagenet"}, 126_886_696),
    ("wrn16_8", {}, 10_961_370), ("wrn28_10", {}, 36_479_194), ("wrn40_4", {}, 8_949_210),
]


def count(model):
    return sum(p.size for p in model.parameters())


# -- metadata ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, family, depth, stems, kwargs", [
    ("resnet20", "cifar_v1", 20, ("cifar",), ("shortcut", "num_classes")),
    ("resnet1202", "cifar_v1", 1202, ("cifar",), ("shortcut", "num_classes")),
    ("resnet110v2", "cifar_v2", 110, ("cifar",), ("num_classes",)),
    ("resnet152", "imagenet", 152, ("cifar", "imagenet"), ("num_classes", "stem")),
    ("resnext101_64x4d", "resnext", 101, ("cifar", "imagenet"), ("num_classes", "stem")),
    ("wide_resnet50_2", "wide_imagenet", 50, ("cifar", "imagenet"), ("num_classes", "stem")),
    ("wrn28_10", "wrn", 28, ("cifar",), ("num_classes", "dropout")),
])
def test_each_family_carries_its_metadata(name, family, depth, stems, kwargs):
    info = models.info(name)
    assert (info.name, info.family, info.depth, info.stems, info.kwargs) == (name, family, depth, stems, kwargs)
    assert info.default_stem == "cifar" and info.depths is None
    assert (info.input_size(), info.num_classes()) == ((3, 32, 32), 10)
    if "imagenet" in stems:
        assert (info.input_size("imagenet"), info.num_classes("imagenet")) == ((3, 224, 224), 1000)
        assert (info.stem_of(7), info.stem_of(3), info.stem_of(5)) == ("imagenet", "cifar", None)
    else:
        assert info.stem_of(7) is None


def test_every_registered_model_has_a_family_a_depth_and_frozen_facts():
    for name in models.names():
        info = models.info(name)
        assert info.family in FAMILIES and isinstance(info.depth, int) and info.name == name
    with pytest.raises(dataclasses.FrozenInstanceError):
        models.info("resnet20").depth = 56
    family = models.info("cifar_resnet")
    assert (family.family, family.depth, family.depths, family.kwargs) == (
        "cifar_v1", None, "6n+2", ("depth", "shortcut", "num_classes"))
    assert (models.info("preact_resnet").depths, models.info("wide_resnet").depths) == ("9n+2", "6n+4")


# -- parametric names --------------------------------------------------------------------------------------

def test_parametric_names_build_any_depth_of_the_form():
    r8 = models.create("resnet8")  # what --depth 8 names its run
    assert isinstance(r8, models.CifarResNet) and r8.shortcut == "A" and len(r8.layer3) == 1
    r14 = models.create("ResNet14", shortcut="B")
    assert r14.shortcut == "B" and len(r14.layer2) == 2 and r14.layer2[0].downsample is not None
    v2 = models.create("resnet11v2", num_classes=3)
    assert isinstance(v2, models.PreActResNet) and len(v2.layer1) == 1 and v2.fc.out_features == 3
    wrn = models.create("wrn10_2")
    assert isinstance(wrn, models.WideResNet) and wrn.k == 2 and len(wrn.layer1) == 1
    info = models.info("wrn22_4")
    assert (info.name, info.family, info.depth, info.kwargs) == ("wrn22_4", "wrn", 22, ("num_classes", "dropout"))
    assert models.info("resnet8").kwargs == ("shortcut", "num_classes")  # depth is in the name


def test_registered_names_win_over_the_patterns():
    assert isinstance(models.create("resnet50"), models.ResNet)  # torchvision's, not a v1 of depth 50
    assert models.info("resnet50").family == "imagenet"
    assert models.info("cifar_resnet").num_params(depth=50) != models.info("resnet50").num_params()
    assert models.info("wrn16_8").num_params() == 10_961_370
    assert "resnet8" not in models.names()  # names() lists the registered models only


# -- parameter counts without building ----------------------------------------------------------------------

@pytest.mark.parametrize("name, kwargs", [
    ("resnet8", {}), ("resnet14", {"shortcut": "B"}), ("resnet32", {"num_classes": 100}),
    ("resnet11v2", {}), ("resnet20v2", {"num_classes": 7}),
    ("wrn10_1", {}), ("wrn10_2", {"num_classes": 5, "dropout": 0.3}), ("wrn16_3", {}),
    ("resnet18", {}), ("resnet18", {"stem": "imagenet", "num_classes": 4}),
    ("resnext50_32x4d", {"stem": "imagenet"}),
    ("cifar_resnet", {"depth": 26, "shortcut": "B"}), ("preact_resnet", {"depth": 29}),
])
def test_the_registry_counts_what_the_model_builds(name, kwargs):
    assert models.info(name).num_params(**kwargs) == count(models.create(name, **kwargs))


@pytest.fixture
def nothing_built(monkeypatch):
    """Any layer built from here on fails the test."""
    def refuse(self, *args, **kwargs):
        raise AssertionError("a layer was built")

    monkeypatch.setattr(nn.Conv2d, "__init__", refuse)
    monkeypatch.setattr(nn.Linear, "__init__", refuse)


@pytest.mark.parametrize("name, kwargs, parameters", REFERENCE)
def test_the_counts_of_the_reference_without_building(nothing_built, name, kwargs, parameters):
    assert models.info(name).num_params(**kwargs) == parameters


def test_an_absurd_depth_is_counted_without_building(nothing_built):
    assert models.info("resnet6000002").num_params() == 97_215_978_074
    assert models.info("cifar_resnet").num_params(depth=6_000_002) == 97_215_978_074


# -- refusals, one line each ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["resnet21", "resnet12v2", "wrn15_2", "resnet", "nosuchmodel", "wrn16"])
def test_a_name_of_no_model_is_one_line_naming_the_valid_forms(name):
    for attempt in (models.create, models.info):
        with pytest.raises(ValueError) as e:
            attempt(name)
        message = str(e.value)
        assert "\n" not in message and f"unknown model {name!r}" in message
        assert "resnet<6n+2>, resnet<9n+2>v2, wrn<6n+4>_<k>" in message and "resnet20" in message


@pytest.mark.parametrize("name, kwargs, message", [
    ("resnet20", {"stem": "imagenet"}, "resnet20 takes no keyword argument 'stem'; valid: shortcut, num_classes"),
    ("resnet56v2", {"shortcut": "B"}, "resnet56v2 takes no keyword argument 'shortcut'; valid: num_classes"),
    ("resnet8", {"depth": 14}, "resnet8 takes no keyword argument 'depth'; valid: shortcut, num_classes"),
    ("resnet18", {"width": 2}, "resnet18 takes no keyword argument 'width'; valid: num_classes, stem"),
    ("wrn10_2", {"k": 4}, "wrn10_2 takes no keyword argument 'k'; valid: num_classes, dropout"),
])
def test_an_unknown_keyword_is_one_line_naming_the_valid_ones(name, kwargs, message):
    with pytest.raises(ValueError) as e:
        models.create(name, **kwargs)
    assert str(e.value) == message
    with pytest.raises(ValueError, match="takes no keyword argument"):
        models.info(name).num_params(**kwargs)


def test_a_family_without_a_valid_depth_is_refused():
    with pytest.raises(ValueError, match=r"needs depth=\.\.\."):
        models.create("preact_resnet")
    with pytest.raises(ValueError, match=r"depth must be 6n\+2"):
        models.info("cifar_resnet").num_params(depth=21)


def test_pretrained_for_no_model_says_so_and_not_that_no_weights_ship():
    with pytest.raises(ValueError, match="unknown model 'nosuchmodel'"):
        models.create("nosuchmodel", pretrained=True)
    with pytest.raises(ValueError, match="no weights ship for resnet8"):
        models.create("resnet8", pretrained=True)


# -- train.py and export.py read the registry ---------------------------------------------------------------

def parse(*argv):
    return train.parse_args(train.build_parser(), [str(a) for a in argv])


def test_train_builds_depth_n_through_the_registry():
    model = train.build_model(parse("--depth", 14, "--shortcut", "B"))
    assert isinstance(model, models.CifarResNet) and model.shortcut == "B" and len(model.layer1) == 2
    assert train.model_name(parse("--depth", 14)) == "resnet14"
    assert count(train.build_model(parse("--depth", 50))) == models.info("cifar_resnet").num_params(depth=50)
    assert isinstance(train.build_model(parse("--model", "resnet11v2")), models.PreActResNet)


@pytest.mark.parametrize("argv, message", [
    (["--depth", 6000002], "--depth 6000002 would build a ResNet of about 9.72e+10 parameters"),
    (["--model", "resnet6000002"], "--model resnet6000002 would build a ResNet of about 9.72e+10 parameters"),
    (["--model", "wrn6004_100"], "--model wrn6004_100 would build a ResNet of about 9.67e+11 parameters"),
])
def test_train_refuses_a_model_too_big_for_memory_from_the_registrys_count(monkeypatch, nothing_built, argv, message):
    monkeypatch.setattr(train, "physical_memory", lambda: 64 * 2**30)
    with pytest.raises(ValueError, match="GiB before any activation; this machine has 64 GiB") as e:
        train.check_size(parse(*argv))
    assert message in str(e.value)
    train.check_size(parse("--depth", 1202))  # the paper's deepest fits


@pytest.mark.parametrize("argv, warmup", [(["--model", "resnet1202"], 400), (["--model", "resnet110v2"], 400),
                                          (["--model", "resnet164"], 400), (["--model", "wrn40_4"], 0),
                                          (["--model", "resnet101"], 0), (["--depth", 110], 400)])
def test_the_warm_up_reads_the_depth_from_the_registry(argv, warmup):
    args = parse(*argv)
    optimizer = train.SGD([nn.Linear(2, 2).weight], lr=args.lr, momentum=args.momentum)
    assert train.build_schedule(args, optimizer, 1000).warmup_steps == warmup


def test_export_picks_the_model_of_a_v2_and_of_an_imagenet_stem_checkpoint():
    v2 = models.create("resnet11v2", num_classes=6)
    model, state = model_from_checkpoint({"model": v2.state_dict(), "config": {"model": "resnet11v2"}})
    assert isinstance(model, models.PreActResNet) and model.fc.out_features == 6
    model.load_state_dict(state)
    r18 = models.resnet18(stem="imagenet", num_classes=5)
    model, state = model_from_checkpoint(r18.state_dict(), name="resnet18")
    assert model.stem == "imagenet" and model.fc.out_features == 5 and count(model) == count(r18)
    model.load_state_dict(state)
    model, _ = model_from_checkpoint(models.resnet18().state_dict(), name="resnet18")
    assert model.stem == "cifar"
    with pytest.raises(ValueError, match="--shortcut applies to the CIFAR ResNets v1"):
        model_from_checkpoint(v2.state_dict(), name="resnet11v2", shortcut="B")
    model, _ = model_from_checkpoint(models.resnet20().state_dict(), name="resnet8", shortcut="B")
    assert model.shortcut == "B" and len(model.layer1) == 1


def test_summary_reads_the_default_input_size_and_takes_parametric_names(capsys):
    from minires import model_summary
    assert model_summary.main(["--model", "resnet8"]) == 0  # "unknown model 'resnet8'" before
    out = capsys.readouterr().out
    assert "[1, 16, 32, 32]" in out and f"Total params: {models.info('resnet8').num_params():,}" in out


# -- a resumed run reads its checkpoint's config as defaults --------------------------------------------------

def test_a_resumed_run_takes_the_config_and_written_flags_win(tmp_path):
    config = vars(parse("--recipe", "fast", "--epochs", 3, "--optimizer", "adamw", "--depth", 14,
                        "--no-augment"))
    config.update(model_name="resnet14", parameters=1, out="elsewhere", no_progress=True)  # not options
    parser = train.build_parser()
    inherited = train.config_defaults(parser, config, tmp_path)
    assert "model_name" not in inherited and "out" not in inherited and "no_progress" not in inherited
    args = train.parse_args(parser, ["--resume", str(tmp_path), "--lr", "0.5"], inherited)
    assert (args.lr, args.epochs, args.optimizer, args.depth, args.weight_decay, args.recipe) == (
        0.5, 3, "adamw", 14, 0.01, "fast")
    assert args.no_augment is True and args.no_progress is False and args.out is None


@pytest.mark.parametrize("entry, value, message", [
    ("depth", True, "config entry 'depth' is not a valid --depth: True"),
    ("epochs", 2.5, "config entry 'epochs' is not a valid --epochs: 2.5"),
    ("schedule", "linear", "config entry 'schedule' is not a valid --schedule: 'linear'"),
    ("nesterov", "yes", "config entry 'nesterov' is not a valid --nesterov: 'yes'"),
    ("lr", [0.1], "config entry 'lr' must be a number, string or true/false, found list"),
])
def test_a_bad_config_entry_is_one_line_naming_the_checkpoint(tmp_path, entry, value, message):
    with pytest.raises(CheckpointError) as e:
        train.config_defaults(train.build_parser(), {entry: value}, tmp_path / "last.npz")
    assert str(e.value) == f"checkpoint {tmp_path / 'last.npz'}: {message}"


def test_packaging_names_the_v1_network_a_depth_run_trained():
    from minires.weights.package import model_spec
    assert model_spec({"depth": 8, "shortcut": "B"}) == ("resnet8", {"shortcut": "B"})
    # resnet50 is torchvision's network: a --depth 50 run trained the v1 family's
    name, kwargs = model_spec({"depth": 50})
    assert (name, kwargs) == ("cifar_resnet", {"depth": 50, "shortcut": "A"})
    assert isinstance(models.create(name, **kwargs), models.CifarResNet)
